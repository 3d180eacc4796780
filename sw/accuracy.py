"""Accuracy of the MixPE weight formats on a small real network: ``python -m sw.accuracy``.

Trains a 64-H-10 ReLU MLP (a few lines of NumPy: Adam on softmax cross-entropy) on
scikit-learn's bundled digits data set (8x8 images, 1797 samples; a fixed stratified split and
seed), quantizes both linear layers with
:func:`sw.quant.quantize_linear` in every weight format, per output channel and per group of
32 along K, symmetric and (where the format allows it) asymmetric, with int8 activation scales
calibrated by min/max on the training set, and runs the integer-only network through
:meth:`sw.quant.QuantLinear.golden` (the core's golden model, so bit-exact with the device).
Prints a markdown table of test accuracy against the float network and writes it, with the
command that made it, to ``docs/accuracy.md`` (``--out``).

scikit-learn (only its data set and split) is an optional dependency (extra ``[onnx]``, also
in ``[dev]``); it is imported only when data are loaded.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from sw import quant
from sw.numerics import WeightFormat

__all__ = ["Row", "Report", "load_data", "train_mlp", "float_logits", "quantize_mlp",
           "int_predict", "run", "markdown", "main"]

#: the integer formats take a zero point; TERNARY and POW2 are symmetric only
ASYMMETRIC_FORMATS = (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.INT2)


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError("sw.accuracy needs scikit-learn, an optional dependency: "
                          "pip install -e '.[onnx]' (or '.[dev]')") from None
    import sklearn.datasets
    import sklearn.model_selection
    return sklearn


def load_data(*, seed: int = 0, test_size: float = 0.25):
    """Digits, pixels scaled to [0, 1], stratified split: ``(x_train, x_test, y_train, y_test)``."""
    sk = _sklearn()
    x, y = sk.datasets.load_digits(return_X_y=True)
    return sk.model_selection.train_test_split(x / 16.0, y, test_size=test_size,
                                               random_state=seed, stratify=y)


def train_mlp(x, y, *, hidden: int = 64, seed: int = 0, epochs: int = 60, batch: int = 32,
              lr: float = 3e-3, weight_decay: float = 1e-4):
    """Train a ``K-hidden-C`` ReLU MLP with softmax cross-entropy, mini-batch Adam, NumPy only.

    He-normal initialisation from ``np.random.default_rng(seed)``, one shuffle per epoch,
    L2 weight decay on the weights. Returns ``[(w1, b1), (w2, b2)]`` with ``w`` as (K, N).
    """
    for name, v in (("hidden", hidden), ("epochs", epochs), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    k = x.shape[1]
    params = [rng.normal(0, np.sqrt(2 / k), (k, hidden)), np.zeros(hidden),
              rng.normal(0, np.sqrt(2 / hidden), (hidden, classes)), np.zeros(classes)]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    onehot = np.eye(classes)[y]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb, tb = x[idx], onehot[idx]
            w1, b1, w2, b2 = params
            z = xb @ w1 + b1
            h = np.maximum(z, 0)
            logits = h @ w2 + b2
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            d = (p - tb) / len(idx)                            # d loss / d logits
            dh = (d @ w2.T) * (z > 0)
            grads = [xb.T @ dh + weight_decay * w1, dh.sum(axis=0),
                     h.T @ d + weight_decay * w2, d.sum(axis=0)]
            step += 1
            for j, g in enumerate(grads):                      # Adam, beta 0.9 / 0.999
                m1[j] = 0.9 * m1[j] + 0.1 * g
                m2[j] = 0.999 * m2[j] + 0.001 * g * g
                mh, vh = m1[j] / (1 - 0.9 ** step), m2[j] / (1 - 0.999 ** step)
                params[j] = params[j] - lr * mh / (np.sqrt(vh) + 1e-8)
    return [(params[0], params[1]), (params[2], params[3])]


def float_logits(layers, x) -> np.ndarray:
    """The float network: ReLU after every layer but the last."""
    h = np.asarray(x, dtype=np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def quantize_mlp(layers, x_calib, *, fmt, group=None, symmetric: bool = True):
    """Quantize every layer; activation scales from min/max of the float network on
    ``x_calib``. Returns ``(qlayers, (x_scale, x_zero))``."""
    act = [quant.calibrate_act(x_calib)]
    h = np.asarray(x_calib, dtype=np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
        act.append(quant.calibrate_act(h))
    qlayers = []
    for i, (w, b) in enumerate(layers):
        (xs, xz), (ys, yz) = act[i], act[i + 1]
        qlayers.append(quant.quantize_linear(
            w, b, fmt=fmt, group=group, symmetric=symmetric, x_scale=xs, x_zero=xz,
            y_scale=ys, y_zero=yz, relu=i < len(layers) - 1))
    return qlayers, act[0]


def int_predict(qlayers, x, device=None) -> np.ndarray:
    """Class predictions of the integer-only network (int8 in, int8 logits, argmax), by the
    golden model, or on ``device`` (an ``sw.driver.Accelerator``) layer by layer."""
    h = quant.quantize_act(x, qlayers[0].x_scale, qlayers[0].x_zero)
    for ql in qlayers:
        h = ql.golden(h) if device is None else device.linear(h, ql)
    return np.argmax(h, axis=1)


@dataclass(frozen=True)
class Row:
    fmt: WeightFormat
    group: int | None
    symmetric: bool
    accuracy: float
    sqnr_db: tuple[float, ...]
    #: accuracy on the device (None: not run there); equal to ``accuracy`` or run() raises
    device_accuracy: float | None = None


@dataclass(frozen=True)
class Report:
    hidden: int
    seed: int
    epochs: int
    n_train: int
    n_test: int
    float_accuracy: float
    rows: tuple[Row, ...]


def run(*, hidden: int = 64, seed: int = 0, epochs: int = 60, formats=tuple(WeightFormat),
        groups=(None, 32), asymmetric: bool = True, device=None) -> Report:
    """Train, quantize in every requested setting, evaluate. See the module docstring.

    With ``device`` (an ``sw.driver.Accelerator``) every setting also runs on the device, whose
    int8 logits must equal the golden model's (``AssertionError`` otherwise)."""
    x_tr, x_te, y_tr, y_te = load_data(seed=seed)
    layers = train_mlp(x_tr, y_tr, hidden=hidden, seed=seed, epochs=epochs)
    float_acc = float(np.mean(np.argmax(float_logits(layers, x_te), axis=1) == y_te))
    rows = []
    for fmt in formats:
        fmt = WeightFormat(fmt)
        for group in groups:
            for sym in (True, False) if asymmetric and fmt in ASYMMETRIC_FORMATS else (True,):
                qlayers, _ = quantize_mlp(layers, x_tr, fmt=fmt, group=group, symmetric=sym)
                pred = int_predict(qlayers, x_te)
                acc = float(np.mean(pred == y_te))
                dev_acc = None
                if device is not None:
                    dev = int_predict(qlayers, x_te, device)
                    if not np.array_equal(dev, pred):
                        raise AssertionError(f"{fmt.name} G={group}: device predictions differ "
                                             f"from the golden model's on {int(np.sum(dev != pred))} images")
                    dev_acc = float(np.mean(dev == y_te))
                rows.append(Row(fmt, group, sym, acc, tuple(q.stats.sqnr_db for q in qlayers),
                                dev_acc))
    return Report(hidden, seed, epochs, len(y_tr), len(y_te), float_acc, tuple(rows))


