"""sw.driver against a fake device: a Transport that answers sw.protocol (version 2) frames
in-process.

The fake decodes the host's bytes one at a time the way ``hw.soc.link`` does (hunt for
SYNC, LENGTH 0 or above MAX_PAYLOAD answered BAD_LENGTH at once, BAD_CRC for a damaged
frame, TIMEOUT for a frame left incomplete longer than the inter-byte timeout, every reply
tagged with the request's SEQ), stages WRITE data and commits it only after the CRC, keeps
the three buffers in the core's host layout (sw.layout), checks shapes the way the core does
(BAD_SHAPE) and computes RUN with sw.numerics.mpgemm, so the driver's tiling, chunking,
layout and recovery are checked end to end without a simulator. Fault injection: hooks on
the bytes in either direction, dropped, held (late) and error replies, a busy core.

Time: the fake reports board-like cycle numbers (50 MHz, 2**22 cycles inter-byte timeout)
but its ``seconds`` runs the device clock ``TIME_SCALE`` times faster in wall time, so the
link timeout the driver waits out before a retry is a few milliseconds.
"""

import struct
import time
from collections import Counter

import numpy as np
import pytest

from sw import protocol as P
from sw.driver import Accelerator, DeviceMismatch, DeviceTimeout
from sw.numerics import OutMode, Requant, mpgemm, to_dyadic
from sw import layout
from sw.protocol import Buffer, DeviceError, DeviceInfo, ErrorCode, Opcode
from sw.transport import FaultInjector, Transport, TransportTimeout

HASH = 0x1234ABCD
CLOCK_HZ = 50_000_000
TIMEOUT_CYCLES = 1 << 22            # hw.soc.link.Link.DEFAULT_TIMEOUT (84 ms at 50 MHz)
TIME_SCALE = 0.04                   # fake wall seconds per device second: link timeout 3.4 ms


