"""sw.model and the convolution / pooling golden models of sw.numerics: im2col against an
independent convolution by explicit loops, pooling, GlobalAvgPool against the float average,
Conv2d == Dense on im2col, Flatten order, Model chaining and its errors."""

import dataclasses
import math

import numpy as np
import pytest

from sw import model as M
from sw import numerics, quant


def rng(seed=0):
    return np.random.default_rng(seed)


def conv_loops(x, w, stride, pad, pad_value):
    """Direct convolution by loops, float64: x (B, H, W, C), w (Cout, C, k, k)."""
    b, h, wd, c = x.shape
    cout, _, k, _ = w.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = np.zeros((b, ho, wo, cout))
    for bi in range(b):
        for oy in range(ho):
            for ox in range(wo):
                for ky in range(k):
                    for kx in range(k):
                        iy, ix = oy * stride + ky - pad, ox * stride + kx - pad
                        v = x[bi, iy, ix] if 0 <= iy < h and 0 <= ix < wd else np.full(c, pad_value)
                        y[bi, oy, ox] += w[:, :, ky, kx] @ v.astype(np.float64)
    return y


@pytest.mark.parametrize("k,stride,pad,h,w", [(3, 1, 1, 5, 6), (3, 2, 1, 7, 5), (1, 1, 0, 3, 4),
                                              (1, 2, 0, 5, 5), (3, 1, 0, 4, 4), (3, 2, 2, 3, 3)])
def test_im2col_conv_matches_loops(k, stride, pad, h, w):
    r = rng(k * 100 + stride * 10 + pad)
    c, cout = 3, 4
    x = r.integers(-128, 128, (2, h, w, c)).astype(np.int8)
    wt = r.integers(-128, 128, (cout, c, k, k))
    pv = -7
    cols = numerics.im2col(x, kernel=k, stride=stride, pad=pad, pad_value=pv)
    ho = numerics.conv_out_size(h, k, stride, pad)
    wo = numerics.conv_out_size(w, k, stride, pad)
    assert cols.shape == (2 * ho * wo, k * k * c) and cols.dtype == np.int8
    q = wt.transpose(2, 3, 1, 0).reshape(k * k * c, cout)      # the documented k order
    got = (cols.astype(np.int64) @ q).reshape(2, ho, wo, cout)
    np.testing.assert_array_equal(got, conv_loops(x, wt, stride, pad, pv).astype(np.int64))


def test_im2col_element_order():
    x = np.arange(2 * 3 * 3 * 2).reshape(2, 3, 3, 2).astype(np.int8)
    cols = numerics.im2col(x, kernel=3, stride=1, pad=1, pad_value=-1)
    b, oy, ox, ky, kx, c = 1, 2, 0, 0, 1, 1
    m, kk = (b * 3 + oy) * 3 + ox, (ky * 3 + kx) * 2 + c
    assert cols[m, kk] == x[b, oy + ky - 1, ox + kx - 1, c]
    assert cols[0, 0] == -1                                     # top-left corner is padding


@pytest.mark.parametrize("bad,match", [
    (dict(kernel=3, pad=3), "pad must be smaller"), (dict(kernel=0), "kernel"),
    (dict(kernel=3, stride=0), "stride"), (dict(kernel=3, pad_value=200), "pad_value"),
    (dict(kernel=9), "does not fit")])
def test_im2col_validation(bad, match):
    x = np.zeros((1, 4, 4, 1), dtype=np.int8)
    with pytest.raises(ValueError, match=match):
        numerics.im2col(x, **bad)


def test_im2col_rejects_bad_input():
    with pytest.raises(ValueError, match="NHWC"):
        numerics.im2col(np.zeros((4, 4), dtype=np.int8), kernel=1)
    with pytest.raises(TypeError):
        numerics.im2col(np.zeros((1, 4, 4, 1)), kernel=1)
    with pytest.raises(ValueError, match=r"int8"):
        numerics.im2col(np.full((1, 2, 2, 1), 300), kernel=1)