def markdown(rep: Report, command: str) -> str:
    """The report as a markdown document."""
    try:
        import sklearn
        skv = sklearn.__version__
    except ImportError:                      # pragma: no cover - run() needed it already
        skv = "?"
    lines = [
        "# Accuracy of the MixPE weight formats (digits MLP)",
        "",
        f"Made by `{command}` (scikit-learn {skv}, NumPy {np.__version__}).",
        "",
        f"A 64-{rep.hidden}-10 ReLU MLP (`sw.accuracy.train_mlp`: NumPy, softmax cross-entropy, "
        f"mini-batch Adam, {rep.epochs} epochs, seed {rep.seed}) on scikit-learn's digits ({rep.n_train} training / "
        f"{rep.n_test} test images, stratified split, seed {rep.seed}). Each layer is quantized "
        "with `sw.quant.quantize_linear` (scale by MSE clipping search, TWN for ternary); int8 "
        "activation scales and zero points come from min/max of the float network on the "
        "training set; the network then runs integer-only through `QuantLinear.golden` "
        "(`sw.numerics.mixgemm`, bit-exact with the device): int8 input, per-group "
        "dequantization, per-channel requantization with folded INT32 bias, ReLU as a clamp at "
        "the output zero point, argmax of the int8 logits. \"G=32\" gives 2 groups on layer 1 "
        f"(K=64) and {-(-rep.hidden // 32)} on layer 2 (K={rep.hidden}). SQNR: weights the "
        "integers stand for (after integer group scales) against the float weights. One test "
        f"image is {100 / rep.n_test:.2f} points of accuracy, so differences of a few tenths are "
        "noise.",
        "",
        "| weights | scales | zero point | test accuracy | vs float | on the device | "
        "weight SQNR L1 / L2 (dB) |",
        "|---|---|---|---:|---:|---:|---|",
        f"| float64 | - | - | {100 * rep.float_accuracy:.2f} % | - | - | - |",
    ]
    for r in rep.rows:
        sq = " / ".join(f"{s:.1f}" for s in r.sqnr_db)
        dev = "not run" if r.device_accuracy is None else f"{100 * r.device_accuracy:.2f} %"
        lines.append(f"| {r.fmt.name} | {'per channel' if r.group is None else f'G={r.group}'} | "
                     f"{'symmetric' if r.symmetric else 'asymmetric'} | {100 * r.accuracy:.2f} % | "
                     f"{100 * (r.accuracy - rep.float_accuracy):+.2f} | {dev} | {sq} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m sw.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    p.add_argument("--out", default="docs/accuracy.md",
                   help="markdown file to write ('-' for none; default docs/accuracy.md)")
    p.add_argument("--backend", choices=["none", "sim", "serial"], default="none",
                   help="also run every setting on the device: sim = the Verilator model of "
                        "--device's MixPE SoC, serial = the board on --port (default: none)")
    p.add_argument("--device", default="12F", help="sim backend: device size (default 12F)")
    p.add_argument("--port", default=None, help="serial backend: port, e.g. /dev/ttyUSB0")
    args = p.parse_args(argv)
    if args.backend == "none":
        rep = run(hidden=args.hidden, seed=args.seed, epochs=args.epochs)
    else:
        from .driver import Accelerator
        if args.backend == "sim":
            from .transport import SimTransport
            transport = SimTransport(args.device, pe="mixpe")
        else:
            from .transport import SerialTransport
            transport = SerialTransport(args.port)
        with Accelerator(transport) as acc:
            rep = run(hidden=args.hidden, seed=args.seed, epochs=args.epochs, device=acc)
    text = markdown(rep, " ".join(["python -m sw.accuracy", *argv]))
    print(text, end="")
    if args.out != "-":
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
