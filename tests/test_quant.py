"""sw.quant: weight / activation quantizers against float references, quantized linear layers
against the float layer they approximate, exact identities of the integer folding, refusals;
and sw.accuracy on a reduced setting."""

import dataclasses
import itertools
import sys

import numpy as np
import pytest

from sw import numerics, quant
from sw.numerics import WeightFormat as F
from sw.quant import ErrorStats

GROUPS = [None, *numerics.GROUP_SIZES]
SETTINGS = [(f, g, sym) for f in F for g in GROUPS for sym in (True, False)
            if sym or f not in (F.TERNARY, F.POW2)]
#: SQNR (dB) every setting reaches on Gaussian weights (measured: INT8 43+, INT4 20+,
#: INT2 8+, TERNARY 7+, POW2 14+)
MIN_SQNR = {F.INT8: 35, F.INT4: 17, F.INT2: 6, F.TERNARY: 5.5, F.POW2: 12}


def sid(s):
    f, g, sym = s
    return f"{f.name}-{'ch' if g is None else f'G{g}'}-{'sym' if sym else 'asym'}"


def legal(q, fmt):
    """Every value is one the format holds (independent of sw.numerics' encoder)."""
    v = np.asarray(q)
    if fmt is F.TERNARY:
        return np.isin(v, [-1, 0, 1]).all()
    if fmt is F.POW2:
        return np.isin(v, [s * 2 ** e for s in (-1, 1) for e in range(8)]).all()
    b = {F.INT8: 8, F.INT4: 4, F.INT2: 2}[fmt]
    return ((v >= -2 ** (b - 1)) & (v <= 2 ** (b - 1) - 1)).all()


# -- weight quantizers --------------------------------------------------------------------

@pytest.mark.parametrize("setting", SETTINGS, ids=sid)
@pytest.mark.parametrize("k", [45, 203])                 # not a multiple of G or of the lanes
def test_weight_quantizer_every_setting(setting, k):
    fmt, group, sym = setting
    rng = np.random.default_rng(k + 1000 * int(fmt) + (group or 0))
    w = rng.normal(0, 0.05, (k, 12))
    wq = quant.quantize_weights(w, fmt=fmt, group=group, symmetric=sym)
    ng = None if group is None else -(-k // group)
    assert wq.q.shape == (k, 12) and wq.q.dtype == np.int64
    assert legal(wq.q, fmt)
    numerics.encode_weights(wq.q, fmt)                   # the golden model accepts them
    assert wq.scale.shape == ((12,) if ng is None else (ng, 12)) and (wq.scale > 0).all()
    assert wq.zero.shape == wq.scale.shape
    if sym:
        assert not wq.zero.any()
    else:
        lo, hi = numerics.weight_range(fmt)
        assert (wq.zero >= lo).all() and (wq.zero <= hi).all()
    # dequantize is scale * (q - zero) with the tables expanded along K
    rows = np.arange(k) // (group or k)
    sc = wq.scale[None, :] if ng is None else wq.scale[rows]
    zp = wq.zero[None, :] if ng is None else wq.zero[rows]
    deq = sc * (wq.q - zp)
    np.testing.assert_allclose(wq.dequantize(), deq, rtol=0, atol=1e-15)
    err = deq - w
    assert wq.stats.mse == pytest.approx(np.mean(err ** 2))
    assert wq.stats.max_abs == pytest.approx(np.abs(err).max())
    assert wq.stats.sqnr_db == pytest.approx(10 * np.log10(np.sum(w ** 2) / np.sum(err ** 2)))
    assert wq.stats.sqnr_db > MIN_SQNR[fmt]
    # the MSE search contains the min/max scale, so it is never worse per group
    mm = quant.quantize_weights(w, fmt=fmt, group=group, symmetric=sym, method="minmax")
    assert wq.stats.mse <= mm.stats.mse * (1 + 1e-12)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s[0] not in (F.TERNARY, F.POW2)], ids=sid)
def test_uniform_minmax_error_bounded_by_the_step(setting):
    """min/max scales never clip (symmetric): |err| <= s/2; asymmetric: zero-point rounding can
    push one end half a step past the range, |err| <= s."""
    fmt, group, sym = setting
    rng = np.random.default_rng(3)
    k = 150
    w = rng.normal(0.01, 0.05, (k, 7))
    wq = quant.quantize_weights(w, fmt=fmt, group=group, symmetric=sym, method="minmax")
    rows = np.arange(k) // (group or k)
    sc = wq.scale[None, :] if group is None else wq.scale[rows]
    bound = sc * (0.5 if sym else 1.0) * (1 + 1e-9)
    assert (np.abs(wq.dequantize() - w) <= bound).all()
    # the ragged last group's scale comes from its own rows only
    lo, hi = numerics.weight_range(fmt)
    last = w[(k - 1) // (group or k) * (group or k):]
    if sym:
        want = np.abs(last).max(axis=0) / hi
    else:
        want = (np.maximum(last.max(axis=0), 0) - np.minimum(last.min(axis=0), 0)) / (hi - lo)
    np.testing.assert_allclose(wq.scale if group is None else wq.scale[-1], want, rtol=1e-12)


def test_int8_sqnr_on_gaussian_weights():
    w = np.random.default_rng(4).normal(0, 1, (512, 64))
    for group, sym in itertools.product(GROUPS, (True, False)):
        assert quant.quantize_weights(w, fmt=F.INT8, group=group, symmetric=sym).stats.sqnr_db > 35


def test_int4_groups_beat_channels_with_outlier_groups():
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.02, (256, 16))
    w[64:96] *= 25                                     # one group of 32 rows with outliers
    ch = quant.quantize_weights(w, fmt=F.INT4)
    for g in numerics.GROUP_SIZES:
        gr = quant.quantize_weights(w, fmt=F.INT4, group=g)
        assert gr.stats.mse < ch.stats.mse
    assert quant.quantize_weights(w, fmt=F.INT4, group=32).stats.sqnr_db > ch.stats.sqnr_db + 3


