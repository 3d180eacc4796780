"""sw.driver against a fake device: a Transport that answers sw.protocol (version 6) frames
in-process.

The fake decodes the host's bytes one at a time the way ``hw.soc.link`` does (hunt for
SYNC, LENGTH 0 or above MAX_PAYLOAD answered BAD_LENGTH at once, BAD_CRC for a damaged
frame, TIMEOUT for a frame left incomplete longer than the inter-byte timeout, every reply
tagged with the request's SEQ), stages WRITE data and commits it only after the CRC, checks
LOAD_LAYER's fields like the link (BAD_PARAM for an out mode, shift, ReLU flag, weight
format, group size or per-channel flag the device does not take), keeps the eight buffers
(A, W, OUT, CHAN, GROUP in the MixCore host layout; ACT, PROG, LCNT of layer programs) as
bytes, reads the operands and tables out of them with its own index arithmetic (the layout
of ``hw/core/core.py``'s docstring, from the descriptor's bases), checks the shape the way
the core does (BAD_SHAPE) and computes RUN with
sw.numerics.mixgemm, writing only the valid elements of the result into OUT. So the
driver's tiling, per-tile re-layout, table slicing, chunking and recovery are checked end to
end without a simulator. Optionally the device has the sparse DSP engine (``dsp_stages``):
a descriptor with ``sparse = 1 + NMPattern`` is checked as the protocol says (BAD_PARAM,
BAD_SHAPE) and run from A and DSPW read with the documented address formulas (its own
arithmetic, not ``sw.layout``'s): every stage value times the activation its index selects
(on an engine whose chains share their indices, ``dsp_share``, the index of the group's first
chain's record, as the gateware reads it).
RUN_PROGRAM is checked like the link does (count 1..max_layers, flags) and recorded with the
PROG records it would run; it does not execute them (the Verilator tests do): it writes
canned LCNT records, clobbers A and OUT as the gather and the core would, and replies with
the first failing layer's status. Fault injection: hooks on the bytes in either direction,
dropped, held (late) and error replies, a busy core.

Time: the fake reports board-like cycle numbers (50 MHz, 2**22 cycles inter-byte timeout)
but its ``seconds`` runs the device clock ``TIME_SCALE`` times faster in wall time, so the
link timeout the driver waits out before a retry is a few milliseconds.
"""

import dataclasses
import struct
import time
from collections import Counter

import numpy as np
import pytest

from sw import protocol as P
from sw import quant
from sw.driver import Accelerator, DeviceMismatch, DeviceTimeout
from sw.numerics import (NM_PATTERNS, WEIGHT_LANES, ChannelRequant, GroupQuant, NMPattern,
                         NMSparse, OutMode, Requant, WeightFormat, group_dequant, mixgemm,
                         mpgemm, pack_weights, requantize_channels, sparse_gemm, to_dyadic,
                         unpack_weights, wrap_int)
from sw import layout
from sw.protocol import Buffer, DeviceError, DeviceInfo, ErrorCode, Opcode
from sw.transport import FaultInjector, Transport, TransportTimeout

HASH = 0x1234ABCD
CLOCK_HZ = 50_000_000
TIMEOUT_CYCLES = 1 << 22            # hw.soc.link.Link.DEFAULT_TIMEOUT (84 ms at 50 MHz)
TIME_SCALE = 0.04                   # fake wall seconds per device second: link timeout 3.4 ms
ALL_FORMATS = sum(1 << int(f) for f in WeightFormat)
ALL_GROUPS = sum(1 << b for b in P.GROUP_SIZE_BITS.values())
DIM_BITS = 16


