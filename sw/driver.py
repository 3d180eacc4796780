"""Host driver for the mpGEMM accelerator (board over UART, or the Verilator model).

:class:`Accelerator` speaks :mod:`sw.protocol` (version 6: core v2 "MixCore" with layer
programs and the optional sparse DSP engine) over any :class:`sw.transport.Transport`: it
identifies the device (and refuses one that does not match), validates operands against what
the device reports before anything is sent, tiles GEMMs of any M and N onto the on-chip
buffers, and returns results that are bit-identical to :func:`sw.numerics.mixgemm` (and, for
INT8 weights, :func:`sw.numerics.mpgemm`; for N:M sparse weights on the DSP engine,
:func:`sw.numerics.sparse_gemm` and the same epilogue). NumPy only; never imports Amaranth.

Example::

    from sw.driver import Accelerator
    from sw.transport import SerialTransport

    with Accelerator(SerialTransport("/dev/ttyUSB0"), expect={"rows": 4, "cols": 4}) as acc:
        y = acc.gemm(a, w)                        # int32, == sw.numerics.mpgemm(a, w)
        y4 = acc.mixgemm(a, q, fmt=WeightFormat.INT4, group=gq, requant=crq)   # int8
        y_float = acc.linear(x_float, layer)      # a sw.quant.QuantLinear, == layer.forward(x)
        ys = acc.sparse_gemm(a, sp, requant=crq)  # N:M weights on the DSP engine (int8)
        print(acc.last.efficiency, acc.last.utilization(acc.info.rows, acc.info.cols))
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from . import layout, quant
from . import protocol as P
from .numerics import (GROUP_SIZES, WEIGHT_LANES, ChannelRequant, GroupQuant, NMPattern,
                       NMSparse, OutMode, Requant, WeightFormat, check_int, encode_weights,
                       int_range, pack_weights, requantize, requantize_channels,
                       weight_range)
from .protocol import Buffer, DeviceError, DeviceInfo, ErrorCode, LayerDescriptor, Opcode
from .transport import ReplyDamaged, Transport, TransportError, TransportTimeout

__all__ = ["Accelerator", "DeviceMismatch", "DeviceTimeout", "GemmPlan", "Stats", "LoadedModel",
           "ModelRun", "NotRepeated",
           "DeviceError", "TransportError"]

_U16 = 0xFFFF
log = logging.getLogger(__name__)


class DeviceMismatch(Exception):
    """IDENTIFY does not match what the driver (or the caller's ``expect``) requires."""


class DeviceTimeout(TransportTimeout, TimeoutError):
    """The device did not answer a request in time (after the retries)."""


class NotRepeated(DeviceTimeout):
    """A request that is not safe to send twice (RUN_PROGRAM) lost its reply: the device may
    or may not have executed it. :meth:`LoadedModel.run` then writes the input again and
    reruns the program."""


@dataclass
class Stats:
    """Bookkeeping of one :meth:`Accelerator.gemm` / :meth:`~Accelerator.mixgemm` /
    :meth:`~Accelerator.linear` call (``acc.last``) or of the session (``acc.total``).

    ``wire_*`` count whole frames (both directions; bytes dropped as garbage are not
    counted), ``payload_*`` only matrix bytes (WRITE data sent, READ data received).
    ``cycles``/``busy``/``stall``/``macs``/``dq_stall`` sum the device counters read after
    each RUN (``dq_stall``: stall cycles group ends cost inside a tile, groups shorter than the
    drain period).
    """

    requests: int = 0
    wire_sent: int = 0
    wire_received: int = 0
    payload_sent: int = 0
    payload_received: int = 0
    runs: int = 0
    cycles: int = 0
    busy: int = 0
    stall: int = 0
    macs: int = 0
    dq_stall: int = 0
    seconds: float = 0.0
    retries: int = 0

    @property
    def wire_bytes(self) -> int:
        return self.wire_sent + self.wire_received

    @property
    def payload_bytes(self) -> int:
        return self.payload_sent + self.payload_received

    @property
    def efficiency(self) -> float:
        """Payload bytes / wire bytes (both directions); 0 when nothing was sent."""
        return self.payload_bytes / self.wire_bytes if self.wire_bytes else 0.0

    def utilization(self, rows: int, cols: int, macs_per_pe: int = 1) -> float:
        """MACs done / (array PEs x ``macs_per_pe`` x cycles of the runs): how busy the array
        was. A MixPE does ``sw.numerics.WEIGHT_LANES[fmt]`` MACs per cycle (INT4: 2, INT2 and
        TERNARY: 4); pass that to compare with the format's peak."""
        if not self.cycles:
            return 0.0
        return self.macs / (self.cycles * rows * cols * macs_per_pe)

    def add(self, other: "Stats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class GemmPlan:
    """How :meth:`Accelerator.gemm` / :meth:`Accelerator.mixgemm` map an ``M x K x N`` GEMM
    onto the device.

    The GEMM is cut into ``k_chunks`` chunks of at most ``kc`` along K (only
    :meth:`~Accelerator.gemm` with INT8 weights, no groups, splits K), blocks of at most
    ``mb`` rows of A and ``nb`` columns of W; each (K chunk, N block, M block) is one RUN
    whose descriptor has ``m, k, n`` = the block's sizes (the OUT layout and the GROUP table
    of a RUN follow its own N). ``mode`` is the device's output mode; ``host_requant`` is
    True when the requantization runs on the host (K split, or the device lacks INT8 output
    or the per-channel table). ``m_outer`` says which operand stays resident: with N blocks
    outer (False) each W block (with its CHAN / GROUP tables) is sent once and A blocks are
    re-sent per N block; with M blocks outer (True) the other way round. ``fmt`` is the
    weight format, ``group`` the group size along K (0: none), ``chan`` whether the
    per-channel table (CHAN) is used. ``sparse`` is the descriptors' engine byte: 0 for the
    systolic array, ``1 + NMPattern`` for the sparse DSP engine (:meth:`Accelerator.plan_sparse`:
    then ``kc == k`` and the blocks are sized by the DSP layouts of A and DSPW).
    """

    m: int
    k: int
    n: int
    mb: int
    kc: int
    nb: int
    mode: OutMode
    host_requant: bool
    m_outer: bool = False
    fmt: WeightFormat = WeightFormat.INT8
    group: int = 0
    chan: bool = False
    sparse: int = 0

    @property
    def k_chunks(self) -> int:
        return -(-self.k // self.kc)

    @property
    def m_blocks(self) -> int:
        return -(-self.m // self.mb)

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.nb)

    @property
    def runs(self) -> int:
        return self.k_chunks * self.m_blocks * self.n_blocks


#: what a weight format holds, for messages
_FORMAT_VALUES = {WeightFormat.INT8: "integers in [-128, 127]",
                  WeightFormat.INT4: "integers in [-8, 7]",
                  WeightFormat.INT2: "integers in [-2, 1]",
                  WeightFormat.TERNARY: "values in {-1, 0, 1}",
                  WeightFormat.POW2: "values +-2**e with e in 0..7 (no zero)"}


def _format_names(mask: int) -> str:
    names = [f.name for f in WeightFormat if mask >> int(f) & 1]
    unknown = mask & ~sum(1 << int(f) for f in WeightFormat)
    if unknown:
        names.append(f"unknown bits 0x{unknown:02x}")
    return ", ".join(names) or "none"


def _group_names(mask: int) -> str:
    sizes = [str(g) for g, bit in sorted(P.GROUP_SIZE_BITS.items()) if mask >> bit & 1]
    return ", ".join(sizes) if sizes else "none (no per-group dequantization)"


_EXPECT_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceInfo))


def _chan_slice(requant, n0: int, n1: int) -> bytes:
    """The CHAN table image of output channels ``n0 .. n1 - 1`` of ``requant``."""
    return layout.chan_table_image(ChannelRequant(
        requant.multiplier[n0:n1], requant.shift[n0:n1], requant.bias[n0:n1],
        requant.zero_point, requant.relu))


def _refuse_int8(info, int8_ok: bool):
    """The ValueError for requantized output the device cannot give: no INT8 output mode,
    or (with it) no CHAN table for a ChannelRequant."""
    if not int8_ok:
        raise ValueError(f"requantized (INT8) output needs the device's INT8 output mode, "
                         f"which it lacks (out_modes=0x{info.out_modes:02x}: RAW32 only); "
                         f"pass requant=None for the raw int32 sums")
    raise ValueError(f"per-channel requantization (ChannelRequant) needs the device's "
                     f"CHAN table, which it lacks (chan_bytes={info.chan_bytes}); pass "
                     f"a scalar sw.numerics.Requant")


class Accelerator:
    """The mpGEMM device behind ``transport``.

    Opening sends IDENTIFY, checks the protocol version and, when ``expect`` is given, the
    configuration: a mismatched bitstream is refused with :class:`DeviceMismatch` listing
    every differing field.

    Parameters
    ----------
    transport : sw.transport.Transport
        Owned by the accelerator from now on (closed by :meth:`close`).
    expect : dict or DeviceInfo, optional
        Required IDENTIFY fields, e.g. ``{"rows": 4, "cols": 4, "config_hash": 0x1234abcd}``
        (any :class:`~sw.protocol.DeviceInfo` field name), or a whole ``DeviceInfo``.
    timeout : float, optional
        Seconds to wait for the reply to the first IDENTIFY (default: the transport's
        ``timeout``). Later timeouts follow from what IDENTIFY reports: the wire time of
        request and reply, the device's inter-byte timeout and, for RUN, the estimated run
        time (all converted to seconds by the transport).
    retries : int
        How often a request is sent again after a reply timeout or a reply saying the frame
        was damaged (BAD_CRC, BAD_LENGTH, TIMEOUT). Before a retry the driver waits until
        the device's inter-byte timeout has passed since its last byte (so the device is
        hunting again) and drains the input (see docs/protocol.md). A BUSY reply is not a
        failure: the driver polls STATUS until the core is idle and sends the request again.
    counters_per_run : bool
        Read COUNTERS after each RUN (one small exchange) so ``last``/``total`` report
        device cycles, MACs and utilization.

    Attributes
    ----------
    info : DeviceInfo
    last : Stats
        Bookkeeping of the latest :meth:`gemm`, :meth:`mixgemm` or :meth:`linear`.
    total : Stats
        Bookkeeping since opening.
    """

    def __init__(self, transport: Transport, *, expect=None, timeout: float | None = None,
                 retries: int = 3, counters_per_run: bool = True):
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a sw.transport.Transport, not {transport!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        self.transport = transport
        self.timeout = float(timeout if timeout is not None else transport.timeout)
        self.retries = retries
        self.counters_per_run = bool(counters_per_run)
        self.info: DeviceInfo | None = None
        self._seq = 0
        self.last = Stats()
        self.total = Stats()
        self._stats = [self.total]
        self._resident: dict[Buffer, bytes] = {}   # what the A / W buffers hold
        self._layer: LayerDescriptor | None = None
        self._program_owner = None                 # the LoadedModel whose weights are resident
        self._closed = False
        self._expect = self._normalize_expect(expect)
        try:
            self.info = self.identify()
        except BaseException:
            self.close()
            raise

    # -- session ---------------------------------------------------------------------------

    @staticmethod
    def _normalize_expect(expect) -> dict:
        if expect is None:
            return {}
        if isinstance(expect, DeviceInfo):
            return dataclasses.asdict(expect)
        if not isinstance(expect, dict):
            raise TypeError(f"expect must be a dict or a DeviceInfo, not {expect!r}")
        unknown = sorted(set(expect) - set(_EXPECT_FIELDS))
        if unknown:
            raise ValueError(f"unknown expect field(s) {unknown}; DeviceInfo fields are "
                             f"{list(_EXPECT_FIELDS)}")
        return dict(expect)

    def identify(self) -> DeviceInfo:
        """Send IDENTIFY, check the reply (protocol version, ``expect``) and return it."""
        data = self._call(P.identify, Opcode.IDENTIFY)
        if data and data[0] != P.PROTOCOL_VERSION:
            raise DeviceMismatch(self._version_message(data[0], len(data)))
        try:
            info = DeviceInfo.unpack(data)
        except (P.ProtocolError, ValueError) as e:
            raise DeviceMismatch(f"IDENTIFY reply is not a DeviceInfo ({e}): is this an "
                                 f"mpGEMM device speaking protocol {P.PROTOCOL_VERSION}?") from e

        bad = [f"{name}: expected {self._fmt(name, want)}, device has "
               f"{self._fmt(name, getattr(info, name))}"
               for name, want in self._expect.items() if getattr(info, name) != want]
        if bad:
            raise DeviceMismatch("device does not match the expected configuration ("
                                 + "; ".join(bad) + "): wrong bitstream?")
        problems = [f"{n}={getattr(info, n)}" for n in ("rows", "cols", "a_bytes", "w_bytes",
                                                        "out_bytes", "out_words", "max_k",
                                                        "max_data", "timeout_cycles",
                                                        "watchdog_cycles", "tile_period")
                    if getattr(info, n) < 1]
        if info.a_bytes < 4 * info.rows or info.w_bytes < info.cols \
                or info.out_bytes < 4 * info.rows:
            problems.append("A/W/OUT buffers smaller than one word per array row/column")
        if not info.out_modes & 3:
            problems.append(f"out_modes=0x{info.out_modes:02x} (neither RAW32 nor INT8)")
        if not info.formats & sum(1 << int(f) for f in WeightFormat):
            problems.append(f"formats=0x{info.formats:02x} (no weight format this host knows)")
        if info.dsp_stages:
            want = info.cols // 2 if info.dsp_packed else info.cols
            if info.dsp_stages not in (4, 8):
                problems.append(f"dsp_stages={info.dsp_stages} (a DSP chain has 4 or 8 stages)")
            if info.dsp_chains != want:
                kind = "a packed" if info.dsp_packed else "an unpacked"
                problems.append(f"dsp_chains={info.dsp_chains} ({kind} DSP engine next to "
                                f"{info.cols} columns has {want})")
            if info.dsp_depth < 1:
                problems.append(f"dsp_bytes={info.dsp_bytes} (less than one DSPW record per chain)")
            if info.dsp_share < 1 or info.dsp_chains % info.dsp_share:
                problems.append(f"dsp_share={info.dsp_share} (chains per index group: a divisor "
                                f"of the {info.dsp_chains} DSP chains)")
        if problems:
            raise DeviceMismatch(f"device reports an unusable configuration: "
                                 f"{', '.join(problems)}")
        self.info = info
        return info

    @staticmethod
    def _version_message(version: int, size: int) -> str:
        if version < P.PROTOCOL_VERSION:
            return (f"device speaks protocol version {version} (a {size}-byte IDENTIFY reply), "
                    f"this driver version {P.PROTOCOL_VERSION}: its bitstream is older than "
                    f"this host software; rebuild and load it (python -m hw.build --target "
                    f"ulx3s --program)")
        return (f"device speaks protocol version {version}, this driver version "
                f"{P.PROTOCOL_VERSION}: update the host software (or rebuild the bitstream "
                f"from this checkout)")

    @staticmethod
    def _fmt(name, value):
        return f"0x{value:08x}" if name == "config_hash" and isinstance(value, int) else repr(value)

    def close(self) -> None:
        """Close the transport (idempotent)."""
        if not self._closed:
            self._closed = True
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        info = getattr(self, "info", None)
        shape = f"{info.rows}x{info.cols}" if info else "?"
        return f"<Accelerator {shape} on {self.transport!r}>"

    # -- one request -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        # tags 1..255; 0 is what the device answers when a frame's tag never arrived
        self._seq = self._seq % 255 + 1
        return self._seq

    def _device_seconds(self, cycles: int) -> float:
        info = self.info
        return self.transport.seconds(cycles, info.clock_hz if info else 0)

    @property
    def _link_timeout(self) -> float:
        """Wall time after which the device drops a frame it stopped receiving."""
        if self.info is None:
            return 0.1
        return self._device_seconds(self.info.timeout_cycles)

    def _reply_timeout(self, sent: int, expect: int, cycles: int = 0) -> float:
        """Reply timeout for a request of ``sent`` bytes answered by ``expect`` bytes after
        ``cycles`` device cycles of work, plus a quarter of the device's inter-byte timeout
        as margin. (A request damaged so that the device waits for more bytes is answered
        TIMEOUT only after the full inter-byte timeout; :meth:`_resync` waits for that.)"""
        if self.info is None:
            return self.timeout
        return (self.transport.wire_seconds(sent + expect) + self._device_seconds(cycles + 64)
                + 0.25 * self._link_timeout)

    def _call(self, build, opcode: Opcode, *, expect: int = 0, cycles: int = 0,
              context: str = "", repeatable: bool = True) -> bytes:
        """One request/reply with retries; returns the reply data or raises.

        ``build(seq=...)`` makes the request frame (a ``sw.protocol`` builder); every
        attempt gets a new tag, so a late reply to an earlier attempt is never taken for
        this one's. ``expect`` is the reply's data size, ``cycles`` the device work.
        """
        if self._closed:
            raise TransportError("accelerator is closed")
        what = opcode.name + (f" ({context})" if context else "")
        failures = 0
        while True:
            seq = self._next_seq()
            request = build(seq=seq)
            timeout = self._reply_timeout(len(request), P.FRAME_OVERHEAD + 1 + expect, cycles)
            sent_at = time.monotonic()
            in_sync = False          # the device is known to be hunting again
            try:
                frame = self.transport.exchange(request, seq=seq, timeout=timeout)
            except TransportTimeout as e:
                self._count(len(request), 0)
                why = f"no reply within {timeout:.3g} s [{e}]"
                # a damaged reply: the device has finished this request and hunts again
                in_sync = isinstance(e, ReplyDamaged)
                refused = False
            else:
                self._count(len(request), P.FRAME_OVERHEAD + len(frame.payload))
                if frame.is_v1_reply:
                    raise DeviceMismatch(
                        f"the device answered {what} in protocol version 1 (a reply without "
                        f"a status byte): its bitstream predates this driver (protocol "
                        f"{P.PROTOCOL_VERSION}); rebuild and load it (python -m hw.build "
                        f"--target ulx3s --program)")
                if frame.seq == seq and frame.request == int(opcode):
                    if frame.status == ErrorCode.BUSY:
                        self._wait_idle(what)
                        continue
                    # BAD_LENGTH with this request's tag passed the CRC: a malformed request
                    if frame.status not in (ErrorCode.BAD_CRC, ErrorCode.TIMEOUT):
                        try:
                            return P.parse_reply(frame, opcode)
                        except DeviceError as e:
                            self._forget()
                            if context:
                                e.args = (f"{e.args[0]} ({context})",)
                            raise
                name = (ErrorCode(frame.status).name
                        if frame.payload and frame.status in ErrorCode._value2member_map_
                        else f"status {frame.payload[:1].hex()}")
                why = (f"reply {name} to opcode 0x{frame.request:02x} tag {frame.seq} "
                       f"(sent tag {seq})")
                # BAD_CRC or TIMEOUT for this very request: the device took this frame as
                # one frame and is hunting again (bytes it did not take, after a LENGTH
                # made shorter, are a rare exception that costs one more retry)
                in_sync = frame.seq == seq
                refused = in_sync and frame.status in (ErrorCode.BAD_CRC, ErrorCode.TIMEOUT)
            # the request (or its reply) was damaged: the device did all of it (a reply was
            # lost) or none of it (WRITE data is staged and committed only after the CRC),
            # so sending it again is safe; what the buffers hold is no longer vouched for
            # until a request succeeds, so forget the resident operands and the layer
            self._forget()
            failures += 1
            for s in self._stats:
                s.retries += 1
            if not repeatable and not refused:
                # the device may have executed it: a request that is not safe to repeat
                # (RUN_PROGRAM overwrites its own input) is left to the caller
                self._resync(None if in_sync else
                             sent_at + self.transport.wire_seconds(len(request)))
                raise NotRepeated(f"{what}: {why}; the device may have run it, so it was not "
                                  f"sent again")
            if failures > self.retries:
                raise DeviceTimeout(
                    f"{what} failed {failures} times, last: {why}: is the device powered, "
                    f"programmed with the mpGEMM bitstream, and the baud rate right?")
            log.info("%s: %s; resynchronising and sending it again", what, why)
            self._resync(None if in_sync else
                         sent_at + self.transport.wire_seconds(len(request)))

    def _resync(self, last_byte_at: float | None) -> None:
        """Throw away what arrives until the line is quiet. With ``last_byte_at`` (the device
        may still be inside a frame: no reply, or a reply to something else), first wait
        until it has dropped that frame: its inter-byte timeout after our last byte, plus
        the TIMEOUT reply that follows."""
        quiet = min(0.02, self._link_timeout, self.transport.wire_seconds(16))
        until = None
        if last_byte_at is not None:
            until = last_byte_at + 1.1 * self._link_timeout
        self.transport.drain(max(quiet, 0.002), until=until)

    def _wait_idle(self, what: str) -> None:
        """Poll STATUS until the core is idle (a GEMM started earlier is still running)."""
        info = self.info
        limit = self._device_seconds(info.watchdog_cycles if info else 1 << 24) + 1.0
        deadline = time.monotonic() + limit
        while True:
            st = P.Status.unpack(self._call(P.status, Opcode.STATUS, expect=P.Status.SIZE))
            if not st.busy:
                return
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"{what}: the device stayed busy for {limit:.3g} s, longer "
                                    f"than its watchdog allows: send RESET (acc.reset())")
            time.sleep(0.001)

    def _forget(self):
        """After an error the buffers/layer may be in any state: send everything again."""
        self._resident.clear()
        self._layer = None
        self._program_owner = None

    def _count(self, sent: int, received: int, *, payload_sent: int = 0,
               payload_received: int = 0):
        for s in self._stats:
            s.requests += 1
            s.wire_sent += sent
            s.wire_received += received
            s.payload_sent += payload_sent
            s.payload_received += payload_received

    # -- low-level commands ----------------------------------------------------------------

    @property
    def _chunk(self) -> int:
        return max(1, min(P.MAX_DATA, self.info.max_data))

    def write_buffer(self, buffer, address: int, data: bytes) -> None:
        """WRITE ``data`` to ``buffer`` at ``address`` in MAX_DATA chunks."""
        buffer, data = Buffer(buffer), bytes(data)
        self._check_range(buffer, address, len(data))
        self._resident.pop(buffer, None)
        if buffer in (Buffer.W, Buffer.CHAN, Buffer.GROUP, Buffer.DSPW, Buffer.PROG):
            self._program_owner = None           # a resident model must be loaded again
        for off in range(0, len(data), self._chunk):
            part = data[off:off + self._chunk]
            self._call(lambda seq, a=address + off, d=part: P.write(buffer, a, d, seq=seq),
                       Opcode.WRITE, cycles=len(part),
                       context=f"{buffer.name} @{address + off}+{len(part)}")
            for s in self._stats:
                s.payload_sent += len(part)

    def read_buffer(self, buffer, address: int, count: int) -> bytes:
        """READ ``count`` bytes of ``buffer`` from ``address`` in MAX_DATA chunks."""
        buffer = Buffer(buffer)
        self._check_range(buffer, address, count)
        out = bytearray()
        for off in range(0, count, self._chunk):
            n = min(self._chunk, count - off)
            data = self._call(lambda seq, a=address + off, n=n: P.read(buffer, a, n, seq=seq),
                              Opcode.READ, expect=n, cycles=8 * n,
                              context=f"{buffer.name} @{address + off}+{n}")
            if len(data) != n:
                self._forget()
                raise P.ProtocolError(f"READ of {n} bytes returned {len(data)}")
            out += data
            for s in self._stats:
                s.payload_received += n
        return bytes(out)

    def _check_range(self, buffer: Buffer, address: int, count: int):
        size = self.info.buffer_size(buffer)
        if isinstance(address, bool) or not isinstance(address, int) or address < 0:
            raise ValueError(f"address must be a non-negative integer, not {address!r}")
        if count < 1 or address + count > size:
            raise ValueError(f"{buffer.name} access of {count} bytes at {address} outside the "
                             f"buffer ({size} bytes)")

    def load_layer(self, desc: LayerDescriptor) -> None:
        """LOAD_LAYER (skipped when this descriptor is already loaded)."""
        if desc == self._layer:
            return
        self._call(lambda seq: P.load_layer(desc, seq=seq), Opcode.LOAD_LAYER,
                   context=f"M={desc.m} K={desc.k} N={desc.n}")
        self._layer = desc

    def run(self) -> P.Counters | None:
        """RUN the loaded layer, wait for the result; returns the counters when
        ``counters_per_run`` (else None)."""
        d = self._layer
        ctx = f"M={d.m} K={d.k} N={d.n}" if d else ""
        cycles = self._estimate_cycles(d) if d else self.info.watchdog_cycles
        self._call(P.run, Opcode.RUN, cycles=cycles, context=ctx)
        for s in self._stats:
            s.runs += 1
        if not self.counters_per_run:
            return None
        c = self.counters()
        for s in self._stats:
            s.cycles += c.cycles
            s.busy += c.busy
            s.stall += c.stall
            s.macs += c.macs
            s.dq_stall += c.dq_stall
        return c

    def _estimate_cycles(self, d: LayerDescriptor) -> int:
        """Busy cycles of a run, an upper bound: each step feeds one packed weight byte
        (``ceil(K / lanes)`` steps per output tile) and group ends (every ``G / lanes``
        steps, and every tile end) are at least ``tile_period`` cycles apart, so a tile takes
        ``max(ceil(K / lanes), tile_period)`` cycles without groups and
        ``groups * max(ceil(G / lanes), tile_period)`` with; plus the shape check, the last
        tile's drain through the array and the edge units, and slack.

        A DSP layer (``sparse`` != 0) is bounded generously: each output row of each column
        tile takes its ``S`` steps plus ``cols`` cycles for the edge units, plus the chain's
        latency and slack (the engine's exact timing is the gateware's)."""
        info = self.info
        if d.sparse:
            try:
                steps = layout.dsp_steps(max(1, d.k), stages=info.dsp_stages or 8,
                                         pattern=d.pattern)
            except ValueError:
                steps = max(1, d.k)                # unknown to this host: the slowest case
            tiles = -(-d.n // info.cols)
            return (tiles * d.m * (steps + info.cols) + 4 * (info.dsp_stages or 8)
                    + 2 * info.tile_period + 4 * (info.rows + info.cols) + 256)
        try:
            lanes = WEIGHT_LANES[WeightFormat(d.fmt)]
        except ValueError:
            lanes = 1                              # unknown to this host: the slowest case
        period = max(1, info.tile_period)
        if d.group:
            per_tile = -(-d.k // d.group) * max(-(-d.group // lanes), period)
        else:
            per_tile = max(-(-d.k // lanes), period)
        tiles = -(-d.m // info.rows) * -(-d.n // info.cols)
        return tiles * per_tile + 2 * period + 4 * (info.rows + info.cols) + 256

    def counters(self) -> P.Counters:
        """The device's counters of the latest RUN (cycles, busy, stall, MACs, dq_stall)."""
        return P.Counters.unpack(self._call(P.counters, Opcode.COUNTERS,
                                            expect=P.Counters.SIZE))

    def status(self) -> P.Status:
        """STATUS: busy / loaded flags, the last error and the link's error counters."""
        return P.Status.unpack(self._call(P.status, Opcode.STATUS, expect=P.Status.SIZE))

    def reset(self) -> None:
        """RESET the device: stops a running GEMM, unloads the layer, clears its last error."""
        info = self.info
        # the core drains what it fed before it is idle (MixCore.ABORT_CYCLES)
        cycles = 2 * info.tile_period + 4 * (info.rows + info.cols) + 64 if info else 0
        self._call(P.reset, Opcode.RESET, cycles=cycles)
        self._layer = None

    # -- layer programs ----------------------------------------------------------------------

    def run_program(self, count: int, *, cycles: int | None = None) -> None:
        """RUN_PROGRAM: run layers ``0 .. count - 1`` of the PROG buffer and wait for the end.

        A failing layer raises :class:`~sw.protocol.DeviceError` with its status; which
        layer it was is in :meth:`layer_counters` (the first record that is not OK)."""
        info = self.info
        if not info.max_layers:
            raise DeviceMismatch("the device has no layer programs (its bitstream was built "
                                 "without them): rebuild it")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= info.max_layers:
            raise ValueError(f"count must be in [1, {info.max_layers}] (the device's program "
                             f"length), not {count!r}")
        # the program's gather writes A (and its GEMMs OUT): A no longer holds a GEMM operand
        self._resident.pop(Buffer.A, None)
        # not repeated blindly: a program overwrites its own input (ping-pong ACT regions),
        # so running it twice computes from garbage; NotRepeated goes to the caller
        self._call(lambda seq: P.run_program(count, seq=seq), Opcode.RUN_PROGRAM,
                   cycles=cycles if cycles is not None else info.watchdog_cycles,
                   context=f"{count} layers", repeatable=False)
        self._layer = None                       # the program loaded its own descriptors
        for s in self._stats:
            s.runs += 1

    def layer_counters(self, count: int) -> list:
        """The per-layer counters (:class:`sw.protocol.LayerCounters`) of the last program
        run, layers ``0 .. count - 1``."""
        data = self.read_buffer(Buffer.LCNT, 0, count * P.LCNT_RECORD)
        return [P.LayerCounters.unpack(data[i:i + P.LCNT_RECORD])
                for i in range(0, len(data), P.LCNT_RECORD)]

    def load_model(self, model, *, batch: int | None = None) -> "LoadedModel":
        """Compile ``model`` (:class:`sw.model.Model`) for this device and load its weights,
        tables and program once; returns a :class:`LoadedModel` whose :meth:`~LoadedModel.run`
        sends only inputs and reads only outputs. N:M sparse Dense layers run on the sparse
        DSP engine (their records resident in DSPW); other work that writes W, DSPW, CHAN,
        GROUP or PROG (e.g. :meth:`gemm`, :meth:`sparse_gemm`) makes the next run load the
        model again.

        ``batch``: samples per program run (default: the most that fit,
        :func:`sw.program.max_batch`). A model that does not fit raises
        :class:`sw.program.ModelTooLarge` naming the layer and the bytes it lacks."""
        from . import program
        if batch is None:
            batch = program.max_batch(model, self.info)
        compiled = program.compile_model(model, self.info, batch=batch)
        lm = LoadedModel(self, model, compiled)
        lm.load()
        return lm

    # -- what the device takes --------------------------------------------------------------

    @staticmethod
    def _check_fmt(fmt) -> WeightFormat:
        if isinstance(fmt, WeightFormat):
            return fmt
        if isinstance(fmt, str) and fmt.upper() in WeightFormat.__members__:
            return WeightFormat[fmt.upper()]
        if isinstance(fmt, (int, np.integer)) and not isinstance(fmt, bool) \
                and int(fmt) in WeightFormat._value2member_map_:
            return WeightFormat(int(fmt))
        raise ValueError(f"fmt must be a sw.numerics.WeightFormat (one of "
                         f"{[f.name for f in WeightFormat]}) or its name, not {fmt!r}")

    def max_k(self, fmt=WeightFormat.INT8) -> int:
        """Largest K one run takes with weights of ``fmt``: IDENTIFY's ``max_k`` and what one
        array row's A bank (4 activations per 32-bit word) and one column's W bank
        (``WEIGHT_LANES[fmt]`` weights per byte) hold."""
        info = self.info
        fmt = self._check_fmt(fmt)
        a_k = 4 * (info.a_bytes // (4 * info.rows))
        w_k = WEIGHT_LANES[fmt] * (info.w_bytes // info.cols)
        return min(info.max_k, a_k, w_k, _U16)

    def _check_support(self, fmt: WeightFormat, size: int) -> None:
        """Refuse a weight format or group size the device does not compute."""
        info = self.info
        pe = getattr(info.pe, "name", info.pe)
        if not info.supports_format(fmt):
            raise ValueError(f"the device does not compute {fmt.name} weights: its array "
                             f"(PE kind {pe}) supports {_format_names(info.formats)}")
        if size and not info.supports_group(size):
            raise ValueError(f"the device does not support groups of {size} along K: its "
                             f"group sizes are {_group_names(info.group_sizes)} (PE kind {pe})")

    def plan(self, m: int, k: int, n: int, requant=None, *, fmt=WeightFormat.INT8,
             group=0, split_k: bool = True) -> GemmPlan:
        """The tiling of an ``m x k x n`` GEMM with weights of ``fmt``, groups of ``group``
        along K (0 or None: none; a ``GroupQuant`` gives its size) and ``requant`` (None,
        ``Requant`` or ``ChannelRequant``) on this device.

        ``split_k`` (what :meth:`gemm` does for INT8 weights without groups) allows cutting
        a K beyond :meth:`max_k` into chunks whose int32 partial sums are added (and
        requantized) on the host; without it such a K raises ``ValueError``, as does a
        format, group size or output mode the device lacks.
        """
        info = self.info
        for name, v in (("M", m), ("K", k), ("N", n)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        m, k, n = int(m), int(k), int(n)
        fmt = self._check_fmt(fmt)
        size = group.size if isinstance(group, GroupQuant) else (0 if group is None else group)
        if isinstance(size, bool) or size not in (0,) + GROUP_SIZES:
            raise ValueError(f"group size must be 0 (no groups) or one of {GROUP_SIZES}, "
                             f"not {group!r}")
        size = int(size)
        self._check_requant_type(requant)
        self._check_support(fmt, size)
        R, C = info.rows, info.cols
        lanes = WEIGHT_LANES[fmt]
        raw_ok, int8_ok = info.supports(OutMode.RAW32), info.supports(OutMode.INT8)
        chan_cap = info.chan_bytes // layout.CHAN_ENTRY_BYTES
        group_cap = info.group_bytes // layout.GROUP_ENTRY_BYTES
        is_chan = isinstance(requant, ChannelRequant)
        kmax = self.max_k(fmt)
        if k <= kmax:
            kc = k
        elif split_k and not size:
            chunks = -(-k // kmax)
            kc = -(-k // chunks)       # balanced chunks
        else:
            raise ValueError(
                f"K={k} is more than the device takes in one run with {fmt.name} weights "
                f"(K <= {kmax}: max_k {info.max_k}, A banks of "
                f"{4 * (info.a_bytes // (4 * R))} activations, W banks of "
                f"{lanes * (info.w_bytes // C)} {fmt.name} weights); K is not split "
                f"(per-group dequantization and per-channel requantization need the whole "
                f"sum): use a device with larger buffers or split the layer")
        ng = -(-kc // size) if size else 0
        if size and ng > group_cap:
            raise ValueError(f"K={k} in groups of {size} makes {ng} groups, but the device's "
                             f"GROUP table holds {group_cap} entries (group_bytes="
                             f"{info.group_bytes}): use larger groups or a smaller K")
        # output mode, and where the requantization runs
        if requant is None:
            if not raw_ok:
                why = f"K={k} > {kmax} is split" if kc < k else "requant=None"
                raise ValueError(f"this GEMM needs RAW32 output ({why}) but the device "
                                 f"supports only INT8 output; pass a requant"
                                 + (f" and keep K <= {kmax}" if kc < k else ""))
            mode, host_requant = OutMode.RAW32, False
        elif kc == k and int8_ok and (chan_cap >= 1 or not is_chan):
            mode, host_requant = OutMode.INT8, False
        elif split_k and not size and raw_ok:
            mode, host_requant = OutMode.RAW32, True
        elif kc < k:
            raise ValueError(f"this GEMM needs RAW32 output (K={k} > {kmax} is split) but "
                             f"the device supports only INT8 output; keep K <= {kmax}")
        else:
            _refuse_int8(info, int8_ok)
        chan = is_chan and not host_requant
        esize = 4 if mode == OutMode.RAW32 else 1
        words = min(info.out_words, info.out_bytes // (4 * R))
        per_bank = words * (4 // esize)              # result elements per OUT bank
        if per_bank < 1:
            raise DeviceMismatch(f"OUT buffer too small for one {mode.name} result")
        kw, kb = -(-kc // 4), -(-kc // lanes)
        mt_max = info.a_bytes // (4 * kw * R)
        nt_max = info.w_bytes // (kb * C)
        ncap = min(per_bank, _U16)
        if chan:
            ncap = min(ncap, chan_cap)
        if size:
            ncap = min(ncap, group_cap // ng)
        nK = -(-k // kc)
        # bytes per pass over each operand: packed weights and their tables / activations
        w_cost = nK * kb * n + (8 * n if chan else 0) + (4 * ng * n if size else 0)
        a_cost = m * 4 * kw * nK
        best = None
        for nt in range(1, min(nt_max, -(-n // C)) + 1):
            nb = min(n, nt * C, ncap)
            # OUT holds ceil(mb / rows) * nb elements per bank
            mb = min(m, mt_max * R, (per_bank // nb) * R, _U16)
            nN, nM = -(-n // nb), -(-m // mb)
            # wire bytes: the outer loop's operand once, the inner one once per outer block
            # (unless a single block stays resident), results, and a per-RUN cost for the
            # command round trips
            fixed = m * n * esize * nK + 200 * nN * nM * nK
            for m_outer, ops in ((False, w_cost + a_cost * (nN if nM > 1 else 1)),
                                 (True, a_cost + w_cost * (nM if nN > 1 else 1))):
                if best is None or fixed + ops < best[0]:
                    best = (fixed + ops, mb, nb, m_outer)
            if nb < nt * C:           # capped by OUT or a table: wider N blocks are the same
                break
        assert best is not None
        return GemmPlan(m, k, n, best[1], kc, best[2], mode, host_requant, best[3], fmt, size,
                        chan)

    # -- GEMM ------------------------------------------------------------------------------

    def _measured(self, fn, *args):
        t0 = time.perf_counter()
        self.last = Stats()
        self._stats = [self.total, self.last]
        try:
            return fn(*args)
        finally:
            dt = time.perf_counter() - t0
            self.last.seconds = dt
            self.total.seconds += dt
            self._stats = [self.total]

    def gemm(self, a, w, requant: Requant | ChannelRequant | None = None) -> np.ndarray:
        """``sw.numerics.mpgemm(a, w, requant)`` computed on the device, bit-exactly (with a
        ``ChannelRequant``: ``sw.numerics.mixgemm(a, w, requant=requant)``).

        Parameters
        ----------
        a : array_like, shape (M, K), integer dtype, values in [-128, 127]
        w : array_like, shape (K, N), integer dtype, values in [-128, 127] (INT8 weights)
        requant : sw.numerics.Requant or sw.numerics.ChannelRequant, optional
            None returns the raw accumulators. A ``Requant`` goes into the layer descriptor;
            a ``ChannelRequant`` (N channels: bias, multiplier and shift per output column)
            into the device's CHAN table, one N block's slice per RUN.

        Returns
        -------
        numpy.ndarray, shape (M, N)
            int32 when ``requant`` is None, else int8.

        Notes
        -----
        Everything is checked before a byte is sent (dtype: any integer dtype, floats are
        refused; values: INT8 range; shapes: 2-D, matching K, nothing empty; the device
        must compute INT8 weights). The GEMM is tiled onto the buffers (see :meth:`plan`):
        M and N are cut into blocks whose operands and result fit the A, W, OUT (and CHAN)
        buffers, each block laid out for its own N. When K exceeds :meth:`max_k`, K is cut
        into chunks that run in RAW32 mode; the int32 partial sums are added on the host
        (exact in int64), and with ``requant`` the requantization is applied on the host
        (:func:`sw.numerics.requantize` / :func:`~sw.numerics.requantize_channels`). When K
        fits, the requantization runs on the device (INT8 output mode). Operand images
        already in a buffer (same bytes) are not sent again, so repeated calls with the same
        weights only move activations and results.

        Raises
        ------
        TypeError, ValueError
            Invalid operands, or something the device cannot do (nothing was sent).
        sw.protocol.DeviceError
            The device answered with an error code (``.code``).
        DeviceTimeout
            No reply in time.
        """
        return self._measured(self._gemm, a, w, requant)

    def _gemm(self, a, w, requant):
        self._check_requant_type(requant)
        a = self._check_act(a)
        w = self._check_weights(w, WeightFormat.INT8, "w")
        self._check_shapes(a, w, "w", None, requant)
        return self._execute(a, w, WeightFormat.INT8, None, requant, split_k=True)

    def mixgemm(self, a, q, *, fmt, group: GroupQuant | None = None,
                requant: ChannelRequant | Requant | None = None) -> np.ndarray:
        """``sw.numerics.mixgemm(a, q, fmt=fmt, group=group, requant=requant)`` on the
        device, bit-exactly.

        Parameters
        ----------
        a : array_like, shape (M, K), integer dtype, values in [-128, 127]
        q : array_like, shape (K, N), integer dtype
            Weight values of ``fmt`` (INT4: [-8, 7], INT2: [-2, 1], TERNARY: {-1, 0, 1},
            POW2: +-2**e, e in 0..7); packed along K for the W buffer
            (:func:`sw.numerics.pack_weights`).
        fmt : sw.numerics.WeightFormat (or its name / number)
        group : sw.numerics.GroupQuant, optional
            Per-group dequantization along K (scale and zero point tables of shape
            ``(ceil(K / size), N)``), written to the GROUP table one N block at a time.
        requant : sw.numerics.ChannelRequant or sw.numerics.Requant, optional
            ``ChannelRequant`` -> CHAN table (``chan = 1``), ``Requant`` -> the descriptor;
            None -> raw int32 sums (RAW32 output).

        Returns
        -------
        numpy.ndarray, shape (M, N): int8 with ``requant``, else int32.

        Notes
        -----
        M and N are tiled as in :meth:`gemm`; K is never split (the per-group
        dequantization and the per-channel requantization need the whole sum), so K must
        fit one run (:meth:`max_k` for ``fmt``). Before anything is sent the call is refused
        (``ValueError``/``TypeError``, naming what the device supports, from IDENTIFY) for:
        a format the device does not compute, a group size it lacks, K beyond
        :meth:`max_k` or more groups than its GROUP table holds, an output mode or table it
        lacks, values outside their ranges (activations, weights of ``fmt``), wrong shapes
        or dtypes, and raw output of a grouped layer whose sums could exceed int32 (the
        device keeps 32 bits).
        """
        return self._measured(self._mixgemm, a, q, fmt, group, requant)

    def _mixgemm(self, a, q, fmt, group, requant):
        fmt = self._check_fmt(fmt)
        self._check_requant_type(requant)
        if group is not None and not isinstance(group, GroupQuant):
            raise TypeError(f"group must be a sw.numerics.GroupQuant or None, not {group!r}")
        a = self._check_act(a)
        q = self._check_weights(q, fmt, "q")
        self._check_shapes(a, q, "q", group, requant)
        if group is not None and requant is None:
            # cheap checks first (device support, K), then the RAW32 range
            self.plan(a.shape[0], a.shape[1], q.shape[1], None, fmt=fmt, group=group,
                      split_k=False)
            self._check_raw_range(a, q, group)
        return self._execute(a, q, fmt, group, requant, split_k=False)

    def linear(self, x, layer, requant: Requant | None = None) -> np.ndarray:
        """A fully connected layer on the device.

        With a :class:`sw.quant.QuantLinear` ``layer``: an integer ``x`` (M, K) (or (K,))
        holds the int8 input and the int8 output comes back, bit-exact with
        ``layer.golden(x)``; a float ``x`` is quantized with the layer's ``x_scale`` /
        ``x_zero`` (:func:`sw.quant.quantize_act`), run, and the output dequantized with
        ``y_scale`` / ``y_zero`` (:func:`sw.quant.dequantize`): exactly ``layer.forward(x)``.
        Weights, group tables and the per-channel requantization come from the layer
        (:meth:`mixgemm`). A sparse layer (``layer.sparse`` set: ``sw.quant.quantize_linear``
        with ``sparse=(n, m)``) runs on the sparse DSP engine (:meth:`sparse_gemm`), bit-exact
        with ``layer.golden(x)`` as well; a device without that engine, or without the
        layer's N:M pattern, or a packed engine with INT8 weights, is refused with
        ``ValueError`` before anything is sent.

        With an integer matrix ``layer`` (K, N) of INT8 weights: ``x @ layer`` as
        :meth:`gemm` (``requant`` optional). A 1-D ``x`` gives a 1-D result.
        """
        if isinstance(layer, quant.QuantLinear):
            if requant is not None:
                raise TypeError("requant is part of the QuantLinear layer; pass None")
            xa = np.asarray(x)
            one = xa.ndim == 1
            if one:
                xa = xa[None, :]
            K = layer.in_features
            if xa.ndim != 2 or xa.shape[1] != K or xa.shape[0] == 0:
                raise ValueError(f"x must be (M, {K}) or ({K},) for this layer ({K} inputs, "
                                 f"{layer.out_features} outputs), got shape {np.shape(x)}")
            if xa.dtype.kind in "iu":
                y = self._layer_gemm(xa, layer)
            elif xa.dtype.kind == "f":
                xq = quant.quantize_act(xa, layer.x_scale, layer.x_zero)   # checks finite
                y = quant.dequantize(self._layer_gemm(xq, layer), layer.y_scale, layer.y_zero)
            else:
                raise TypeError(f"x must be an integer (int8 values) or float array, not of "
                                f"dtype {xa.dtype}")
            return y[0] if one else y
        xa = np.asarray(x)
        if xa.ndim == 1:
            return self.gemm(xa[None, :], layer, requant)[0]
        return self.gemm(xa, layer, requant)

    def _layer_gemm(self, xq, layer) -> np.ndarray:
        """int8 input through a ``QuantLinear``: the array, or the DSP engine (sparse)."""
        sp = getattr(layer, "sparse", None)
        if sp is None:
            return self.mixgemm(xq, layer.q, fmt=layer.fmt, group=layer.group,
                                requant=layer.requant)
        if layer.group is not None:
            raise ValueError("this sparse layer has per-group tables, but the DSP engine "
                             "requantizes per output channel only (group must be None)")
        return self.sparse_gemm(xq, sp, requant=layer.requant)

    # -- the sparse DSP engine -------------------------------------------------------------

    def _check_dsp(self, n: int, m: int, fmt: WeightFormat) -> NMPattern:
        """Refuse ``n:m`` weights of ``fmt`` the device's DSP engine cannot run
        (:func:`sw.layout.dsp_engine_pattern`); returns their pattern."""
        info = self.info
        pattern = layout.dsp_engine_pattern(info, n, m, fmt)
        if info.dsp_packed and info.cols % 2:
            raise DeviceMismatch(f"a packed DSP engine next to an odd number of columns "
                                 f"({info.cols}): IDENTIFY is inconsistent")
        return pattern

    def plan_sparse(self, m: int, k: int, n: int, requant=None, *, pattern,
                    fmt=WeightFormat.INT8) -> GemmPlan:
        """The tiling of an ``m x k x n`` GEMM on the sparse DSP engine with N:M ``pattern``
        (an ``NMPattern``) and weights of ``fmt``; ``requant`` as in :meth:`plan`.

        K is never split and at most IDENTIFY's ``max_k``. An M block of ``mb`` rows needs
        ``mb * S`` words of each A row bank (``S = ceil(k / Wp)``,
        :func:`sw.layout.dsp_steps`), an N block of ``nb`` columns ``ceil(nb / cols) * S``
        DSPW records per chain and ``ceil(mb / rows) * nb`` OUT elements per bank (the
        array's OUT layout), plus ``nb`` CHAN entries with a ``ChannelRequant``. N blocks
        start at multiples of the index group (``DeviceInfo.dsp_index_group``: even columns on
        a packed engine, ``dsp_share`` columns on one whose chains share their indices; a
        block narrower than a group divides it), so the device's index groups are the
        groups of ``sw.quant.prune_nm(..., share=...)`` from column 0. Raises ``ValueError``
        for what the device cannot do (no DSP engine, pattern, format, K too large for
        ``max_k``, A or DSPW, output mode or table it lacks).
        """
        info = self.info
        for name, v in (("M", m), ("K", k), ("N", n)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        m, k, n = int(m), int(k), int(n)
        fmt = self._check_fmt(fmt)
        if not isinstance(pattern, NMPattern):
            raise TypeError(f"pattern must be a sw.numerics.NMPattern, not {pattern!r}")
        self._check_requant_type(requant)
        pattern = self._check_dsp(pattern.n, pattern.m, fmt)
        if k % pattern.m:
            raise ValueError(f"K={k} is not a multiple of the pattern's block size "
                             f"m={pattern.m}")
        if k > min(info.max_k, _U16):
            raise ValueError(f"K={k} is more than the device takes in one run (max_k "
                             f"{info.max_k}, which bounds DSP layers too); the DSP engine does "
                             f"not split K")
        R, C = info.rows, info.cols
        L, packed = info.dsp_stages, bool(info.dsp_packed)
        wp = layout.dsp_window(stages=L, pattern=pattern)
        S = layout.dsp_steps(k, stages=L, pattern=pattern)
        a_depth = info.a_bytes // (4 * R)
        depth = info.dsp_depth
        if S > min(a_depth, depth):
            raise ValueError(
                f"K={k} takes S = ceil(K / {wp}) = {S} steps of pattern {pattern.name} per "
                f"output row, more than the device holds in one run (A row banks of "
                f"{a_depth} words, {depth} DSPW records per chain: K <= "
                f"{min(a_depth, depth) * wp}); the DSP engine does not split K")
        raw_ok, int8_ok = info.supports(OutMode.RAW32), info.supports(OutMode.INT8)
        chan_cap = info.chan_bytes // layout.CHAN_ENTRY_BYTES
        is_chan = isinstance(requant, ChannelRequant)
        if requant is None:
            if not raw_ok:
                raise ValueError("this GEMM needs RAW32 output (requant=None) but the device "
                                 "supports only INT8 output; pass a requant")
            mode = OutMode.RAW32
        elif int8_ok and (chan_cap >= 1 or not is_chan):
            mode = OutMode.INT8
        else:
            _refuse_int8(info, int8_ok)
        chan = is_chan
        esize = 4 if mode == OutMode.RAW32 else 1
        words = min(info.out_words, info.out_bytes // (4 * R))
        per_bank = words * (4 // esize)
        if per_bank < 1:
            raise DeviceMismatch(f"OUT buffer too small for one {mode.name} result")
        ncap = min(per_bank, _U16)
        if chan:
            ncap = min(ncap, chan_cap)
        group = info.dsp_index_group          # columns per index group: 2 packed, share
        if group > 1 and ncap < n:
            # N blocks start at multiples of the group, so that the device's index groups
            # (from every block's, and tile's, first column) are the pruning groups; a block
            # narrower than a group is a divisor of it (it never straddles two groups), of
            # whole column pairs on a packed engine
            if ncap >= group:
                ncap -= ncap % group
            else:
                ncap = max((d for d in range(1, ncap + 1)
                            if group % d == 0 and not (packed and d % 2)), default=0)
            if ncap < 1:
                raise DeviceMismatch("a packed DSP engine needs N blocks of two columns, but "
                                     "the device's OUT buffer or CHAN table holds one")
        mt_max = a_depth // S                 # rows of A per M block
        nt_max = depth // S                   # column tiles per N block
        ch = info.dsp_chain_stride
        # bytes per pass over each operand: DSPW records and CHAN entries / the A image
        w_cost = -(-n // C) * S * ch * P.DSPW_RECORD + (8 * n if chan else 0)
        a_cost = m * S * R * 4
        best = None
        for nt in range(1, min(nt_max, -(-n // C)) + 1):
            nb = min(n, nt * C, ncap)
            mb = min(m, mt_max, (per_bank // nb) * R, _U16)
            nN, nM = -(-n // nb), -(-m // mb)
            fixed = m * n * esize + 200 * nN * nM
            for m_outer, ops in ((False, w_cost + a_cost * (nN if nM > 1 else 1)),
                                 (True, a_cost + w_cost * (nM if nN > 1 else 1))):
                if best is None or fixed + ops < best[0]:
                    best = (fixed + ops, mb, nb, m_outer)
            if nb < nt * C:
                break
        assert best is not None
        return GemmPlan(m, k, n, best[1], k, best[2], mode, False, best[3], fmt, 0, chan,
                        1 + int(pattern))

    def sparse_gemm(self, a, sparse, *, requant: ChannelRequant | Requant | None = None
                    ) -> np.ndarray:
        """``sw.numerics.sparse_gemm(a, sparse)`` followed by ``requant`` on the device's
        sparse DSP engine, bit-exactly.

        Parameters
        ----------
        a : array_like, shape (M, K), integer dtype, values in [-128, 127]
        sparse : sw.numerics.NMSparse
            N:M compressed weights, ``K x N`` (e.g. ``sw.quant.quantize_linear(...,
            sparse=(n, m)).sparse``); its pattern must be one the device's DSP engine runs
            (IDENTIFY ``dsp_patterns``), and 4-bit (INT4, INT2, TERNARY) on a packed engine,
            whose column pairs ``2c, 2c + 1`` must keep the same rows; on an engine whose
            chains share their indices (IDENTIFY ``dsp_share`` > 1) every group of
            ``DeviceInfo.dsp_index_group`` columns from column 0 must keep the same rows
            (``sw.quant.prune_nm(..., share=info.dsp_index_group)``).
        requant : sw.numerics.ChannelRequant or sw.numerics.Requant, optional
            ``ChannelRequant`` -> CHAN table, ``Requant`` -> the descriptor; None -> raw
            int32 sums (RAW32 output).

        Returns
        -------
        numpy.ndarray, shape (M, N): int8 with ``requant``, else int32.

        Notes
        -----
        M and N are tiled as :meth:`plan_sparse` says; each block writes A in the DSP layout
        (:func:`sw.layout.dsp_act_image`), its columns' DSPW records
        (:func:`sw.layout.dsp_weight_image`, ``w_base`` 0) and CHAN slice, and runs a
        descriptor with ``sparse = 1 + pattern``; the result is read from OUT as for the
        array. Refused before anything is sent (``ValueError`` / ``TypeError``): no DSP
        engine, a pattern it does not run, INT8 weights on a packed engine, column pairs
        or index groups whose indices differ (:func:`sw.layout.dsp_check_indices`), K
        beyond one run, an output mode or table the device lacks, operands out of range or
        of the wrong shape.
        """
        return self._measured(self._sparse_gemm, a, sparse, requant)

    def _sparse_gemm(self, a, sp, requant):
        if not isinstance(sp, NMSparse):
            raise TypeError(f"sparse must be a sw.numerics.NMSparse, not {type(sp).__name__}")
        self._check_requant_type(requant)
        a = self._check_act(a)
        M, K = a.shape
        if K != sp.k:
            raise ValueError(f"inner dimensions differ: a is {a.shape} (M, K) but the sparse "
                             f"weights have K = {sp.k} rows (N = {sp.ncols}); need "
                             f"a.shape[1] == {sp.k}")
        N = sp.ncols
        if isinstance(requant, ChannelRequant) and requant.channels != N:
            raise ValueError(f"requant has {requant.channels} channels, the layer N={N} "
                             f"output columns")
        pattern = self._check_dsp(sp.n, sp.m, sp.fmt)
        pl = self.plan_sparse(M, K, N, requant, pattern=pattern, fmt=sp.fmt)
        # the whole layer's index groups (a packed pair, dsp_share chains), before any frame:
        # the N blocks start at multiples of the group, so each block's groups lie in these
        info = self.info
        layout.dsp_check_indices(sp, cols=info.cols, packed=bool(info.dsp_packed),
                                 share=info.dsp_share)
        # RAW32 needs no range check: |a| <= 128, |w| <= 128 and K < 2**16 kept weights at
        # most, so every sum fits int32
        return self._execute_sparse(a, sp, requant, pl, pattern)

    # -- operand checks --------------------------------------------------------------------

    @staticmethod
    def _check_requant_type(requant):
        if requant is not None and not isinstance(requant, (Requant, ChannelRequant)):
            raise TypeError(f"requant must be a sw.numerics.Requant, a sw.numerics."
                            f"ChannelRequant or None, not {requant!r}")

    @staticmethod
    def _check_matrix(name: str, x, dims: str) -> np.ndarray:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}; "
                            f"quantize it first (floats are never truncated)")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D {dims}, got shape {arr.shape}")
        if 0 in arr.shape:
            raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
        return arr

    def _check_act(self, a) -> np.ndarray:
        return check_int(self._check_matrix("a", a, "(M, K)"), 8, name="a")

    def _check_weights(self, q, fmt: WeightFormat, name: str) -> np.ndarray:
        arr = self._check_matrix(name, q, "(K, N)")
        lo, hi = weight_range(fmt)
        amin, amax = int(arr.min()), int(arr.max())
        what = f"{name} must hold {fmt.name} weights ({_FORMAT_VALUES[fmt]})"
        if amin < lo or amax > hi:
            raise ValueError(f"{what}; found [{amin}, {amax}]")
        v = arr.astype(np.int64)
        if fmt == WeightFormat.POW2:
            av = np.abs(v)
            bad = v[~((av >= 1) & ((av & (av - 1)) == 0))]
        elif fmt == WeightFormat.TERNARY:
            bad = v[np.abs(v) > 1]
        else:
            bad = v[:0]
        if bad.size:
            vals = np.unique(bad)
            raise ValueError(f"{what}; found {[int(x) for x in vals[:5]]}"
                             + (" ..." if vals.size > 5 else ""))
        encode_weights(v, fmt)          # the golden model's own check (never fails here)
        return v

    @staticmethod
    def _check_shapes(a, q, qname, group, requant):
        M, K = a.shape
        if K != q.shape[0]:
            raise ValueError(f"inner dimensions differ: a is {a.shape} (M, K) but {qname} is "
                             f"{q.shape} (K, N); need a.shape[1] == {qname}.shape[0]")
        N = q.shape[1]
        if group is not None:
            want = (-(-K // group.size), N)
            if group.scale.shape != want:
                raise ValueError(f"group tables (scale, zero) must have shape "
                                 f"(ceil(K / {group.size}), N) = {want} for K={K}, N={N}; "
                                 f"got {group.scale.shape}")
        if isinstance(requant, ChannelRequant) and requant.channels != N:
            raise ValueError(f"requant has {requant.channels} channels, the layer N={N} "
                             f"output columns")

    @staticmethod
    def _check_raw_range(a, q, gq: GroupQuant) -> None:
        """Raw output of a grouped layer: the device keeps the low 32 bits of sums that can
        be larger; refuse when they could exceed int32 (a bound, checked on the host)."""
        K = q.shape[0]
        g = np.arange(K) // gq.size
        wabs = gq.scale[g] * np.abs(q - gq.zero[g])          # K x N, exact int64
        hi = (1 << 31) - 1
        amax = np.abs(a).max(axis=1)
        if int(amax.max()) * int(wabs.sum(axis=0).max()) <= hi:
            return
        # exact in float64: terms < 2**31, sums < 2**47
        bound = np.abs(a).astype(np.float64) @ wabs.astype(np.float64)
        if bound.max() > hi:
            m, n = np.unravel_index(int(np.argmax(bound)), bound.shape)
            raise ValueError(f"raw (RAW32) output of a grouped layer: the sums may exceed "
                             f"int32 (bound {int(bound.max())} at row {m}, column {n}) and "
                             f"the device keeps only 32 bits; pass a requant for INT8 output")

    # -- execution -------------------------------------------------------------------------

    def _execute(self, a, q, fmt: WeightFormat, gq: GroupQuant | None, requant,
                 split_k: bool) -> np.ndarray:
        M, K = a.shape
        N = q.shape[1]
        pl = self.plan(M, K, N, requant, fmt=fmt, group=gq.size if gq is not None else 0,
                       split_k=split_k)
        R, C = self.info.rows, self.info.cols
        raw = pl.mode == OutMode.RAW32
        dev_rq = None if raw else requant
        acc = np.zeros((M, N), dtype=np.int64) if raw else None
        out8 = None if raw else np.zeros((M, N), dtype=np.int8)
        m_blocks = [(m0, min(M, m0 + pl.mb)) for m0 in range(0, M, pl.mb)]
        n_blocks = [(n0, min(N, n0 + pl.nb)) for n0 in range(0, N, pl.nb)]
        if pl.m_outer:
            order = [(mm, nn) for mm in m_blocks for nn in n_blocks]
        else:
            order = [(mm, nn) for nn in n_blocks for mm in m_blocks]
        for k0 in range(0, K, pl.kc):
            k1 = min(K, k0 + pl.kc)
            packed = pack_weights(q[k0:k1], fmt)
            w_side: dict = {}
            a_side: dict = {}
            for (m0, m1), (n0, n1) in order:
                if (n0, n1) not in w_side:
                    w_side.clear()           # blocks of one loop order come back together
                    imgs = [(Buffer.W, layout.weight_image(packed[:, n0:n1], C))]
                    if gq is not None:
                        imgs.append((Buffer.GROUP, layout.group_table_image(GroupQuant(
                            gq.size, gq.scale[:, n0:n1], gq.zero[:, n0:n1]))))
                    if pl.chan:
                        imgs.append((Buffer.CHAN, _chan_slice(requant, n0, n1)))
                    w_side[(n0, n1)] = imgs
                if (m0, m1) not in a_side:
                    a_side.clear()
                    a_side[(m0, m1)] = layout.act_image(a[m0:m1, k0:k1], R)
                # _put skips an image the buffer already holds (the outer operand)
                for buffer, image in w_side[(n0, n1)]:
                    self._put(buffer, image)
                self._put(Buffer.A, a_side[(m0, m1)])
                mb, nb = m1 - m0, n1 - n0
                desc = LayerDescriptor.from_requant(mb, k1 - k0, nb, pl.mode, dev_rq,
                                                    fmt=fmt, group=pl.group)
                self.load_layer(desc)
                self.run()
                data = self.read_buffer(Buffer.OUT, 0, layout.result_size(mb, nb, R, pl.mode))
                block = layout.decode_result(data, mb, nb, R, pl.mode)
                if raw:
                    acc[m0:m1, n0:n1] += block
                else:
                    out8[m0:m1, n0:n1] = block
        if not raw:
            return out8
        if requant is not None:                       # K was split: requantize on the host
            if isinstance(requant, ChannelRequant):
                return requantize_channels(acc, requant)
            return requantize(acc, requant)
        lo, hi = int_range(32)
        if acc.min() < lo or acc.max() > hi:
            raise ValueError("accumulators exceed int32 (K too large for raw output); "
                             "pass a Requant to get INT8 results")
        return acc.astype(np.int32)

    def _execute_sparse(self, a, sp: NMSparse, requant, pl: GemmPlan,
                        pattern: NMPattern) -> np.ndarray:
        """Run a planned GEMM on the DSP engine, block by block (as :meth:`_execute`)."""
        info = self.info
        M, K = a.shape
        N = sp.ncols
        R, C, L = info.rows, info.cols, info.dsp_stages
        packed = bool(info.dsp_packed)
        raw = pl.mode == OutMode.RAW32
        dev_rq = None if raw else requant
        out = np.zeros((M, N), dtype=np.int32 if raw else np.int8)
        m_blocks = [(m0, min(M, m0 + pl.mb)) for m0 in range(0, M, pl.mb)]
        n_blocks = [(n0, min(N, n0 + pl.nb)) for n0 in range(0, N, pl.nb)]
        if pl.m_outer:
            order = [(mm, nn) for mm in m_blocks for nn in n_blocks]
        else:
            order = [(mm, nn) for nn in n_blocks for mm in m_blocks]
        w_side: dict = {}
        a_side: dict = {}
        for (m0, m1), (n0, n1) in order:
            if (n0, n1) not in w_side:
                w_side.clear()
                part = NMSparse(sp.n, sp.m, sp.values[:, n0:n1], sp.idx[:, n0:n1], sp.fmt)
                imgs = [(Buffer.DSPW, layout.dsp_weight_image(part, cols=C, stages=L,
                                                              packed=packed, pattern=pattern,
                                                              share=info.dsp_share))]
                if pl.chan:
                    imgs.append((Buffer.CHAN, _chan_slice(requant, n0, n1)))
                w_side[(n0, n1)] = imgs
            if (m0, m1) not in a_side:
                a_side.clear()
                a_side[(m0, m1)] = layout.dsp_act_image(a[m0:m1], rows=R, stages=L,
                                                        pattern=pattern)
            for buffer, image in w_side[(n0, n1)]:
                self._put(buffer, image)
            self._put(Buffer.A, a_side[(m0, m1)])
            mb, nb = m1 - m0, n1 - n0
            desc = LayerDescriptor.from_requant(mb, K, nb, pl.mode, dev_rq, fmt=sp.fmt,
                                                sparse=pattern)
            self.load_layer(desc)
            self.run()
            data = self.read_buffer(Buffer.OUT, 0, layout.result_size(mb, nb, R, pl.mode))
            out[m0:m1, n0:n1] = layout.decode_result(data, mb, nb, R, pl.mode)
        return out

    def _put(self, buffer: Buffer, image: bytes) -> None:
        """Write an operand image unless the buffer already holds exactly these bytes."""
        if self._resident.get(buffer) == image:
            return
        self.write_buffer(buffer, 0, image)
        self._resident[buffer] = image


@dataclass
class ModelRun:
    """What one :meth:`LoadedModel.run` did: per device layer (summed over the program runs)
    its name, cycles of the whole layer, core cycles, cycles feeding the array and MACs; and
    the run's totals."""

    names: list
    cycles: list
    core_cycles: list
    busy: list
    macs: list
    samples: int = 0
    program_runs: int = 0
    seconds: float = 0.0
    stats: Stats | None = None

    @property
    def total_cycles(self) -> int:
        return sum(self.cycles)

    def utilization(self, rows: int, cols: int, lanes) -> list:
        """Per layer: MACs / (PEs x lanes x core cycles); ``lanes`` per layer (MACs per PE
        and cycle of the layer's weight format)."""
        return [m / (c * rows * cols * l) if c else 0.0
                for m, c, l in zip(self.macs, self.core_cycles, lanes)]


class LoadedModel:
    """A model resident on the device (:meth:`Accelerator.load_model`).

    Attributes
    ----------
    compiled : sw.program.CompiledProgram
    last : ModelRun or None
        Counters of the latest :meth:`run`.
    """

    def __init__(self, acc: Accelerator, model, compiled):
        self.acc, self.model, self.compiled = acc, model, compiled
        self.last: ModelRun | None = None
        self.loads = 0

    def load(self) -> None:
        """Write the weights (W, and DSPW for sparse layers), tables and program (again,
        e.g. after other work used W, DSPW, CHAN, GROUP or PROG)."""
        acc = self.acc
        for p in self.compiled.placements:
            acc.write_buffer(p.buffer, p.address, p.data)
        acc._program_owner = self
        self.loads += 1

    def _cycles_bound(self) -> int:
        """Reply timeout: gather, scatter and pool move a byte per cycle; the GEMM is bounded
        by the device's run estimate."""
        acc, total = self.acc, 0
        for rec in self.compiled.layers:
            n = int(np.prod(rec.n))
            total += 4 * n + 256
            if rec.kind == P.LayerKind.GEMM:
                total += acc._estimate_cycles(rec.desc) + rec.desc.m * rec.desc.n
        return total

    def run(self, x_q, progress=None) -> np.ndarray:
        """Run int8 inputs ``x_q`` of shape ``(samples, *model.input_shape)`` through the
        resident model; returns the int8 outputs ``(samples, *output_shape)``, bit-exact with
        ``model.golden(x_q)``. Inputs go in batches of ``compiled.batch`` (the last one padded
        with the input zero point); counters are in :attr:`last`. ``progress``, if given, is
        called as ``progress(done_samples, total_samples)`` after each program run."""
        acc, cp = self.acc, self.compiled
        x = np.asarray(x_q)
        shape = tuple(self.model.input_shape)
        if x.dtype.kind not in "iu":
            raise TypeError(f"x_q must be an int8-valued integer array, not {x.dtype}")
        if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
            raise ValueError(f"x_q must have shape (samples, {', '.join(map(str, shape))}), "
                             f"not {x.shape}")
        if x.size and (x.min() < -128 or x.max() > 127):
            raise ValueError("x_q values must be in [-128, 127]")
        if getattr(acc, "_program_owner", None) is not self:
            self.load()
        B, n = cp.batch, x.shape[0]
        per_in = int(np.prod(shape))
        per_out = int(np.prod(cp.output_shape))
        out = np.empty((n, per_out), dtype=np.int8)
        nl = len(cp.layers)
        run = ModelRun(list(cp.names), [0] * nl, [0] * nl, [0] * nl, [0] * nl)
        bound = self._cycles_bound()
        t0 = time.perf_counter()

        def body():
            for lo in range(0, n, B):
                chunk = x[lo:lo + B].reshape(-1, per_in)
                k = chunk.shape[0]
                if k < B:
                    fill = np.full((B - k, per_in), getattr(self.model, "in_zero", 0))
                    chunk = np.concatenate([chunk, fill])
                for attempt in range(acc.retries + 1):
                    acc.write_buffer(Buffer.ACT, cp.input_base,
                                     chunk.astype(np.int8).tobytes())
                    if getattr(acc, "_program_owner", None) is not self:
                        self.load()           # an error made the driver forget the weights
                    try:
                        acc.run_program(nl, cycles=bound)
                        break
                    except NotRepeated:
                        if attempt == acc.retries:
                            raise
                        acc._wait_idle("RUN_PROGRAM")
                y = np.frombuffer(acc.read_buffer(Buffer.ACT, cp.output_base, cp.output_bytes),
                                  dtype=np.int8).reshape(B, per_out)
                out[lo:lo + k] = y[:k]
                for i, c in enumerate(acc.layer_counters(nl)):
                    run.cycles[i] += c.cycles
                    run.core_cycles[i] += c.core_cycles
                    run.busy[i] += c.busy
                    run.macs[i] += c.macs
                run.program_runs += 1
                if progress is not None:
                    progress(lo + k, n)
        acc._measured(body)
        run.samples = n
        run.seconds = time.perf_counter() - t0
        run.stats = acc.last
        for s in (acc.last, acc.total):
            s.cycles += run.total_cycles
            s.macs += sum(run.macs)
        self.last = run
        return out.reshape((n,) + tuple(cp.output_shape))

    def forward(self, x) -> np.ndarray:
        """Float inputs -> quantize (model's input scale) -> :meth:`run` -> dequantized floats."""
        m = self.model
        return m.dequantize_output(self.run(m.quantize_input(x)))
