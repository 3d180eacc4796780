"""The MixPE golden models of sw.numerics (weight formats, packing, group dequantization,
per-channel requantization, mixgemm) against independent references: tables written out by
hand, Python-integer loops, float64 computations that are exact at these magnitudes, and
Fractions."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from sw import numerics
from sw.numerics import ChannelRequant, GroupQuant, Requant, WeightFormat as F

#: value of every code, written out from the format definitions (docs/numerics.md)
DECODE_TABLE = {
    F.INT8: [c - 256 if c >= 128 else c for c in range(256)],
    F.INT4: [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1],
    F.INT2: [0, 1, -2, -1],
    F.TERNARY: [0, 1, 0, -1],                     # 0b10 reads as a second zero
    F.POW2: [1, 2, 4, 8, 16, 32, 64, 128, -1, -2, -4, -8, -16, -32, -64, -128],
}
BITS = {F.INT8: 8, F.INT4: 4, F.INT2: 2, F.TERNARY: 2, F.POW2: 4}
LANES = {F.INT8: 1, F.INT4: 2, F.INT2: 4, F.TERNARY: 4, F.POW2: 1}


def legal_values(fmt):
    return sorted(set(DECODE_TABLE[fmt]))


def ref_code(v, fmt):
    """Code of value v by searching the table (canonical: the first code, so ternary 0 -> 0b00)."""
    return DECODE_TABLE[fmt].index(int(v))


def random_weights(rng, fmt, k, n):
    return rng.choice(np.array(legal_values(fmt), dtype=np.int64), size=(k, n))


def test_format_constants_match_the_contract():
    for fmt in F:
        assert numerics.WEIGHT_BITS[fmt] == BITS[fmt]
        assert numerics.WEIGHT_LANES[fmt] == LANES[fmt]
        vals = legal_values(fmt)
        assert numerics.weight_range(fmt) == (vals[0], vals[-1])


@pytest.mark.parametrize("fmt", list(F))
def test_decode_every_code(fmt):
    codes = np.arange(1 << BITS[fmt])
    np.testing.assert_array_equal(numerics.decode_weights(codes, fmt),
                                  np.array(DECODE_TABLE[fmt], dtype=np.int64), strict=True)
    with pytest.raises(ValueError):
        numerics.decode_weights(np.array([1 << BITS[fmt]]), fmt)


@pytest.mark.parametrize("fmt", list(F))
def test_encode_every_legal_value_and_refuse_the_rest(fmt):
    vals = np.array(legal_values(fmt), dtype=np.int64)
    codes = numerics.encode_weights(vals, fmt)
    np.testing.assert_array_equal(codes, np.array([ref_code(v, fmt) for v in vals]), strict=True)
    np.testing.assert_array_equal(numerics.decode_weights(codes, fmt), vals, strict=True)
    lo, hi = vals[0], vals[-1]
    illegal = [v for v in range(lo - 3, hi + 4) if v not in set(vals.tolist())]
    for v in illegal:
        with pytest.raises(ValueError):
            numerics.encode_weights(np.array([v]), fmt)


def ref_pack(q, fmt):
    """Byte [kb, n] = sum_j code(q[kb*lanes + j, n]) << (bits*j), zero codes past K."""
    k, n = q.shape
    lanes, bits = LANES[fmt], BITS[fmt]
    kb = -(-k // lanes)
    out = np.zeros((kb, n), dtype=np.uint8)
    for b, c in itertools.product(range(kb), range(n)):
        byte = 0
        for j in range(lanes):
            if b * lanes + j < k:
                byte |= ref_code(q[b * lanes + j, c], fmt) << (bits * j)
        out[b, c] = byte
    return out


@pytest.mark.parametrize("fmt", list(F))
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 33, 64, 127])
def test_pack_unpack_roundtrip_and_reference(fmt, k):
    rng = np.random.default_rng(100 * int(fmt) + k)
    q = random_weights(rng, fmt, k, 3)
    p = numerics.pack_weights(q, fmt)
    assert p.dtype == np.uint8 and p.shape == (-(-k // LANES[fmt]), 3)
    np.testing.assert_array_equal(p, ref_pack(q, fmt), strict=True)
    np.testing.assert_array_equal(numerics.unpack_weights(p, fmt, k), q, strict=True)
    # the padding past K is zero bits (code 0 = weight 0 for every packed format)
    used = (k % LANES[fmt]) * BITS[fmt]
    if used:
        assert not (p[-1].astype(np.int64) >> used).any()
        # reading the padding back gives zero weights
        full = numerics.unpack_weights(p, fmt, p.shape[0] * LANES[fmt])
        assert not full[k:].any()


def test_pack_bit_order_examples():
    q = np.array([[1], [-2], [0], [-1]])
    assert numerics.pack_weights(q, F.INT2)[0, 0] == 0b11_00_10_01
    t = np.array([[1], [-1], [0], [1]])
    assert numerics.pack_weights(t, F.TERNARY)[0, 0] == 0b01_00_11_01
    assert numerics.pack_weights(np.array([[-8], [7]]), F.INT4)[0, 0] == 0x78
    assert numerics.pack_weights(np.array([[-128], [1]]), F.POW2)[:, 0].tolist() == [0b1111, 0]


def test_unpack_refusals():
    with pytest.raises(ValueError, match="high nibble"):
        numerics.unpack_weights(np.array([[0x10]], dtype=np.uint8), F.POW2, 1)
    with pytest.raises(ValueError, match="k must be"):
        numerics.unpack_weights(np.zeros((2, 1), dtype=np.uint8), F.INT4, 5)
    with pytest.raises(ValueError, match="k must be"):
        numerics.unpack_weights(np.zeros((2, 1), dtype=np.uint8), F.INT4, 0)
    with pytest.raises(ValueError, match="2-D"):
        numerics.pack_weights(np.zeros(4, dtype=np.int64), F.INT8)
    with pytest.raises(ValueError, match="unknown weight format"):
        numerics.pack_weights(np.zeros((1, 1), dtype=np.int64), 9)


# -- group dequantization ----------------------------------------------------------------------

def random_group(rng, k, n, size, *, zero=True):
    ng = -(-k // size)
    scale = rng.integers(0, 1 << numerics.GSCALE_BITS, (ng, n))
    zp = rng.integers(-128, 128, (ng, n)) if zero else np.zeros((ng, n), dtype=np.int64)
    return GroupQuant(size, scale, zp)


def expanded_float(a, q, gq):
    """a @ (gscale * (q - z)) with the tables expanded to every row, in float64 (exact here:
    every partial sum stays below 2**53)."""
    k = q.shape[0]
    s = np.repeat(gq.scale, gq.size, axis=0)[:k].astype(np.float64)
    z = np.repeat(gq.zero, gq.size, axis=0)[:k].astype(np.float64)
    return a.astype(np.float64) @ (s * (q - z))


@pytest.mark.parametrize("fmt", list(F))
@pytest.mark.parametrize("size", numerics.GROUP_SIZES)
@pytest.mark.parametrize("k", [1, 31, 33, 100, 129, 257])
def test_group_dequant_against_float64(fmt, size, k):
    rng = np.random.default_rng(k * 7 + size + int(fmt))
    a = rng.integers(-128, 128, (5, k)).astype(np.int8)
    a[0] = -128                                       # extremes
    q = random_weights(rng, fmt, k, 4)
    gq = random_group(rng, k, 4, size)
    got = numerics.group_dequant(a, q, gq)
    assert got.dtype == np.int64
    ref = expanded_float(a, q, gq)
    assert np.abs(ref).max() < 2.0 ** 53
    np.testing.assert_array_equal(got, ref.astype(np.int64), strict=True)


def test_group_sums_against_loops():
    rng = np.random.default_rng(5)
    k, size = 70, 32
    a = rng.integers(-128, 128, (3, k)).astype(np.int8)
    q = rng.integers(-8, 8, (k, 2))
    P, S = numerics.group_sums(a, q, size)
    assert P.shape == (3, 3, 2) and S.shape == (3, 3)
    for g, m, n in itertools.product(range(3), range(3), range(2)):
        ks = range(g * size, min(k, (g + 1) * size))
        assert P[g, m, n] == sum(int(a[m, i]) * int(q[i, n]) for i in ks)
        assert S[g, m] == sum(int(a[m, i]) for i in ks)


def test_group_dequant_brute_force_small():
    rng = np.random.default_rng(6)
    k, size = 40, 32
    a = rng.integers(-128, 128, (2, k)).astype(np.int8)
    q = rng.integers(-2, 2, (k, 3))
    gq = random_group(rng, k, 3, size)
    got = numerics.group_dequant(a, q, gq)
    for m, n in itertools.product(range(2), range(3)):
        want = sum(int(gq.scale[i // size, n]) * int(a[m, i]) * (int(q[i, n]) - int(gq.zero[i // size, n]))
                   for i in range(k))
        assert got[m, n] == want


def test_group_dequant_refuses_float_weights():
    gq = GroupQuant(32, np.ones((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="integer dtype"):
        numerics.group_dequant(np.ones((1, 4), dtype=np.int8), np.full((4, 1), 0.7), gq)


def test_group_dequant_table_shape_refused():
    gq = GroupQuant(32, np.ones((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        numerics.group_dequant(np.zeros((1, 65), dtype=np.int8), np.zeros((65, 3), dtype=np.int64), gq)


@pytest.mark.parametrize("kw, match", [
    (dict(size=16), "group size"),
    (dict(size=0), "group size"),
    (dict(scale=np.full((1, 1), 1 << 16)), "group scale"),
    (dict(scale=np.full((1, 1), -1)), "group scale"),
    (dict(zero=np.full((1, 1), 128)), "group zero point"),
    (dict(zero=np.zeros((1, 2), dtype=np.int64)), "both be"),
    (dict(scale=np.ones((1, 1)) * 1.0), "integer dtype"),
])
def test_group_quant_validation(kw, match):
    args = dict(size=32, scale=np.ones((1, 1), dtype=np.int64), zero=np.zeros((1, 1), dtype=np.int64))
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        GroupQuant(**args)


# -- per-channel requantization ---------------------------------------------------------------

def frac_requant(x, m, s, zp, relu):
    """Exact rational reference: floor(x * m / 2**s + 1/2) + zp, then clamp."""
    r = math.floor(Fraction(int(x) * int(m), 1 << int(s)) + Fraction(1, 2)) + zp
    return max(zp if relu else -128, min(127, r))


EXTREME_40 = [-(1 << 40), -(1 << 40) + 1, -(1 << 31), -12345, -3, -2, -1, 0, 1, 2, 3, 12345,
              (1 << 31) - 1, (1 << 40) - 1]


@pytest.mark.parametrize("shift", range(64))
def test_requantize_channels_equals_scalar_requantize_every_shift(shift):
    """One channel with bias 0 is the per-layer Requant, for every shift the descriptor takes;
    accumulators at the extremes of requantize's range and at the rounding ties of the shift."""
    rng = np.random.default_rng(shift)
    ties = [] if shift == 0 else [t + d for t in (1 << (shift - 1), -(1 << (shift - 1)))
                                  for d in (-1, 0, 1)
                                  if -(1 << 40) <= t + d < (1 << 40)]
    acc = np.array(EXTREME_40 + ties + rng.integers(-(1 << 40), 1 << 40, 40).tolist(), dtype=np.int64)
    for mult, zp, relu in [(1, 0, False), ((1 << 16) - 1, -128, False), ((1 << 16) - 1, 127, True),
                           (1 << 15, 5, True), (int(rng.integers(0, 1 << 16)), -7, False)]:
        rq = Requant(mult, shift, zp, relu)
        got = numerics.requantize_channels(acc[:, None], ChannelRequant.from_requant(rq, 1))
        np.testing.assert_array_equal(got[:, 0], numerics.requantize(acc, rq), strict=True)
        # bias is added before the multiplier: same as requantize(acc + bias)
        bias = int(rng.integers(-(1 << 31), 1 << 31))
        inner = acc[np.abs(acc) < (1 << 39)]
        got = numerics.requantize_channels(inner[:, None], ChannelRequant.from_requant(rq, 1, [bias]))
        np.testing.assert_array_equal(got[:, 0], numerics.requantize(inner + bias, rq), strict=True)