class FakeDevice(Transport):
    """A ProgramCore device (protocol 4) behind a byte pipe.

    Sizes as the core's parameters: ``a_depth`` 32-bit words per A bank (one per array row),
    ``w_depth`` bytes per W bank (one per column), ``out_words`` 32-bit words per OUT bank,
    ``chan_depth`` / ``group_depth`` table entries; ``formats`` / ``group_sizes`` the masks
    IDENTIFY reports (``group_sizes=0``, ``formats=1``, ``pe_kind=INT8_DSP``: a core on
    MULT18X18D PEs). ``act_bytes`` / ``max_layers`` / ``layer_kinds`` the layer-program
    fields (``max_layers=0``: a device without programs, RUN_PROGRAM is UNKNOWN_OPCODE).
    ``identify_data`` replaces the IDENTIFY reply data (an older device). ``dsp_stages``
    (0: none, 4 or 8) adds the sparse DSP engine: ``dsp_packed`` chains of two 4-bit
    columns, ``dsp_patterns`` the ``NMPattern`` s it runs (default: every pattern whose
    ``n`` divides L and whose window fits the row banks), ``dsp_depth`` records per chain,
    ``dsp_share`` chains per index group (1: every chain its own indices).

    Programs: ``programs`` lists ``(count, flags, PROG bytes of the layers run)`` per
    RUN_PROGRAM executed; ``layer_status`` (layer index -> ErrorCode) makes that layer fail,
    which ends the program there (later LCNT records keep their old contents).

    Knobs: ``garbage`` (bytes sent before every reply), ``silent`` (decode and log frames,
    never answer), ``fail`` (opcode -> list of status codes to answer with, one per good
    request, instead of executing it), ``stray`` (bytes sent once before the next reply),
    ``drop`` (opcode -> number of replies to execute-and-lose), ``hold`` (opcode -> function
    of the reply data: the next such request is executed, its reply held back with the data
    transformed, and sent just before the reply to the following request: a late reply),
    ``delay`` (function of the request frame: when true, its reply is held back as it is and
    sent before the next reply),
    ``busy_polls`` (the core is busy: WRITE/READ/LOAD_LAYER/RUN answer BUSY, and STATUS
    reports busy that many more times; ``float("inf")`` stays busy until RESET),
    ``rx_hook``/``tx_hook`` (functions applied to each request write / each reply frame:
    bit flips), ``staged_write=False`` (protocol-1 WRITE semantics: the data of a WRITE
    lands in the buffer as it arrives, at the received, possibly damaged, address, and
    BAD_CRC comes afterwards).
    """

    def __init__(self, *, rows=4, cols=4, a_depth=32, w_depth=64, out_words=64, chan_depth=64,
                 group_depth=256, max_k=None, out_modes=0b11, formats=ALL_FORMATS,
                 group_sizes=ALL_GROUPS, pe_kind=P.PeKind.MIXPE, version=P.PROTOCOL_VERSION,
                 config_hash=HASH, max_data=P.MAX_DATA, timeout_cycles=TIMEOUT_CYCLES,
                 staged_write=True, latency=0.02, info_extra=b"", identify_data=None,
                 act_bytes=2048, max_layers=6, layer_kinds=0b11, dsp_stages=0,
                 dsp_packed=False, dsp_patterns=None, dsp_depth=64, dsp_share=1):
        super().__init__()
        self.timeout = 1.0
        lanes = max([WEIGHT_LANES[f] for f in WeightFormat if formats >> int(f) & 1], default=1)
        if max_k is None:                                  # MixCore.max_k
            max_k = min(4 * a_depth, lanes * w_depth, (1 << DIM_BITS) - 1)
        tile_period = cols                                 # MixCore.MIN_PERIOD
        self.depth = dict(a=a_depth, w=w_depth, out=out_words, chan=chan_depth,
                          group=group_depth)
        # MixCore.max_run_cycles, twice
        watchdog = 2 * (tile_period * (w_depth * 4 * a_depth + 4 * out_words * rows)
                        + 4 * DIM_BITS + 256)
        dsp = {}
        if dsp_stages:
            chains = cols // 2 if dsp_packed else cols
            stride = 1 << (chains - 1).bit_length()
            if dsp_patterns is None:
                dsp_patterns = [p for p, (n, m) in NM_PATTERNS.items()
                                if dsp_stages % n == 0 and dsp_stages // n * m <= 4 * rows]
            dsp = dict(dsp_stages=dsp_stages, dsp_chains=chains, dsp_packed=int(dsp_packed),
                       dsp_patterns=sum(1 << int(p) for p in dsp_patterns),
                       dsp_bytes=dsp_depth * stride * 16, dsp_share=dsp_share)
        self.dsp_depth = dsp_depth
        self.info = DeviceInfo(version, config_hash, rows, cols, 4 * rows * a_depth,
                               cols * w_depth, 4 * rows * out_words, out_words, max_k, out_modes,
                               max_data, CLOCK_HZ, timeout_cycles, watchdog, tile_period,
                               pe_kind, formats, group_sizes, 8 * chan_depth, 4 * group_depth,
                               act_bytes, max_layers, layer_kinds, **dsp)
        self.identify_data = identify_data
        self.info_extra = info_extra
        self.staged_write = staged_write
        self.latency = latency
        self.link_timeout = self.seconds(timeout_cycles, CLOCK_HZ)
        self.bufs = {b: bytearray(self.info.buffer_size(b)) for b in Buffer}
        self._rx = bytearray()                # frame being received (starts with SYNC)
        self._last_rx = 0.0
        self.tx = bytearray()
        self.log: list[P.Frame] = []          # frames with a good CRC, in arrival order
        self.replies: list[tuple[int, int, int]] = []   # (opcode, seq, status) sent
        self.layers: list[P.LayerDescriptor] = []
        self.layer = None
        self.last_error = ErrorCode.OK
        self.link_errors = 0
        self.cnt = P.Counters(0, 0, 0, 0, 0)
        self.programs: list[tuple[int, int, bytes]] = []
        self.dsp_runs: list[P.LayerDescriptor] = []
        self.layer_status: dict[int, int] = {}
        self.garbage = b""
        self.silent = False
        self.fail: dict[int, list[int]] = {}
        self.drop: dict[int, int] = {}
        self.hold: dict[int, object] = {}
        self._late = b""
        self.stray = b""
        self.busy_polls = 0
        self.delay = None
        self.rx_hook = None
        self.tx_hook = None
        self.closed = False

    # -- Transport -------------------------------------------------------------------------
    def seconds(self, cycles, clock_hz):
        return cycles / clock_hz * TIME_SCALE

    def wire_seconds(self, nbytes):
        return self.latency + nbytes * 1e-6

    def write(self, data):
        assert not self.closed
        now = time.monotonic()
        self._check_timeout(now)
        if self.rx_hook is not None:
            data = self.rx_hook(bytes(data))
        for b in data:
            self._rx_byte(b)
        self._last_rx = now

    def read(self, n, timeout):
        self._check_timeout(time.monotonic())
        if not self.tx:
            time.sleep(min(timeout, 0.001))
            self._check_timeout(time.monotonic())
            if not self.tx:
                return b""
        out = bytes(self.tx[:n])
        del self.tx[:n]
        return out

    def close(self):
        self.closed = True

    # -- byte decoder (hw.soc.link) --------------------------------------------------------
    def _check_timeout(self, now):
        buf = self._rx
        if buf and now - self._last_rx > self.link_timeout:
            op = buf[1] if len(buf) > 1 else 0
            seq = buf[4] if len(buf) > 4 else P.UNKNOWN_SEQ
            buf.clear()
            self._link_error(ErrorCode.TIMEOUT, op, seq)

    def _rx_byte(self, b):
        buf = self._rx
        if not buf:
            if b == P.SYNC:
                buf.append(b)
            return
        buf.append(b)
        if len(buf) < 4:
            return
        length = buf[2] | buf[3] << 8
        if len(buf) == 4:
            if not 1 <= length <= P.MAX_PAYLOAD:
                op = buf[1]
                buf.clear()
                self._link_error(ErrorCode.BAD_LENGTH, op, P.UNKNOWN_SEQ)
            return
        if len(buf) < P.FRAME_OVERHEAD - 1 + length:
            return
        raw = bytes(buf)
        buf.clear()
        if P.crc16(raw[1:]) != 0:
            self._bad_crc(raw)
            return
        frame = P.unpack_frame(raw)
        self.log.append(frame)
        if self.silent:
            return
        reply = self.handle(frame)
        if self.drop.get(frame.opcode):
            self.drop[frame.opcode] -= 1
            return
        if frame.opcode in self.hold:
            fn = self.hold.pop(frame.opcode)
            f = P.unpack_frame(reply)
            self._late += P.pack_reply(frame.opcode, f.status, fn(f.data), seq=f.seq)
            return
        if self.delay is not None and self.delay(frame):
            self._late += reply
            return
        self._send(reply)

    def _bad_crc(self, raw):
        op, seq = raw[1], raw[4]
        body = raw[5:-2]
        if (not self.staged_write and op == Opcode.WRITE and len(body) > P.WRITE_HEADER
                and not self.busy_polls):
            # protocol 1: the data streamed into the (range-checked) addressed range
            buf, addr = struct.unpack_from("<BI", body)
            data = body[P.WRITE_HEADER:]
            if buf <= max(Buffer) and addr + len(data) <= len(self.bufs[Buffer(buf)]):
                self.bufs[Buffer(buf)][addr:addr + len(data)] = data
        self._link_error(ErrorCode.BAD_CRC, op, seq)

    def _link_error(self, code, op, seq):
        self.link_errors += 1
        if not self.silent:
            self._send(P.pack_reply(op & 0x7F, code, seq=seq))

    def _send(self, reply):
        fr = P.unpack_frame(reply)
        self.replies.append((fr.request, fr.seq, fr.status))
        if self.tx_hook is not None:
            reply = self.tx_hook(reply)
        self.tx += self._late + self.stray + self.garbage + reply
        self._late = self.stray = b""

    # -- device ----------------------------------------------------------------------------
    def ops(self, op):
        return [f for f in self.log if f.opcode == op]

    def writes(self, buffer):
        return [f for f in self.ops(Opcode.WRITE) if f.payload[0] == buffer]

    def handle(self, f: P.Frame) -> bytes:
        op, pl = f.opcode, f.payload
        ok = lambda data=b"": P.pack_reply(op, ErrorCode.OK, data, seq=f.seq)  # noqa: E731
        err = lambda code: P.pack_reply(op, code, seq=f.seq)  # noqa: E731
        if self.fail.get(op):
            return err(self.fail[op].pop(0))
        busy = self.busy_polls > 0
        info = self.info
        if op == Opcode.IDENTIFY:
            if pl:
                return err(ErrorCode.BAD_LENGTH)
            data = info.pack() if self.identify_data is None else self.identify_data
            return ok(data + self.info_extra)
        if op == Opcode.WRITE:
            if len(pl) <= P.WRITE_HEADER:
                return err(ErrorCode.BAD_LENGTH)
            buf, addr = struct.unpack_from("<BI", pl)
            data = pl[P.WRITE_HEADER:]
            if buf > max(Buffer) or addr + len(data) > len(self.bufs[Buffer(buf)]):
                return err(ErrorCode.BAD_ADDRESS)
            if busy:
                return err(ErrorCode.BUSY)
            self.bufs[Buffer(buf)][addr:addr + len(data)] = data       # commit
            return ok()
        if op == Opcode.READ:
            if len(pl) != P.READ_PAYLOAD:
                return err(ErrorCode.BAD_LENGTH)
            buf, addr, count = struct.unpack("<BIH", pl)
            if not 1 <= count <= P.MAX_DATA:
                return err(ErrorCode.BAD_LENGTH)
            if buf > max(Buffer) or addr + count > len(self.bufs[Buffer(buf)]):
                return err(ErrorCode.BAD_ADDRESS)
            if busy:
                return err(ErrorCode.BUSY)
            return ok(bytes(self.bufs[Buffer(buf)][addr:addr + count]))
        if op == Opcode.LOAD_LAYER:
            if len(pl) != P.LAYER_PAYLOAD:
                return err(ErrorCode.BAD_LENGTH)
            if busy:
                return err(ErrorCode.BUSY)
            d = P.LayerDescriptor.unpack(pl)
            group_ok = d.group == 0 or (d.group in P.GROUP_SIZE_BITS
                                        and info.group_sizes >> P.GROUP_SIZE_BITS[d.group] & 1)
            if d.sparse:              # the DSP engine: the protocol's BAD_PARAM list
                fmt_ok = d.fmt in (0, 1, 2, 3) and not (info.dsp_packed and d.fmt == 0)
                dsp_ok = bool(info.dsp_stages and d.sparse - 1 < len(NMPattern)
                              and info.dsp_patterns >> (d.sparse - 1) & 1 and d.group == 0)
            else:
                fmt_ok = d.fmt <= 7 and info.formats >> d.fmt & 1
                dsp_ok = True
            if (d.out_mode not in (0, 1) or d.shift > 63 or d.relu > 1 or not fmt_ok
                    or not group_ok or d.chan > 1 or not dsp_ok):
                return err(ErrorCode.BAD_PARAM)
            self.layer = d
            self.layers.append(d)
            return ok()
        if op == Opcode.RUN:
            if len(pl) > 1:
                return err(ErrorCode.BAD_LENGTH)
            if pl and pl[0] & ~P.RUN_NOWAIT & 0xFF:
                return err(ErrorCode.BAD_PARAM)
            if busy:
                return err(ErrorCode.BUSY)
            if self.layer is None:
                return err(ErrorCode.NOT_LOADED)
            self.last_error = self.run(self.layer)
            return err(self.last_error)
        if op == Opcode.RUN_PROGRAM:                       # hw.soc.link's checks, in its order
            if not info.max_layers:
                return err(ErrorCode.UNKNOWN_OPCODE)
            if not 1 <= len(pl) <= 2:
                return err(ErrorCode.BAD_LENGTH)
            flags = pl[1] if len(pl) == 2 else 0
            if flags & ~P.RUN_NOWAIT & 0xFF or not 1 <= pl[0] <= info.max_layers:
                return err(ErrorCode.BAD_PARAM)
            if busy:
                return err(ErrorCode.BUSY)
            self.last_error = self.run_program(pl[0], flags)
            return ok() if flags & P.RUN_NOWAIT else err(self.last_error)
        if pl:
            return err(ErrorCode.BAD_LENGTH)
        if op == Opcode.COUNTERS:
            return ok(self.cnt.pack())
        if op == Opcode.STATUS:
            if busy:
                self.busy_polls -= 1
            return ok(P.Status(busy, self.layer is not None, self.last_error, 0, 0,
                               self.link_errors & 0xFFFF).pack())
        if op == Opcode.RESET:
            self.layer = None
            self.busy_polls = 0
            self.last_error = ErrorCode.OK
            return ok()
        return err(ErrorCode.UNKNOWN_OPCODE)

    def run_program(self, count: int, flags: int) -> int:
        """Record the program, write an LCNT record per layer until one fails (canned
        numbers: layer ``i`` of a ``count``-layer run has ``cycles = 1000 * (i + 1) + count``,
        ``core_cycles = 100 * (i + 1)``, ``busy = 10 * (i + 1)``, ``macs = 2**40 + i``),
        clobber A and OUT (the gather writes A, the core OUT); returns the program's status."""
        prog = bytes(self.bufs[Buffer.PROG][:count * P.PROGRAM_RECORD])
        self.programs.append((count, flags, prog))
        for buffer in (Buffer.A, Buffer.OUT):
            self.bufs[buffer][:] = bytes([0x5A]) * len(self.bufs[buffer])
        for i in range(count):
            status = self.layer_status.get(i, ErrorCode.OK)
            kind = prog[i * P.PROGRAM_RECORD + P.LayerDescriptor.SIZE]
            rec = P.LayerCounters(status, kind, 1000 * (i + 1) + count, 100 * (i + 1),
                                  10 * (i + 1), 2**40 + i)
            self.bufs[Buffer.LCNT][i * P.LCNT_RECORD:(i + 1) * P.LCNT_RECORD] = rec.pack()
            if status != ErrorCode.OK:
                return status
        return ErrorCode.OK

    def _bytes(self, buffer):
        return np.frombuffer(bytes(self.bufs[buffer]), np.uint8).astype(np.int64)

    def _epilogue(self, d: P.LayerDescriptor, N: int):
        """The requantization of a run: None (RAW32), the CHAN table's or the scalar one."""
        if d.out_mode == OutMode.RAW32:
            return None
        if d.chan:                # entry chan_base + n: bias i32, multiplier u16, shift u8, pad
            t = self._bytes(Buffer.CHAN)[8 * d.chan_base:8 * (d.chan_base + N)].reshape(N, 8)
            bias = t[:, 0] | t[:, 1] << 8 | t[:, 2] << 16 | t[:, 3] << 24
            return ChannelRequant(t[:, 4] | t[:, 5] << 8, t[:, 6] & 63,
                                  np.where(bias >= 1 << 31, bias - (1 << 32), bias), d.zp,
                                  bool(d.relu))
        return Requant(d.mult, d.shift, d.zp, bool(d.relu))

    def _store(self, d: P.LayerDescriptor, y) -> None:
        """The valid results into OUT: element (m, n) has index e = (m // R) * N + n in row
        bank m % R."""
        R = self.info.rows
        m, n = np.meshgrid(np.arange(d.m), np.arange(d.n), indexing="ij")
        e, bank = (m // R) * d.n + n, m % R
        out = np.frombuffer(self.bufs[Buffer.OUT], np.uint8)     # a writable view
        y = np.asarray(y).astype(np.int64)
        if d.out_mode == OutMode.RAW32:
            for b in range(4):
                out[(e * R + bank) * 4 + b] = (y >> 8 * b) & 0xFF
        else:
            out[((e >> 2) * R + bank) * 4 + (e & 3)] = y & 0xFF

    def run_dsp(self, d: P.LayerDescriptor) -> int:
        """The sparse DSP engine: the shape checks of the protocol, then every stage of every
        DSPW record (the documented layouts, read with their own formulas) times the
        activation its index selects, then the array's epilogue and OUT."""
        i, dp = self.info, self.depth
        R, C, L = i.rows, i.cols, i.dsp_stages
        packed = bool(i.dsp_packed)
        n, m = NM_PATTERNS[NMPattern(d.sparse - 1)]
        M, K, N = d.m, d.k, d.n
        wp = L // n * m                  # activations per step
        bp = wp // 4                     # row banks used
        S = -(-K // wp)
        T = -(-N // C)
        chains, CH = i.dsp_chains, i.dsp_chain_stride
        share = i.dsp_share
        out_cap = dp["out"] if d.out_mode == OutMode.RAW32 else 4 * dp["out"]
        if (0 in (M, K, N) or K > i.max_k or M * S > dp["a"]
                or d.w_base + T * S > self.dsp_depth or -(-M // R) * N > out_cap
                or (d.chan and d.chan_base + N > dp["chan"])):
            return ErrorCode.BAD_SHAPE
        self.dsp_runs.append(d)
        # A[r, k] (k up to S * Wp: the engine reads whole windows) is byte k % 4 of word
        # r * S + k // Wp of row bank (k // 4) % Bp, at ((word * rows + bank) << 2) | byte
        r, k = np.meshgrid(np.arange(M), np.arange(S * wp), indexing="ij")
        word, bank = r * S + k // wp, (k // 4) % bp
        a = self._bytes(Buffer.A)[((word * R + bank) << 2) | (k % 4)]
        a = np.where(a >= 128, a - 256, a)
        # every stage of every record adds value x A[r, row] to its column
        w = np.zeros((S * wp, T * C), dtype=np.int64)
        dspw = self._bytes(Buffer.DSPW)
        for t in range(T):
            for s in range(S):
                for c in range(chains):
                    at = ((d.w_base + t * S + s) * CH + c) * 16
                    rec = dspw[at:at + 16]
                    # the indices: of the index group's first chain (its own when share = 1)
                    lead = ((d.w_base + t * S + s) * CH + c // share * share) * 16
                    bits = int(dspw[lead + 8] | dspw[lead + 9] << 8 | dspw[lead + 10] << 16)
                    for j in range(L):
                        row = (s * (L // n) + j // n) * m + (bits >> 3 * j & 7)
                        v = int(rec[j])
                        if packed:
                            lo, hi = v & 0xF, v >> 4
                            w[row, t * C + 2 * c] += lo - 16 * (lo >= 8)
                            w[row, t * C + 2 * c + 1] += hi - 16 * (hi >= 8)
                        else:
                            w[row, t * C + c] += v - 256 * (v >= 128)
        acc = a @ w[:, :N]
        rq = self._epilogue(d, N)
        if rq is None:
            y = wrap_int(acc, 32)
        else:
            if isinstance(rq, Requant):
                rq = ChannelRequant.from_requant(rq, N)
            y = requantize_channels(acc, rq)
        self._store(d, y)
        self.cnt = P.Counters(T * M * S + L + 16, T * M * S, 0, M * N * K, 0)
        return ErrorCode.OK

    def run(self, d: P.LayerDescriptor) -> int:
        """The core: shape check as MixCore's CHECK state, then the golden model on the
        operands and tables read out of the buffers, then the valid results into OUT."""
        if d.sparse:
            return self.run_dsp(d)
        i, dp = self.info, self.depth
        R, C = i.rows, i.cols
        M, K, N = d.m, d.k, d.n
        fmt = WeightFormat(d.fmt)
        lanes = WEIGHT_LANES[fmt]
        kw, kb = -(-K // 4), -(-K // lanes)
        mt, nt = -(-M // R), -(-N // C)
        ng = -(-K // d.group) if d.group else 1
        out_cap = dp["out"] if d.out_mode == OutMode.RAW32 else 4 * dp["out"]
        if (0 in (M, K, N) or K > i.max_k or not i.supports_format(fmt)
                or (d.group and not i.group_sizes) or mt * kw > dp["a"]
                or d.w_base + nt * kb > dp["w"] or mt * N > out_cap
                or (d.chan and d.chan_base + N > dp["chan"])
                or (d.group and d.group_base + ng * N > dp["group"])):
            return ErrorCode.BAD_SHAPE
        # A[m, k]: byte k % 4 of word (m // R) * kw + k // 4 of row bank m % R
        m, k = np.meshgrid(np.arange(M), np.arange(K), indexing="ij")
        a = self._bytes(Buffer.A)[(((m // R) * kw + k // 4) * R + m % R) * 4 + k % 4]
        a = np.where(a >= 128, a - 256, a)
        # packed W[kb, n]: byte w_base + (n // C) * kb + kb of column bank n % C
        j, n = np.meshgrid(np.arange(kb), np.arange(N), indexing="ij")
        packed = self._bytes(Buffer.W)[(d.w_base + (n // C) * kb + j) * C + n % C]
        q = unpack_weights(packed, fmt, K)
        gq = None
        if d.group:               # entry group_base + g * N + n: scale u16, zero point i8, pad
            g0 = 4 * d.group_base
            t = self._bytes(Buffer.GROUP)[g0:g0 + 4 * ng * N].reshape(ng, N, 4)
            gq = GroupQuant(d.group, t[..., 0] | t[..., 1] << 8,
                            np.where(t[..., 2] >= 128, t[..., 2] - 256, t[..., 2]))
        rq = self._epilogue(d, N)
        try:
            y = mixgemm(a, q, fmt=fmt, group=gq, requant=rq)
        except ValueError:                  # RAW32 beyond int32: the core keeps 32 bits
            assert rq is None
            y = wrap_int(a @ q if gq is None else group_dequant(a, q, gq), 32)
        self._store(d, y)
        # counters: steps of each group (the last one ragged); group ends >= period apart
        if d.group:
            gs = d.group // lanes
            steps = [gs] * (ng - 1) + [kb - gs * (ng - 1)]
        else:
            steps = [kb]
        period = i.tile_period
        tiles = mt * nt
        stall = tiles * sum(max(0, period - s) for s in steps)
        dq_stall = tiles * sum(max(0, period - s) for s in steps[:-1])
        busy = tiles * kb
        self.cnt = P.Counters(busy + stall + DIM_BITS + R + C + 8, busy, stall, M * N * K,
                              dq_stall)
        return ErrorCode.OK


def v2_identify_data(**kw):
    """A protocol-2 device's IDENTIFY data (45 bytes: no formats, group sizes or tables)."""
    f = dict(version=2, config_hash=HASH, rows=4, cols=4, a_bytes=256, w_bytes=256,
             out_bytes=1024, out_words=256, max_k=64, out_modes=3, max_data=P.MAX_DATA,
             clock_hz=CLOCK_HZ, timeout_cycles=TIMEOUT_CYCLES, watchdog_cycles=1 << 20,
             tile_period=32, pe_kind=0)
    f.update(kw)
    return struct.pack("<BIHHIIIIHBHIIIHB", *f.values())


class V1Device(Transport):
    """A device still running a protocol-1 bitstream: frames ``SYNC | OPCODE | LENGTH u16 LE
    | PAYLOAD | CRC16 BE`` (no tag). A v2 IDENTIFY (LENGTH 1: the tag) is, to it, an IDENTIFY
    with a 1-byte payload, which it refuses with BAD_LENGTH in a LENGTH-1 reply."""

    def __init__(self):
        super().__init__()
        self.timeout = 0.5
        self.rx = bytearray()
        self.tx = bytearray()
        self.requests = 0
        self.closed = False

    def write(self, data):
        self.rx += data
        while len(self.rx) >= 6:
            i = self.rx.find(P.SYNC)
            if i < 0:
                self.rx.clear()
                return
            del self.rx[:i]
            length = self.rx[2] | self.rx[3] << 8
            if len(self.rx) < 6 + length:
                return
            frame = bytes(self.rx[:6 + length])
            del self.rx[:6 + length]
            if P.crc16(frame[1:]) != 0:
                continue
            self.requests += 1
            opcode = frame[1]
            status = ErrorCode.BAD_LENGTH if length else ErrorCode.OK   # only the refusals
            body = bytes([opcode | 0x80, 0x01, 0x00, status])
            self.tx += bytes([P.SYNC]) + body + struct.pack(">H", P.crc16(body))

    def read(self, n, timeout):
        if not self.tx:
            time.sleep(min(timeout, 0.001))
            return b""
        out = bytes(self.tx[:n])
        del self.tx[:n]
        return out

    def close(self):
        self.closed = True


def flip_in(opcode, nth, byte, bit):
    """An ``rx_hook`` that flips ``bit`` of ``byte`` in the ``nth`` (1-based) request frame
    with ``opcode`` (counted from when the hook is installed), once."""
    seen = Counter()

    def hook(data):
        if len(data) > byte and data[0] == P.SYNC and data[1] == opcode:
            seen[opcode] += 1
            if seen[opcode] == nth:
                data = bytearray(data)
                data[byte] ^= 1 << bit
                hook.done += 1
                return bytes(data)
        return data
    hook.done = 0
    return hook


def rand(rng, *shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def requant_for(k, zp=3, relu=False):
    mult, shift = to_dyadic(127 / (3 * 5500 * np.sqrt(k)))
    return Requant(mult, shift, zp, relu)


def _distinct(frames) -> int:
    """Frames with distinct payloads (a frame sent again carries the same payload)."""
    return len({bytes(f.payload) for f in frames})


def open_acc(dev, **kw):
    return Accelerator(dev, **kw)


# -- identify ------------------------------------------------------------------------------

def test_identify_and_expect():
    dev = FakeDevice()
    acc = open_acc(dev, expect={"rows": 4, "cols": 4, "config_hash": HASH})
    assert acc.info == dev.info
    assert acc.identify() == dev.info
    assert open_acc(FakeDevice(), expect=dev.info).info == dev.info
    assert acc.info.clock_hz == CLOCK_HZ and acc.info.timeout_cycles == TIMEOUT_CYCLES
    # the link timeout the driver derives from IDENTIFY goes through the transport
    assert acc._link_timeout == pytest.approx(dev.link_timeout)


@pytest.mark.parametrize("expect, words", [
    ({"rows": 8}, ["rows: expected 8, device has 4"]),
    ({"cols": 2, "config_hash": 0xDEADBEEF}, ["cols", "0xdeadbeef", "0x1234abcd"]),
    ({"clock_hz": 75_000_000}, ["clock_hz: expected 75000000, device has 50000000"]),
])
def test_mismatch_refused(expect, words):
    dev = FakeDevice()
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev, expect=expect)
    for w in words:
        assert w in str(e.value)
    assert dev.closed                                # the refused device is released


def test_mismatch_whole_info_and_bad_expect():
    other = FakeDevice(rows=8).info
    with pytest.raises(DeviceMismatch, match="rows"):
        open_acc(FakeDevice(), expect=other)
    with pytest.raises(ValueError, match="unknown expect field"):
        open_acc(FakeDevice(), expect={"row": 4})
    with pytest.raises(TypeError):
        open_acc(FakeDevice(), expect=[4, 4])


@pytest.mark.parametrize("extra", [b"", b"\x00" * 7])
def test_protocol_version_7_refused(extra):
    # a newer bitstream (maybe with a longer DeviceInfo): refused on the version byte
    dev = FakeDevice(version=7, info_extra=extra)
    with pytest.raises(DeviceMismatch, match="protocol version 7, this driver version 6: "
                                             "update the host software"):
        open_acc(dev)
    assert dev.closed


def v3_identify_data(version=3):
    """A protocol-3 device's IDENTIFY data: the 55 bytes before the layer-program fields."""
    return FakeDevice(version=version).info.pack()[:55]


def v4_identify_data(version=4):
    """A protocol-4 device's IDENTIFY data: the 62 bytes before the DSP engine's fields."""
    return FakeDevice(version=version).info.pack()[:62]


def v5_identify_data(version=5):
    """A protocol-5 device's IDENTIFY data: the 70 bytes before ``dsp_share`` (a DSP engine
    whose chains each have their own indices)."""
    return dsp_device(version=version).info.pack()[:70]


def test_v2_device_refused():
    """A protocol-2 bitstream (core v1) answers IDENTIFY with its 45-byte DeviceInfo: refused
    at once on the version byte, with a message that says to rebuild the bitstream."""
    dev = FakeDevice(identify_data=v2_identify_data())
    t0 = time.monotonic()
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev)
    msg = str(e.value)
    assert "protocol version 2 (a 45-byte IDENTIFY reply), this driver version 6" in msg
    assert "rebuild" in msg and "python -m hw.build" in msg
    assert len(dev.log) == 1 and dev.closed           # no retries, nothing else sent
    assert time.monotonic() - t0 < 0.5
    # a v6 version byte on a reply of the wrong size is not taken for a DeviceInfo either
    for data, size in ((v2_identify_data(version=6), 45), (v3_identify_data(version=6), 55),
                       (v4_identify_data(version=6), 62), (v5_identify_data(version=6), 70)):
        bad = FakeDevice(identify_data=data)
        with pytest.raises(DeviceMismatch, match=f"not a DeviceInfo .*71 bytes, got {size}"):
            open_acc(bad)


def test_v3_device_refused():
    """A protocol-3 bitstream (MixCore without layer programs) answers IDENTIFY with its
    55-byte DeviceInfo: refused on the version byte, nothing else sent."""
    dev = FakeDevice(identify_data=v3_identify_data())
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev)
    msg = str(e.value)
    assert "protocol version 3 (a 55-byte IDENTIFY reply), this driver version 6" in msg
    assert "rebuild" in msg and "python -m hw.build" in msg
    assert len(dev.log) == 1 and dev.closed


def test_v4_device_refused():
    """A protocol-4 bitstream (no DSP engine fields, 21-byte descriptor) answers IDENTIFY
    with its 62-byte DeviceInfo: refused on the version byte, nothing else sent."""
    dev = FakeDevice(identify_data=v4_identify_data())
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev)
    msg = str(e.value)
    assert "protocol version 4 (a 62-byte IDENTIFY reply), this driver version 6" in msg
    assert "rebuild" in msg and "python -m hw.build" in msg
    assert len(dev.log) == 1 and dev.closed


def test_v5_device_refused():
    """A protocol-5 bitstream (DSP engine without ``dsp_share``) answers IDENTIFY with its
    70-byte DeviceInfo: refused on the version byte, nothing else sent."""
    data = v5_identify_data()
    assert len(data) == 70 and data[0] == 5
    dev = FakeDevice(identify_data=data)
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev)
    msg = str(e.value)
    assert "protocol version 5 (a 70-byte IDENTIFY reply), this driver version 6" in msg
    assert "rebuild" in msg and "python -m hw.build" in msg
    assert len(dev.log) == 1 and dev.closed


def test_v1_device_refused():
    dev = V1Device()
    t0 = time.monotonic()
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev, timeout=0.5)
    msg = str(e.value)
    assert "protocol version 1" in msg and "rebuild" in msg
    assert dev.requests == 1 and dev.closed          # at once: no retries, no timeout
    assert time.monotonic() - t0 < 0.4


def test_unusable_configuration_refused():
    with pytest.raises(DeviceMismatch, match="timeout_cycles=0"):
        open_acc(FakeDevice(timeout_cycles=0))
    with pytest.raises(DeviceMismatch, match="formats=0x00"):
        open_acc(FakeDevice(formats=0, max_k=64))


# -- GEMM ----------------------------------------------------------------------------------

@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (4, 16, 4), (5, 7, 3), (16, 64, 16)])
@pytest.mark.parametrize("rq", [False, True])
def test_gemm_bit_exact(m, k, n, rq):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, w = rand(rng, m, k), rand(rng, k, n)
    requant = requant_for(k) if rq else None
    dev = FakeDevice(a_depth=256, w_depth=256, out_words=256)
    with open_acc(dev) as acc:
        got = acc.gemm(a, w, requant)
        np.testing.assert_array_equal(got, mpgemm(a, w, requant), strict=True)
        plan = acc.plan(m, k, n, requant)
    assert plan.runs == 1 and not plan.host_requant
    assert dev.layers[-1].out_mode == (OutMode.INT8 if rq else OutMode.RAW32)
    assert dev.closed


def test_extremes():
    dev = FakeDevice()
    acc = open_acc(dev)
    k = dev.info.max_k
    a = np.full((3, k), -128, np.int8)
    w = np.full((k, 5), -128, np.int8)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    np.testing.assert_array_equal(acc.gemm(a, -w - 1), mpgemm(a, -w - 1), strict=True)
    rq = Requant(1, 0, -128, True)
    np.testing.assert_array_equal(acc.gemm(a, w, rq), mpgemm(a, w, rq), strict=True)


@pytest.mark.parametrize("m, k, n", [(7, 37, 9), (13, 100, 21), (2, 130, 1), (33, 5, 40)])
@pytest.mark.parametrize("rq", [False, True])
def test_tiling_small_buffers(m, k, n, rq):
    # 2x4 array, banks of 16 words, 32 output words: every shape above needs several blocks
    dev = FakeDevice(rows=2, cols=4, a_depth=16, w_depth=16, out_words=32)
    rng = np.random.default_rng(m + k + n)
    a, w = rand(rng, m, k), rand(rng, k, n)
    requant = requant_for(k, zp=-5, relu=True) if rq else None
    acc = open_acc(dev)
    plan = acc.plan(m, k, n, requant)
    got = acc.gemm(a, w, requant)
    np.testing.assert_array_equal(got, mpgemm(a, w, requant), strict=True)
    assert plan.runs > 1
    assert len(dev.ops(Opcode.RUN)) == plan.runs == acc.last.runs
    if k > 16:                                   # split K: RAW32 partials, host requant
        assert plan.k_chunks > 1 and plan.mode == OutMode.RAW32
        assert plan.host_requant == rq
    for d in dev.layers:                          # every RUN fit the buffers
        mt, nt = -(-d.m // 2), -(-d.n // 4)
        assert d.k <= 16 and mt * -(-d.k // 4) <= 16 and nt * d.k <= 16
        assert mt * d.n <= (32 if d.out_mode == OutMode.RAW32 else 128)
    assert acc.last.macs == m * k * n             # device counters summed over runs
    assert 0 < acc.last.utilization(2, 4) <= 1


def test_tiling_m_and_n_blocks():
    dev = FakeDevice(rows=4, cols=4, a_depth=16, w_depth=16, out_words=64)
    acc = open_acc(dev)
    m, k, n = 50, 16, 30
    plan = acc.plan(m, k, n)
    assert plan.m_blocks > 1 and plan.n_blocks > 1 and plan.k_chunks == 1
    rng = np.random.default_rng(1)
    a, w = rand(rng, m, k), rand(rng, k, n)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)


@pytest.mark.parametrize("m, n, m_outer", [(12, 64, True), (64, 12, False)])
def test_loop_order_keeps_the_larger_operand_resident(m, n, m_outer):
    # K = 16: an A bank holds one 4-row block (4 words), a W bank one 4-column block
    dev = FakeDevice(rows=4, cols=4, a_depth=4, w_depth=16, out_words=64)
    acc = open_acc(dev)
    k = 16
    plan = acc.plan(m, k, n)
    assert plan.m_outer == m_outer and plan.mb == 4 and plan.nb == 4
    rng = np.random.default_rng(m)
    a, w = rand(rng, m, k), rand(rng, k, n)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    writes = {b: sum(f.payload[0] == b for f in dev.ops(Opcode.WRITE)) for b in Buffer}
    outer, inner = (Buffer.A, Buffer.W) if m_outer else (Buffer.W, Buffer.A)
    assert writes[outer] == (plan.m_blocks if m_outer else plan.n_blocks)
    assert writes[inner] == plan.runs


def test_chunked_writes_and_reads():
    dev = FakeDevice(rows=4, cols=4, a_depth=4096, w_depth=4096, out_words=8192)
    acc = open_acc(dev)
    rng = np.random.default_rng(2)
    a, w = rand(rng, 64, 160), rand(rng, 160, 64)       # 10 KiB each, 16 KiB RAW32 result
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    writes = dev.ops(Opcode.WRITE)
    assert len(writes) == 6                             # 2 x (4096 + 4096 + 2048)
    assert all(len(f.payload) <= P.MAX_PAYLOAD for f in writes)
    assert sorted(len(f.payload) - P.WRITE_HEADER for f in writes) == [2048] * 2 + [4096] * 4
    reads = dev.ops(Opcode.READ)
    assert len(reads) == 4 and all(struct.unpack("<BIH", f.payload)[2] == 4096 for f in reads)
    st = acc.last
    assert st.payload_sent == 2 * 64 * 160 and st.payload_received == 4 * 64 * 64
    assert 0.99 < st.efficiency < 1.0
    assert st.wire_bytes == sum(len(f.to_bytes()) for f in dev.log[1:]) + st.wire_received


def test_resident_operands_not_resent():
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(3)
    w = rand(rng, 32, 8)
    for _ in range(3):
        x = rand(rng, 6, 32)
        np.testing.assert_array_equal(acc.linear(x, w), mpgemm(x, w), strict=True)
    w_writes = [f for f in dev.ops(Opcode.WRITE) if f.payload[0] == Buffer.W]
    assert len(w_writes) == 1
    assert len(dev.ops(Opcode.LOAD_LAYER)) == 1        # same descriptor stays loaded


def test_linear_1d():
    acc = open_acc(FakeDevice())
    rng = np.random.default_rng(4)
    x, w = rand(rng, 20), rand(rng, 20, 7)
    rq = requant_for(20)
    got = acc.linear(x, w, rq)
    np.testing.assert_array_equal(got, mpgemm(x[None], w, rq)[0], strict=True)


def test_wider_integer_dtypes_accepted():
    acc = open_acc(FakeDevice())
    a = np.arange(-6, 6, dtype=np.int64).reshape(3, 4)
    w = np.arange(8, dtype=np.uint8).reshape(4, 2)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)


# -- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("a, w, rq, exc, match", [
    (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8), None, TypeError, "dtype float32"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), bool), None, TypeError, "w must be an integer"),
    (np.full((2, 3), 128, np.int16), np.zeros((3, 2), np.int8), None, ValueError, r"\[-128, 127\]"),
    (np.zeros((2, 3), np.int8), np.full((3, 2), -129), None, ValueError, "found"),
    (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), None, ValueError, "inner dimensions"),
    (np.zeros(3, np.int8), np.zeros((3, 2), np.int8), None, ValueError, "2-D"),
    (np.zeros((0, 3), np.int8), np.zeros((3, 2), np.int8), None, ValueError, "empty"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), (1, 0), TypeError, "Requant"),
])
def test_validation_before_sending(a, w, rq, exc, match):
    dev = FakeDevice()
    acc = open_acc(dev)
    sent = len(dev.log)
    with pytest.raises(exc, match=match):
        acc.gemm(a, w, rq)
    assert len(dev.log) == sent                         # nothing went out


# -- device errors, timeouts, garbage ----------------------------------------------------

@pytest.mark.parametrize("op, code", [(Opcode.RUN, ErrorCode.BAD_SHAPE),
                                      (Opcode.LOAD_LAYER, ErrorCode.BAD_PARAM),
                                      (Opcode.WRITE, ErrorCode.BAD_ADDRESS),
                                      (Opcode.READ, ErrorCode.BAD_ADDRESS),
                                      (Opcode.RUN, ErrorCode.NOT_LOADED),
                                      (Opcode.RUN, ErrorCode.WATCHDOG),
                                      (Opcode.RUN, ErrorCode.ABORTED),
                                      # with the request's tag: it passed the CRC, so the
                                      # request itself was malformed (not line damage)
                                      (Opcode.WRITE, ErrorCode.BAD_LENGTH)])
def test_device_error_codes(op, code):
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.fail[op] = [code]
    with pytest.raises(DeviceError) as e:
        acc.gemm(rand(np.random.default_rng(5), 3, 4), rand(np.random.default_rng(6), 4, 3))
    assert e.value.code == code and code.name in str(e.value)
    assert acc.last.retries == 0                     # not a link error: no retry
    # the driver forgets what the buffers hold and recovers on the next call
    a, w = rand(np.random.default_rng(7), 3, 4), rand(np.random.default_rng(8), 4, 3)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)


def test_link_error_replies_retried():
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.fail[Opcode.WRITE] = [ErrorCode.BAD_CRC, ErrorCode.TIMEOUT]
    a, w = rand(np.random.default_rng(9), 4, 8), rand(np.random.default_rng(10), 8, 4)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 2
    # every attempt carried a new tag
    seqs = [f.seq for f in dev.log]
    assert len(set(seqs)) == len(seqs) and P.UNKNOWN_SEQ not in seqs
    acc0 = open_acc(FakeDevice(), retries=0)
    acc0.transport.fail[Opcode.WRITE] = [ErrorCode.BAD_CRC]
    with pytest.raises(DeviceTimeout, match="BAD_CRC"):
        acc0.gemm(a, w)


def test_timeout_on_open_is_quick_and_clear():
    dev = FakeDevice()
    dev.silent = True
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match="IDENTIFY failed 2 times, last: no reply within "
                                            "0.05 s") as e:
        open_acc(dev, timeout=0.05, retries=1)
    assert time.monotonic() - t0 < 1.0
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, TransportTimeout)
    assert dev.closed and len(dev.log) == 2             # sent twice (one retry)
    assert [f.seq for f in dev.log] == [1, 2]


def test_timeout_mid_gemm():
    dev = FakeDevice()
    acc = open_acc(dev, retries=0)
    dev.silent = True
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match="WRITE"):
        acc.gemm(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8))
    # the reply timeout follows from IDENTIFY (wire time + link timeout), not a fixed guess
    assert time.monotonic() - t0 < 0.5


