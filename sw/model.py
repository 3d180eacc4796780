"""Integer-only models: a chain of layers on INT8 activations, run by the golden model.

A :class:`Model` is what the host runs on the core (or what :mod:`sw.onnx_import` makes from
an ONNX QDQ graph): a list of layers, each taking and returning INT8 tensors, with every
multiply-accumulate and requantization done by :mod:`sw.numerics` (through
:meth:`sw.quant.QuantLinear.golden`), so :meth:`Model.golden` is bit-exact with the device.

Layouts
-------
Feature maps are NHWC ``(B, H, W, C)`` int8; vectors ``(B, K)`` int8. ONNX feeds images as
NCHW: :meth:`Model.input_from_onnx` / :func:`nchw_to_nhwc` turn the array given to onnxruntime
into ours, :meth:`Model.output_to_onnx` the other way. A ``Model``'s ``input_shape`` is one
sample in our layout, ``(H, W, C)`` or ``(K,)``.

Layers and their integer semantics
----------------------------------
With ``x`` int8 and the quantization ``real = scale * (int - zero)``:

* :class:`Dense` ``(B, K) -> (B, N)``: ``lin.golden(x)`` = :func:`sw.numerics.mixgemm` with the
  layer's weights, group tables and :class:`~sw.numerics.ChannelRequant` (dyadic multiplier,
  folded INT32 bias, output zero point, ReLU as the clamp at the output zero point). With
  N:M sparse weights (``lin.sparse``, an :class:`~sw.numerics.NMSparse`: from
  ``sw.quant.quantize_linear(..., sparse=(n, m))`` or :meth:`Dense.from_sparse`) it is
  :func:`sw.numerics.sparse_gemm` on the compressed weights and the same per-channel
  epilogue (:meth:`sw.quant.QuantLinear.golden`), which equals the dense golden model on the
  pruned codes ``lin.q``; such a layer runs on the device's sparse DSP engine.
* :class:`Conv2d` ``(B, H, W, C) -> (B, Ho, Wo, Cout)``: ``lin.golden(im2col(x, kernel, stride,
  pad, pad_value=lin.x_zero))`` reshaped; ``lin.q`` is ``(kernel * kernel * C, Cout)`` in
  :func:`sw.numerics.im2col`'s column order ``(ky * kernel + kx) * C + c``; N:M sparse
  weights as in Dense (then ``K`` must be a multiple of ``m``).
* :class:`MaxPool2d`: :func:`sw.numerics.maxpool2d` (input and output share one quantization).
* :class:`GlobalAvgPool` ``(B, H, W, C) -> (B, C)``: the core runs it as a GEMM with
  ``K = H * W``, ``N = 1`` and all-one weights, on the ``B * C`` rows of channel sums::

      acc = global_avgpool_acc(x).reshape(B * C, 1)
      y   = requantize_channels(acc, ChannelRequant([M], [s], [-H*W*x_zero], y_zero, relu))

  with ``M * 2**-s ~ x_scale / (y_scale * H * W)`` (:func:`sw.numerics.to_dyadic`).
* :class:`Flatten` ``(B, H, W, C) -> (B, H * W * C)`` in ``h, w, c`` order (no arithmetic).

ReLU is not a layer: it is the ``relu`` of the Dense / Conv (or GlobalAvgPool) before it.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, replace

import numpy as np

from sw import numerics, quant
from sw.numerics import ChannelRequant
from sw.quant import QuantLinear

__all__ = ["Layer", "Dense", "Conv2d", "MaxPool2d", "GlobalAvgPool", "Flatten", "Model",
           "nchw_to_nhwc", "nhwc_to_nchw"]


def _check_shape(name: str, shape) -> tuple[int, ...]:
    try:
        t = tuple(shape)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of positive integers, not {shape!r}") from None
    if not t or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                    for d in t):
        raise ValueError(f"{name} must be a tuple of positive integers, not {shape!r}")
    return tuple(int(d) for d in t)


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, not {name!r}")
    return name


def _check_act(x, shape: tuple[int, ...], what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{what}: input must have an integer dtype, not {x.dtype}")
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape:
        raise ValueError(f"{what}: input must have shape (B, {', '.join(map(str, shape))}), "
                         f"got {x.shape}")
    return numerics.check_int(x, 8, name=f"{what} input")


def _same_scale(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


class Layer:
    """Common interface of the layers (each is a frozen dataclass with a ``name``).

    ``out_shape(in_shape)`` validates the input shape of one sample and returns the output
    shape; ``golden(x)`` runs a batch; ``macs(in_shape)`` counts multiply-accumulates per
    sample; ``quant_in`` / ``quant_out`` are ``(scale, zero)`` or None for layers that keep
    the quantization of their input (pooling by max, flatten).
    """

    name: str

    quant_in: tuple[float, int] | None = None
    quant_out: tuple[float, int] | None = None

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def golden(self, x) -> np.ndarray:
        raise NotImplementedError

    def macs(self, in_shape: tuple[int, ...]) -> int:
        return 0

    def _where(self) -> str:
        return f"{type(self).__name__} {self.name!r}"

    def _need_image(self, in_shape) -> tuple[int, int, int]:
        if len(in_shape) != 3:
            raise ValueError(f"{self._where()} needs an NHWC feature map (H, W, C) per sample, "
                             f"got shape {in_shape}")
        return in_shape


class _LinearLayer(Layer):
    """A layer computed by its ``lin`` (:class:`~sw.quant.QuantLinear`): its quantization."""

    @property
    def quant_in(self):
        return self.lin.x_scale, self.lin.x_zero

    @property
    def quant_out(self):
        return self.lin.y_scale, self.lin.y_zero

    @property
    def sparse(self):
        """The N:M compressed weights (``lin.sparse``), or None for a dense layer."""
        return self.lin.sparse

    def _check_sparse(self):
        """N:M sparse weights (``lin.sparse``) must be the compressed form of ``lin.q``
        without group tables: the device runs them on its DSP engine, which requantizes per
        output channel."""
        sp = self.lin.sparse
        if sp is None:
            return
        if not isinstance(sp, numerics.NMSparse):
            raise ValueError(f"{self._where()}: lin.sparse must be a sw.numerics.NMSparse or "
                             f"None, not {type(sp).__name__}")
        if (sp.k, sp.ncols) != self.lin.q.shape:
            raise ValueError(f"{self._where()}: the sparse weights are {sp.k}x{sp.ncols}, "
                             f"lin.q is {self.lin.q.shape[0]}x{self.lin.q.shape[1]}")
        if self.lin.group is not None:
            raise ValueError(f"{self._where()}: N:M sparse weights requantize per output "
                             f"channel only, but lin has group tables")
        diff = np.argwhere(numerics.to_dense(sp) != self.lin.q)
        if diff.size:
            r, c = (int(v) for v in diff[0])
            raise ValueError(f"{self._where()}: lin.q is not the dense form of lin.sparse "
                             f"(first difference at row {r}, column {c}: "
                             f"{int(self.lin.q[r, c])} against "
                             f"{int(numerics.to_dense(sp)[r, c])})")


@dataclass(frozen=True, eq=False)
class Dense(_LinearLayer):
    """Fully connected layer ``(B, K) -> (B, N)`` on INT8: ``lin.golden(x)``.

    A layer whose ``lin.sparse`` is set carries N:M sparse weights (the device runs it on its
    sparse DSP engine, also inside layer programs): its golden model is
    :func:`sw.numerics.sparse_gemm` on ``lin.sparse`` and the per-channel epilogue
    ``lin.requant`` (one implementation, :meth:`sw.quant.QuantLinear.golden`), equal to the
    dense golden model of the pruned codes ``lin.q``. Build one with
    ``sw.quant.quantize_linear(..., sparse=(n, m))`` (pruning float weights) or
    :meth:`from_sparse` (weights already compressed).

    Parameters
    ----------
    lin : QuantLinear
        Weights ``(K, N)``, requantization, input and output quantization, ReLU; optionally
        N:M sparse (``lin.sparse``: then ``lin.q`` must be its dense form and ``lin.group``
        None).
    name : str

    Raises
    ------
    ValueError
        On a ``lin`` that is not a ``QuantLinear``, or sparse weights that do not match
        ``lin.q`` (shape or values) or come with group tables.
    """

    lin: QuantLinear
    _: KW_ONLY
    name: str = "dense"

    def __post_init__(self):
        if not isinstance(self.lin, QuantLinear):
            raise ValueError(f"Dense.lin must be a sw.quant.QuantLinear, not {self.lin!r}")
        _check_name(self.name)
        self._check_sparse()

    @classmethod
    def from_sparse(cls, sparse, *, w_scale, bias_float=None, bias_int32=None, x_scale,
                    x_zero: int = 0, y_scale, y_zero: int = 0, relu: bool = False,
                    w_float=None, name: str = "dense") -> "Dense":
        """A Dense layer of N:M sparse weights already compressed and quantized elsewhere.

        The weights stand for ``w[k, n] = w_scale[n] * q[k, n]`` with ``q`` the dense form of
        ``sparse`` (symmetric, per output channel); the requantization and folded bias are
        :func:`sw.quant.linear_from_integers`'s (one implementation), and the layer keeps
        ``sparse`` as ``lin.sparse``.

        Parameters
        ----------
        sparse : sw.numerics.NMSparse
            ``K x N`` compressed weights of format ``sparse.fmt``.
        w_scale : array_like of float, shape (N,)
        bias_float, bias_int32, x_scale, x_zero, y_scale, y_zero, relu, w_float
            As in :func:`sw.quant.linear_from_integers`.
        name : str

        Returns
        -------
        Dense

        Raises
        ------
        TypeError
            If ``sparse`` is not an ``NMSparse``.
        ValueError
            As :func:`sw.quant.linear_from_integers`.
        """
        if not isinstance(sparse, numerics.NMSparse):
            raise TypeError(f"sparse must be a sw.numerics.NMSparse, not "
                            f"{type(sparse).__name__}")
        lin = quant.linear_from_integers(
            numerics.to_dense(sparse), fmt=sparse.fmt, w_scale=w_scale, bias_float=bias_float,
            bias_int32=bias_int32, x_scale=x_scale, x_zero=x_zero, y_scale=y_scale,
            y_zero=y_zero, relu=relu, w_float=w_float)
        return cls(replace(lin, sparse=sparse), name=name)


    def out_shape(self, in_shape):
        if tuple(in_shape) != (self.lin.in_features,):
            raise ValueError(f"{self._where()} needs ({self.lin.in_features},) features per "
                             f"sample, got shape {tuple(in_shape)}")
        return (self.lin.out_features,)

    def golden(self, x) -> np.ndarray:
        x = _check_act(x, (self.lin.in_features,), self._where())
        return self.lin.golden(x)

    def macs(self, in_shape) -> int:
        """``K * N`` per sample (dense-equivalent for sparse weights, as the device counts)."""
        return self.lin.in_features * self.lin.out_features

    def gemm_shape(self, in_shape) -> tuple[int, int, int]:
        """``(M, K, N)`` of the GEMM per sample."""
        return 1, self.lin.in_features, self.lin.out_features


@dataclass(frozen=True, eq=False)
class Conv2d(_LinearLayer):
    """2-D convolution ``(B, H, W, C) -> (B, Ho, Wo, Cout)`` on INT8 NHWC maps.

    ``golden(x) = lin.golden(im2col(x, kernel, stride, pad, pad_value=lin.x_zero))`` reshaped to
    ``(B, Ho, Wo, Cout)``: padding is the input zero point (a real zero).

    Parameters
    ----------
    lin : QuantLinear
        Weights ``(kernel * kernel * C, Cout)`` with row ``(ky * kernel + kx) * C + c``.
    kernel : {1, 3}
    stride : {1, 2}
    pad : int
        Symmetric padding, ``0 <= pad < kernel``.
    in_shape : tuple (H, W, C)
    name : str
    """

    lin: QuantLinear
    _: KW_ONLY
    kernel: int
    stride: int = 1
    pad: int = 0
    in_shape: tuple[int, int, int]
    name: str = "conv"

    def __post_init__(self):
        if not isinstance(self.lin, QuantLinear):
            raise ValueError(f"Conv2d.lin must be a sw.quant.QuantLinear, not {self.lin!r}")
        _check_name(self.name)
        self._check_sparse()
        if self.kernel not in (1, 3) or isinstance(self.kernel, bool):
            raise ValueError(f"{self._where()}: kernel must be 1 or 3, not {self.kernel!r}")
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise ValueError(f"{self._where()}: stride must be 1 or 2, not {self.stride!r}")
        if isinstance(self.pad, bool) or not isinstance(self.pad, (int, np.integer)) \
                or not 0 <= self.pad < self.kernel:
            raise ValueError(f"{self._where()}: pad must be an integer in [0, {self.kernel - 1}], "
                             f"not {self.pad!r}")
        shape = _check_shape("in_shape", self.in_shape)
        if len(shape) != 3:
            raise ValueError(f"{self._where()}: in_shape must be (H, W, C), not {self.in_shape!r}")
        object.__setattr__(self, "in_shape", shape)
        k = self.kernel * self.kernel * shape[2]
        if self.lin.in_features != k:
            raise ValueError(f"{self._where()}: a {self.kernel}x{self.kernel} kernel over "
                             f"{shape[2]} channels needs lin.q with {k} rows, not "
                             f"{self.lin.in_features}")
        self.out_shape(shape)                        # the window fits

    def out_shape(self, in_shape):
        if tuple(in_shape) != self.in_shape:
            raise ValueError(f"{self._where()} was built for input {self.in_shape}, got "
                             f"{tuple(in_shape)}")
        h, w, _ = self.in_shape
        return (numerics.conv_out_size(h, self.kernel, self.stride, self.pad),
                numerics.conv_out_size(w, self.kernel, self.stride, self.pad),
                self.lin.out_features)

    def golden(self, x) -> np.ndarray:
        x = _check_act(x, self.in_shape, self._where())
        ho, wo, n = self.out_shape(self.in_shape)
        cols = numerics.im2col(x, kernel=self.kernel, stride=self.stride, pad=self.pad,
                               pad_value=self.lin.x_zero)
        return self.lin.golden(cols).reshape(x.shape[0], ho, wo, n)

    def macs(self, in_shape) -> int:
        m, k, n = self.gemm_shape(in_shape)
        return m * k * n

    def gemm_shape(self, in_shape) -> tuple[int, int, int]:
        """``(M, K, N)`` of the GEMM per sample: ``(Ho * Wo, kernel**2 * C, Cout)``."""
        ho, wo, n = self.out_shape(in_shape)
        return ho * wo, self.lin.in_features, n


@dataclass(frozen=True, eq=False)
class MaxPool2d(Layer):
    """Max pooling ``(B, H, W, C) -> (B, Ho, Wo, C)``, no padding, floor output size.

    Integer max (:func:`sw.numerics.maxpool2d`); the output keeps the input's quantization.
    """

    _: KW_ONLY
    size: int = 2
    stride: int = 2
    name: str = "maxpool"

    def __post_init__(self):
        _check_name(self.name)
        for k in ("size", "stride"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{self._where()}: {k} must be a positive integer, not {v!r}")

    def out_shape(self, in_shape):
        h, w, c = self._need_image(in_shape)
        return (numerics.conv_out_size(h, self.size, self.stride, 0),
                numerics.conv_out_size(w, self.size, self.stride, 0), c)

    def golden(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{self._where()} needs (B, H, W, C), got shape {x.shape}")
        self.out_shape(x.shape[1:])
        return numerics.maxpool2d(x, size=self.size, stride=self.stride)


@dataclass(frozen=True, eq=False)
class GlobalAvgPool(Layer):
    """Global average pooling ``(B, H, W, C) -> (B, C)``, run as a GEMM with ``K = H * W``.

    ``y = requantize_channels(global_avgpool_acc(x).reshape(B * C, 1), requant).reshape(B, C)``
    where ``requant`` has one channel: ``bias = [-H * W * x_zero]``, ``multiplier * 2**-shift ~
    x_scale / (y_scale * H * W)``, ``zero_point = y_zero``. Build it with :meth:`build`.

    Parameters
    ----------
    requant : ChannelRequant
        One channel.
    hw : int
        ``H * W`` of the input it was built for.
    x_scale, x_zero, y_scale, y_zero : float, int
    name : str
    """

    requant: ChannelRequant
    _: KW_ONLY
    hw: int
    x_scale: float
    x_zero: int
    y_scale: float
    y_zero: int
    name: str = "gap"

    def __post_init__(self):
        _check_name(self.name)
        if not isinstance(self.requant, ChannelRequant) or self.requant.channels != 1:
            raise ValueError(f"{self._where()}: requant must be a one-channel ChannelRequant, "
                             f"not {self.requant!r}")
        if isinstance(self.hw, bool) or not isinstance(self.hw, (int, np.integer)) or self.hw < 1:
            raise ValueError(f"{self._where()}: hw must be a positive integer, not {self.hw!r}")
        if self.requant.zero_point != self.y_zero:
            raise ValueError(f"{self._where()}: requant.zero_point {self.requant.zero_point} "
                             f"differs from y_zero {self.y_zero}")

    @classmethod
    def build(cls, hw: int, *, x_scale: float, x_zero: int, y_scale: float, y_zero: int,
              relu: bool = False, name: str = "gap") -> "GlobalAvgPool":
        """The layer for inputs of ``H * W = hw`` pixels and the given quantization."""
        if isinstance(hw, bool) or not isinstance(hw, (int, np.integer)) or hw < 1:
            raise ValueError(f"hw must be a positive integer (H * W), not {hw!r}")
        hw = int(hw)
        x_scale = quant._check_scale("x_scale", x_scale)
        y_scale = quant._check_scale("y_scale", y_scale)
        x_zero = quant._check_zp("x_zero", x_zero)
        y_zero = quant._check_zp("y_zero", y_zero)
        real = x_scale / (y_scale * hw)
        try:
            m, s = numerics.to_dyadic(real)
        except ValueError:
            raise ValueError(f"global average pooling: x_scale / (y_scale * H * W) = {real!r} is "
                             f"too large for a {numerics.REQUANT_MULT_BITS}-bit multiplier; "
                             f"increase y_scale") from None
        crq = ChannelRequant(np.array([m]), np.array([s]), np.array([-hw * x_zero]), y_zero,
                             quant._check_bool("relu", relu))
        return cls(crq, hw=hw, x_scale=x_scale, x_zero=x_zero, y_scale=y_scale, y_zero=y_zero,
                   name=name)

    @property
    def quant_in(self):
        return self.x_scale, self.x_zero

    @property
    def quant_out(self):
        return self.y_scale, self.y_zero

    def out_shape(self, in_shape):
        h, w, c = self._need_image(in_shape)
        if h * w != self.hw:
            raise ValueError(f"{self._where()} was built for H * W = {self.hw}, got input "
                             f"{tuple(in_shape)}")
        return (c,)

    def golden(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{self._where()} needs (B, H, W, C), got shape {x.shape}")
        self.out_shape(x.shape[1:])
        acc = numerics.global_avgpool_acc(x)
        b, c = acc.shape
        return numerics.requantize_channels(acc.reshape(b * c, 1), self.requant).reshape(b, c)

    def macs(self, in_shape) -> int:
        h, w, c = self._need_image(in_shape)
        return h * w * c

    def gemm_shape(self, in_shape) -> tuple[int, int, int]:
        """``(M, K, N) = (C, H * W, 1)`` per sample (weights all 1)."""
        h, w, c = self._need_image(in_shape)
        return c, h * w, 1


@dataclass(frozen=True, eq=False)
class Flatten(Layer):
    """``(B, H, W, C) -> (B, H * W * C)`` in ``h, w, c`` order (feature ``(h * W + w) * C + c``).

    ONNX flattens NCHW in ``c, h, w`` order; :mod:`sw.onnx_import` permutes the rows of the
    next Dense's weights instead of the activations.
    """

    _: KW_ONLY
    name: str = "flatten"

    def __post_init__(self):
        _check_name(self.name)

    def out_shape(self, in_shape):
        h, w, c = self._need_image(in_shape)
        return (h * w * c,)

    def golden(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{self._where()} needs (B, H, W, C), got shape {x.shape}")
        return numerics.check_int(x, 8, name=f"{self._where()} input").astype(np.int8) \
            .reshape(x.shape[0], -1)


def nchw_to_nhwc(x) -> np.ndarray:
    """``(B, C, H, W) -> (B, H, W, C)`` (ONNX image layout to ours)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) array, got shape {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nhwc_to_nchw(x) -> np.ndarray:
    """``(B, H, W, C) -> (B, C, H, W)`` (our image layout to ONNX's)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected a (B, H, W, C) array, got shape {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


_LAYER_TYPES = (Dense, Conv2d, MaxPool2d, GlobalAvgPool, Flatten)


class Model:
    """An integer-only network: a chain of layers from an int8 input to an int8 output.

    Parameters
    ----------
    layers : sequence of Layer
        :class:`Dense`, :class:`Conv2d`, :class:`MaxPool2d`, :class:`GlobalAvgPool`,
        :class:`Flatten`. Shapes and quantization must chain: each Dense / Conv /
        GlobalAvgPool's input quantization is the output quantization of what comes before it
        (the model input for the first); the last one's output quantization is the model's.
    input_shape : tuple
        One sample in our layout: ``(H, W, C)`` or ``(K,)``.
    in_scale, in_zero : float, int
        Quantization of the input: ``x_q = clamp(round_half_even(x / in_scale) + in_zero)``.
    out_scale, out_zero : float, int
        Quantization of the output.
    name : str

    Raises
    ------
    ValueError
        A bad parameter, or layers that do not chain; the message names the layer by index,
        type and name.
    """

    def __init__(self, layers, *, input_shape, in_scale, in_zero, out_scale, out_zero,
                 name: str = "model"):
        self.name = _check_name(name)
        layers = list(layers)
        if not layers:
            raise ValueError("a Model needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, _LAYER_TYPES):
                raise ValueError(f"layer {i} must be one of "
                                 f"{[t.__name__ for t in _LAYER_TYPES]}, not {layer!r}")
        self.input_shape = _check_shape("input_shape", input_shape)
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"input_shape must be (K,) or (H, W, C), not {input_shape!r}")
        self.in_scale = quant._check_scale("in_scale", in_scale)
        self.in_zero = quant._check_zp("in_zero", in_zero)
        self.out_scale = quant._check_scale("out_scale", out_scale)
        self.out_zero = quant._check_zp("out_zero", out_zero)
        self.layers = tuple(layers)

        shape, q = self.input_shape, (self.in_scale, self.in_zero)
        self._in_shapes, self._out_shapes = [], []
        for i, layer in enumerate(self.layers):
            where = f"layer {i} ({type(layer).__name__} {layer.name!r})"
            try:
                out = layer.out_shape(shape)
            except ValueError as e:
                raise ValueError(f"{where}: input shape {shape} does not fit: {e}") from None
            if layer.quant_in is not None:
                s, z = layer.quant_in
                if z != q[1] or not _same_scale(s, q[0]):
                    raise ValueError(f"{where}: its input quantization (scale {s!r}, zero {z}) "
                                     f"is not the output quantization before it (scale "
                                     f"{q[0]!r}, zero {q[1]})")
                q = layer.quant_out
            self._in_shapes.append(shape)
            self._out_shapes.append(out)
            shape = out
        if q[1] != self.out_zero or not _same_scale(q[0], self.out_scale):
            raise ValueError(f"the last layer's output quantization (scale {q[0]!r}, zero "
                             f"{q[1]}) differs from out_scale {self.out_scale!r}, out_zero "
                             f"{self.out_zero}")
        self.output_shape = shape

    def __repr__(self):
        return (f"Model({self.name!r}, {len(self.layers)} layers, input {self.input_shape}, "
                f"output {self.output_shape})")

    # -- running ------------------------------------------------------------------------------

    def activations(self, x_q) -> list[np.ndarray]:
        """Every layer's int8 output for the int8 input ``x_q`` (B, *input_shape)."""
        x = _check_act(x_q, self.input_shape, f"Model {self.name!r}").astype(np.int8)
        outs = []
        for layer in self.layers:
            x = layer.golden(x)
            outs.append(x)
        return outs

    def golden(self, x_q) -> np.ndarray:
        """int8 input ``(B, *input_shape)`` -> int8 output ``(B, *output_shape)``, bit-exact."""
        return self.activations(x_q)[-1]

    def quantize_input(self, x) -> np.ndarray:
        """Float input (our layout) -> int8, as ONNX ``QuantizeLinear``."""
        return quant.quantize_act(x, self.in_scale, self.in_zero)

    def dequantize_output(self, y_q) -> np.ndarray:
        """int8 output -> float64 ``out_scale * (y_q - out_zero)``."""
        return quant.dequantize(y_q, self.out_scale, self.out_zero)

    def forward(self, x) -> np.ndarray:
        """Float input -> quantize -> :meth:`golden` -> dequantized float output."""
        return self.dequantize_output(self.golden(self.quantize_input(x)))

    def input_from_onnx(self, x) -> np.ndarray:
        """The array given to onnxruntime (NCHW images, or (B, K)) in our layout."""
        x = np.asarray(x)
        if len(self.input_shape) == 3:
            x = nchw_to_nhwc(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input of shape {x.shape} does not fit the model's "
                             f"{self.input_shape} per sample (our layout)")
        return x

    def output_to_onnx(self, y) -> np.ndarray:
        """Our output (NHWC maps or (B, N)) in ONNX's layout."""
        y = np.asarray(y)
        return nhwc_to_nchw(y) if y.ndim == 4 else y

    # -- description --------------------------------------------------------------------------

    def shapes(self) -> list[tuple[int, ...]]:
        """Output shape of each layer (one sample)."""
        return list(self._out_shapes)

    def in_shapes(self) -> list[tuple[int, ...]]:
        """Input shape of each layer (one sample)."""
        return list(self._in_shapes)

    def macs(self) -> list[int]:
        """Multiply-accumulates of each layer per sample."""
        return [layer.macs(s) for layer, s in zip(self.layers, self._in_shapes)]

    def summary(self) -> str:
        """A text table: index, type, name, output shape, weight format, MACs."""
        rows = [("#", "layer", "name", "output", "weights", "MACs")]
        for i, (layer, out, macs) in enumerate(zip(self.layers, self._out_shapes, self.macs())):
            lin = getattr(layer, "lin", None)
            wdesc = ""
            if lin is not None:
                wdesc = f"{lin.fmt.name} {lin.q.shape[0]}x{lin.q.shape[1]}"
                if lin.sparse is not None:
                    wdesc += f" {lin.sparse.n}:{lin.sparse.m}"
                if not lin.symmetric:
                    wdesc += " asym"
                if lin.relu:
                    wdesc += " +relu"
            elif isinstance(layer, GlobalAvgPool) and layer.requant.relu:
                wdesc = "+relu"
            rows.append((str(i), type(layer).__name__, layer.name,
                         "x".join(map(str, out)), wdesc, f"{macs:,}"))
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        lines = [f"Model {self.name!r}: input {'x'.join(map(str, self.input_shape))} int8 "
                 f"(scale {self.in_scale:.6g}, zero {self.in_zero}), output scale "
                 f"{self.out_scale:.6g}, zero {self.out_zero}"]
        for j, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if k < 3 else c.rjust(w) if k == 5 else c.ljust(w)
                                   for k, (c, w) in enumerate(zip(r, widths))).rstrip())
            if j == 0:
                lines.append("-" * len(lines[-1]))
        lines.append(f"total MACs per sample: {sum(self.macs()):,}")
        return "\n".join(lines)

    def renamed(self, names) -> "Model":
        """A copy with the layers renamed (``names`` in layer order)."""
        names = list(names)
        if len(names) != len(self.layers):
            raise ValueError(f"need {len(self.layers)} names, got {len(names)}")
        return Model([replace(layer, name=n) for layer, n in zip(self.layers, names)],
                     input_shape=self.input_shape, in_scale=self.in_scale,
                     in_zero=self.in_zero, out_scale=self.out_scale, out_zero=self.out_zero,
                     name=self.name)
