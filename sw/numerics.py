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
