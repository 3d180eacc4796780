"""``python -m sw run`` and ``python -m sw demo``: whole ONNX models on the device.

``run`` imports a QDQ ONNX model (:func:`sw.onnx_import.load_onnx`), quantizes float inputs
from a ``.npy`` file with the model's input quantization, loads the model once
(:meth:`sw.driver.Accelerator.load_model`: weights, tables and program resident), runs every
sample (:meth:`sw.driver.LoadedModel.run`), checks the int8 outputs bit-exactly against
:meth:`sw.model.Model.golden` and writes the outputs dequantized as onnxruntime returns them
(float32, ONNX layout). ``demo digits`` does the whole pipeline on scikit-learn's digits:
train (:mod:`sw.demo`), export, quantize with onnxruntime, import, run, and compare float /
onnxruntime / device accuracy.

Both print the same counters report (:func:`report_lines`) and can write every figure to a
JSON file. onnx, onnxruntime and scikit-learn (the ``[onnx]`` extra) are imported only inside
the commands; ``python -m sw --help`` works without them.

Narrow weight formats in the demo (``--fmt``)
----------------------------------------------
* ``INT8``: ``quantize_static`` with ``QuantType.QInt8`` weights (per channel, QDQ).
* ``INT4``: ``quantize_static`` with ``QuantType.QInt4`` weights (the pinned onnxruntime
  supports it; the float graphs are exported with opset 21 so that the int4
  ``DequantizeLinear`` is the standard ONNX operator, not the ``com.microsoft`` one). The
  importer takes INT4 from the declared element type.
* ``INT2`` / ``TERNARY``: onnxruntime has no 2-bit or ternary type. The model is quantized with
  INT8 weights, then each MatMul / Gemm / Conv weight of the QDQ graph is re-quantized from its
  dequantized float values with :func:`sw.quant.quantize_weights` (per output channel,
  symmetric; TERNARY is TWN) and stored back as int8 codes in that range with the new
  per-channel scales (and, for Gemm / Conv, the int32 bias re-quantized to the new
  ``x_scale * w_scale``) -- :func:`narrow_qdq_weights`. onnxruntime runs that graph as usual
  (so it stays the operator-by-operator reference) and the importer picks each layer's format
  from its codes (``load_onnx(..., narrow_weights=True)``: the smallest of TERNARY, INT2,
  INT4, INT8 holding them, so an INT2 layer whose codes are all in {-1, 0, 1} runs as
  TERNARY; the summary lists each layer's format). No retraining: the accuracy drop is that of
  post-training quantization.
* POW2 has no ONNX route (the importer never picks it); use ``python -m sw.accuracy``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from .numerics import WEIGHT_LANES, WeightFormat

__all__ = ["CliError", "add_parsers", "cmd_run", "cmd_demo", "Progress", "report_lines",
           "narrow_qdq_weights", "DEMO_FORMATS"]

#: weight formats the demo offers (see the module docstring)
DEMO_FORMATS = ("INT8", "INT4", "INT2", "TERNARY")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _one_line(e) -> str:
    return " ".join(str(e).split())


# -- arguments -----------------------------------------------------------------------------

def _positive(text: str) -> int:
    import argparse
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {v}")
    return v


def add_parsers(sub, common) -> None:
    """Add the ``run`` and ``demo`` subcommands (``common`` adds the backend options)."""
    r = sub.add_parser("run", help="run an ONNX QDQ model on the device over a .npy of inputs",
                       description="Import MODEL (ONNX, QDQ), run the float inputs of --input "
                                   "on the device, check against the golden model, save the "
                                   "dequantized outputs and print the device counters.")
    common(r)
    r.add_argument("model", help="the quantized ONNX model (QDQ format)")
    r.add_argument("--input", required=True, metavar="X.npy",
                   help="float inputs, one row per sample, in the layout the ONNX model takes "
                        "(e.g. NCHW (n, 1, 8, 8) or (n, 64))")
    r.add_argument("--output", metavar="Y.npy", default=None,
                   help="write the outputs here: float32, dequantized, ONNX layout (what "
                        "onnxruntime returns)")
    r.add_argument("--narrow-weights", action="store_true",
                   help="pick each layer's weight format from its codes (TERNARY / INT2 / "
                        "INT4 / INT8) instead of the declared element type")
    r.add_argument("--sparse", action="store_true",
                   help="run layers whose weights are already N:M sparse (pruned before "
                        "quantization) on the device's sparse DSP engine, if it has one "
                        "(sw.program.use_sparse_engine); the results are the same")
    _shared(r)

    d = sub.add_parser("demo", help="end-to-end demo: train, quantize with onnxruntime, run "
                                    "on the device, compare accuracy",
                       description="Train on scikit-learn's digits, export to ONNX, quantize "
                                   "with onnxruntime (static, QDQ, per channel), import, run "
                                   "on the device and compare float / onnxruntime / device.")
    common(d)
    d.add_argument("dataset", choices=("digits",), help="the data set (digits: 8x8 images)")
    d.add_argument("--model", choices=("mlp", "cnn", "both"), default="both",
                   help="which network (default both)")
    d.add_argument("--fmt", type=str.upper, nargs="+", choices=DEMO_FORMATS, default=["INT8"],
                   help="weight format(s) (default INT8; INT4: onnxruntime's int4 weights; INT2 "
                        "and TERNARY: onnxruntime has no such type, the int8 QDQ weights are "
                        "re-quantized per channel with sw.quant and stored as int8 codes)")
    d.add_argument("--samples", type=_positive, default=None,
                   help="test samples to run (default: the whole test split, 450)")
    d.add_argument("--epochs", type=_positive, default=None,
                   help="training epochs (default: sw.demo's, 60 for the MLP, 40 for the CNN)")
    d.add_argument("--seed", type=int, default=0, help="data split and training seed (0)")
    _shared(d)


def _shared(p) -> None:
    p.add_argument("--batch", type=_positive, default=None,
                   help="samples per program run (default: the most that fit on chip)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write every figure to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# -- progress bar ----------------------------------------------------------------------------

class Progress:
    """A one-line text bar on ``stream`` (``progress(done, total)``), redrawn at most every
    ``interval`` seconds; shown only when ``enabled`` and the stream is a terminal, and only
    once a run needs more than one program run."""

    def __init__(self, label: str, *, stream=None, enabled: bool = True, width: int = 30,
                 interval: float = 0.1):
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.label, self.width, self.interval = label, width, interval
        self.t0 = time.monotonic()
        self.last = -1e9
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or (done >= total and not self.shown):
            return
        now = time.monotonic()
        if done < total and now - self.last < self.interval:
            return
        self.last = now
        fill = self.width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] "
                          f"{done}/{total} samples {now - self.t0:.1f} s")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


# -- the counters report ----------------------------------------------------------------------

def _pe_name(info) -> str:
    pe = getattr(info, "pe", None)
    return str(getattr(pe, "name", pe if pe is not None else info.pe_kind)).lower().replace(
        "_", "-")


def _layer_kinds(model, compiled) -> list:
    from .protocol import LayerKind
    by_name = {layer.name: layer for layer in model.layers}
    kinds = []
    for name, rec in zip(compiled.names, compiled.layers):
        layer = by_name.get(name)
        kinds.append((type(layer).__name__ if layer is not None else "?",
                      LayerKind(rec.kind).name,
                      WeightFormat(rec.desc.fmt) if rec.kind == LayerKind.GEMM else None))
    return kinds


def figures(model, lm, info, *, transport: str = "", load_seconds: float = 0.0) -> dict:
    """Every figure of one :meth:`LoadedModel.run` (``lm.last``) as plain JSON values."""
    cp, run = lm.compiled, lm.last
    R, C = info.rows, info.cols
    n = run.samples
    layers = []
    for i, (mtype, kind, fmt) in enumerate(_layer_kinds(model, cp)):
        lanes = WEIGHT_LANES[fmt] if fmt is not None else None
        cc = run.core_cycles[i]
        util = (run.macs[i] / (R * C * lanes * cc) if cc else 0.0) if lanes else None
        layers.append({"name": run.names[i], "type": mtype, "kind": kind,
                       "weights": fmt.name if fmt is not None else None, "lanes": lanes,
                       "cycles": run.cycles[i], "core_cycles": cc, "busy": run.busy[i],
                       "macs": run.macs[i], "utilization": util})
    gemm = [x for x in layers if x["lanes"]]
    peak = sum(R * C * x["lanes"] * x["core_cycles"] for x in gemm)
    total = run.total_cycles
    st = run.stats
    per_inf = total / n if n else 0.0
    wire = st.wire_sent + st.wire_received
    in_bytes = int(np.prod(model.input_shape))
    out_bytes = int(np.prod(model.output_shape))
    return {
        "model": {"name": model.name, "input_shape": list(model.input_shape),
                  "output_shape": list(model.output_shape),
                  "layers": [{"name": layer.name, "type": type(layer).__name__,
                              "output": list(shape),
                              "weights": (layer.lin.fmt.name if getattr(layer, "lin", None)
                                          is not None else None),
                              "macs": macs}
                             for layer, shape, macs in zip(model.layers, model.shapes(),
                                                           model.macs())],
                  "macs_per_sample": int(sum(model.macs()))},
        "device": {"rows": R, "cols": C, "pe": _pe_name(info), "clock_hz": info.clock_hz,
                   "config_hash": f"0x{info.config_hash:08x}", "transport": transport},
        "program": {"device_layers": len(cp.layers), "batch": cp.batch,
                    "resident_bytes": cp.resident_bytes(),
                    "resident": {k: int(v) for k, v in cp.weight_bytes.items()},
                    "act_peak_bytes": int(cp.act_peak), "load_seconds": load_seconds},
        "layers": layers,
        "samples": n, "program_runs": run.program_runs,
        "cycles": total, "core_cycles": int(sum(run.core_cycles)),
        "macs": int(sum(run.macs)),
        "gemm_utilization": (sum(x["macs"] for x in gemm) / peak) if peak else None,
        "cycles_per_inference": per_inf,
        "inferences_per_second_device": (info.clock_hz / per_inf
                                         if per_inf and info.clock_hz else None),
        "wall_seconds": run.seconds,
        "inferences_per_second_wall": n / run.seconds if run.seconds else None,
        "wire_sent": st.wire_sent, "wire_received": st.wire_received,
        "payload_sent": st.payload_sent, "payload_received": st.payload_received,
        "requests": st.requests, "retries": st.retries,
        "link_bytes_per_inference": wire / n if n else 0.0,
        "input_bytes_per_inference": in_bytes, "output_bytes_per_inference": out_bytes,
        **_link_figures(cp, run, wire, n),
    }


#: bytes per second of the board's UART at 3 Mbaud, 8N1 (10 bits per byte)
UART_BYTES_PER_S = 3_000_000 / 10


def _write_wire(nbytes: int) -> int:
    """Wire bytes (both directions) of WRITEs carrying ``nbytes`` in MAX_DATA chunks."""
    from . import protocol as P
    full, rest = divmod(nbytes, P.MAX_DATA)
    chunks = full + (1 if rest else 0)
    return nbytes + chunks * (2 * P.FRAME_OVERHEAD + P.WRITE_HEADER + 1)


def _link_figures(cp, run, wire: int, n: int) -> dict:
    """Link bytes per inference with resident weights, without the per-layer counter reads
    (a run that only wants outputs skips them), and if the weights were sent with every
    program run instead; and the rates the board's 3 Mbaud UART allows for each."""
    from . import protocol as P
    if not n:
        return {}
    lcnt = run.program_runs * (2 * P.FRAME_OVERHEAD + P.READ_PAYLOAD + 1
                               + len(cp.layers) * P.LCNT_RECORD)
    resident_wire = sum(_write_wire(len(p.data)) for p in cp.placements)
    lean = (wire - lcnt) / n
    per_call = lean + resident_wire * run.program_runs / n
    return {"resident_wire_bytes": resident_wire,
            "link_bytes_per_inference_no_counters": lean,
            "link_bytes_per_inference_weights_per_call": per_call,
            "link_bound_inferences_per_s_3mbaud": UART_BYTES_PER_S / lean,
            "link_bound_inferences_per_s_3mbaud_weights_per_call": UART_BYTES_PER_S / per_call}


