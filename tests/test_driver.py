"""sw.driver against a fake device: a Transport that answers sw.protocol frames in-process.

The fake keeps the three buffers in the core's host layout (sw.layout), checks shapes the
way the core does (BAD_SHAPE) and computes RUN with sw.numerics.mpgemm, so the driver's
tiling, chunking and layout are checked end to end without a simulator.
"""

import struct
import time

import numpy as np
import pytest

from sw import protocol as P
from sw.driver import Accelerator, DeviceMismatch, DeviceTimeout
from sw.numerics import OutMode, Requant, mpgemm, to_dyadic
from sw.protocol import Buffer, DeviceError, DeviceInfo, ErrorCode, Opcode
from sw.transport import Transport, TransportTimeout

HASH = 0x1234ABCD


class FakeDevice(Transport):
    """An mpGEMM device behind a byte pipe. Knobs: ``garbage`` (bytes sent before every
    reply), ``silent`` (never answer), ``fail`` (opcode -> list of error codes to answer
    with, one per request, before executing normally), ``stray`` (replies sent once before
    the next reply)."""

    def __init__(self, *, rows=4, cols=4, a_depth=64, w_depth=64, out_words=64, max_k=None,
                 out_modes=0b11, version=P.PROTOCOL_VERSION, config_hash=HASH):
        super().__init__()
        self.timeout = 1.0
        self.info = DeviceInfo(version, config_hash, rows, cols, rows * a_depth,
                               cols * w_depth, 4 * out_words, out_words,
                               min(a_depth, w_depth) if max_k is None else max_k, out_modes)
        self.bufs = {Buffer.A: bytearray(self.info.a_bytes),
                     Buffer.W: bytearray(self.info.w_bytes),
                     Buffer.OUT: bytearray(self.info.out_bytes)}
        self.rx = P.FrameParser()
        self.tx = bytearray()
        self.log: list[P.Frame] = []
        self.layers: list[P.LayerDescriptor] = []
        self.layer = None
        self.cnt = P.Counters(0, 0, 0, 0)
        self.garbage = b""
        self.silent = False
        self.fail: dict[int, list[int]] = {}
        self.stray = b""
        self.closed = False

    # -- Transport -------------------------------------------------------------------------
    def write(self, data):
        assert not self.closed
        for frame in self.rx.feed(data):
            self.log.append(frame)
            if self.silent:
                continue
            reply = self.handle(frame)
            self.tx += self.stray + self.garbage + reply
            self.stray = b""

    def read(self, n, timeout):
        if not self.tx:
            time.sleep(min(timeout, 0.002))
            return b""
        out = bytes(self.tx[:n])
        del self.tx[:n]
        return out

    def close(self):
        self.closed = True

    # -- device ----------------------------------------------------------------------------
    def ops(self, op):
        return [f for f in self.log if f.opcode == op]

    def handle(self, f: P.Frame) -> bytes:
        op, pl = f.opcode, f.payload
        if self.fail.get(op):
            return P.pack_reply(op, self.fail[op].pop(0))
        ok = lambda data=b"": P.pack_reply(op, ErrorCode.OK, data)  # noqa: E731
        err = lambda code: P.pack_reply(op, code)  # noqa: E731
        if op == Opcode.IDENTIFY:
            return ok(self.info.pack())
        if op == Opcode.WRITE:
            if not P.WRITE_HEADER < len(pl) <= P.MAX_PAYLOAD:
                return err(ErrorCode.BAD_LENGTH)
            buf, addr = struct.unpack_from("<BI", pl)
            data = pl[P.WRITE_HEADER:]
            if buf > 2 or addr + len(data) > len(self.bufs[Buffer(buf)]):
                return err(ErrorCode.BAD_ADDRESS)
            self.bufs[Buffer(buf)][addr:addr + len(data)] = data
            return ok()
        if op == Opcode.READ:
            if len(pl) != P.READ_PAYLOAD:
                return err(ErrorCode.BAD_LENGTH)
            buf, addr, count = struct.unpack("<BIH", pl)
            if not 1 <= count <= P.MAX_DATA:
                return err(ErrorCode.BAD_LENGTH)
            if buf > 2 or addr + count > len(self.bufs[Buffer(buf)]):
                return err(ErrorCode.BAD_ADDRESS)
            return ok(bytes(self.bufs[Buffer(buf)][addr:addr + count]))
        if op == Opcode.LOAD_LAYER:
            if len(pl) != P.LAYER_PAYLOAD:
                return err(ErrorCode.BAD_LENGTH)
            d = P.LayerDescriptor.unpack(pl)
            if d.out_mode not in (0, 1) or d.shift > 63 or d.relu > 1:
                return err(ErrorCode.BAD_PARAM)
            self.layer = d
            self.layers.append(d)
            return ok()
        if op == Opcode.RUN:
            if self.layer is None:
                return err(ErrorCode.NOT_LOADED)
            return P.pack_reply(op, self.run(self.layer))
        if op == Opcode.COUNTERS:
            return ok(self.cnt.pack())
        if op == Opcode.STATUS:
            return ok(P.Status(False, self.layer is not None, 0).pack())
        if op == Opcode.RESET:
            self.layer = None
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
        busy = mt * nt * K
        self.cnt = P.Counters(busy + 10, busy, 0, M * N * K)
        return ErrorCode.OK


