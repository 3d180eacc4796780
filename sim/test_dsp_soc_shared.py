"""End to end on a DSP engine whose chains share their indices (``--dsp dsp4s``): the real
driver through SimTransport on the Verilator model of the 25F-sized SoC (4 chains of 4
MULT18X18D, one index group: IDENTIFY ``dsp_share`` = 4). Weights pruned so that the 4
columns of each tile keep the same positions (``sw.quant.prune_nm(..., share=4)``,
``quantize_linear(..., share=4)``) run bit-exact against ``sw.numerics`` in every pattern
and format, over several column tiles, in direct calls and in layer programs; weights pruned
per column are refused by the driver before anything is sent, and the device keeps working.
"""

import numpy as np
import pytest

from sw import numerics
from sw.numerics import NMPattern, WeightFormat, Requant
from test_mixcore_dsp import random_sparse    # kept positions shared by groups of columns
from test_dsp_soc import transport, acc        # noqa: F401 (fixtures: this module's DEVICE, DSP)

DEVICE, DSP = "25F", "dsp4s"


def test_identify_reports_the_shared_engine(acc):
    from hw.soc.simbuild import sim_soc
    core = sim_soc(DEVICE, dsp=DSP).core
    info = acc.identify()
    assert (info.dsp_stages, info.dsp_chains, info.dsp_share, info.dsp_index_group) == \
        (4, core.dsp_chains, core.dsp_share, core.cols) == (4, 4, 4, 4)
    assert info.config_hash == core.config_hash()


def test_every_pattern_and_format_bit_exact(acc):
    """Shared-pruned weights, ragged shapes over several column tiles (the last partial)."""
    rng = np.random.default_rng(50)
    info = acc.identify()
    G = info.dsp_index_group
    for pat in [p for p in NMPattern if info.supports_pattern(p)]:
        for fmt in (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.TERNARY):
            M = int(rng.integers(1, 3 * info.rows + 2))
            N = int(rng.integers(info.cols + 1, 3 * info.cols + 2))
            K = pat.m * int(rng.integers(1, 24))
            a = rng.integers(-128, 128, size=(M, K))
            sp = random_sparse(rng, pat, K, N, fmt, G)
            want = numerics.sparse_gemm(a, sp)
            np.testing.assert_array_equal(acc.sparse_gemm(a, sp), want.astype(np.int32),
                                          strict=True, err_msg=f"{M}x{K}x{N} {pat.name} {fmt.name}")
            rq = Requant(1 << 15, 22, -3, True)
            np.testing.assert_array_equal(acc.sparse_gemm(a, sp, requant=rq),
                                          numerics.requantize(want, rq), strict=True)


def test_per_column_weights_refused_before_sending(acc, transport, monkeypatch):
    """Weights whose columns keep different positions inside an index group would compute
    with the group's first column's indices: the driver refuses them, nothing is sent, and
    the same GEMM pruned with the device's group runs bit-exact."""
    from sw.quant import quantize_linear
    rng = np.random.default_rng(51)
    info = acc.identify()
    K, N, M = 64, 10, 5
    w = rng.normal(size=(K, N))
    per_col = quantize_linear(w, None, fmt=WeightFormat.INT8, sparse=(2, 4), x_scale=0.05,
                              y_scale=0.1)
    x = rng.integers(-128, 128, size=(M, K))
    sent = []
    write = transport.write
    monkeypatch.setattr(transport, "write", lambda data: (sent.append(data), write(data)))
    with pytest.raises(ValueError, match="share"):
        acc.linear(x, per_col)
    assert sent == []
    with pytest.raises(ValueError, match="share"):
        acc.sparse_gemm(x, per_col.sparse)
    assert sent == []
    shared = quantize_linear(w, rng.normal(size=N), fmt=WeightFormat.INT8, sparse=(2, 4),
                             share=info.dsp_index_group, x_scale=0.05, y_scale=0.1, relu=True)
    idx = shared.sparse.idx
    for g0 in range(0, N, info.dsp_index_group):
        blk = idx[:, g0:g0 + info.dsp_index_group]
        assert (blk == blk[:, :1]).all()
    np.testing.assert_array_equal(acc.linear(x, shared), shared.golden(x), strict=True)


def test_shared_sparse_model_in_a_program(acc):
    """An MLP whose Dense layers were pruned 2:4 / 1:4 with the device's index groups runs
    as a layer program on the DSP engine, bit-exact with the model's golden run."""
    from sw import model as mdl
    from sw.quant import quantize_linear
    rng = np.random.default_rng(52)
    G = acc.identify().dsp_index_group

    def lin(K, N, fmt, sparse, xz, yz, relu):
        return quantize_linear(rng.normal(size=(K, N)) / np.sqrt(K), rng.normal(size=N) * 0.2,
                               fmt=fmt, sparse=sparse, share=G if sparse else 1, x_scale=0.05,
                               x_zero=xz, y_scale=0.05, y_zero=yz, relu=relu)
    m = mdl.Model([mdl.Dense(lin(64, 24, WeightFormat.INT8, (2, 4), 3, -9, True), name="fc1"),
                   mdl.Dense(lin(24, 12, WeightFormat.INT4, (1, 4), -9, 2, True), name="fc2"),
                   mdl.Dense(lin(12, 10, WeightFormat.INT8, None, 2, 1, False), name="fc3")],
                  input_shape=(64,), in_scale=0.05, in_zero=3, out_scale=0.05, out_zero=1,
                  name="mlp_shared")
    lm = acc.load_model(m)
    assert [r.desc.sparse for r in lm.compiled.layers] == [1 + NMPattern.NM2_4,
                                                           1 + NMPattern.NM1_4, 0]
    x = rng.integers(-128, 128, size=(lm.compiled.batch + 3, 64))
    x[0], x[1] = -128, 127
    np.testing.assert_array_equal(lm.run(x), m.golden(x), strict=True)
