"""``python -m sw``: talk to the mpGEMM accelerator (board or Verilator model).

Commands::

    python -m sw info --backend sim                     # DeviceInfo of the simulated SoC
    python -m sw info --backend serial --port /dev/ttyUSB0
    python -m sw gemm --backend sim --m 64 --k 128 --n 64 [--requant] [--seed 0]
    python -m sw gemm --fmt INT4 --group 32 --requant    # a quantized layer's weights
    python -m sw run model.onnx --input x.npy [--output y.npy] [--batch N] [--narrow-weights]
    python -m sw demo digits [--model mlp|cnn|both] [--fmt INT8 INT4 INT2 TERNARY] [--samples N]

``gemm`` runs a random GEMM, checks it bit-exactly against ``sw.numerics.mixgemm`` (exit
status 1 on a mismatch) and prints wall time, device counters, array utilization and wire
efficiency (payload bytes / wire bytes, both directions). With the defaults (``--fmt INT8``,
no ``--group``) A and W are random INT8 matrices and ``--requant`` a scalar requantization
(:meth:`sw.driver.Accelerator.gemm`, which splits a K beyond the device's ``max_k``). With
another ``--fmt`` or a ``--group``, random Gaussian float weights and inputs are quantized as
a linear layer (``sw.quant.quantize_linear``: weights of that format, per-group tables,
per-channel requantization with folded bias) and run through
:meth:`sw.driver.Accelerator.mixgemm`; without ``--requant`` the raw sums are compared.

``run`` takes a QDQ ONNX model (onnxruntime ``quantize_static``; what
:func:`sw.onnx_import.load_onnx` supports) and a ``.npy`` of float inputs, one row per sample
in the layout the ONNX model takes (``(n, 1, 8, 8)`` NCHW images, ``(n, 64)`` vectors). It
quantizes the inputs with the model's input quantization, loads weights, tables and the
layer program once (:meth:`sw.driver.Accelerator.load_model`), runs every sample in batches
(``--batch``, default the most that fit on chip), checks the int8 outputs bit-exactly against
:meth:`sw.model.Model.golden` (exit status 1 on a mismatch) and saves ``--output``: float32,
dequantized, in ONNX layout (what onnxruntime returns). ``--narrow-weights`` picks each
layer's weight format from its codes instead of the declared element type.

``demo digits`` trains the digits MLP and / or CNN (:mod:`sw.demo`, NumPy, seconds), exports
them to ONNX, quantizes them with onnxruntime (static, QDQ, per-channel weights), imports,
runs the test split on the device and prints float / onnxruntime (operator-by-operator
reference) / device accuracy side by side with the top-1 agreement of device and
onnxruntime; exit status 1 if the device differs from the golden model on any sample.
``--fmt`` INT4 quantizes the weights with onnxruntime's int4 type; INT2 and TERNARY (no
onnxruntime type) re-quantize the int8 QDQ weights per channel with :mod:`sw.quant` and store
the codes as int8 (:func:`sw.model_cli.narrow_qdq_weights`; the importer then picks the
format from the codes); several formats may be given.

Both print the model summary, the bytes loaded once, per device layer its cycles, core
cycles, MACs and utilization (MACs / (PEs x lanes of its weight format x core cycles); ``-``
for max pooling), device cycles per inference and inferences/s at the device clock (the
simulated clock on the sim backend), wall time and inferences/s, and link bytes per
inference (both directions); ``--json PATH`` writes every figure. A progress bar goes to stderr when it is a
terminal (``--quiet``: none). An unsupported or too large model, a bad input shape or a
missing ``[onnx]`` extra is one ``error:`` line and exit status 2. onnx, onnxruntime and
scikit-learn are imported only by these two commands.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import protocol as P
from .numerics import (GROUP_SIZES, WEIGHT_LANES, OutMode, Requant, WeightFormat, mixgemm,
                       to_dyadic)

SIM_DEVICES = ("12F", "25F", "45F", "85F")


def _parse_int(text: str) -> int:
    return int(text, 0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sw", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--backend", choices=("sim", "serial"), default="sim",
                       help="sim: Verilator model of the SoC (built on first use); "
                            "serial: the board (default: sim)")
        p.add_argument("--port", default="/dev/ttyUSB0", help="serial port (serial backend)")
        p.add_argument("--baud", type=int, default=3_000_000,
                       help="baud rate, must match the bitstream (serial backend)")
        p.add_argument("--device", choices=SIM_DEVICES, default=None,
                       help="ULX3S size whose SoC is simulated (sim backend)")
        p.add_argument("--pe", choices=("mixpe", "int8-dsp"), default=None,
                       help="processing element of the simulated SoC (sim backend; default: "
                            "the device's, see hw/sizes.py)")
        p.add_argument("--dsp", choices=("none", "dsp4", "dsp8", "dsp8p", "dsp4s", "dsp8s"),
                       default=None,
                       help="sparse DSP engine of the simulated SoC (sim backend; default "
                            "none, see hw/sizes.py DSP_ENGINES)")
        p.add_argument("--timeout", type=float, default=None,
                       help="timeout in seconds for the first IDENTIFY (default: the transport's); "
                            "later timeouts follow from what the device reports")
        p.add_argument("--expect-rows", type=int, default=None,
                       help="refuse a device whose array does not have this many rows")
        p.add_argument("--expect-cols", type=int, default=None)
        p.add_argument("--expect-hash", type=_parse_int, default=None,
                       help="refuse a device with another config hash (e.g. 0x1234abcd)")

    common(sub.add_parser("info", help="identify the device and print its configuration"))
    g = sub.add_parser("gemm", help="run a random GEMM and check it bit-exactly")
    common(g)
    g.add_argument("--m", type=int, default=64, help="rows of A (default 64)")
    g.add_argument("--k", type=int, default=64, help="columns of A / rows of W (default 64)")
    g.add_argument("--n", type=int, default=64, help="columns of W (default 64)")
    g.add_argument("--requant", action="store_true",
                   help="INT8 output (requantized) instead of raw int32 accumulators")
    g.add_argument("--fmt", type=str.upper, choices=[f.name for f in WeightFormat],
                   default="INT8", help="weight format (default INT8); other than INT8 the "
                   "weights come from quantizing a random float layer in that format")
    g.add_argument("--group", type=int, choices=(0,) + GROUP_SIZES, default=0,
                   help="group size along K for per-group dequantization (default 0: none)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    from .model_cli import add_parsers
    add_parsers(sub, common)
    return ap


def open_transport(args):
    """The transport the arguments ask for (SimTransport imported lazily)."""
    if args.backend == "serial":
        from .transport import SerialTransport
        kw = {} if args.timeout is None else {"timeout": args.timeout}
        return SerialTransport(args.port, baud=args.baud, **kw)
    try:
        from .transport import SimTransport
    except ImportError as e:
        raise SystemExit(f"error: the sim backend is not available in this checkout "
                         f"(sw.transport.SimTransport: {e})")
    kw = {}
    if args.device is not None:
        kw["device"] = args.device
    if args.timeout is not None:
        kw["timeout"] = args.timeout
    if args.pe is not None:
        kw["pe"] = args.pe
    if args.dsp is not None:
        kw["dsp"] = args.dsp
    return SimTransport(**kw)


def open_accelerator(args):
    from .driver import Accelerator
    expect = {k: v for k, v in (("rows", args.expect_rows), ("cols", args.expect_cols),
                                ("config_hash", args.expect_hash)) if v is not None}
    return Accelerator(open_transport(args), expect=expect or None, timeout=args.timeout)


def _dsp_summary(info: P.DeviceInfo) -> str:
    """One line on the sparse DSP engine of IDENTIFY (protocol 5)."""
    from .numerics import NMPattern
    if not info.dsp_stages:
        return "none"
    pats = ", ".join(f"{p.name} ({p.n}:{p.m})" for p in NMPattern if info.supports_pattern(p))
    shared = (f", one index per {info.dsp_share} chains ({info.dsp_index_group} columns)"
              if info.dsp_share > 1 else "")
    return (f"{info.dsp_chains} chains x {info.dsp_stages} stages"
            f"{' (packed: 4-bit weights, 2 columns per chain)' if info.dsp_packed else ''}"
            f"{shared}, "
            f"patterns {pats or 'none'}, DSPW {info.dsp_bytes} bytes "
            f"({info.dsp_depth} records per chain)")


def format_info(info: P.DeviceInfo) -> str:
    from .driver import _format_names, _group_names
    modes = ", ".join(m.name for m in OutMode if info.supports(m)) or "none"
    return "\n".join([
        f"protocol version  {info.version}",
        f"config hash       0x{info.config_hash:08x}",
        f"array             {info.rows} x {info.cols} PEs",
        f"PE kind           {getattr(info.pe, 'name', info.pe)}",
        f"weight formats    {_format_names(info.formats)}",
        f"group sizes       {_group_names(info.group_sizes)}",
        f"A buffer          {info.a_bytes} bytes",
        f"W buffer          {info.w_bytes} bytes",
        f"OUT buffer        {info.out_bytes} bytes ({info.out_words} words per row bank)",
        f"CHAN table        {info.chan_bytes} bytes ({info.chan_bytes // 8} channels)",
        f"GROUP table       {info.group_bytes} bytes ({info.group_bytes // 4} entries)",
        f"DSP engine        {_dsp_summary(info)}",
        f"max K             {info.max_k}",
        f"output modes      {modes}",
        f"max data/frame    {info.max_data} bytes",
        f"clock             {info.clock_hz / 1e6:g} MHz (as built)",
        f"tile period       {info.tile_period} cycles (between group ends)",
        f"request timeout   {info.timeout_cycles} cycles (inter-byte)",
        f"watchdog          {info.watchdog_cycles} cycles",
    ])


def random_requant(k: int, rng) -> Requant:
    """Scale a K-term INT8 dot product (std ~ 5.5e3 * sqrt(K)) so 3 sigma maps to 127."""
    mult, shift = to_dyadic(127.0 / (3.0 * 5.5e3 * max(1.0, k) ** 0.5))
    return Requant(mult, shift, int(rng.integers(-10, 11)), False)


def cmd_info(args, out) -> int:
    with open_accelerator(args) as acc:
        print(format_info(acc.info), file=out)
        print(f"transport         {acc.transport!r}", file=out)
    return 0


def quantized_layer(args, rng):
    """Random Gaussian weights and inputs quantized as a linear layer in ``args.fmt`` with
    groups of ``args.group``: (int8 activations, the layer)."""
    from . import quant
    x = rng.standard_normal((args.m, args.k))
    w = rng.standard_normal((args.k, args.n)) / np.sqrt(args.k)
    bias = 0.1 * rng.standard_normal(args.n)
    x_scale, x_zero = quant.calibrate_act(x)
    y_scale, y_zero = quant.calibrate_act(x @ w + bias)
    layer = quant.quantize_linear(w, bias, fmt=WeightFormat[args.fmt], group=args.group or None,
                                  x_scale=x_scale, x_zero=x_zero, y_scale=y_scale,
                                  y_zero=y_zero)
    return quant.quantize_act(x, x_scale, x_zero), layer


def cmd_gemm(args, out) -> int:
    for name in ("m", "k", "n"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, not {getattr(args, name)}")
    rng = np.random.default_rng(args.seed)
    fmt = WeightFormat[args.fmt]
    layered = fmt != WeightFormat.INT8 or args.group != 0
    if layered:
        a, layer = quantized_layer(args, rng)
        w, gq = layer.q, layer.group
        rq = layer.requant if args.requant else None
        what = (f"{fmt.name} weights, " + (f"groups of {args.group}" if args.group else
                                           "per-channel scales")
                + (", INT8 (per-channel requant)" if rq else ", RAW32"))
    else:
        a = rng.integers(-128, 128, size=(args.m, args.k), dtype=np.int8)
        w = rng.integers(-128, 128, size=(args.k, args.n), dtype=np.int8)
        gq = None
        rq = random_requant(args.k, rng) if args.requant else None
        what = "INT8 (requant " + repr(rq) + ")" if rq else "RAW32"
    want = mixgemm(a, w, fmt=fmt, group=gq, requant=rq)
    acc = open_accelerator(args)
    try:
        info = acc.info
        plan = acc.plan(args.m, args.k, args.n, rq, fmt=fmt, group=args.group,
                        split_k=not layered)
        t0 = time.perf_counter()
        if layered:
            got = acc.mixgemm(a, w, fmt=fmt, group=gq, requant=rq)
        else:
            got = acc.gemm(a, w, rq)
        wall = time.perf_counter() - t0
        st = acc.last
    finally:
        acc.close()
    ok = got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    macs = args.m * args.k * args.n
    print(f"GEMM {args.m} x {args.k} x {args.n}  {what}  seed {args.seed}", file=out)
    print(f"device            {info.rows}x{info.cols} array, config 0x{info.config_hash:08x} "
          f"via {acc.transport!r}", file=out)
    print(f"tiling            {plan.k_chunks} K chunk(s) of {plan.kc}, {plan.m_blocks} M "
          f"block(s) of {plan.mb}, {plan.n_blocks} N block(s) of {plan.nb}: {plan.runs} RUN(s), "
          f"device mode {plan.mode.name}, "
          f"{'A' if plan.m_outer else 'W'} blocks resident"
          + (", CHAN table" if plan.chan else "")
          + (f", GROUP table (groups of {plan.group})" if plan.group else "")
          + (", requantized on the host" if plan.host_requant else ""), file=out)
    print(f"result            {'bit-exact vs sw.numerics.mixgemm' if ok else 'MISMATCH'}",
          file=out)
    print(f"wall time         {wall * 1e3:.1f} ms  ({macs / wall / 1e6:.3f} MMAC/s end to end)",
          file=out)
    print(f"device counters   cycles {st.cycles}, busy {st.busy}, stall {st.stall} "
          f"(dequantization {st.dq_stall}), MACs {st.macs}", file=out)
    if st.cycles:
        lanes = WEIGHT_LANES[fmt]
        print(f"utilization       {100 * st.utilization(info.rows, info.cols, lanes):.1f} % of "
              f"{info.rows * info.cols} PEs x {lanes} MAC(s) per cycle ({fmt.name}) over the "
              f"runs' cycles (busy {100 * st.busy / st.cycles:.1f} % of cycles)", file=out)
    print(f"wire              sent {st.wire_sent} B, received {st.wire_received} B in "
          f"{st.requests} requests ({st.retries} retries); payload {st.payload_bytes} B; "
          f"efficiency {100 * st.efficiency:.2f} %", file=out)
    from .numerics import pack_weights
    unique = a.nbytes + pack_weights(w, fmt).nbytes + want.nbytes
    print(f"offload           {unique} B of distinct operands + result / {st.wire_bytes} B on "
          f"the wire = {100 * unique / st.wire_bytes:.2f} % (operand re-sends from tiling "
          f"and tables count as overhead here)", file=out)
    if wall > 0:
        print(f"link throughput   {st.wire_bytes / wall / 1e3:.1f} kB/s wire, "
              f"{st.payload_bytes / wall / 1e3:.1f} kB/s payload", file=out)
    sim = getattr(acc.transport, "sim_stats", None)
    if sim:
        print(f"simulator         {sim['cycles']} cycles in {sim['seconds']:.2f} s "
              f"({sim['cycles_per_second'] / 1e6:.3f} Mcycles/s)", file=out)
    if not ok:
        bad = np.argwhere(got != want) if got.shape == want.shape else []
        print(f"first mismatches  {[tuple(map(int, i)) for i in bad[:5]]} "
              f"(dtype {got.dtype} vs {want.dtype}, shape {got.shape} vs {want.shape})",
              file=out)
        return 1
    return 0


def main(argv=None, out=None) -> int:
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(argv)
    from . import model_cli
    from .driver import DeviceMismatch, DeviceTimeout
    from .transport import TransportError
    commands = {"info": cmd_info, "gemm": cmd_gemm,
                "run": lambda a, o: model_cli.cmd_run(a, o, open_accelerator),
                "demo": lambda a, o: model_cli.cmd_demo(a, o, open_accelerator)}
    try:
        return commands[args.command](args, out)
    except model_cli.CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DeviceMismatch, DeviceTimeout, TransportError, P.DeviceError, P.ProtocolError,
            ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
