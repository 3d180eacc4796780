"""End to end on the sparse DSP engine: the real driver through SimTransport (the Verilator
model of the 45F-sized SoC with the ``dsp4`` engine: 8 chains of 4 MULT18X18D beside the
4x8 MixPE array). IDENTIFY reports the engine; every pattern it runs x INT8 / INT4 / ternary
weights on ragged shapes, per-channel and scalar requantization and RAW32, quantized sparse
linear layers (``sw.quant.quantize_linear(..., sparse=...)``), array layers in between
(shared buffers and epilogue), bit-exact against ``sw.numerics``; patterns and formats the
engine lacks are refused by the driver before anything is sent and, sent raw, answered
BAD_PARAM by the device, which keeps working."""

import numpy as np
import pytest

from sw import numerics, protocol as P
from sw.numerics import NMPattern, NMSparse, WeightFormat, Requant, weight_range

DEVICE, DSP = "45F", "dsp4"


@pytest.fixture(scope="module")
def transport():
    from sw.transport import SimTransport
    t = SimTransport(DEVICE, dsp=DSP)
    yield t
    t.close()


@pytest.fixture(scope="module")
def acc(transport):
    from sw.driver import Accelerator
    return Accelerator(transport)


def random_sparse(rng, pat, K, N, fmt):
    nb = K // pat.m
    idx = np.stack([np.stack([rng.permutation(pat.m)[:pat.n] for _ in range(N)], axis=1)
                    for _ in range(nb)]).reshape(nb * pat.n, N)
    lo, hi = weight_range(fmt)
    return NMSparse(n=pat.n, m=pat.m, values=rng.integers(lo, hi + 1, size=idx.shape),
                    idx=idx, fmt=fmt)


def test_identify_reports_the_engine(acc):
    from hw.soc.simbuild import sim_soc
    core = sim_soc(DEVICE, dsp=DSP).core
    info = acc.identify()
    assert (info.dsp_stages, info.dsp_chains, bool(info.dsp_packed)) == \
        (core.dsp_stages, core.dsp_chains, core.dsp_packed) == (4, 8, False)
    assert [p for p in NMPattern if info.dsp_patterns >> int(p) & 1] == list(core.dsp_patterns)
    assert info.dsp_bytes == core.dsp_bytes
    assert info.config_hash == core.config_hash()


def test_every_pattern_and_format_bit_exact(acc):
    rng = np.random.default_rng(40)
    info = acc.identify()
    for pat in [p for p in NMPattern if info.dsp_patterns >> int(p) & 1]:
        for fmt in (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.TERNARY):
            M = int(rng.integers(1, 3 * info.rows + 2))
            N = int(rng.integers(1, 3 * info.cols + 2))
            K = pat.m * int(rng.integers(1, 24))
            a = rng.integers(-128, 128, size=(M, K))
            sp = random_sparse(rng, pat, K, N, fmt)
            acc_ = numerics.sparse_gemm(a, sp)
            crq = numerics.ChannelRequant(rng.integers(1, 1 << 16, size=N),
                                          rng.integers(14, 24, size=N),
                                          rng.integers(-1 << 20, 1 << 20, size=N),
                                          int(rng.integers(-10, 11)), bool(rng.integers(2)))
            np.testing.assert_array_equal(acc.sparse_gemm(a, sp, requant=crq),
                                          numerics.requantize_channels(acc_, crq), strict=True,
                                          err_msg=f"{M}x{K}x{N} {pat.name} {fmt.name}")
        raw = acc.sparse_gemm(a, sp)
        np.testing.assert_array_equal(raw, acc_.astype(np.int32), strict=True)
        rq = Requant(1 << 15, 22, -3, True)
        np.testing.assert_array_equal(acc.sparse_gemm(a, sp, requant=rq),
                                      numerics.requantize(acc_, rq), strict=True)


def test_extremes(acc):
    """-128 activations against all-min / all-max weights at the largest K one run takes."""
    info = acc.identify()
    pat = NMPattern.NM1_4
    K = 512
    for v in (-128, 127):
        sp = NMSparse(n=1, m=4, values=np.full((K // 4, 9), v), idx=np.zeros((K // 4, 9), int))
        a = np.full((info.rows + 1, K), -128)
        np.testing.assert_array_equal(acc.sparse_gemm(a, sp),
                                      numerics.sparse_gemm(a, sp).astype(np.int32), strict=True)


def test_quantized_sparse_linear_layers(acc):
    """Float weights pruned 2:4 / 1:4, quantized per channel: ``linear`` on the device equals
    the layer's golden model, and dense layers run on the array in between."""
    from sw.quant import quantize_linear
    rng = np.random.default_rng(41)
    for nm, fmt in (((2, 4), WeightFormat.INT8), ((1, 4), WeightFormat.INT4),
                    ((2, 8), WeightFormat.TERNARY)):
        K, N, M = 64, 21, 9
        w = rng.normal(size=(K, N)) / 8
        layer = quantize_linear(w, rng.normal(size=N), fmt=fmt, sparse=nm, x_scale=0.05,
                                y_scale=0.1, relu=True)
        assert layer.sparse is not None and layer.sparse.pattern == numerics.nm_pattern(*nm)
        x = rng.integers(-128, 128, size=(M, K))
        np.testing.assert_array_equal(acc.linear(x, layer), layer.golden(x), strict=True)
        dense = quantize_linear(w, None, fmt=WeightFormat.INT8, x_scale=0.05, y_scale=0.1)
        np.testing.assert_array_equal(acc.linear(x, dense), dense.golden(x), strict=True)


def test_refused_before_sending_and_by_the_device(acc, transport):
    """The driver refuses what the engine lacks; the same descriptors sent raw get BAD_PARAM
    and the device keeps working."""
    rng = np.random.default_rng(42)
    a = rng.integers(-128, 128, size=(3, 16))
    sp8 = NMSparse(n=8, m=8, values=rng.integers(-128, 128, size=(16, 4)),
                   idx=np.tile(np.arange(8), 2)[:, None].repeat(4, axis=1))
    with pytest.raises(ValueError, match="DENSE8|8:8"):
        acc.sparse_gemm(a, sp8)                               # n = 8 does not divide L = 4
    good = P.LayerDescriptor(4, 16, 4, int(numerics.OutMode.RAW32), sparse=1 + int(NMPattern.NM2_4))
    bad = [P.LayerDescriptor(4, 16, 4, 1, sparse=1 + int(NMPattern.DENSE8)),
           P.LayerDescriptor(4, 16, 4, 1, sparse=7),
           P.LayerDescriptor(4, 16, 4, 1, fmt=int(WeightFormat.POW2), sparse=1 + int(NMPattern.NM2_4)),
           P.LayerDescriptor(4, 64, 4, 1, group=32, sparse=1 + int(NMPattern.NM2_4))]
    for d in bad:
        with pytest.raises(Exception) as e:
            acc.load_layer(d)
        assert "BAD_PARAM" in str(e.value), (d, e.value)
    acc.load_layer(good)
    sp = random_sparse(rng, NMPattern.NM2_4, 16, 5, WeightFormat.INT8)
    np.testing.assert_array_equal(acc.sparse_gemm(a, sp),
                                  numerics.sparse_gemm(a, sp).astype(np.int32), strict=True)