def test_garbage_before_replies():
    # SYNC-bearing noise before a reply costs that candidate only, never the reply behind it
    # (sw.protocol.FrameParser), so no request needs sending again
    dev = FakeDevice(rows=2, cols=2, a_depth=16, w_depth=16, out_words=16)
    # noise, a SYNC with a short length and a bad CRC, a SYNC with an impossible length
    dev.garbage = bytes([0x00, 0xFF, P.SYNC, 0x13, 0x02, 0x00, 0x11, 0x22, 0x33, 0x44,
                         P.SYNC, 0x01, 0x00, 0x42])
    acc = open_acc(dev)
    rng = np.random.default_rng(11)
    a, w = rand(rng, 9, 40), rand(rng, 40, 5)
    rq = requant_for(40)
    np.testing.assert_array_equal(acc.gemm(a, w, rq), mpgemm(a, w, rq), strict=True)
    assert acc.last.retries == 0


def test_garbage_swallowing_a_reply_recovered_by_retry():
    # SYNC + plausible length: the host parser takes the real reply as that frame's payload
    # and waits for more; the driver times out, drains and sends the request again
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.stray = bytes([P.SYNC, 0x13, 0xA5, 0x01])
    a, w = rand(np.random.default_rng(16), 4, 4), rand(np.random.default_rng(17), 4, 4)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 1