def rand(rng, *shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def requant_for(k, zp=3, relu=False):
    mult, shift = to_dyadic(127 / (3 * 5500 * np.sqrt(k)))
    return Requant(mult, shift, zp, relu)


def open_acc(dev, **kw):
    kw.setdefault("resync_quiet", 0.005)
    return Accelerator(dev, **kw)


# -- identify ------------------------------------------------------------------------------

def test_identify_and_expect():
    dev = FakeDevice()
    acc = open_acc(dev, expect={"rows": 4, "cols": 4, "config_hash": HASH})
    assert acc.info == dev.info
    assert acc.identify() == dev.info
    assert open_acc(FakeDevice(), expect=dev.info).info == dev.info


@pytest.mark.parametrize("expect, words", [
    ({"rows": 8}, ["rows: expected 8, device has 4"]),
    ({"cols": 2, "config_hash": 0xDEADBEEF}, ["cols", "0xdeadbeef", "0x1234abcd"]),
])
def test_mismatch_refused(expect, words):
    dev = FakeDevice()
    with pytest.raises(DeviceMismatch) as e:
        open_acc(dev, expect=expect)
    for w in words:
        assert w in str(e.value)
    assert dev.closed                                # the refused device is released


def test_mismatch_whole_info_and_version():
    other = FakeDevice(rows=8).info
    with pytest.raises(DeviceMismatch, match="rows"):
        open_acc(FakeDevice(), expect=other)
    with pytest.raises(DeviceMismatch, match="protocol version 2"):
        open_acc(FakeDevice(version=2))
    with pytest.raises(ValueError, match="unknown expect field"):
        open_acc(FakeDevice(), expect={"row": 4})
    with pytest.raises(TypeError):
        open_acc(FakeDevice(), expect=[4, 4])


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
                                      (Opcode.READ, ErrorCode.BUSY),
                                      (Opcode.RUN, ErrorCode.NOT_LOADED)])
def test_device_error_codes(op, code):
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.fail[op] = [code]
    with pytest.raises(DeviceError) as e:
        acc.gemm(rand(np.random.default_rng(5), 3, 4), rand(np.random.default_rng(6), 4, 3))
    assert e.value.code == code and code.name in str(e.value)
    # the driver forgets what the buffers hold and recovers on the next call
    a, w = rand(np.random.default_rng(7), 3, 4), rand(np.random.default_rng(8), 4, 3)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)


def test_bad_crc_reply_retried():
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.fail[Opcode.WRITE] = [ErrorCode.BAD_CRC, ErrorCode.TIMEOUT]
    a, w = rand(np.random.default_rng(9), 4, 8), rand(np.random.default_rng(10), 8, 4)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 2
    acc0 = open_acc(FakeDevice(), retries=0)
    acc0.transport.fail[Opcode.WRITE] = [ErrorCode.BAD_CRC]
    with pytest.raises(DeviceError, match="BAD_CRC"):
        acc0.gemm(a, w)


def test_timeout_on_open_is_quick_and_clear():
    dev = FakeDevice()
    dev.silent = True
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no reply to IDENTIFY within 0.05 s") as e:
        open_acc(dev, timeout=0.05, retries=1)
    assert time.monotonic() - t0 < 1.0
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, TransportTimeout)
    assert dev.closed and len(dev.log) == 2             # sent twice (one retry)


def test_timeout_mid_gemm():
    dev = FakeDevice()
    acc = open_acc(dev, timeout=0.05, retries=0)
    dev.silent = True
    with pytest.raises(DeviceTimeout, match="WRITE"):
        acc.gemm(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8))


def test_garbage_before_replies():
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
    acc = open_acc(dev, timeout=0.1)
    dev.stray = bytes([P.SYNC, 0x13, 0xA5, 0x01])
    a, w = rand(np.random.default_rng(16), 4, 4), rand(np.random.default_rng(17), 4, 4)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 1


def test_stray_reply_resynchronizes():
    dev = FakeDevice()
    acc = open_acc(dev)
    dev.stray = P.pack_reply(Opcode.STATUS, ErrorCode.OK, b"\x00\x00")
    a, w = rand(np.random.default_rng(12), 4, 4), rand(np.random.default_rng(13), 4, 4)
    np.testing.assert_array_equal(acc.gemm(a, w), mpgemm(a, w), strict=True)
    assert acc.last.retries == 1


def test_counters_status_reset():
    dev = FakeDevice()
    acc = open_acc(dev)
    acc.gemm(np.ones((4, 8), np.int8), np.ones((8, 4), np.int8))
    c = acc.counters()
    assert c.macs == 4 * 8 * 4 and c.cycles >= c.busy
    assert acc.status().loaded
    acc.reset()
    assert not acc.status().loaded
    # after RESET the layer is loaded again by the next gemm
    np.testing.assert_array_equal(acc.gemm(np.ones((4, 8), np.int8), np.ones((8, 4), np.int8)),
                                  np.full((4, 4), 8, np.int32), strict=True)
    assert acc.total.runs == 2


def test_int8_only_device_requant_on_host_and_raw_refused():
    dev = FakeDevice(out_modes=0b10)
    acc = open_acc(dev)
    a, w = rand(np.random.default_rng(14), 3, 80), rand(np.random.default_rng(15), 80, 3)
    with pytest.raises(ValueError, match="only INT8"):
        acc.gemm(a, w)
    rq = requant_for(60)
    np.testing.assert_array_equal(acc.gemm(a[:, :60], w[:60], rq), mpgemm(a[:, :60], w[:60], rq),
                                  strict=True)


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
        assert "2 x 2 PEs" in text and "0x1234abcd" in text
    else:
        assert "bit-exact" in text and "efficiency" in text and "utilization" in text


def test_cli_mismatch_exit_code(monkeypatch, capsys):
    import sw.__main__ as cli
    monkeypatch.setattr(cli, "open_transport", lambda args: FakeDevice())
    assert cli.main(["info", "--expect-cols", "8"]) == 2
    assert "cols: expected 8, device has 4" in capsys.readouterr().err
