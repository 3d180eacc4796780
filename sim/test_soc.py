"""End to end: the real driver through SimTransport (Verilator model of the SoC) and through
the real SerialTransport on a pseudo-terminal; every weight format x group size, per-channel
requantization and quantized linear layers (sw.quant) bit-exact; a fuzz of random /
corrupted frames after which a correct GEMM still comes back bit-exact; fault campaigns
(random bit flips in both directions during real GEMMs: every GEMM exact or raising, never
wrong); BUSY waited out; RESET stopping a GEMM; the same with randomised initial register
values. The SoC is the 12F-sized MixPE one (the 85F's kind, quickest to build)."""

import numpy as np
import pytest

from sw import layout, numerics, protocol as P
from sw.numerics import Requant

DEVICE = "12F"     # the smallest core: quickest to build; the gateware is the same generator
PE = "mixpe"       # the 85F's PE kind (the 12F's default INT8-DSP SoC runs in test_uart_soc)


@pytest.fixture(scope="module")
def transport():
    from sw.transport import SimTransport
    t = SimTransport(DEVICE, pe=PE)
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
    core = sim_soc(DEVICE, PE).core
    info = acc.identify()
    assert (info.rows, info.cols, info.max_k) == (core.rows, core.cols, core.max_k)
    assert info.config_hash == core.config_hash()
    assert (info.timeout_cycles, info.watchdog_cycles, info.tile_period, info.pe_kind,
            info.clock_hz) == (SIM_TIMEOUT, core.WATCHDOG, core.MIN_PERIOD,
                               core.PE_KIND, DEFAULT_FREQ_MHZ[DEVICE] * 1e6)
    assert info.pe == P.PeKind.MIXPE
    assert [f for f in numerics.WeightFormat if info.supports_format(f)] == list(core.formats)
    assert all(info.supports_group(g) for g in (0, 32, 64, 128))


def _weights(rng, fmt, shape):
    lo, hi = numerics.weight_range(fmt)
    if fmt is numerics.WeightFormat.POW2:
        return rng.choice([s * (1 << e) for s in (1, -1) for e in range(8)], size=shape)
    return rng.integers(lo, hi + 1, size=shape)