def test_asymmetric_helps_on_skewed_weights():
    w = np.random.default_rng(6).uniform(-0.1, 1.0, (128, 8))
    for fmt in (F.INT8, F.INT4, F.INT2):
        sym = quant.quantize_weights(w, fmt=fmt, method="minmax")
        asym = quant.quantize_weights(w, fmt=fmt, symmetric=False, method="minmax")
        assert asym.stats.mse < sym.stats.mse


def test_asymmetric_zero_is_exact_and_zero_point_maps_it():
    w = np.array([[-0.3], [0.0], [0.9], [0.45]])
    wq = quant.quantize_weights(w, fmt=F.INT4, symmetric=False, method="minmax")
    assert wq.scale[0] == pytest.approx(1.2 / 15)
    assert wq.zero[0] == round(-8 + 0.3 / (1.2 / 15))      # -4.25 -> -4
    assert wq.q[1, 0] == wq.zero[0] and wq.dequantize()[1, 0] == 0


def test_pow2_rounds_to_nearest_power_by_value():
    # absmax 128 makes the min/max scale exactly 1
    w = np.array([128, 1.49, 1.5, 2.9, 3.0, 0.0, -0.2, -6.0, -5.9, 0.74, 100.0])[:, None]
    wq = quant.quantize_weights(w, fmt=F.POW2, method="minmax")
    assert wq.scale[0] == 1.0
    assert wq.q[:, 0].tolist() == [128, 1, 2, 2, 4, 1, -1, -8, -4, 1, 128]
    # zero-free: no zero code even for all-zero or tiny weights
    assert (quant.quantize_weights(np.zeros((5, 2)), fmt=F.POW2).q != 0).all()


def test_pow2_relative_error_bound():
    """Nearest power of two by value: at most 1/3 relative error inside the 2**0..2**7 range."""
    w = np.random.default_rng(7).normal(0, 1, (300, 4))
    wq = quant.quantize_weights(w, fmt=F.POW2, method="minmax")
    inside = np.abs(w) >= wq.scale
    rel = np.abs(wq.dequantize() - w)[inside] / np.abs(w)[inside]
    assert rel.max() <= 1 / 3 + 1e-12
    assert (np.abs(wq.dequantize() - w)[~inside] <= wq.scale[None, :].repeat(300, 0)[~inside]).all()


def test_ternary_is_twn():
    w = np.array([1.0, -1.0, 0.1, -0.05, 2.0])[:, None]
    wq = quant.quantize_weights(w, fmt=F.TERNARY)
    assert wq.q[:, 0].tolist() == [1, -1, 0, 0, 1]
    assert wq.scale[0] == pytest.approx(4 / 3)
    # per group, against a loop over the groups (threshold from the real rows only)
    rng = np.random.default_rng(8)
    w = rng.normal(0, 1, (100, 5))
    wq = quant.quantize_weights(w, fmt=F.TERNARY, group=32)
    for g, n in itertools.product(range(4), range(5)):
        col = w[32 * g:32 * (g + 1), n]
        delta = 0.7 * np.abs(col).mean()
        sup = np.abs(col) > delta
        assert wq.q[32 * g:32 * (g + 1), n].tolist() == (np.sign(col) * sup).astype(int).tolist()
        assert wq.scale[g, n] == pytest.approx(np.abs(col[sup]).mean())


def test_all_zero_channel_and_group():
    w = np.random.default_rng(9).normal(0, 1, (64, 3))
    w[:, 1] = 0
    w[32:, 2] = 0
    for fmt in (F.INT8, F.INT4, F.INT2, F.TERNARY):
        for group, sym in itertools.product((None, 32), (True, False)):
            if fmt is F.TERNARY and not sym:
                continue
            wq = quant.quantize_weights(w, fmt=fmt, group=group, symmetric=sym)
            assert (wq.dequantize()[:, 1] == 0).all()
            if group:
                assert (wq.dequantize()[32:, 2] == 0).all()
    wq = quant.quantize_weights(w, fmt=F.POW2, group=32)
    assert (wq.dequantize()[32:, 2] == 0).all()             # scale 0: exact despite +1 codes