@pytest.mark.parametrize("shift", range(64))
def test_requantize_channels_at_the_48_bit_edge(shift):
    """Beyond requantize's 2**40 range, up to the epilogue's 48 bits: against Fractions."""
    lo, hi = numerics.int_range(numerics.EDGE_ACC_BITS)
    acc = np.array([lo, lo + 1, lo + (1 << 31), -1, 0, 1, hi - (1 << 31) + 1, hi - 1, hi])
    mults = [0, 1, (1 << 16) - 1]
    bias = np.array([0, (1 << 31) - 1, -(1 << 31)])
    for mult, zp, relu in [(m, zp, relu) for m in mults for zp in (-128, 0, 127) for relu in (False, True)]:
        b = np.where(acc[:, None] + bias[None, :] > hi, 0, bias[None, :])
        b = np.where(acc[:, None] + b < lo, 0, b)
        for row in range(len(acc)):
            crq = ChannelRequant(np.full(3, mult), np.full(3, shift), b[row], zp, relu)
            got = numerics.requantize_channels(np.full((1, 3), acc[row]), crq)[0]
            want = [frac_requant(int(acc[row]) + int(b[row, c]), mult, shift, zp, relu) for c in range(3)]
            assert got.tolist() == want, (acc[row], mult, shift, zp, relu)


