"""Benchmarks (kept out of the pass/fail tests): ``python -m hw.bench utilization``.

Runs the 85F-sized core in Verilator, reads its cycle/MAC counters and writes the table to
``docs/results_utilization.json`` and the markdown block printed at the end.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def utilization(device="85F", sizes=(16, 64, 256)):
    from fpga.ulx3s import DEVICES
    from hw.simulate import run_cocotb
    from hw.systolic.core import MpGemmCore
    size = DEVICES[device][1]
    core = MpGemmCore(**asdict(size))
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "util.json"
        t0 = time.monotonic()
        run_cocotb(core, name="core", test_module="bench_core",
                   params=dict(asdict(size), read_latency=core.READ_LATENCY, tile_period_min=core.TILE_PERIOD_MIN,
                               shapes=[[s, s, s] for s in sizes], out=str(out)))
        wall = time.monotonic() - t0
        rows = json.loads(out.read_text())
    result = {"device": device, "core": asdict(size), "wall_seconds": round(wall, 1), "runs": rows}
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "results_utilization.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"core {size.rows}x{size.cols} ({device} size), `python -m hw.bench utilization`\n")
    print("| M=K=N | cycles | feed cycles | stall cycles | MACs | utilization |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['M']} | {r['cycles']} | {r['busy']} | {r['stall']} | {r['macs']} | "
              f"{100 * r['utilization']:.1f}% |")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hw.bench")
    ap.add_argument("what", choices=["utilization"])
    ap.add_argument("--device", default="85F")
    args = ap.parse_args(argv)
    utilization(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
