"""End to end: the real driver through SimTransport (Verilator model of the SoC) and through
the real SerialTransport on a pseudo-terminal; a fuzz of random / corrupted frames after which
a correct GEMM still comes back bit-exact; fault campaigns (random bit flips in both
directions during real GEMMs: every GEMM exact or raising, never wrong); BUSY waited out;
RESET stopping a GEMM; the same with randomised initial register values."""

import numpy as np
import pytest

from sw import layout, numerics, protocol as P
from sw.numerics import Requant

DEVICE = "12F"     # the smallest core: quickest to build; the gateware is the same generator


@pytest.fixture(scope="module")
def transport():
    from sw.transport import SimTransport
    t = SimTransport(DEVICE)
    yield t
    t.close()


@pytest.fixture(scope="module")
def acc(transport):
    from sw.driver import Accelerator
    return Accelerator(transport)


def _rand(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def test_identify_matches_core(acc):
    from hw.sizes import DEFAULT_FREQ_MHZ
    from hw.soc.simbuild import SIM_TIMEOUT, sim_soc
    core = sim_soc(DEVICE).core
    info = acc.identify()
    assert (info.rows, info.cols, info.max_k) == (core.rows, core.cols, core.max_k)
    assert info.config_hash == core.config_hash()
    assert (info.timeout_cycles, info.watchdog_cycles, info.tile_period, info.pe_kind,
            info.clock_hz) == (SIM_TIMEOUT, core.WATCHDOG, core.TILE_PERIOD_MIN,
                               core.PE_KIND, DEFAULT_FREQ_MHZ[DEVICE] * 1e6)


def test_random_shapes_bit_exact(acc):
    rng = np.random.default_rng(11)
    shapes = [(1, 1, 1), (5, 3, 7), (17, 64, 9), (33, 200, 40), (70, 1500, 5)]  # last: K chunks
    for i, (M, K, N) in enumerate(shapes):
        a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
        rq = None if i % 2 else Requant(*numerics.to_dyadic(1 / (K * 300)), zero_point=int(rng.integers(-5, 5)))
        got = acc.gemm(a, w, requant=rq)
        np.testing.assert_array_equal(got, numerics.mpgemm(a, w, rq), strict=True)


def test_extremes(acc):
    K = acc.identify().max_k
    a = np.full((4, K), -128, dtype=np.int8)
    w = np.full((K, 4), -128, dtype=np.int8)
    np.testing.assert_array_equal(acc.gemm(a, w), numerics.mpgemm(a, w), strict=True)


def test_fuzz_then_gemm(transport, acc):
    """10,000 random or corrupted frames; every reply is a well-formed frame; then a GEMM."""
    rng = np.random.default_rng(12)
    good = [P.identify(), P.status(), P.counters(), P.read(P.Buffer.A, 0, 16),
            P.write(P.Buffer.W, 8, bytes(range(32))), P.reset(), P.run()]
    sent = 0
    replies = 0
    parser = P.FrameParser()
    while sent < 10_000:
        batch = bytearray()
        for _ in range(250):
            kind = rng.integers(0, 5)
            frame = bytearray(good[rng.integers(0, len(good))])
            if kind == 0:      # flip a random bit
                i = int(rng.integers(0, len(frame)))
                frame[i] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:    # random bytes, often starting with SYNC
                frame = bytearray(rng.integers(0, 256, int(rng.integers(1, 24))).astype(np.uint8).tobytes())
                if rng.integers(0, 2):
                    frame[0] = P.SYNC
            elif kind == 2:    # unknown opcode with a correct CRC
                frame = bytearray(P.pack_frame(int(rng.integers(0x09, 0x80)), b"\x00" * int(rng.integers(0, 8))))
            elif kind == 3:    # garbage in front of a good frame
                frame = bytearray(rng.integers(0, 256, 5).astype(np.uint8).tobytes()) + frame
            batch += frame
            sent += 1
        transport.write(bytes(batch))
        # let the device work through the batch (and time out on a truncated tail)
        while True:
            data = transport.read(1 << 16, 0.15)
            if not data:
                break
            frames = parser.feed(data)
            replies += len(frames)
            for f in frames:
                assert f.is_reply, f
        assert parser.pending == 0, "device sent a partial frame"
        assert parser.skipped == 0 and parser.bad_frames == 0, "device sent malformed bytes"
    assert replies > 1000
    transport.drain()
    rng = np.random.default_rng(13)
    a, w = _rand(rng, (9, 50)), _rand(rng, (50, 11))
    rq = Requant(40000, 20, 3, True)
    acc.reset()
    np.testing.assert_array_equal(acc.gemm(a, w, requant=rq), numerics.mpgemm(a, w, rq), strict=True)


def test_busy_waited_out_and_reset_stops_a_gemm(acc):
    """A request that meets a running GEMM is sent again once the core is idle (no error);
    RESET stops a running GEMM, after which everything works."""
    rng = np.random.default_rng(14)
    info = acc.identify()
    # a long GEMM: as many tiles as the INT8 output holds, K twice the tile period
    K = 2 * info.tile_period
    M = N = int((4 * info.out_words) ** 0.5)
    assert M * K <= info.a_bytes and K * N <= info.w_bytes
    a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
    big = Requant(1000, 16)
    for stop in (False, True):
        acc.write_buffer(P.Buffer.A, 0, layout.a_image(a, info.rows))
        acc.write_buffer(P.Buffer.W, 0, layout.w_image(w, info.cols))
        acc.load_layer(P.LayerDescriptor.from_requant(M, K, N, numerics.OutMode.INT8, big))
        acc._call(lambda seq: P.run(wait=False, seq=seq), P.Opcode.RUN)
        assert acc.status().busy
        if stop:
            acc.reset()
            st = acc.status()
            assert (st.busy, st.loaded, st.last_error) == (False, False, P.ErrorCode.OK), st
            assert acc.counters().busy < -(-M // info.rows) * -(-N // info.cols) * K
        # the next GEMM's first request meets a busy core (stop=False) or not: exact either way
        a2, w2 = _rand(rng, (5, 30)), _rand(rng, (30, 6))
        rq = Requant(30000, 18, -4)
        np.testing.assert_array_equal(acc.gemm(a2, w2, requant=rq),
                                      numerics.mpgemm(a2, w2, rq), strict=True)


def _campaign_ok(r, gemms):
    assert r["wrong"] == 0, r
    assert r["tx_faults"] > gemms // 10 and r["rx_faults"] > gemms // 10, r
    assert r["exact"] >= 0.95 * gemms, r
    assert r["exact"] + r["raised"] == gemms, r


def test_fault_campaign_sim():
    """Bit flips in the frames sent and received during 500 real GEMMs (raw and requant):
    each GEMM is bit-exact or raises; recovery stays near the device's timeout."""
    from hw.bench import fault_campaign
    from sw.transport import SimTransport
    gemms = 500             # `python -m hw.bench faults` runs thousands (docs/results.md)
    r = fault_campaign(SimTransport(DEVICE), gemms=gemms, seed=21)
    _campaign_ok(r, gemms)
    assert r["recovery_max_s"] < 3 * r["link_timeout_s"] + 0.05, r


def test_serial_path_over_pty():
    """The real SerialTransport (pyserial) through a pseudo-terminal to the simulated SoC:
    IDENTIFY, GEMMs, and a fault campaign."""
    from hw.bench import fault_campaign, pty_sim_serial
    from sw.driver import Accelerator
    with Accelerator(pty_sim_serial(DEVICE)) as acc:
        assert acc.info.version == P.PROTOCOL_VERSION
        rng = np.random.default_rng(15)
        for M, K, N, rq in ((7, 33, 5, None), (20, 300, 9, Requant(50000, 26, 2, True))):
            a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
            np.testing.assert_array_equal(acc.gemm(a, w, requant=rq),
                                          numerics.mpgemm(a, w, rq), strict=True)
    gemms = 100
    _campaign_ok(fault_campaign(pty_sim_serial(DEVICE), gemms=gemms, seed=22), gemms)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_initial_state(seed):
    """Registers without a reset start random (Verilator --x-initial unique, per seed):
    identify, GEMMs raw and requantized, still bit-exact."""
    from sw.driver import Accelerator
    from sw.transport import SimTransport
    rng = np.random.default_rng(100 + seed)
    with Accelerator(SimTransport(DEVICE, x_init="unique", seed=seed)) as acc:
        for M, K, N, rq in ((1, 1, 1, None), (9, 40, 7, Requant(40000, 22, -3)),
                            (17, 120, 13, None), (6, 5, 18, Requant(65535, 40, 0, True))):
            a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
            np.testing.assert_array_equal(acc.gemm(a, w, requant=rq),
                                          numerics.mpgemm(a, w, rq), strict=True)
