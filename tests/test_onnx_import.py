"""sw.onnx_import against onnxruntime on the same QDQ graphs: hand-built graphs for each
operator (onnx.helper), the digits MLP and CNN quantized by onnxruntime's quantize_static, and
every refusal path (UnsupportedModel naming the node).

onnxruntime runs the graphs operator by operator (``ORT_ENABLE_BASIC``, the ONNX semantics; see
sw.demo.onnxruntime_predict). Its float requantization (round half to even of a float32
product) and our dyadic one (round half up) may differ by one output LSB; each comparison
counts those and bounds them.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from sw import demo, onnx_import
from sw.numerics import WeightFormat
from sw.onnx_import import UnsupportedModel, load_onnx

NP = {TP.INT8: np.int8, TP.UINT8: np.uint8, TP.INT32: np.int32, TP.FLOAT: np.float32,
      TP.INT64: np.int64}


class G:
    """A tiny QDQ graph builder: a float input, its QuantizeLinear / DequantizeLinear, then ops."""

    def __init__(self, shape, *, scale=1 / 64, zero=-3, act=TP.INT8, opset=21):
        self.nodes, self.inits, self.shape, self.act, self.opset = [], [], shape, act, opset
        self.n = 0
        self.cur = self.qdq("x", scale, zero, name="in")

    def init(self, arr, elem=TP.FLOAT, name=None):
        self.n += 1
        name = name or f"c{self.n}"
        if elem == TP.INT4:
            t = helper.make_tensor(name, TP.INT4, np.shape(arr), np.asarray(arr).ravel().tolist())
        else:
            t = numpy_helper.from_array(np.asarray(arr, dtype=NP[elem]), name)
        self.inits.append(t)
        return name

    def qdq(self, t, scale, zero, *, name=None, elem=None):
        elem = elem or self.act
        s, z = self.init(np.float32(scale)), self.init(zero, elem)
        name = name or f"q{self.n}"
        self.nodes.append(helper.make_node("QuantizeLinear", [t, s, z], [name + "_q"],
                                           name=name + "_Q"))
        self.nodes.append(helper.make_node("DequantizeLinear", [name + "_q", s, z],
                                           [name + "_dq"], name=name + "_DQ"))
        return name + "_dq"

    def weights(self, q, scale, zero=None, *, axis=0, elem=TP.INT8):
        qn = self.init(q, elem)
        s = self.init(np.asarray(scale, dtype=np.float32))
        ins = [qn, s]
        if zero is not None:
            ins.append(self.init(zero, elem))
        out = qn + "_w"
        self.nodes.append(helper.make_node("DequantizeLinear", ins, [out], name=qn + "_DQ",
                                           axis=axis))
        return out

    def op(self, op, inputs, name, **attrs):
        out = name + "_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def model(self, out, out_shape=None):
        g = helper.make_graph(
            self.nodes, "t", [helper.make_tensor_value_info("x", TP.FLOAT, ["B", *self.shape])],
            [helper.make_tensor_value_info(out, TP.FLOAT, None)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 10
        return m


def rng(seed=0):
    return np.random.default_rng(seed)


def compare(m_onnx, x, *, max_lsb=1, max_frac=0.05):
    """Import, run both, check agreement; returns (ours model, LSB differences)."""
    m = load_onnx(m_onnx)
    ref = demo.onnxruntime_predict(m_onnx, x)
    ours = m.output_to_onnx(m.forward(m.input_from_onnx(x)))
    assert ours.shape == ref.shape
    lsb = np.rint(np.abs(ours - ref) / m.out_scale).astype(int)
    assert lsb.max() <= max_lsb, np.bincount(lsb.ravel())
    assert (lsb > 0).mean() <= max_frac, np.bincount(lsb.ravel())
    return m, lsb


def conv_graph(*, k=3, stride=1, pad=1, cin=2, cout=4, hw=(6, 6), act=TP.INT8, wzero=None,
               per_channel=True, relu=None, seed=0, **conv_attrs):
    r = rng(seed)
    zero = -3 if act == TP.INT8 else 125
    g = G((cin, *hw), act=act, zero=zero)
    wq = r.integers(-127, 128, (cout, cin, k, k))
    ws = r.uniform(0.002, 0.01, cout) if per_channel else np.float32(0.005)
    wz = None
    if wzero is not None:
        wz = np.full(cout, wzero) if per_channel else np.int8(wzero)
        wq = np.clip(wq, -128 + max(wzero, 0), 127 + min(wzero, 0))
    w = g.weights(wq, ws, wz)
    xs = 1 / 64
    b = g.weights(r.integers(-2000, 2000, cout), xs * np.broadcast_to(ws, (cout,)),
                  elem=TP.INT32)
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    attrs.update(conv_attrs)
    y = g.op("Conv", [g.cur, w, b], "conv1", **attrs)
    if relu == "relu":
        y = g.op("Relu", [y], "relu1")
    elif relu == "clip":
        y = g.op("Clip", [y, g.init(np.float32(0)), g.init(np.float32(100))], "clip1")
    y = g.qdq(y, 0.02, -128 if relu else 5, name="y")
    return g.model(y)


def images(shape, n=16, seed=1):
    return rng(seed).uniform(-0.5, 1.5, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (3, 1, 0)])
def test_conv(k, stride, pad):
    mo = conv_graph(k=k, stride=stride, pad=pad, hw=(7, 6))
    m, _ = compare(mo, images((2, 7, 6)))
    (layer,) = m.layers
    assert layer.name == "conv1" and (layer.kernel, layer.stride, layer.pad) == (k, stride, pad)
    assert m.input_shape == (7, 6, 2)


@pytest.mark.parametrize("variant", ["relu", "clip", "uint8", "per_tensor", "asym_weights"])
def test_conv_variants(variant):
    kw = {"relu": dict(relu="relu"), "clip": dict(relu="clip"), "uint8": dict(act=TP.UINT8),
          "per_tensor": dict(per_channel=False), "asym_weights": dict(wzero=7)}[variant]
    m, _ = compare(conv_graph(**kw), images((2, 6, 6)))
    lin = m.layers[0].lin
    assert lin.relu == (variant in ("relu", "clip"))
    assert lin.symmetric == (variant != "asym_weights")
    if variant == "uint8":
        assert m.in_zero == 125 - 128


def test_int4_weights():
    r = rng(3)
    g = G((12,))
    wq = r.integers(-8, 8, (12, 5))
    w = g.weights(wq, r.uniform(0.05, 0.1, 5), axis=1, elem=TP.INT4)
    y = g.qdq(g.op("MatMul", [g.cur, w], "fc"), 0.05, 0, name="y")
    mo = g.model(y)
    m, _ = compare(mo, images((12,), 64))
    assert m.layers[0].lin.fmt is WeightFormat.INT4
    np.testing.assert_array_equal(m.layers[0].lin.q, wq)


def test_narrow_weights_rule():
    """int8 storage: INT8 unless narrow_weights asks for the smallest format of the codes."""
    g = G((8,))
    wq = rng(4).integers(-1, 2, (8, 3))
    w = g.weights(wq, [0.1, 0.2, 0.3], axis=1)
    mo = g.model(g.qdq(g.op("MatMul", [g.cur, w], "fc"), 0.05, 0, name="y"))
    assert load_onnx(mo).layers[0].lin.fmt is WeightFormat.INT8
    m = load_onnx(mo, narrow_weights=True)
    assert m.layers[0].lin.fmt is WeightFormat.TERNARY
    x = images((8,), 32)
    ref = demo.onnxruntime_predict(mo, x)
    assert np.abs(m.forward(x) - ref).max() <= m.out_scale * 1.01


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_b):
    r = rng(5)
    g = G((10,))
    wq = r.integers(-128, 128, (10, 6))
    ws = r.uniform(0.005, 0.02, 6)
    w = g.weights(wq.T if trans_b else wq, ws, axis=0 if trans_b else 1)
    b = g.weights(r.integers(-500, 500, 6), ws / 64, axis=0, elem=TP.INT32)
    y = g.qdq(g.op("Gemm", [g.cur, w, b], "gemm", transB=trans_b), 0.03, 2, name="y")
    m, _ = compare(g.model(y), images((10,), 64))
    assert m.layers[0].name == "gemm"


def test_matmul_add_fused():
    """onnxruntime's MatMul -> Q -> DQ -> Add(int8 bias): one Dense (the intermediate
    rounding is dropped, so up to one more LSB)."""
    r = rng(6)
    g = G((16,))
    w = g.weights(r.integers(-128, 128, (16, 8)), r.uniform(0.005, 0.02, 8), axis=1)
    mm = g.qdq(g.op("MatMul", [g.cur, w], "fc"), 0.2, 1, name="mm")
    b = g.weights(r.integers(-128, 128, 8), 0.02, axis=0)
    y = g.qdq(g.op("Add", [mm, b], "fc_bias"), 0.25, -128, name="y")
    m, _ = compare(g.model(y), images((16,), 128), max_lsb=2, max_frac=0.5)
    assert len(m.layers) == 1 and m.layers[0].name == "fc" and m.layers[0].lin.bias is not None


def test_pool_flatten_dense_chain():
    """Conv -> MaxPool -> Flatten -> Gemm: the Dense's rows are permuted from (c, h, w) to
    (h, w, c); also GlobalAveragePool -> Reshape -> MatMul."""
    r = rng(7)
    for tail in ("flatten", "gap"):
        g = G((2, 6, 6))
        w = g.weights(r.integers(-127, 128, (4, 2, 3, 3)), r.uniform(0.002, 0.01, 4))
        c = g.qdq(g.op("Conv", [g.cur, w], "conv", kernel_shape=[3, 3], pads=[1] * 4),
                  0.02, -128, name="c")
        p = g.qdq(g.op("MaxPool", [c], "pool", kernel_shape=[2, 2], strides=[2, 2]),
                  0.02, -128, name="p")
        if tail == "flatten":
            f = g.op("Flatten", [p], "flat", axis=1)
            k = 4 * 3 * 3
        else:
            gp = g.qdq(g.op("GlobalAveragePool", [p], "gap"), 0.01, -128, name="g")
            f = g.op("Reshape", [gp, g.init(np.array([0, -1]), TP.INT64)], "reshape")
            k = 4
        w2 = g.weights(r.integers(-128, 128, (k, 5)), r.uniform(0.01, 0.03, 5), axis=1)
        y = g.qdq(g.op("MatMul", [f, w2], "fc"), 0.05, 0, name="y")
        m, _ = compare(g.model(y), images((2, 6, 6), 32))
        kinds = [type(layer).__name__ for layer in m.layers]
        assert kinds == (["Conv2d", "MaxPool2d", "Flatten", "Dense"] if tail == "flatten"
                         else ["Conv2d", "MaxPool2d", "GlobalAvgPool", "Dense"])


def test_explicit_relu_between_qdq_pairs():
    """Conv -> Q -> DQ -> Relu -> Q -> DQ (same quantization): fused into the Conv."""
    g = G((1, 5, 5))
    w = g.weights(rng(8).integers(-127, 128, (3, 1, 3, 3)), [0.01, 0.02, 0.015])
    c = g.qdq(g.op("Conv", [g.cur, w], "conv", kernel_shape=[3, 3], pads=[1] * 4), 0.02, -20,
              name="c")
    # the Relu's output reuses c's scale / zero point: a new pair with equal values
    y = g.qdq(g.op("Relu", [c], "relu"), 0.02, -20, name="y")
    m, _ = compare(g.model(y), images((1, 5, 5)))
    assert [type(x).__name__ for x in m.layers] == ["Conv2d"] and m.layers[0].lin.relu


# -- models quantized by onnxruntime -------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return demo.digits_data(0)


@pytest.fixture(scope="module")
def mlp_float(digits):
    xtr, _, ytr, _ = digits
    return demo.mlp_to_onnx(demo.train_mlp(xtr, ytr, epochs=15))


@pytest.fixture(scope="module")
def cnn_float(digits):
    xtr, _, ytr, _ = digits
    return demo.cnn_to_onnx(demo.train_cnn(xtr, ytr, epochs=12))


def agreement(qmodel, x, m, y_true):
    ref = demo.onnxruntime_predict(qmodel, x)
    ours = m.forward(m.input_from_onnx(x))
    lsb = np.rint(np.abs(ours - ref) / m.out_scale).astype(int)
    top1 = (ours.argmax(1) == ref.argmax(1)).mean()
    counts = np.bincount(lsb.ravel(), minlength=3)
    print(f"\n{m.name}: top-1 agreement {top1:.4f} on {len(x)} samples; output LSB "
          f"differences {dict(enumerate(counts.tolist()))}; accuracy ours "
          f"{(ours.argmax(1) == y_true).mean():.4f}, onnxruntime "
          f"{(ref.argmax(1) == y_true).mean():.4f}")
    return top1, lsb


@pytest.mark.parametrize("per_channel,act", [(True, "int8"), (False, "int8"), (True, "uint8")])
def test_ort_quantized_mlp(digits, mlp_float, per_channel, act):
    xtr, xte, _, yte = digits
    q = demo.quantize_onnx(mlp_float, xtr[:300], per_channel=per_channel, activation_type=act)
    m = load_onnx(q)
    assert [layer.name for layer in m.layers] == ["fc0", "fc1"]
    top1, lsb = agreement(q, xte.astype(np.float32), m, yte)
    assert top1 >= 0.99
    # the dropped MatMul intermediate rounding: at most two LSBs, mostly none
    assert lsb.max() <= 2 and (lsb == 2).mean() < 0.01 and (lsb == 0).mean() > 0.5


@pytest.mark.parametrize("per_channel,act", [(True, "int8"), (False, "uint8")])
def test_ort_quantized_cnn(digits, cnn_float, per_channel, act):
    xtr, xte, _, yte = digits
    q = demo.quantize_onnx(cnn_float, demo.digits_images(xtr[:300]), per_channel=per_channel,
                           activation_type=act)
    m = load_onnx(q)
    assert [type(layer).__name__ for layer in m.layers] == \
        ["Conv2d", "MaxPool2d", "Conv2d", "GlobalAvgPool", "Dense"]
    assert m.input_shape == (8, 8, 1)
    top1, lsb = agreement(q, demo.digits_images(xte), m, yte)
    assert top1 >= 0.99
    assert lsb.max() <= 2 and (lsb > 0).mean() < 0.05


def test_ort_asymmetric_weights(digits, mlp_float):
    """Asymmetric weights from quantize_static (WeightSymmetric=False; onnxruntime keeps
    per-channel weights symmetric, so per tensor): through the core's group path."""
    xtr, xte, _, yte = digits
    q = demo.quantize_onnx(mlp_float, xtr[:300], per_channel=False,
                           activation_type="uint8", weight_type="uint8",
                           extra_options={"WeightSymmetric": False})
    m = load_onnx(q)
    assert not m.layers[0].lin.symmetric and m.layers[0].lin.group is not None
    top1, lsb = agreement(q, xte.astype(np.float32), m, yte)
    assert top1 >= 0.99 and lsb.max() <= 2


