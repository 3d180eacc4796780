"""Golden models of the multiplier library (sw.numerics) against float references.

Float arithmetic is the reference here (and only here): every value and product involved is
exact in float64. ``python tests/test_minifloat.py`` prints the error statistics quoted in
docs/numerics.md.
"""

import numpy as np
import pytest

from sw import numerics as nx
from sw.numerics import FpFormat as F

FORMATS = [F.E4M3, F.E5M2, F.E3M2, F.E2M1, F.BF16]


def _finite_codes(f):
    c = np.arange(1 << f.value.width, dtype=np.int64)
    return c[np.isfinite(nx.fp_decode(c, f))]


@pytest.mark.parametrize("f", FORMATS, ids=lambda f: f.name)
def test_roundtrip_every_finite_code(f):
    c = _finite_codes(f)
    np.testing.assert_array_equal(nx.fp_encode(nx.fp_decode(c, f), f), c, strict=True)


def test_known_values():
    assert nx.fp_decode(np.array([0x7E]), F.E4M3)[0] == 448.0
    assert np.isnan(nx.fp_decode(np.array([0x7F, 0xFF]), F.E4M3)).all()
    assert nx.fp_decode(np.array([0x01]), F.E4M3)[0] == 2.0 ** -9
    assert nx.fp_decode(np.array([0x7B]), F.E5M2)[0] == 57344.0
    assert np.isinf(nx.fp_decode(np.array([0x7C]), F.E5M2)[0])
    np.testing.assert_array_equal(nx.fp_decode(np.arange(8), F.E2M1),
                                  [0, 0.5, 1, 1.5, 2, 3, 4, 6], strict=False)
    assert nx.fp_decode(np.array([0x3F80]), F.BF16)[0] == 1.0
    assert F.E3M2.value.max_value == 28.0


@pytest.mark.parametrize("f", [F.E4M3, F.E5M2, F.E3M2, F.E2M1], ids=lambda f: f.name)
def test_encode_is_round_to_nearest_even_with_saturation(f):
    """Against a brute-force nearest-value search (ties to the even code)."""
    c = _finite_codes(f)
    vals = nx.fp_decode(c, f)
    pos = np.unique(vals[vals >= 0])
    rng = np.random.default_rng(0)
    mx = f.value.max_value
    x = np.concatenate([rng.normal(0, mx / 8, 20000), rng.normal(0, 1, 20000),
                        (pos[:-1] + pos[1:]) / 2,                   # exact ties
                        [mx * 1.01, -mx * 4, np.inf, -np.inf, 0.0, -0.0]])
    got = nx.fp_decode(nx.fp_encode(x, f), f)
    ax = np.minimum(np.abs(x), mx)
    d = np.abs(pos[None, :] - ax[:, None])
    best = d.min(axis=1, keepdims=True)
    cand = np.where(d == best, np.arange(pos.size)[None, :], -1)
    # among tied candidates, the one with an even code (mantissa LSB 0)
    codes = nx.fp_encode(pos, f)
    idx = np.array([next(i for i in row[row >= 0] if codes[i] % 2 == 0) if (row >= 0).sum() > 1
                    else row[row >= 0][0] for row in cand])
    want = np.where(np.signbit(x), -pos[idx], pos[idx])
    np.testing.assert_array_equal(got, want, strict=True)


def test_encode_specials():
    assert nx.fp_encode([np.nan], F.E4M3)[0] == 0x7F
    assert nx.fp_encode([1e6], F.E5M2, saturate=False)[0] == 0x7C
    assert nx.fp_encode([-1e6], F.E4M3, saturate=False)[0] == 0xFF     # S.1111.111: NaN
    assert nx.fp_encode([-0.0], F.E4M3)[0] == 0x80
    with pytest.raises(ValueError, match="no NaN"):
        nx.fp_encode([np.nan], F.E2M1)
    with pytest.raises(ValueError):
        nx.fp_encode([100.0], F.E2M1, saturate=False)
    with pytest.raises(ValueError, match="positive integer, not 0"):
        nx.minifloat(0, 3)


@pytest.mark.parametrize("fa,fb", [(F.E4M3, F.E4M3), (F.E5M2, F.E5M2), (F.E2M1, F.E4M3)],
                         ids=lambda f: f.name)