def test_conv_out_size():
    assert numerics.conv_out_size(8, 3, 1, 1) == 8
    assert numerics.conv_out_size(7, 3, 2, 1) == 4
    assert numerics.conv_out_size(5, 2, 2, 0) == 2
    with pytest.raises(ValueError, match="does not fit"):
        numerics.conv_out_size(2, 3, 1, 0)
    with pytest.raises(ValueError, match="stride"):
        numerics.conv_out_size(4, 3, 0, 0)


def test_maxpool_and_gap_acc():
    r = rng(1)
    x = r.integers(-128, 128, (3, 5, 7, 4)).astype(np.int8)
    y = numerics.maxpool2d(x)
    assert y.shape == (3, 2, 3, 4) and y.dtype == np.int8
    for b, oy, ox, c in np.ndindex(*y.shape):
        assert y[b, oy, ox, c] == x[b, 2 * oy:2 * oy + 2, 2 * ox:2 * ox + 2, c].max()
    y3 = numerics.maxpool2d(x, size=3, stride=1)
    assert y3.shape == (3, 3, 5, 4)
    assert y3[1, 2, 4, 3] == x[1, 2:5, 4:7, 3].max()
    acc = numerics.global_avgpool_acc(x)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, x.astype(np.int64).sum(axis=(1, 2)))
    with pytest.raises(ValueError, match="NHWC"):
        numerics.global_avgpool_acc(x[0])


def lin(k, n, *, seed=0, fmt="INT8", x=(0.05, 3), y=(0.1, -4), relu=False, bias=True):
    r = rng(seed)
    return quant.quantize_linear(r.normal(size=(k, n)), r.normal(size=n) if bias else None,
                                 fmt=fmt, x_scale=x[0], x_zero=x[1], y_scale=y[0], y_zero=y[1],
                                 relu=relu)


def test_conv2d_is_dense_on_im2col():
    r = rng(2)
    ql = lin(3 * 3 * 2, 5, fmt="INT4", relu=True)
    conv = M.Conv2d(ql, kernel=3, stride=2, pad=1, in_shape=(6, 5, 2), name="c")
    x = r.integers(-128, 128, (2, 6, 5, 2)).astype(np.int8)
    y = conv.golden(x)
    assert y.shape == (2, 3, 3, 5) and y.dtype == np.int8
    cols = numerics.im2col(x, kernel=3, stride=2, pad=1, pad_value=3)
    np.testing.assert_array_equal(y.reshape(-1, 5), M.Dense(ql).golden(cols), strict=True)
    assert conv.macs((6, 5, 2)) == 9 * 18 * 5
    assert conv.gemm_shape((6, 5, 2)) == (9, 18, 5)


def test_conv2d_float_reference():
    """Conv2d.golden against the float convolution of the weights it stands for."""
    r = rng(3)
    ql = lin(3 * 3 * 3, 4, x=(0.02, -10), y=(0.05, 2))
    conv = M.Conv2d(ql, kernel=3, stride=1, pad=1, in_shape=(5, 5, 3))
    xq = r.integers(-128, 128, (2, 5, 5, 3)).astype(np.int8)
    xf = 0.02 * (xq.astype(np.float64) - (-10))
    wq = ql.dequantized_weights.reshape(3, 3, 3, 4).transpose(3, 2, 0, 1)
    ref = conv_loops(xf, wq, 1, 1, 0.0) + ql.bias
    want = np.clip(np.rint(ref / 0.05) + 2, -128, 127)
    got = conv.golden(xq).astype(np.float64)
    assert np.abs(got - want).max() <= 1


