"""Small real networks for the demo and the ONNX import tests: digits MLP and CNN.

The pipeline a user follows with their own model, end to end on scikit-learn's bundled digits
(8x8 images, no download):

1. train in float (:func:`train_mlp`, :func:`train_cnn`: NumPy, a few seconds on one core),
2. export a float ONNX graph (:func:`mlp_to_onnx`, :func:`cnn_to_onnx`, built with
   ``onnx.helper``; the CNN takes NCHW images as any ONNX vision model does),
3. quantize it with onnxruntime's static QDQ quantizer (:func:`quantize_onnx`),
4. import the QDQ graph as an integer-only :class:`sw.model.Model`
   (:func:`sw.onnx_import.load_onnx`) and compare with :func:`onnxruntime_predict`.

onnx, onnxruntime and scikit-learn are the ``[onnx]`` extra; they are imported only inside the
functions that need them.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

__all__ = ["digits_data", "digits_images", "train_mlp", "mlp_to_onnx", "train_cnn",
           "cnn_forward", "cnn_to_onnx", "quantize_onnx", "onnxruntime_predict"]

_EXTRA = 'ONNX import needs the [onnx] extra: pip install -e ".[onnx]"'


def _need(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(_EXTRA) from None


def digits_data(seed: int = 0, *, test_size: float = 0.25):
    """scikit-learn's digits, pixels 0..16 scaled to [0, 1], stratified split.

    Returns
    -------
    (x_train, x_test, y_train, y_test)
        ``x`` float64 (n, 64) in row-major pixel order, ``y`` int labels 0..9.
    """
    _need("sklearn")
    from sw import accuracy
    return accuracy.load_data(seed=seed, test_size=test_size)


def digits_images(x) -> np.ndarray:
    """(n, 64) digits -> (n, 1, 8, 8) float32 NCHW images (the CNN's ONNX input)."""
    x = np.asarray(x)
    return x.reshape(-1, 1, 8, 8).astype(np.float32)


def train_mlp(x, y, *, hidden: int = 32, seed: int = 0, epochs: int = 60):
    """A 64-``hidden``-10 ReLU MLP (NumPy Adam, :func:`sw.accuracy.train_mlp`).

    Returns ``[(w1, b1), (w2, b2)]`` with ``w`` as (K, N).
    """
    from sw import accuracy
    return accuracy.train_mlp(x, y, hidden=hidden, seed=seed, epochs=epochs)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def mlp_to_onnx(layers, *, name: str = "digits_mlp", opset: int = 17):
    """A float ONNX graph ``x (B, K) -> MatMul -> Add -> Relu -> ... -> logits``.

    ``layers`` is ``[(w, b), ...]`` with ``w`` (K, N); ReLU after every layer but the last.
    Node names are ``fc{i}`` / ``fc{i}_bias`` / ``relu{i}``. Returns an ``onnx.ModelProto``.
    """
    onnx = _need("onnx")
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    cur = "x"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(_f32(w), f"fc{i}.weight"),
                  numpy_helper.from_array(_f32(b), f"fc{i}.bias")]
        nodes.append(helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"fc{i}_mm"],
                                      name=f"fc{i}"))
        out = f"fc{i}_out" if i < len(layers) - 1 else "logits"
        nodes.append(helper.make_node("Add", [f"fc{i}_mm", f"fc{i}.bias"], [out],
                                      name=f"fc{i}_bias"))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}_out"], name=f"relu{i}"))
            out = f"relu{i}_out"
        cur = out
    k, n = np.shape(layers[0][0])[0], np.shape(layers[-1][0])[1]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- the CNN (NumPy training with hand-written backprop) --------------------------------------

def _im2col_f(x, kernel: int = 3, pad: int = 1) -> np.ndarray:
    """Float NHWC (B, H, W, C) -> (B, H, W, kernel, kernel, C) windows, stride 1."""
    b, h, w, c = x.shape
    xp = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
    xp[:, pad:pad + h, pad:pad + w] = x
    cols = np.empty((b, h, w, kernel, kernel, c), dtype=x.dtype)
    for ky in range(kernel):
        for kx in range(kernel):
            cols[:, :, :, ky, kx] = xp[:, ky:ky + h, kx:kx + w]
    return cols


def _col2im_f(dcols, kernel: int = 3, pad: int = 1) -> np.ndarray:
    b, h, w, _, _, c = dcols.shape
    dxp = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=dcols.dtype)
    for ky in range(kernel):
        for kx in range(kernel):
            dxp[:, ky:ky + h, kx:kx + w] += dcols[:, :, :, ky, kx]
    return dxp[:, pad:pad + h, pad:pad + w]