def test_load_from_bytes_and_path(tmp_path, mlp_float, digits):
    q = demo.quantize_onnx(mlp_float, digits[0][:100])
    p = tmp_path / "m.onnx"
    onnx.save(q, p)
    x = digits[1][:20]
    a = load_onnx(p).golden(load_onnx(q).quantize_input(x))
    b = load_onnx(q.SerializeToString()).golden(load_onnx(q).quantize_input(x))
    np.testing.assert_array_equal(a, b, strict=True)


# -- refusals --------------------------------------------------------------------------------

def refuse(model, *match):
    with pytest.raises(UnsupportedModel) as e:
        load_onnx(model)
    for s in match:
        assert s in str(e.value), str(e.value)
    return str(e.value)


@pytest.mark.parametrize("attrs,msg", [
    (dict(dilations=[2, 2]), "Conv 'conv1': dilations (2, 2) not supported; expected 1"),
    (dict(strides=[3, 3]), "Conv 'conv1': strides (3, 3) not supported"),
    (dict(pads=[1, 0, 1, 0]), "Conv 'conv1': pads (1, 0, 1, 0) not supported"),
    (dict(auto_pad="SAME_UPPER", pads=None), "Conv 'conv1': auto_pad SAME_UPPER"),
])
def test_refuse_conv_attributes(attrs, msg):
    attrs = dict(attrs)
    pads = attrs.pop("pads", [1] * 4)
    refuse(conv_graph(**attrs, **({} if pads is None else {"pads": pads})), msg)