def test_conv2d_validation():
    ql = lin(9 * 2, 3)
    with pytest.raises(ValueError, match="kernel must be 1 or 3"):
        M.Conv2d(ql, kernel=5, in_shape=(8, 8, 2))
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        M.Conv2d(ql, kernel=3, stride=3, in_shape=(8, 8, 2))
    with pytest.raises(ValueError, match="pad must be"):
        M.Conv2d(ql, kernel=3, pad=3, in_shape=(8, 8, 2))
    with pytest.raises(ValueError, match="needs lin.q with 27 rows"):
        M.Conv2d(ql, kernel=3, in_shape=(8, 8, 3))
    conv = M.Conv2d(ql, kernel=3, pad=1, in_shape=(8, 8, 2))
    with pytest.raises(ValueError, match=r"shape \(B, 8, 8, 2\)"):
        conv.golden(np.zeros((1, 8, 8, 3), dtype=np.int8))


@pytest.mark.parametrize("hw,x,y", [(16, (0.1, -128), (0.05, 0)), (49, (0.03, 7), (0.02, -3)),
                                    (1, (0.5, 0), (0.5, 0))])
def test_gap_against_float_average(hw, x, y):
    h = int(math.isqrt(hw))
    r = rng(hw)
    gap = M.GlobalAvgPool.build(hw, x_scale=x[0], x_zero=x[1], y_scale=y[0], y_zero=y[1])
    xq = r.integers(-128, 128, (4, h, h, 6)).astype(np.int8)
    got = gap.golden(xq)
    assert got.shape == (4, 6) and got.dtype == np.int8
    avg = x[0] * (xq.astype(np.float64) - x[1]).mean(axis=(1, 2))
    want = np.clip(np.rint(avg / y[0]) + y[1], -128, 127)
    assert np.abs(got - want).max() <= 1
    # the device's GEMM form: K = H*W, N = 1, weights all one, rows = (b, c)
    rows = xq.transpose(0, 3, 1, 2).reshape(4 * 6, hw)
    dev = numerics.mixgemm(rows, np.ones((hw, 1), dtype=np.int64), requant=gap.requant)
    np.testing.assert_array_equal(got, dev.reshape(4, 6), strict=True)
    assert gap.requant.bias[0] == -hw * x[1]
    assert gap.gemm_shape((h, h, 6)) == (6, hw, 1)


def test_gap_validation():
    with pytest.raises(ValueError, match="hw"):
        M.GlobalAvgPool.build(0, x_scale=1.0, x_zero=0, y_scale=1.0, y_zero=0)
    with pytest.raises(ValueError, match="too large"):
        M.GlobalAvgPool.build(1, x_scale=1e6, x_zero=0, y_scale=1e-3, y_zero=0)
    gap = M.GlobalAvgPool.build(16, x_scale=1.0, x_zero=0, y_scale=1.0, y_zero=0)
    with pytest.raises(ValueError, match="H \\* W = 16"):
        gap.out_shape((3, 3, 2))


def test_flatten_order():
    x = rng(4).integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    y = M.Flatten().golden(x)
    assert y.shape == (2, 60)
    for h, w, c in np.ndindex(3, 4, 5):
        assert y[1, (h * 4 + w) * 5 + c] == x[1, h, w, c]
    assert M.Flatten().out_shape((3, 4, 5)) == (60,)
    with pytest.raises(ValueError, match="NHWC"):
        M.Flatten().out_shape((60,))


def small_cnn():
    c1 = lin(9 * 1, 4, seed=1, x=(1 / 255, -128), y=(0.05, -128), relu=True)
    c2 = lin(9 * 4, 6, seed=2, x=(0.05, -128), y=(0.08, -128), relu=True)
    gap = M.GlobalAvgPool.build(4, x_scale=0.08, x_zero=-128, y_scale=0.04, y_zero=-128)
    d = lin(6, 3, seed=3, x=(0.04, -128), y=(0.2, 5))
    layers = [M.Conv2d(c1, kernel=3, pad=1, in_shape=(4, 4, 1), name="conv1"),
              M.Conv2d(c2, kernel=3, pad=1, in_shape=(4, 4, 4), name="conv2"),
              M.MaxPool2d(name="pool"), gap, M.Dense(d, name="fc")]
    return M.Model(layers, input_shape=(4, 4, 1), in_scale=1 / 255, in_zero=-128,
                   out_scale=0.2, out_zero=5, name="tiny")