def cnn_forward(params, x, *, cache: bool = False):
    """Float CNN on NHWC images (B, 8, 8, 1): conv3x3(1->C1) relu maxpool2 conv3x3(C1->C2)
    relu global-avg-pool dense(C2->10). ``params = (w1, b1, w2, b2, w3, b3)`` with conv weights
    in im2col order ``(9 * Cin, Cout)``. Returns logits (and the cache for backprop)."""
    w1, b1, w2, b2, w3, b3 = params
    bsz, h, w, _ = x.shape
    c1 = _im2col_f(x)
    z1 = c1.reshape(bsz * h * w, -1) @ w1 + b1
    a1 = np.maximum(z1, 0).reshape(bsz, h, w, -1)
    win = a1.reshape(bsz, h // 2, 2, w // 2, 2, -1).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(bsz, h // 2, w // 2, a1.shape[3], 4)
    arg = win.argmax(axis=-1)
    p1 = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    c2 = _im2col_f(p1)
    z2 = c2.reshape(bsz * (h // 2) * (w // 2), -1) @ w2 + b2
    a2 = np.maximum(z2, 0).reshape(bsz, h // 2, w // 2, -1)
    g = a2.mean(axis=(1, 2))
    logits = g @ w3 + b3
    if cache:
        return logits, (x, c1, z1, a1, arg, p1, c2, z2, g)
    return logits


def train_cnn(x, y, *, c1: int = 8, c2: int = 16, seed: int = 0, epochs: int = 40,
              batch: int = 32, lr: float = 5e-3):
    """Train the digits CNN of :func:`cnn_forward` with Adam on softmax cross-entropy.

    ``x`` is (n, 64) (or (n, 8, 8, 1)) in [0, 1]. He-normal initialisation from
    ``np.random.default_rng(seed)``. About 10 s on one core for the default 40 epochs;
    typically 93-97 % test accuracy.

    Returns
    -------
    tuple
        ``(w1, b1, w2, b2, w3, b3)``: conv weights in im2col order ``(9 * Cin, Cout)``
        (see :func:`cnn_to_onnx` for the ONNX layout), dense ``(c2, 10)``.
    """
    for nm, v in (("c1", c1), ("c2", c2), ("epochs", epochs), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm} must be a positive integer, not {v!r}")
    x = np.asarray(x, dtype=np.float64).reshape(-1, 8, 8, 1)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes = 10
    params = [rng.normal(0, np.sqrt(2 / 9), (9, c1)), np.zeros(c1),
              rng.normal(0, np.sqrt(2 / (9 * c1)), (9 * c1, c2)), np.zeros(c2),
              rng.normal(0, np.sqrt(1 / c2), (c2, classes)), np.zeros(classes)]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    onehot = np.eye(classes)[y]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb, tb = x[idx], onehot[idx]
            bsz = len(idx)
            w1, b1, w2, b2, w3, b3 = params
            logits, (_, cols1, z1, a1, arg, p1, cols2, z2, g) = cnn_forward(params, xb, cache=True)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            d = (p - tb) / bsz
            gw3, gb3 = g.T @ d, d.sum(axis=0)
            dg = d @ w3.T                                         # (B, c2)
            da2 = np.broadcast_to(dg[:, None, None, :] / 16, (bsz, 4, 4, c2))
            dz2 = (da2 * (z2.reshape(bsz, 4, 4, c2) > 0)).reshape(-1, c2)
            gw2, gb2 = cols2.reshape(-1, 9 * c1).T @ dz2, dz2.sum(axis=0)
            dp1 = _col2im_f((dz2 @ w2.T).reshape(bsz, 4, 4, 3, 3, c1))
            dwin = np.zeros((bsz, 4, 4, c1, 4))
            np.put_along_axis(dwin, arg[..., None], dp1[..., None], axis=-1)
            da1 = dwin.reshape(bsz, 4, 4, c1, 2, 2).transpose(0, 1, 4, 2, 5, 3)
            da1 = da1.reshape(bsz * 64, c1)
            dz1 = da1 * (z1 > 0)
            gw1, gb1 = cols1.reshape(-1, 9).T @ dz1, dz1.sum(axis=0)
            grads = [gw1, gb1, gw2, gb2, gw3, gb3]
            step += 1
            for j, gr in enumerate(grads):                       # Adam, beta 0.9 / 0.999
                m1[j] = 0.9 * m1[j] + 0.1 * gr
                m2[j] = 0.999 * m2[j] + 0.001 * gr * gr
                mh, vh = m1[j] / (1 - 0.9 ** step), m2[j] / (1 - 0.999 ** step)
                params[j] = params[j] - lr * mh / (np.sqrt(vh) + 1e-8)
    return tuple(params)


def cnn_to_onnx(params, *, name: str = "digits_cnn", opset: int = 17):
    """The CNN of :func:`cnn_forward` as a float ONNX graph on NCHW input ``x (B, 1, 8, 8)``.

    Nodes: ``conv1`` (3x3, pad 1) ``relu1`` ``pool1`` (MaxPool 2x2 stride 2) ``conv2`` ``relu2``
    ``gap`` (GlobalAveragePool) ``flatten`` ``fc`` (Gemm, transB=1). Conv weights become
    ``(Cout, Cin, 3, 3)``: ``W[o, c, ky, kx] = w[(ky * 3 + kx) * Cin + c, o]``.
    """
    onnx = _need("onnx")
    from onnx import TensorProto, helper, numpy_helper
    w1, b1, w2, b2, w3, b3 = params

    def conv_w(w):
        cin = w.shape[0] // 9
        return _f32(np.asarray(w).reshape(3, 3, cin, -1).transpose(3, 2, 0, 1))

    inits = [numpy_helper.from_array(conv_w(w1), "conv1.weight"),
             numpy_helper.from_array(_f32(b1), "conv1.bias"),
             numpy_helper.from_array(conv_w(w2), "conv2.weight"),
             numpy_helper.from_array(_f32(b2), "conv2.bias"),
             numpy_helper.from_array(_f32(np.asarray(w3).T), "fc.weight"),
             numpy_helper.from_array(_f32(b3), "fc.bias")]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- onnxruntime --------------------------------------------------------------------------------

def quantize_onnx(float_model, calib_x, *, per_channel: bool = True, activation_type: str = "int8",
                  weight_type: str = "int8", batch: int = 64, extra_options=None):
    """Static QDQ quantization with onnxruntime (MinMax calibration on ``calib_x``).

    Parameters
    ----------
    float_model : onnx.ModelProto
    calib_x : array_like
        Calibration inputs in the model's input layout (NCHW for the CNN), fed in batches.
    per_channel : bool
        Per-output-channel weight scales.
    activation_type, weight_type : {"int8", "uint8", "int4"}
        ``"int4"`` (weights) needs opset >= 21 for the standard int4 ``DequantizeLinear``.
    extra_options : dict or None
        Passed to ``quantize_static`` (e.g. ``{"ActivationSymmetric": True}``).

    Returns
    -------
    onnx.ModelProto
        The QDQ model.
    """
    onnx = _need("onnx")
    _need("onnxruntime")
    from onnxruntime import quantization as q
    types = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8, "int4": q.QuantType.QInt4}
    for nm, v in (("activation_type", activation_type), ("weight_type", weight_type)):
        if v not in types:
            raise ValueError(f"{nm} must be one of {sorted(types)}, not {v!r}")
    calib_x = np.asarray(calib_x, dtype=np.float32)
    in_name = float_model.graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter([{in_name: calib_x[i:i + batch]}
                             for i in range(0, len(calib_x), batch)])

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "qdq.onnx")
        onnx.save(float_model, src)
        q.quantize_static(src, dst, Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=per_channel, activation_type=types[activation_type],
                          weight_type=types[weight_type], extra_options=extra_options or {})
        return onnx.load(dst)


def onnxruntime_predict(model, x, *, fused: bool = False) -> np.ndarray:
    """Run ``model`` (ModelProto, bytes or path) on ``x`` with onnxruntime's CPU provider;
    returns the first output as float64.

    By default the graph runs operator by operator as the ONNX specification defines it
    (optimization level ``ORT_ENABLE_BASIC``: constant folding, no QDQ fusion): the reference
    our integer model is compared with. ``fused=True`` lets onnxruntime replace QDQ groups by
    its own int8 kernels (``ORT_ENABLE_ALL``, its default); on the digits models those
    results differ from the operator-by-operator ones by up to ~30 output LSBs (measured with
    onnxruntime 1.32), so they are not a reference for bit-level comparisons.
    """
    ort = _need("onnxruntime")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: np.asarray(x, dtype=np.float32)})[0],
                      dtype=np.float64)