def test_refuse_group_and_kernel():
    g = G((2, 6, 6))
    w = g.weights(rng(9).integers(-127, 128, (4, 1, 3, 3)), [0.01] * 4)
    g.qdq(g.op("Conv", [g.cur, w], "gconv", kernel_shape=[3, 3], pads=[1] * 4, group=2),
          0.02, 0, name="y")
    refuse(g.model("y_dq"), "Conv 'gconv': group 2 not supported")
    refuse(conv_graph(k=5, pad=2, hw=(8, 8)), "Conv 'conv1': kernel 5x5 not supported")


def test_refuse_unsupported_ops_and_float_ops():
    g = G((8,))
    y = g.op("Sigmoid", [g.cur], "sig")
    refuse(g.model(y), "Sigmoid 'sig': operator Sigmoid not supported")

    g = G((8,))
    w = g.init(rng(0).normal(size=(8, 3)))
    y = g.qdq(g.op("MatMul", [g.cur, w], "fc"), 0.1, 0, name="y")
    refuse(g.model(y), "MatMul 'fc'", "float (not quantized)")

    g = G((8,))
    w = g.weights(rng(0).integers(-8, 8, (8, 3)), [0.1] * 3, axis=1)
    y = g.op("MatMul", [g.cur, w], "fc")                          # no QuantizeLinear after it
    refuse(g.model(y), "not quantized", "MatMul 'fc'")

    g = G((1, 6, 6))
    w = g.weights(rng(0).integers(-8, 8, (2, 1, 3, 3)), [0.1] * 2)
    c = g.op("Conv", [g.cur, w], "conv", kernel_shape=[3, 3], pads=[1] * 4)
    y = g.qdq(g.op("GlobalAveragePool", [c], "gap"), 0.1, 0, name="y")
    refuse(g.model(y), "GlobalAveragePool 'gap'", "unquantized float result of Conv 'conv'")

    nodes = [helper.make_node("QLinearConv", ["x"], ["y"], name="qc", domain="com.microsoft")]
    gr = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4])],
                           [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    refuse(helper.make_model(gr), "QLinearConv 'qc'", "QDQ")


def test_refuse_quantization_schemes():
    # per-axis activation scale
    g = G((8,))
    s = g.init(np.full(8, 0.1, dtype=np.float32))
    z = g.init(np.zeros(8), TP.INT8)
    g.nodes.append(helper.make_node("QuantizeLinear", [g.cur, s, z], ["a"], name="perax", axis=1))
    refuse(g.model("a"), "QuantizeLinear 'perax'", "per-axis quantization of activations")
    # 16-bit activations
    g = G((8,))
    s, z = g.init(np.float32(0.1)), g.init(np.array(0, dtype=np.int16))
    g.inits[-1] = numpy_helper.from_array(np.array(0, dtype=np.int16), z)
    g.nodes.append(helper.make_node("QuantizeLinear", [g.cur, s, z], ["a"], name="q16"))
    refuse(g.model("a"), "QuantizeLinear 'q16'", "activation type int16 not supported")
    # weight scales along the reduction axis
    g = G((8,))
    w = g.weights(rng(0).integers(-8, 8, (8, 3)), [0.1] * 8, axis=0)
    y = g.qdq(g.op("MatMul", [g.cur, w], "fc"), 0.1, 0, name="y")
    refuse(g.model(y), "MatMul 'fc'", "not per output channel")
    # requantization without compute
    g = G((8,))
    refuse(g.model(g.qdq(g.cur, 0.5, 0, name="rq")), "QuantizeLinear 'rq_Q'", "requantization")
    # ReLU6
    refuse(_relu6(), "Clip 'clip1'", "Clip max 6.0")


def _relu6():
    g = G((2, 6, 6))
    w = g.weights(rng(1).integers(-127, 128, (4, 2, 3, 3)), [0.01] * 4)
    c = g.op("Conv", [g.cur, w], "conv", kernel_shape=[3, 3], pads=[1] * 4)
    y = g.op("Clip", [c, g.init(np.float32(0)), g.init(np.float32(6))], "clip1")
    return g.model(g.qdq(y, 0.05, -128, name="y"))


def test_refuse_graph_shapes():
    # residual add / a branch
    g = G((8,))
    w = g.weights(rng(0).integers(-8, 8, (8, 8)), [0.1] * 8, axis=1)
    a = g.qdq(g.op("MatMul", [g.cur, w], "fc"), 0.1, 0, name="a")
    y = g.qdq(g.op("Add", [a, g.cur], "res"), 0.1, 0, name="y")
    refuse(g.model(y), "feeds 2 nodes")
    # MaxPool 3x3, Gemm alpha, Flatten axis, Reshape
    g = G((1, 6, 6))
    y = g.qdq(g.op("MaxPool", [g.cur], "mp", kernel_shape=[3, 3], strides=[2, 2]), 1 / 64, -3,
              name="y")
    refuse(g.model(y), "MaxPool 'mp': kernel_shape (3, 3) not supported")
    g = G((8,))
    w = g.weights(rng(0).integers(-8, 8, (8, 3)), [0.1] * 3, axis=1)
    y = g.qdq(g.op("Gemm", [g.cur, w], "gm", alpha=2.0), 0.1, 0, name="y")
    refuse(g.model(y), "Gemm 'gm': alpha=2.0 not supported")
    g = G((1, 4, 4))
    y = g.qdq(g.op("Reshape", [g.cur, g.init(np.array([0, 4, 4]), TP.INT64)], "rs"),
              1 / 64, -3, name="y")
    refuse(g.model(y), "Reshape 'rs': Reshape to [0, 4, 4] not supported")
    g = G((1, 4, 4))
    y = g.qdq(g.op("Flatten", [g.cur], "fl", axis=2), 1 / 64, -3, name="y")
    refuse(g.model(y), "Flatten 'fl': axis 2 not supported")


def test_import_error_message(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[onnx\]"'):
        load_onnx(b"")
    assert onnx_import.ONNX_EXTRA_MESSAGE.startswith("ONNX import needs the [onnx] extra")


def test_sw_imports_without_onnx():
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
            "import sw.model, sw.onnx_import, sw.demo, sw.quant, sw.numerics; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".")
    assert out.stdout.strip() == "ok", out.stderr