def test_model_runs_and_describes():
    m = small_cnn()
    assert m.shapes() == [(4, 4, 4), (4, 4, 6), (2, 2, 6), (6,), (3,)]
    assert m.macs() == [16 * 9 * 4, 16 * 36 * 6, 0, 24, 18]
    x = rng(5).random((3, 4, 4, 1))
    xq = m.quantize_input(x)
    acts = m.activations(xq)
    y = m.golden(xq)
    np.testing.assert_array_equal(y, acts[-1], strict=True)
    h = xq
    for layer in m.layers:
        h = layer.golden(h)
    np.testing.assert_array_equal(y, h, strict=True)
    np.testing.assert_allclose(m.forward(x), 0.2 * (y.astype(np.float64) - 5))
    s = m.summary()
    for word in ("conv1", "conv2", "pool", "gap", "fc", "INT8 9x4 +relu", "total MACs"):
        assert word in s
    np.testing.assert_array_equal(m.input_from_onnx(M.nhwc_to_nchw(x)), x)
    assert m.renamed(["a", "b", "c", "d", "e"]).layers[4].name == "e"


def test_model_errors_name_the_layer():
    m = small_cnn()
    layers = list(m.layers)
    kw = dict(input_shape=(4, 4, 1), in_scale=1 / 255, in_zero=-128, out_scale=0.2, out_zero=5)
    with pytest.raises(ValueError, match=r"layer 4 \(Dense 'fc'\).*\(6,\)"):
        M.Model(layers[:3] + [M.Flatten()] + layers[4:], **kw)
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2d 'conv2'\): its input quantization"):
        M.Model([layers[0], M.Conv2d(lin(36, 6, x=(0.06, -128)), kernel=3, pad=1,
                                     in_shape=(4, 4, 4), name="conv2")] + layers[2:], **kw)
    with pytest.raises(ValueError, match="last layer's output quantization"):
        M.Model(layers, **{**kw, "out_zero": 0})
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d 'conv1'\)"):
        M.Model(layers, **{**kw, "input_shape": (5, 5, 1)})
    with pytest.raises(ValueError, match="layer 2 must be one of"):
        M.Model(layers[:2] + ["relu"], **kw)
    with pytest.raises(ValueError, match="at least one layer"):
        M.Model([], **kw)
    with pytest.raises(ValueError, match="in_scale"):
        M.Model(layers, **{**kw, "in_scale": -1.0})
    with pytest.raises(ValueError, match=r"shape \(B, 4, 4, 1\)"):
        m.golden(np.zeros((2, 4, 4, 2), dtype=np.int8))
    with pytest.raises(TypeError):
        m.golden(np.zeros((2, 4, 4, 1)))


def test_dense_model_and_maxpool_validation():
    d = lin(8, 3)
    m = M.Model([M.Dense(d)], input_shape=(8,), in_scale=0.05, in_zero=3, out_scale=0.1,
                out_zero=-4)
    x = rng(6).integers(-128, 128, (5, 8)).astype(np.int8)
    np.testing.assert_array_equal(m.golden(x), d.golden(x), strict=True)
    with pytest.raises(ValueError, match="size"):
        M.MaxPool2d(size=0)
    with pytest.raises(ValueError, match="Dense.lin"):
        M.Dense("w")
    with pytest.raises(ValueError, match="NHWC"):
        M.MaxPool2d().out_shape((8,))