@pytest.mark.parametrize("fmt", [F.TERNARY, F.POW2])
def test_asymmetric_refused_for_ternary_and_pow2(fmt):
    with pytest.raises(ValueError, match=f"{fmt.name} weights are symmetric only.*symmetric=True"):
        quant.quantize_weights(np.ones((4, 4)), fmt=fmt, symmetric=False)
    with pytest.raises(ValueError, match="symmetric only"):
        quant.quantize_linear(np.ones((4, 4)), None, fmt=fmt, symmetric=False, x_scale=1, y_scale=1)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(fmt="INT3"), ValueError, "fmt must be.*'INT3'"),
    (dict(fmt=9), ValueError, "fmt must be.*9"),
    (dict(fmt=True), ValueError, "fmt must be.*True"),
    (dict(fmt=None), ValueError, "fmt must be.*None"),
    (dict(group=16), ValueError, r"group must be None .*\(32, 64, 128\).*16"),
    (dict(group=0), ValueError, "group must be.*0"),
    (dict(group=True), ValueError, "group must be.*True"),
    (dict(group=32.0), ValueError, "group must be.*32.0"),
    (dict(symmetric=None), ValueError, "symmetric must be a bool.*None"),
    (dict(method="l1"), ValueError, "method must be.*'l1'"),
    (dict(w=np.ones(4)), ValueError, r"w must be 2-D.*\(4,\)"),
    (dict(w=np.ones((0, 3))), ValueError, r"non-empty.*\(0, 3\)"),
    (dict(w=np.array([[1.0, np.nan]])), ValueError, "finite"),
    (dict(w=np.array([["a"]])), TypeError, "real numeric"),
])
def test_weight_quantizer_refusals(kw, exc, match):
    args = dict(w=np.ones((8, 2)), fmt=F.INT8)
    args.update(kw)
    w = args.pop("w")
    with pytest.raises(exc, match=match):
        quant.quantize_weights(w, **args)


def test_fmt_by_name_and_value():
    w = np.random.default_rng(10).normal(size=(8, 2))
    a = quant.quantize_weights(w, fmt="int4").q
    np.testing.assert_array_equal(a, quant.quantize_weights(w, fmt=1).q, strict=True)
    np.testing.assert_array_equal(a, quant.quantize_weights(w, fmt=F.INT4).q, strict=True)


def test_error_stats_edge_cases():
    assert ErrorStats.of([1.0, 2.0], [1.0, 2.0]).sqnr_db == float("inf")
    assert ErrorStats.of([0.0], [1.0]).sqnr_db == float("-inf")
    s = ErrorStats.of([1.0, -1.0], [1.5, -1.0])
    assert (s.mse, s.max_abs) == (0.125, 0.5)
    assert s.sqnr_db == pytest.approx(10 * np.log10(2 / 0.25))


# -- activations -----------------------------------------------------------------------------

def test_quantize_act_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1000.0, -1000.0, 126.6])
    got = quant.quantize_act(x, 1.0, 0)
    assert got.dtype == np.int8
    assert got.tolist() == [0, 2, 2, 0, -2, -2, 127, -128, 127]
    assert quant.quantize_act(np.array([0.25, 0.75]), 0.5, -3).tolist() == [-3, -1]   # 0.5 -> 0, 1.5 -> 2


def test_dequantize_inverts_within_half_a_step():
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 3, 1000)
    s, z = quant.calibrate_act(x)
    assert s == (x.max() - x.min()) / 255
    y = quant.dequantize(quant.quantize_act(x, s, z), s, z)
    assert np.abs(y - x).max() <= s / 2 + 1e-12
    with pytest.raises(TypeError, match="integer dtype"):
        quant.dequantize(np.zeros(2), 1.0, 0)


def test_calibrate_act():
    s, z = quant.calibrate_act(np.array([-1.0, 3.0]))
    assert s == 4 / 255 and z == round(-128 + 1 / s) == -64
    assert quant.quantize_act(np.zeros(1), s, z)[0] == z                # zero is exact
    assert quant.quantize_act(np.array([-1.0, 3.0]), s, z).tolist() == [-128, 127]
    assert quant.calibrate_act(np.array([0.0, 5.0])) == (5 / 255, -128)     # ReLU output
    assert quant.calibrate_act(np.array([2.0, 5.0])) == (5 / 255, -128)     # zero included
    assert quant.calibrate_act(np.array([-2.0, 1.0]), symmetric=True) == (2 / 127, 0)
    assert quant.calibrate_act(np.zeros(3)) == (1.0, 0)
    with pytest.raises(ValueError, match="at least one"):
        quant.calibrate_act(np.zeros(0))
    with pytest.raises(ValueError, match="symmetric must be a bool"):
        quant.calibrate_act(np.ones(2), symmetric="no")


@pytest.mark.parametrize("scale, zp, match", [
    (0.0, 0, "scale must be a finite positive number, not 0.0"),
    (-1.0, 0, "scale.*-1.0"), (float("nan"), 0, "scale.*nan"), (True, 0, "scale.*True"),
    (1.0, 128, r"zero_point must be an integer in \[-128, 127\].*128"),
    (1.0, 1.5, "zero_point.*1.5"), (1.0, True, "zero_point.*True"),
])
def test_activation_refusals(scale, zp, match):
    with pytest.raises(ValueError, match=match):
        quant.quantize_act(np.zeros(2), scale, zp)
    with pytest.raises(ValueError, match=match):
        quant.dequantize(np.zeros(2, dtype=np.int8), scale, zp)


# -- linear layers ---------------------------------------------------------------------------

def make_layer(rng, k, n, *, relu=False, bias_scale=0.1, m=64):
    """Gaussian layer, input with an offset (so x_zero != 0), scales calibrated with margin."""
    w = rng.normal(0, 1 / np.sqrt(k), (k, n))
    b = rng.normal(0, bias_scale, n)
    x = rng.normal(0.3, 1.0, (m, k))
    xs, xz = quant.calibrate_act(x)
    y = x @ w + b
    ys, yz = quant.calibrate_act(np.maximum(y, 0) if relu else y * 1.25)
    return w, b, x, dict(x_scale=xs, x_zero=xz, y_scale=ys, y_zero=yz, relu=relu)


