"""Golden models of the INT8 datapath against float and brute-force references."""

import itertools

import numpy as np
import pytest

from sw import numerics, layout
from sw.numerics import Requant, OutMode


def brute_gemm(a, w):
    M, K = a.shape
    N = w.shape[1]
    return np.array([[sum(int(a[i, k]) * int(w[k, j]) for k in range(K)) for j in range(N)]
                     for i in range(M)], dtype=np.int64)


def test_gemm_matches_brute_force_and_float():
    rng = np.random.default_rng(0)
    for M, K, N in [(1, 1, 1), (3, 7, 5), (8, 33, 2)]:
        a = rng.integers(-128, 128, (M, K)).astype(np.int8)
        w = rng.integers(-128, 128, (K, N)).astype(np.int8)
        got = numerics.gemm(a, w)
        np.testing.assert_array_equal(got, brute_gemm(a, w), strict=True)
        # float64 is exact for these magnitudes (< 2**53): an independent reference
        np.testing.assert_array_equal(got, (a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64))


@pytest.mark.parametrize("k", [1, 2, 3, 255, 256, 4096, 65535])
def test_acc_bits_is_tight_at_the_bounds(k):
    bits = numerics.acc_bits(k)
    hi = k * 128 * 128            # -128 * -128 summed k times: the largest sum
    lo = k * -128 * 127
    assert hi <= 2 ** (bits - 1) - 1 and lo >= -2 ** (bits - 1)
    assert hi > 2 ** (bits - 2) - 1 or lo < -2 ** (bits - 2), "one bit fewer would also do"
    a = np.full((1, k), -128, dtype=np.int8)
    assert numerics.gemm(a, a.T)[0, 0] == hi


def test_acc_bits_other_widths():
    assert numerics.acc_bits(1, 8, 4) == 12          # -128 * -8 = 1024 needs 12 bits signed
    assert numerics.acc_bits(1, 8, 4, w_signed=False) == 12   # -128 * 15 = -1920
    assert numerics.acc_bits(128, 8, 4, w_signed=False) == 19  # MixPE: P_g >= 19 bits


def ref_requant(acc, rq):
    """Float/fraction reference: exact rational value, ties rounded up, then clamp."""
    from fractions import Fraction
    import math
    v = Fraction(int(acc) * rq.multiplier, 2 ** rq.shift)
    r = math.floor(v + Fraction(1, 2)) + rq.zero_point
    lo = rq.zero_point if rq.relu else -128
    return max(lo, min(127, r))


def test_requantize_against_fraction_reference():
    rng = np.random.default_rng(1)
    accs = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 2000), [0, 1, -1, 2 ** 31 - 1, -2 ** 31]])
    for rq in [Requant(1, 0), Requant(3, 1), Requant(65535, 40, 3, True), Requant(12345, 20, -7),
               Requant(1 << 15, 16, 127), Requant(0, 0, -128), Requant(7, 3, 0, True)]:
        got = numerics.requantize(accs, rq)
        want = np.array([ref_requant(x, rq) for x in accs], dtype=np.int8)
        np.testing.assert_array_equal(got, want, strict=True)


def test_requantize_ties_round_up_even_for_negatives():
    rq = Requant(1, 1)
    np.testing.assert_array_equal(numerics.requantize(np.array([-3, -1, 1, 3]), rq),
                                  np.array([-1, 0, 1, 2], dtype=np.int8), strict=True)


def test_requantize_saturates():
    rq = Requant(65535, 0, 0)
    got = numerics.requantize(np.array([10 ** 6, -10 ** 6]), rq)
    np.testing.assert_array_equal(got, np.array([127, -128], dtype=np.int8), strict=True)
    assert numerics.requantize(np.array([-5]), Requant(1, 0, 10, True))[0] == 10   # ReLU at zp


@pytest.mark.parametrize("bad", [dict(multiplier=-1, shift=0), dict(multiplier=1 << 16, shift=0),
                                 dict(multiplier=1, shift=64), dict(multiplier=1, shift=0, zero_point=128),
                                 dict(multiplier=1.5, shift=0), dict(multiplier=1, shift=0, relu=1)])
