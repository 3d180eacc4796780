"""Benchmarks (kept out of the pass/fail tests): ``python -m hw.bench utilization|roofline|faults``.

``utilization`` runs the 85F-sized core in Verilator, reads its cycle/MAC counters and writes
the table to ``docs/results_utilization.json`` and the markdown block printed at the end.
``faults`` runs GEMMs through a :class:`sw.transport.FaultInjector` (SimTransport, or the real
``SerialTransport`` through a pseudo-terminal to the same model) and counts exact / raised /
wrong results and the recovery time (:func:`fault_campaign`, also used by the tests).
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def utilization(device="85F", pe=None):
    """MACs per cycle, utilisation and dequantization stalls of ``device``'s core per weight
    format and group size, from the counters of the Verilator model (docs/results.md)."""
    from hw.simulate import run_cocotb
    from hw.sizes import core_size
    from hw.core import MixCore
    from sw.numerics import WeightFormat
    size = core_size(device, pe)
    core = MixCore(**size.core_geometry())
    runs = []
    for fmt in core.formats:
        for g in (None,) + tuple(core.group_sizes):
            runs.append([256, 256, 256, int(fmt), g])
    runs += [[256, 64, 256, int(WeightFormat.INT8), None], [256, 64, 256, int(core.formats[-1]), None]]
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "util.json"
        t0 = time.monotonic()
        run_cocotb(core, name="mixcore", test_module="bench_mixcore",
                   params=dict(rows=core.rows, cols=core.cols, read_latency=core.READ_LATENCY,
                               out_bytes=core.out_bytes, cfg_fields=_cfg_fields(),
                               timeout=core.WATCHDOG, runs=runs, out=str(out)),
                   **_top_only("mixcore"))
        wall = time.monotonic() - t0
        rows = json.loads(out.read_text())
    result = {"device": device, "core": asdict(size), "wall_seconds": round(wall, 1), "runs": rows}
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "results_utilization.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"core {size.rows}x{size.cols} {size.pe} ({device} size), "
          f"`python -m hw.bench utilization --device {device}`\n")
    print("| M x K x N | weights | group | cycles | MACs | MACs/cycle | utilization | "
          "dequant stall cycles |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['M']}x{r['K']}x{r['N']} | {r['fmt']} | {r['group'] or '-'} | {r['cycles']} | "
              f"{r['macs']} | {r['macs_per_cycle']:.1f} | {100 * r['utilization']:.1f}% | "
              f"{r['dq_stall']} ({100 * r['dq_share']:.1f}%) |")
    return result


def dsp_rates(device="85F", dsp="dsp4", *, rows=None, cols=None):
    """Dense-equivalent MACs per cycle and per MULT18X18D of ``device``'s core with the DSP
    engine ``dsp`` (``hw.sizes.DSP_ENGINES``) per N:M pattern, from the counters of the
    Verilator model (docs/results.md); ``rows`` / ``cols`` replace the array's shape as
    ``hw.build --rows / --cols`` do. K = 256 (and, where a row of 256 takes fewer than
    ``cols`` steps, the K whose rows take ``cols``); M and N are the most the A buffer and
    the DSP weight memory hold for the pattern in one run (at most 256)."""
    from hw.simulate import run_cocotb
    from hw.sizes import core_size
    from hw.core import MixCore
    from sw import layout
    from sw.numerics import WeightFormat
    size = core_size(device, None, dsp, rows=rows, cols=cols)
    core = MixCore(**size.core_geometry())
    fmt = WeightFormat.INT4 if core.dsp_packed else WeightFormat.INT8
    runs = []
    for pat in core.dsp_patterns:
        S = layout.dsp_steps(256, stages=core.dsp_stages, pattern=pat)
        # as much of 256 x 256 x 256 as one run holds: M * S A words, N / cols * S records;
        # where a row of K = 256 takes fewer than ``cols`` steps the drain (one row per
        # ``cols`` cycles) limits the rate: also the smallest K whose rows take ``cols`` steps
        ks = [256] if S >= core.cols else [256, 256 * core.cols // S]
        for K in ks:
            S = layout.dsp_steps(K, stages=core.dsp_stages, pattern=pat)
            runs.append([min(256, core.a_depth // S), K,
                         min(256, core.cols * (core.dsp_depth // S)), int(pat), int(fmt)])
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "dsp.json"
        t0 = time.monotonic()
        run_cocotb(core, name="mixcore_dsp", test_module="bench_dsp",
                   params=dict(rows=core.rows, cols=core.cols, read_latency=core.READ_LATENCY,
                               out_bytes=core.out_bytes, cfg_fields=_cfg_fields(),
                               timeout=core.WATCHDOG, runs=runs, out=str(out),
                               chains=core.dsp_chains, dsp_stages=core.dsp_stages),
                   **_top_only("mixcore_dsp"))
        wall = time.monotonic() - t0
        runs_out = json.loads(out.read_text())
    dense = max(r["macs_per_dsp_cycle"] for r in runs_out if r["pattern"].startswith("DENSE"))
    result = {"device": device, "dsp": dsp, "core": asdict(size), "fmt": fmt.name,
              "dsps": core.dsp_chains * core.dsp_stages, "wall_seconds": round(wall, 1),
              "runs": runs_out}
    (ROOT / "docs").mkdir(exist_ok=True)
    shape = "" if rows is None and cols is None else f"_{size.rows}x{size.cols}"
    (ROOT / "docs" / f"results_dsp_{device}_{dsp}{shape}.json").write_text(
        json.dumps(result, indent=1) + "\n")
    opts = "".join(f" --{k} {v}" for k, v in (("rows", rows), ("cols", cols)) if v is not None)
    print(f"core {size.rows}x{size.cols} {size.pe} + DSP engine {dsp} ({core.dsp_chains} chains x "
          f"L = {core.dsp_stages} = {core.dsp_chains * core.dsp_stages} MULT18X18D, "
          f"{fmt.name} weights), `python -m hw.bench dsp --device {device} --dsp {dsp}{opts}`\n")
    print("| pattern | M x K x N | cycles | feed cycles | dense-equivalent MACs/cycle | "
          "per DSP and cycle | vs dense |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in runs_out:
        print(f"| {r['pattern']} | {r['M']}x{r['K']}x{r['N']} | {r['cycles']} | {r['busy']} | "
              f"{r['macs_per_cycle']:.1f} | {r['macs_per_dsp_cycle']:.2f} | "
              f"{r['macs_per_dsp_cycle'] / dense:.2f}x |")
    return result


def _cfg_fields():
    from hw.core import LAYER_LAYOUT
    return {n: (f.offset, f.width) for n, f in LAYER_LAYOUT}


def _top_only(top):
    from hw.netlist import vpi_top_only
    vlt, args = vpi_top_only(top)
    return {"extra_sources": vlt, "build_args": args}


def pe_compare(seeds=3):
    """MixPE vs the INT8 DSP PE vs a PE that dequantizes every weight (LUT4, FF, DSP, Fmax per
    PE from yosys + nextpnr over ``seeds`` seeds, MACs per PE and cycle per format); written to
    docs/results_pe.json and printed as a table (``python -m hw.bench pe``)."""
    from hw.report import synth_block
    from hw.pe.mixpe import MixPE
    from hw.pe.int8dsp import Int8DspPE
    from hw.pe.dequant import DequantPE
    kinds = {
        "mixpe": (lambda e, b: MixPE(acc_width=28, impl="generic"), {},
                  "INT8 1, INT4 2, INT2/ternary 4, pow2 1 (group dequant at the edge, per row)"),
        "int8-dsp": (lambda e, b: Int8DspPE(acc_width=28, impl="ecp5" if e else "generic"),
                     {"dsp": True}, "INT8 1"),
        "dequant-lut": (lambda e, b: DequantPE(), {},
                        "INT4 1 (every weight dequantized before its multiply)"),
    }
    out = {}
    with tempfile.TemporaryDirectory(prefix="pe_compare_") as td:
        for name, (factory, opts, macs) in kinds.items():
            r = synth_block(name, factory, opts, Path(td) / name, seeds)
            out[name] = dict(r, macs_per_cycle=macs)
            print(f"{name:12s} LUT4 {r['lut4']:5d}  FF {r['ff']:5d}  DSP {r['mult18x18d']}  "
                  f"Fmax {r['fmax_mhz']} ({r['fmax_seeds']})  MACs/cycle: {macs}", flush=True)
    (ROOT / "docs" / "results_pe.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def roofline(device="85F", freq_mhz=None, baud=3_000_000):
    """Bytes-per-MAC roofline of the UART link for GEMV and GEMM (written out, no simulation).

    Wire bytes come from ``sw.protocol.efficiency`` (the real frame format: 4 KiB chunks,
    headers, CRC, replies); a UART byte is 10 bits (8N1).
    """
    from hw.sizes import DEVICES, DEFAULT_FREQ_MHZ
    from sw.protocol import efficiency
    size = DEVICES[device]
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


class _GEMM_ERRORS:
    """What a GEMM through a damaged link may raise (anything else is a bug)."""

    @staticmethod
    def types():
        from sw.driver import DeviceError, DeviceTimeout, TransportError
        from sw.protocol import ProtocolError
        return (DeviceError, DeviceTimeout, TransportError, ProtocolError)


def fault_campaign(transport, *, gemms: int, seed: int = 0, tx_rate: float = 0.05,
                   rx_rate: float = 0.02, max_bits: int = 3, progress=None) -> dict:
    """Run ``gemms`` small random GEMMs (RAW32 and INT8 requant) through ``transport``
    wrapped in a :class:`~sw.transport.FaultInjector`; compare every result with
    :func:`sw.numerics.mpgemm`.

    Returns a dict: ``exact``, ``raised``, ``wrong`` (GEMM counts), ``tx_faults``,
    ``rx_faults``, ``retries``, ``stale_replies``, the wall time of the GEMMs without and with
    one fault (``clean_median_s``, ``one_fault_max_s``), the slowest recovery from one
    damaged frame (``recovery_max_s`` = slowest one-fault GEMM minus the median clean one)
    and the device's inter-byte timeout in wall time as the driver computes it
    (``link_timeout_s``). A GEMM that raises something other than the driver's documented
    errors propagates (that is a bug, not a fault outcome).
    """
    import numpy as np
    from sw import numerics
    from sw.driver import Accelerator
    from sw.numerics import Requant
    from sw.transport import FaultInjector

    ft = FaultInjector(transport, tx_rate=0.0, rx_rate=0.0, max_bits=max_bits, seed=seed)
    acc = Accelerator(ft)                 # identify on a clean link
    ft.tx_rate, ft.rx_rate = tx_rate, rx_rate
    rng = np.random.default_rng(seed)
    info = acc.info
    R, C = info.rows, info.cols
    counts = {"exact": 0, "raised": 0, "wrong": 0}
    times = {}                            # faults during the GEMM -> wall times
    errors = {}
    t_start = time.monotonic()
    try:
        for i in range(gemms):
            M = int(rng.integers(1, 3 * R + 1))
            K = int(rng.integers(1, 48))
            N = int(rng.integers(1, 3 * C + 1))
            a = rng.integers(-128, 128, (M, K)).astype(np.int8)
            w = rng.integers(-128, 128, (K, N)).astype(np.int8)
            rq = None
            if rng.integers(0, 2):
                rq = Requant(int(rng.integers(1, 1 << 16)), int(rng.integers(8, 30)),
                             int(rng.integers(-20, 20)), bool(rng.integers(0, 2)))
            f0 = ft.tx_faults + ft.rx_faults
            t0 = time.monotonic()
            try:
                got = acc.gemm(a, w, requant=rq)
            except _GEMM_ERRORS.types() as e:
                counts["raised"] += 1
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            finally:
                times.setdefault(ft.tx_faults + ft.rx_faults - f0, []).append(
                    time.monotonic() - t0)
            if np.array_equal(got, numerics.mpgemm(a, w, rq)) and got.dtype == (
                    np.int32 if rq is None else np.int8):
                counts["exact"] += 1
            else:
                counts["wrong"] += 1
            if progress:
                progress(i + 1, gemms)
        clean = sorted(times.get(0, [0.0]))
        one = times.get(1, [])
        result = dict(counts, gemms=gemms, tx_faults=ft.tx_faults, rx_faults=ft.rx_faults,
                      retries=acc.total.retries, stale_replies=ft.stale_replies,
                      errors=errors, wall_s=round(time.monotonic() - t_start, 2),
                      clean_median_s=round(clean[len(clean) // 2], 4),
                      one_fault_gemms=len(one),
                      one_fault_max_s=round(max(one), 4) if one else None,
                      recovery_max_s=round(max(one) - clean[len(clean) // 2], 4) if one else None,
                      link_timeout_s=round(acc._link_timeout, 4),
                      device_timeout_cycles=info.timeout_cycles)
    finally:
        acc.close()
    return result


def pty_sim_serial(device: str = "12F", pe: str | None = None, **kw):
    """The real :class:`sw.transport.SerialTransport` (pyserial) on a pseudo-terminal whose
    other end is the Verilator model of ``device``'s SoC: the board's serial path without a
    board. Timeouts follow the model's speed (as :class:`~sw.transport.SimTransport`'s do).
    """
    import os
    import subprocess
    from hw.soc.simbuild import build_sim_model
    from sw.transport import SerialTransport, SimTransport

    exe = build_sim_model(device, pe=pe)
    master, slave = os.openpty()
    proc = subprocess.Popen([str(exe)], stdin=master, stdout=master,
                            stderr=subprocess.DEVNULL, close_fds=True)
    os.close(master)
    name = os.ttyname(slave)

    class PtySimSerial(SerialTransport):
        RATE_MIN, GRACE = SimTransport.RATE_MIN, SimTransport.GRACE
        rate_min = SimTransport.RATE_MIN_BY_DEVICE.get(device, SimTransport.RATE_MIN)
        seconds = SimTransport.seconds
        wire_seconds = SimTransport.wire_seconds

        def close(self):
            super().close()
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)

    try:
        t = PtySimSerial(name, **kw)
    except BaseException:
        proc.kill()
        raise
    finally:
        os.close(slave)
    return t


def faults(device="12F", gemms=2000, seed=1):
    """Fault campaign through SimTransport and through the pty serial path (docs/results.md)."""
    from sw.transport import SimTransport
    rows = []
    for name, make in (("SimTransport", lambda: SimTransport(device)),
                       ("SerialTransport over a pty", lambda: pty_sim_serial(device))):
        r = fault_campaign(make(), gemms=gemms, seed=seed)
        r["path"] = name
        rows.append(r)
        print(json.dumps(r))
    (ROOT / "docs" / "results_faults.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n`python -m hw.bench faults --device {device} --gemms {gemms}`\n")
    print("| path | GEMMs | frames damaged sent / received | exact | raised | wrong | retries "
          "| clean GEMM (median) | slowest recovery from one fault | driver's device-timeout "
          "estimate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['gemms']} | {r['tx_faults']} / {r['rx_faults']} | "
              f"{r['exact']} | {r['raised']} | {r['wrong']} | {r['retries']} | "
              f"{1e3 * r['clean_median_s']:.1f} ms | {1e3 * (r['recovery_max_s'] or 0):.1f} ms "
              f"| {1e3 * r['link_timeout_s']:.1f} ms |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hw.bench")
    ap.add_argument("what", choices=["utilization", "roofline", "faults", "pe", "dsp"])
    ap.add_argument("--dsp", default="dsp4", help="dsp: the DSP engine (hw.sizes.DSP_ENGINES)")
    ap.add_argument("--device", default=None, help="default: 85F (faults: 12F)")
    ap.add_argument("--gemms", type=int, default=2000, help="faults: GEMMs per path")
    ap.add_argument("--rows", type=int, default=None,
                    help="dsp: array rows (default: the device's), as hw.build --rows")
    ap.add_argument("--cols", type=int, default=None,
                    help="dsp: array columns (default: the device's), as hw.build --cols")
    args = ap.parse_args(argv)
    if (args.rows is not None or args.cols is not None) and args.what != "dsp":
        ap.error("--rows / --cols apply to the dsp benchmark only")
    if args.what == "pe":
        pe_compare()
    elif args.what == "dsp":
        dsp_rates(args.device or "85F", args.dsp, rows=args.rows, cols=args.cols)
    elif args.what == "utilization":
        utilization(args.device or "85F")
    elif args.what == "faults":
        faults(args.device or "12F", gemms=args.gemms)
    else:
        roofline(args.device or "85F")
    return 0


if __name__ == "__main__":
    sys.exit(main())