@pytest.mark.parametrize("setting", SETTINGS, ids=sid)
def test_linear_forward_against_float_reference(setting):
    fmt, group, sym = setting
    rng = np.random.default_rng(20 + int(fmt))
    w, b, x, kw = make_layer(rng, 203, 24, m=128)
    L = quant.quantize_linear(w, b, fmt=fmt, group=group, symmetric=sym, **kw)
    assert L.x_zero != 0
    y, ref = L.forward(x), L.float_reference(x)
    assert y.shape == (128, 24)
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < quant.LINEAR_REL_ERROR_BOUND[fmt]
    # and dequantized golden of explicitly quantized input is the same thing
    np.testing.assert_array_equal(
        quant.dequantize(L.golden(quant.quantize_act(x, L.x_scale, L.x_zero)), L.y_scale, L.y_zero), y)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("setting", SETTINGS, ids=sid)
def test_linear_golden_within_one_output_step_of_dequantized_float(setting, relu):
    """Separates the weight error from the integer pipeline: the device's output, dequantized,
    is within half an output step (+ bias rounding + multiplier error) of the float layer
    evaluated on the dequantized input and the weights the integers stand for. This pins down
    the bias and input-zero-point folding, the group scales and the requantization."""
    fmt, group, sym = setting
    rng = np.random.default_rng(40 + int(fmt) + (group or 0))
    w, b, x, kw = make_layer(rng, 203, 16, relu=relu, bias_scale=0.5)
    L = quant.quantize_linear(w, b, fmt=fmt, group=group, symmetric=sym, **kw)
    xq = quant.quantize_act(x, L.x_scale, L.x_zero)
    yq = L.golden(xq)
    assert yq.dtype == np.int8 and yq.shape == (64, 16)
    pre = quant.dequantize(xq, L.x_scale, L.x_zero) @ L.dequantized_weights + b
    ref = np.maximum(pre, 0) if relu else pre
    got = quant.dequantize(yq, L.y_scale, L.y_zero)
    bound = (0.5 * L.y_scale + np.abs(pre) * 2.0 ** -15
             + 0.51 * L.x_scale * L.unit[None, :] + 1e-12)
    inside = (yq < 127) & ((yq > -128) | relu)            # not saturated (ReLU clamps are fine)
    assert inside.mean() > 0.9
    assert (np.abs(got - ref)[inside] <= np.broadcast_to(bound, got.shape)[inside]).all()


@pytest.mark.parametrize("setting", SETTINGS, ids=sid)
def test_x_zero_folding_identity(setting):
    """A layer built with input zero point z on x_q equals the same layer built with z = 0 on
    x_q - z, bit for bit (the folding moves -z * sum(w) into the INT32 bias exactly)."""
    fmt, group, sym = setting
    rng = np.random.default_rng(60 + int(fmt))
    w, b, _, kw = make_layer(rng, 150, 10)
    for z in (-128, -37, 5, 127):
        L1 = quant.quantize_linear(w, b, fmt=fmt, group=group, symmetric=sym, **{**kw, "x_zero": z})
        L0 = quant.quantize_linear(w, b, fmt=fmt, group=group, symmetric=sym, **{**kw, "x_zero": 0})
        np.testing.assert_array_equal(L1.q, L0.q, strict=True)
        np.testing.assert_array_equal(L1.requant.multiplier, L0.requant.multiplier, strict=True)
        lo, hi = max(-128, -128 + z), min(127, 127 + z)
        xq = rng.integers(lo, hi + 1, (40, 150)).astype(np.int8)
        np.testing.assert_array_equal(L1.golden(xq), L0.golden((xq.astype(np.int64) - z).astype(np.int8)),
                                      strict=True)


@pytest.mark.parametrize("setting", SETTINGS, ids=sid)
def test_zero_input_gives_the_bias(setting):
    """Float input 0 is x_q = x_zero: the whole weight term cancels, the output is the bias."""
    fmt, group, sym = setting
    rng = np.random.default_rng(80)
    w, b, _, kw = make_layer(rng, 100, 12, bias_scale=1.0)
    kw["y_scale"] = np.abs(b).max() / 100
    L = quant.quantize_linear(w, b, fmt=fmt, group=group, symmetric=sym, **kw)
    y = quant.dequantize(L.golden(np.full((3, 100), L.x_zero, dtype=np.int8)), L.y_scale, L.y_zero)
    assert (np.abs(y - b) <= 0.5 * L.y_scale + np.abs(b) * 2 ** -15
            + 0.51 * L.x_scale * L.unit + 1e-12).all()