def test_requant_validation(bad):
    with pytest.raises(ValueError, match="Requant"):
        Requant(**bad)


def test_to_dyadic_relative_error():
    rng = np.random.default_rng(2)
    for s in np.concatenate([10.0 ** rng.uniform(-6, 2, 500), [1.0, 0.5, 2 ** -20]]):
        mult, shift = numerics.to_dyadic(float(s))
        assert 0 <= mult < 2 ** 16 and 0 <= shift < 64
        assert abs(mult / 2 ** shift - s) / s <= 2 ** -16
    assert numerics.to_dyadic(0.0) == (0, 0)
    with pytest.raises(ValueError):
        numerics.to_dyadic(float("nan"))


def test_gemm_rejects_bad_input():
    with pytest.raises(TypeError, match="integer dtype"):
        numerics.gemm(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int8))
    with pytest.raises(ValueError, match=r"\[-128, 127\]"):
        numerics.gemm(np.full((1, 1), 128), np.ones((1, 1), dtype=np.int8))
    with pytest.raises(ValueError, match="shape|got"):
        numerics.gemm(np.ones((2, 3), dtype=np.int8), np.ones((2, 3), dtype=np.int8))


def test_mpgemm_raw_and_int8():
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (4, 9)).astype(np.int8)
    w = rng.integers(-128, 128, (9, 3)).astype(np.int8)
    assert numerics.mpgemm(a, w).dtype == np.int32
    rq = Requant(1000, 14, 2)
    np.testing.assert_array_equal(numerics.mpgemm(a, w, rq), numerics.requantize(brute_gemm(a, w), rq),
                                  strict=True)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32])
def test_pack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    lo, hi = numerics.int_range(bits)
    v = rng.integers(lo, hi + 1, 37)
    data = numerics.pack_int(v, bits)
    assert len(data) == -(-37 * bits // 8)
    np.testing.assert_array_equal(numerics.unpack_int(data, bits, 37), v, strict=True)


def test_pack_little_endian_element0_low_bits():
    assert numerics.pack_int([1, 2], 4) == bytes([0x21])
    assert numerics.pack_int([-1, 0, 1, -2], 2) == bytes([0b10_01_00_11])
    assert numerics.pack_int([0x1234], 16) == bytes([0x34, 0x12])


@pytest.mark.parametrize("rows,cols", [(1, 1), (4, 4), (2, 8)])
def test_layout_addresses(rows, cols):
    """Every element lands at the address the core's sequencer reads it from."""
    rng = np.random.default_rng(4)
    M, K, N = 5, 3, 11
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    ai, wi = layout.a_image(a, rows), layout.w_image(w, cols)
    for m, k in itertools.product(range(M), range(K)):
        assert np.uint8(ai[((m // rows) * K + k) * rows + m % rows]).view(np.int8) == a[m, k]
    for k, n in itertools.product(range(K), range(N)):
        assert np.uint8(wi[((n // cols) * K + k) * cols + n % cols]).view(np.int8) == w[k, n]
    raw = np.arange(6, dtype="<i4").tobytes()
    np.testing.assert_array_equal(layout.decode_out(raw, 2, 3, OutMode.RAW32),
                                  np.arange(6, dtype=np.int32).reshape(2, 3), strict=True)


def test_pow2_and_ternary_products_against_float():
    a = np.arange(-128, 128)
    for e_bits in (1, 2, 3):
        codes = np.arange(1 << (e_bits + 1))
        got = numerics.pow2_mul(a[:, None], codes[None, :], e_bits)
        sign = np.where(codes >> e_bits, -1.0, 1.0)
        ref = a[:, None].astype(float) * sign * np.exp2(codes & ((1 << e_bits) - 1))
        np.testing.assert_array_equal(got, ref.astype(np.int64), strict=True)
    got = numerics.ternary_mul(a[:, None], np.arange(4)[None, :])
    np.testing.assert_array_equal(got, (a[:, None] * np.array([0, 1, 0, -1])).astype(np.int64), strict=True)
