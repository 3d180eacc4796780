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

``python -m sw.accuracy --sparse`` (:func:`run_sparse`) measures N:M sparse weights instead
(issue 10): the float MLP pruned by magnitude along K to 2:4, 1:4 and 2:8 (per column, with
masks shared by column pairs as the packed DSP chain needs, or by groups of ``G`` columns, 16
by default (``--share``), as an engine whose chains share their indices needs), with and
without fine-tuning with the masks fixed, quantized INT8 / INT4 per channel and run through
the sparse engine's golden model (:func:`sw.numerics.sparse_gemm` on the compressed
:class:`sw.numerics.NMSparse`), against the dense network; it replaces only its own section of
``--out``.

scikit-learn (only its data set and split) is an optional dependency (extra ``[onnx]``, also
in ``[dev]``); it is imported only when data are loaded.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from sw import numerics, quant
from sw.numerics import WeightFormat

__all__ = ["Row", "Report", "load_data", "train_mlp", "float_logits", "quantize_mlp",
           "int_predict", "run", "markdown", "main", "SparseRow", "SparseReport", "prune_mlp",
           "sparse_qlayers", "sparse_int_predict", "run_sparse", "sparse_markdown"]

#: the integer formats take a zero point; TERNARY and POW2 are symmetric only
ASYMMETRIC_FORMATS = (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.INT2)
#: ``--dsp`` choices of the sim backend: the DSP engines of ``hw.sizes.DSP_ENGINES`` but "none"
#: (kept equal by ``tests/test_accuracy_sparse.py``; ``sw`` does not import ``hw``)
DSP_CHOICES = ("dsp4", "dsp8", "dsp8p", "dsp4s", "dsp8s")


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
              lr: float = 3e-3, weight_decay: float = 1e-4, init=None, masks=None):
    """Train a ``K-hidden-C`` ReLU MLP with softmax cross-entropy, mini-batch Adam, NumPy only.

    He-normal initialisation from ``np.random.default_rng(seed)``, one shuffle per epoch,
    L2 weight decay on the weights. Returns ``[(w1, b1), (w2, b2)]`` with ``w`` as (K, N).

    ``init`` (``[(w1, b1), (w2, b2)]``, e.g. a trained network; ``hidden`` is then taken from
    it) replaces the random initialisation: fine-tuning. ``masks`` (one bool array of each
    weight's shape, or None, per layer) fixes a sparsity pattern: masked-out weights start at
    zero, their gradients (weight decay included) are zeroed and the mask is re-applied after
    every step, so they stay exactly zero.
    """
    for name, v in (("hidden", hidden), ("epochs", epochs), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    k = x.shape[1]
    if init is None:
        params = [rng.normal(0, np.sqrt(2 / k), (k, hidden)), np.zeros(hidden),
                  rng.normal(0, np.sqrt(2 / hidden), (hidden, classes)), np.zeros(classes)]
    else:
        (w1, b1), (w2, b2) = init
        params = [np.array(v, dtype=np.float64) for v in (w1, b1, w2, b2)]
        if params[0].shape[0] != k or params[2].shape[1] != classes \
                or params[0].shape[1] != params[2].shape[0]:
            raise ValueError(f"init shapes {params[0].shape}, {params[2].shape} do not fit "
                             f"{k} inputs and {classes} classes")
    wmask = [None, None] if masks is None else [None if mk is None else np.asarray(mk, dtype=bool)
                                                 for mk in masks]
    if len(wmask) != 2:
        raise ValueError(f"masks needs one entry per layer (2), not {len(wmask)}")
    for j, mk in zip((0, 2), wmask):
        if mk is not None:
            if mk.shape != params[j].shape:
                raise ValueError(f"mask shape {mk.shape} differs from the weights' "
                                 f"{params[j].shape}")
            params[j] = params[j] * mk
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
            for j, mk in zip((0, 2), wmask):
                if mk is not None:
                    grads[j] = grads[j] * mk
            step += 1
            for j, g in enumerate(grads):                      # Adam, beta 0.9 / 0.999
                m1[j] = 0.9 * m1[j] + 0.1 * g
                m2[j] = 0.999 * m2[j] + 0.001 * g * g
                mh, vh = m1[j] / (1 - 0.9 ** step), m2[j] / (1 - 0.999 ** step)
                params[j] = params[j] - lr * mh / (np.sqrt(vh) + 1e-8)
            for j, mk in zip((0, 2), wmask):
                if mk is not None:
                    params[j] = params[j] * mk
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


# -- N:M sparse weights (issue 10) -----------------------------------------------------------

#: (n, m) patterns of the sparse study (all hardware patterns of ``sw.numerics.NMPattern``)
SPARSE_PATTERNS = ((2, 4), (4, 8), (1, 4), (2, 8))
#: weight formats of the sparse study (per channel, symmetric: a pruned weight is code 0)
SPARSE_FORMATS = (WeightFormat.INT8, WeightFormat.INT4)
#: heading of the sparse section in ``docs/accuracy.md`` (``--sparse`` replaces it in place)
SPARSE_HEADING = "## N:M sparse weights (issue 10)"
#: columns per mask group of the shared-index variant of the sparse study (``--share``): the
#: 85F core's ``cols``, what its ``dsp4s`` / ``dsp8s`` engines share one index across
SPARSE_SHARE = 16


def prune_mlp(layers, n: int, m: int, *, pair_columns: bool = False, share: int = 1):
    """Magnitude N:M pruning of every weight matrix along K (:func:`sw.quant.prune_nm`).

    ``pair_columns`` / ``share``: columns ``2c, 2c + 1`` / every group of ``share``
    consecutive columns (from column 0, the last one possibly partial) keep the same rows,
    as :func:`sw.quant.prune_nm` says.

    Returns ``(pruned_layers, masks)``: the weights with pruned entries set to 0 (biases
    unchanged) and the bool keep-masks, one per layer."""
    masks = [quant.prune_nm(w, n, m, pair_columns=pair_columns, share=share)
             for w, _ in layers]
    return [(w * mk, b) for (w, b), mk in zip(layers, masks)], masks


def sparse_qlayers(qlayers, masks, n: int, m: int):
    """The compressed :class:`sw.numerics.NMSparse` weights of quantized pruned layers.

    Every layer must be per channel and symmetric (weight zero point 0, so a pruned weight is
    the code 0 and dropping it is exact); raises ``AssertionError`` if a pruned weight
    quantized to anything but 0 or if ``to_dense`` of the compressed form is not ``q``."""
    out = []
    for i, (ql, mk) in enumerate(zip(qlayers, masks)):
        if ql.group is not None or not ql.symmetric:
            raise ValueError(f"layer {i}: the sparse path needs per-channel symmetric weights")
        if np.any(ql.q[~mk]):
            raise AssertionError(f"layer {i}: a pruned weight quantized to a non-zero code")
        sp = quant.compress_nm(ql.q, mk, n=n, m=m, fmt=ql.fmt)
        if not np.array_equal(numerics.to_dense(sp), ql.q):
            raise AssertionError(f"layer {i}: to_dense(compress_nm(q)) differs from q")
        out.append(sp)
    return out


def sparse_int_predict(qlayers, sparse, x, device=None) -> np.ndarray:
    """Class predictions of the integer network whose GEMMs run on N:M compressed weights.

    Per layer: the accumulators by :func:`sw.numerics.sparse_gemm` (the sparse DSP engine's
    golden model), which must equal the dense integer GEMM on :func:`sw.numerics.to_dense`;
    then the layer's own epilogue (:func:`sw.numerics.requantize_channels` with the
    :class:`~sw.quant.QuantLinear`'s requantization), whose int8 output must equal
    :meth:`~sw.quant.QuantLinear.golden` on the dense zero-filled weights. With ``device`` (an
    :class:`sw.driver.Accelerator` with a sparse DSP engine) every layer also runs there
    (:meth:`~sw.driver.Accelerator.sparse_gemm` with the layer's requantization) and must
    give the same int8 outputs. ``AssertionError`` on any difference."""
    h = quant.quantize_act(x, qlayers[0].x_scale, qlayers[0].x_zero)
    for i, (ql, sp) in enumerate(zip(qlayers, sparse)):
        acc = numerics.sparse_gemm(h, sp)
        dense_acc = numerics.mixgemm(h, numerics.to_dense(sp), fmt=sp.fmt)    # RAW32
        if not np.array_equal(acc, dense_acc):
            raise AssertionError(f"layer {i}: sparse_gemm differs from the dense GEMM on "
                                 f"to_dense in {int(np.sum(acc != dense_acc))} outputs")
        out = numerics.requantize_channels(acc, ql.requant)
        gold = ql.golden(h)
        if not np.array_equal(out, gold):
            raise AssertionError(f"layer {i}: the sparse path differs from QuantLinear.golden "
                                 f"in {int(np.sum(out != gold))} outputs")
        if device is not None:
            dev = device.sparse_gemm(h, sp, requant=ql.requant)
            if not np.array_equal(dev, out):
                raise AssertionError(f"layer {i}: the device differs from the golden model "
                                     f"in {int(np.sum(dev != out))} outputs")
        h = out
    return np.argmax(h, axis=1)


@dataclass(frozen=True)
class SparseRow:
    n: int
    m: int
    #: masks shared by column pairs 2c, 2c+1 (the packed two-weights-per-DSP chain)
    pair_columns: bool
    fmt: WeightFormat
    #: test accuracy of the integer network: pruned only / pruned and fine-tuned
    accuracy: float
    finetuned_accuracy: float
    #: the same for the float network
    float_accuracy: float
    float_finetuned_accuracy: float
    #: dense integer network in ``fmt`` (per channel, symmetric)
    dense_accuracy: float
    #: masks shared by groups of ``share`` consecutive columns (``sw.quant.prune_nm``'s
    #: ``share``; 1: per column, or pairs with ``pair_columns``)
    share: int = 1

    @property
    def masks(self) -> str:
        """The mask variant as the report names it: "per column", "pairs", "groups of G"."""
        if self.share > 2 or (self.share == 2 and not self.pair_columns):
            return f"groups of {self.share}"
        return "pairs" if self.pair_columns else "per column"


@dataclass(frozen=True)
class SparseReport:
    hidden: int
    seed: int
    epochs: int
    finetune_epochs: int
    finetune_lr: float
    n_train: int
    n_test: int
    float_accuracy: float
    #: control: the dense float network fine-tuned the same way (no mask)
    float_finetuned_accuracy: float
    rows: tuple[SparseRow, ...]
    #: where every sparse network also ran (e.g. "sim 45F dsp4"), equal to the golden model
    device: str = ""


def _mask_variants(pair_columns, share, device) -> list[tuple[bool, int]]:
    """``(pair_columns, share)`` of :func:`prune_mlp` per mask variant of :func:`run_sparse`."""
    if share is not None and (isinstance(share, bool) or not isinstance(share, int)
                              or share < 1):
        raise ValueError(f"share must be None or a positive integer (columns per mask "
                         f"group), not {share!r}")
    info = getattr(device, "info", None)
    group = getattr(info, "dsp_index_group", 0) if info is not None else 0
    if group > 1:
        # the device's engine reads one index per group: only masks shared that way run
        packed = bool(info.dsp_packed)
        if share is not None and share != group:
            raise ValueError(f"the device's DSP engine shares its indices in groups of {group} "
                             f"columns, so its layers must be pruned with share={group}, not "
                             f"share={share}")
        if packed and group == 2:
            return [(True, 1)]
        return [(packed, group)]
    variants = [(bool(pair), 1) for pair in pair_columns]
    share = SPARSE_SHARE if share is None else share
    if share > 1:
        variants.append((False, share))
    return variants


def run_sparse(*, hidden: int = 64, seed: int = 0, epochs: int = 60, patterns=SPARSE_PATTERNS,
               formats=SPARSE_FORMATS, pair_columns=(False, True), share: int | None = None,
               finetune_epochs: int = 10, finetune_lr: float = 1e-3, device=None,
               device_name: str = "") -> SparseReport:
    """Accuracy with N:M pruned weights, without and with fine-tuning, against dense.

    Trains the float MLP as :func:`run` does; for every pattern and mask variant prunes it by
    magnitude (:func:`prune_mlp`) and fine-tunes a copy with the masks fixed
    (:func:`train_mlp` from the pruned weights, ``finetune_epochs`` at ``finetune_lr``); each
    float network is quantized per channel, symmetric in every format (activation scales
    calibrated on it) and evaluated through :func:`sparse_int_predict` (also on ``device``,
    an :class:`sw.driver.Accelerator` with a sparse DSP engine, if given).

    The mask variants: per column and pairs (``pair_columns`` lists which), then groups of
    ``share`` columns (None: :data:`SPARSE_SHARE`; 1: none). On a ``device`` whose DSP
    engine reads one index per group of columns (``device.info.dsp_index_group`` > 1:
    packed, or chains sharing their indices) only that group runs: pairs on a packed
    engine, groups of ``dsp_index_group`` columns on a shared one (``share``, if given,
    must equal it: ``ValueError`` otherwise)."""
    variants = _mask_variants(pair_columns, share, device)
    x_tr, x_te, y_tr, y_te = load_data(seed=seed)
    layers = train_mlp(x_tr, y_tr, hidden=hidden, seed=seed, epochs=epochs)

    def acc(pred):
        return float(np.mean(pred == y_te))

    def float_acc(ls):
        return acc(np.argmax(float_logits(ls, x_te), axis=1))

    dense = {}
    for fmt in formats:
        fmt = WeightFormat(fmt)
        qlayers, _ = quantize_mlp(layers, x_tr, fmt=fmt)
        dense[fmt] = acc(int_predict(qlayers, x_te))
    rows = []
    for n, m in patterns:
        for pair, group in variants:
            pruned, masks = prune_mlp(layers, n, m, pair_columns=pair, share=group)
            tuned = train_mlp(x_tr, y_tr, seed=seed + 1, epochs=finetune_epochs, lr=finetune_lr,
                              init=pruned, masks=masks)
            for (w, _), mk in zip(tuned, masks):
                if np.any(w[~mk]):
                    raise AssertionError("fine-tuning moved a pruned weight")
            for fmt in formats:
                fmt = WeightFormat(fmt)
                res = []
                for ls in (pruned, tuned):
                    qlayers, _ = quantize_mlp(ls, x_tr, fmt=fmt)
                    res.append(acc(sparse_int_predict(qlayers, sparse_qlayers(qlayers, masks, n, m),
                                                      x_te, device)))
                rows.append(SparseRow(n, m, pair, fmt, res[0], res[1], float_acc(pruned),
                                      float_acc(tuned), dense[fmt], group))
    control = train_mlp(x_tr, y_tr, seed=seed + 1, epochs=finetune_epochs, lr=finetune_lr,
                        init=layers)
    return SparseReport(hidden, seed, epochs, finetune_epochs, finetune_lr, len(y_tr), len(y_te),
                        float_acc(layers), float_acc(control), tuple(rows), device_name)


def sparse_markdown(rep: SparseReport, command: str) -> str:
    """The sparse report as a markdown section headed :data:`SPARSE_HEADING`."""
    f = rep.float_accuracy
    lines = [
        SPARSE_HEADING,
        "",
        f"Made by `{command}` (NumPy {np.__version__}); updates this section only.",
        "",
        f"The same float MLP (64-{rep.hidden}-10, {rep.epochs} epochs, seed {rep.seed}; "
        f"{100 * f:.2f} % float) is pruned by magnitude along K (`sw.quant.prune_nm`: in every "
        "block of m consecutive inputs of every output the n largest |w| are kept, on both "
        "layers; \"pairs\" = columns 2c and 2c+1 share one mask, as the packed two-weights-per-DSP "
        "chain needs; \"groups of G\" = every G consecutive outputs share one mask, chosen by "
        "their summed |w|, as a DSP engine whose chains share one index per stage needs, "
        "VENOM-style V:N:M; layer 2's 10 outputs are one partial group when G > 10). "
        "\"pruned\" quantizes the pruned network as it is; \"fine-tuned\" first "
        f"trains it {rep.finetune_epochs} more epochs (`train_mlp`, Adam at lr "
        f"{rep.finetune_lr:g}) with the masks fixed (masked gradients, mask re-applied every "
        "step). Weights are quantized per output channel, symmetric (a pruned weight is code 0), "
        "activation scales calibrated on the network being quantized; the weights are "
        "compressed (`sw.quant.compress_nm` -> `NMSparse`) and every layer's accumulators are "
        "computed by `sw.numerics.sparse_gemm` (the sparse DSP engine's golden model), asserted "
        "equal to the dense GEMM on `to_dense`, then requantized by the layer's `QuantLinear` "
        "epilogue, asserted equal to `QuantLinear.golden` on the dense zero-filled weights. "
        "\"dense\" is the unpruned network in the same format (per channel, symmetric); as a "
        "control, the dense float network fine-tuned the same way (no mask) scores "
        f"{100 * rep.float_finetuned_accuracy:.2f} % (before: {100 * f:.2f} %). " +
        (f"Every sparse network also ran layer by layer on {rep.device} (the sparse DSP "
         "engine, `Accelerator.sparse_gemm`), whose int8 outputs equalled the golden model's "
         "on every test image and layer" if rep.device else
         "These figures come from the golden models (the sparse engine is bit-exact with "
         "`sparse_gemm` in its own tests)") +
        f"; one test image is {100 / rep.n_test:.2f} points.",
        "",
        "| pattern | masks | weights | pruned | fine-tuned | dense | fine-tuned vs dense | "
        "float pruned / fine-tuned |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rep.rows:
        lines.append(
            f"| {r.n}:{r.m} | {r.masks} | {r.fmt.name} | "
            f"{100 * r.accuracy:.2f} % | {100 * r.finetuned_accuracy:.2f} % | "
            f"{100 * r.dense_accuracy:.2f} % | "
            f"{100 * (r.finetuned_accuracy - r.dense_accuracy):+.2f} | "
            f"{100 * r.float_accuracy:.2f} / {100 * r.float_finetuned_accuracy:.2f} % |")
    return "\n".join(lines) + "\n"


def _split_sparse(text: str) -> tuple[str, str]:
    """``text`` without the sparse section, and the section ('' if absent)."""
    i = text.find(SPARSE_HEADING)
    if i < 0:
        return text, ""
    j = text.find("\n## ", i + len(SPARSE_HEADING))
    end = len(text) if j < 0 else j + 1
    return text[:i].rstrip("\n") + "\n" + text[end:], text[i:end]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


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
    p.add_argument("--dsp", default="dsp4", choices=list(DSP_CHOICES),
                   help="--sparse with the sim backend: the DSP engine of the model (default "
                        "dsp4; hw/sizes.py DSP_ENGINES)")
    p.add_argument("--rate-min", type=float, default=None,
                   help="sim backend: the slowest simulated clock (cycles/s) the driver's "
                        "timeouts assume (default: SimTransport's per device); smaller on a "
                        "busy machine")
    p.add_argument("--sparse", action="store_true",
                   help="instead: accuracy with N:M pruned weights (2:4, 4:8, 1:4, 2:8; with and "
                        "without fine-tuning) vs dense, on the golden models; replaces only the "
                        "section '" + SPARSE_HEADING[3:] + "' of --out")
    p.add_argument("--finetune-epochs", type=int, default=10,
                   help="--sparse: fine-tuning epochs with the masks fixed (default 10)")
    p.add_argument("--share", type=int, default=None, metavar="G",
                   help=f"--sparse: also prune with masks shared by groups of G consecutive "
                        f"columns (default {SPARSE_SHARE}, the 85F core's cols; 1: no such rows). "
                        f"On a device whose DSP engine shares its indices only its index group "
                        f"runs (DeviceInfo.dsp_index_group; G, if given, must equal it)")
    args = p.parse_args(argv)
    if args.share is not None and args.share < 1:
        p.error(f"--share must be a positive integer, not {args.share}")
    command = " ".join(["python -m sw.accuracy", *argv])
    if args.sparse:
        kw = dict(hidden=args.hidden, seed=args.seed, epochs=args.epochs,
                  finetune_epochs=args.finetune_epochs, share=args.share)
        if args.backend == "none":
            rep = run_sparse(**kw)
        else:
            from .driver import Accelerator
            if args.backend == "sim":
                from .transport import SimTransport
                transport = SimTransport(args.device, dsp=args.dsp, rate_min=args.rate_min)
                name = f"the Verilator model of the {args.device} SoC with `--dsp {args.dsp}`"
            else:
                from .transport import SerialTransport
                transport = SerialTransport(args.port)
                name = f"the board on {args.port}"
            with Accelerator(transport) as acc:
                rep = run_sparse(**kw, device=acc, device_name=name)
        section = sparse_markdown(rep, command)
        print(section, end="")
        if args.out != "-":
            rest, _ = _split_sparse(_read(args.out))
            with open(args.out, "w", encoding="utf-8") as f:
                f.write((rest.rstrip("\n") + "\n\n" if rest.strip() else "") + section)
            print(f"section written to {args.out}", file=sys.stderr)
        return 0
    if args.backend == "none":
        rep = run(hidden=args.hidden, seed=args.seed, epochs=args.epochs)
    else:
        from .driver import Accelerator
        if args.backend == "sim":
            from .transport import SimTransport
            transport = SimTransport(args.device, pe="mixpe", rate_min=args.rate_min)
        else:
            from .transport import SerialTransport
            transport = SerialTransport(args.port)
        with Accelerator(transport) as acc:
            rep = run(hidden=args.hidden, seed=args.seed, epochs=args.epochs, device=acc)
    text = markdown(rep, command)
    print(text, end="")
    if args.out != "-":
        _, section = _split_sparse(_read(args.out))      # keep the --sparse section
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + ("\n" + section if section else ""))
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