class FakeDevice(Transport):
    """An mpGEMM device (protocol 2) behind a byte pipe.

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

    def __init__(self, *, rows=4, cols=4, a_depth=64, w_depth=64, out_words=64, max_k=None,
                 out_modes=0b11, version=P.PROTOCOL_VERSION, config_hash=HASH,
                 max_data=P.MAX_DATA, timeout_cycles=TIMEOUT_CYCLES, staged_write=True,
                 latency=0.02, info_extra=b""):
        super().__init__()
        self.timeout = 1.0
        max_k = min(a_depth, w_depth) if max_k is None else max_k
        tile_period = rows * cols + rows + cols + 8       # TILE_PERIOD_MIN, PE latency 4
        mt, nt = a_depth // max(1, max_k), w_depth // max(1, max_k)
        watchdog = 2 * (max(1, mt * nt) * max(max_k, tile_period) + 2 * tile_period + 64)
        self.info = DeviceInfo(version, config_hash, rows, cols, rows * a_depth,
                               cols * w_depth, 4 * out_words, out_words, max_k, out_modes,
                               max_data, CLOCK_HZ, timeout_cycles, watchdog, tile_period,
                               P.PeKind.INT8_DSP)
        self.info_extra = info_extra
        self.staged_write = staged_write
        self.latency = latency
        self.link_timeout = self.seconds(timeout_cycles, CLOCK_HZ)
        self.bufs = {Buffer.A: bytearray(self.info.a_bytes),
                     Buffer.W: bytearray(self.info.w_bytes),
                     Buffer.OUT: bytearray(self.info.out_bytes)}
        self._rx = bytearray()                # frame being received (starts with SYNC)
        self._last_rx = 0.0
        self.tx = bytearray()
        self.log: list[P.Frame] = []          # frames with a good CRC, in arrival order
        self.replies: list[tuple[int, int, int]] = []   # (opcode, seq, status) sent
        self.layers: list[P.LayerDescriptor] = []
        self.layer = None
        self.last_error = ErrorCode.OK
        self.link_errors = 0
        self.cnt = P.Counters(0, 0, 0, 0)
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

    def handle(self, f: P.Frame) -> bytes:
        op, pl = f.opcode, f.payload
        ok = lambda data=b"": P.pack_reply(op, ErrorCode.OK, data, seq=f.seq)  # noqa: E731
        err = lambda code: P.pack_reply(op, code, seq=f.seq)  # noqa: E731
        if self.fail.get(op):
            return err(self.fail[op].pop(0))
        busy = self.busy_polls > 0
        if op == Opcode.IDENTIFY:
            return err(ErrorCode.BAD_LENGTH) if pl else ok(self.info.pack() + self.info_extra)
        if op == Opcode.WRITE:
            if len(pl) <= P.WRITE_HEADER:
                return err(ErrorCode.BAD_LENGTH)
            buf, addr = struct.unpack_from("<BI", pl)
            data = pl[P.WRITE_HEADER:]
            if buf > 2 or addr + len(data) > len(self.bufs[Buffer(buf)]):
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
            if buf > 2 or addr + count > len(self.bufs[Buffer(buf)]):
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
            if d.out_mode not in (0, 1) or d.shift > 63 or d.relu > 1:
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

    def run(self, d: P.LayerDescriptor) -> int:
        """The core: shape check as in hw/systolic/core.py, then the golden model."""
        i = self.info
        R, C = i.rows, i.cols
        M, K, N = d.m, d.k, d.n
        mt, nt = -(-M // R), -(-N // C)
        cap = i.out_words if d.out_mode == OutMode.RAW32 else 4 * i.out_words
        if (0 in (M, K, N) or K > i.max_k or mt * K > i.a_bytes // R
                or nt * K > i.w_bytes // C or M * N > cap):
            return ErrorCode.BAD_SHAPE
        m, k = np.meshgrid(np.arange(M), np.arange(K), indexing="ij")
        a_idx = ((m // R) * K + k) * R + m % R
        k, n = np.meshgrid(np.arange(K), np.arange(N), indexing="ij")
        w_idx = ((n // C) * K + k) * C + n % C
        a = np.frombuffer(bytes(self.bufs[Buffer.A]), np.int8)[a_idx]
        w = np.frombuffer(bytes(self.bufs[Buffer.W]), np.int8)[w_idx]
        if d.out_mode == OutMode.RAW32:
            data = mpgemm(a, w).astype("<i4").tobytes()
        else:
            rq = Requant(d.mult, d.shift, d.zp, bool(d.relu))
            data = mpgemm(a, w, rq).tobytes()
        self.bufs[Buffer.OUT][:len(data)] = data
        busy = mt * nt * max(K, i.tile_period)
        self.cnt = P.Counters(busy + 10, busy, 0, M * N * K)
        return ErrorCode.OK


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
def test_protocol_version_3_refused(extra):
    # a newer bitstream (maybe with a longer DeviceInfo): refused on the version byte
    dev = FakeDevice(version=3, info_extra=extra)
    with pytest.raises(DeviceMismatch, match="protocol version 3, this driver version 2"):
        open_acc(dev)
    assert dev.closed


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
        assert d.k <= 16 and d.m * d.n <= (32 if d.out_mode == OutMode.RAW32 else 128)
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
    dev = FakeDevice(rows=4, cols=4, a_depth=16, w_depth=16, out_words=64)
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


# -- protocol 2: damaged frames, lost and late replies, a busy core ------------------------

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
    image = layout.w_image(w, 4)
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


@pytest.mark.parametrize("byte, bit", [(5, 1), (9, 0), (16, 7), (2, 4)])
def test_corrupted_load_layer(byte, bit):
    # body bytes 5.. are the descriptor (M, K, N, mode, ...); byte 2 bit 4 makes LENGTH
    # 13 -> 29 so the device waits for the rest and answers TIMEOUT
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
    wrong = layout.decode_out(late[0], 4, 8, OutMode.RAW32)
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
    """300 small GEMMs over a link that damages 4 % of the frames in each direction (1-3
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
        a, w = rand(rng, m, k), rand(rng, k, n)
        rq = requant_for(k) if i % 2 else None
        want = mpgemm(a, w, rq)
        try:
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


# -- CLI -----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["info"], ["gemm", "--m", "9", "--k", "40", "--n", "7"],
                                  ["gemm", "--m", "5", "--k", "70", "--n", "3", "--requant"]])
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
        assert "2 x 2 PEs" in text and "0x1234abcd" in text and "protocol version  2" in text
    else:
        assert "bit-exact" in text and "efficiency" in text and "utilization" in text


def test_cli_mismatch_exit_code(monkeypatch, capsys):
    import sw.__main__ as cli
    monkeypatch.setattr(cli, "open_transport", lambda args: FakeDevice())
    assert cli.main(["info", "--expect-cols", "8"]) == 2
    assert "cols: expected 8, device has 4" in capsys.readouterr().err


def test_cli_v1_device_exit_code(monkeypatch, capsys):
    import sw.__main__ as cli
    monkeypatch.setattr(cli, "open_transport", lambda args: V1Device())
    assert cli.main(["info"]) == 2
    assert "protocol version 1" in capsys.readouterr().err
