"""End to end on the sparse DSP engine: the real driver through SimTransport (the Verilator
model of the 25F-sized SoC with the ``dsp4`` engine: 4 chains of 4 MULT18X18D beside the
4x4 INT8-DSP array; the quickest SoC model with the 4 row banks the engine's windows need,
though a real 25F lacks the MULT18X18D for both: the 45F takes the same engine). IDENTIFY reports the engine; every pattern it runs x INT8 / INT4 / ternary
weights on ragged shapes, per-channel and scalar requantization and RAW32, quantized sparse
linear layers (``sw.quant.quantize_linear(..., sparse=...)``), array layers in between
(shared buffers and epilogue), bit-exact against ``sw.numerics``; patterns and formats the
engine lacks are refused by the driver before anything is sent and, sent raw, answered
BAD_PARAM by the device, which keeps working."""

import numpy as np
import pytest

from sw import numerics, protocol as P
from sw.numerics import NMPattern, NMSparse, WeightFormat, Requant
from test_mixcore_dsp import random_sparse as _random_sparse

DEVICE, DSP = "25F", "dsp4"


@pytest.fixture(scope="module")
def transport(request):
    """SimTransport of the test module's ``DEVICE`` SoC with its ``DSP`` engine (also used
    by sim/test_dsp_soc_shared.py)."""
    from sw.transport import SimTransport
    t = SimTransport(request.module.DEVICE, dsp=request.module.DSP)
    yield t
    t.close()


@pytest.fixture(scope="module")
def acc(transport):
    from sw.driver import Accelerator
    return Accelerator(transport)


def random_sparse(rng, pat, K, N, fmt):
    """Random N:M weights, every column its own kept positions."""
    return _random_sparse(rng, pat, K, N, fmt, 1)


def test_identify_reports_the_engine(acc):
    from hw.soc.simbuild import sim_soc
    core = sim_soc(DEVICE, dsp=DSP).core
    info = acc.identify()
    assert (info.dsp_stages, info.dsp_chains, bool(info.dsp_packed)) == \
        (core.dsp_stages, core.dsp_chains, core.dsp_packed) == (4, core.cols, False)
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


# -- N:M sparse layers inside layer programs ---------------------------------------------------

def _sparse_models(rng):
    """Two small MLPs (sw.model) with sparse layers for programs: (1) Dense 64->32 pruned 2:4
    INT8 with ReLU, then Dense 32->10 dense INT8 (the array); (2) Dense 64->32 dense INT8 with ReLU, then
    Dense 32->12 pruned 1:4 INT4 with ReLU and Dense 12->10 pruned 2:4 ternary (two sparse
    layers side by side in DSPW, a ragged last window: K = 12 with Wp = 8)."""
    from sw import model as mdl
    from sw.quant import quantize_linear

    def lin(K, N, fmt, sparse, xz, yz, relu):
        return quantize_linear(rng.normal(size=(K, N)) / np.sqrt(K), rng.normal(size=N) * 0.2,
                               fmt=fmt, sparse=sparse, x_scale=0.05, x_zero=xz, y_scale=0.05,
                               y_zero=yz, relu=relu)
    I8, I4, TER = WeightFormat.INT8, WeightFormat.INT4, WeightFormat.TERNARY
    m1 = mdl.Model([mdl.Dense(lin(64, 32, I8, (2, 4), 3, -9, True), name="fc1"),
                    mdl.Dense(lin(32, 10, I8, None, -9, 1, False), name="fc2")],
                   input_shape=(64,), in_scale=0.05, in_zero=3, out_scale=0.05, out_zero=1,
                   name="mlp_2of4")
    m2 = mdl.Model([mdl.Dense(lin(64, 32, I8, None, -2, -20, True), name="fc1"),
                    mdl.Dense(lin(32, 12, I4, (1, 4), -20, 4, True), name="fc2"),
                    mdl.Dense(lin(12, 10, TER, (2, 4), 4, 0, False), name="fc3")],
                   input_shape=(64,), in_scale=0.05, in_zero=-2, out_scale=0.05, out_zero=0,
                   name="mlp_1of4")
    return m1, m2