def test_every_format_and_group_bit_exact(acc):
    """Every weight format x {no groups, G = 32, 64, 128} on ragged shapes (K not a multiple of
    the group or the packing, M and N not multiples of the array, tiled by the driver),
    per-channel requantization with INT32 bias, the scalar form, and RAW32."""
    from sw.numerics import ChannelRequant, GroupQuant, WeightFormat
    rng = np.random.default_rng(31)
    for fmt in WeightFormat:
        for g in (None, 32, 64, 128):
            M, K, N = int(rng.integers(1, 20)), int(rng.integers(1, 300)), int(rng.integers(1, 20))
            a = _rand(rng, (M, K))
            q = _weights(rng, fmt, (K, N))
            gq = None
            if g:
                ng = -(-K // g)
                gq = GroupQuant(g, rng.integers(0, 1 << 16, (ng, N)), rng.integers(-128, 128, (ng, N)))
            acc_max = int(np.abs(numerics.group_dequant(a, q, gq) if gq else a @ q).max())
            shift = min(63, acc_max.bit_length() + 9)
            crq = ChannelRequant(rng.integers(1, 1 << 16, N), np.full(N, shift),
                                 rng.integers(-(1 << 31), 1 << 31, N) >> 8, int(rng.integers(-9, 9)),
                                 bool(rng.integers(2)))
            got = acc.mixgemm(a, q, fmt=fmt, group=gq, requant=crq)
            np.testing.assert_array_equal(got, numerics.mixgemm(a, q, fmt=fmt, group=gq, requant=crq),
                                          strict=True, err_msg=f"{fmt.name} G={g} {M}x{K}x{N}")
            if g is None:
                rq = Requant(40000, shift, 5, False)
                np.testing.assert_array_equal(acc.mixgemm(a, q, fmt=fmt, requant=rq),
                                              numerics.mixgemm(a, q, fmt=fmt, requant=rq), strict=True)
                np.testing.assert_array_equal(acc.mixgemm(a, q, fmt=fmt),
                                              numerics.mixgemm(a, q, fmt=fmt), strict=True)


def test_quantized_linear_layers(acc):
    """sw.quant.quantize_linear layers (float weights and bias) in every format, per channel
    and per group: the device's INT8 output equals the layer's golden model."""
    from sw.quant import quantize_linear
    from sw.numerics import WeightFormat
    rng = np.random.default_rng(32)
    K, N = 70, 10
    w = rng.normal(0, 0.2, (K, N))
    bias = rng.normal(0, 0.5, N)
    x = rng.normal(0, 1, (6, K))
    for fmt in WeightFormat:
        for g in (None, 32):
            layer = quantize_linear(w, bias, fmt=fmt, group=g, x_scale=4 / 127, y_scale=8 / 127,
                                    relu=g is None)
            xq = rng.integers(-128, 128, (6, K)).astype(np.int8)
            np.testing.assert_array_equal(acc.linear(xq, layer), layer.golden(xq), strict=True)
            np.testing.assert_array_equal(acc.linear(x, layer), layer.forward(x), strict=True)


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
    # a long GEMM: the most feed steps (tiles x K) the buffers hold, for an INT8 output
    R, C = info.rows, info.cols

    def steps(tm, tn, k):
        fits = (tm * -(-k // 4) * 4 * R <= info.a_bytes and tn * k * C <= info.w_bytes
                and tm * tn * C <= 4 * info.out_words and k <= info.max_k)
        return tm * tn * max(k, info.tile_period) if fits else 0
    pow2 = [1 << i for i in range(13)]
    tm, tn, K = max(((tm, tn, k) for tm in pow2 for tn in pow2 for k in pow2),
                    key=lambda t: steps(*t))
    M, N = tm * R, tn * C
    assert steps(tm, tn, K) >= 10_000, (tm, tn, K)
    a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
    big = Requant(1000, 16)
    for stop in (False, True):
        acc.write_buffer(P.Buffer.A, 0, layout.act_image(a, info.rows))
        acc.write_buffer(P.Buffer.W, 0, layout.weight_image(
            numerics.pack_weights(w, numerics.WeightFormat.INT8), info.cols))
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
    r = fault_campaign(SimTransport(DEVICE, pe=PE), gemms=gemms, seed=21)
    _campaign_ok(r, gemms)
    assert r["recovery_max_s"] < 3 * r["link_timeout_s"] + 0.05, r


def test_serial_path_over_pty():
    """The real SerialTransport (pyserial) through a pseudo-terminal to the simulated SoC:
    IDENTIFY, GEMMs, and a fault campaign."""
    from hw.bench import fault_campaign, pty_sim_serial
    from sw.driver import Accelerator
    with Accelerator(pty_sim_serial(DEVICE, PE)) as acc:
        assert acc.info.version == P.PROTOCOL_VERSION
        rng = np.random.default_rng(15)
        for M, K, N, rq in ((7, 33, 5, None), (20, 300, 9, Requant(50000, 26, 2, True))):
            a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
            np.testing.assert_array_equal(acc.gemm(a, w, requant=rq),
                                          numerics.mpgemm(a, w, rq), strict=True)
    gemms = 100
    _campaign_ok(fault_campaign(pty_sim_serial(DEVICE, PE), gemms=gemms, seed=22), gemms)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_initial_state(seed):
    """Registers without a reset start random (Verilator --x-initial unique, per seed):
    identify, GEMMs raw and requantized, still bit-exact."""
    from sw.driver import Accelerator
    from sw.transport import SimTransport
    rng = np.random.default_rng(100 + seed)
    with Accelerator(SimTransport(DEVICE, x_init="unique", seed=seed, pe=PE)) as acc:
        for M, K, N, rq in ((1, 1, 1, None), (9, 40, 7, Requant(40000, 22, -3)),
                            (17, 120, 13, None), (6, 5, 18, Requant(65535, 40, 0, True))):
            a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
            np.testing.assert_array_equal(acc.gemm(a, w, requant=rq),
                                          numerics.mpgemm(a, w, rq), strict=True)