def test_stray_reply_dropped_by_its_tag():
    # a well-formed reply with another tag before the real one: dropped, no retry needed
    # (protocol 1 had to treat it as a failure and resynchronise)
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.stray = P.pack_reply(Opcode.WRITE, ErrorCode.OK, seq=0x77)
    a, w = rand(np.random.default_rng(12), 4, 4), rand(np.random.default_rng(13), 4, 4)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 0 and dev.stale_replies == 1


def test_counters_status_reset():
    dev = FakeDevice()
    acc = open_acc(dev)
    acc.gemm(np.ones((4, 8), np.int8), np.ones((8, 4), np.int8))
    c = acc.counters()
    assert c.macs == 4 * 8 * 4 and c.cycles >= c.busy
    st = acc.status()
    assert st.loaded and not st.busy and st.last_error == ErrorCode.OK and st.link_errors == 0
    acc.reset()
    assert not acc.status().loaded
    # after RESET the layer is loaded again by the next gemm
    np.testing.assert_array_equal(acc.gemm(np.ones((4, 8), np.int8), np.ones((8, 4), np.int8)),
                                  np.full((4, 4), 8, np.int32), strict=True)
    assert acc.total.runs == 2
    assert len(dev.ops(Opcode.LOAD_LAYER)) == 2


def test_int8_only_device_requant_on_host_and_raw_refused():
    dev = FakeDevice(out_modes=0b10)
    acc = open_acc(dev)
    a, w = rand(np.random.default_rng(14), 3, 80), rand(np.random.default_rng(15), 80, 3)
    with pytest.raises(ValueError, match="only INT8"):
        acc.gemm(a, w)
    rq = requant_for(60)
    np.testing.assert_array_equal(acc.gemm(a[:, :60], w[:60], rq), mpgemm(a[:, :60], w[:60], rq),
                                  strict=True)


# -- weight formats, groups, per-channel tables (since protocol 3) -----------------------

FORMATS = list(WeightFormat)
GROUPS = [None, 32, 64, 128]


def rand_weights(rng, fmt, k, n):
    """Random weight values of ``fmt`` (every code the format has)."""
    fmt = WeightFormat(fmt)
    if fmt == WeightFormat.TERNARY:
        return rng.integers(-1, 2, size=(k, n))
    if fmt == WeightFormat.POW2:
        return rng.choice([-1, 1], size=(k, n)) * (1 << rng.integers(0, 8, size=(k, n)))
    bits = {WeightFormat.INT8: 8, WeightFormat.INT4: 4, WeightFormat.INT2: 2}[fmt]
    return rng.integers(-(1 << bits - 1), 1 << bits - 1, size=(k, n))


def rand_group(rng, k, n, size, *, max_scale=(1 << 16) - 1):
    ng = -(-k // size)
    return GroupQuant(size, rng.integers(0, max_scale + 1, size=(ng, n)),
                      rng.integers(-128, 128, size=(ng, n)))


def rand_chan(rng, a, q, gq, *, relu=False):
    """A ChannelRequant that maps each column's sums onto int8 (not all saturated), with a
    random bias per channel."""
    acc = group_dequant(a, q, gq) if gq is not None else a @ q
    n = q.shape[1]
    std = acc.std(axis=0) + np.abs(acc).mean(axis=0) / 4 + 1
    bias = np.clip(np.rint(rng.normal(0, 1, n) * std), -(1 << 31), (1 << 31) - 1).astype(np.int64)
    ms = [to_dyadic(float(127 / (3 * s))) for s in std]
    return ChannelRequant(np.array([m for m, _ in ms]), np.array([s for _, s in ms]), bias,
                          int(rng.integers(-20, 21)), relu)


def rand_requant(rng, kind, a, q, gq):
    if kind == "raw":
        return None
    if kind == "scalar":
        acc = group_dequant(a, q, gq) if gq is not None else a @ q
        return Requant(*to_dyadic(float(127 / (3 * acc.std() + 1))), int(rng.integers(-9, 10)),
                       bool(rng.integers(0, 2)))
    return rand_chan(rng, a, q, gq, relu=bool(rng.integers(0, 2)))


def big_device(**kw):
    """Buffers for K up to 512 INT8 weights in one run, 64-wide N tiles."""
    args = dict(rows=4, cols=4, a_depth=512, w_depth=2048, out_words=512, chan_depth=256,
                group_depth=1024)
    args.update(kw)
    return FakeDevice(**args)


@pytest.fixture(scope="module")
def big_acc():
    dev = big_device()
    acc = open_acc(dev)
    yield acc
    acc.close()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("group", GROUPS, ids=lambda g: f"g{g or 0}")
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 37, 9), (13, 150, 6), (6, 257, 11)])
def test_mixgemm_every_format_and_group(big_acc, fmt, group, m, k, n):
    """Every weight format x {no groups, 32, 64, 128} x ragged shapes (M, N not multiples of
    the array, K not a multiple of the lanes or the group), raw sums, a scalar and a
    per-channel requantization: bit-exact with sw.numerics.mixgemm."""
    rng = np.random.default_rng([int(fmt), group or 0, m, k, n])
    a = rand(rng, m, k)
    q = rand_weights(rng, fmt, k, n)
    for kind in ("raw", "scalar", "channel"):
        # raw output keeps 32 bits: small group scales keep the sums inside int32
        gq = None if group is None else rand_group(
            rng, k, n, group, max_scale=255 if kind == "raw" else (1 << 16) - 1)
        rq = rand_requant(rng, kind, a, q, gq)
        want = mixgemm(a, q, fmt=fmt, group=gq, requant=rq)
        got = big_acc.mixgemm(a, q, fmt=fmt, group=gq, requant=rq)
        np.testing.assert_array_equal(got, want, strict=True)
        d = big_acc.transport.layers[-1]
        assert (d.fmt, d.group, d.chan, d.out_mode) == (
            fmt, group or 0, int(kind == "channel"), OutMode.RAW32 if rq is None else OutMode.INT8)
        if kind == "channel":
            assert (d.zp, d.relu) == (rq.zero_point, int(rq.relu))
        assert big_acc.last.runs == 1 and big_acc.last.macs == m * k * n


@pytest.mark.parametrize("fmt, symmetric", [
    (f, s) for f in FORMATS for s in (True, False)
    if s or f not in (WeightFormat.TERNARY, WeightFormat.POW2)],      # symmetric only
    ids=lambda v: v.name if isinstance(v, WeightFormat) else ("sym" if v else "asym"))
@pytest.mark.parametrize("group", GROUPS, ids=lambda g: f"g{g or 0}")
def test_linear_quant_layer(big_acc, fmt, group, symmetric):
    """A sw.quant.QuantLinear: int8 input -> the device's int8 output == layer.golden; float
    input -> quantized, run, dequantized == layer.forward; a 1-D input too."""
    rng = np.random.default_rng([int(fmt), group or 0, symmetric])
    k, n = 150, 13
    w = rng.standard_normal((k, n)) / np.sqrt(k)
    bias = 0.1 * rng.standard_normal(n)
    x = rng.standard_normal((9, k))
    xs, xz = quant.calibrate_act(x)
    ys, yz = quant.calibrate_act(x @ w + bias)
    layer = quant.quantize_linear(w, bias, fmt=fmt, group=group, symmetric=symmetric,
                                  x_scale=xs, x_zero=xz, y_scale=ys, y_zero=yz,
                                  relu=bool(rng.integers(0, 2)))
    xq = quant.quantize_act(x, xs, xz)
    got = big_acc.linear(xq, layer)
    np.testing.assert_array_equal(got, layer.golden(xq), strict=True)
    np.testing.assert_array_equal(big_acc.linear(x, layer), layer.forward(x), strict=True)
    np.testing.assert_array_equal(big_acc.linear(x[3], layer), layer.forward(x[3:4])[0],
                                  strict=True)
    np.testing.assert_array_equal(big_acc.linear(xq.astype(np.int32), layer), got, strict=True)
    d = big_acc.transport.layers[-1]
    assert (d.fmt, d.chan) == (fmt, 1)
    # an asymmetric per-channel layer is expressed with groups of 128 (see sw.quant)
    assert d.group == (group or (0 if symmetric else 128))


@pytest.mark.parametrize("fmt, group", [(WeightFormat.INT4, 32), (WeightFormat.TERNARY, 64),
                                        (WeightFormat.INT8, None), (WeightFormat.POW2, 128),
                                        (WeightFormat.INT2, 32)])