def test_exact_product_matches_float(fa, fb):
    a, b = np.meshgrid(np.arange(1 << fa.value.width), np.arange(1 << fb.value.width), indexing="ij")
    a, b = a.ravel(), b.ravel()
    p = nx.fp_mul_exact(a, b, fa, fb)
    with np.errstate(invalid="ignore"):
        want = nx.fp_decode(a, fa) * nx.fp_decode(b, fb)
    got = nx.fp_product_value(p, fa, fb)
    np.testing.assert_array_equal(got, want, strict=True)     # NaN == NaN here
    fixed = nx.fp_mul_fixed(a, b, fa, fb)
    ok = np.isfinite(want)
    np.testing.assert_array_equal(np.array([float(v) for v in fixed[ok]]),
                                  want[ok] * 2.0 ** nx.fp_mul_frac_bits(fa, fb), strict=True)


# -- L-Mul ------------------------------------------------------------------------------

def _paper_formula(a, b, f):
    """The paper's L-Mul: (1 + xm + ym + 2**-l(m)) * 2**(xe + ye), sign XOR (normal inputs)."""
    fm = f.value if isinstance(f, F) else f
    s, e, m = nx.fp_fields(a, f)
    s2, e2, m2 = nx.fp_fields(b, f)
    frac = m / 2.0 ** fm.m + m2 / 2.0 ** fm.m + 2.0 ** -nx.lmul_l(fm.m)
    v = (1 + frac) * 2.0 ** ((e - fm.bias) + (e2 - fm.bias))
    return np.where(s ^ s2, -v, v), frac


@pytest.mark.parametrize("f", [F.E4M3, F.E5M2, F.E3M2, nx.minifloat(4, 4), nx.minifloat(5, 5)],
                         ids=lambda f: getattr(f, "name", str(f)))
def test_lmul_matches_paper_formula_without_carry(f):
    fm = f.value if isinstance(f, F) else f
    c = np.arange(1 << fm.width, dtype=np.int64)
    normal = np.isfinite(nx.fp_decode(c, f)) & (nx.fp_fields(c, f)[1] != 0)
    a, b = np.meshgrid(c[normal], c[normal], indexing="ij")
    a, b = a.ravel(), b.ravel()
    want, frac = _paper_formula(a, b, f)
    got = nx.fp_decode(nx.lmul(a, b, f), f)
    small = np.abs(want) >= 2.0 ** (1 - fm.bias)
    big = np.abs(want) <= fm.max_value
    nocarry = (frac < 1) & small & big
    assert nocarry.sum() > 100
    np.testing.assert_array_equal(got[nocarry], want[nocarry], strict=True)
    # where the mantissa sum carries, the adder's result is (1 + (frac - 1)) * 2**(e+1), not
    # the formula's (1 + frac) * 2**e: for m >= 3 the adder is closer to the exact product on
    # average (measured; for m = 2, where 2**-l = 1/4, the formula is closer)
    carry = (frac >= 1) & small & (np.abs(want) * 2 <= fm.max_value)
    exact = nx.fp_decode(a, f) * nx.fp_decode(b, f)
    if fm.m >= 3:
        assert np.abs(got[carry] - exact[carry]).mean() < np.abs(want[carry] - exact[carry]).mean()


def test_lmul_edge_cases_e4m3():
    f = F.E4M3
    one, two = 0x38, 0x40
    assert nx.fp_decode(nx.lmul([one], [one], f), f)[0] == 1.125       # x1.0 is not exact
    assert nx.fp_decode(nx.lmul([two], [one], f), f)[0] == 2.25
    # mantissa sum exactly 2**m: 1.5 * 1.375 -> fields 4 + 3 + 1 = 8 -> carries: 2**1 * 1.0
    assert nx.fp_decode(nx.lmul([0x3C], [0x3B], f), f)[0] == 2.0
    assert nx.lmul([0x00], [0x7E], f)[0] == 0x00                          # zero
    assert nx.lmul([0x80], [0x7E], f)[0] == 0x80                          # -0 * + = -0
    assert nx.lmul([0x05], [0x7E], f)[0] == 0x00                          # subnormal -> 0
    assert nx.lmul([0x08], [0x08], f)[0] == 0x00                          # underflow -> 0
    assert nx.lmul([0x7E], [0x7E], f)[0] == 0x7E                          # overflow -> 448
    assert nx.lmul([0xFE], [0x7E], f)[0] == 0xFE
    assert nx.lmul([0x7F], [0x38], f)[0] == 0x7F                          # NaN in -> NaN
    for sa in (0, 0x80):
        for sb in (0, 0x80):
            assert nx.lmul([one | sa], [one | sb], f)[0] == (0x39 | (sa ^ sb))
    a, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    r = nx.lmul(a.ravel(), b.ravel(), f)
    nan_in = nx.fp_is_nan(a.ravel(), f) | nx.fp_is_nan(b.ravel(), f)
    assert not (nx.fp_is_nan(r, f) & ~nan_in).any()                      # 0x7F never made up