def test_linear_structure_and_packing():
    rng = np.random.default_rng(90)
    w, b, _, kw = make_layer(rng, 100, 6)
    for fmt, group in itertools.product(F, GROUPS):
        for bits in (2, 8, numerics.GSCALE_BITS):
            L = quant.quantize_linear(w, b, fmt=fmt, group=group, gscale_bits=bits, **kw)
            assert L.q.shape == (100, 6) and legal(L.q, fmt)
            assert L.requant.channels == 6 and L.requant.zero_point == kw["y_zero"]
            assert L.in_features == 100 and L.out_features == 6
            if group is None:
                assert L.group is None and L.w_scale.shape == (6,)
            else:
                assert L.group.size == group and L.group.scale.shape == (-(-100 // group), 6)
                assert (L.group.scale.max(axis=0) == 2 ** (bits - 1)).all()
                assert (L.group.scale < 2 ** numerics.GSCALE_BITS).all()
                np.testing.assert_allclose(L.w_scale, L.group.scale * L.unit, rtol=1e-15)
            p = L.packed()
            lanes = numerics.WEIGHT_LANES[fmt]
            assert p.dtype == np.uint8 and p.shape == (-(-100 // lanes), 6)
            np.testing.assert_array_equal(numerics.unpack_weights(p, fmt, 100), L.q, strict=True)
    # asymmetric per channel runs as groups of 128 sharing the channel's zero point, gscale 1
    L = quant.quantize_linear(w, b, fmt=F.INT4, symmetric=False, **kw)
    assert L.group_size is None and L.group.size == 128 and (L.group.scale == 1).all()
    np.testing.assert_array_equal(L.group.zero[0], L.w_zero, strict=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        L.relu = True


def test_more_gscale_bits_means_less_weight_error():
    rng = np.random.default_rng(91)
    w = rng.normal(0, 1, (256, 8)) * np.repeat(rng.uniform(0.05, 1, (8, 8)), 32, axis=0)
    err = [quant.quantize_linear(w, None, fmt=F.INT8, group=32, gscale_bits=bits, x_scale=0.01,
                                 y_scale=1.0).stats.mse for bits in (3, 6, 10)]
    assert err[0] > err[1] > err[2]


def test_float_reference_and_relu():
    w = np.array([[1.0, -1.0]])
    L = quant.quantize_linear(w, np.array([0.5, 0.0]), fmt=F.INT8, x_scale=0.01, y_scale=0.01,
                              y_zero=-100, relu=True)
    np.testing.assert_array_equal(L.float_reference(np.array([[1.0]])), [[1.5, 0.0]])
    y = L.forward(np.array([[1.0], [-1.0]]))
    assert (y >= 0).all()
    np.testing.assert_allclose(y, [[1.5, 0.0], [0.0, 1.0]], atol=0.011)


def test_dead_and_zero_channels_do_not_break_a_layer():
    """A channel with weights ~1e-45 next to a bias of 0.1 (a dead unit after weight decay)
    and an all-zero channel: the unit floors keep the folded bias in INT32, output = bias."""
    rng = np.random.default_rng(92)
    w = rng.normal(0, 0.1, (64, 4))
    w[:, 1] = rng.normal(0, 1e-45, 64)
    w[:, 2] = 0.0
    b = np.array([0.0, 0.1, -0.2, 0.05])
    x = rng.uniform(0, 1, (20, 64))
    for fmt, group in itertools.product(F, (None, 32)):
        L = quant.quantize_linear(w, b, fmt=fmt, group=group, x_scale=1 / 255, x_zero=-128,
                                  y_scale=0.01, y_zero=0)
        y = L.forward(x)
        tol = 0.0051 if not (fmt is F.POW2 and group is None) else 0.1
        np.testing.assert_allclose(y[:, 1], 0.1, atol=0.0051)
        np.testing.assert_allclose(y[:, 2], -0.2, atol=tol)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(fmt="FP8"), ValueError, "fmt must be.*'FP8'"),
    (dict(group=48), ValueError, "group must be.*48"),
    (dict(fmt=F.TERNARY, symmetric=False), ValueError, "symmetric only"),
    (dict(x_scale=0), ValueError, "x_scale must be a finite positive number, not 0"),
    (dict(y_scale=float("inf")), ValueError, "y_scale.*inf"),
    (dict(x_zero=-129), ValueError, r"x_zero must be an integer in \[-128, 127\].*-129"),
    (dict(y_zero=0.5), ValueError, "y_zero.*0.5"),
    (dict(relu="yes"), ValueError, "relu must be a bool.*'yes'"),
    (dict(gscale_bits=1), ValueError, r"gscale_bits must be an integer in \[2, 16\].*1"),
    (dict(gscale_bits=17), ValueError, "gscale_bits.*17"),
    (dict(gscale_bits=True), ValueError, "gscale_bits.*True"),
    (dict(bias=np.zeros(3)), ValueError, r"bias must have shape \(4,\).*\(3,\)"),
    (dict(bias=np.zeros((4, 1))), ValueError, r"bias must be 1-D.*\(4, 1\)"),
    (dict(bias=np.array([0, 0, np.inf, 0])), ValueError, "bias must be finite"),
    (dict(w=np.zeros(4)), ValueError, r"w must be 2-D.*\(4,\)"),
])
def test_quantize_linear_refusals(kw, exc, match):
    args = dict(w=np.ones((8, 4)), bias=np.zeros(4), fmt=F.INT8, x_scale=0.1, y_scale=0.1)
    args.update(kw)
    w, bias = args.pop("w"), args.pop("bias")
    with pytest.raises(exc, match=match):
        quant.quantize_linear(w, bias, **args)


def test_quantize_linear_is_keyword_only():
    with pytest.raises(TypeError):
        quant.quantize_linear(np.ones((8, 4)), None, F.INT8)


def test_bias_overflow_from_input_zero_point_is_refused():
    w = np.ones((1024, 2))
    w[:, 1] = 0.5
    with pytest.raises(ValueError, match=r"channel 0: the folded bias .* does not fit INT32.*"
                                         r"input zero point nearer 0.*gscale_bits"):
        quant.quantize_linear(w, None, fmt=F.INT8, group=32, gscale_bits=16, x_scale=0.01,
                              x_zero=-128, y_scale=100.0)
    # fine with a symmetric input or coarser group scales
    quant.quantize_linear(w, None, fmt=F.INT8, group=32, gscale_bits=16, x_scale=0.01, y_scale=100.0)
    quant.quantize_linear(w, None, fmt=F.INT8, group=32, x_scale=0.01, x_zero=-128, y_scale=100.0)


def test_multiplier_overflow_is_refused():
    w = np.ones((8, 3))
    with pytest.raises(ValueError, match="channel 0: requantization scale .* too large .*increase y_scale"):
        quant.quantize_linear(w, None, fmt=F.INT8, x_scale=1.0, y_scale=1e-9)


def test_edge_accumulator_bound_is_refused():
    w = np.ones((1 << 18, 1))                           # all positive: asymmetric zero point -128
    w[::2] = 2.0
    with pytest.raises(ValueError, match=r"channel 0: the worst-case accumulator .* 48 bits"):
        quant.quantize_linear(w, None, fmt=F.INT8, group=32, symmetric=False, gscale_bits=16,
                              x_scale=1.0, y_scale=1e6)


def test_golden_and_forward_refusals():
    L = quant.quantize_linear(np.ones((8, 4)), None, fmt=F.INT4, x_scale=0.1, y_scale=0.1)
    with pytest.raises(ValueError, match=r"x_q must be \(M, 8\).*\(2, 7\)"):
        L.golden(np.zeros((2, 7), dtype=np.int8))
    with pytest.raises(ValueError, match=r"x_q must be \(M, 8\).*\(8,\)"):
        L.golden(np.zeros(8, dtype=np.int8))
    with pytest.raises(TypeError, match="integer dtype"):
        L.golden(np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"\[-128, 127\]"):
        L.golden(np.full((2, 8), 200))
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        L.forward(np.zeros(8))
    with pytest.raises(ValueError, match=r"x must be \(M, 8\)"):
        L.float_reference(np.zeros((1, 9)))


# -- the accuracy pipeline ---------------------------------------------------------------------

def test_accuracy_pipeline_reduced():
    pytest.importorskip("sklearn")
    from sw import accuracy
    rep = accuracy.run(hidden=32, epochs=20, formats=(F.INT8, F.INT4), groups=(None, 32))
    assert rep.float_accuracy > 0.9
    assert len(rep.rows) == 8
    for r in rep.rows:
        if r.fmt is F.INT8:
            assert r.accuracy >= rep.float_accuracy - 0.02, r
        assert all(s > 15 for s in r.sqnr_db)
    text = accuracy.markdown(rep, "python -m sw.accuracy --hidden 32")
    assert "`python -m sw.accuracy --hidden 32`" in text
    assert "| INT8 | G=32 | asymmetric |" in text and "| float64 |" in text


def test_accuracy_names_the_extra_when_sklearn_is_missing(monkeypatch):
    from sw import accuracy
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"scikit-learn.*\[onnx\]"):
        accuracy.load_data()


# -- N:M sparse layers (the sparse DSP engine) ------------------------------------------------

SPARSE_FMTS = (F.INT8, F.INT4, F.INT2, F.TERNARY)


def sparse_args(rng, k=64, n=6):
    return dict(w=rng.normal(size=(k, n)), bias=rng.normal(size=n) * 0.3, x_scale=0.03,
                x_zero=-7, y_scale=0.1, y_zero=4)


@pytest.mark.parametrize("fmt", SPARSE_FMTS, ids=lambda f: f.name)
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8), (2, 8), (4, 4), (8, 8), (3, 8)])
@pytest.mark.parametrize("pair", [False, True])
def test_sparse_golden_is_the_dense_golden_of_the_pruned_weights(fmt, nm, pair):
    rng = np.random.default_rng(sum(nm) + int(fmt) + 10 * pair)
    a = sparse_args(rng, n=7 if pair else 6)            # odd N: the last column pairs alone
    w, bias = a.pop("w"), a.pop("bias")
    ql = quant.quantize_linear(w, bias, fmt=fmt, relu=fmt is F.INT2, sparse=nm,
                               pair_columns=pair, **a)
    sp = ql.sparse
    n, m = nm
    assert isinstance(sp, numerics.NMSparse) and (sp.n, sp.m, sp.fmt) == (n, m, fmt)
    assert (sp.k, sp.ncols) == w.shape and ql.group is None and ql.symmetric
    # the kept weights are prune_nm's (magnitude), the codes are zero elsewhere
    if pair and w.shape[1] % 2:
        mask = quant.prune_nm(np.c_[w, np.zeros(len(w))], n, m, pair_columns=True)[:, :-1]
    else:
        mask = quant.prune_nm(w, n, m, pair_columns=pair)
    np.testing.assert_array_equal(numerics.to_dense(sp), ql.q, strict=True)
    assert not ql.q[~mask].any()
    kept_rows = np.argwhere(mask.T)[:, 1].reshape(w.shape[1], -1).T     # ascending per column
    np.testing.assert_array_equal(np.sort(sp.rows(), axis=0), kept_rows, strict=True)
    if pair:                                            # one index per column pair
        np.testing.assert_array_equal(sp.idx[:, 0:-1:2], sp.idx[:, 1::2], strict=True)
    # golden: sparse_gemm + the per-channel epilogue == the dense golden of the pruned codes
    x = rng.integers(-128, 128, (9, w.shape[0]))
    dense = numerics.mixgemm(x, ql.q, fmt=fmt, requant=ql.requant)
    np.testing.assert_array_equal(ql.golden(x), dense, strict=True)
    np.testing.assert_array_equal(
        ql.golden(x), numerics.requantize_channels(numerics.sparse_gemm(x, sp), ql.requant),
        strict=True)
    # the same layer without its compressed form is the dense one, with the same output
    np.testing.assert_array_equal(dataclasses.replace(ql, sparse=None).golden(x), dense,
                                  strict=True)
    xf = rng.normal(size=(4, w.shape[0]))
    np.testing.assert_array_equal(ql.forward(xf), quant.dequantize(
        dense_golden(ql, quant.quantize_act(xf, ql.x_scale, ql.x_zero)), ql.y_scale, ql.y_zero),
        strict=True)