def test_linear_from_integers_matches_quantize_linear():
    """Importing a layer's own integers gives the same requantization and bias."""
    for sym in (True, False):
        ql = quant.quantize_linear(rng(7).normal(size=(40, 6)), rng(8).normal(size=6),
                                   fmt="INT4", symmetric=sym, x_scale=0.05, x_zero=3,
                                   y_scale=0.1, y_zero=-4, relu=True)
        li = quant.linear_from_integers(ql.q, fmt="INT4", w_scale=ql.w_scale,
                                        w_zero=None if sym else ql.w_zero, bias_float=ql.bias,
                                        x_scale=0.05, x_zero=3, y_scale=0.1, y_zero=-4, relu=True)
        for a in ("multiplier", "shift", "bias"):
            np.testing.assert_array_equal(getattr(li.requant, a), getattr(ql.requant, a))
        x = rng(9).integers(-128, 128, (7, 40)).astype(np.int8)
        np.testing.assert_array_equal(li.golden(x), ql.golden(x), strict=True)
    # an ONNX int32 bias is used exactly
    b32 = np.array([5, -7, 1000, 0, 3, -1])
    li = quant.linear_from_integers(ql.q, fmt="INT4", w_scale=ql.w_scale, bias_int32=b32,
                                    x_scale=0.05, x_zero=3, y_scale=0.1, y_zero=-4)
    np.testing.assert_array_equal(li.requant.bias, b32 - 3 * ql.q.sum(axis=0))
    with pytest.raises(ValueError, match="not both"):
        quant.linear_from_integers(ql.q, fmt="INT4", w_scale=ql.w_scale, bias_int32=b32,
                                   bias_float=b32 * 1.0, x_scale=0.05, y_scale=0.1)
    with pytest.raises(ValueError, match="INT4"):
        quant.linear_from_integers(ql.q * 3, fmt="INT4", w_scale=ql.w_scale, x_scale=0.05,
                                   y_scale=0.1)
    with pytest.raises(ValueError, match="symmetric only"):
        quant.linear_from_integers(np.zeros((4, 2), dtype=int), fmt="TERNARY",
                                   w_scale=[1.0, 1.0], w_zero=[1, 0], x_scale=1.0, y_scale=1.0)
    with pytest.raises(ValueError, match="w_scale"):
        quant.linear_from_integers(np.zeros((4, 2), dtype=int), fmt="INT8", w_scale=[1.0],
                                   x_scale=1.0, y_scale=1.0)


# -- N:M sparse Dense layers ----------------------------------------------------------------

@pytest.mark.parametrize("nm, fmt", [((2, 4), "INT8"), ((1, 4), "INT4"), ((2, 8), "TERNARY"),
                                     ((4, 8), "INT2"), ((8, 8), "INT8")])
def test_sparse_dense_golden_is_sparse_gemm_and_equals_dense_of_pruned_codes(nm, fmt,
                                                                             monkeypatch):
    """A Dense with N:M weights computes sparse_gemm on the compressed weights plus the
    per-channel epilogue, which equals the dense golden model on the pruned codes."""
    r = rng(20 + nm[0])
    ql = quant.quantize_linear(r.normal(size=(48, 13)), r.normal(size=13) * 0.3, fmt=fmt,
                               x_scale=0.05, x_zero=3, y_scale=0.1, y_zero=-4, relu=True,
                               sparse=nm)
    d = M.Dense(ql, name="fc")
    assert d.sparse is ql.sparse and (d.sparse.n, d.sparse.m) == nm
    x = r.integers(-128, 128, (9, 48)).astype(np.int8)
    calls = []
    real = numerics.sparse_gemm
    monkeypatch.setattr(numerics, "sparse_gemm", lambda a, sp, **kw: calls.append(sp) or
                        real(a, sp, **kw))
    y = d.golden(x)
    assert calls == [ql.sparse]                           # computed from the compressed form
    monkeypatch.undo()
    want = numerics.requantize_channels(numerics.sparse_gemm(x, ql.sparse), ql.requant)
    np.testing.assert_array_equal(y, want, strict=True)
    dense = M.Dense(dataclasses.replace(ql, sparse=None), name="fc")
    np.testing.assert_array_equal(y, dense.golden(x), strict=True)
    # pruned: n of every m rows per column are kept
    assert (np.count_nonzero(ql.q.reshape(-1, nm[1], 13), axis=1) <= nm[0]).all()
    m = M.Model([d], input_shape=(48,), in_scale=0.05, in_zero=3, out_scale=0.1, out_zero=-4)
    np.testing.assert_array_equal(m.golden(x), y, strict=True)
    assert m.macs() == [48 * 13]                          # dense-equivalent
    assert f"{fmt} 48x13 {nm[0]}:{nm[1]} +relu" in m.summary()


