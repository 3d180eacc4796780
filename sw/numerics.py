"""Number formats and bit-exact golden models.

This module is the single executable source of arithmetic truth for the project: every
hardware block is compared bit for bit against a function defined here, and nothing else in
the project (tests included) re-implements arithmetic. NumPy only; never imports Amaranth.

The written contract is ``docs/numerics.md``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "OutMode", "int_range", "check_int", "acc_bits", "gemm", "Requant", "requantize",
    "to_dyadic", "mpgemm", "pack_int", "unpack_int",
]


class OutMode(enum.IntEnum):
    """What the GEMM epilogue writes to the output buffer (shared with the gateware)."""

    #: The raw accumulator, sign-extended to 32 bits.
    RAW32 = 0
    #: Requantized INT8 (dyadic multiplier, round-half-up shift, zero point, clamp, ReLU).
    INT8 = 1


# -- integers --------------------------------------------------------------------------------

def int_range(bits: int, *, signed: bool = True) -> tuple[int, int]:
    """Inclusive ``(min, max)`` of a ``bits``-wide two's complement (or unsigned) integer."""
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive integer, not {bits!r}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def check_int(x, bits: int, *, signed: bool = True, name: str = "array") -> np.ndarray:
    """Return ``x`` as an int64 array after checking every element fits ``bits``.

    Raises
    ------
    TypeError
        If ``x`` is not of an integer dtype (floats are never silently truncated).
    ValueError
        If an element lies outside the ``bits``-wide range.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, not {arr.dtype}")
    lo, hi = int_range(bits, signed=signed)
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise ValueError(f"{name} values must lie in [{lo}, {hi}] ({'' if signed else 'u'}int{bits}); "
                         f"found [{int(arr.min())}, {int(arr.max())}]")
    return arr.astype(np.int64)


def acc_bits(k: int, a_bits: int = 8, w_bits: int = 8, *,
             a_signed: bool = True, w_signed: bool = True) -> int:
    """Width of a signed accumulator that holds any sum of ``k`` products without overflow.

    Computed from the exact extremes of one product (for INT8 x INT8 the largest magnitude is
    ``-128 * -128 = 16384``), never guessed.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    alo, ahi = int_range(a_bits, signed=a_signed)
    wlo, whi = int_range(w_bits, signed=w_signed)
    prods = [alo * wlo, alo * whi, ahi * wlo, ahi * whi]
    hi, lo = k * max(prods), k * min(prods)
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def gemm(a, w, *, a_bits: int = 8, w_bits: int = 8) -> np.ndarray:
    """Exact integer GEMM ``a @ w`` of signed ``a_bits`` activations and ``w_bits`` weights.

    Parameters
    ----------
    a : array_like, shape (M, K), integer
    w : array_like, shape (K, N), integer

    Returns
    -------
    numpy.ndarray of int64, shape (M, N)
        Exact: ``K * 2**(a_bits+w_bits-2)`` stays far below 2**63 for any buffer we build.
    """
    a = check_int(a, a_bits, name="a")
    w = check_int(w, w_bits, name="w")
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(f"gemm needs a (M, K) and w (K, N); got {a.shape} and {w.shape}")
    if a.shape[1] == 0:
        raise ValueError("gemm needs K >= 1")
    return a @ w


# -- requantization -----------------------------------------------------------------------

#: Bit widths of the requantization parameters (shared with the gateware epilogue).
REQUANT_MULT_BITS = 16   # unsigned dyadic multiplier m
REQUANT_SHIFT_BITS = 6   # shift 0..63
REQUANT_ZP_BITS = 8      # signed output zero point


@dataclass(frozen=True)
class Requant:
    """Requantization parameters: ``y = clamp(round_half_up(acc * multiplier / 2**shift) + zp)``.

    ``multiplier`` is unsigned ``REQUANT_MULT_BITS`` bits, ``shift`` is ``0..63`` and
    ``zero_point`` a signed INT8. With ``relu`` the lower clamp bound is the zero point
    (ReLU in the quantized domain) instead of -128.
    """

    multiplier: int
    shift: int
    zero_point: int = 0
    relu: bool = False

    def __post_init__(self):
        for name, bits, signed in (("multiplier", REQUANT_MULT_BITS, False),
                                   ("shift", REQUANT_SHIFT_BITS, False),
                                   ("zero_point", REQUANT_ZP_BITS, True)):
            v = getattr(self, name)
            lo, hi = int_range(bits, signed=signed)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"Requant.{name} must be an integer in [{lo}, {hi}], not {v!r}")
        if not isinstance(self.relu, (bool, np.bool_)):
            raise ValueError(f"Requant.relu must be a bool, not {self.relu!r}")


def requantize(acc, rq: Requant) -> np.ndarray:
    """Requantize accumulators to INT8 exactly as the gateware epilogue does.

    ``round_half_up(x / 2**s) = floor((x + 2**(s-1)) / 2**s)`` for ``s > 0`` (ties go towards
    +inf, also for negative x), ``x`` itself for ``s = 0``.

    Returns
    -------
    numpy.ndarray of int8
    """
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise TypeError(f"acc must have an integer dtype, not {acc.dtype}")
    if acc.size and acc.dtype.kind == "u" and int(acc.max()) >= (1 << 40):
        raise ValueError("acc values must lie in [-2**40, 2**40)")
    acc = acc.astype(np.int64)
    if acc.size and (acc.min() < -(1 << 40) or acc.max() >= (1 << 40)):
        # keeps acc * multiplier + rounding inside int64 (40 + 16 bits)
        raise ValueError("acc values must lie in [-2**40, 2**40)")
    x = acc * np.int64(rq.multiplier)
    if rq.shift:
        x = (x + (np.int64(1) << np.int64(rq.shift - 1))) >> np.int64(rq.shift)
    x = x + rq.zero_point
    lo = rq.zero_point if rq.relu else -128
    return np.clip(x, lo, 127).astype(np.int8)


def to_dyadic(scale: float, *, mult_bits: int = REQUANT_MULT_BITS,
              max_shift: int = (1 << REQUANT_SHIFT_BITS) - 1) -> tuple[int, int]:
    """Nearest dyadic ``(multiplier, shift)`` with ``multiplier / 2**shift ~= scale``.

    The multiplier is normalised into ``[2**(mult_bits-1), 2**mult_bits)`` when the shift range
    allows it, so the relative error is at most ``2**-mult_bits``.
    """
    if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite non-negative number, not {scale!r}")
    if scale == 0:
        return 0, 0
    _, e = math.frexp(scale)              # scale = f * 2**e, f in [0.5, 1)
    shift = min(max(mult_bits - e, 0), max_shift)
    m = round(scale * (1 << shift))
    if m >= (1 << mult_bits):             # rounding overflowed the mantissa
        if shift == 0:
            raise ValueError(f"scale {scale!r} too large for a {mult_bits}-bit multiplier")
        shift -= 1
        m = round(scale * (1 << shift))
    return int(m), int(shift)


def mpgemm(a, w, rq: Requant | None = None) -> np.ndarray:
    """The mpGEMM core's golden model: INT8 x INT8 GEMM, then the epilogue.

    With ``rq=None`` the raw accumulators (int32) are returned, as the core's ``RAW32`` mode
    writes them; otherwise INT8 after :func:`requantize`.
    """
    acc = gemm(a, w)
    if rq is None:
        lo, hi = int_range(32)
        if acc.size and (acc.min() < lo or acc.max() > hi):
            raise ValueError("accumulators exceed int32; RAW32 mode cannot return them")
        return acc.astype(np.int32)
    return requantize(acc, rq)


# -- packing ------------------------------------------------------------------------------