def test_mixgemm_tiling_over_m_and_n_with_tables(fmt, group):
    """Small buffers: the layer runs in many M x N blocks; each RUN's descriptor carries its
    block's N, and the CHAN and GROUP tables hold that block's slice (entry g * N + n with the
    block's N), so the results are bit-exact."""
    dev = FakeDevice(rows=2, cols=4, a_depth=64, w_depth=256, out_words=8, chan_depth=16,
                     group_depth=64)
    acc = open_acc(dev)
    m, k, n = 23, 200, 45
    rng = np.random.default_rng(int(fmt))
    a, q = rand(rng, m, k), rand_weights(rng, fmt, k, n)
    gq = None if group is None else rand_group(rng, k, n, group)
    rq = rand_chan(rng, a, q, gq, relu=True)
    plan = acc.plan(m, k, n, rq, fmt=fmt, group=group or 0, split_k=False)
    assert plan.m_blocks > 1 and plan.n_blocks > 1 and plan.k_chunks == 1 and plan.chan
    got = acc.mixgemm(a, q, fmt=fmt, group=gq, requant=rq)
    np.testing.assert_array_equal(got, mixgemm(a, q, fmt=fmt, group=gq, requant=rq), strict=True)
    assert len(dev.ops(Opcode.RUN)) == plan.runs == acc.last.runs
    assert acc.last.macs == m * k * n
    ng = -(-k // group) if group else 0
    for d in dev.layers:
        assert d.k == k and d.chan == 1 and d.group == (group or 0) and d.fmt == fmt
        assert d.n <= 16 and -(-d.m // 2) * d.n <= 4 * 8 and ng * d.n <= 64
    assert {d.n for d in dev.layers} == {plan.nb, n % plan.nb or plan.nb}
    # the tables of the last N block: its own slice, laid out for its own N
    n0 = (plan.n_blocks - 1) * plan.nb
    chan = dev.writes(Buffer.CHAN)[-1].payload[P.WRITE_HEADER:]
    assert chan == layout.chan_table_image(ChannelRequant(
        rq.multiplier[n0:], rq.shift[n0:], rq.bias[n0:], rq.zero_point, rq.relu))
    if group:
        grp = dev.writes(Buffer.GROUP)[-1].payload[P.WRITE_HEADER:]
        assert grp == layout.group_table_image(GroupQuant(group, gq.scale[:, n0:],
                                                          gq.zero[:, n0:]))
    # weights (and their tables) stay resident over the M blocks of an N block, or the
    # activations over the N blocks of an M block
    # (frames counted once per payload: on a loaded machine the fake's millisecond link
    # timeout can make the driver send a frame again, which is then received twice)
    outer = Buffer.A if plan.m_outer else Buffer.W
    assert _distinct(dev.writes(outer)) == (plan.m_blocks if plan.m_outer else plan.n_blocks)
    assert _distinct(dev.writes(Buffer.CHAN)) == _distinct(dev.writes(Buffer.W))


def test_group_table_limits_the_n_block():
    # 4 groups of 32 per channel, 32 GROUP entries: at most 8 channels per RUN
    dev = FakeDevice(rows=4, cols=4, a_depth=64, w_depth=128, out_words=64, group_depth=32)
    acc = open_acc(dev)
    rng = np.random.default_rng(5)
    m, k, n = 6, 128, 30
    a, q = rand(rng, m, k), rand_weights(rng, WeightFormat.INT4, k, n)
    gq = rand_group(rng, k, n, 32)
    rq = rand_chan(rng, a, q, gq)
    got = acc.mixgemm(a, q, fmt=WeightFormat.INT4, group=gq, requant=rq)
    np.testing.assert_array_equal(got, mixgemm(a, q, fmt=WeightFormat.INT4, group=gq,
                                               requant=rq), strict=True)
    assert max(d.n for d in dev.layers) == 8 and len(dev.ops(Opcode.RUN)) == 4


def test_gemm_with_channel_requant():
    """gemm() takes a ChannelRequant too: on the device (CHAN table) when K fits, on the
    host (RAW32 partial sums) when K is split; both == mixgemm."""
    dev = FakeDevice(rows=2, cols=4, a_depth=16, w_depth=16, out_words=32, chan_depth=8)
    acc = open_acc(dev)
    rng = np.random.default_rng(6)
    for k in (16, 40):
        a, w = rand(rng, 9, k), rand(rng, k, 19)
        rq = rand_chan(rng, a, w, None, relu=True)
        got = acc.gemm(a, w, rq)
        np.testing.assert_array_equal(got, mixgemm(a, w, requant=rq), strict=True)
        plan = acc.plan(9, k, 19, rq)
        assert plan.host_requant == (k > 16) and plan.chan == (k <= 16)
        if k <= 16:
            assert all(d.chan == 1 and d.n <= 8 for d in dev.layers)
    # a device without a CHAN table: requantized on the host from the raw sums
    dev = FakeDevice(chan_depth=0)
    acc = open_acc(dev)
    a, w = rand(rng, 5, 30), rand(rng, 30, 7)
    rq = rand_chan(rng, a, w, None)
    np.testing.assert_array_equal(acc.gemm(a, w, rq), mixgemm(a, w, requant=rq), strict=True)
    assert dev.layers[-1].out_mode == OutMode.RAW32 and not dev.writes(Buffer.CHAN)


def test_int8_dsp_device():
    """A core on MULT18X18D PEs: INT8 only, no groups. gemm works; the rest is refused."""
    dev = FakeDevice(formats=1 << WeightFormat.INT8, group_sizes=0,
                     pe_kind=P.PeKind.INT8_DSP)
    acc = open_acc(dev)
    rng = np.random.default_rng(8)
    a, w = rand(rng, 7, 50), rand(rng, 50, 6)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    sent = len(dev.log)
    with pytest.raises(ValueError, match=r"does not compute INT4 weights: its array \(PE kind "
                                         r"INT8_DSP\) supports INT8$"):
        acc.mixgemm(a, rand_weights(rng, WeightFormat.INT4, 50, 6), fmt=WeightFormat.INT4)
    with pytest.raises(ValueError, match=r"groups of 32 along K: its group sizes are none"):
        acc.mixgemm(a, w, fmt=WeightFormat.INT8, group=rand_group(rng, 50, 6, 32),
                    requant=requant_for(50))
    assert len(dev.log) == sent


def _refusals():
    """(device kwargs, call(acc, rng), exception, message pattern)."""
    I4, TER, P2, I8 = WeightFormat.INT4, WeightFormat.TERNARY, WeightFormat.POW2, WeightFormat.INT8

    def mix(fmt, k=20, n=5, m=3, group=None, requant="chan", q=None, a=None, gshape=None):
        def call(acc, rng):
            aa = rand(rng, m, k) if a is None else a
            qq = rand_weights(rng, fmt, k, n) if q is None else q
            gq = None
            if group is not None:
                gq = rand_group(rng, k, n, group, max_scale=(1 << 16) - 1)
                if gshape is not None:
                    gq = GroupQuant(group, np.ones(gshape, np.int64), np.zeros(gshape, np.int64))
            rq = (ChannelRequant(np.ones(n, np.int64), np.zeros(n, np.int64),
                                 np.zeros(n, np.int64)) if requant == "chan" else requant)
            return acc.mixgemm(aa, qq, fmt=fmt, group=gq, requant=rq)
        return call

    return [
        # formats and group sizes the device lacks (named, with what it has)
        ("fmt", dict(formats=0b00011), mix(TER), ValueError,
         r"does not compute TERNARY weights: its array \(PE kind MIXPE\) supports INT8, INT4"),
        ("group", dict(group_sizes=0b001), mix(I4, group=64), ValueError,
         r"does not support groups of 64 along K: its group sizes are 32 \(PE kind MIXPE\)"),
        ("group-size", {}, mix(I4, group=48), ValueError, r"group size must be one of"),
        # K beyond the device's limit for the format (never split here)
        ("k-int8", {}, mix(I8, k=65), ValueError,
         r"K=65 is more than the device takes in one run with INT8 weights \(K <= 64: "
         r"max_k 128, A banks of 128 activations, W banks of 64 INT8 weights\); K is not split"),
        ("k-int4", {}, mix(I4, k=129), ValueError, r"K=129 .* INT4 weights \(K <= 128"),
        ("k-group", {}, mix(I8, k=65, group=32, requant=None), ValueError, r"K=65 .*K <= 64"),
        ("groups-table", dict(group_depth=2), mix(I4, k=128, group=32), ValueError,
         r"K=128 in groups of 32 makes 4 groups, but the device's GROUP table holds 2 "
         r"entries"),
        # output modes and tables the device lacks
        ("no-int8-out", dict(out_modes=0b01), mix(I4), ValueError,
         r"needs the device's INT8 output mode, which it lacks \(out_modes=0x01"),
        ("no-raw-out", dict(out_modes=0b10), mix(I4, requant=None), ValueError,
         r"needs RAW32 output \(requant=None\) but the device supports only INT8 output"),
        ("no-chan", dict(chan_depth=0), mix(I4), ValueError,
         r"ChannelRequant\) needs the device's CHAN table, which it lacks \(chan_bytes=0\)"),
        # values outside the format
        ("int4-range", {}, mix(I4, q=np.full((20, 5), 8)), ValueError,
         r"q must hold INT4 weights \(integers in \[-8, 7\]\); found \[8, 8\]"),
        ("ternary", {}, mix(TER, q=np.full((20, 5), 2)), ValueError,
         r"q must hold TERNARY weights \(values in \{-1, 0, 1\}\); found \[2, 2\]"),
        ("ternary-neg", {}, mix(TER, q=np.arange(-2, 98).reshape(20, 5) % 3 - 2), ValueError,
         r"TERNARY weights .*found \[-2, 0\]"),
        ("pow2-zero", {}, mix(P2, q=np.eye(20, 5, dtype=np.int64)), ValueError,
         r"q must hold POW2 weights \(values \+-2\*\*e with e in 0..7 \(no zero\)\); found \[0\]"),
        ("pow2-3", {}, mix(P2, q=np.full((20, 5), 3) * np.array([1, -1, 1, 1, 1])), ValueError,
         r"POW2 weights .*found \[-3, 3\]"),
        ("pow2-big", {}, mix(P2, q=np.full((20, 5), 256)), ValueError,
         r"POW2 weights .*found \[256, 256\]"),
        ("a-range", {}, mix(I4, a=np.full((3, 20), 200)), ValueError, r"a values must lie in "
         r"\[-128, 127\]"),
        # dtypes and shapes
        ("q-float", {}, mix(I4, q=np.zeros((20, 5))), TypeError,
         r"q must be an integer array, got dtype float64"),
        ("a-float", {}, mix(I4, a=np.zeros((3, 20), np.float32)), TypeError,
         r"a must be an integer array, got dtype float32"),
        ("q-1d", {}, mix(I4, q=np.zeros(20, np.int8)), ValueError, r"q must be 2-D \(K, N\)"),
        ("inner", {}, mix(I4, q=np.zeros((21, 5), np.int8)), ValueError, r"inner dimensions"),
        ("group-shape", {}, mix(I4, k=40, group=32, gshape=(1, 5)), ValueError,
         r"group tables \(scale, zero\) must have shape \(ceil\(K / 32\), N\) = \(2, 5\) for "
         r"K=40, N=5; got \(1, 5\)"),
        ("chan-count", {}, mix(I4, requant=ChannelRequant(np.ones(4, np.int64),
                                                          np.zeros(4, np.int64),
                                                          np.zeros(4, np.int64))),
         ValueError, r"requant has 4 channels, the layer N=5"),
        ("group-type", {}, lambda acc, rng: acc.mixgemm(
            rand(rng, 2, 4), np.ones((4, 2), np.int8), fmt=I8, group=np.ones((1, 2))),
         TypeError, r"group must be a sw.numerics.GroupQuant"),
        ("requant-type", {}, lambda acc, rng: acc.mixgemm(
            rand(rng, 2, 4), np.ones((4, 2), np.int8), fmt=I8, requant=(1, 0)),
         TypeError, r"requant must be a sw.numerics.Requant, a sw.numerics.ChannelRequant"),
        ("fmt-name", {}, lambda acc, rng: acc.mixgemm(
            rand(rng, 2, 4), np.ones((4, 2), np.int8), fmt="INT3"),
         ValueError, r"fmt must be a sw.numerics.WeightFormat"),
        # raw output of a grouped layer whose sums could exceed int32
        ("raw-range", {}, mix(I8, k=64, group=32, requant=None,
                              a=np.full((3, 64), -128, np.int8),
                              q=np.full((64, 5), 127)), ValueError,
         r"raw \(RAW32\) output of a grouped layer: the sums may exceed int32"),
        # gemm: INT8 weights only, and a device must compute them
        ("gemm-int8", dict(formats=0b00010), lambda acc, rng: acc.gemm(
            rand(rng, 2, 4), rand(rng, 4, 2)), ValueError,
         r"does not compute INT8 weights: its array \(PE kind MIXPE\) supports INT4"),
    ]


@pytest.mark.parametrize("dev_kw, call, exc, match",
                         [r[1:] for r in _refusals()], ids=[r[0] for r in _refusals()])
def test_refused_before_sending(dev_kw, call, exc, match):
    dev = FakeDevice(**dev_kw)
    acc = open_acc(dev)
    sent = len(dev.log)
    with pytest.raises(exc, match=match):
        call(acc, np.random.default_rng(0))
    assert len(dev.log) == sent                         # nothing went out


def test_linear_refusals():
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(9)
    w = rng.standard_normal((40, 6))
    layer = quant.quantize_linear(w, None, fmt=WeightFormat.INT4, group=32, x_scale=0.05,
                                  y_scale=0.2)
    sent = len(dev.log)
    with pytest.raises(ValueError, match=r"x must be \(M, 40\) or \(40,\) for this layer "
                                         r"\(40 inputs, 6 outputs\), got shape \(3, 41\)"):
        acc.linear(np.zeros((3, 41)), layer)
    with pytest.raises(ValueError, match="must be finite"):
        acc.linear(np.full((2, 40), np.nan), layer)
    with pytest.raises(TypeError, match="integer .* or float array, not of dtype complex"):
        acc.linear(np.zeros((2, 40), complex), layer)
    with pytest.raises(ValueError, match=r"a values must lie in \[-128, 127\]"):
        acc.linear(np.full((2, 40), 300), layer)
    with pytest.raises(TypeError, match="requant is part of the QuantLinear"):
        acc.linear(np.zeros((2, 40), np.int8), layer, requant_for(40))
    # the device lacks group size 32
    acc2 = open_acc(FakeDevice(group_sizes=0b110))
    with pytest.raises(ValueError, match="groups of 32 along K: its group sizes are 64, 128"):
        acc2.linear(np.zeros((2, 40)), layer)
    assert len(dev.log) == sent


def test_device_refuses_unsupported_descriptor_fields():
    """The fake answers like the link: BAD_PARAM for a format, group size or per-channel
    flag the device does not take (the driver never sends them; sent here by hand)."""
    dev = FakeDevice(formats=0b00011, group_sizes=0b001)
    acc = open_acc(dev)
    for kw in (dict(fmt=WeightFormat.TERNARY), dict(fmt=9), dict(group=64), dict(group=48),
               dict(chan=2), dict(shift=64), dict(out_mode=2)):
        with pytest.raises(DeviceError, match="BAD_PARAM") as e:
            acc.load_layer(P.LayerDescriptor(4, 8, 4, **kw))
        assert e.value.code == ErrorCode.BAD_PARAM
    acc.load_layer(P.LayerDescriptor(4, 8, 4, fmt=WeightFormat.INT4, group=32, chan=1))
    # a shape beyond the buffers passes LOAD_LAYER and fails at RUN (the core's check)
    acc.load_layer(P.LayerDescriptor(4, 8, 4 * 64 + 1, fmt=WeightFormat.INT4, group=32, chan=1))
    with pytest.raises(DeviceError, match="BAD_SHAPE"):
        acc.run()


def test_counters_dq_stall_and_run_estimate():
    """Groups shorter than the drain period (INT2, groups of 32: 8 steps; a 16-column array
    has a period of 16) stall inside a tile: COUNTERS reports it as dq_stall, the driver sums
    it per call, and its run-time estimate stays an upper bound."""
    dev = FakeDevice(rows=2, cols=16, a_depth=256, w_depth=256, out_words=64, group_depth=512)
    acc = open_acc(dev)
    rng = np.random.default_rng(10)
    m, k, n = 5, 200, 40
    a, q = rand(rng, m, k), rand_weights(rng, WeightFormat.INT2, k, n)
    gq = rand_group(rng, k, n, 32)
    rq = rand_chan(rng, a, q, gq)
    np.testing.assert_array_equal(acc.mixgemm(a, q, fmt=WeightFormat.INT2, group=gq,
                                              requant=rq),
                                  mixgemm(a, q, fmt=WeightFormat.INT2, group=gq, requant=rq),
                                  strict=True)
    c = acc.counters()
    tiles = 3 * 3                                     # ceil(5 / 2) x ceil(40 / 16)
    assert c == dev.cnt and c.dq_stall == tiles * 6 * (16 - 8)   # 6 of 7 groups end inside
    assert c.stall == tiles * (6 * (16 - 8) + (16 - 2))          # the last has 2 steps
    assert acc.last.dq_stall == c.dq_stall and acc.last.runs == 1
    assert acc.total.dq_stall == c.dq_stall
    assert acc._estimate_cycles(dev.layers[-1]) >= c.cycles
    # the estimate bounds the fake's cycles over formats, groups and shapes
    dev.bufs[Buffer.W][:] = bytes(len(dev.bufs[Buffer.W]))     # valid codes of every format
    for fmt in WeightFormat:
        for group in (0, 32, 128):
            for mm, kk, nn in ((1, 1, 1), (9, 255, 33), (2, 64, 16)):
                d = P.LayerDescriptor(mm, kk, nn, 0, fmt=fmt, group=group)
                if dev.run(d) == ErrorCode.OK:
                    assert acc._estimate_cycles(d) >= dev.cnt.cycles, (fmt, group, mm, kk, nn)


# -- damaged frames, lost and late replies, a busy core ------------------------

def _big_w_gemm():
    """A GEMM whose W image (128 x 40 on 4 columns: 5120 bytes) takes two WRITEs: 4096
    bytes at 0 and 1024 at 4096; A (8 x 128) one more; a single RUN."""
    rng = np.random.default_rng(21)
    dev_kw = dict(rows=4, cols=4, a_depth=2048, w_depth=2048, out_words=2048)
    return dev_kw, rand(rng, 8, 128), rand(rng, 128, 40)


@pytest.mark.parametrize("staged", [True, False], ids=["v2-staged", "v1-semantics"])
def test_corrupted_write_address(staged):
    """The second WRITE of the GEMM (W chunk at 4096) arrives with bit 12 of its address
    flipped (4096 -> 0, still in range). The device answers BAD_CRC and the driver sends
    that WRITE again.

    With the staged WRITE of protocol 2 the damaged frame wrote nothing: the result is exact.
    With protocol-1 semantics (data streamed into the buffer at the received address before
    the CRC was known) its 1024 bytes land on W[0:1024], over the first chunk, which the
    driver does not send again (it retries the one damaged request): the result is wrong,
    and so is the next GEMM with the same weights (W counts as resident). So the tags and
    retries of the driver alone are not enough; the gateware has to stage WRITE data."""
    dev_kw, a, w = _big_w_gemm()
    dev = FakeDevice(staged_write=staged, **dev_kw)
    acc = open_acc(dev)
    assert acc.plan(8, 128, 40).runs == 1
    # frame bytes 6..9 are the address (u32 LE): 4096 = 00 10 00 00, bit 4 of byte 7
    dev.rx_hook = hook = flip_in(Opcode.WRITE, 2, 7, 4)
    got = acc.gemm(a, w)
    assert hook.done == 1
    assert acc.last.retries == 1
    assert [st for op, _, st in dev.replies if op == Opcode.WRITE].count(ErrorCode.BAD_CRC) == 1
    w_writes = [struct.unpack_from("<BI", f.payload) for f in dev.ops(Opcode.WRITE)]
    assert w_writes == [(Buffer.W, 0), (Buffer.W, 4096), (Buffer.A, 0)]   # good frames only
    image = layout.weight_image(pack_weights(w, WeightFormat.INT8), 4)
    want = mpgemm(a, w)
    if staged:
        np.testing.assert_array_equal(got, want, strict=True)
        assert bytes(dev.bufs[Buffer.W][:len(image)]) == image
        return
    # protocol-1 device: the damaged WRITE's data sits where the first chunk belongs
    assert bytes(dev.bufs[Buffer.W][:1024]) == image[4096:]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, want, strict=True)
    # and _forget does not rescue it: it runs inside write_buffer's retry, after which _put
    # records the whole W image as resident (right when a failed WRITE wrote nothing), so
    # the next GEMM with the same weights reuses the damaged buffer and is wrong as well
    dev.rx_hook = None
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(acc.gemm(a, w), want, strict=True)
    assert len([f for f in dev.ops(Opcode.WRITE) if f.payload[0] == Buffer.W]) == 2


@pytest.mark.parametrize("byte, bit, code", [
    (0, 0, None),                      # SYNC: the device never sees the frame
    (1, 0, ErrorCode.BAD_CRC),         # opcode 05 -> 04 (a LOAD_LAYER without body)
    (2, 0, ErrorCode.BAD_LENGTH),      # LENGTH 1 -> 0
    (2, 1, ErrorCode.TIMEOUT),         # LENGTH 1 -> 3: the device waits for 2 more bytes
    (3, 7, ErrorCode.BAD_LENGTH),      # LENGTH 0x8001 > MAX_PAYLOAD
    (4, 3, ErrorCode.BAD_CRC),         # SEQ
    (5, 0, ErrorCode.BAD_CRC),         # CRC high byte
    (6, 7, ErrorCode.BAD_CRC),         # CRC low byte
])
def test_corrupted_run(byte, bit, code):
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(22)
    a, w = rand(rng, 6, 20), rand(rng, 20, 5)
    dev.rx_hook = hook = flip_in(Opcode.RUN, 1, byte, bit)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert hook.done == 1 and acc.last.retries == 1
    assert len(dev.ops(Opcode.RUN)) == 1             # the damaged RUN never ran
    codes = [st for _, _, st in dev.replies if st in P.LINK_ERRORS]
    assert codes[:1] == ([code] if code is not None else codes[:1])


@pytest.mark.parametrize("byte, bit", [(5, 1), (9, 0), (16, 7), (17, 2), (18, 5), (19, 0),
                                       (2, 5), (2, 4)])
def test_corrupted_load_layer(byte, bit):
    # body bytes 5.. are the descriptor (M, K, N, mode, mult, shift, zp, relu, then fmt 17,
    # group 18, chan 19); byte 2 bit 5 makes LENGTH 16 -> 48 so the device waits for the
    # rest and answers TIMEOUT; bit 4 makes it 0: BAD_LENGTH at once, with tag 0
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(23)
    a, w = rand(rng, 7, 24), rand(rng, 24, 6)
    rq = requant_for(24)
    dev.rx_hook = hook = flip_in(Opcode.LOAD_LAYER, 1, byte, bit)
    np.testing.assert_array_equal(acc.gemm(a, w, rq), mpgemm(a, w, rq), strict=True)
    assert hook.done == 1 and acc.last.retries == 1
    want = P.LayerDescriptor.from_requant(7, 24, 6, OutMode.INT8, rq)
    assert dev.layers == [want]                       # no damaged descriptor was loaded
    assert any(st in P.LINK_ERRORS for _, _, st in dev.replies)


def test_load_layer_reply_lost():
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(24)
    a, w = rand(rng, 5, 9), rand(rng, 9, 7)
    dev.drop[Opcode.LOAD_LAYER] = 1
    t0 = time.monotonic()
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 1
    # executed twice (the reply of the first was lost): idempotent
    assert len(dev.layers) == 2 and dev.layers[0] == dev.layers[1]
    assert time.monotonic() - t0 < 1.0


def test_late_read_reply_not_taken_for_the_retry():
    """The reply to the first READ of the result comes late (after the driver's timeout and
    its resynchronisation), just before the reply to the retried READ, and with different
    bytes. Untagged, it would be taken for the retry's answer; with tags it is dropped."""
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(25)
    a, w = rand(rng, 4, 12), rand(rng, 12, 8)
    want = mpgemm(a, w)
    late = []
    dev.hold[Opcode.READ] = lambda data: late.append(bytes(b ^ 0x5A for b in data)) or late[-1]
    got = acc.gemm(a, w)
    np.testing.assert_array_equal(got, want, strict=True)
    assert acc.last.retries == 1 and dev.stale_replies == 1
    reads = dev.ops(Opcode.READ)
    assert len(reads) == 2 and reads[0].seq != reads[1].seq
    # the late reply arrived first and would have given a wrong result
    wrong = layout.decode_result(late[0], 4, 8, 4, OutMode.RAW32)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(wrong, want, strict=True)


def test_busy_waited_out():
    dev = FakeDevice()
    acc = open_acc(dev)
    rng = np.random.default_rng(26)
    a, w = rand(rng, 6, 10), rand(rng, 10, 6)
    dev.busy_polls = 3                # a GEMM started earlier: busy for 3 more STATUS polls
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 0                     # BUSY is no failure
    assert [st for op, _, st in dev.replies].count(ErrorCode.BUSY) == 1
    assert len(dev.ops(Opcode.STATUS)) == 4          # 3 busy, 1 idle
    assert len(dev.ops(Opcode.WRITE)) == 3           # the refused WRITE was sent again


def test_busy_forever_times_out_after_the_watchdog():
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.busy_polls = float("inf")
    watchdog_s = dev.seconds(dev.info.watchdog_cycles, dev.info.clock_hz)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match="stayed busy") as e:
        acc.gemm(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8))
    dt = time.monotonic() - t0
    assert watchdog_s <= dt < watchdog_s + 3.0
    assert "RESET" in str(e.value)
    # RESET stops the core; the next GEMM works
    acc.reset()
    np.testing.assert_array_equal(acc.gemm(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8)),
                                  np.full((2, 2), 3, np.int32), strict=True)