def test_requantize_channels_per_channel_parameters():
    rng = np.random.default_rng(7)
    n = 16
    mult = rng.integers(0, 1 << 16, n)
    shift = rng.integers(0, 64, n)
    bias = rng.integers(-(1 << 31), 1 << 31, n)
    acc = rng.integers(-(1 << 44), 1 << 44, (20, n))
    crq = ChannelRequant(mult, shift, bias, -3, False)
    got = numerics.requantize_channels(acc, crq)
    for m_, c in itertools.product(range(20), range(n)):
        assert got[m_, c] == frac_requant(acc[m_, c] + bias[c], mult[c], shift[c], -3, False)


def test_requantize_channels_edge_accumulator_bound():
    lo, hi = numerics.int_range(numerics.EDGE_ACC_BITS)
    crq = ChannelRequant(np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    assert numerics.requantize_channels(np.array([[hi]]), crq)[0, 0] == 127
    assert numerics.requantize_channels(np.array([[lo]]), crq)[0, 0] == -128
    for bad in (hi + 1, lo - 1):
        with pytest.raises(ValueError, match="48 bits"):
            numerics.requantize_channels(np.array([[bad]]), crq)
    plus = ChannelRequant(np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64))
    with pytest.raises(ValueError, match="48 bits"):
        numerics.requantize_channels(np.array([[hi]]), plus)          # the bias pushes it over
    minus = ChannelRequant(np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64), -np.ones(1, dtype=np.int64))
    assert numerics.requantize_channels(np.array([[hi + 1]]), minus)[0, 0] == 127