@pytest.mark.parametrize("share, pair, n", [(4, False, 12), (4, False, 10), (16, False, 7),
                                       (4, True, 12), (4, True, 11), (2, False, 7)])
def test_sparse_layer_with_shared_masks(share, pair, n):
    """``share``: every group of ``share`` columns (the last one possibly partial; with
    pair_columns and an odd N the last column pairs with a zero column) keeps the same rows,
    prune_nm's; the golden model is still the dense golden of the pruned codes."""
    rng = np.random.default_rng(20 + share + n + pair)
    a = sparse_args(rng, k=32, n=n)
    w, bias = a.pop("w"), a.pop("bias")
    ql = quant.quantize_linear(w, bias, fmt=F.INT4, sparse=(2, 8), pair_columns=pair,
                               share=share, **a)
    sp = ql.sparse
    wide = np.c_[w, np.zeros(len(w))] if pair and n % 2 else w
    mask = quant.prune_nm(wide, 2, 8, pair_columns=pair, share=share)[:, :n]
    np.testing.assert_array_equal(numerics.to_dense(sp) != 0, (ql.q != 0), strict=True)
    assert not ql.q[~mask].any()
    np.testing.assert_array_equal(quant.compress_nm(ql.q, mask, n=2, m=8, fmt=F.INT4).idx,
                                  sp.idx, strict=True)
    for g0 in range(0, n, share):
        grp = sp.idx[:, g0:g0 + share]
        np.testing.assert_array_equal(grp, np.repeat(grp[:, :1], grp.shape[1], axis=1),
                                      strict=True)
    x = rng.integers(-128, 128, (5, 32))
    np.testing.assert_array_equal(ql.golden(x), dense_golden(ql, x), strict=True)
    # a per-column layer of the same weights has different indices (the test can fail)
    alone = quant.quantize_linear(w, bias, fmt=F.INT4, sparse=(2, 8), **a)
    assert not np.array_equal(alone.sparse.idx, sp.idx)