def test_sparse_layers_in_programs_bit_exact(acc):
    """Models with N:M sparse Dense layers loaded as layer programs: the DSP layers' records
    resident in DSPW, A gathered in the DSP layout; results bit-exact with the model's golden
    run over several program runs (the last one padded), the batch bounded by the DSP
    layer's A words, per-layer counters with dense-equivalent MACs; other work that uses DSPW
    (sparse_gemm) makes the next run reload the model, still exact."""
    from sw.program import max_batch
    rng = np.random.default_rng(44)
    info = acc.identify()
    a_depth = info.a_bytes // (4 * info.rows)
    m1, m2 = _sparse_models(rng)

    lm1 = acc.load_model(m1)
    cp1 = lm1.compiled
    B1 = cp1.batch
    S1 = 64 // 8                                    # NM2_4 on L = 4: Wp = 8
    assert B1 == max_batch(m1, info) and B1 * S1 <= a_depth < (B1 + 1) * S1
    d = cp1.layers[0].desc
    assert (d.sparse, d.fmt, d.w_base) == (1 + NMPattern.NM2_4, WeightFormat.INT8, 0)
    assert cp1.layers[1].desc.sparse == 0
    x = rng.integers(-128, 128, size=(B1 + 5, 64))
    np.testing.assert_array_equal(lm1.run(x), m1.golden(x), strict=True)
    run = lm1.last
    assert run.program_runs == 2 and lm1.loads == 1
    # per-layer counters: dense-equivalent MACs of every (padded) batch row
    assert run.macs == [2 * B1 * 64 * 32, 2 * B1 * 32 * 10] == [2 * m for m in cp1.macs]
    recs = acc.layer_counters(2)
    assert [r.status for r in recs] == [P.ErrorCode.OK] * 2
    assert recs[0].macs == B1 * 64 * 32 and recs[0].cycles > recs[0].core_cycles > 0
    ext = np.stack([np.full(64, v) for v in (-128, 127, 0, 3)])
    np.testing.assert_array_equal(lm1.run(ext), m1.golden(ext), strict=True)

    # the second model: a 1:4 INT4 and a 2:4 ternary layer side by side in DSPW
    lm2 = acc.load_model(m2)
    cp2 = lm2.compiled
    d2, d3 = cp2.layers[1].desc, cp2.layers[2].desc
    assert (d2.sparse, d2.fmt, d2.w_base) == (1 + NMPattern.NM1_4, WeightFormat.INT4, 0)
    # fc3's records follow fc2's: ceil(12 / cols) tiles x S = ceil(32 / 16) = 2 steps
    assert (d3.sparse, d3.fmt, d3.w_base) == (1 + NMPattern.NM2_4, WeightFormat.TERNARY,
                                              -(-12 // info.cols) * 2)
    x2 = rng.integers(-128, 128, size=(cp2.batch + 3, 64))
    np.testing.assert_array_equal(lm2.run(x2), m2.golden(x2), strict=True)
    assert lm2.last.program_runs == 2
    assert lm2.last.macs == [2 * cp2.batch * k * n for k, n in ((64, 32), (32, 12), (12, 10))]
    # the first model again: PROG, DSPW, ... hold the second one's, so it reloads
    np.testing.assert_array_equal(lm1.run(x[:7]), m1.golden(x[:7]), strict=True)
    assert lm1.loads == 2

    # sparse_gemm writes DSPW from record 0 (and A, CHAN): the next run reloads, still exact
    sp = random_sparse(rng, NMPattern.NM2_4, 64, 13, WeightFormat.INT8)
    a = rng.integers(-128, 128, size=(6, 64))
    np.testing.assert_array_equal(acc.sparse_gemm(a, sp),
                                  numerics.sparse_gemm(a, sp).astype(np.int32), strict=True)
    np.testing.assert_array_equal(lm1.run(x), m1.golden(x), strict=True)
    assert lm1.loads == 3
    # linear on a sparse layer of the model itself, then the model
    fc1 = m1.layers[0].lin
    np.testing.assert_array_equal(acc.linear(x[:9], fc1), fc1.golden(x[:9]), strict=True)
    np.testing.assert_array_equal(lm1.run(x[:9]), m1.golden(x[:9]), strict=True)
    assert lm1.loads == 4


def test_sparse_convolutions_in_a_program_bit_exact(acc):
    """A CNN whose two 3x3 convolutions are N:M sparse (2:4 INT8 with padding 1; 1:4 INT4
    with stride 2): the runner gathers the im2col rows, padding included, in the DSP layout;
    bit-exact with the model's golden run over several program runs."""
    from sw import model as mdl
    from sw.quant import quantize_linear
    rng = np.random.default_rng(45)

    def lin(K, N, fmt, sparse, xz, yz, relu):
        return quantize_linear(rng.normal(size=(K, N)) / np.sqrt(K), rng.normal(size=N) * 0.2,
                               fmt=fmt, sparse=sparse, x_scale=0.05, x_zero=xz, y_scale=0.05,
                               y_zero=yz, relu=relu)
    I8, I4 = WeightFormat.INT8, WeightFormat.INT4
    cnn = mdl.Model([mdl.Conv2d(lin(36, 8, I8, (2, 4), -5, -20, True), kernel=3, pad=1,
                                in_shape=(5, 5, 4), name="c1"),
                     mdl.Conv2d(lin(72, 8, I4, (1, 4), -20, 3, True), kernel=3, stride=2,
                                pad=1, in_shape=(5, 5, 8), name="c2"),
                     mdl.Flatten(),
                     mdl.Dense(lin(72, 10, I8, None, 3, 0, False), name="fc")],
                    input_shape=(5, 5, 4), in_scale=0.05, in_zero=-5, out_scale=0.05,
                    out_zero=0, name="sparse_cnn")
    lm = acc.load_model(cnn)
    c1, c2 = (r.desc for r in lm.compiled.layers[:2])
    assert (c1.sparse, c2.sparse) == (1 + NMPattern.NM2_4, 1 + NMPattern.NM1_4)
    B = lm.compiled.batch
    x = rng.integers(-128, 128, size=(2 * B + 1, 5, 5, 4))
    x[0] = -128                                    # padding and extremes side by side
    x[1] = 127
    np.testing.assert_array_equal(lm.run(x), cnn.golden(x), strict=True)
    assert lm.last.program_runs == 3



def test_cli_run_sparse_onnx_model(transport, tmp_path):
    """``python -m sw run MODEL --sparse``: an ONNX MLP whose float weights were pruned 2:4
    and 1:4 before onnxruntime quantized it runs its pruned layers on the DSP engine,
    bit-exact with the golden model (the report and the JSON say which layers moved)."""
    import io
    import json
    pytest.importorskip("onnxruntime")
    from sw import demo, quant, transport as tr
    from sw.__main__ import main
    rng = np.random.default_rng(46)
    w1 = rng.normal(0, 0.2, (64, 24))
    w2 = rng.normal(0, 0.3, (24, 10))
    w1 = np.where(quant.prune_nm(w1, 2, 4), w1, 0.0)
    w2 = np.where(quant.prune_nm(w2, 1, 4), w2, 0.0)
    calib = rng.random((64, 64)).astype(np.float32)
    qdq = demo.quantize_onnx(demo.mlp_to_onnx([(w1, rng.normal(0, 0.1, 24)),
                                               (w2, rng.normal(0, 0.1, 10))]), calib)
    path, xpath, jpath = tmp_path / "mlp.onnx", tmp_path / "x.npy", tmp_path / "run.json"
    path.write_bytes(qdq.SerializeToString())
    np.save(xpath, rng.random((9, 64)).astype(np.float32))
    exe = transport.executable

    class Prebuilt(tr.SimTransport):           # the fixture's model: no second elaboration
        def __init__(self, device="85F", **kw):
            assert (device, kw.get("dsp")) == (DEVICE, DSP), (device, kw)
            super().__init__(device, executable=exe, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(tr, "SimTransport", Prebuilt)
    out = io.StringIO()
    try:
        rc = main(["run", str(path), "--input", str(xpath), "--sparse", "--json", str(jpath),
                   "--quiet", "--backend", "sim", "--device", DEVICE, "--dsp", DSP], out=out)
    finally:
        mp.undo()
    text = out.getvalue()
    assert rc == 0, text
    assert "sparse layers     fc0 2:4, fc1 1:4" in text, text
    assert "result            bit-exact vs the golden model (9 samples)" in text
    f = json.loads(jpath.read_text())
    assert f["bit_exact"] and f["sparse_layers"] == {"fc0": "2:4", "fc1": "1:4"}