def test_requantize_channels_refuses_huge_unsigned_accumulators():
    crq = ChannelRequant(np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError):
        numerics.requantize_channels(np.array([[2 ** 64 - 1]], dtype=np.uint64), crq)


def test_requantize_channels_refusals():
    crq = ChannelRequant(np.ones(2, dtype=np.int64), np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64))
    with pytest.raises(TypeError, match="integer dtype"):
        numerics.requantize_channels(np.zeros((1, 2)), crq)
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        numerics.requantize_channels(np.zeros((1, 3), dtype=np.int64), crq)
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        numerics.requantize_channels(np.zeros(2, dtype=np.int64), crq)


@pytest.mark.parametrize("kw, match", [
    (dict(multiplier=[1 << 16]), "multiplier"),
    (dict(multiplier=[-1]), "multiplier"),
    (dict(shift=[64]), "shift"),
    (dict(bias=[1 << 31]), "bias"),
    (dict(bias=[-(1 << 31) - 1]), "bias"),
    (dict(zero_point=128), "zero_point"),
    (dict(zero_point=True), "zero_point"),
    (dict(relu=1), "relu"),
    (dict(shift=[0, 0]), "1-D of one length"),
])
def test_channel_requant_validation(kw, match):
    args = dict(multiplier=[1], shift=[0], bias=[0])
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ChannelRequant(**{k: (np.array(v) if isinstance(v, list) else v) for k, v in args.items()})