def test_lmul_e5m2_specials():
    f = F.E5M2
    assert nx.lmul([0x7C], [0x3C], f)[0] == 0x7C                          # inf * 1
    assert nx.lmul([0x7C], [0xBC], f)[0] == 0xFC
    assert nx.lmul([0x7C], [0x00], f)[0] == 0x7F                          # inf * 0 = NaN
    assert nx.lmul([0x7B], [0x7B], f)[0] == 0x7B                          # saturate


def test_pow2_and_ternary_codes():
    for e_bits in (1, 2, 3):
        c = np.arange(1 << (e_bits + 1))
        v = nx.pow2_decode(c, e_bits)
        assert (v != 0).all()
        np.testing.assert_array_equal(nx.pow2_encode(v, e_bits), c, strict=True)
    with pytest.raises(ValueError):
        nx.pow2_encode([3], 2)
    np.testing.assert_array_equal(nx.ternary_decode([0, 1, 2, 3]), [0, 1, 0, -1], strict=True)
    np.testing.assert_array_equal(nx.ternary_encode([0, 1, -1]), [0, 1, 3], strict=True)


def test_mac_wrap():
    np.testing.assert_array_equal(nx.mac_wrap([100, 100, 5], [1, 0, 1], 8), [100, -56, 5],
                                  strict=True)


# -- error statistics (quoted in docs/numerics.md) ---------------------------------------

def error_stats(n: int = 200_000, seed: int = 0) -> dict:
    """Relative error |approx - x*y| / |x*y| on x, y ~ N(0, 1) (mean, max).

    ``vs_true``: against the float64 product of the unquantized x, y, over all samples (zero
    and subnormal flushes included). ``vs_exact_inrange``: against the exact product of the
    same quantized operands (the multiplier's own error), over the pairs whose operands are
    normal and whose exact product lies in the normal range, so under/overflow policy does
    not enter.
    """
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    z = x * y
    out = {}

    def rel(v, ref):
        return np.abs(v - ref) / np.abs(ref)

    for f in (F.E4M3, F.E5M2, nx.minifloat(4, 4, bias=7)):
        name = f.name
        a, b = nx.fp_encode(x, f), nx.fp_encode(y, f)
        exact = nx.fp_decode(a, f) * nx.fp_decode(b, f)
        lm = nx.fp_decode(nx.lmul(a, b, f), f)
        normal = (nx.fp_fields(a, f)[1] != 0) & (nx.fp_fields(b, f)[1] != 0)
        fm = f.value if isinstance(f, F) else f
        inr = normal & (np.abs(exact) >= 2.0 ** (1 - fm.bias)) & (np.abs(exact) <= fm.max_value)
        form, _ = _paper_formula(a, b, f)
        for label, v in ((f"{name} operands, exact product", exact),
                         (f"L-Mul {name} (adder, carry into exponent)", lm),
                         (f"L-Mul {name} (paper formula)", np.where(normal, form, 0.0))):
            r = rel(v, z)
            rx = rel(v[inr], exact[inr])
            out[label] = {"mean_vs_true": float(r.mean()), "max_vs_true": float(r.max()),
                          "mean_vs_exact_inrange": float(rx.mean()),
                          "max_vs_exact_inrange": float(rx.max())}
    for f in (F.E4M3, F.E5M2):
        r = rel(nx.fp_decode(nx.fp_encode(z, f), f), z)
        out[f"true product rounded to {f.name} (RNE)"] = {
            "mean_vs_true": float(r.mean()), "max_vs_true": float(r.max())}
    return out


def test_error_statistics():
    s = error_stats(50_000)
    lm3 = s["L-Mul E4M3 (adder, carry into exponent)"]["mean_vs_exact_inrange"]
    lm2 = s["L-Mul E5M2 (adder, carry into exponent)"]["mean_vs_exact_inrange"]
    fm3 = s["L-Mul E4M3 (paper formula)"]["mean_vs_exact_inrange"]
    r4 = s["true product rounded to E4M3 (RNE)"]["mean_vs_true"]
    r5 = s["true product rounded to E5M2 (RNE)"]["mean_vs_true"]
    assert 0.02 < lm3 < 0.08 and 0.02 < lm2 < 0.20
    assert lm3 <= fm3                     # the adder is at least as accurate as the formula
    assert r4 < r5                        # E4M3 rounding is finer than E5M2


if __name__ == "__main__":
    for k, v in error_stats().items():
        print(f"{k:48s} " + "  ".join(f"{kk}={vv * 100:.2f}%" for kk, vv in v.items()))