def pack_int(values, bits: int) -> bytes:
    """Pack ``bits``-wide integers little-endian, element 0 in the low bits of byte 0.

    ``bits`` must divide 8 or be a multiple of 8. Values may be signed or unsigned; only their
    low ``bits`` bits (two's complement) are stored.
    """
    v = np.asarray(values).astype(np.int64).ravel()
    if bits % 8 == 0:
        n = bits // 8
        u = v & ((1 << bits) - 1)
        out = np.zeros((v.size, n), dtype=np.uint8)
        for i in range(n):
            out[:, i] = (u >> (8 * i)) & 0xFF
        return out.tobytes()
    if 8 % bits:
        raise ValueError(f"bits must divide 8 or be a multiple of 8, not {bits!r}")
    per = 8 // bits
    u = (v & ((1 << bits) - 1)).astype(np.uint8)
    u = np.concatenate([u, np.zeros((-u.size) % per, dtype=np.uint8)]).reshape(-1, per)
    out = np.zeros(u.shape[0], dtype=np.uint8)
    for i in range(per):
        out |= (u[:, i] << (bits * i)).astype(np.uint8)
    return out.tobytes()


def unpack_int(data: bytes, bits: int, count: int, *, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_int`: ``count`` integers as int64."""
    b = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
    if bits % 8 == 0:
        n = bits // 8
        if b.size < count * n:
            raise ValueError(f"need {count * n} bytes for {count} x {bits}-bit values, got {b.size}")
        b = b[:count * n].reshape(count, n)
        u = np.zeros(count, dtype=np.int64)
        for i in range(n):
            u |= b[:, i] << (8 * i)
    else:
        if 8 % bits:
            raise ValueError(f"bits must divide 8 or be a multiple of 8, not {bits!r}")
        per = 8 // bits
        if b.size * per < count:
            raise ValueError(f"need {math.ceil(count / per)} bytes for {count} x {bits}-bit values")
        u = ((b[:, None] >> (bits * np.arange(per))) & ((1 << bits) - 1)).ravel()[:count]
    if signed:
        u = np.where(u >= (1 << (bits - 1)), u - (1 << bits), u)
    return u


# =============================================================================================
# Multiplier library (issue 4, hw/arith): minifloats, power-of-two and ternary weight codes,
# L-Mul, and the exact products the multipliers are checked against.
#
# Everything works on integer *codes*; a float appears only as the value a code stands for
# (float64 holds every value and every product below exactly: at most 8+8 significand bits).
# =============================================================================================

__all__ += [
    "Special", "Minifloat", "FpFormat", "minifloat", "fp_fields", "fp_decode", "fp_encode",
    "fp_is_nan", "fp_is_inf", "FpProduct", "fp_mul_exact", "fp_product_value",
    "fp_mul_frac_bits", "fp_mul_fixed", "lmul_l", "lmul",
    "pow2_decode", "pow2_encode", "TERNARY_CODES", "ternary_decode", "ternary_encode",
    "int_mul", "wrap_int", "mac_wrap",
]


class Special(enum.IntEnum):
    """How a minifloat format spends its top exponent codes."""

    #: IEEE 754 style: top exponent field is inf (mantissa 0) or NaN (mantissa != 0). E5M2, BF16.
    IEEE = 0
    #: OCP E4M3 style ("fn"): no inf, only S.1..1.1..1 is NaN, the rest of the top binade is finite.
    FN = 1
    #: Every code is a finite number (E2M1, E3M2): no inf, no NaN.
    NONE = 2


@dataclass(frozen=True)
class Minifloat:
    """A sign / exponent / mantissa format of ``1 + e + m`` bits.

    Codes are unsigned integers ``sign << (e + m) | exp << m | mant``. ``exp == 0`` encodes
    subnormals ``mant * 2**(1 - bias - m)``; otherwise ``(2**m + mant) * 2**(exp - bias - m)``.
    """

    name: str
    e: int
    m: int
    bias: int
    special: Special

    def __post_init__(self):
        if not isinstance(self.e, int) or not 1 <= self.e <= 8:
            raise ValueError(f"Minifloat.e must be an integer in [1, 8], not {self.e!r}")
        if not isinstance(self.m, int) or not 1 <= self.m <= 10:
            raise ValueError(f"Minifloat.m must be an integer in [1, 10], not {self.m!r}")
        if not isinstance(self.bias, int) or not 0 <= self.bias < (1 << self.e):
            raise ValueError(f"Minifloat.bias must be an integer in [0, {(1 << self.e) - 1}], "
                             f"not {self.bias!r}")
        if not isinstance(self.special, Special):
            raise ValueError(f"Minifloat.special must be a Special, not {self.special!r}")
        if self.special is Special.IEEE and self.e < 2:
            raise ValueError(f"an IEEE-style format needs e >= 2, not {self.e!r}")

    @property
    def width(self) -> int:
        """Code width in bits."""
        return 1 + self.e + self.m

    @property
    def mag_mask(self) -> int:
        return (1 << (self.e + self.m)) - 1

    @property
    def max_code(self) -> int:
        """Magnitude code (no sign bit) of the largest finite value."""
        if self.special is Special.IEEE:
            return (((1 << self.e) - 2) << self.m) | ((1 << self.m) - 1)
        if self.special is Special.FN:
            return self.mag_mask - 1
        return self.mag_mask

    @property
    def nan_code(self) -> int | None:
        """The canonical NaN code this project produces (positive sign), or None."""
        if self.special is Special.NONE:
            return None
        return self.mag_mask

    @property
    def inf_code(self) -> int | None:
        """Magnitude code of infinity, or None when the format has none."""
        return ((1 << self.e) - 1) << self.m if self.special is Special.IEEE else None

    @property
    def max_value(self) -> float:
        return float(fp_decode(np.array([self.max_code]), self)[0])


def minifloat(e: int, m: int, *, bias: int | None = None, special: Special = Special.NONE,
              name: str | None = None) -> Minifloat:
    """A custom format (e.g. for L-Mul sweeps); ``bias`` defaults to ``2**(e-1) - 1``."""
    if bias is None:
        if not isinstance(e, int) or e < 1:
            raise ValueError(f"e must be a positive integer, not {e!r}")
        bias = (1 << (e - 1)) - 1
    return Minifloat(name or f"E{e}M{m}", e, m, bias, special)


class FpFormat(enum.Enum):
    """The named formats the gateware supports (shared with hw.arith)."""

    E4M3 = Minifloat("E4M3", 4, 3, 7, Special.FN)       # OCP FP8, max 448
    E5M2 = Minifloat("E5M2", 5, 2, 15, Special.IEEE)    # OCP FP8, max 57344
    E3M2 = Minifloat("E3M2", 3, 2, 3, Special.NONE)     # OCP FP6, max 28
    E2M1 = Minifloat("E2M1", 2, 1, 1, Special.NONE)     # OCP FP4, max 6
    BF16 = Minifloat("BF16", 8, 7, 127, Special.IEEE)


def _fmt(fmt) -> Minifloat:
    if isinstance(fmt, FpFormat):
        return fmt.value
    if isinstance(fmt, Minifloat):
        return fmt
    raise TypeError(f"format must be an FpFormat or a Minifloat, not {fmt!r}")


def _codes(codes, f: Minifloat, name: str = "codes") -> np.ndarray:
    return check_int(codes, f.width, signed=False, name=name)


def fp_fields(codes, fmt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split codes into ``(sign, exp_field, mant_field)`` int64 arrays."""
    f = _fmt(fmt)
    c = _codes(codes, f)
    return c >> (f.e + f.m), (c >> f.m) & ((1 << f.e) - 1), c & ((1 << f.m) - 1)


def fp_is_nan(codes, fmt) -> np.ndarray:
    f = _fmt(fmt)
    _, ef, mf = fp_fields(codes, f)
    if f.special is Special.IEEE:
        return (ef == (1 << f.e) - 1) & (mf != 0)
    if f.special is Special.FN:
        return (ef == (1 << f.e) - 1) & (mf == (1 << f.m) - 1)
    return np.zeros(ef.shape, dtype=bool)


def fp_is_inf(codes, fmt) -> np.ndarray:
    f = _fmt(fmt)
    _, ef, mf = fp_fields(codes, f)
    if f.special is Special.IEEE:
        return (ef == (1 << f.e) - 1) & (mf == 0)
    return np.zeros(ef.shape, dtype=bool)


def fp_decode(codes, fmt) -> np.ndarray:
    """The exact float64 value of each code (NaN / +-inf for the special codes)."""
    f = _fmt(fmt)
    s, ef, mf = fp_fields(codes, f)
    sig = np.where(ef == 0, mf, mf + (1 << f.m)).astype(np.float64)
    val = np.ldexp(sig, (np.maximum(ef, 1) - f.bias - f.m).astype(np.int64))
    val = np.where(fp_is_inf(codes, f), np.inf, val)
    val = np.where(fp_is_nan(codes, f), np.nan, val)
    return np.where(s == 1, -val, val)


def fp_encode(x, fmt, *, saturate: bool = True) -> np.ndarray:
    """Round float values to codes: round to nearest, ties to even; subnormals kept.

    Values beyond the largest finite value (and +-inf) become +-max finite with ``saturate``
    (the OCP "satfinite" conversion); without it they become +-inf (IEEE formats) or NaN (E4M3
    style), and raise for formats without either. NaN becomes the canonical NaN code.
    ``-0.0`` keeps its sign.
    """
    f = _fmt(fmt)
    x = np.asarray(x, dtype=np.float64)
    sign = np.signbit(x).astype(np.int64)
    ax = np.abs(x)
    nan = np.isnan(x)
    if nan.any() and f.nan_code is None:
        raise ValueError(f"{f.name} has no NaN, but the input holds NaN")
    fin = np.where(np.isfinite(ax), ax, 0.0)
    _, k = np.frexp(fin)                               # fin = frac * 2**k, frac in [0.5, 1)
    ex = np.maximum(k.astype(np.int64) - 1, 1 - f.bias)  # binade, clamped into the subnormal one
    n = np.rint(np.ldexp(fin, -(ex - f.m))).astype(np.int64)  # exact scaling, then RNE
    # n in [0, 2**(m+1)]; a mantissa round-up to 2**(m+1) carries into the exponent by itself:
    mag = np.where(n == 0, 0, ((ex + f.bias - 1) << f.m) + n)
    over = (mag > f.max_code) | np.isinf(ax)
    if saturate:
        mag = np.where(over, f.max_code, mag)
    elif over[~nan].any():
        if f.special is Special.IEEE:
            mag = np.where(over, f.inf_code, mag)
        elif f.special is Special.FN:
            mag = np.where(over, f.nan_code, mag)
        else:
            raise ValueError(f"{f.name} has no inf or NaN to represent an overflow; use saturate=True")
    code = (sign << (f.e + f.m)) | mag
    if f.nan_code is not None:
        code = np.where(nan, f.nan_code, code)
    return code.astype(np.int64)


@dataclass(frozen=True)
class FpProduct:
    """Exact product of two minifloat codes in unnormalised fields, as ``hw.arith.FpMul`` outputs.

    ``value = (-1)**sign * mant * 2**(exp - bias_a - bias_b - m_a - m_b)`` where ``exp`` is the
    sum of the effective exponent fields (a subnormal's is 1) and ``mant`` the product of the
    significands (hidden bit included). ``exp``/``mant`` are the raw field arithmetic also for
    NaN / inf operands; the ``nan`` / ``inf`` flags say when they are meaningless.
    """

    sign: np.ndarray
    exp: np.ndarray
    mant: np.ndarray
    nan: np.ndarray
    inf: np.ndarray


def fp_mul_exact(a, b, fmt_a, fmt_b=None) -> FpProduct:
    """Exact product of codes ``a`` (format ``fmt_a``) and ``b`` (``fmt_b``, default the same).

    NaN if either operand is NaN or for inf x 0 (a subnormal is not zero); inf if either is inf.
    """
    fa = _fmt(fmt_a)
    fb = fa if fmt_b is None else _fmt(fmt_b)
    sa, ea, ma = fp_fields(a, fa)
    sb, eb, mb = fp_fields(b, fb)
    siga = np.where(ea == 0, ma, ma | (1 << fa.m))
    sigb = np.where(eb == 0, mb, mb | (1 << fb.m))
    za = (ea == 0) & (ma == 0)
    zb = (eb == 0) & (mb == 0)
    ia, ib = fp_is_inf(a, fa), fp_is_inf(b, fb)
    nan = fp_is_nan(a, fa) | fp_is_nan(b, fb) | (ia & zb) | (ib & za)
    inf = (ia | ib) & ~nan
    return FpProduct(sa ^ sb, np.maximum(ea, 1) + np.maximum(eb, 1), siga * sigb, nan, inf)


def fp_product_value(p: FpProduct, fmt_a, fmt_b=None) -> np.ndarray:
    """Float64 value of an :class:`FpProduct` (exact; NaN / inf from the flags)."""
    fa = _fmt(fmt_a)
    fb = fa if fmt_b is None else _fmt(fmt_b)
    v = np.ldexp(p.mant.astype(np.float64), p.exp - fa.bias - fb.bias - fa.m - fb.m)
    v = np.where(p.inf, np.inf, v)
    v = np.where(p.sign == 1, -v, v)
    return np.where(p.nan, np.nan, v)


def fp_mul_frac_bits(fmt_a, fmt_b=None) -> int:
    """Fraction bits of the fixed-point product: the smallest product is one unit."""
    fa = _fmt(fmt_a)
    fb = fa if fmt_b is None else _fmt(fmt_b)
    return fa.bias + fb.bias + fa.m + fb.m - 2


def fp_mul_fixed(a, b, fmt_a, fmt_b=None) -> np.ndarray:
    """Exact product as a signed fixed-point integer ``value * 2**fp_mul_frac_bits``.

    This is ``(-1)**sign * (mant << (exp - 2))`` from the raw fields (flags ignored), what
    ``FpMul(output="fixed")`` puts on ``p`` and what a wide FP accumulator adds up. int64 when
    it fits (E4M3: 37 bits), Python ints in an object array otherwise (E5M2: 65 bits).
    """
    p = fp_mul_exact(a, b, fmt_a, fmt_b)
    sh = p.exp - 2
    if int(sh.max(initial=0)) + int(p.mant.max(initial=0)).bit_length() <= 62:
        v = p.mant << sh
    else:
        v = np.array([int(m) << int(s) for m, s in zip(p.mant.ravel(), sh.ravel())],
                     dtype=object).reshape(sh.shape)
    return np.where(p.sign == 1, -v, v)


def lmul_l(m: int) -> int:
    """The paper's offset exponent: l(m) = m (m <= 3), 3 (m = 4), 4 (m > 4)."""
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer, not {m!r}")
    return m if m <= 3 else (3 if m == 4 else 4)


def lmul(a, b, fmt) -> np.ndarray:
    """L-Mul of two codes of the same format, exactly as ``hw.arith.LMul`` computes it.

    One integer adder over the exponent|mantissa fields::

        s = (Ea<<m | Ma) + (Eb<<m | Mb) - (bias<<m) + 2**(m - l(m))

    so a mantissa carry ripples into the exponent. Sign is the XOR. A zero or subnormal
    operand, or ``s < 2**m`` (underflow), gives a signed zero; ``s`` above the largest finite
    code gives signed max finite. NaN in (or inf x zero/subnormal for IEEE formats) gives the
    canonical NaN; inf x nonzero gives a signed inf.
    """
    f = _fmt(fmt)
    sa, ea, _ = fp_fields(a, f)
    sb, eb, _ = fp_fields(b, f)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    s = (a & f.mag_mask) + (b & f.mag_mask) - (f.bias << f.m) + (1 << (f.m - lmul_l(f.m)))
    zero = (ea == 0) | (eb == 0) | (s < (1 << f.m))
    mag = np.where(zero, 0, np.minimum(s, f.max_code))
    sign = sa ^ sb
    out = (sign << (f.e + f.m)) | mag
    if f.special is Special.IEEE:
        ia, ib = fp_is_inf(a, f), fp_is_inf(b, f)
        nan = fp_is_nan(a, f) | fp_is_nan(b, f) | (ia & (eb == 0)) | (ib & (ea == 0))
        out = np.where(ia | ib, (sign << (f.e + f.m)) | f.inf_code, out)
        out = np.where(nan, f.nan_code, out)
    elif f.special is Special.FN:
        out = np.where(fp_is_nan(a, f) | fp_is_nan(b, f), f.nan_code, out)
    return out.astype(np.int64)


# -- power-of-two and ternary weights --------------------------------------------------------

def pow2_decode(codes, e_bits: int) -> np.ndarray:
    """Power-of-two weight codes ``sign << e_bits | e`` -> ``(-1)**sign * 2**e`` (zero-free)."""
    if not isinstance(e_bits, int) or not 1 <= e_bits <= 4:
        raise ValueError(f"e_bits must be an integer in [1, 4], not {e_bits!r}")
    c = check_int(codes, e_bits + 1, signed=False, name="pow2 codes")
    v = np.int64(1) << (c & ((1 << e_bits) - 1))
    return np.where(c >> e_bits == 1, -v, v)


def pow2_encode(values, e_bits: int) -> np.ndarray:
    """Inverse of :func:`pow2_decode`; every value must be exactly +-2**e, 0 <= e < 2**e_bits."""
    v = np.asarray(values)
    if v.dtype.kind not in "iu":
        raise TypeError(f"pow2 values must have an integer dtype, not {v.dtype}")
    v = v.astype(np.int64)
    a = np.abs(v)
    e = np.zeros(v.shape, dtype=np.int64)
    ok = (a > 0) & ((a & (a - 1)) == 0)
    for i in range(1, 1 << e_bits):
        e = np.where(a == (1 << i), i, e)
    ok &= a <= (1 << ((1 << e_bits) - 1))
    if not ok.all():
        raise ValueError(f"pow2 values must be +-2**e with 0 <= e < {1 << e_bits}; "
                         f"found {v[~ok].ravel()[:4].tolist()}")
    return ((v < 0).astype(np.int64) << e_bits) | e


#: Ternary 2-bit codes: bit 0 = nonzero, bit 1 = negative (0b10 is a second zero, never produced).
TERNARY_CODES = {0: 0b00, 1: 0b01, -1: 0b11}


def ternary_decode(codes) -> np.ndarray:
    """2-bit ternary codes -> {-1, 0, +1} (0b11 = -1 as in two's complement; 0b10 reads as 0)."""
    c = check_int(codes, 2, signed=False, name="ternary codes")
    return np.where(c & 1, np.where(c >> 1, -1, 1), 0).astype(np.int64)


def ternary_encode(values) -> np.ndarray:
    v = check_int(values, 2, name="ternary values")
    if (v == -2).any():
        raise ValueError("ternary values must lie in {-1, 0, 1}")
    return v & 0b11


# -- exact integer products and accumulators ---------------------------------------------

def int_mul(a, b, *, a_bits: int = 8, b_bits: int = 8, a_signed: bool = True,
            b_signed: bool = True) -> np.ndarray:
    """Exact elementwise product after range checks: the golden model of every integer
    multiplier (IntMul, ShiftAddMul, BoothMul, BitSerialMul); they differ only in cost."""
    return (check_int(a, a_bits, signed=a_signed, name="a")
            * check_int(b, b_bits, signed=b_signed, name="b"))


def pow2_mul(a, codes, e_bits: int, *, a_bits: int = 8) -> np.ndarray:
    """Golden model of Pow2Mul: ``a * (-1)**sign * 2**e`` for power-of-two weight codes."""
    return check_int(a, a_bits, name="a") * pow2_decode(codes, e_bits)


def ternary_mul(a, codes, *, a_bits: int = 8) -> np.ndarray:
    """Golden model of TernaryMul: ``a * t`` for 2-bit ternary codes."""
    return check_int(a, a_bits, name="a") * ternary_decode(codes)


def wrap_int(x, bits: int, *, signed: bool = True) -> np.ndarray:
    """``x`` modulo ``2**bits``, as a signed (two's complement) or unsigned int64."""
    x = np.asarray(x).astype(np.int64) & ((1 << bits) - 1)
    if signed:
        x = np.where(x >= (1 << (bits - 1)), x - (1 << bits), x)
    return x


def mac_wrap(products, clear, bits: int) -> np.ndarray:
    """Running accumulator after each step, wrapping at ``bits`` (signed).

    ``acc = product if clear else acc + product``: the golden model of a MAC register.
    """
    p = np.asarray(products).astype(np.int64)
    c = np.asarray(clear).astype(bool)
    out = np.empty_like(p)
    acc = 0
    for i in range(p.size):
        acc = int(p[i]) if c[i] else acc + int(p[i])
        acc = ((acc + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))
        out[i] = acc
    return out


# =============================================================================================
# Mixed-precision GEMM (MixPE core): run-time weight formats packed along K, per-group
# dequantization after the integer group GEMM, per-output-channel requantization with bias.
# =============================================================================================

__all__ += [
    "WeightFormat", "WEIGHT_BITS", "WEIGHT_LANES", "POW2_E_BITS", "weight_range",
    "encode_weights", "decode_weights", "pack_weights", "unpack_weights",
    "GROUP_SIZES", "GSCALE_BITS", "GZERO_BITS", "BIAS_BITS", "EDGE_ACC_BITS", "GroupQuant",
    "group_sums", "group_dequant", "ChannelRequant", "requantize_channels", "mixgemm",
]


class WeightFormat(enum.IntEnum):
    """Weight formats of the MixPE core (shared with the gateware and the wire protocol).

    Codes are stored little-endian in the W buffer, ``WEIGHT_LANES[fmt]`` codes per byte,
    consecutive along K, element 0 in the low bits. A MixPE processing element consumes one
    byte per cycle, so it does ``WEIGHT_LANES[fmt]`` MACs per cycle.
    """

    #: two's complement int8, one per byte
    INT8 = 0
    #: two's complement int4, two per byte
    INT4 = 1
    #: two's complement int2 {-2..1}, four per byte
    INT2 = 2
    #: ternary {-1, 0, +1}, 2-bit codes of :func:`ternary_encode`, four per byte
    TERNARY = 3
    #: +-2**e, e in 0..7 (zero-free), 4-bit code ``sign << 3 | e`` in the low nibble of a byte
    POW2 = 4


#: bits of one weight code
WEIGHT_BITS = {WeightFormat.INT8: 8, WeightFormat.INT4: 4, WeightFormat.INT2: 2,
               WeightFormat.TERNARY: 2, WeightFormat.POW2: 4}
#: weight codes per byte of the W buffer = MACs per MixPE element and cycle
WEIGHT_LANES = {WeightFormat.INT8: 1, WeightFormat.INT4: 2, WeightFormat.INT2: 4,
                WeightFormat.TERNARY: 4, WeightFormat.POW2: 1}
#: exponent bits of a POW2 weight code
POW2_E_BITS = 3


def _wfmt(fmt) -> WeightFormat:
    try:
        return WeightFormat(fmt)
    except ValueError:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of "
                         f"{[f.name for f in WeightFormat]}") from None


def weight_range(fmt) -> tuple[int, int]:
    """Inclusive ``(min, max)`` of the weight values a format holds."""
    fmt = _wfmt(fmt)
    if fmt is WeightFormat.TERNARY:
        return -1, 1
    if fmt is WeightFormat.POW2:
        return -(1 << 7), 1 << 7
    return int_range(WEIGHT_BITS[fmt])


def encode_weights(values, fmt) -> np.ndarray:
    """Weight values -> codes (int64) of ``fmt``; values outside the format raise."""
    fmt = _wfmt(fmt)
    if fmt is WeightFormat.TERNARY:
        return ternary_encode(values)
    if fmt is WeightFormat.POW2:
        return pow2_encode(values, POW2_E_BITS)
    bits = WEIGHT_BITS[fmt]
    return check_int(values, bits, name=f"{fmt.name} weights") & ((1 << bits) - 1)


def decode_weights(codes, fmt) -> np.ndarray:
    """Codes of ``fmt`` -> weight values (int64)."""
    fmt = _wfmt(fmt)
    if fmt is WeightFormat.TERNARY:
        return ternary_decode(codes)
    if fmt is WeightFormat.POW2:
        return pow2_decode(codes, POW2_E_BITS)
    bits = WEIGHT_BITS[fmt]
    c = check_int(codes, bits, signed=False, name=f"{fmt.name} codes")
    return np.where(c >= (1 << (bits - 1)), c - (1 << bits), c)


def pack_weights(q, fmt) -> np.ndarray:
    """Weight values ``q`` (K x N) -> packed bytes (ceil(K / lanes) x N, uint8).

    Byte ``[kb, n]`` holds ``q[kb * lanes + j, n]`` in bits ``j*b .. j*b + b - 1``. K is padded
    with zero weights (code 0) up to a multiple of the lanes; POW2 (zero-free) has one lane.
    """
    fmt = _wfmt(fmt)
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"weights must be 2-D (K, N), got shape {q.shape}")
    codes = encode_weights(q, fmt)
    lanes, bits = WEIGHT_LANES[fmt], WEIGHT_BITS[fmt]
    K, N = codes.shape
    kb = -(-K // lanes)
    pad = np.zeros((kb * lanes, N), dtype=np.int64)
    pad[:K] = codes
    pad = pad.reshape(kb, lanes, N)
    out = np.zeros((kb, N), dtype=np.int64)
    for j in range(lanes):
        out |= pad[:, j] << (bits * j)
    return out.astype(np.uint8)


def unpack_weights(packed, fmt, k: int) -> np.ndarray:
    """Inverse of :func:`pack_weights`: the first ``k`` weight values along K (int64)."""
    fmt = _wfmt(fmt)
    p = check_int(packed, 8, signed=False, name="packed weights")
    if p.ndim != 2:
        raise ValueError(f"packed weights must be 2-D, got shape {p.shape}")
    lanes, bits = WEIGHT_LANES[fmt], WEIGHT_BITS[fmt]
    if not 1 <= k <= p.shape[0] * lanes:
        raise ValueError(f"k must be in [1, {p.shape[0] * lanes}] for {p.shape[0]} packed rows, not {k!r}")
    if fmt is WeightFormat.POW2 and (p >> bits).any():
        raise ValueError("POW2 bytes must have a zero high nibble")
    codes = np.stack([(p >> (bits * j)) & ((1 << bits) - 1) for j in range(lanes)], axis=1)
    return decode_weights(codes.reshape(-1, p.shape[1])[:k], fmt)


#: group sizes along K the MixPE core supports (0 = no groups: one scale per channel)
GROUP_SIZES = (32, 64, 128)
#: unsigned per-group dyadic scale multiplier, signed per-group zero point, INT32 bias
GSCALE_BITS = 16
GZERO_BITS = 8
BIAS_BITS = 32
#: the epilogue's accumulator (sum over groups of the dequantized group sums, plus bias)
EDGE_ACC_BITS = 48


@dataclass(frozen=True)
class GroupQuant:
    """Per-group weight quantization along K: ``w[k, n] ~ s * gscale[g, n] * (q[k, n] - zero[g, n])``.

    ``g = k // size``; the last group may be shorter (K not a multiple of the size). The
    common factor ``s`` (a power of two times the activation scale) is folded into the
    per-channel requantization, so the core computes the exact integer
    ``acc[m, n] = sum_g gscale[g, n] * (P_g[m, n] - zero[g, n] * S_g[m])``.
    """

    size: int
    scale: np.ndarray
    zero: np.ndarray

    def __post_init__(self):
        if self.size not in GROUP_SIZES:
            raise ValueError(f"group size must be one of {GROUP_SIZES}, not {self.size!r}")
        sc = check_int(self.scale, GSCALE_BITS, signed=False, name="group scale")
        zp = check_int(self.zero, GZERO_BITS, name="group zero point")
        if sc.ndim != 2 or sc.shape != zp.shape:
            raise ValueError(f"group scale and zero point must both be (groups, N); got "
                             f"{sc.shape} and {zp.shape}")
        object.__setattr__(self, "scale", sc)
        object.__setattr__(self, "zero", zp)

    def groups(self, k: int) -> int:
        return -(-k // self.size)


def group_sums(a, q, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``P`` (groups, M, N) integer group GEMMs and ``S`` (groups, M) activation sums."""
    a = check_int(a, 8, name="a")
    q = check_int(q, 9, name="weights")       # every format's values fit 9 bits (POW2: +128)
    if a.ndim != 2 or q.ndim != 2 or a.shape[1] != q.shape[0]:
        raise ValueError(f"need a (M, K) and q (K, N); got {a.shape} and {q.shape}")
    K = a.shape[1]
    starts = range(0, K, size)
    P = np.stack([a[:, s:s + size] @ q[s:s + size] for s in starts])
    S = np.stack([a[:, s:s + size].sum(axis=1) for s in starts])
    return P, S


def group_dequant(a, q, gq: GroupQuant) -> np.ndarray:
    """``acc[m, n] = sum_g gscale[g, n] * (P_g[m, n] - zero[g, n] * S_g[m])`` (int64, exact)."""
    P, S = group_sums(a, q, gq.size)
    ng, N = P.shape[0], P.shape[2]
    if gq.scale.shape != (ng, N):
        raise ValueError(f"K = {np.shape(a)[1]} in groups of {gq.size} needs scale and zero "
                         f"point tables of shape {(ng, N)}, not {gq.scale.shape}")
    return (gq.scale[:, None, :] * (P - gq.zero[:, None, :] * S[:, :, None])).sum(axis=0)


@dataclass(frozen=True)
class ChannelRequant:
    """Per-output-channel requantization with bias (TFLite / ONNX QDQ / HAWQ-V3 style).

    ``y[m, n] = clamp(round_half_up(((acc[m, n] + bias[n]) * multiplier[n]) >> shift[n]) + zp)``;
    the clamp's lower bound is ``zp`` with ``relu``, else -128. A per-layer :class:`Requant`
    is the one-channel case (:meth:`from_requant`).
    """

    multiplier: np.ndarray
    shift: np.ndarray
    bias: np.ndarray
    zero_point: int = 0
    relu: bool = False

    def __post_init__(self):
        mult = check_int(self.multiplier, REQUANT_MULT_BITS, signed=False, name="multiplier")
        sh = check_int(self.shift, REQUANT_SHIFT_BITS, signed=False, name="shift")
        bias = check_int(self.bias, BIAS_BITS, name="bias")
        if mult.ndim != 1 or mult.shape != sh.shape or mult.shape != bias.shape:
            raise ValueError(f"multiplier, shift and bias must be 1-D of one length (N); got "
                             f"{mult.shape}, {sh.shape}, {bias.shape}")
        lo, hi = int_range(REQUANT_ZP_BITS)
        zp = self.zero_point
        if isinstance(zp, bool) or not isinstance(zp, (int, np.integer)) or not lo <= zp <= hi:
            raise ValueError(f"zero_point must be an integer in [{lo}, {hi}], not {zp!r}")
        if not isinstance(self.relu, (bool, np.bool_)):
            raise ValueError(f"relu must be a bool, not {self.relu!r}")
        object.__setattr__(self, "multiplier", mult)
        object.__setattr__(self, "shift", sh)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "zero_point", int(zp))
        object.__setattr__(self, "relu", bool(self.relu))

    @classmethod
    def from_requant(cls, rq: Requant, n: int, bias=None) -> "ChannelRequant":
        """The per-layer form ``rq`` for ``n`` channels (bias 0 unless given)."""
        bias = np.zeros(n, dtype=np.int64) if bias is None else bias
        return cls(np.full(n, rq.multiplier), np.full(n, rq.shift), bias, rq.zero_point, rq.relu)

    @property
    def channels(self) -> int:
        return self.multiplier.shape[0]


def _edge_acc(acc, bias=None) -> np.ndarray:
    x = np.asarray(acc)
    if x.size and x.dtype.kind == "u" and int(x.max()) >= (1 << (EDGE_ACC_BITS - 1)):
        raise ValueError(f"accumulator exceeds the epilogue's {EDGE_ACC_BITS} bits")
    x = x.astype(np.int64)
    if bias is not None:
        x = x + bias
    lo, hi = int_range(EDGE_ACC_BITS)
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"accumulator (plus bias) exceeds the epilogue's {EDGE_ACC_BITS} bits: "
                         f"[{int(x.min())}, {int(x.max())}]")
    return x


def requantize_channels(acc, crq: ChannelRequant) -> np.ndarray:
    """Per-channel requantization of ``acc`` (M x N) to INT8, exactly as the core's epilogue.

    ``(acc + bias) * multiplier`` is computed exactly (48 + 16 bits) and rounded half up at
    every shift 0..63 (a shift at which ``|product| < 2**(shift-1)`` gives 0).
    """
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise TypeError(f"acc must have an integer dtype, not {acc.dtype}")
    if acc.ndim != 2 or acc.shape[1] != crq.channels:
        raise ValueError(f"acc must be (M, {crq.channels}), not {acc.shape}")
    x = _edge_acc(acc, crq.bias)
    # Python ints: (acc + bias) * multiplier needs up to 64 bits plus the rounding constant
    prod = x.astype(object) * crq.multiplier.astype(object)
    sh = crq.shift.astype(object)
    rnd = np.array([(1 << (int(s) - 1)) if s else 0 for s in crq.shift], dtype=object)
    y = (prod + rnd) >> sh
    y = y + crq.zero_point
    lo = crq.zero_point if crq.relu else -128
    return np.clip(y.astype(np.int64), lo, 127).astype(np.int8)


def mixgemm(a, q, *, fmt=WeightFormat.INT8, group: GroupQuant | None = None,
            requant: ChannelRequant | Requant | None = None) -> np.ndarray:
    """Golden model of the MixPE core: INT8 activations ``a`` (M x K) x weight values ``q``
    (K x N) in format ``fmt``, optional per-group dequantization, then the epilogue.

    Returns the INT8 result with ``requant``; without it the raw accumulators as int32 (the
    core's RAW32 mode), which must then fit 32 bits.
    """
    fmt = _wfmt(fmt)
    a = check_int(a, 8, name="a")
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise TypeError(f"weights must have an integer dtype, not {q.dtype}")
    encode_weights(q, fmt)                               # raises on values outside the format
    if a.ndim != 2 or q.ndim != 2 or a.shape[1] != q.shape[0] or a.shape[1] == 0:
        raise ValueError(f"mixgemm needs a (M, K) and q (K, N) with K >= 1; got {a.shape} and {q.shape}")
    q = q.astype(np.int64)
    acc = a @ q if group is None else group_dequant(a, q, group)
    if requant is None:
        ilo, ihi = int_range(32)
        if acc.size and (acc.min() < ilo or acc.max() > ihi):
            raise ValueError("accumulators exceed int32; RAW32 mode cannot return them")
        return acc.astype(np.int32)
    if isinstance(requant, Requant):
        requant = ChannelRequant.from_requant(requant, q.shape[1])
    if requant.channels != q.shape[1]:
        raise ValueError(f"requantization has {requant.channels} channels, the layer {q.shape[1]}")
    return requantize_channels(acc, requant)


# =============================================================================================
# Convolution and pooling on INT8 NHWC feature maps (sw.model). The core runs a convolution as
# a GEMM over im2col rows produced by its address generator; these functions fix the order.
# =============================================================================================

__all__ += ["conv_out_size", "im2col", "maxpool2d", "global_avgpool_acc"]


def _check_pos_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
    return int(v)


def conv_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution or pooling window along one axis.

    ``(size + 2 * pad - kernel) // stride + 1`` (floor, as ONNX with ``ceil_mode=0``).

    Raises
    ------
    ValueError
        On a non-integer or negative argument, or when the (padded) input is smaller than the
        kernel, i.e. the output would be empty.
    """
    size = _check_pos_int("size", size)
    kernel = _check_pos_int("kernel", kernel)
    stride = _check_pos_int("stride", stride)
    pad = _check_pos_int("pad", pad, 0)
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"a {kernel}x{kernel} window with pad {pad} does not fit an input of "
                         f"size {size}: output size would be {out}")
    return out


def _check_nhwc(x, name: str = "x") -> np.ndarray:
    x = check_int(x, 8, name=name)
    if x.ndim != 4:
        raise ValueError(f"{name} must be an NHWC feature map (B, H, W, C), got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return x


def im2col(x, *, kernel: int, stride: int = 1, pad: int = 0, pad_value: int = 0) -> np.ndarray:
    """Unfold an INT8 NHWC feature map into the GEMM operand of a convolution.

    Row ``m = (b * Ho + oy) * Wo + ox`` (one output pixel, batch-major, then row-major) and
    column ``k = (ky * kernel + kx) * C + c`` (kernel row, kernel column, input channel: the
    channel varies fastest) hold::

        x[b, oy * stride + ky - pad, ox * stride + kx - pad, c]

    or ``pad_value`` where that position lies outside the image. This is exactly the order in
    which the core's im2col address generator streams activations, so a convolution with
    weights ``w[o, c, ky, kx]`` is the GEMM ``im2col(x) @ q`` with
    ``q[(ky * kernel + kx) * C + c, o] = w[o, c, ky, kx]``.

    Parameters
    ----------
    x : array_like, int8 values, shape (B, H, W, C)
    kernel, stride, pad : int
        Square window, step and symmetric zero padding (``pad < kernel``).
    pad_value : int
        The int8 value of the padding: the input zero point (a real zero).

    Returns
    -------
    numpy.ndarray of int8, shape (B * Ho * Wo, kernel * kernel * C)
    """
    x = _check_nhwc(x)
    kernel = _check_pos_int("kernel", kernel)
    stride = _check_pos_int("stride", stride)
    pad = _check_pos_int("pad", pad, 0)
    if pad >= kernel:
        raise ValueError(f"pad must be smaller than the kernel ({kernel}), not {pad!r}")
    lo, hi = int_range(8)
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) \
            or not lo <= pad_value <= hi:
        raise ValueError(f"pad_value must be an int8 integer, not {pad_value!r}")
    b, h, w, c = x.shape
    ho, wo = conv_out_size(h, kernel, stride, pad), conv_out_size(w, kernel, stride, pad)
    xp = np.full((b, h + 2 * pad, w + 2 * pad, c), pad_value, dtype=np.int64)
    xp[:, pad:pad + h, pad:pad + w] = x
    cols = np.empty((b, ho, wo, kernel, kernel, c), dtype=np.int64)
    for ky in range(kernel):
        for kx in range(kernel):
            cols[:, :, :, ky, kx] = xp[:, ky:ky + stride * (ho - 1) + 1:stride,
                                       kx:kx + stride * (wo - 1) + 1:stride]
    return cols.reshape(b * ho * wo, kernel * kernel * c).astype(np.int8)


def maxpool2d(x, *, size: int = 2, stride: int = 2) -> np.ndarray:
    """Max pooling of an INT8 NHWC map, no padding, floor output size: (B, Ho, Wo, C) int8.

    ``y[b, oy, ox, c] = max over ky, kx < size of x[b, oy * stride + ky, ox * stride + kx, c]``.
    Integer max commutes with any monotonic requantization, so input and output share one
    quantization.
    """
    x = _check_nhwc(x)
    size = _check_pos_int("size", size)
    stride = _check_pos_int("stride", stride)
    b, h, w, c = x.shape
    ho, wo = conv_out_size(h, size, stride, 0), conv_out_size(w, size, stride, 0)
    y = None
    for ky in range(size):
        for kx in range(size):
            win = x[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            y = win if y is None else np.maximum(y, win)
    return y.astype(np.int8)


def global_avgpool_acc(x) -> np.ndarray:
    """Sums over H and W of an INT8 NHWC map: int64 (B, C).

    The core runs global average pooling as a GEMM with ``K = H * W`` and one all-ones weight
    column per channel; the division by ``H * W`` is part of the requantization.
    """
    x = _check_nhwc(x)
    return x.sum(axis=(1, 2), dtype=np.int64)


# =============================================================================================
# N:M sparsity (FlightLLM's sparse DSP chain) and two low-bit products per MULT18X18D.
# =============================================================================================

__all__ += ["NM_BLOCK_SIZES", "NMPattern", "NM_PATTERNS", "nm_pattern", "NMSparse",
            "sparse_gemm", "to_dense", "DSP_OPERAND_BITS", "DSP_PACK_SHIFT", "DSP_PACK_FORMATS",
            "dsp_pack_bounds", "dsp_pack2", "dsp_unpack2"]

#: block sizes M of the N:M compressed format
NM_BLOCK_SIZES = (4, 8)


class NMPattern(enum.IntEnum):
    """The N:M patterns the sparse DSP engine selects at run time (shared with the gateware).

    Dense is N = M: every weight of a block is kept, in any order of its indices.
    """

    #: 4:4, dense in blocks of 4
    DENSE4 = 0
    #: 8:8, dense in blocks of 8
    DENSE8 = 1
    NM4_8 = 2
    NM2_4 = 3
    NM1_4 = 4
    NM2_8 = 5

    @property
    def n(self) -> int:
        return NM_PATTERNS[self][0]

    @property
    def m(self) -> int:
        return NM_PATTERNS[self][1]


#: (n, m) of each hardware pattern
NM_PATTERNS = {NMPattern.DENSE4: (4, 4), NMPattern.DENSE8: (8, 8), NMPattern.NM4_8: (4, 8),
               NMPattern.NM2_4: (2, 4), NMPattern.NM1_4: (1, 4), NMPattern.NM2_8: (2, 8)}


def nm_pattern(n: int, m: int) -> NMPattern:
    """The :class:`NMPattern` of ``n:m``; ValueError for a pattern the hardware lacks."""
    for p, nm in NM_PATTERNS.items():
        if nm == (n, m):
            return p
    raise ValueError(f"{n!r}:{m!r} is not a hardware N:M pattern; supported: "
                     f"{', '.join(f'{a}:{b}' for a, b in NM_PATTERNS.values())}")


def _check_nm(n, m) -> tuple[int, int]:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or int(m) not in NM_BLOCK_SIZES:
        raise ValueError(f"m (the block size) must be one of {NM_BLOCK_SIZES}, not {m!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= m:
        raise ValueError(f"n (weights kept per block of {int(m)}) must be an integer in "
                         f"[1, {int(m)}], not {n!r}")
    return int(n), int(m)


@dataclass(frozen=True)
class NMSparse:
    """N:M compressed weights of a ``K x Ncol`` matrix (the engine's wire and buffer format).

    Along K, every block of ``m`` rows keeps ``n`` weights per column. Rows
    ``b*n .. b*n + n - 1`` of ``values`` and ``idx`` belong to block ``b``: weight
    ``values[b*n + j, c]`` sits at dense row ``b*m + idx[b*n + j, c]``. Indices of one block
    and column are distinct (their order is free); a kept weight may be zero (an empty block
    is ``n`` zeros). Construction validates everything and stores read-only int64 copies.

    Parameters
    ----------
    n, m : int
        ``m`` in :data:`NM_BLOCK_SIZES`, ``1 <= n <= m`` (``n == m``: dense).
    values : array_like, int, shape (K/m*n, Ncol)
        Weight values of ``fmt``.
    idx : array_like, int in [0, m), same shape
    fmt : WeightFormat
        INT8, INT4, INT2 or TERNARY (POW2 has no zero, so it cannot pad a block).

    Raises
    ------
    ValueError
        On a bad ``n``/``m``/``fmt``, shapes that differ or are not 2-D, a row count that is
        not a multiple of ``n`` (K not a multiple of ``m``), an index outside ``[0, m)``, a
        duplicate index within a block (the message names block and column), or a value
        outside the format's range.
    TypeError
        If ``values`` or ``idx`` is not of an integer dtype.
    """

    n: int
    m: int
    values: np.ndarray
    idx: np.ndarray
    fmt: WeightFormat = WeightFormat.INT8

    def __post_init__(self):
        n, m = _check_nm(self.n, self.m)
        fmt = _wfmt(self.fmt)
        if fmt is WeightFormat.POW2:
            raise ValueError("N:M sparse weights cannot be POW2: the format has no zero to pad "
                             "a block with")
        values, idx = np.asarray(self.values), np.asarray(self.idx)
        for name, arr in (("values", values), ("idx", idx)):
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name} must have an integer dtype, not {arr.dtype}")
            if arr.ndim != 2:
                raise ValueError(f"{name} must be 2-D (K/m*n, Ncol), got shape {arr.shape}")
        if values.shape != idx.shape:
            raise ValueError(f"values and idx must have the same shape; got {values.shape} "
                             f"and {idx.shape}")
        rows, ncol = values.shape
        if rows == 0 or ncol == 0:
            raise ValueError(f"values must not be empty, got shape {values.shape}")
        if rows % n:
            raise ValueError(f"values has {rows} rows, not a multiple of n = {n}: K must be a "
                             f"multiple of m = {m} (K/m*n rows)")
        lo, hi = weight_range(fmt)
        if int(values.min()) < lo or int(values.max()) > hi:
            raise ValueError(f"{fmt.name} values must lie in [{lo}, {hi}]; found "
                             f"[{int(values.min())}, {int(values.max())}]")
        if int(idx.min()) < 0 or int(idx.max()) >= m:
            bad = np.argwhere((idx < 0) | (idx >= m))[0]
            raise ValueError(f"idx must lie in [0, {m}); idx[{bad[0]}, {bad[1]}] = "
                             f"{int(idx[tuple(bad)])}")
        srt = np.sort(idx.reshape(rows // n, n, ncol), axis=1)
        dup = np.argwhere((srt[:, 1:] == srt[:, :-1]).any(axis=1))
        if dup.size:
            b, c = (int(v) for v in dup[0])
            raise ValueError(f"duplicate index within block {b} (rows {b * n}..{b * n + n - 1}) "
                             f"of column {c}: {sorted(int(v) for v in idx[b * n:(b + 1) * n, c])}")
        for name, arr in (("values", values), ("idx", idx)):
            arr = arr.astype(np.int64)             # always a copy
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "fmt", fmt)

    @property
    def blocks(self) -> int:
        """Blocks along K: ``K / m``."""
        return self.values.shape[0] // self.n

    @property
    def k(self) -> int:
        """Dense rows: ``blocks * m``."""
        return self.blocks * self.m

    @property
    def ncols(self) -> int:
        return self.values.shape[1]

    @property
    def pattern(self) -> NMPattern:
        """The hardware :class:`NMPattern` (ValueError if the engine lacks ``n:m``)."""
        return nm_pattern(self.n, self.m)

    def rows(self) -> np.ndarray:
        """Dense row of every kept weight: ``b*m + idx`` (int64, shape of ``values``)."""
        base = np.repeat(np.arange(self.blocks, dtype=np.int64) * self.m, self.n)
        return base[:, None] + self.idx


def to_dense(sp: NMSparse) -> np.ndarray:
    """The ``K x Ncol`` dense weight matrix (int64) that ``sp`` compresses."""
    if not isinstance(sp, NMSparse):
        raise TypeError(f"to_dense needs an NMSparse, not {type(sp).__name__}")
    out = np.zeros((sp.k, sp.ncols), dtype=np.int64)
    out[sp.rows(), np.arange(sp.ncols)[None, :]] = sp.values
    return out


def sparse_gemm(a, sp: NMSparse, *, a_bits: int = 8) -> np.ndarray:
    """Exact GEMM of signed activations with N:M compressed weights (the engine's golden model).

    ``out[r, c] = sum_b sum_j values[b*n + j, c] * a[r, b*m + idx[b*n + j, c]]``, int64 and
    exact: computed from the compressed form (a gather, not through :func:`to_dense`).

    Parameters
    ----------
    a : array_like, int, shape (M, K)
    sp : NMSparse, K rows

    Returns
    -------
    numpy.ndarray of int64, shape (M, Ncol)
    """
    if not isinstance(sp, NMSparse):
        raise TypeError(f"sparse_gemm needs an NMSparse, not {type(sp).__name__}")
    a = check_int(a, a_bits, name="a")
    if a.ndim != 2 or a.shape[1] != sp.k:
        raise ValueError(f"a must be (M, K) with K = {sp.k} (the weights' dense rows), got "
                         f"shape {a.shape}")
    rows = sp.rows()
    out = np.empty((a.shape[0], sp.ncols), dtype=np.int64)
    # per column: a[:, rows] is (M, K/m*n); bounded memory for any layer size
    for c in range(sp.ncols):
        out[:, c] = a[:, rows[:, c]] @ sp.values[:, c]
    return out


#: signed operand width of the MULT18X18D
DSP_OPERAND_BITS = 18
#: the packing shift of the gateware (``hw.dsp``): inside ``dsp_pack_bounds`` of every format
#: in :data:`DSP_PACK_FORMATS`, so one packed chain serves all of them
DSP_PACK_SHIFT = 12
#: weight formats two of which share one MULT18X18D
DSP_PACK_FORMATS = (WeightFormat.INT4, WeightFormat.INT2, WeightFormat.TERNARY)


def _check_shift(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
            or not 1 <= k <= DSP_OPERAND_BITS - 1:
        raise ValueError(f"k must be an integer in [1, {DSP_OPERAND_BITS - 1}], not {k!r}")
    return int(k)


def dsp_pack_bounds(fmt, *, a_bits: int = 8) -> tuple[int, int]:
    """Inclusive range ``(k_min, k_max)`` of shifts that pack two ``fmt`` weights per DSP.

    One signed 18 x 18 multiplier computes ``P = x * ((w_hi << k) + w_lo)`` for a shared
    signed ``a_bits`` activation ``x``; :func:`dsp_unpack2` returns ``(w_hi*x, w_lo*x)``
    exactly iff

    * ``k >= k_min``: the low product fits a signed k-bit field,
      ``-2**(k-1) <= w_lo*x <= 2**(k-1) - 1``;
    * ``k <= k_max``: the operand fits the signed 18-bit port,
      ``-2**17 <= w_hi*2**k + w_lo <= 2**17 - 1`` for every weight pair (slightly tighter
      than ``width(w_hi) + k <= 18``: with ``w_hi`` at its minimum a negative ``w_lo``
      borrows below it).

    With INT8 activations: INT4 (products in [-1016, 1024]) k in [12, 13]; INT2 ([-254, 256])
    k in [10, 15]; TERNARY ([-128, 128]) k in [9, 16]. :data:`DSP_PACK_SHIFT` = 12 lies in
    all three. INT8 and POW2 weights have no valid k (ValueError).

    The hardware does not accumulate packed products before unpacking (sums of ``L``
    low products need ``k`` about ``log2 L`` bits larger than ``k_max`` allows for INT4): it
    splits every product and carries the two sums separately.
    """
    fmt = _wfmt(fmt)
    wlo, whi = weight_range(fmt)
    alo, ahi = int_range(a_bits)
    prods = [wlo * alo, wlo * ahi, whi * alo, whi * ahi]
    pmin, pmax = min(prods), max(prods)
    k_min = 1
    while not (-(1 << (k_min - 1)) <= pmin and pmax <= (1 << (k_min - 1)) - 1):
        k_min += 1
    olo, ohi = int_range(DSP_OPERAND_BITS)
    k_max = 0
    for k in range(1, DSP_OPERAND_BITS):
        if olo <= (wlo << k) + wlo and (whi << k) + whi <= ohi:
            k_max = k
    if fmt is WeightFormat.POW2 or k_min > k_max:
        raise ValueError(f"{fmt.name} weights cannot be packed two per MULT18X18D (need "
                         f"k >= {k_min} for the low product, operand fits only k <= {k_max}); "
                         f"packable: {[f.name for f in DSP_PACK_FORMATS]}")
    return k_min, k_max


def dsp_pack2(w_hi, w_lo, k: int) -> np.ndarray:
    """The signed 18-bit multiplier operand ``(w_hi << k) + w_lo`` (int64).

    Raises ValueError if an operand leaves the 18-bit range (``k`` above
    :func:`dsp_pack_bounds`' ``k_max`` for these weights).
    """
    k = _check_shift(k)
    hi = check_int(w_hi, DSP_OPERAND_BITS, name="w_hi")
    lo = check_int(w_lo, DSP_OPERAND_BITS, name="w_lo")
    op = (hi << k) + lo
    olo, ohi = int_range(DSP_OPERAND_BITS)
    if op.size and (int(op.min()) < olo or int(op.max()) > ohi):
        raise ValueError(f"packed operand (w_hi << {k}) + w_lo leaves the signed "
                         f"{DSP_OPERAND_BITS}-bit port: found [{int(op.min())}, {int(op.max())}]")
    return op


def dsp_unpack2(p, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a packed product ``p = hi * 2**k + lo`` into ``(hi, lo)`` (int64 arrays).

    ``lo = sext(p[k-1:0])`` and ``hi = (p >> k) + p[k-1]``: when the low product is negative
    it borrowed one from the high part, and its sign bit ``p[k-1]`` gives it back. Exact when
    ``lo`` fits a signed k-bit field (:func:`dsp_pack_bounds`).
    """
    k = _check_shift(k)
    p = np.asarray(p)
    if p.dtype.kind not in "iu":
        raise TypeError(f"p must have an integer dtype, not {p.dtype}")
    p = p.astype(np.int64)
    lo = wrap_int(p, k)
    hi = (p >> k) + ((p >> (k - 1)) & 1)
    return hi, lo
