"""Quantizers for the MixPE core: weights, activations and whole linear layers.

Float weights and activations go in; integer values, scales and zero points that the core's
golden model (:func:`sw.numerics.mixgemm`) consumes come out. Nothing here does integer
arithmetic of its own: a quantized layer runs through :func:`sw.numerics.mixgemm`, so its
output is bit-exact with the device by construction. NumPy only.

Weight quantizers (:func:`quantize_weights`)
--------------------------------------------
Every :class:`sw.numerics.WeightFormat`, per output channel (one scale per column of the
``K x N`` weight matrix) or per group of ``G`` consecutive rows along K within a column
(``G`` in :data:`sw.numerics.GROUP_SIZES`; the last group is shorter when K is not a multiple
of ``G``):

* INT8 / INT4 / INT2: uniform, ``w ~ s * (q - z)`` with ``q`` in the format's two's complement
  range. Symmetric: ``z = 0``. Asymmetric: the range ``[min(w, 0), max(w, 0)]`` (zero always
  included, as in GPTQ and ONNX, so that ``z`` lies in the format's range and zero is exact) is
  mapped onto the full integer range, ``z = round(qmin - lo / s)``. Rounding half to even.
* TERNARY: ``q`` in {-1, 0, +1}, ``w ~ s * q``, ternary weight networks (TWN, Li et al. 2016):
  threshold ``delta = 0.7 * mean|w|``, ``q = sign(w) * (|w| > delta)``, ``s = mean |w|`` over
  the weights above the threshold. Symmetric only.
* POW2: ``q = +-2**e``, ``e`` in 0..7, ``w ~ s * q`` (DenseShift-style, zero-free: a zero weight
  becomes ``+s``). Each ``|w| / s`` is rounded to the nearest power of two *by value* (the
  midpoint between ``2**e`` and ``2**(e+1)`` is ``1.5 * 2**e``; ties go to the larger
  magnitude), computed exactly with ``frexp``. Symmetric only.

The scale of the uniform and POW2 formats comes from ``method``: ``"minmax"`` maps the largest
magnitude (or the range) onto the format's largest code; ``"mse"`` (default) tries clipping
ratios ``c`` in :data:`CLIP_GRID` (``c = 1`` is minmax) and keeps, per channel or group, the
one with the smallest squared error. TERNARY always uses TWN.

Linear layers (:func:`quantize_linear`)
---------------------------------------
Integer-only inference as in TFLite / ONNX QDQ / HAWQ-V3. With input ``x ~ sx * (xq - xz)``,
output ``y ~ sy * (yq - yz)`` and weights ``w[k, n] ~ u[n] * gscale[g, n] * (q[k, n] - z[g, n])``
(``g = k // G``) the core computes, on the raw int8 ``xq``::

    acc[m, n] = sum_g gscale[g, n] * (P_g[m, n] - z[g, n] * S_g[m])    (or xq @ q without groups)
    yq        = requantize_channels(acc, ChannelRequant(M, shift, bias, yz, relu))

where ``M[n] * 2**-shift[n] ~ sx * u[n] / sy`` (:func:`sw.numerics.to_dyadic`) and the INT32
bias folds the float bias and the input zero point::

    bias[n] = round(b[n] / (sx * u[n])) - xz * sum_g gscale[g, n] * (sum_{k in g} q[k, n] - |g| * z[g, n])

Group scales: the quantizer's float scale ``s[g, n]`` becomes the unsigned integer
``gscale[g, n] = round(s[g, n] / s_max[n] * 2**(gscale_bits - 1))`` with ``s_max[n]`` the
channel's largest group scale, and the unit ``u[n] = s_max[n] * 2**-(gscale_bits - 1)`` goes
into the requantization multiplier and the bias (with two floors for channels whose weights
are negligible, see :func:`quantize_linear`). The codes are then recomputed with the
effective scale ``u[n] * gscale[g, n]`` (uniform and POW2 formats; TERNARY keeps its TWN
support). The core's ungrouped path has no zero point, so an *asymmetric per-channel* layer is
expressed as a :class:`~sw.numerics.GroupQuant` with groups of 128 that all share the
channel's zero point and ``gscale = 1`` (exactly the same arithmetic).

N:M sparse layers (``quantize_linear(..., sparse=(n, m))``) for the sparse DSP engine: the
float weights are pruned by magnitude (:func:`prune_nm`, every block of ``m`` rows along K
keeps ``n`` weights per column; with ``pair_columns`` columns ``2c`` and ``2c + 1`` share one
mask, as the packed engine needs; with ``share = G`` every group of ``G`` consecutive columns
does, as an engine whose chains share their indices needs), the pruned weights are quantized
per channel and symmetrically (a pruned weight is code 0), and the kept codes are compressed
(:func:`compress_nm`) into :attr:`QuantLinear.sparse`. The golden model is then
:func:`sw.numerics.sparse_gemm` followed by the same per-channel epilogue, which equals the
dense golden model on the pruned codes :attr:`QuantLinear.q`.

Typical error of a whole layer (random Gaussian weights and inputs, K = 200-256, int8 input and
output; relative L2 error of :meth:`QuantLinear.forward` against :meth:`QuantLinear.float_reference`,
asserted in ``tests/test_quant.py`` against :data:`LINEAR_REL_ERROR_BOUND`): INT8 about 1.5 %
(mostly the int8 input and output), INT4 about 10 % per channel and 8 % with groups of 32,
POW2 about 16-18 %, INT2 33-38 %, TERNARY about 43 %.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sw import numerics
from sw.numerics import ChannelRequant, GroupQuant, WeightFormat

__all__ = [
    "CLIP_GRID", "METHODS", "LINEAR_REL_ERROR_BOUND", "ErrorStats", "WeightQuant",
    "quantize_weights", "quantize_act", "dequantize", "calibrate_act", "QuantLinear",
    "quantize_linear", "linear_from_integers",
]

#: clipping ratios tried by ``method="mse"`` (1.0 first: ties keep the min/max scale)
CLIP_GRID = np.linspace(1.0, 0.3, 36)
#: scale selection methods of the uniform and POW2 quantizers
METHODS = ("mse", "minmax")
#: documented bound on the relative L2 error of a random Gaussian layer (see module docstring)
LINEAR_REL_ERROR_BOUND = {WeightFormat.INT8: 0.03, WeightFormat.INT4: 0.15,
                          WeightFormat.INT2: 0.50, WeightFormat.TERNARY: 0.55,
                          WeightFormat.POW2: 0.25}

#: largest POW2 exponent
_POW2_EMAX = (1 << numerics.POW2_E_BITS) - 1
#: per-channel asymmetric layers use this group size (fewest groups)
_CHANNEL_GROUP = max(numerics.GROUP_SIZES)
#: a channel's bias, in accumulator units, stays below this (the rest of INT32 is for x_zero)
_BIAS_HEADROOM = 2.0 ** 30
#: smallest requantization scale x_scale * u / y_scale: still a normalised 16-bit multiplier
#: at the largest shift (2**15 / 2**63)
_MIN_REQUANT = 2.0 ** (numerics.REQUANT_MULT_BITS - 1 - ((1 << numerics.REQUANT_SHIFT_BITS) - 1))


# -- parameter validation ---------------------------------------------------------------------

def _check_fmt(fmt) -> WeightFormat:
    if isinstance(fmt, WeightFormat):
        return fmt
    if isinstance(fmt, str) and fmt.upper() in WeightFormat.__members__:
        return WeightFormat[fmt.upper()]
    if isinstance(fmt, (int, np.integer)) and not isinstance(fmt, bool):
        try:
            return WeightFormat(int(fmt))
        except ValueError:
            pass
    raise ValueError(f"fmt must be a sw.numerics.WeightFormat (one of "
                     f"{[f.name for f in WeightFormat]}) or its name, not {fmt!r}")


def _check_group(group) -> int | None:
    if group is None:
        return None
    if isinstance(group, (int, np.integer)) and not isinstance(group, bool) \
            and int(group) in numerics.GROUP_SIZES:
        return int(group)
    raise ValueError(f"group must be None (one scale per output channel) or one of "
                     f"{numerics.GROUP_SIZES}, not {group!r}")


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, not {v!r}")
    return bool(v)


def _check_scale(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite positive number, not {v!r}")
    return float(v)


def _check_zp(name: str, v) -> int:
    lo, hi = numerics.int_range(8)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}] (int8), not {v!r}")
    return int(v)


def _check_float_array(name: str, x, ndim: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, not of dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return arr


def _check_weights(w) -> np.ndarray:
    w = _check_float_array("w", w, 2)
    if 0 in w.shape:
        raise ValueError(f"w must be a non-empty (K, N) matrix, got shape {w.shape}")
    return w


def _check_int_matrix(q) -> np.ndarray:
    """``q`` as an array: a non-empty (K, N) matrix of an integer dtype."""
    qa = np.asarray(q)
    if qa.dtype.kind not in "iu":
        raise TypeError(f"q must have an integer dtype, not {qa.dtype}")
    if qa.ndim != 2 or 0 in qa.shape:
        raise ValueError(f"q must be a non-empty (K, N) matrix, got shape {qa.shape}")
    return qa


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    return method


# -- error statistics -----------------------------------------------------------------------

@dataclass(frozen=True)
class ErrorStats:
    """Reconstruction error of an approximation against float reference values.

    Attributes
    ----------
    mse : float
        Mean squared error.
    max_abs : float
        Largest absolute error.
    sqnr_db : float
        Signal-to-quantization-noise ratio ``10 log10(sum ref**2 / sum err**2)`` in dB
        (``inf`` when the approximation is exact).
    """

    mse: float
    max_abs: float
    sqnr_db: float

    @classmethod
    def of(cls, ref, approx) -> "ErrorStats":
        """Statistics of ``approx`` against ``ref`` (arrays of one shape)."""
        ref = np.asarray(ref, dtype=np.float64)
        err = np.asarray(approx, dtype=np.float64) - ref
        if ref.shape != err.shape:
            raise ValueError(f"shapes differ: {ref.shape} and {err.shape}")
        noise, signal = float(np.sum(err ** 2)), float(np.sum(ref ** 2))
        if noise == 0:
            sqnr = math.inf
        elif signal == 0:
            sqnr = -math.inf
        else:
            sqnr = 10 * math.log10(signal / noise)
        return cls(float(np.mean(err ** 2)) if err.size else 0.0,
                   float(np.max(np.abs(err))) if err.size else 0.0, sqnr)


# -- weight quantizers ----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class WeightQuant:
    """Quantized weights: ``w[k, n] ~ scale[g, n] * (q[k, n] - zero[g, n])``.

    Attributes
    ----------
    fmt : WeightFormat
    q : numpy.ndarray of int64, shape (K, N)
        Weight values (not codes) of ``fmt``: :func:`sw.numerics.encode_weights` accepts them.
    scale : numpy.ndarray of float64
        Shape ``(N,)`` per channel (``group is None``), else ``(groups, N)``; 0 for an all-zero
        channel or group.
    zero : numpy.ndarray of int64
        Zero points, shape of ``scale`` (all 0 when symmetric).
    group : int or None
        Group size along K, or None (per output channel).
    symmetric : bool
    stats : ErrorStats
        Of :meth:`dequantize` against the float weights.
    """

    fmt: WeightFormat
    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    group: int | None
    symmetric: bool
    stats: ErrorStats

    def dequantize(self) -> np.ndarray:
        """The float64 weights ``scale * (q - zero)`` that ``q`` stands for, (K, N)."""
        return _dequant(self.q, self.scale, self.zero, self.group)


def _expand(t: np.ndarray, k: int, group: int | None) -> np.ndarray:
    """Per-channel (N,) or per-group (groups, N) table -> (K, N) per weight."""
    if group is None:
        return np.broadcast_to(t, (k, t.shape[-1]))
    return np.repeat(t, group, axis=0)[:k]


def _dequant(q, scale, zero, group) -> np.ndarray:
    k = q.shape[0]
    return _expand(scale, k, group) * (q - _expand(zero, k, group))


def _blocks(w: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) -> zero-padded (groups, size, N) blocks and the (groups, size, 1) mask of real rows."""
    k, n = w.shape
    ng = -(-k // size)
    pad = np.zeros((ng * size, n))
    pad[:k] = w
    mask = (np.arange(ng * size) < k).reshape(ng, size, 1)
    return pad.reshape(ng, size, n), mask


def _codes(w, s, z, fmt: WeightFormat) -> np.ndarray:
    """Nearest values of a uniform or POW2 format for ``w`` given scale ``s`` and zero ``z``
    (broadcastable). A zero scale gives ``z`` (uniform) or ``+1`` (POW2)."""
    live = s > 0
    r = np.divide(w, s, out=np.zeros(np.broadcast_shapes(np.shape(w), np.shape(s))), where=live)
    if fmt is WeightFormat.POW2:
        mant, ex = np.frexp(np.abs(r))           # |r| = mant * 2**ex, mant in [0.5, 1)
        e = np.where(mant >= 0.75, ex, ex - 1)   # 2*mant >= 1.5: round up to 2**ex
        e = np.where(r == 0, 0, np.clip(e, 0, _POW2_EMAX)).astype(np.int64)
        return np.where(r < 0, -1, 1) * (np.int64(1) << e)
    lo, hi = numerics.weight_range(fmt)
    return np.where(live, np.clip(np.rint(r) + z, lo, hi), z).astype(np.int64)


def _quantize_blocks(wb: np.ndarray, mask: np.ndarray, fmt: WeightFormat, symmetric: bool,
                     method: str):
    """Quantize (groups, size, N) blocks; returns q (same shape), scale and zero (groups, N)."""
    ng, _, n = wb.shape
    if fmt is WeightFormat.TERNARY:
        a = np.abs(wb)
        cnt = mask.sum(axis=1)                                  # (groups, 1)
        delta = 0.7 * a.sum(axis=1) / cnt                       # padding rows are zero
        sup = (a > delta[:, None, :]) & mask
        nsup = sup.sum(axis=1)
        scale = np.divide((a * sup).sum(axis=1), nsup, out=np.zeros((ng, n)), where=nsup > 0)
        q = (np.sign(wb) * sup).astype(np.int64)
        return q, scale, np.zeros((ng, n), dtype=np.int64)

    if fmt is WeightFormat.POW2:
        base = np.abs(wb).max(axis=1) / (1 << _POW2_EMAX)
        zero = np.zeros((ng, n), dtype=np.int64)
    else:
        lo, hi = numerics.weight_range(fmt)
        if symmetric:
            base = np.abs(wb).max(axis=1) / hi
            zero = np.zeros((ng, n), dtype=np.int64)
        else:                                    # zero included: padding does not move the range
            wlo, whi = np.minimum(wb.min(axis=1), 0), np.maximum(wb.max(axis=1), 0)
            base = (whi - wlo) / (hi - lo)
            ratio = np.divide(wlo, base, out=np.zeros((ng, n)), where=base > 0)
            zero = np.clip(np.rint(lo - ratio), lo, hi).astype(np.int64)
    grid = CLIP_GRID if method == "mse" else CLIP_GRID[:1]
    best = None
    for c in grid:
        s = base * c
        q = _codes(wb, s[:, None, :], zero[:, None, :], fmt)
        err = (((s[:, None, :] * (q - zero[:, None, :]) - wb) ** 2) * mask).sum(axis=1)
        if best is None:
            best = [err, s, q]
        else:
            better = err < best[0]
            best[0] = np.where(better, err, best[0])
            best[1] = np.where(better, s, best[1])
            best[2] = np.where(better[:, None, :], q, best[2])
    return best[2], best[1], zero


def quantize_weights(w, *, fmt, group=None, symmetric: bool = True,
                     method: str = "mse") -> WeightQuant:
    """Quantize a float weight matrix to one of the MixPE weight formats.

    Parameters
    ----------
    w : array_like, shape (K, N)
        Float weights; column ``n`` feeds output channel ``n``, K is the reduction axis.
    fmt : WeightFormat or str
        Target format (``"INT4"`` etc. are accepted).
    group : None or int
        None: one scale per output channel; else a size from :data:`sw.numerics.GROUP_SIZES`
        (groups of consecutive rows along K, the last one possibly shorter).
    symmetric : bool
        False adds an integer zero point per channel or group (uniform formats only).
    method : {"mse", "minmax"}
        Scale selection of the uniform and POW2 formats (see the module docstring).

    Returns
    -------
    WeightQuant

    Raises
    ------
    ValueError
        On a bad format, group size or method, a non-finite or non-2-D ``w``, or an
        asymmetric TERNARY / POW2 request.
    """
    fmt = _check_fmt(fmt)
    group = _check_group(group)
    symmetric = _check_bool("symmetric", symmetric)
    method = _check_method(method)
    w = _check_weights(w)
    if not symmetric and fmt in (WeightFormat.TERNARY, WeightFormat.POW2):
        raise ValueError(f"{fmt.name} weights are symmetric only (a zero point would move the "
                         f"{'three levels' if fmt is WeightFormat.TERNARY else 'powers of two'} "
                         f"off zero); use symmetric=True")
    k, n = w.shape
    wb, mask = _blocks(w, k if group is None else group)
    qb, scale, zero = _quantize_blocks(wb, mask, fmt, symmetric, method)
    q = qb.reshape(-1, n)[:k]
    if group is None:
        scale, zero = scale[0], zero[0]
    stats = ErrorStats.of(w, _dequant(q, scale, zero, group))
    return WeightQuant(fmt, q, scale, zero, group, symmetric, stats)


# -- activations ----------------------------------------------------------------------------

def quantize_act(x, scale, zero_point) -> np.ndarray:
    """Float activations -> int8, as ONNX ``QuantizeLinear`` (onnxruntime) does it.

    ``clamp(round_half_to_even(x / scale) + zero_point, -128, 127)``, in float64.

    Parameters
    ----------
    x : array_like
        Float values (any shape).
    scale : float
        Positive step.
    zero_point : int
        int8 zero point.

    Returns
    -------
    numpy.ndarray of int8
    """
    scale = _check_scale("scale", scale)
    zero_point = _check_zp("zero_point", zero_point)
    x = _check_float_array("x", x)
    return np.clip(np.rint(x / scale) + zero_point, -128, 127).astype(np.int8)


def dequantize(y, scale, zero_point) -> np.ndarray:
    """int8 (or any integer) values -> float64 ``(y - zero_point) * scale``."""
    scale = _check_scale("scale", scale)
    zero_point = _check_zp("zero_point", zero_point)
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must have an integer dtype, not {y.dtype}")
    return (y.astype(np.float64) - zero_point) * scale


def calibrate_act(x, *, symmetric: bool = False) -> tuple[float, int]:
    """Pick an int8 ``(scale, zero_point)`` for activations from their min / max.

    Asymmetric (default): the range ``[min(x, 0), max(x, 0)]`` maps onto ``[-128, 127]`` with
    ``scale = (hi - lo) / 255`` and ``zero_point = round(-128 - lo / scale)`` (zero is exact, as
    in onnxruntime's MinMax calibration). Symmetric: ``scale = max|x| / 127``, zero point 0.
    All-zero data give ``(1.0, 0)``.

    Parameters
    ----------
    x : array_like
        Float calibration data (any shape, at least one element).
    symmetric : bool

    Returns
    -------
    (float, int)
    """
    symmetric = _check_bool("symmetric", symmetric)
    x = _check_float_array("x", x)
    if x.size == 0:
        raise ValueError("x must hold at least one value to calibrate on")
    if symmetric:
        m = float(np.abs(x).max())
        return (m / 127 if m > 0 else 1.0), 0
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / 255
    return scale, int(np.clip(np.rint(-128 - lo / scale), -128, 127))


# -- linear layers --------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QuantLinear:
    """A quantized linear layer ``y = x @ w + bias`` for the MixPE core (integer-only).

    Built by :func:`quantize_linear`; the module docstring gives the arithmetic.

    Attributes
    ----------
    fmt : WeightFormat
    q : numpy.ndarray of int64, shape (K, N)
        Weight values of ``fmt``.
    group : GroupQuant or None
        The core's per-group tables (integer ``gscale`` and zero points); also set for an
        asymmetric per-channel layer (see :attr:`group_size`).
    requant : ChannelRequant
        Per-channel dyadic multiplier and shift, folded INT32 bias, output zero point, ReLU.
    w_scale : numpy.ndarray of float64
        Effective float weight scales ``u[n] * gscale[g, n]``: (N,) per channel, else
        (groups, N) (groups of :attr:`group_size`, or of 128 for asymmetric per channel).
    w_zero : numpy.ndarray of int64
        Weight zero points, shape of :attr:`w_scale`.
    unit : numpy.ndarray of float64, shape (N,)
        Per-channel weight unit ``u[n]`` folded into the requantization.
    group_size : int or None
        The requested group size (None: per output channel).
    symmetric : bool
    x_scale, x_zero, y_scale, y_zero : float, int
        Input and output quantization.
    relu : bool
    w : numpy.ndarray of float64, shape (K, N)
        The float weights (of a sparse layer: as given, before pruning).
    bias : numpy.ndarray of float64, shape (N,), or None
        The float bias.
    stats : ErrorStats
        Of :attr:`dequantized_weights` (what the integers stand for) against :attr:`w` (of a
        sparse layer this includes the pruning error).
    sparse : sw.numerics.NMSparse or None
        N:M compressed weights of a sparse layer (the kept codes of :attr:`q`, which holds
        zeros at the pruned positions); None for a dense layer. A sparse layer runs on the
        sparse DSP engine (``sw.driver.Accelerator.linear``).
    """

    fmt: WeightFormat
    q: np.ndarray
    group: GroupQuant | None
    requant: ChannelRequant
    w_scale: np.ndarray
    w_zero: np.ndarray
    unit: np.ndarray
    group_size: int | None
    symmetric: bool
    x_scale: float
    x_zero: int
    y_scale: float
    y_zero: int
    relu: bool
    w: np.ndarray
    bias: np.ndarray | None
    stats: ErrorStats
    sparse: numerics.NMSparse | None = None

    @property
    def in_features(self) -> int:
        return self.q.shape[0]

    @property
    def out_features(self) -> int:
        return self.q.shape[1]

    @property
    def dequantized_weights(self) -> np.ndarray:
        """The float64 weights (K, N) the integer layer stands for."""
        return _dequant(self.q, self.w_scale, self.w_zero, self.group_size)

    def golden(self, x_q) -> np.ndarray:
        """int8 input (M, K) -> int8 output (M, N) through :func:`sw.numerics.mixgemm`; a
        sparse layer through :func:`sw.numerics.sparse_gemm` on :attr:`sparse` and the same
        per-channel epilogue (:func:`sw.numerics.requantize_channels`)."""
        x_q = np.asarray(x_q)
        if x_q.ndim != 2 or x_q.shape[1] != self.in_features:
            raise ValueError(f"x_q must be (M, {self.in_features}), got shape {x_q.shape}")
        if self.sparse is None:
            return numerics.mixgemm(x_q, self.q, fmt=self.fmt, group=self.group,
                                    requant=self.requant)
        rq = self.requant
        if isinstance(rq, numerics.Requant):
            rq = ChannelRequant.from_requant(rq, self.out_features)
        return numerics.requantize_channels(numerics.sparse_gemm(x_q, self.sparse), rq)

    def forward(self, x) -> np.ndarray:
        """Float input (M, K) -> quantize -> :meth:`golden` -> dequantized float output (M, N)."""
        x = _check_float_array("x", x, 2)
        return dequantize(self.golden(quantize_act(x, self.x_scale, self.x_zero)),
                          self.y_scale, self.y_zero)

    def packed(self) -> np.ndarray:
        """The weights as the core's W buffer holds them (:func:`sw.numerics.pack_weights`)."""
        return numerics.pack_weights(self.q, self.fmt)

    def float_reference(self, x) -> np.ndarray:
        """``x @ w + bias`` (then ReLU if set) in float64, the layer before quantization."""
        x = _check_float_array("x", x, 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x must be (M, {self.in_features}), got shape {x.shape}")
        y = x @ self.w
        if self.bias is not None:
            y = y + self.bias
        return np.maximum(y, 0) if self.relu else y


def _check_sparse(sparse) -> tuple[int, int] | None:
    """``sparse`` of :func:`quantize_linear` -> None or a validated ``(n, m)``."""
    if sparse is None:
        return None
    if isinstance(sparse, numerics.NMPattern):
        return sparse.n, sparse.m
    if isinstance(sparse, (tuple, list)) and len(sparse) == 2:
        return numerics._check_nm(*sparse)
    raise ValueError(f"sparse must be None (dense), an (n, m) pair or a sw.numerics.NMPattern, "
                     f"not {sparse!r}")


def _sparse_mask(w: np.ndarray, n: int, m: int, pair_columns: bool,
                 share: int = 1) -> np.ndarray:
    """:func:`prune_nm` of ``w``; with ``pair_columns`` and an odd N the last column is
    paired with a zero column (it has no partner on the packed engine)."""
    k, ncol = w.shape
    if pair_columns and ncol % 2:
        wide = np.concatenate([w, np.zeros((k, 1))], axis=1)
        return prune_nm(wide, n, m, pair_columns=True, share=share)[:, :ncol]
    return prune_nm(w, n, m, pair_columns=pair_columns, share=share)


def quantize_linear(w, bias, *, fmt, group=None, symmetric: bool = True, x_scale,
                    x_zero: int = 0, y_scale, y_zero: int = 0, relu: bool = False,
                    gscale_bits: int = 8, method: str = "mse", sparse=None,
                    pair_columns: bool = False, share: int = 1) -> QuantLinear:
    """Quantize ``y = x @ w + bias`` for the MixPE core (or, N:M sparse, its DSP engine).

    Parameters
    ----------
    w : array_like, shape (K, N)
        Float weights.
    bias : array_like, shape (N,), or None
        Float bias.
    fmt, group, symmetric, method
        As in :func:`quantize_weights`.
    x_scale, x_zero : float, int
        Quantization of the int8 input, ``x ~ x_scale * (x_q - x_zero)``.
    y_scale, y_zero : float, int
        Quantization of the int8 output.
    relu : bool
        Clamp the output at ``y_zero`` (ReLU in the quantized domain).
    gscale_bits : int
        Resolution of the integer group scales: a channel's largest group scale becomes
        ``2**(gscale_bits - 1)``; in ``[2, sw.numerics.GSCALE_BITS]``. Unused per channel.
    sparse : None, (n, m) or sw.numerics.NMPattern
        None: a dense layer (default). Otherwise prune ``w`` by magnitude to ``n:m``
        (:func:`prune_nm`; ``m`` in ``sw.numerics.NM_BLOCK_SIZES``, ``1 <= n <= m``, K a
        multiple of ``m``) before quantizing, and keep the compressed codes in
        :attr:`QuantLinear.sparse`. Needs ``group=None``, ``symmetric=True`` and a format
        other than POW2 (a pruned weight must be the code 0). Any ``n:m`` is accepted here;
        the DSP engine runs the :class:`sw.numerics.NMPattern` s its IDENTIFY reports.
    pair_columns : bool
        Sparse layers only: columns ``2c`` and ``2c + 1`` keep the same rows (what a packed
        DSP engine needs: one index per column pair); with an odd N the last column is
        pruned alone.
    share : int
        Sparse layers only: consecutive groups of ``share`` columns from column 0 keep the
        same rows (:func:`prune_nm`; what a DSP engine whose chains share their indices
        needs: ``share = DeviceInfo.dsp_index_group``); the last group may be partial. A
        positive integer, 1 or even with ``pair_columns``.

    Returns
    -------
    QuantLinear

    Raises
    ------
    ValueError
        On a bad parameter or shape (for ``sparse``: a bad ``n:m``, K not a multiple of
        ``m``, groups, asymmetric or POW2 weights, ``pair_columns`` or ``share > 1``
        without ``sparse``, an odd ``share > 1`` with ``pair_columns``);
        when the folded bias of a channel does not fit INT32
        (in practice: a large ``x_zero`` times a large weight column sum); when a channel's
        requantization scale ``x_scale * u[n] / y_scale`` is too large for the 16-bit dyadic
        multiplier; when a channel's worst-case accumulator exceeds the epilogue's
        :data:`sw.numerics.EDGE_ACC_BITS` bits. The message names the channel and the fix.

    Notes
    -----
    The unit ``u[n]`` has two floors, so that tiny weights never make a layer unusable: the
    bias in accumulator units ``b[n] / (x_scale * u[n])`` stays within ``2**30`` (the rest of
    INT32 is left to the ``x_zero`` term), and ``x_scale * u[n] / y_scale >= 2**-48`` (a
    normalised multiplier at shift 63). A channel that hits a floor (e.g. a dead unit whose
    weights decayed to ~1e-40 next to a bias of 0.1) is quantized with the coarser unit: its
    weights, below the resolution either the bias or the output can show, round to zero
    (to +-``u[n]`` for POW2, which has no zero); :attr:`QuantLinear.stats` includes that.
    An all-zero channel is exact in every format but POW2 per channel (which gives ``+u[n]``).
    """
    fmt = _check_fmt(fmt)
    group = _check_group(group)
    symmetric = _check_bool("symmetric", symmetric)
    nm = _check_sparse(sparse)
    pair_columns = _check_bool("pair_columns", pair_columns)
    share = _check_share(share)
    if nm is None and pair_columns:
        raise ValueError("pair_columns applies to N:M sparse layers only; pass sparse=(n, m) "
                         "as well, or pair_columns=False")
    if nm is None and share != 1:
        raise ValueError(f"share applies to N:M sparse layers only; pass sparse=(n, m) as "
                         f"well, or share=1 (not {share})")
    if nm is not None:
        why = ("groups (the DSP engine requantizes per output channel only); pass group=None"
               if group is not None else
               "asymmetric weights (a pruned weight must be the code 0); pass symmetric=True"
               if not symmetric else
               "POW2 weights (the format has no zero for a pruned weight)"
               if fmt is WeightFormat.POW2 else None)
        if why:
            raise ValueError(f"an N:M sparse layer (sparse={sparse!r}) cannot have {why}")
    relu = _check_bool("relu", relu)
    x_scale = _check_scale("x_scale", x_scale)
    y_scale = _check_scale("y_scale", y_scale)
    x_zero = _check_zp("x_zero", x_zero)
    y_zero = _check_zp("y_zero", y_zero)
    if isinstance(gscale_bits, bool) or not isinstance(gscale_bits, (int, np.integer)) \
            or not 2 <= gscale_bits <= numerics.GSCALE_BITS:
        raise ValueError(f"gscale_bits must be an integer in [2, {numerics.GSCALE_BITS}], "
                         f"not {gscale_bits!r}")
    w = _check_weights(w)
    k, n = w.shape
    if bias is not None:
        bias = _check_float_array("bias", bias, 1)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},) for w of shape {w.shape}, "
                             f"got {bias.shape}")
    w_float = w
    mask = None
    if nm is not None:
        mask = _sparse_mask(w, *nm, pair_columns, share)   # raises for K not a multiple of m
        w = np.where(mask, w, 0.0)                      # quantize what is kept
    wq = quantize_weights(w, fmt=fmt, group=group, symmetric=symmetric, method=method)

    b = np.zeros(n) if bias is None else bias

    # the per-channel unit u[n] that goes into the requantization
    nz = wq.scale[wq.scale > 0]
    # An all-zero channel has scale 0; any unit represents it (its values are the zero point,
    # or gscale 0). POW2 is zero-free: per channel it gets the layer's smallest scale.
    sub = (nz.min() if fmt is WeightFormat.POW2 else nz.max()) if nz.size else 1.0
    if group is None:
        natural = np.where(wq.scale > 0, wq.scale, sub)
    else:
        one = 1 << (gscale_bits - 1)
        smax = wq.scale.max(axis=0)
        natural = np.where(smax > 0, smax, sub) / one
    # Floors: a channel whose weights are negligible next to its bias (a dead unit whose
    # weights decayed to ~0) or next to the output step gets a coarser unit, so that the
    # folded bias keeps 2**30 of headroom and the multiplier stays normalised.
    floor = np.maximum(np.abs(b) / (x_scale * _BIAS_HEADROOM), _MIN_REQUANT * y_scale / x_scale)
    unit = np.maximum(natural, floor)
    coarse = unit > natural

    if group is None:
        gscale = None
        zero = wq.zero
        w_scale = unit
        if fmt is WeightFormat.TERNARY:
            q = np.where(coarse, 0, wq.q)
        else:
            q = _codes(w, unit, zero, fmt)                # = wq.q unless the unit changed
        if symmetric:
            gq = None
        else:                                 # asymmetric per channel: equal groups of 128
            ng = -(-k // _CHANNEL_GROUP)
            gq = GroupQuant(_CHANNEL_GROUP, np.ones((ng, n), dtype=np.int64),
                            np.broadcast_to(zero, (ng, n)).copy())
    else:
        gscale = np.clip(np.rint(wq.scale / unit), 0, one).astype(np.int64)
        zero = wq.zero
        w_scale = gscale * unit
        q = wq.q
        if fmt is not WeightFormat.TERNARY:               # recode with the effective scales
            q = _codes(w, _expand(w_scale, k, group), _expand(zero, k, group), fmt)
        gq = GroupQuant(group, gscale, zero)
    stats = ErrorStats.of(w_float, _dequant(q, w_scale, zero, group))
    bias_acc = [round(float(b[c] / (x_scale * unit[c]))) for c in range(n)]
    layer = _finish_linear(fmt, q, gq, w_scale, zero, unit, group, symmetric, x_scale, x_zero,
                           y_scale, y_zero, relu, w_float, bias, stats, bias_acc)
    if mask is None:
        return layer
    if np.any(q[~mask]):                    # symmetric codes of 0.0 are 0: cannot happen
        raise AssertionError("a pruned weight quantized to a non-zero code")
    sp = compress_nm(q, mask, n=nm[0], m=nm[1], fmt=fmt)
    return dataclasses.replace(layer, sparse=sp)


def _finish_linear(fmt, q, gq, w_scale, zero, unit, group, symmetric, x_scale, x_zero, y_scale,
                   y_zero, relu, w, bias, stats, bias_acc) -> QuantLinear:
    """Fold the bias and the input zero point into the INT32 bias, pick the dyadic multipliers,
    check the accumulator bound and build the :class:`QuantLinear` (shared by
    :func:`quantize_linear` and :func:`linear_from_integers`).

    ``bias_acc[n]`` is the bias in accumulator units ``x_scale * unit[n]`` (an integer).
    """
    k, n = q.shape
    if gq is None:
        colsum = q.sum(axis=0)                            # for the x_zero folding
    else:
        colsum = numerics.group_dequant(np.ones((1, k), dtype=np.int64), q, gq)[0]

    # folded INT32 bias, dyadic multipliers, accumulator bound
    lo32, hi32 = numerics.int_range(numerics.BIAS_BITS)
    mult = np.zeros(n, dtype=np.int64)
    shift = np.zeros(n, dtype=np.int64)
    ibias = np.zeros(n, dtype=np.int64)
    if gq is None:
        wabs = np.abs(q).sum(axis=0)
    else:
        wabs = (_expand(gq.scale, k, gq.size) * np.abs(q - _expand(gq.zero, k, gq.size))).sum(axis=0)
    _, edge_hi = numerics.int_range(numerics.EDGE_ACC_BITS)
    for c in range(n):
        folded = int(bias_acc[c]) - x_zero * int(colsum[c])
        if not lo32 <= folded <= hi32:
            raise ValueError(
                f"channel {c}: the folded bias round(bias / (x_scale * w_unit)) - x_zero * "
                f"sum(w_int) = {int(bias_acc[c])} - {x_zero} * "
                f"{int(colsum[c])} = {folded} does not fit INT32 [{lo32}, {hi32}]; use an "
                f"input zero point nearer 0"
                + (", a smaller gscale_bits" if group is not None else "") + " or a smaller K")
        ibias[c] = folded
        real = x_scale * unit[c] / y_scale
        try:
            m, s = numerics.to_dyadic(real)
        except ValueError:
            raise ValueError(
                f"channel {c}: requantization scale x_scale * w_unit / y_scale = {real!r} is too "
                f"large for a {numerics.REQUANT_MULT_BITS}-bit multiplier; increase y_scale"
                + (" or gscale_bits" if group is not None else "") + " or decrease x_scale") from None
        mult[c], shift[c] = m, s
        bound = 128 * int(wabs[c]) + abs(folded)
        if bound > edge_hi:
            raise ValueError(
                f"channel {c}: the worst-case accumulator plus bias {bound} exceeds the epilogue's "
                f"{numerics.EDGE_ACC_BITS} bits; lower gscale_bits or split K")
    crq = ChannelRequant(mult, shift, ibias, y_zero, relu)
    return QuantLinear(fmt, q, gq, crq, w_scale, zero, unit, group, symmetric, x_scale,
                       x_zero, y_scale, y_zero, relu, w, bias, stats)


def linear_from_integers(q, *, fmt, w_scale, w_zero=None, bias_float=None, bias_int32=None,
                         x_scale, x_zero: int = 0, y_scale, y_zero: int = 0, relu: bool = False,
                         w_float=None) -> QuantLinear:
    """A :class:`QuantLinear` from weights already quantized elsewhere (e.g. an ONNX QDQ model).

    The weights stand for ``w[k, n] = w_scale[n] * (q[k, n] - w_zero[n])`` (per output
    channel; a per-tensor scheme repeats one value). The requantization and the folded INT32
    bias are computed exactly as in :func:`quantize_linear` (one shared implementation), with
    the unit ``u[n] = w_scale[n]``::

        M[n] * 2**-shift[n] ~ x_scale * w_scale[n] / y_scale        (to_dyadic)
        bias[n] = B[n] - x_zero * sum_k (q[k, n] - w_zero[n])

    where ``B[n]`` is ``bias_int32[n]`` when given (ONNX quantizes the bias of a QDQ Gemm / Conv
    to int32 with scale ``x_scale * w_scale[n]``, zero point 0: used exactly), else
    ``round(bias_float[n] / (x_scale * w_scale[n]))``, else 0. A nonzero weight zero point
    (asymmetric weights) goes through the core's group path as in :func:`quantize_linear`'s
    asymmetric per-channel case: groups of 128 along K sharing the channel's zero point with
    ``gscale = 1``.

    Parameters
    ----------
    q : array_like of int, shape (K, N)
        Weight values of ``fmt`` (validated against its range).
    fmt : WeightFormat or str
        Chosen by the caller (the importer picks the smallest format the quantization range
        declares); not inferred here.
    w_scale : array_like of float, shape (N,)
        Positive per-channel weight scales.
    w_zero : array_like of int, shape (N,), or None
        int8 weight zero points (None: symmetric).
    bias_float : array_like, shape (N,), or None
    bias_int32 : array_like of int, shape (N,), or None
        At most one of the two.
    x_scale, x_zero, y_scale, y_zero, relu
        As in :func:`quantize_linear`.
    w_float : array_like, shape (K, N), or None
        The float weights before quantization, for :attr:`QuantLinear.stats`; defaults to the
        dequantized weights (stats then report zero error).

    Returns
    -------
    QuantLinear
        ``group_size`` None; ``unit == w_scale``.

    Raises
    ------
    ValueError
        On a bad parameter or shape, codes outside ``fmt``, a zero point with a format that has
        none (TERNARY, POW2), or the folding / multiplier / accumulator limits of
        :func:`quantize_linear`.
    """
    fmt = _check_fmt(fmt)
    relu = _check_bool("relu", relu)
    x_scale = _check_scale("x_scale", x_scale)
    y_scale = _check_scale("y_scale", y_scale)
    x_zero = _check_zp("x_zero", x_zero)
    y_zero = _check_zp("y_zero", y_zero)
    qa = _check_int_matrix(q)
    numerics.encode_weights(qa, fmt)                     # raises on values outside the format
    q = qa.astype(np.int64)
    k, n = q.shape
    unit = _check_float_array("w_scale", w_scale, 1)
    if unit.shape != (n,) or not (unit > 0).all():
        raise ValueError(f"w_scale must hold {n} positive scales (one per output channel), got "
                         f"shape {unit.shape}" + ("" if unit.shape != (n,) else
                                                  f" with minimum {unit.min()!r}"))
    if w_zero is None:
        zero = np.zeros(n, dtype=np.int64)
    else:
        zero = numerics.check_int(w_zero, numerics.GZERO_BITS, name="w_zero")
        if zero.shape != (n,):
            raise ValueError(f"w_zero must have shape ({n},), got {zero.shape}")
    symmetric = not zero.any()
    if not symmetric and fmt in (WeightFormat.TERNARY, WeightFormat.POW2):
        raise ValueError(f"{fmt.name} weights are symmetric only; w_zero must be 0 or None")
    if bias_float is not None and bias_int32 is not None:
        raise ValueError("give bias_float or bias_int32, not both")
    if bias_int32 is not None:
        bias_acc = numerics.check_int(bias_int32, numerics.BIAS_BITS, name="bias_int32")
        if bias_acc.shape != (n,):
            raise ValueError(f"bias_int32 must have shape ({n},), got {bias_acc.shape}")
        bias = bias_acc * (x_scale * unit)
    elif bias_float is not None:
        bias = _check_float_array("bias_float", bias_float, 1)
        if bias.shape != (n,):
            raise ValueError(f"bias_float must have shape ({n},), got {bias.shape}")
        bias_acc = [round(float(bias[c] / (x_scale * unit[c]))) for c in range(n)]
    else:
        bias, bias_acc = None, np.zeros(n, dtype=np.int64)
    if symmetric:
        gq = None
    else:
        ng = -(-k // _CHANNEL_GROUP)
        gq = GroupQuant(_CHANNEL_GROUP, np.ones((ng, n), dtype=np.int64),
                        np.broadcast_to(zero, (ng, n)).copy())
    deq = _dequant(q, unit, zero, None)
    w = deq if w_float is None else _check_float_array("w_float", w_float, 2)
    if w.shape != (k, n):
        raise ValueError(f"w_float must have shape {(k, n)}, got {w.shape}")
    stats = ErrorStats.of(w, deq)
    return _finish_linear(fmt, q, gq, unit, zero, unit, None, symmetric, x_scale, x_zero,
                          y_scale, y_zero, relu, w, bias, stats, bias_acc)


# -- N:M pruning (sparse DSP engine) --------------------------------------------------------

__all__ += ["prune_nm", "compress_nm", "find_nm"]


def _check_nm_blocks(k: int, n, m) -> tuple[int, int]:
    n, m = numerics._check_nm(n, m)
    if k % m:
        raise ValueError(f"K = {k} is not a multiple of the block size m = {m}; pad K with "
                         f"zero rows to {-(-k // m) * m}")
    return n, m


def _check_share(share) -> int:
    """``share`` of :func:`prune_nm` / :func:`find_nm` / :func:`quantize_linear`: a positive
    integer (output columns per index group)."""
    if isinstance(share, bool) or not isinstance(share, (int, np.integer)) or share < 1:
        raise ValueError(f"share must be a positive integer (output columns that keep their "
                         f"weights at the same rows; 1: every column its own), not {share!r}")
    return int(share)


def _column_group(ncol: int, pair_columns: bool, share: int) -> int:
    """Columns per mask group of :func:`prune_nm` / :func:`find_nm` (validated ``share``):
    ``share``, at least 2 with ``pair_columns`` (which needs an even N and an even or unit
    ``share``)."""
    if pair_columns:
        if ncol % 2:
            raise ValueError(f"pair_columns needs an even number of columns, not {ncol}")
        if share > 1 and share % 2:
            raise ValueError(f"with pair_columns=True, share must be 1 or even (groups of whole "
                             f"column pairs), not {share}; pass share={share + 1} or "
                             f"share={share - 1}, or pair_columns=False")
        return max(2, share)
    return share


def _group_columns(x: np.ndarray, size: int, reduce) -> np.ndarray:
    """(K, N) -> (K, ceil(N / size)): ``reduce`` (``np.add`` / ``np.logical_or``) over the
    consecutive column groups of ``size`` from column 0 (the last one possibly partial)."""
    k, ncol = x.shape
    if size == 1:
        return x
    ng = -(-ncol // size)
    pad = np.zeros((k, ng * size), dtype=x.dtype)
    pad[:, :ncol] = x
    return reduce.reduce(pad.reshape(k, ng, size), axis=2)


def prune_nm(w, n: int, m: int, *, pair_columns: bool = False, share: int = 1) -> np.ndarray:
    """Magnitude N:M pruning: the mask of the weights to keep.

    In every block of ``m`` consecutive rows along K of every column, the ``n`` weights of
    largest ``|w|`` are kept (ties keep the lower row). Columns may be pruned in groups that
    keep their weights at the same rows, chosen by the group's sum of ``|w|`` per row:

    * ``share = G > 1``: columns ``g * G .. g * G + G - 1`` (consecutive groups from column
      0; the last group has ``N % G`` columns when ``G`` does not divide N) share one mask,
      what a DSP engine whose chains share their indices needs (IDENTIFY ``dsp_share``;
      ``sw.protocol.DeviceInfo.dsp_index_group`` columns per group).
    * ``pair_columns``: columns ``2c`` and ``2c + 1`` share one mask (the packed engine
      multiplies both columns' weights with the same activation in one DSP); the same as
      ``share=2`` but N must be even. Together with ``share``, ``share`` must be 1 (pairs)
      or even (groups of ``share`` columns, whole pairs).

    Parameters
    ----------
    w : array_like of float, shape (K, N)
        K a multiple of ``m``; N even with ``pair_columns``.
    n, m : int
        ``m`` in ``sw.numerics.NM_BLOCK_SIZES``, ``1 <= n <= m``.
    pair_columns : bool
    share : int
        Columns per mask group, a positive integer (1: every column its own mask).

    Returns
    -------
    numpy.ndarray of bool, shape (K, N)
        Exactly ``n`` True per block and column; equal in the columns of a group.

    Raises
    ------
    ValueError
        On a bad ``w``, ``n``, ``m``, ``pair_columns`` or ``share``, K not a multiple of
        ``m``, an odd N with ``pair_columns``, or an odd ``share > 1`` with ``pair_columns``.
    """
    w = _check_weights(w)
    pair_columns = _check_bool("pair_columns", pair_columns)
    share = _check_share(share)
    k, ncol = w.shape
    n, m = _check_nm_blocks(k, n, m)
    size = _column_group(ncol, pair_columns, share)
    mag = _group_columns(np.abs(w), size, np.add)
    blocks = mag.reshape(k // m, m, -1)
    # stable sort of -|w|: among equal magnitudes the lower row comes first
    order = np.argsort(-blocks, axis=1, kind="stable")[:, :n]
    keep = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    keep = keep.reshape(k, -1)
    return np.repeat(keep, size, axis=1)[:, :ncol]


def compress_nm(q, mask, *, n: int, m: int, fmt=WeightFormat.INT8) -> numerics.NMSparse:
    """Integer weights and an N:M mask -> :class:`sw.numerics.NMSparse`.

    Weights where ``mask`` is False are dropped (pruned); kept weights may be zero. Within a
    block the kept weights are stored in increasing row order.

    Parameters
    ----------
    q : array_like of int, shape (K, N)
        Weight values of ``fmt``.
    mask : array_like of bool, shape (K, N)
        Exactly ``n`` True per block of ``m`` rows and column (e.g. from :func:`prune_nm`).
    n, m : int
    fmt : WeightFormat or str

    Raises
    ------
    ValueError
        On K not a multiple of ``m``, a bad ``n``/``m``/``fmt``, shapes that differ, a block
        whose mask does not keep exactly ``n`` weights (the message names block and column),
        or a kept value outside ``fmt``.
    """
    fmt = _check_fmt(fmt)
    qa = _check_int_matrix(q)
    mk = np.asarray(mask)
    if mk.dtype != bool:
        raise TypeError(f"mask must be a bool array, not of dtype {mk.dtype}")
    if mk.shape != qa.shape:
        raise ValueError(f"mask shape {mk.shape} differs from q's {qa.shape}")
    k, ncol = qa.shape
    n, m = _check_nm_blocks(k, n, m)
    counts = mk.reshape(k // m, m, ncol).sum(axis=1)
    bad = np.argwhere(counts != n)
    if bad.size:
        b, c = (int(v) for v in bad[0])
        raise ValueError(f"the mask keeps {int(counts[b, c])} weights in block {b} (rows "
                         f"{b * m}..{b * m + m - 1}) of column {c}, not n = {n}")
    # per block and column the kept rows in increasing order: a stable argsort of ~mask
    pos = np.argsort(~mk.reshape(k // m, m, ncol), axis=1, kind="stable")[:, :n]
    vals = np.take_along_axis(qa.astype(np.int64).reshape(k // m, m, ncol), pos, axis=1)
    return numerics.NMSparse(n, m, vals.reshape(-1, ncol), pos.reshape(-1, ncol), fmt)


def find_nm(q, patterns, *, pair_columns: bool = False, share: int = 1,
            fmt=WeightFormat.INT8):
    """Integer weights that are already N:M sparse: their compressed form.

    For weights pruned elsewhere (e.g. a model imported from ONNX whose weights were pruned
    2:4 before quantization), finds the first ``(n, m)`` of ``patterns`` such that every
    block of ``m`` rows of every column holds at most ``n`` non-zero codes (with column
    groups as in :func:`prune_nm`, ``pair_columns`` and/or ``share``: the non-zeros of the
    group's columns together, so that the group keeps the same rows), and compresses them:
    the non-zeros are kept, and zeros at the lowest free rows fill each block up to ``n``.
    The result is exact: ``to_dense`` gives ``q`` back.

    Parameters
    ----------
    q : array_like of int, shape (K, N)
    patterns : sequence of (n, m)
        Tried in order (put the sparsest first); those whose ``m`` does not divide K are
        skipped.
    pair_columns : bool
        Columns ``2c``, ``2c + 1`` keep the same rows (N even).
    share : int
        Consecutive groups of ``share`` columns from column 0 keep the same rows (the last
        group may be partial); with ``pair_columns`` 1 or even.
    fmt : WeightFormat or str

    Returns
    -------
    sw.numerics.NMSparse or None
        None when no pattern holds ``q``.

    Raises
    ------
    ValueError
        On a bad ``fmt``, ``pair_columns``, ``share`` or pattern, an odd N with
        ``pair_columns``, or an odd ``share > 1`` with ``pair_columns``.
    """
    fmt = _check_fmt(fmt)
    pair_columns = _check_bool("pair_columns", pair_columns)
    share = _check_share(share)
    qa = _check_int_matrix(q)
    k, ncol = qa.shape
    size = _column_group(ncol, pair_columns, share)
    nz = np.repeat(_group_columns(qa != 0, size, np.logical_or), size, axis=1)[:, :ncol]
    for n, m in patterns:
        n, m = numerics._check_nm(n, m)
        if k % m:
            continue
        blocks = nz.reshape(k // m, m, ncol)
        counts = blocks.sum(axis=1)
        if (counts > n).any():
            continue
        # keep the non-zeros, then the lowest zero rows until n per block and column (equal
        # in the columns of a group: their non-zero rows are equal)
        extra = n - counts
        fill = (~blocks) & (np.cumsum(~blocks, axis=1) <= extra[:, None, :])
        return compress_nm(qa, (blocks | fill).reshape(k, ncol), n=n, m=m, fmt=fmt)
    return None
