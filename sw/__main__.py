"""``python -m sw``: talk to the mpGEMM accelerator (board or Verilator model).

Commands::

    python -m sw info --backend sim                     # DeviceInfo of the simulated SoC
    python -m sw info --backend serial --port /dev/ttyUSB0
    python -m sw gemm --backend sim --m 64 --k 128 --n 64 [--requant] [--seed 0]

``gemm`` runs a random INT8 GEMM, checks it bit-exactly against ``sw.numerics.mpgemm`` (exit
status 1 on a mismatch) and prints wall time, device counters, array utilization and wire
efficiency (payload bytes / wire bytes, both directions).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import protocol as P
from .numerics import OutMode, Requant, mpgemm, to_dyadic

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
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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
    return SimTransport(**kw)


def open_accelerator(args):
    from .driver import Accelerator
    expect = {k: v for k, v in (("rows", args.expect_rows), ("cols", args.expect_cols),
                                ("config_hash", args.expect_hash)) if v is not None}
    return Accelerator(open_transport(args), expect=expect or None, timeout=args.timeout)


def format_info(info: P.DeviceInfo) -> str:
    modes = ", ".join(m.name for m in OutMode if info.supports(m)) or "none"
    return "\n".join([
        f"protocol version  {info.version}",
        f"config hash       0x{info.config_hash:08x}",
        f"array             {info.rows} x {info.cols} PEs",
        f"A buffer          {info.a_bytes} bytes",
        f"W buffer          {info.w_bytes} bytes",
        f"OUT buffer        {info.out_bytes} bytes ({info.out_words} words)",
        f"max K             {info.max_k}",
        f"output modes      {modes}",
        f"max data/frame    {info.max_data} bytes",
        f"PE kind           {getattr(info.pe, 'name', info.pe)}",
        f"clock             {info.clock_hz / 1e6:g} MHz (as built)",
        f"tile period       {info.tile_period} cycles",
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


def cmd_gemm(args, out) -> int:
    for name in ("m", "k", "n"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, not {getattr(args, name)}")
    rng = np.random.default_rng(args.seed)
    a = rng.integers(-128, 128, size=(args.m, args.k), dtype=np.int8)
    w = rng.integers(-128, 128, size=(args.k, args.n), dtype=np.int8)
    rq = random_requant(args.k, rng) if args.requant else None
    want = mpgemm(a, w, rq)
    acc = open_accelerator(args)
    try:
        info = acc.info
        plan = acc.plan(args.m, args.k, args.n, rq)
        t0 = time.perf_counter()
        got = acc.gemm(a, w, rq)
        wall = time.perf_counter() - t0
        st = acc.last
    finally:
        acc.close()
    ok = got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    macs = args.m * args.k * args.n
    print(f"GEMM {args.m} x {args.k} x {args.n}  "
          f"{'INT8 (requant ' + repr(rq) + ')' if rq else 'RAW32'}  seed {args.seed}", file=out)
    print(f"device            {info.rows}x{info.cols} array, config 0x{info.config_hash:08x} "
          f"via {acc.transport!r}", file=out)
    print(f"tiling            {plan.k_chunks} K chunk(s) of {plan.kc}, {plan.m_blocks} M "
          f"block(s) of {plan.mb}, {plan.n_blocks} N block(s) of {plan.nb}: {plan.runs} RUN(s), "
          f"device mode {plan.mode.name}, "
          f"{'A' if plan.m_outer else 'W'} blocks resident"
          + (", requantized on the host" if plan.host_requant else ""), file=out)
    print(f"result            {'bit-exact vs sw.numerics.mpgemm' if ok else 'MISMATCH'}",
          file=out)
    print(f"wall time         {wall * 1e3:.1f} ms  ({macs / wall / 1e6:.3f} MMAC/s end to end)",
          file=out)
    print(f"device counters   cycles {st.cycles}, busy {st.busy}, stall {st.stall}, "
          f"MACs {st.macs}", file=out)
    if st.cycles:
        print(f"utilization       {100 * st.utilization(info.rows, info.cols):.1f} % of "
              f"{info.rows * info.cols} PEs over the runs' cycles "
              f"(busy {100 * st.busy / st.cycles:.1f} % of cycles)", file=out)
    print(f"wire              sent {st.wire_sent} B, received {st.wire_received} B in "
          f"{st.requests} requests ({st.retries} retries); payload {st.payload_bytes} B; "
          f"efficiency {100 * st.efficiency:.2f} %", file=out)
    unique = a.nbytes + w.nbytes + want.nbytes
    print(f"offload           {unique} B of distinct operands + result / {st.wire_bytes} B on "
          f"the wire = {100 * unique / st.wire_bytes:.2f} % (operand re-sends from tiling "
          f"count as overhead here)", file=out)
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
    from .driver import DeviceMismatch, DeviceTimeout
    from .transport import TransportError
    try:
        return {"info": cmd_info, "gemm": cmd_gemm}[args.command](args, out)
    except (DeviceMismatch, DeviceTimeout, TransportError, P.DeviceError, P.ProtocolError,
            ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