# -- mixgemm ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(F))
def test_mixgemm_against_float64(fmt):
    rng = np.random.default_rng(10 + int(fmt))
    k, n = 77, 5
    a = rng.integers(-128, 128, (6, k)).astype(np.int8)
    q = random_weights(rng, fmt, k, n)
    raw = numerics.mixgemm(a, q, fmt=fmt)
    assert raw.dtype == np.int32
    np.testing.assert_array_equal(raw, (a.astype(np.float64) @ q).astype(np.int32), strict=True)
    gq = random_group(rng, k, n, 32)
    gq = GroupQuant(32, gq.scale >> 8, gq.zero)                  # keep RAW32 in range
    raw = numerics.mixgemm(a, q, fmt=fmt, group=gq)
    np.testing.assert_array_equal(raw, expanded_float(a, q, gq).astype(np.int32), strict=True)
    # the epilogue: a scalar Requant is the one-channel form
    rq = Requant(20000, 24, 3, True)
    acc = expanded_float(a, q, gq).astype(np.int64)
    y = numerics.mixgemm(a, q, fmt=fmt, group=gq, requant=rq)
    np.testing.assert_array_equal(y, numerics.requantize(acc, rq), strict=True)
    crq = ChannelRequant(np.arange(n) * 1000 + 1, np.arange(n) + 10, np.arange(n) * -1000, -5, False)
    y = numerics.mixgemm(a, q, fmt=fmt, group=gq, requant=crq)
    for m_, c in itertools.product(range(6), range(n)):
        assert y[m_, c] == frac_requant(acc[m_, c] + crq.bias[c], crq.multiplier[c], crq.shift[c], -5, False)


def test_mixgemm_refusals():
    a = np.ones((2, 4), dtype=np.int8)
    q = np.ones((4, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="unknown weight format"):
        numerics.mixgemm(a, q, fmt=7)
    with pytest.raises(ValueError, match="unknown weight format"):
        numerics.mixgemm(a, q, fmt="INT3")
    with pytest.raises(TypeError, match="integer dtype"):
        numerics.mixgemm(a, q.astype(np.float64))
    with pytest.raises(TypeError, match="integer dtype"):
        numerics.mixgemm(a.astype(np.float64), q)
    with pytest.raises(ValueError, match=r"\[-128, 127\]"):
        numerics.mixgemm(np.full((1, 4), 128), q)
    for fmt, bad in [(F.INT4, 8), (F.INT2, 2), (F.TERNARY, 2), (F.TERNARY, -2), (F.POW2, 0),
                     (F.POW2, 3), (F.POW2, 256), (F.INT8, -129)]:
        qq = q.copy()
        qq[1, 1] = bad
        with pytest.raises(ValueError):
            numerics.mixgemm(a, qq, fmt=fmt)
    with pytest.raises(ValueError, match="K >= 1|got"):
        numerics.mixgemm(a, np.ones((5, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="K >= 1"):
        numerics.mixgemm(np.ones((2, 0), dtype=np.int8), np.ones((0, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="channels"):
        numerics.mixgemm(a, q, requant=ChannelRequant.from_requant(Requant(1, 0), 2))
    with pytest.raises(ValueError, match="int32"):
        numerics.mixgemm(np.full((1, 128), -128, dtype=np.int8), np.full((128, 1), -128, dtype=np.int64),
                         group=GroupQuant(128, np.full((1, 1), 1 << 15), np.zeros((1, 1), dtype=np.int64)))
    gq = GroupQuant(32, np.ones((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="tables of shape"):
        numerics.mixgemm(a, q, group=gq)