class BitFlipper:
    """Hooks that flip 1-3 distinct bits in a fraction ``p`` of the frames, half of the
    flips aimed at the framing bytes (SYNC, OPCODE, LENGTH, SEQ, CRC) and the first five
    body bytes (a WRITE's or READ's buffer and address, a descriptor's M, K, N)."""

    def __init__(self, rng, p):
        self.rng, self.p = rng, p
        self.fields = Counter()
        self.frames = Counter()

    @staticmethod
    def field(i, n):
        return {0: "SYNC", 1: "OPCODE", 2: "LENGTH", 3: "LENGTH", 4: "SEQ"}.get(
            i, "CRC" if i >= n - 2 else "HEADER" if i < 10 else "BODY")

    def hook(self, direction):
        def flip(data):
            if self.rng.random() >= self.p:
                return data
            data = bytearray(data)
            n = len(data)
            hits = set()
            while len(hits) < int(self.rng.integers(1, 4)):
                if self.rng.random() < 0.5:     # framing and the command header
                    i = int(self.rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, n - 2, n - 1]))
                    i = min(i, n - 1)
                else:
                    i = int(self.rng.integers(n))
                hits.add((i, int(self.rng.integers(8))))
            for i, b in hits:
                data[i] ^= 1 << b
                self.fields[self.field(i, n)] += 1
            self.frames[direction] += 1
            return bytes(data)
        return flip


def test_random_bit_flips_never_give_a_wrong_result():
    """300 small GEMMs (a third of them in another weight format, with per-channel tables and
    maybe groups) over a link that damages 4 % of the frames in each direction (1-3
    bits, half of them in SYNC/OPCODE/LENGTH/SEQ/CRC or the command header) and delivers
    1 % of the replies late.
    The device reports a small ``max_data``, so operands and results move in several chunks,
    as they do for GEMMs beyond 4 KiB on the board (a damaged WRITE can then land over an
    earlier chunk, were it not staged; a late READ reply can carry another chunk's bytes)."""
    rng = np.random.default_rng(20261125)
    dev = FakeDevice(rows=4, cols=4, a_depth=32, w_depth=32, out_words=64, latency=0.005,
                     max_data=40)
    acc = open_acc(dev, retries=1)        # few retries, so some GEMMs do fail (and recover)
    flips = BitFlipper(rng, p=0.04)
    dev.rx_hook, dev.tx_hook = flips.hook("to device"), flips.hook("to host")
    late = Counter()
    dev.delay = lambda frame: rng.random() < 0.01 and not late.update([frame.opcode])
    outcome = Counter()
    errors = Counter()
    n_gemms = 300
    for i in range(n_gemms):
        m, k, n = (int(x) for x in rng.integers(1, 13, size=3))
        a = rand(rng, m, k)
        if i % 3 == 2:        # another format, groups, per-channel tables: more buffers
            fmt = WeightFormat(int(rng.integers(0, len(WeightFormat))))
            w = rand_weights(rng, fmt, k, n)
            gq = rand_group(rng, k, n, 32) if rng.integers(0, 2) else None
            rq = rand_chan(rng, a, w, gq)
            want = mixgemm(a, w, fmt=fmt, group=gq, requant=rq)
        else:
            w = rand(rng, k, n)
            rq = requant_for(k) if i % 2 else None
            want = mpgemm(a, w, rq)
        try:
            if i % 3 == 2:
                got = acc.mixgemm(a, w, fmt=fmt, group=gq, requant=rq)
            else:
                got = acc.gemm(a, w, rq)
        except (DeviceTimeout, DeviceError, P.ProtocolError) as e:
            outcome["raised"] += 1
            errors[type(e).__name__] += 1
            continue
        try:
            np.testing.assert_array_equal(got, want, strict=True)
        except AssertionError:
            outcome["wrong"] += 1
        else:
            outcome["exact"] += 1
    summary = f"{dict(outcome)} {dict(errors)} frames {dict(flips.frames)} {dict(flips.fields)}"
    assert outcome["wrong"] == 0, summary
    assert outcome["exact"] >= 0.85 * n_gemms, summary
    assert flips.frames["to device"] >= 20 and flips.frames["to host"] >= 20, summary
    assert set(flips.fields) == {"SYNC", "OPCODE", "LENGTH", "SEQ", "HEADER", "BODY", "CRC"}, \
        summary
    assert acc.total.retries >= 40 and dev.link_errors >= 10, summary
    assert sum(late.values()) >= 10 and dev.stale_replies >= 1, (summary, late)
    # a clean link afterwards: exact, and STATUS reports the damaged frames the device saw
    dev.rx_hook = dev.tx_hook = dev.delay = None
    a, w = rand(rng, 9, 11), rand(rng, 11, 10)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.status().link_errors == dev.link_errors & 0xFFFF


def test_fault_injector_campaign_exact_or_raise():
    """The same property through sw.transport.FaultInjector (flips in written frames and in
    received pieces) wrapped around the fake device."""
    rng = np.random.default_rng(7)
    dev = FakeDevice(rows=2, cols=4, a_depth=32, w_depth=32, out_words=32, latency=0.005,
                     max_data=48)
    link = FaultInjector(dev, tx_rate=0.05, rx_rate=0.02, max_bits=3, seed=3)
    acc = open_acc(link, retries=2)
    outcome = Counter()
    for i in range(100):
        m, k, n = (int(x) for x in rng.integers(1, 11, size=3))
        a, w = rand(rng, m, k), rand(rng, k, n)
        rq = requant_for(k, zp=-2) if i % 3 == 0 else None
        try:
            got = acc.gemm(a, w, rq)
        except (DeviceTimeout, DeviceError, P.ProtocolError):
            outcome["raised"] += 1
            continue
        try:
            np.testing.assert_array_equal(got, mpgemm(a, w, rq), strict=True)
        except AssertionError:
            outcome["wrong"] += 1
        else:
            outcome["exact"] += 1
    assert outcome["wrong"] == 0, outcome
    assert outcome["exact"] >= 90, outcome
    assert link.tx_faults >= 20 and link.rx_faults >= 20, (link.tx_faults, link.rx_faults)
    assert acc.total.retries >= 20
    acc.close()
    assert dev.closed