def dense_golden(ql, xq):
    return numerics.mixgemm(xq, ql.q, fmt=ql.fmt, requant=ql.requant)


def test_sparse_layer_keeps_the_float_layer_and_counts_the_pruning():
    rng = np.random.default_rng(3)
    a = sparse_args(rng)
    w, bias = a.pop("w"), a.pop("bias")
    dense = quant.quantize_linear(w, bias, fmt=F.INT8, **a)
    sparse = quant.quantize_linear(w, bias, fmt=F.INT8, sparse=numerics.NMPattern.NM2_4, **a)
    assert dense.sparse is None
    np.testing.assert_array_equal(sparse.w, w, strict=True)            # as given, unpruned
    np.testing.assert_array_equal(sparse.float_reference(np.eye(64)[:3]),
                                  dense.float_reference(np.eye(64)[:3]), strict=True)
    # half the weights are gone: the error against the float layer is much larger
    assert sparse.stats.mse > 10 * dense.stats.mse
    # an NMPattern and its (n, m) give the same layer
    again = quant.quantize_linear(w, bias, fmt=F.INT8, sparse=(2, 4), **a)
    np.testing.assert_array_equal(again.q, sparse.q, strict=True)
    np.testing.assert_array_equal(again.sparse.values, sparse.sparse.values, strict=True)
    np.testing.assert_array_equal(again.sparse.idx, sparse.sparse.idx, strict=True)
    # scales come from the kept weights only: minmax maps each column's largest kept |w|
    mm = quant.quantize_linear(w, bias, fmt=F.INT4, method="minmax", sparse=(1, 4), **a)
    kept = np.where(quant.prune_nm(w, 1, 4), np.abs(w), 0).max(axis=0)
    np.testing.assert_allclose(mm.w_scale, kept / 7)


