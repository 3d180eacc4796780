"""ONNX QDQ graphs -> integer-only :class:`sw.model.Model`.

:func:`load_onnx` reads a model quantized in the QDQ format (``QuantizeLinear`` /
``DequantizeLinear`` pairs around float operators), as onnxruntime's
``quantize_static(..., quant_format=QuantFormat.QDQ)`` writes it, and turns every quantized
operator into a layer of :mod:`sw.model` whose arithmetic is the core's (bit-exact golden
model). ``onnx`` is imported lazily (extra ``[onnx]``).

Supported graphs
----------------
A chain (no branches) from one float input to one output:

* the input's ``QuantizeLinear`` (int8 or uint8) and the output's ``DequantizeLinear``;
* ``MatMul`` (+ ``Add`` of a constant bias), ``Gemm`` (``transB`` 0 or 1, ``alpha = beta = 1``,
  ``transA = 0``), ``Conv`` (2-D, kernel 1x1 or 3x3, stride 1 or 2, symmetric pads, group 1,
  dilation 1), each with weights from a ``DequantizeLinear`` of an integer initializer (or a
  ``QuantizeLinear`` of a float one), per tensor or per output channel;
* ``Relu`` (and ``Clip`` with ``min = 0`` and a ``max`` at or above the top of the output range)
  fused into the producing layer as the clamp at its output zero point; ReLU commutes with
  max pooling and flattening, so it may also follow those;
* ``MaxPool`` (2x2, stride 2, no padding), ``GlobalAveragePool``, ``Flatten`` (axis 1),
  ``Reshape`` to ``(B, -1)``, ``Identity``.

onnxruntime writes ``MatMul`` + ``Add`` as two quantized operators (the MatMul result gets its
own int8 quantization before the bias is added). The core adds the bias in its INT32
accumulator, so the importer fuses the two into one :class:`sw.model.Dense` and drops that
intermediate rounding (onnxruntime's result can differ from ours by an output LSB there).

Number conversions
------------------
* uint8 activations are converted exactly to int8: ``value - 128`` and ``zero_point - 128``.
  uint8 weights likewise (their zero point then makes them asymmetric).
* Asymmetric weights (nonzero zero point) go through the core's group path
  (:func:`sw.quant.linear_from_integers`).
* The int32 bias ONNX stores for a QDQ Gemm / Conv (scale ``x_scale * w_scale[n]``, zero 0) is
  used exactly; any other bias (float, or int8 with its own scale as after a MatMul) is
  dequantized and rounded into the accumulator's units.

Weight format rule
------------------
A layer's weight format is the one its *declared* quantization range names, never a guess
from the values: ONNX element type int8 / uint8 -> INT8, int4 / uint4 -> INT4, int2 / uint2
-> INT2. With ``narrow_weights=True`` the importer instead takes, per layer, the smallest of
TERNARY ({-1, 0, 1}, symmetric layers only), INT2, INT4, INT8 that holds every code (for
models whose quantizer was told to use a narrow range, e.g. through ``TensorQuantOverrides``
with clipped ``rmin``/``rmax``, but stored it as int8).

Layouts
-------
ONNX images are NCHW; :class:`sw.model.Model` runs NHWC. ``Model.input_shape`` is
``(H, W, C)`` for a ``(B, C, H, W)`` ONNX input; :meth:`sw.model.Model.input_from_onnx`
converts the array given to onnxruntime. Conv weights ``(Cout, Cin, kh, kw)`` become
``q[(ky * kw + kx) * Cin + c, o]`` (:func:`sw.numerics.im2col` order), and a Flatten of a
feature map permutes the next Dense's weight rows from ONNX's ``c, h, w`` order to ``h, w, c``.

Anything else raises :class:`UnsupportedModel` naming the node and the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sw import model as M
from sw import quant
from sw.numerics import WeightFormat, weight_range

__all__ = ["UnsupportedModel", "load_onnx", "ONNX_EXTRA_MESSAGE"]

ONNX_EXTRA_MESSAGE = 'ONNX import needs the [onnx] extra: pip install -e ".[onnx]"'


class UnsupportedModel(ValueError):
    """The ONNX graph uses an operator, attribute or quantization scheme the core cannot run.

    The message names the node (``op_type 'name'``) and the reason.
    """


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper  # noqa: F401
    except ImportError:
        raise ImportError(ONNX_EXTRA_MESSAGE) from None
    return onnx


# -- values flowing through the graph ---------------------------------------------------------

@dataclass
class _Const:
    """An initializer or Constant: a float or integer array."""
    value: np.ndarray
    elem: int                 # onnx TensorProto element type


@dataclass
class _Weights:
    """DequantizeLinear of an integer constant: ``scale * (q - zero)`` along ``axis``."""
    q: np.ndarray             # int64, unsigned types already shifted to signed
    scale: np.ndarray         # float64, scalar or 1-D
    zero: np.ndarray          # int64, shape of scale (shifted like q)
    axis: int
    bits: int                 # declared width of the element type
    int32: bool               # an int32 tensor (a bias)
    node: str


@dataclass
class _Input:
    onnx_shape: tuple


@dataclass
class _Q:
    """An int8 activation tensor (after conversion from uint8)."""
    scale: float
    zero: int
    shape: tuple              # one sample, our layout
    onnx_shape: tuple         # one sample, ONNX layout
    perm: np.ndarray | None   # vectors: our feature j is ONNX feature perm[j]
    pos: int                  # number of layer specs emitted when it was produced


@dataclass
class _F:
    """A float tensor computed from the int8 tensor ``src``: an optional compute core
    (linear or gap) followed by post ops (relu, clip, maxpool, flatten)."""
    src: _Q
    core: dict | None
    post: list = field(default_factory=list)
    shape: tuple = ()
    onnx_shape: tuple = ()
    perm: np.ndarray | None = None
    by: str = ""              # the node that made it (for messages)


def _where(node) -> str:
    if node.name:
        return f"{node.op_type} {node.name!r}"
    return f"{node.op_type} (unnamed, output {node.output[0] if node.output else '?'!r})"


def _fail(node, reason: str):
    raise UnsupportedModel(f"{_where(node)}: {reason}")


def _attrs(node) -> dict:
    onnx = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Importer:
    def __init__(self, proto, input_shape, narrow_weights: bool):
        onnx = _onnx()
        self.onnx = onnx
        self.TP = onnx.TensorProto
        self.proto = proto
        self.graph = proto.graph
        self.narrow = narrow_weights
        self.user_shape = input_shape
        self.env: dict[str, object] = {}
        self.specs: list[dict] = []
        self.in_q: _Q | None = None
        self.consumers: dict[str, int] = {}
        for node in self.graph.node:
            for i in node.input:
                if i:
                    self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    # -- helpers ------------------------------------------------------------------------------

    def const(self, node, name, what) -> _Const:
        v = self.env.get(name)
        if not isinstance(v, _Const):
            _fail(node, f"{what} {name!r} must be a constant (initializer)")
        return v

    def get(self, node, name):
        if name not in self.env:
            _fail(node, f"input {name!r} is not produced by any node or initializer")
        v = self.env[name]
        if isinstance(v, (_Q, _F, _Input)) and self.consumers.get(name, 0) > 1:
            _fail(node, f"tensor {name!r} feeds {self.consumers[name]} nodes; only chains of "
                        f"layers are supported (no branches or residual connections)")
        return v

    def act_params(self, node, s_name, z_name):
        """Scalar (scale, int8 zero point) of an activation Quantize/DequantizeLinear."""
        TP = self.TP
        s = self.const(node, s_name, "scale").value
        if s.size != 1:
            _fail(node, f"per-axis quantization of activations (scale shape {s.shape}) is not "
                        f"supported; expected a per-tensor scale")
        scale = float(s.reshape(()))
        if not (math.isfinite(scale) and scale > 0):
            _fail(node, f"scale {scale!r} must be finite and positive")
        if z_name:
            zc = self.const(node, z_name, "zero point")
            elem, z = zc.elem, int(zc.value.reshape(()).astype(np.int64)) if zc.value.size == 1 \
                else None
            if z is None:
                _fail(node, "per-axis zero points of activations are not supported")
        else:
            elem, z = TP.UINT8, 0
        if elem == TP.UINT8:
            z -= 128
        elif elem != TP.INT8:
            _fail(node, f"activation type {TP.DataType.Name(elem).lower()} not supported; "
                        f"expected int8 or uint8")
        return scale, z

    def check_block(self, node, attrs):
        if attrs.get("block_size", 0):
            _fail(node, f"blocked quantization (block_size {attrs['block_size']}) not supported")

    # -- the walk -----------------------------------------------------------------------------

    def run(self) -> M.Model:
        TP = self.TP
        from onnx import numpy_helper
        g = self.graph
        for init in g.initializer:
            self.env[init.name] = _Const(np.asarray(numpy_helper.to_array(init)), init.data_type)
        inits = {i.name for i in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            raise UnsupportedModel(f"the graph must have exactly one input, not "
                                   f"{[i.name for i in inputs]}")
        if len(g.output) != 1:
            raise UnsupportedModel(f"the graph must have exactly one output, not "
                                   f"{[o.name for o in g.output]}")
        inp = inputs[0]
        tt = inp.type.tensor_type
        if tt.elem_type != TP.FLOAT:
            raise UnsupportedModel(f"input {inp.name!r} must be float32 (quantized by the "
                                   f"graph's QuantizeLinear), not "
                                   f"{TP.DataType.Name(tt.elem_type).lower()}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if self.user_shape is not None:
            shape = M._check_shape("input_shape", self.user_shape)
        else:
            if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
                raise UnsupportedModel(f"input {inp.name!r} has shape {dims}; give "
                                       f"input_shape= (one sample, ONNX layout)")
            shape = tuple(dims[1:])
        if len(shape) not in (1, 3):
            raise UnsupportedModel(f"input {inp.name!r}: one sample must be (K,) or (C, H, W), "
                                   f"not {shape}")
        self.env[inp.name] = _Input(shape)

        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                _fail(node, f"operator domain {node.domain!r} not supported (QOperator format? "
                            f"quantize with QuantFormat.QDQ)")
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                _fail(node, f"operator {node.op_type} not supported")
            outs = handler(node, _attrs(node))
            if not isinstance(outs, tuple):
                outs = (outs,)
            for name, v in zip(node.output, outs):
                if name:
                    self.env[name] = v
        out = g.output[0].name
        v = self.env.get(out)
        if isinstance(v, _F):
            if v.core is not None:
                raise UnsupportedModel(f"output {out!r}: the result of {v.by} is not quantized "
                                       f"(no QuantizeLinear after it)")
            v = self.materialize(v, None)
        if not isinstance(v, _Q):
            raise UnsupportedModel(f"output {out!r} is not a quantized activation of the chain")
        if self.in_q is None:
            raise UnsupportedModel("the graph input is never quantized")
        if not self.specs:
            raise UnsupportedModel("the graph has no layer the core runs")
        return self.build(v)

    # -- emission -----------------------------------------------------------------------------

    def emit(self, node, src: _Q, spec: dict):
        if src.pos != len(self.specs):
            _fail(node, "its input is not the latest layer's output (only chains are supported)")
        spec["name"] = spec.get("name") or node.name or node.output[0]
        self.specs.append(spec)

    def fuse_relu(self, node, src: _Q):
        """ReLU on the int8 tensor ``src`` (the head): clamp of the last compute layer."""
        for spec in reversed(self.specs[:src.pos]):
            if spec["kind"] in ("linear", "gap"):
                spec["relu"] = True
                return
            if spec["kind"] not in ("maxpool", "flatten"):
                break
        _fail(node, "ReLU must follow a Conv, Gemm, MatMul or GlobalAveragePool (through "
                    "MaxPool / Flatten only)")

    def structural(self, node, kind, q: _Q, post) -> _Q:
        """Emit a MaxPool / Flatten on int8 tensor ``q``; returns the new int8 tensor."""
        if kind == "maxpool":
            h, w, c = q.shape
            shape = (h // 2, w // 2, c)
            self.emit(node, q, {"kind": "maxpool", "name": post.get("name")})
            return _Q(q.scale, q.zero, shape, (c, h // 2, w // 2), None, len(self.specs))
        if kind == "flatten":
            if len(q.shape) == 1:
                return _Q(q.scale, q.zero, q.shape, (int(np.prod(q.onnx_shape)),), q.perm, q.pos)
            h, w, c = q.shape
            self.emit(node, q, {"kind": "flatten", "name": post.get("name")})
            perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
            return _Q(q.scale, q.zero, (h * w * c,), (c * h * w,), perm, len(self.specs))
        raise AssertionError(kind)

    def materialize(self, f: _F, node) -> _Q:
        """The int8 tensor a core-free float tensor stands for (its post ops emitted)."""
        assert f.core is None
        q = f.src
        for p in f.post:
            if p["kind"] == "relu":
                self.fuse_relu(p["node"], q)
            elif p["kind"] == "clip":
                self.check_clip(p, q.scale, q.zero)
                self.fuse_relu(p["node"], q)
            else:
                q = self.structural(p["node"], p["kind"], q, p)
        return q

    def check_clip(self, p, scale, zero):
        top = scale * (127 - zero)
        if p["max"] is not None and p["max"] < top * (1 - 1e-6):
            _fail(p["node"], f"Clip max {p['max']!r} is below the top of the quantized range "
                             f"({top!r}); only Clip(min=0) (a ReLU) is supported")

    def finish(self, node, f: _F, scale, zero) -> _Q:
        """QuantizeLinear of a float tensor: emit its layers."""
        if f.core is None:
            if zero != f.src.zero or not math.isclose(scale, f.src.scale, rel_tol=1e-6):
                _fail(node, f"requantization from (scale {f.src.scale!r}, zero {f.src.zero}) to "
                            f"(scale {scale!r}, zero {zero}) without a compute op is not "
                            f"supported")
            return self.materialize(f, node)
        spec = dict(f.core)
        spec["y"] = (scale, zero)
        spec["relu"] = False
        rest = []
        for p in f.post:
            if p["kind"] == "relu":
                spec["relu"] = True
            elif p["kind"] == "clip":
                self.check_clip(p, scale, zero)
                spec["relu"] = True
            else:
                rest.append(p)
        self.emit(spec["node"], f.src, spec)
        q = _Q(scale, zero, spec["out_shape"], spec["out_onnx"], None, len(self.specs))
        for p in rest:
            q = self.structural(p["node"], p["kind"], q, p)
        return q

    def float_in(self, node, name) -> _Q:
        """An operator's activation input: a dequantized int8 tensor."""
        v = self.get(node, name)
        if isinstance(v, _Input):
            _fail(node, f"input {name!r} is the float model input; it must be quantized "
                        f"(QuantizeLinear -> DequantizeLinear) first")
        if isinstance(v, _F):
            if v.core is not None:
                _fail(node, f"input {name!r} is the unquantized float result of {v.by}; "
                            f"float operators are not supported (quantize every tensor)")
            return self.materialize(v, node)
        if isinstance(v, _Q):
            _fail(node, f"input {name!r} is int8; expected its DequantizeLinear")
        _fail(node, f"input {name!r} is a constant; expected an activation")

    def weights_in(self, node, name) -> _Weights:
        v = self.get(node, name)
        if isinstance(v, _Weights):
            if v.int32:
                _fail(node, f"weights {name!r} are int32; expected int8/uint8/int4/uint4/int2")
            return v
        if isinstance(v, _Const):
            _fail(node, f"weights {name!r} are float (not quantized); quantize the model's "
                        f"weights (QDQ)")
        _fail(node, f"weights {name!r} must be a dequantized constant")

    def channel_params(self, node, w: _Weights, axis: int, n: int, what="weights"):
        """Per-channel (scale (n,), zero (n,)) along output axis ``axis`` of ``w``."""
        if w.scale.size == 1:
            return np.full(n, float(w.scale.reshape(()))), np.full(n, int(w.zero.reshape(())))
        ax = w.axis % w.q.ndim
        if ax != axis or w.scale.shape != (n,):
            _fail(node, f"{what} {w.node}: per-axis quantization along axis {w.axis} (scale "
                        f"shape {w.scale.shape}) is not per output channel; expected axis "
                        f"{axis} with {n} scales")
        return w.scale.astype(np.float64), w.zero.astype(np.int64)

    # -- operators ----------------------------------------------------------------------------

    def op_Constant(self, node, attrs):
        from onnx import numpy_helper
        if "value" not in attrs:
            _fail(node, "only Constant with a tensor 'value' is supported")
        t = attrs["value"]
        return _Const(np.asarray(numpy_helper.to_array(t)), t.data_type)

    def op_Identity(self, node, attrs):
        return self.get(node, node.input[0])

    def op_QuantizeLinear(self, node, attrs):
        TP = self.TP
        self.check_block(node, attrs)
        x = self.get(node, node.input[0])
        z_name = node.input[2] if len(node.input) > 2 else ""
        if isinstance(x, _Const):                 # weights quantized at run time
            s = self.const(node, node.input[1], "scale").value.astype(np.float64)
            if z_name:
                zc = self.const(node, z_name, "zero point")
                z, elem = zc.value.astype(np.int64), zc.elem
            else:
                z, elem = np.zeros(s.shape, dtype=np.int64), TP.UINT8
            bits, signed = self.elem_bits(node, elem)
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            xs = x.value.astype(np.float64)
            if s.size > 1:
                shp = [1] * xs.ndim
                shp[attrs.get("axis", 1) % xs.ndim] = -1
                s, z = s.reshape(shp), z.reshape(shp)
            codes = np.clip(np.rint(xs / s) + z, lo, hi).astype(np.int64)
            return _Const(codes, elem)
        scale, zero = self.act_params(node, node.input[1], z_name)
        if isinstance(x, _Input):
            if self.in_q is not None:
                _fail(node, "the model input is quantized twice")
            shp = x.onnx_shape
            ours = (shp[1], shp[2], shp[0]) if len(shp) == 3 else shp
            self.in_q = _Q(scale, zero, ours, shp, None, 0)
            return self.in_q
        if isinstance(x, _F):
            return self.finish(node, x, scale, zero)
        _fail(node, "QuantizeLinear of an already quantized tensor")

    def elem_bits(self, node, elem):
        TP = self.TP
        table = {TP.INT8: (8, True), TP.UINT8: (8, False), TP.INT32: (32, True)}
        for nm, bits, signed in (("INT4", 4, True), ("UINT4", 4, False), ("INT2", 2, True),
                                 ("UINT2", 2, False)):
            if hasattr(TP, nm):
                table[getattr(TP, nm)] = (bits, signed)
        if elem not in table:
            _fail(node, f"element type {TP.DataType.Name(elem).lower()} not supported; "
                        f"expected int8, uint8, int4, uint4, int2, uint2 (weights) or int32 (bias)")
        return table[elem]

    def op_DequantizeLinear(self, node, attrs):
        self.check_block(node, attrs)
        x = self.get(node, node.input[0])
        z_name = node.input[2] if len(node.input) > 2 else ""
        if isinstance(x, _Const):
            bits, signed = self.elem_bits(node, x.elem)
            q = x.value.astype(np.int64)
            s = self.const(node, node.input[1], "scale").value.astype(np.float64)
            z = (self.const(node, z_name, "zero point").value.astype(np.int64) if z_name
                 else np.zeros(s.shape, dtype=np.int64))
            if z.size == 1 and s.size == 1:
                s, z = s.reshape(()), z.reshape(())
            elif z.shape != s.shape:
                _fail(node, f"zero point shape {z.shape} differs from scale shape {s.shape}")
            if not (np.isfinite(s).all() and (s > 0).all()):
                _fail(node, "weight scales must be finite and positive")
            if not signed:
                q, z = q - (1 << (bits - 1)), z - (1 << (bits - 1))
            return _Weights(q, s, z, int(attrs.get("axis", 1)), bits, bits == 32,
                            node.input[0])
        if isinstance(x, _Q):
            scale, zero = self.act_params(node, node.input[1], z_name)
            if zero != x.zero or not math.isclose(scale, x.scale, rel_tol=1e-6):
                _fail(node, f"dequantizes with (scale {scale!r}, zero {zero}) a tensor quantized "
                            f"with (scale {x.scale!r}, zero {x.zero})")
            return _F(x, None, [], x.shape, x.onnx_shape, x.perm, _where(node))
        _fail(node, "DequantizeLinear of a float tensor")

    def linear_core(self, node, x: _Q, w: _Weights, q_kn, scale, zero, **extra):
        return _F(x, dict(kind="linear", node=node, src=x, x=(x.scale, x.zero), q=q_kn,
                          w_scale=scale,
                          w_zero=zero, w=w, bias=None, in_shape=x.shape, **extra),
                  [], extra["out_shape"], extra["out_onnx"], None, _where(node))

    def dense_weights(self, node, x: _Q, wq: np.ndarray):
        if len(x.shape) != 1:
            _fail(node, f"input of shape {x.onnx_shape} is not a vector; Flatten it first")
        if wq.shape[0] != x.shape[0]:
            _fail(node, f"weights of shape {wq.shape} do not fit {x.shape[0]} input features")
        return wq if x.perm is None else wq[x.perm]

    def op_MatMul(self, node, attrs):
        x = self.float_in(node, node.input[0])
        w = self.weights_in(node, node.input[1])
        if w.q.ndim != 2:
            _fail(node, f"weights must be 2-D, not of shape {w.q.shape}")
        n = w.q.shape[1]
        scale, zero = self.channel_params(node, w, 1, n)
        q = self.dense_weights(node, x, w.q)
        return self.linear_core(node, x, w, q, scale, zero, conv=None, out_shape=(n,),
                                out_onnx=(n,))

    def op_Gemm(self, node, attrs):
        if attrs.get("transA", 0):
            _fail(node, "transA=1 not supported")
        for a in ("alpha", "beta"):
            if not math.isclose(attrs.get(a, 1.0), 1.0):
                _fail(node, f"{a}={attrs[a]!r} not supported; expected 1")
        x = self.float_in(node, node.input[0])
        w = self.weights_in(node, node.input[1])
        if w.q.ndim != 2:
            _fail(node, f"weights must be 2-D, not of shape {w.q.shape}")
        tb = attrs.get("transB", 0)
        qk = w.q.T if tb else w.q
        n = qk.shape[1]
        scale, zero = self.channel_params(node, w, 0 if tb else 1, n)
        q = self.dense_weights(node, x, qk)
        f = self.linear_core(node, x, w, q, scale, zero, conv=None, out_shape=(n,),
                             out_onnx=(n,))
        if len(node.input) > 2 and node.input[2]:
            self.set_bias(node, f, node.input[2])
        return f

    def op_Conv(self, node, attrs):
        x = self.float_in(node, node.input[0])
        w = self.weights_in(node, node.input[1])
        if w.q.ndim != 4:
            _fail(node, f"only 2-D convolutions are supported (weights of shape {w.q.shape})")
        if len(x.shape) != 3:
            _fail(node, f"input of shape {x.onnx_shape} is not an image (C, H, W)")
        cout, cin, kh, kw = w.q.shape
        if attrs.get("group", 1) != 1:
            _fail(node, f"group {attrs['group']} not supported; expected 1")
        dil = tuple(attrs.get("dilations", (1, 1)))
        if dil != (1, 1):
            _fail(node, f"dilations {dil} not supported; expected 1")
        if kh != kw or kh not in (1, 3):
            _fail(node, f"kernel {kh}x{kw} not supported; expected 1x1 or 3x3")
        ks = tuple(attrs.get("kernel_shape", (kh, kw)))
        if ks != (kh, kw):
            _fail(node, f"kernel_shape {ks} differs from the weights' {kh}x{kw}")
        st = tuple(attrs.get("strides", (1, 1)))
        if st[0] != st[1] or st[0] not in (1, 2):
            _fail(node, f"strides {st} not supported; expected (1, 1) or (2, 2)")
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", ""):
            _fail(node, f"auto_pad {auto} not supported; give explicit pads")
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        if len(set(pads)) != 1 or pads[0] >= kh:
            _fail(node, f"pads {pads} not supported; expected equal pads smaller than the kernel")
        h, wd, c = x.shape
        if c != cin:
            _fail(node, f"weights expect {cin} input channels, the input has {c}")
        pad, stride = pads[0], st[0]
        try:
            ho = M.numerics.conv_out_size(h, kh, stride, pad)
            wo = M.numerics.conv_out_size(wd, kh, stride, pad)
        except ValueError as e:
            _fail(node, str(e))
        scale, zero = self.channel_params(node, w, 0, cout)
        q = w.q.transpose(2, 3, 1, 0).reshape(kh * kw * cin, cout)
        f = self.linear_core(node, x, w, q, scale, zero,
                             conv=dict(kernel=kh, stride=stride, pad=pad),
                             out_shape=(ho, wo, cout), out_onnx=(cout, ho, wo))
        if len(node.input) > 2 and node.input[2]:
            self.set_bias(node, f, node.input[2])
        return f

    def set_bias(self, node, f: _F, name):
        core = f.core
        n = core["q"].shape[1]
        b = self.get(node, name)
        if isinstance(b, _Weights):
            vals = b.q
            if vals.size not in (1, n) or vals.size != int(np.prod(vals.shape)) \
                    or max(vals.shape, default=1) != vals.size:
                _fail(node, f"bias {name!r} of shape {vals.shape} is not one value per channel")
            if b.scale.size == 1:
                s = np.full(n, float(b.scale.reshape(())))
                z = np.full(n, int(b.zero.reshape(())))
            else:
                s, z = b.scale.reshape(-1), b.zero.reshape(-1)
            vals = np.broadcast_to(vals.reshape(-1), (n,)).astype(np.int64)
            core["bias"] = ("quantized", vals, np.broadcast_to(s, (n,)),
                            np.broadcast_to(z, (n,)), b.int32)
        elif isinstance(b, _Const) and b.value.dtype.kind == "f":
            v = b.value.astype(np.float64)
            if v.size not in (1, n) or max(v.shape, default=1) != v.size:
                _fail(node, f"bias {name!r} of shape {v.shape} is not one value per channel")
            core["bias"] = ("float", np.broadcast_to(v.reshape(-1), (n,)).copy())
        else:
            _fail(node, f"bias {name!r} must be a constant (float, or dequantized int32)")

    def op_Add(self, node, attrs):
        vals = [self.env.get(i) for i in node.input]
        acts = [i for i, v in zip(node.input, vals) if isinstance(v, (_F, _Q, _Input))]
        if len(acts) != 1:
            _fail(node, "Add of two activations (residual connection) is not supported; only "
                        "the bias of a MatMul")
        act = acts[0]
        other = node.input[1] if act == node.input[0] else node.input[0]
        f = self.get(node, act)
        if not isinstance(f, _F):
            _fail(node, "Add must take the (dequantized) result of a MatMul / Gemm / Conv")
        if f.core is None and not f.post:
            # onnxruntime's MatMul -> Q -> DQ -> Add(bias): reopen the layer that made src
            src = f.src
            spec = self.specs[-1] if self.specs else None
            if spec is None or src.pos != len(self.specs) or spec["kind"] != "linear" \
                    or spec["bias"] is not None or spec["relu"]:
                _fail(node, "Add must add a constant bias to the result of a MatMul / Gemm / "
                            "Conv without bias")
            self.specs.pop()
            core = dict(spec)
            core.pop("y")
            core.pop("relu")
            f = _F(core["src"], core, [], core["out_shape"], core["out_onnx"], None,
                   _where(node))
        elif f.core is None or f.core["kind"] != "linear" or f.post or f.core["bias"] is not None:
            _fail(node, "Add must add a constant bias to the result of a MatMul / Gemm / Conv "
                        "without bias")
        else:
            f = _F(f.src, dict(f.core), [], f.shape, f.onnx_shape, None, _where(node))
        self.set_bias(node, f, other)
        return f

    def op_Relu(self, node, attrs):
        return self.post_op(node, {"kind": "relu", "node": node})

    def op_Clip(self, node, attrs):
        lo = hi = None
        if "min" in attrs or "max" in attrs:              # opset < 11
            lo, hi = attrs.get("min"), attrs.get("max")
        else:
            if len(node.input) > 1 and node.input[1]:
                lo = float(self.const(node, node.input[1], "min").value.reshape(()))
            if len(node.input) > 2 and node.input[2]:
                hi = float(self.const(node, node.input[2], "max").value.reshape(()))
        if lo is None or lo != 0:
            _fail(node, f"Clip min {lo!r} not supported; only Clip(min=0) (a ReLU)")
        return self.post_op(node, {"kind": "clip", "max": hi, "node": node})

    def op_MaxPool(self, node, attrs):
        if len(node.output) > 1 and node.output[1]:
            _fail(node, "the Indices output is not supported")
        for a, want in (("kernel_shape", (2, 2)), ("strides", (2, 2)),
                        ("pads", (0, 0, 0, 0)), ("dilations", (1, 1))):
            got = tuple(attrs.get(a, want if a != "strides" else (1, 1)))
            if got != want:
                _fail(node, f"{a} {got} not supported; expected {want}")
        for a in ("ceil_mode", "storage_order"):
            if attrs.get(a, 0):
                _fail(node, f"{a}={attrs[a]} not supported")
        auto = attrs.get("auto_pad", b"NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "", "VALID"):
            _fail(node, f"auto_pad {auto!r} not supported")
        return self.post_op(node, {"kind": "maxpool", "node": node, "name": node.name})

    def op_GlobalAveragePool(self, node, attrs):
        x = self.float_in(node, node.input[0])
        if len(x.shape) != 3:
            _fail(node, f"input of shape {x.onnx_shape} is not an image (C, H, W)")
        h, w, c = x.shape
        return _F(x, dict(kind="gap", node=node, src=x, x=(x.scale, x.zero), hw=h * w,
                          in_shape=x.shape,
                          out_shape=(c,), out_onnx=(c, 1, 1)), [], (c,), (c, 1, 1), None,
                  _where(node))

    def op_Flatten(self, node, attrs):
        if attrs.get("axis", 1) != 1:
            _fail(node, f"axis {attrs['axis']} not supported; expected 1")
        return self.post_op(node, {"kind": "flatten", "node": node, "name": node.name})

    def op_Reshape(self, node, attrs):
        shp = self.const(node, node.input[1], "shape").value.astype(np.int64).ravel().tolist()
        v = self.env.get(node.input[0])
        feats = int(np.prod(getattr(v, "onnx_shape", (0,))))
        if len(shp) != 2 or shp[0] not in (0, -1) or shp[1] not in (-1, feats) \
                or attrs.get("allowzero", 0):
            _fail(node, f"Reshape to {shp} not supported; only (B, -1) flattening ([0, -1] or "
                        f"[-1, {feats}])")
        return self.post_op(node, {"kind": "flatten", "node": node, "name": node.name})

    def post_op(self, node, p):
        v = self.get(node, node.input[0])
        kind = p["kind"]
        if isinstance(v, _Q):                            # int8 operator: act directly
            if kind in ("relu", "clip"):
                if kind == "clip":
                    self.check_clip(p, v.scale, v.zero)
                self.fuse_relu(node, v)
                return v
            if kind == "maxpool":
                self.check_pool_shape(node, v.shape)
            return self.structural(node, kind, v, p)
        if isinstance(v, _F):
            shape, onnx_shape = v.shape, v.onnx_shape
            if kind == "maxpool":
                self.check_pool_shape(node, shape)
                h, w, c = shape
                shape, onnx_shape = (h // 2, w // 2, c), (c, h // 2, w // 2)
            elif kind == "flatten":
                shape = (int(np.prod(shape)),)
                onnx_shape = (int(np.prod(onnx_shape)),)
            return _F(v.src, v.core, v.post + [p], shape, onnx_shape, None, v.by)
        if isinstance(v, _Input):
            _fail(node, "operates on the float model input before its QuantizeLinear")
        _fail(node, "expects an activation, not a constant")

    def check_pool_shape(self, node, shape):
        if len(shape) != 3:
            _fail(node, f"input is not an image (our shape {shape})")
        if shape[0] < 2 or shape[1] < 2:
            _fail(node, f"input {shape[:2]} is smaller than the 2x2 window")

    # -- building the Model -------------------------------------------------------------------

    def build(self, out: _Q) -> M.Model:
        layers = []
        for spec in self.specs:
            kind = spec["kind"]
            if kind == "maxpool":
                layers.append(M.MaxPool2d(name=spec["name"]))
            elif kind == "flatten":
                layers.append(M.Flatten(name=spec["name"]))
            elif kind == "gap":
                (xs, xz), (ys, yz) = spec["x"], spec["y"]
                try:
                    layers.append(M.GlobalAvgPool.build(spec["hw"], x_scale=xs, x_zero=xz,
                                                        y_scale=ys, y_zero=yz,
                                                        relu=spec["relu"], name=spec["name"]))
                except ValueError as e:
                    raise UnsupportedModel(f"GlobalAveragePool {spec['name']!r}: {e}") from None
            else:
                layers.append(self.build_linear(spec))
        return M.Model(layers, input_shape=self.in_q.shape, in_scale=self.in_q.scale,
                       in_zero=self.in_q.zero, out_scale=out.scale, out_zero=out.zero,
                       name=self.graph.name or "onnx")

    def pick_format(self, spec) -> WeightFormat:
        q, w = spec["q"], spec["w"]
        symmetric = not spec["w_zero"].any()
        declared = {8: WeightFormat.INT8, 4: WeightFormat.INT4, 2: WeightFormat.INT2}[w.bits]
        if not self.narrow:
            return declared
        lo, hi = int(q.min()), int(q.max())
        order = ([WeightFormat.TERNARY] if symmetric else []) + \
            [WeightFormat.INT2, WeightFormat.INT4, WeightFormat.INT8]
        for fmt in order:
            flo, fhi = weight_range(fmt)
            if flo <= lo and hi <= fhi:
                return fmt
        return declared

    def build_linear(self, spec):
        (xs, xz), (ys, yz) = spec["x"], spec["y"]
        w_scale, w_zero = spec["w_scale"], spec["w_zero"]
        kw = {}
        bias = spec["bias"]
        where = f"{'Conv' if spec['conv'] else 'MatMul/Gemm'} {spec['name']!r}"
        if bias is not None:
            if bias[0] == "float":
                kw["bias_float"] = bias[1]
            else:
                _, vals, bs, bz, is32 = bias
                expect = xs * w_scale
                if is32 and not bz.any() and np.allclose(bs, expect, rtol=1e-5, atol=0):
                    kw["bias_int32"] = vals
                else:
                    kw["bias_float"] = bs * (vals - bz)
        try:
            lin = quant.linear_from_integers(
                spec["q"], fmt=self.pick_format(spec), w_scale=w_scale,
                w_zero=w_zero if w_zero.any() else None, x_scale=xs, x_zero=xz, y_scale=ys,
                y_zero=yz, relu=spec["relu"], **kw)
        except ValueError as e:
            raise UnsupportedModel(f"{where}: {e}") from None
        if spec["conv"] is None:
            return M.Dense(lin, name=spec["name"])
        c = spec["conv"]
        return M.Conv2d(lin, kernel=c["kernel"], stride=c["stride"], pad=c["pad"],
                        in_shape=spec["in_shape"], name=spec["name"])


def load_onnx(model, *, input_shape=None, narrow_weights: bool = False) -> M.Model:
    """Import an ONNX QDQ model as an integer-only :class:`sw.model.Model`.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The quantized model (see the module docstring for what is supported).
    input_shape : tuple or None
        One input sample in ONNX's layout, ``(C, H, W)`` or ``(K,)``, when the graph's input
        dimensions (other than the batch) are not fixed.
    narrow_weights : bool
        Pick each layer's weight format from the range of its codes instead of the declared
        element type (see "Weight format rule").

    Returns
    -------
    sw.model.Model
        Layers named after the ONNX nodes; images in NHWC (``Model.input_from_onnx``).

    Raises
    ------
    UnsupportedModel
        Naming the node, its operator and the reason.
    ImportError
        When ``onnx`` is not installed.
    """
    onnx = _onnx()
    if not isinstance(narrow_weights, (bool, np.bool_)):
        raise ValueError(f"narrow_weights must be a bool, not {narrow_weights!r}")
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = onnx.load(model)
    return _Importer(proto, input_shape, bool(narrow_weights)).run()