def test_descriptor_bases_through_low_level_commands():
    """LOAD_LAYER carries the bases: weights and tables written at an offset are found there
    (what a program's resident layers rely on), and a layer ending past its buffer is
    BAD_SHAPE."""
    rng = np.random.default_rng(41)
    dev = FakeDevice(rows=2, cols=2, w_depth=128, chan_depth=16, group_depth=64)
    acc = open_acc(dev)
    M, K, N, G = 3, 64, 3, 32
    a = rand(rng, M, K)
    q = rng.integers(-8, 8, size=(K, N))
    gq = GroupQuant(G, rng.integers(1, 300, size=(K // G, N)),
                    rng.integers(-8, 8, size=(K // G, N)))
    crq = ChannelRequant(rng.integers(1 << 10, 1 << 14, size=N), np.full(N, 22),
                         rng.integers(-500, 500, size=N), zero_point=-3, relu=False)
    want = mixgemm(a, q, fmt=WeightFormat.INT4, group=gq, requant=crq)
    w_base, chan_base, group_base = 7, 5, 11
    kb = K // 2                                      # INT4: 2 weights a byte; 2 column tiles
    assert w_base + 2 * kb <= 128 and chan_base + N <= 16 and group_base + 2 * N <= 64
    # other layers' bytes around ours: zeros would hide an offset error less well
    for buffer in (Buffer.W, Buffer.CHAN, Buffer.GROUP):
        size = acc.info.buffer_size(buffer)
        acc.write_buffer(buffer, 0, bytes(rng.integers(0, 256, size=size, dtype=np.uint8)))
    acc.write_buffer(Buffer.A, 0, layout.act_image(a, 2))
    acc.write_buffer(Buffer.W, w_base * 2,
                     layout.weight_image(pack_weights(q, WeightFormat.INT4), 2))
    acc.write_buffer(Buffer.CHAN, chan_base * layout.CHAN_ENTRY_BYTES,
                     layout.chan_table_image(crq))
    acc.write_buffer(Buffer.GROUP, group_base * layout.GROUP_ENTRY_BYTES,
                     layout.group_table_image(gq))
    desc = P.LayerDescriptor.from_requant(M, K, N, OutMode.INT8, crq, fmt=WeightFormat.INT4,
                                          group=G, w_base=w_base, chan_base=chan_base,
                                          group_base=group_base)
    acc.load_layer(desc)
    assert dev.ops(Opcode.LOAD_LAYER)[-1].payload == desc.pack() and len(desc.pack()) == 22
    acc.run()
    got = layout.decode_result(acc.read_buffer(Buffer.OUT, 0, layout.result_size(M, N, 2,
                                                                                   OutMode.INT8)),
                               M, N, 2, OutMode.INT8)
    assert np.array_equal(got, want)
    # the same layer at bases 0 reads other bytes: a different result
    acc.load_layer(dataclasses.replace(desc, w_base=0, chan_base=0, group_base=0))
    acc.run()
    other = layout.decode_result(acc.read_buffer(Buffer.OUT, 0, layout.result_size(
        M, N, 2, OutMode.INT8)), M, N, 2, OutMode.INT8)
    assert not np.array_equal(other, want)
    # one entry too far: the layer would end past its buffer
    for name, too_far in (("w_base", 128 - 2 * kb + 1), ("chan_base", 16 - N + 1),
                          ("group_base", 64 - 2 * N + 1)):
        acc.load_layer(dataclasses.replace(desc, **{name: too_far}))
        with pytest.raises(DeviceError, match="BAD_SHAPE"):
            acc.run()
        acc.load_layer(dataclasses.replace(desc, **{name: too_far - 1}))
        acc.run()


# -- layer programs (RUN_PROGRAM, LCNT) --------------------------------------------------------

def program_records(count):
    """``count`` distinct records, GEMM and MAXPOOL alternating (their contents only travel:
    the fake does not execute them)."""
    return [P.ProgramLayer(P.LayerDescriptor(i + 1, 8, 4, OutMode.INT8, 100 + i, 7, -i, 1,
                                             w_base=16 * i, chan_base=4 * i),
                           P.LayerKind(i % 2), stride=1 + i % 2, pad=i % 2, pad_value=-128,
                           h=5, w=6, in_base=100 * i, out_base=1000 - i,
                           n=(1, 1 + i, 2, 1, 3, 1), s=(0, 3, 1, 7, 1, i))
            for i in range(count)]


def test_run_program_refused_before_sending():
    dev = FakeDevice(max_layers=6)
    acc = open_acc(dev)
    for bad in (0, 7, 255, 256, -1, True, False, 1.0, "2", None):
        with pytest.raises(ValueError, match=r"count must be in \[1, 6\]"):
            acc.run_program(bad)
    assert not dev.ops(Opcode.RUN_PROGRAM)
    for bad in (0, 7):
        with pytest.raises(ValueError, match="LCNT"):
            acc.layer_counters(bad)
    assert not dev.ops(Opcode.READ)
    # a device without layer programs: refused with a message, nothing sent
    dev0 = FakeDevice(act_bytes=0, max_layers=0, layer_kinds=0)
    acc0 = open_acc(dev0)
    with pytest.raises(DeviceMismatch, match="no layer programs"):
        acc0.run_program(1)
    for buffer in (Buffer.ACT, Buffer.PROG, Buffer.LCNT):
        with pytest.raises(ValueError, match=f"{buffer.name} access .* outside the buffer"):
            acc0.write_buffer(buffer, 0, b"\x01")
    with pytest.raises(ValueError, match="LCNT"):
        acc0.layer_counters(1)
    assert [f.opcode for f in dev0.log] == [Opcode.IDENTIFY]


def test_run_program_and_layer_counters():
    dev = FakeDevice(max_layers=6)
    acc = open_acc(dev)
    recs = program_records(3)
    acc.write_buffer(Buffer.PROG, 0, b"".join(r.pack() for r in recs))
    runs = acc.total.runs
    acc.run_program(3)
    frame = dev.ops(Opcode.RUN_PROGRAM)[-1]
    assert frame.payload == b"\x03"                    # count 3, waits for the end
    ((count, flags, prog),) = dev.programs
    assert (count, flags) == (3, 0)
    assert [P.ProgramLayer.unpack(prog[i * 64:(i + 1) * 64]) for i in range(3)] == recs
    assert acc.total.runs == runs + 1
    # LCNT: one READ of count records, parsed field by field
    reads = len(dev.ops(Opcode.READ))
    cnt = acc.layer_counters(3)
    (rd,) = dev.ops(Opcode.READ)[reads:]
    assert struct.unpack("<BIH", rd.payload) == (Buffer.LCNT, 0, 3 * P.LCNT_RECORD)
    assert cnt == [P.LayerCounters(ErrorCode.OK, i % 2, 1000 * (i + 1) + 3, 100 * (i + 1),
                                   10 * (i + 1), 2**40 + i) for i in range(3)]
    assert all(c.status is ErrorCode.OK for c in cnt)
    assert [c.kind for c in cnt] == [P.LayerKind.GEMM, P.LayerKind.MAXPOOL, P.LayerKind.GEMM]
    assert acc.layer_counters(1) == cnt[:1]
    assert len(acc.layer_counters(6)) == 6 and acc.layer_counters(6)[3:] == \
        [P.LayerCounters(0, 0, 0, 0, 0, 0)] * 3      # never written
    # the longest program the device takes
    acc.write_buffer(Buffer.PROG, 0, b"".join(r.pack() for r in program_records(6)))
    acc.run_program(6)
    assert dev.programs[-1][0] == 6 and dev.ops(Opcode.RUN_PROGRAM)[-1].payload == b"\x06"
    assert [c.cycles for c in acc.layer_counters(6)] == [1000 * (i + 1) + 6 for i in range(6)]


def test_run_program_failing_layer():
    """The reply carries the first failing layer's status (a DeviceError, not retried);
    LCNT names the layer: the first record that is not OK."""
    dev = FakeDevice()
    acc = open_acc(dev)
    acc.write_buffer(Buffer.PROG, 0, b"".join(r.pack() for r in program_records(4)))
    acc.run_program(4)
    dev.layer_status = {2: ErrorCode.BAD_SHAPE}
    with pytest.raises(DeviceError, match="BAD_SHAPE in reply to RUN_PROGRAM") as e:
        acc.run_program(3)
    assert e.value.code == ErrorCode.BAD_SHAPE and "3 layers" in str(e.value)
    assert len(dev.ops(Opcode.RUN_PROGRAM)) == 2          # a device error is not retried
    cnt = acc.layer_counters(4)
    assert [c.status for c in cnt] == [ErrorCode.OK, ErrorCode.OK, ErrorCode.BAD_SHAPE,
                                       ErrorCode.OK]
    assert next(i for i, c in enumerate(cnt) if c.status != ErrorCode.OK) == 2
    assert cnt[3].cycles == 4000 + 4                      # left from the 4-layer run
    assert acc.status().last_error == ErrorCode.BAD_SHAPE
    # a program after the failure runs (the driver keeps no stale state about it)
    dev.layer_status = {}
    acc.run_program(2)
    assert [c.status for c in acc.layer_counters(2)] == [ErrorCode.OK] * 2


def test_run_program_waits_out_busy():
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.busy_polls = 3                       # a GEMM left running: BUSY, then STATUS polls
    acc.run_program(2)
    assert len(dev.programs) == 1 and dev.programs[0][:2] == (2, 0)
    assert ErrorCode.BUSY in [st for op, _, st in dev.replies if op == Opcode.RUN_PROGRAM]


def test_gemm_after_a_program_sends_a_again():
    """A program's gather writes A (and the core OUT): the driver must not take A for still
    holding the last GEMM's operand."""
    rng = np.random.default_rng(40)
    dev = FakeDevice()
    acc = open_acc(dev)
    a, w = rand(rng, 6, 24), rand(rng, 24, 5)
    want = mpgemm(a, w)
    assert np.array_equal(acc.gemm(a, w), want)
    acc.write_buffer(Buffer.PROG, 0, program_records(1)[0].pack())
    acc.run_program(1)
    writes_a = len(dev.writes(Buffer.A))
    assert np.array_equal(acc.gemm(a, w), want)
    assert len(dev.writes(Buffer.A)) > writes_a


# -- CLI -----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["info"], ["gemm", "--m", "9", "--k", "40", "--n", "7"],
    ["gemm", "--m", "5", "--k", "70", "--n", "3", "--requant"],
    ["gemm", "--m", "7", "--k", "50", "--n", "9", "--fmt", "INT4", "--group", "32", "--requant"],
    ["gemm", "--m", "6", "--k", "100", "--n", "5", "--fmt", "ternary", "--requant"],
    ["gemm", "--m", "3", "--k", "30", "--n", "4", "--fmt", "POW2", "--group", "32"],
    ["gemm", "--m", "4", "--k", "30", "--n", "6", "--group", "128", "--requant"]])
def test_cli(monkeypatch, argv):
    import io
    import sw.__main__ as cli
    devs = []
    monkeypatch.setattr(cli, "open_transport", lambda args: devs.append(
        FakeDevice(rows=2, cols=2, a_depth=32, w_depth=32, out_words=32)) or devs[-1])
    out = io.StringIO()
    assert cli.main(argv + ["--expect-rows", "2", "--expect-hash", hex(HASH)], out=out) == 0
    text = out.getvalue()
    assert devs[0].closed
    if argv[0] == "info":
        assert "2 x 2 PEs" in text and "0x1234abcd" in text and "protocol version  6" in text
        assert "INT8, INT4, INT2, TERNARY, POW2" in text and "32, 64, 128" in text
        assert "MIXPE" in text and "CHAN table" in text and "DSP engine        none" in text
    else:
        assert "bit-exact vs sw.numerics.mixgemm" in text and "efficiency" in text
        assert "utilization" in text and "dequantization" in text
        if "--fmt" in argv or "--group" in argv:
            fmt = argv[argv.index("--fmt") + 1].upper() if "--fmt" in argv else "INT8"
            assert f"{fmt} weights" in text
            assert ("CHAN table" in text) == ("--requant" in argv)
            assert ("GROUP table" in text) == ("--group" in argv)


def test_cli_mismatch_exit_code(monkeypatch, capsys):
    import sw.__main__ as cli
    monkeypatch.setattr(cli, "open_transport", lambda args: FakeDevice())
    assert cli.main(["info", "--expect-cols", "8"]) == 2
    assert "cols: expected 8, device has 4" in capsys.readouterr().err


def test_cli_refusal_exit_code(monkeypatch, capsys):
    import sw.__main__ as cli
    monkeypatch.setattr(cli, "open_transport", lambda args: FakeDevice(group_sizes=0b001))
    assert cli.main(["gemm", "--fmt", "INT4", "--group", "64", "--requant"]) == 2
    assert "does not support groups of 64 along K: its group sizes are 32" in \
        capsys.readouterr().err


def test_cli_v1_device_exit_code(monkeypatch, capsys):
    import sw.__main__ as cli
    monkeypatch.setattr(cli, "open_transport", lambda args: V1Device())
    assert cli.main(["info"]) == 2
    assert "protocol version 1" in capsys.readouterr().err


# -- the sparse DSP engine (protocol 5) -----------------------------------------------------

I8, I4, I2, TER = (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.INT2,
                   WeightFormat.TERNARY)
#: (stages, packed, rows, cols) of the DSP devices under test: L = 8 and 4, unpacked and
#: packed; rows = 2 with L = 4 leaves out the patterns whose window exceeds 8 activations
DSP_CONFIGS = [(8, False, 8, 4), (4, False, 4, 4), (8, True, 8, 4), (4, True, 2, 4)]


def dsp_device(stages=8, packed=False, rows=8, cols=4, **kw):
    f = dict(rows=rows, cols=cols, a_depth=64, w_depth=64, out_words=64, chan_depth=64,
             dsp_stages=stages, dsp_packed=packed, dsp_depth=64)
    f.update(kw)
    return FakeDevice(**f)


def sparse_layer(rng, k, n, nm, fmt, *, pair=False, relu=False):
    """A sparse QuantLinear of random Gaussian weights."""
    return quant.quantize_linear(rng.normal(size=(k, n)), rng.normal(size=n) * 0.2, fmt=fmt,
                                 x_scale=0.02, x_zero=3, y_scale=0.08, y_zero=-5, relu=relu,
                                 sparse=nm, pair_columns=pair)


def supported(dev) -> list:
    return [p for p in NMPattern if dev.info.supports_pattern(p)]


def test_dsp_device_reports_the_engine():
    dev = dsp_device(4, True, 2, 4)
    acc = open_acc(dev)
    i = acc.info
    assert (i.dsp_stages, i.dsp_chains, i.dsp_packed, i.dsp_chain_stride, i.dsp_depth) == \
        (4, 2, 1, 2, 64)
    assert supported(dev) == [NMPattern.DENSE4, NMPattern.NM4_8, NMPattern.NM2_4]
    assert i.buffer_size(Buffer.DSPW) == 64 * 2 * 16
    # DSPW is an address space like the others: written and read back, range-checked
    acc.write_buffer(Buffer.DSPW, 100, b"\x01\x02\x03")
    assert acc.read_buffer(Buffer.DSPW, 99, 5) == b"\x00\x01\x02\x03\x00"
    with pytest.raises(ValueError, match=r"DSPW access of 2 bytes at 2047 outside the buffer "
                                         r"\(2048 bytes\)"):
        acc.write_buffer(Buffer.DSPW, 2047, b"\x00\x00")
    # a device without the engine has no DSPW space
    plain = open_acc(FakeDevice())
    assert plain.info.dsp_stages == 0 and plain.info.buffer_size(Buffer.DSPW) == 0
    with pytest.raises(ValueError, match="DSPW access"):
        plain.write_buffer(Buffer.DSPW, 0, b"\x00")


@pytest.mark.parametrize("stages, packed, rows, cols", DSP_CONFIGS)
def test_sparse_linear_bit_exact_every_pattern_and_format(stages, packed, rows, cols):
    """Every pattern the engine runs and every format it takes: ``acc.linear`` equals the
    layer's golden model (sparse_gemm + epilogue) with ragged K and N, int and float input."""
    dev = dsp_device(stages, packed, rows, cols)
    acc = open_acc(dev)
    rng = np.random.default_rng(100 + stages + 10 * packed)
    pats = supported(dev)
    assert pats
    for p in pats:
        for fmt in ((I4, I2, TER) if packed else (I8, I4, I2, TER)):
            k = 5 * p.m                             # 5 blocks: the last window ragged
            layer = sparse_layer(rng, k, 7, (p.n, p.m), fmt, pair=packed, relu=fmt == I2)
            x = rng.integers(-128, 128, (6, k))
            runs = len(dev.dsp_runs)
            y = acc.linear(x, layer)
            np.testing.assert_array_equal(y, layer.golden(x), strict=True)
            d = dev.dsp_runs[-1]
            assert len(dev.dsp_runs) == runs + 1 and d.pattern is p and d.w_base == 0
            assert (d.m, d.k, d.n, d.fmt, d.group, d.chan) == (6, k, 7, fmt, 0, 1)
            assert acc.last.macs == 6 * k * 7          # dense-equivalent MACs
    # the float path is layer.forward; a 1-D input gives a 1-D result
    xf = rng.normal(size=(3, layer.in_features))
    np.testing.assert_array_equal(acc.linear(xf, layer), layer.forward(xf), strict=True)
    np.testing.assert_array_equal(acc.linear(x[0], layer), layer.golden(x[:1])[0], strict=True)
    # what went out: A in the DSP layout, the DSPW records, the CHAN table
    assert dev.writes(Buffer.DSPW) and dev.writes(Buffer.CHAN)


def test_sparse_gemm_raw_and_scalar_requant():
    dev = dsp_device(8, False, 8, 4)
    acc = open_acc(dev)
    rng = np.random.default_rng(3)
    for p in (NMPattern.NM2_8, NMPattern.NM1_4, NMPattern.DENSE8):
        k, n = 6 * p.m, 9
        mask = quant.prune_nm(rng.normal(size=(k, n)), p.n, p.m)
        q = rng.integers(-128, 128, (k, n))
        sp = quant.compress_nm(q, mask, n=p.n, m=p.m)
        a = rng.integers(-128, 128, (5, k))
        raw = acc.sparse_gemm(a, sp)
        np.testing.assert_array_equal(raw, sparse_gemm(a, sp).astype(np.int32), strict=True)
        assert dev.layers[-1].out_mode == OutMode.RAW32 and dev.layers[-1].chan == 0
        rq = Requant(*to_dyadic(0.002), -4, True)
        got = acc.sparse_gemm(a, sp, requant=rq)
        want = requantize_channels(sparse_gemm(a, sp), ChannelRequant.from_requant(rq, n))
        np.testing.assert_array_equal(got, want, strict=True)
        d = dev.layers[-1]
        assert (d.out_mode, d.chan, d.mult, d.shift, d.zp, d.relu, d.pattern) == \
            (OutMode.INT8, 0, rq.multiplier, rq.shift, -4, 1, p)
    # extremes: every activation -128, every kept weight -128 (RAW32 still fits int32)
    sp = NMSparse(8, 8, np.full((8 * 32, 3), -128), np.tile(np.arange(8), 32)[:, None]
                  .repeat(3, axis=1))
    a = np.full((2, 256), -128)
    np.testing.assert_array_equal(acc.sparse_gemm(a, sp), np.full((2, 3), 128 * 128 * 256,
                                                                  np.int32), strict=True)


@pytest.mark.parametrize("packed", [False, True])
def test_sparse_tiling_over_m_and_n(packed):
    """A and DSPW too small for the layer, and (packed) a CHAN table of an odd number of
    entries: several M and N blocks, N blocks on even columns, results bit-exact."""
    # NM2_4 on L = 4: Wp = 8; K = 32 -> S = 4 steps: 3 rows of A per bank of 12 words,
    # 2 column tiles (8 columns) per 9 DSPW records, 5 CHAN entries -> blocks of 4 packed
    dev = dsp_device(4, packed, 4, 4, a_depth=12, dsp_depth=9, chan_depth=5)
    acc = open_acc(dev)
    rng = np.random.default_rng(8)
    layer = sparse_layer(rng, 32, 11, (2, 4), I4, pair=packed)
    x = rng.integers(-128, 128, (10, 32))
    np.testing.assert_array_equal(acc.linear(x, layer), layer.golden(x), strict=True)
    pl = acc.plan_sparse(10, 32, 11, layer.requant, pattern=NMPattern.NM2_4, fmt=I4)
    assert (pl.mb, pl.kc, pl.sparse) == (3, 32, 1 + NMPattern.NM2_4)
    assert pl.nb <= 5 and (pl.nb % 2 == 0 or not packed)      # column pairs stay together
    assert pl.n_blocks == 3
    runs = dev.dsp_runs[-pl.m_blocks * pl.n_blocks:]
    assert len(dev.dsp_runs) == pl.runs == 4 * 3
    assert sorted({d.m for d in runs}) == [1, 3] and max(d.n for d in runs) == pl.nb
    assert all(d.w_base == 0 and d.k == 32 for d in runs)
    # the layer's own DSPW records, A words and OUT elements fit each block
    for d in runs:
        assert d.m * 4 <= 12 and -(-d.n // 4) * 4 <= 9


def _nothing_sent(dev):
    assert [f.opcode for f in dev.log] == [Opcode.IDENTIFY], dev.log


@pytest.mark.parametrize("dev_kw, make, exc, match", [
    (dict(dsp_stages=0), lambda rng: sparse_layer(rng, 16, 4, (2, 4), I8), ValueError,
     r"the device has no sparse DSP engine \(IDENTIFY dsp_stages = 0\)"),
    (dict(dsp_patterns=[NMPattern.DENSE4, NMPattern.NM1_4]),
     lambda rng: sparse_layer(rng, 16, 4, (2, 4), I8), ValueError,
     r"does not run pattern NM2_4 \(2:4\); it runs DENSE4 \(4:4\), NM1_4 \(1:4\)"),
    (dict(dsp_packed=True), lambda rng: sparse_layer(rng, 16, 4, (2, 4), I8, pair=True),
     ValueError, "packed .* does not take INT8 weights; quantize the layer to INT4"),
    (dict(), lambda rng: sparse_layer(rng, 16, 4, (3, 4), I8), ValueError,
     "3:4 weights cannot run on the DSP engine: 3:4 is not a hardware N:M pattern"),
    (dict(rows=2), lambda rng: sparse_layer(rng, 16, 4, (1, 4), I8), ValueError,
     "does not run pattern NM1_4"),                 # Wp = 32 > 4 * rows: not reported
    (dict(dsp_patterns=list(NMPattern), rows=2), lambda rng: sparse_layer(rng, 16, 4, (1, 4), I8),
     ValueError, r"reads 32 activations per step, more than its 2 A row banks hold \(8\)"),
    (dict(a_depth=4, max_k=1024), lambda rng: sparse_layer(rng, 96, 4, (2, 4), I8), ValueError,
     r"K=96 takes S = ceil\(K / 16\) = 6 steps of pattern NM2_4 .* K <= 64\); the DSP "
     r"engine does not split K"),
    (dict(dsp_depth=5), lambda rng: sparse_layer(rng, 96, 4, (2, 4), I8), ValueError,
     r"5 DSPW records per chain: K <= 80"),
    (dict(max_k=64), lambda rng: sparse_layer(rng, 96, 4, (2, 4), I8), ValueError,
     r"K=96 is more than the device takes in one run \(max_k 64, which bounds DSP layers"),
    (dict(dsp_packed=True), lambda rng: sparse_layer(rng, 16, 4, (2, 4), I4, pair=False),
     ValueError, "packed columns 0 and 1 share a DSP chain"),
    (dict(), lambda rng: dataclasses.replace(
        sparse_layer(rng, 16, 4, (2, 4), I8),
        group=GroupQuant(32, np.ones((1, 4), np.int64), np.zeros((1, 4), np.int64))),
     ValueError, "per-group tables, but the DSP engine requantizes per output channel"),
])
def test_sparse_refused_before_sending(dev_kw, make, exc, match):
    dev = dsp_device(**dev_kw)
    acc = open_acc(dev)
    layer = make(np.random.default_rng(1))
    with pytest.raises(exc, match=match):
        acc.linear(np.zeros((2, layer.in_features), np.int8), layer)
    _nothing_sent(dev)


def test_sparse_gemm_operand_refusals():
    dev = dsp_device()
    acc = open_acc(dev)
    rng = np.random.default_rng(2)
    sp = sparse_layer(rng, 16, 4, (2, 4), I8).sparse
    with pytest.raises(TypeError, match="sparse must be a sw.numerics.NMSparse, not ndarray"):
        acc.sparse_gemm(np.zeros((2, 16), np.int8), np.zeros((16, 4), np.int8))
    with pytest.raises(ValueError, match=r"inner dimensions differ: a is \(2, 12\) .* K = 16"):
        acc.sparse_gemm(np.zeros((2, 12), np.int8), sp)
    with pytest.raises(ValueError, match="requant has 3 channels, the layer N=4"):
        acc.sparse_gemm(np.zeros((2, 16), np.int8), sp,
                        requant=ChannelRequant([1] * 3, [0] * 3, [0] * 3))
    with pytest.raises(TypeError, match="requant must be"):
        acc.sparse_gemm(np.zeros((2, 16), np.int8), sp, requant=(1, 2))
    with pytest.raises(ValueError, match=r"a must hold int8 values|\[-128, 127\]"):
        acc.sparse_gemm(np.full((2, 16), 128), sp)
    with pytest.raises(TypeError, match="pattern must be a sw.numerics.NMPattern"):
        acc.plan_sparse(2, 16, 4, pattern=3)
    _nothing_sent(dev)
    # an INT8-only device without RAW32: requant=None refused as for the array
    dev = dsp_device(out_modes=0b10)
    acc = open_acc(dev)
    with pytest.raises(ValueError, match="needs RAW32 output"):
        acc.sparse_gemm(np.zeros((2, 16), np.int8), sp)
    _nothing_sent(dev)


def test_device_refuses_bad_dsp_descriptors():
    """What the protocol says the device answers BAD_PARAM to (the fake as the gateware):
    the driver's low-level commands pass it on."""
    acc = open_acc(dsp_device(8, True, 8, 4, dsp_patterns=[NMPattern.NM2_4]))
    base = P.LayerDescriptor(4, 16, 4, fmt=I4, sparse=1 + NMPattern.NM2_4)
    acc.load_layer(base)
    for kw in (dict(sparse=1 + NMPattern.NM2_8), dict(sparse=len(NMPattern) + 1),
               dict(fmt=I8), dict(fmt=WeightFormat.POW2), dict(group=32)):
        with pytest.raises(DeviceError, match="BAD_PARAM"):
            acc.load_layer(dataclasses.replace(base, **kw))
    with pytest.raises(DeviceError, match="BAD_PARAM"):
        open_acc(FakeDevice()).load_layer(base)


def test_identify_refuses_an_inconsistent_dsp_engine():
    good = dsp_device().info
    for kw, match in ((dict(dsp_chains=3), "dsp_chains=3 .an unpacked DSP engine next to 4 "
                                           "columns has 4"),
                      (dict(dsp_packed=1), "dsp_chains=4 .a packed DSP engine next to 4 columns "
                                           "has 2"),
                      (dict(dsp_stages=6), "dsp_stages=6"),
                      (dict(dsp_bytes=63), "dsp_bytes=63"),
                      (dict(dsp_share=0), r"unusable configuration: dsp_share=0 \(chains per "
                                          r"index group: a divisor of the 4 DSP chains\)"),
                      (dict(dsp_share=3), "dsp_share=3"),
                      (dict(dsp_share=8), "dsp_share=8")):
        bad = dataclasses.replace(good, **kw).pack()
        with pytest.raises(DeviceMismatch, match=match):
            open_acc(FakeDevice(identify_data=bad))


# -- an engine whose chains share their indices (IDENTIFY dsp_share, protocol 6) ----------------

def shared_layer(rng, w, nm, fmt, *, packed, share):
    return quant.quantize_linear(w, rng.normal(size=w.shape[1]) * 0.2, fmt=fmt, x_scale=0.02,
                                 x_zero=3, y_scale=0.08, y_zero=-5, sparse=nm,
                                 pair_columns=packed, share=share)


@pytest.mark.parametrize("stages, packed, rows, cols, share", [
    (8, False, 8, 4, 4), (4, False, 4, 8, 4), (4, False, 4, 8, 2), (8, True, 8, 8, 4),
    (8, True, 8, 8, 2)])
def test_shared_index_engine(stages, packed, rows, cols, share):
    """Weights pruned with the device's index group run bit-exactly (several tiles, a partial
    last group); per-column pruned weights are refused before any frame is sent, and would
    come back wrong from the device (it reads the group leader's indices) if they were not."""
    dev = dsp_device(stages, packed, rows, cols, dsp_share=share)
    acc = open_acc(dev)
    info = acc.info
    G = info.dsp_index_group
    assert (info.dsp_share, G) == (share, share * (2 if packed else 1))
    fmt = I4 if packed else I8
    rng = np.random.default_rng(stages + cols + share + packed)
    how = ("pair_columns=True, " if packed else "") + f"share={G}"
    pats = [p for p in supported(dev) if p.n < p.m]
    assert pats
    for p in pats:
        k, n = 4 * p.m, 2 * cols + G // 2 + 1           # 3 tiles, the last group partial
        w = rng.normal(size=(k, n))
        alone = shared_layer(rng, w, (p.n, p.m), fmt, packed=packed, share=2 if packed else 1)
        x = rng.integers(-128, 128, (5, k))
        sent = len(dev.log)
        with pytest.raises(ValueError, match=rf"share one index per stage on this DSP engine "
                           rf".*: prune with sw\.quant\.prune_nm\(\.\.\., {how}\)"):
            acc.linear(x, alone)
        with pytest.raises(ValueError, match="share one index per stage"):
            acc.sparse_gemm(x, alone.sparse)
        assert len(dev.log) == sent                      # nothing sent
        layer = shared_layer(rng, w, (p.n, p.m), fmt, packed=packed, share=G)
        runs = len(dev.dsp_runs)
        np.testing.assert_array_equal(acc.linear(x, layer), layer.golden(x), strict=True)
        np.testing.assert_array_equal(acc.sparse_gemm(x, layer.sparse),
                                      sparse_gemm(x, layer.sparse).astype(np.int32), strict=True)
        assert len(dev.dsp_runs) == runs + 2
        # a driver blind to the sharing sends the per-column weights: the device computes
        # with the leaders' indices, not what the golden model says
        acc.info = dataclasses.replace(info, dsp_share=1)
        try:
            np.testing.assert_array_equal(acc.linear(x, layer), layer.golden(x), strict=True)
            assert not np.array_equal(acc.linear(x, alone), alone.golden(x))
        finally:
            acc.info = info


@pytest.mark.parametrize("packed, chan_depth, nb", [(False, 6, 4), (False, 3, 2), (True, 6, 4),
                                                    (True, 3, 2), (True, 5, 4)])
def test_shared_index_engine_n_blocks_start_on_groups(packed, chan_depth, nb):
    """A CHAN table narrower than the layer: N blocks of a multiple of the index group (4
    columns), or of a divisor of it when the table holds less (even when packed), so the
    device's groups, from each block's first column, are the pruning groups."""
    cols = 8
    share = 2 if packed else 4
    dev = dsp_device(4, packed, 4, cols, chan_depth=chan_depth, dsp_share=share)
    acc = open_acc(dev)
    assert acc.info.dsp_index_group == 4
    rng = np.random.default_rng(30 + chan_depth + packed)
    layer = shared_layer(rng, rng.normal(size=(16, 13)), (2, 4), I4, packed=packed, share=4)
    x = rng.integers(-128, 128, (3, 16))
    pl = acc.plan_sparse(3, 16, 13, layer.requant, pattern=NMPattern.NM2_4, fmt=I4)
    assert pl.nb == nb and pl.n_blocks == -(-13 // nb)
    np.testing.assert_array_equal(acc.linear(x, layer), layer.golden(x), strict=True)
    assert [d.n for d in dev.dsp_runs] == [nb] * (13 // nb) + ([13 % nb] if 13 % nb else [])


def test_info_summary_names_the_index_sharing():
    from sw.__main__ import format_info
    text = format_info(dsp_device(4, True, 2, 8, dsp_share=2).info)
    assert ("DSP engine        4 chains x 4 stages (packed: 4-bit weights, 2 columns per "
            "chain), one index per 2 chains (4 columns), patterns") in text
    assert "one index per" not in format_info(dsp_device().info)


def test_shared_index_engine_refused_at_open_when_inconsistent():
    good = dsp_device(dsp_share=4).info
    assert open_acc(FakeDevice(identify_data=good.pack())).info.dsp_share == 4
    for share in (0, 3, 5):
        bad = dataclasses.replace(good, dsp_share=share).pack()
        dev = FakeDevice(identify_data=bad)
        with pytest.raises(DeviceMismatch, match=rf"unusable configuration: dsp_share={share} "):
            open_acc(dev)
        assert len(dev.log) == 1 and dev.closed


def test_load_model_sparse_layers_resident_in_dspw_and_reloaded():
    """A model with N:M sparse Dense layers compiles for the DSP engine: load_model writes
    their records to DSPW (where the compiled placements say), and other work that uses DSPW
    (sparse_gemm / linear on a sparse layer write from record 0) makes the next run load
    the model again, as W / CHAN / GROUP / PROG do; A does not."""
    from sw import model as M
    from sw import program
    rng = np.random.default_rng(4)
    fc1 = quant.quantize_linear(rng.normal(size=(16, 8)), None, fmt=I8, x_scale=0.02,
                                y_scale=0.05, sparse=(2, 4), relu=True)
    fc2 = quant.quantize_linear(rng.normal(size=(8, 4)), None, fmt=I4, x_scale=0.05,
                                y_scale=0.05)
    fc3 = quant.quantize_linear(rng.normal(size=(4, 8)), None, fmt=TER, x_scale=0.05,
                                y_scale=0.05, sparse=(1, 4))
    model = M.Model([M.Dense(fc1, name="fc1"), M.Dense(fc2, name="fc2"),
                     M.Dense(fc3, name="fc3")], input_shape=(16,), in_scale=0.02, in_zero=0,
                    out_scale=0.05, out_zero=0)
    dev = dsp_device()
    acc = open_acc(dev)
    lm = acc.load_model(model, batch=2)
    cp = lm.compiled
    assert [r.desc.sparse for r in cp.layers] == [1 + NMPattern.NM2_4, 0, 1 + NMPattern.NM1_4]
    dspw = [p for p in cp.placements if p.buffer == Buffer.DSPW]
    assert len(dspw) == 2 and dspw[1].address == cp.layers[2].desc.w_base * 4 * 16
    for p in cp.placements:
        assert bytes(dev.bufs[p.buffer][p.address:p.address + len(p.data)]) == p.data, p.buffer
    assert lm.loads == 1
    x = rng.integers(-128, 128, (3, 16))
    lm.run(x)                                  # the fake does not execute programs
    assert lm.loads == 1
    acc.write_buffer(Buffer.A, 0, b"\x01")     # A is not resident model state
    lm.run(x)
    assert lm.loads == 1
    other = sparse_layer(rng, 16, 8, (2, 4), I8)
    xo = rng.integers(-128, 128, (2, 16))
    np.testing.assert_array_equal(acc.linear(xo, other), other.golden(xo), strict=True)
    assert bytes(dev.bufs[Buffer.DSPW][:len(dspw[0].data)]) != dspw[0].data   # clobbered
    lm.run(x)
    assert lm.loads == 2
    for p in cp.placements:
        assert bytes(dev.bufs[p.buffer][p.address:p.address + len(p.data)]) == p.data, p.buffer
    # a DSPW write alone is enough
    acc.write_buffer(Buffer.DSPW, 0, b"\x00")
    lm.run(x)
    assert lm.loads == 3
    # a device without the DSP engine refuses the model before sending anything
    dev0 = FakeDevice()
    acc0 = open_acc(dev0)
    with pytest.raises(program.DeviceLacks, match="layer 'fc1': its weights are N:M sparse "
                                                  r"\(2:4, INT8\): the device has no "
                                                  "sparse DSP engine"):
        acc0.load_model(model)
    _nothing_sent(dev0)