def test_dense_from_sparse_and_validation():
    r = rng(30)
    k, n = 32, 6
    mask = quant.prune_nm(r.normal(size=(k, n)), 2, 4)
    q = np.where(mask, r.integers(-8, 8, (k, n)), 0)
    sp = quant.compress_nm(q, mask, n=2, m=4, fmt="INT4")
    scale = r.uniform(0.01, 0.02, n)
    d = M.Dense.from_sparse(sp, w_scale=scale, bias_float=r.normal(size=n) * 0.1,
                            x_scale=0.05, x_zero=-2, y_scale=0.08, y_zero=1, relu=False,
                            name="imported")
    assert d.name == "imported" and d.sparse is sp and d.lin.fmt == numerics.WeightFormat.INT4
    np.testing.assert_array_equal(d.lin.q, q)
    ref = quant.linear_from_integers(q, fmt="INT4", w_scale=scale, bias_float=d.lin.bias,
                                     x_scale=0.05, x_zero=-2, y_scale=0.08, y_zero=1)
    for a in ("multiplier", "shift", "bias"):
        np.testing.assert_array_equal(getattr(d.lin.requant, a), getattr(ref.requant, a))
    x = r.integers(-128, 128, (4, k)).astype(np.int8)
    np.testing.assert_array_equal(d.golden(x), ref.golden(x), strict=True)
    with pytest.raises(TypeError, match="NMSparse"):
        M.Dense.from_sparse(q, w_scale=scale, x_scale=0.05, y_scale=0.08)
    # lin.q must be the dense form of lin.sparse; no group tables
    bad = q.copy()
    bad[~mask] = 1
    with pytest.raises(ValueError, match=r"Dense 'fc': lin.q is not the dense form of "
                                         r"lin.sparse \(first difference at row"):
        M.Dense(dataclasses.replace(d.lin, q=bad), name="fc")
    other = quant.compress_nm(q[:16], mask[:16], n=2, m=4, fmt="INT4")
    with pytest.raises(ValueError, match=r"the sparse weights are 16x6, lin.q is 32x6"):
        M.Dense(dataclasses.replace(d.lin, sparse=other))
    gq = numerics.GroupQuant(32, np.ones((1, n), np.int64), np.zeros((1, n), np.int64))
    with pytest.raises(ValueError, match="per output channel only"):
        M.Dense(dataclasses.replace(d.lin, group=gq))


def test_sparse_conv2d_golden_and_validation():
    """A Conv2d with N:M weights: its golden model is the sparse Dense golden of the im2col
    rows (padding = the input zero point); the same checks as Dense refuse a lin.q that is
    not the sparse weights' dense form."""
    r = rng(31)
    ql = quant.quantize_linear(r.normal(size=(36, 5)) / 6, r.normal(size=5) * 0.1, fmt="INT8",
                               x_scale=0.05, x_zero=-4, y_scale=0.08, y_zero=2, relu=True,
                               sparse=(1, 4))
    conv = M.Conv2d(ql, kernel=3, stride=1, pad=1, in_shape=(4, 5, 4), name="c")
    x = r.integers(-128, 128, (3, 4, 5, 4)).astype(np.int8)
    cols = numerics.im2col(x, kernel=3, stride=1, pad=1, pad_value=-4)
    want = M.Dense(ql).golden(cols).reshape(3, 4, 5, 5)
    np.testing.assert_array_equal(conv.golden(x), want, strict=True)
    bad = ql.q.copy()
    bad[ql.q == 0] = 1
    with pytest.raises(ValueError, match=r"Conv2d 'c': lin.q is not the dense form of "
                                         r"lin.sparse"):
        M.Conv2d(dataclasses.replace(ql, q=bad), kernel=3, pad=1, in_shape=(4, 5, 4),
                 name="c")
