"""Benchmarks (kept out of the pass/fail tests): ``python -m hw.bench utilization|roofline``.

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


def roofline(device="85F", freq_mhz=None, baud=3_000_000):
    """Bytes-per-MAC roofline of the UART link for GEMV and GEMM (written out, no simulation).

    Wire bytes come from ``sw.protocol.efficiency`` (the real frame format: 4 KiB chunks,
    headers, CRC, replies); a UART byte is 10 bits (8N1).
    """
    from fpga.ulx3s import DEVICES, DEFAULT_FREQ_MHZ
    from sw.protocol import efficiency
    size = DEVICES[device][1]
    freq_mhz = freq_mhz or DEFAULT_FREQ_MHZ[device]
    peak = size.rows * size.cols * freq_mhz * 1e6          # MAC/s
    link = baud / 10                                        # bytes/s on the wire
    cases = []
    for n in (16, 64, 256):
        cases.append((f"GEMM {n}x{n}x{n}", n * n * n, 2 * n * n, n * n, "A, W in, INT8 out"))
    for k, n in ((256, 256), (4096, 256)):
        cases.append((f"GEMV 1x{k}x{n}", k * n, k + k * n, n, "weights sent every call"))
        cases.append((f"GEMV 1x{k}x{n}, W resident", k * n, k, n, "only x in, y out"))
    lines = [f"ULX3S-{device}: {size.rows}x{size.cols} array at {freq_mhz:g} MHz = "
             f"{peak / 1e9:.2f} GMAC/s peak; UART {baud} baud 8N1 = {link / 1e3:.0f} kB/s raw.",
             "", "| case | MACs | payload bytes | wire bytes | MAC/wire byte | link-bound MAC/s "
             "| share of peak | note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, macs, wr, rd, note in cases:
        eff = efficiency(wr, rd, commands=3)
        wire = (wr + rd) / eff
        rate = min(peak, link * macs / wire)
        lines.append(f"| {name} | {macs} | {wr + rd} | {wire:.0f} | {macs / wire:.2f} | "
                     f"{rate / 1e6:.2f} M | {100 * rate / peak:.3f} % | {note} |")
    crossover = 3 * peak / (link * efficiency(2 * 65536, 65536))
    lines.append("")
    lines.append(f"A square GEMM becomes compute bound only for n > {crossover:,.0f} "
                 f"(intensity n/3 MAC per byte): on the board every shape that fits the buffers is "
                 f"link bound; the array's speed shows in the cycle counters, not in wall time. (A GEMV "
                 f"also keeps only one of the {size.rows} array rows busy on the device.)")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hw.bench")
    ap.add_argument("what", choices=["utilization", "roofline"])
    ap.add_argument("--device", default="85F")
    args = ap.parse_args(argv)
    if args.what == "utilization":
        utilization(args.device)
    else:
        roofline(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