def test_dense_layers_unchanged_by_the_sparse_parameters():
    rng = np.random.default_rng(4)
    for fmt, group, sym in ((F.INT4, 32, True), (F.INT8, None, False), (F.POW2, None, True)):
        a = sparse_args(rng)
        w, bias = a.pop("w"), a.pop("bias")
        old = quant.quantize_linear(w, bias, fmt=fmt, group=group, symmetric=sym, **a)
        new = quant.quantize_linear(w, bias, fmt=fmt, group=group, symmetric=sym, sparse=None,
                                    pair_columns=False, **a)
        assert new.sparse is None and old.sparse is None
        for f in ("q", "w_scale", "w_zero", "unit"):
            np.testing.assert_array_equal(getattr(new, f), getattr(old, f), strict=True)
        x = rng.integers(-128, 128, (3, w.shape[0]))
        np.testing.assert_array_equal(new.golden(x), old.golden(x), strict=True)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(sparse=(2, 4), group=32), ValueError,
     r"an N:M sparse layer \(sparse=\(2, 4\)\) cannot have groups .*; pass group=None"),
    (dict(sparse=(2, 4), symmetric=False), ValueError,
     "cannot have asymmetric weights .*; pass symmetric=True"),
    (dict(sparse=(2, 4), fmt=F.POW2), ValueError, "cannot have POW2 weights"),
    (dict(pair_columns=True), ValueError, "pair_columns applies to N:M sparse layers only"),
    (dict(sparse=(2, 4), pair_columns=1), ValueError, "pair_columns must be a bool"),
    (dict(share=4), ValueError, r"share applies to N:M sparse layers only; .* share=1 \(not 4\)"),
    (dict(share=0), ValueError, "share must be a positive integer"),
    (dict(sparse=(2, 4), share=2.5), ValueError, "share must be a positive integer"),
    (dict(sparse=(2, 4), pair_columns=True, share=3), ValueError,
     "with pair_columns=True, share must be 1 or even"),
    (dict(sparse=(2, 3)), ValueError, r"m \(the block size\) must be one of \(4, 8\), not 3"),
    (dict(sparse=(0, 4)), ValueError, r"n \(weights kept per block of 4\)"),
    (dict(sparse=(5, 4)), ValueError, r"n \(weights kept per block of 4\)"),
    (dict(sparse=(2, 4, 1)), ValueError, r"sparse must be None \(dense\), an \(n, m\) pair"),
    (dict(sparse="2:4"), ValueError, "sparse must be None"),
    (dict(sparse=3), ValueError, "sparse must be None"),
    (dict(sparse=(2, 8), w=np.ones((12, 4))), ValueError,
     "K = 12 is not a multiple of the block size m = 8; pad K with zero rows to 16"),
])
def test_sparse_quantize_linear_refusals(kw, exc, match):
    args = dict(w=np.ones((16, 4)), bias=np.zeros(4), fmt=F.INT8, x_scale=0.1, y_scale=0.1)
    args.update(kw)
    w, bias = args.pop("w"), args.pop("bias")
    with pytest.raises(exc, match=match):
        quant.quantize_linear(w, bias, **args)


def test_sparse_golden_refusals():
    rng = np.random.default_rng(5)
    a = sparse_args(rng, k=16, n=3)
    w, bias = a.pop("w"), a.pop("bias")
    ql = quant.quantize_linear(w, bias, fmt=F.INT4, sparse=(2, 4), **a)
    with pytest.raises(ValueError, match=r"x_q must be \(M, 16\)"):
        ql.golden(np.zeros((2, 12), np.int8))
    with pytest.raises(ValueError, match="a"):
        ql.golden(np.full((2, 16), 300))


# -- weights already N:M sparse: find_nm ---------------------------------------------------------

@pytest.mark.parametrize("nm", [(1, 4), (2, 4), (2, 8), (4, 8), (3, 4)])
@pytest.mark.parametrize("pair", [False, True])
def test_find_nm_recovers_pruned_codes_exactly(nm, pair):
    """Codes pruned n:m (some kept codes zero too) are found as n:m, not denser, and
    compressed exactly; every block keeps its non-zeros."""
    n, m = nm
    rng = np.random.default_rng(n * 10 + m + pair)
    w = rng.normal(size=(8 * m, 6))
    mask = quant.prune_nm(w, n, m, pair_columns=pair)
    q = np.where(mask, rng.integers(-8, 8, size=w.shape), 0)     # kept codes may be 0 too
    order = [(1, 8), (1, 4), (2, 8), (2, 4), (4, 8), (3, 4)]       # sparsest first
    sp = quant.find_nm(q, order, pair_columns=pair, fmt="INT4")
    np.testing.assert_array_equal(numerics.to_dense(sp), q, strict=True)
    # the first pattern in the list that holds every block of q
    nz = q != 0
    if pair:
        nz = np.repeat(nz[:, 0::2] | nz[:, 1::2], 2, axis=1)
    fits = [(a, b) for a, b in order
            if q.shape[0] % b == 0 and nz.reshape(-1, b, 6).sum(axis=1).max() <= a]
    assert (sp.n, sp.m) == fits[0] and sp.n / sp.m <= n / m
    assert sp.fmt == F.INT4
    if pair:                                   # the packed engine's pairs share their indices
        np.testing.assert_array_equal(sp.idx[:, 0::2], sp.idx[:, 1::2])


def test_find_nm_none_and_errors():
    q = np.ones((8, 3), dtype=np.int64)
    q[::4] = 0                                 # 3 of 4 non-zero
    assert quant.find_nm(q, [(1, 4), (2, 4), (2, 8)]) is None
    sp = quant.find_nm(q, [(2, 4), (3, 4)])
    assert (sp.n, sp.m) == (3, 4)
    np.testing.assert_array_equal(numerics.to_dense(sp), q, strict=True)
    assert quant.find_nm(np.zeros((6, 2), np.int64), [(1, 4)]) is None      # 4 does not divide 6
    with pytest.raises(TypeError, match="integer dtype"):
        quant.find_nm(np.zeros((4, 2)), [(1, 4)])
    with pytest.raises(ValueError, match="even number of columns"):
        quant.find_nm(np.zeros((4, 3), np.int64), [(1, 4)], pair_columns=True)
    with pytest.raises(ValueError):
        quant.find_nm(np.zeros((4, 2), np.int64), [(5, 4)])