def _num(v, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}{unit}" if abs(v) < 1e4 else f"{v:,.0f}{unit}"


def report_lines(f: dict, *, simulated: bool = False) -> list:
    """The counters report of :func:`figures` as text lines."""
    dev, prog = f["device"], f["program"]
    mhz = dev["clock_hz"] / 1e6
    res = prog["resident"]
    lines = [
        f"device            {dev['rows']}x{dev['cols']} {dev['pe']} array, {mhz:g} MHz "
        f"({'simulated clock' if simulated else 'as built'}), config {dev['config_hash']} "
        f"via {dev['transport']}",
        f"program           {prog['device_layers']} device layers, batch {prog['batch']} "
        f"sample(s) per program run, {f['program_runs']} program run(s) for {f['samples']} "
        f"sample(s)" + (" (the last one padded)" if f["samples"] % prog["batch"] else ""),
        f"resident          {prog['resident_bytes']:,} B loaded once in "
        f"{1e3 * prog['load_seconds']:.1f} ms (W {res.get('W', 0):,} B, "
        + (f"DSPW {res['DSPW']:,} B, " if res.get("DSPW") else "") +
        f"CHAN {res.get('CHAN', 0):,} B, GROUP {res.get('GROUP', 0):,} B, program "
        f"{res.get('PROG', 0):,} B); ACT peak {prog['act_peak_bytes']:,} B",
        f"device counters over the {f['program_runs']} program run(s) (utilization = MACs / "
        f"(PEs x lanes x core cycles)):",
    ]
    rows = [("layer", "type", "kind", "weights", "cycles", "core cycles", "MACs", "util.")]
    for x in f["layers"]:
        util = "-" if x["utilization"] is None else f"{100 * x['utilization']:.1f} %"
        rows.append((x["name"], x["type"], x["kind"], x["weights"] or "-", f"{x['cycles']:,}",
                     f"{x['core_cycles']:,}", f"{x['macs']:,}", util))
    gu = f["gemm_utilization"]
    rows.append(("total", "", "", "", f"{f['cycles']:,}", f"{f['core_cycles']:,}",
                 f"{f['macs']:,}", "-" if gu is None else f"{100 * gu:.1f} %"))
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    for j, r in enumerate(rows):
        cells = [c.ljust(w) if k < 4 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
        if j == 0 or j == len(rows) - 2:
            lines.append("  " + "-" * len("  ".join(cells)))
    n = f["samples"]
    ips = f["inferences_per_second_device"]
    lines.append(f"per inference     {_num(f['cycles_per_inference'])} device cycles"
                 + (f" = {1e6 * f['cycles_per_inference'] / dev['clock_hz']:,.2f} us at "
                    f"{mhz:g} MHz -> {_num(ips)} inferences/s (device clock)"
                    if dev["clock_hz"] else ""))
    ws = f["wall_seconds"]
    lines.append(f"wall time         {ws:.3f} s for {n} sample(s) -> "
                 f"{_num(f['inferences_per_second_wall'])} inferences/s (wall"
                 + (", simulated device)" if simulated else ")"))
    lines.append(f"link              {_num(f['link_bytes_per_inference'])} B per inference on "
                 f"the wire, both directions ({f['wire_sent']:,} B sent, "
                 f"{f['wire_received']:,} B received in {f['requests']} requests, "
                 f"{f['retries']} retries); data {f['input_bytes_per_inference']} B in + "
                 f"{f['output_bytes_per_inference']} B out per inference")
    if "link_bytes_per_inference_no_counters" in f:
        lines.append(
            f"link at 3 Mbaud  {_num(f['link_bytes_per_inference_no_counters'])} B per "
            f"inference without the counter reads -> {_num(f['link_bound_inferences_per_s_3mbaud'])}"
            f" inferences/s link-bound; sending the weights ({f['resident_wire_bytes']:,} B on "
            f"the wire) with every program run instead: "
            f"{_num(f['link_bytes_per_inference_weights_per_call'])} B -> "
            f"{_num(f['link_bound_inferences_per_s_3mbaud_weights_per_call'])} inferences/s")
    return lines


# -- helpers -----------------------------------------------------------------------------------

def _need_extra(*modules) -> None:
    from .onnx_import import ONNX_EXTRA_MESSAGE
    import importlib
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise CliError(f"{ONNX_EXTRA_MESSAGE} (cannot import {m})") from None


def _simulated(acc) -> bool:
    return type(acc.transport).__name__ == "SimTransport"


def _load(acc, model, batch):
    from .program import ModelTooLarge
    t0 = time.perf_counter()
    try:
        lm = acc.load_model(model, batch=batch)
    except ModelTooLarge as e:
        raise CliError(f"model {model.name!r} does not fit the device: {_one_line(e)}") from None
    return lm, time.perf_counter() - t0


def _write_json(path, data) -> None:
    try:
        with open(path, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
    except OSError as e:
        raise CliError(f"cannot write --json {path}: {e.strerror or e}") from None


def _shape(t) -> str:
    return str(tuple(int(d) for d in t))


# -- run ---------------------------------------------------------------------------------------

def _read_input(path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CliError(f"--input {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CliError(f"--input {path}: not a NumPy .npy array ({_one_line(e)})") from None
    if not isinstance(x, np.ndarray):
        raise CliError(f"--input {path}: expected one array (.npy), not an archive")
    if x.dtype.kind not in "fiub":
        raise CliError(f"--input {path}: dtype {x.dtype} is not a real number type")
    x = x.astype(np.float32)            # what onnxruntime would be given
    if not np.isfinite(x).all():
        raise CliError(f"--input {path}: holds NaN or infinite values")
    return x


def _onnx_input(proto):
    """(name, dims) of the graph's one input; dims with None for symbolic ones, or None when
    the rank is unknown (or the graph has not exactly one input: the importer says why)."""
    g = proto.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        return None, None
    tt = inputs[0].type.tensor_type
    if not tt.HasField("shape"):
        return inputs[0].name, None
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                            for d in tt.shape.dim]


def _import(path, x, narrow: bool):
    _need_extra("onnx")
    import onnx
    from .onnx_import import UnsupportedModel, load_onnx
    try:
        proto = onnx.load(path)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except Exception as e:                           # DecodeError and friends
        raise CliError(f"{path}: not an ONNX model ({_one_line(e)})") from None
    name, dims = _onnx_input(proto)
    sample = tuple(x.shape[1:])
    want = dims[1:] if dims else None
    takes = ("" if want is None else f"; the model's input {name!r} takes (samples, "
             f"{', '.join(str(d or '?') for d in want)}) float values in ONNX layout")
    if x.ndim < 2 or x.shape[0] < 1:
        raise CliError(f"--input has shape {_shape(x.shape)}, not one row per sample{takes}")
    if want is not None and (len(want) != len(sample) or any(
            d is not None and d != s for d, s in zip(want, sample))):
        raise CliError(f"--input has shape {_shape(x.shape)}{takes}, one row per sample")
    # symbolic (or unknown) sample dimensions: the input file says what they are
    input_shape = sample if want is None or None in want else None
    try:
        return load_onnx(proto, input_shape=input_shape, narrow_weights=narrow)
    except UnsupportedModel as e:
        raise CliError(f"cannot run {path}: {_one_line(e)}") from None


def cmd_run(args, out, open_accelerator) -> int:
    x = _read_input(args.input)
    model = _import(args.model, x, args.narrow_weights)
    try:
        xq = model.quantize_input(model.input_from_onnx(x))
    except ValueError as e:
        raise CliError(f"--input has shape {_shape(x.shape)}, which does not fit the model "
                       f"(one sample {_shape(model.input_shape)} in our layout): "
                       f"{_one_line(e)}") from None
    acc = open_accelerator(args)
    bar = Progress(model.name, enabled=not args.quiet)
    sparse = None
    try:
        if args.sparse:
            from .program import use_sparse_engine
            model, sparse = use_sparse_engine(model, acc.info)
        lm, load_s = _load(acc, model, args.batch)
        try:
            y_q = lm.run(xq, progress=bar)
        finally:
            bar.close()
        f = figures(model, lm, acc.info, transport=repr(acc.transport), load_seconds=load_s)
        simulated = _simulated(acc)
    finally:
        acc.close()
    want = model.golden(xq)
    ok = y_q.shape == want.shape and np.array_equal(y_q, want)
    y = model.output_to_onnx(model.dequantize_output(y_q)).astype(np.float32)
    if args.output:
        try:
            np.save(args.output, y)
        except OSError as e:
            raise CliError(f"cannot write --output {args.output}: {e.strerror or e}") from None
    print(f"model             {args.model}", file=out)
    print(model.summary(), file=out)
    if sparse is not None:
        print("sparse layers     " + (", ".join(f"{k} {v}" for k, v in sparse.items()) or
                                      ("none: the device has no sparse DSP engine"
                                       if not acc.info.dsp_stages else
                                       "none: no layer's weights fit a pattern of the "
                                       "device's DSP engine")), file=out)
    for line in report_lines(f, simulated=simulated):
        print(line, file=out)
    bad = int(np.any((y_q != want).reshape(len(y_q), -1), axis=1).sum()) if not ok else 0
    print("result            "
          + (f"bit-exact vs the golden model ({len(y_q)} samples)" if ok else
             f"MISMATCH vs the golden model on {bad} of {len(y_q)} samples"), file=out)
    if args.output:
        print(f"output            {args.output}: {_shape(y.shape)} float32 (dequantized, ONNX "
              f"layout)", file=out)
    if args.json:
        _write_json(args.json, {"command": "run", "model_path": args.model,
                                "input_path": args.input, "output_path": args.output,
                                "narrow_weights": bool(args.narrow_weights),
                                "sparse_layers": sparse,
                                "bit_exact": bool(ok), "mismatched_samples": bad, **f})
    return 0 if ok else 1


# -- demo --------------------------------------------------------------------------------------

def narrow_qdq_weights(qdq, fmt):
    """A copy of the QDQ model ``qdq`` (onnx.ModelProto with int8 per-channel weights) whose
    MatMul / Gemm / Conv weights are re-quantized to ``fmt`` (INT2, TERNARY, INT4 or INT8)
    with :func:`sw.quant.quantize_weights` (per output channel, symmetric), stored as int8
    codes with the new scales; the int32 bias of a Gemm / Conv follows the new scales."""
    import onnx
    from onnx import numpy_helper
    from . import quant
    fmt = WeightFormat[fmt] if isinstance(fmt, str) else WeightFormat(fmt)
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: node for node in g.node for o in node.output}

    def arr(name):
        return numpy_helper.to_array(inits[name])

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    for node in g.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            raise ValueError(f"{node.op_type} {node.name!r}: weights are not a "
                             f"DequantizeLinear of an initializer")
        q = arr(dq.input[0])
        s = arr(dq.input[1]).astype(np.float64)
        if q.dtype != np.int8:
            raise ValueError(f"{node.op_type} {node.name!r}: weights are {q.dtype}, need int8")
        zname = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        z = arr(zname).astype(np.int64) if zname else np.zeros_like(s, dtype=np.int64)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        n = q.shape[axis]
        if s.shape != (n,):
            raise ValueError(f"{node.op_type} {node.name!r}: weights are not quantized per "
                             f"output channel (scale shape {s.shape})")
        shp = [1] * q.ndim
        shp[axis] = n
        w = s.reshape(shp) * (q.astype(np.int64) - z.reshape(shp))
        moved = np.moveaxis(w, axis, -1)
        wq = quant.quantize_weights(moved.reshape(-1, n), fmt=fmt, symmetric=True)
        scale = np.where(wq.scale > 0, wq.scale, s)        # an all-zero channel keeps its scale
        codes = np.moveaxis(wq.q.reshape(moved.shape), -1, axis).astype(np.int8)
        new_s = scale.astype(np.float32)
        put(dq.input[0], codes)
        put(dq.input[1], new_s)
        if zname:
            put(zname, np.zeros(n, dtype=np.int8))
        if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2]:
            bdq = producer.get(node.input[2])
            if bdq is not None and bdq.op_type == "DequantizeLinear" \
                    and bdq.input[0] in inits and arr(bdq.input[0]).dtype == np.int32:
                bq = arr(bdq.input[0]).astype(np.float64)
                bs = arr(bdq.input[1]).astype(np.float64)
                x_scale = bs / s                              # the input scale, per channel
                nbs = (x_scale * new_s.astype(np.float64)).astype(np.float32)
                nbq = np.rint(bs * bq / nbs.astype(np.float64))
                put(bdq.input[0], np.clip(nbq, -2**31, 2**31 - 1).astype(np.int32))
                put(bdq.input[1], nbs)
    return m


def _quantize(float_model, calib, fmt: str):
    """The QDQ model for ``fmt`` (see the module docstring)."""
    from . import demo
    if fmt == "INT4":
        return demo.quantize_onnx(float_model, calib, per_channel=True, weight_type="int4")
    qdq = demo.quantize_onnx(float_model, calib, per_channel=True)
    if fmt in ("INT2", "TERNARY"):
        qdq = narrow_qdq_weights(qdq, fmt)
    return qdq


def _quiet_ort_logs():
    """onnxruntime's quantizer logs a pre-processing suggestion through the root logger."""
    import logging
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def cmd_demo(args, out, open_accelerator) -> int:
    _need_extra("onnx", "onnxruntime", "sklearn")
    from . import demo
    from .onnx_import import UnsupportedModel, load_onnx
    _quiet_ort_logs()
    nets = ["mlp", "cnn"] if args.model == "both" else [args.model]
    fmts = list(dict.fromkeys(args.fmt))
    xtr, xte, ytr, yte = demo.digits_data(args.seed)
    if args.samples is not None:
        xte, yte = xte[:args.samples], yte[:args.samples]
    print(f"digits: {len(xtr)} training samples, {len(xte)} test samples (seed {args.seed}); "
          f"weights {', '.join(fmts)}", file=out)
    ep = {} if args.epochs is None else {"epochs": args.epochs}
    rows, entries, failed = [], [], False
    acc = open_accelerator(args)
    try:
        simulated = _simulated(acc)
        for net in nets:
            t0 = time.perf_counter()
            if net == "mlp":
                params = demo.train_mlp(xtr, ytr, seed=args.seed, **ep)
                float_model = demo.mlp_to_onnx(params, opset=21)
                x_in, calib = xte.astype(np.float32), xtr[:300]
            else:
                params = demo.train_cnn(xtr, ytr, seed=args.seed, **ep)
                float_model = demo.cnn_to_onnx(params, opset=21)
                x_in, calib = demo.digits_images(xte), demo.digits_images(xtr[:300])
            train_s = time.perf_counter() - t0
            float_pred = demo.onnxruntime_predict(float_model, x_in).argmax(axis=1)
            float_acc = float((float_pred == yte).mean())
            for fmt in fmts:
                qdq = _quantize(float_model, calib, fmt)
                try:
                    model = load_onnx(qdq, narrow_weights=fmt in ("INT2", "TERNARY"))
                except UnsupportedModel as e:
                    raise CliError(f"digits {net} {fmt}: {_one_line(e)}") from None
                ort = demo.onnxruntime_predict(qdq, x_in)
                xq = model.quantize_input(model.input_from_onnx(x_in))
                lm, load_s = _load(acc, model, args.batch)
                bar = Progress(f"{net} {fmt}", enabled=not args.quiet)
                try:
                    y_q = lm.run(xq, progress=bar)
                finally:
                    bar.close()
                f = figures(model, lm, acc.info, transport=repr(acc.transport),
                            load_seconds=load_s)
                want = model.golden(xq)
                exact = bool(np.array_equal(y_q, want))
                mism = int(np.any((y_q != want).reshape(len(y_q), -1), axis=1).sum())
                failed |= not exact
                dev = model.output_to_onnx(model.dequantize_output(y_q))
                dev_pred = dev.argmax(axis=1)
                ort_pred = ort.argmax(axis=1)
                ort_q = np.rint(ort / model.out_scale) + model.out_zero
                lsb = int(np.abs(ort_q - y_q.astype(np.int64)).max())
                entry = {"net": net, "fmt": fmt,
                         "formats": [x["weights"] for x in f["model"]["layers"]
                                     if x["weights"]],
                         "train_seconds": train_s,
                         "accuracy_float": float_acc,
                         "accuracy_onnxruntime": float((ort_pred == yte).mean()),
                         "accuracy_device": float((dev_pred == yte).mean()),
                         "top1_agreement_device_onnxruntime": float((dev_pred == ort_pred)
                                                                    .mean()),
                         "max_lsb_device_onnxruntime": lsb,
                         "bit_exact": exact, "mismatched_samples": mism, **f}
                entries.append(entry)
                rows.append(entry)
                print("", file=out)
                print(f"== digits {net.upper()}, {fmt} weights "
                      f"(trained in {train_s:.1f} s) ==", file=out)
                print(model.summary(), file=out)
                for line in report_lines(f, simulated=simulated):
                    print(line, file=out)
                print("result            "
                      + ("bit-exact vs the golden model" if exact else
                         f"MISMATCH vs the golden model on {mism} of {len(y_q)} samples")
                      + f"; device vs onnxruntime: top-1 agreement "
                        f"{_pct(entry['top1_agreement_device_onnxruntime'])}, outputs within "
                        f"{lsb} LSB", file=out)
    finally:
        acc.close()
    print("", file=out)
    print(f"accuracy on {len(yte)} digits test samples (onnxruntime: QDQ graph run operator "
          f"by operator; device: {rows[0]['device']['rows']}x{rows[0]['device']['cols']} "
          f"{rows[0]['device']['pe']}"
          + (", simulated" if simulated else "") + "):", file=out)
    table = [("model", "weights", "float", "onnxruntime", "device", "top-1 device=ort",
              "max LSB", "bit-exact", "cycles/inf.", "inf./s (clock)")]
    for e in rows:
        table.append((e["net"], e["fmt"], _pct(e["accuracy_float"]),
                      _pct(e["accuracy_onnxruntime"]), _pct(e["accuracy_device"]),
                      _pct(e["top1_agreement_device_onnxruntime"]),
                      str(e["max_lsb_device_onnxruntime"]),
                      "yes" if e["bit_exact"] else f"NO ({e['mismatched_samples']})",
                      _num(e["cycles_per_inference"]), _num(e["inferences_per_second_device"])))
    widths = [max(len(r[j]) for r in table) for j in range(len(table[0]))]
    for j, r in enumerate(table):
        cells = [c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if j == 0:
            print("  " + "-" * len("  ".join(cells)), file=out)
    if args.json:
        _write_json(args.json, {"command": "demo", "dataset": "digits", "seed": args.seed,
                                "samples": len(yte), "train_samples": len(xtr),
                                "epochs": args.epochs, "formats": fmts, "runs": entries,
                                "bit_exact": not failed})
    return 1 if failed else 0
