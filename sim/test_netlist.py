"""The synthesized gate-level netlists, simulated: what Yosys' ``synth_ecp5`` (the bitstream
build's own script, see ``hw.netlist``) made of the gateware, under Verilator with Yosys' ECP5
cell models plus ours for MULT18X18D and DP16KD, bit-exact vs ``sw.numerics.mpgemm``.

* a small core (2x2 PEs, MULT18X18D everywhere, LUT-RAM and EBR buffers) under cocotb with
  ``CoreTB``: random GEMMs in RAW32 and INT8 mode (shift 0 to 63 including shifts past the
  product width, zero point 0 and others, ReLU, saturation both ways), and the largest
  accumulator the core can build;
* the ULX3S-12F SoC (4x4 core, host link) through the public driver:
  ``Accelerator(SimTransport(executable=<netlist model>))``, random GEMMs, raw and requantized.

Netlist port names are Amaranth's (``cfg_m``, ``bus_rdata``, ...); internal signals do not
survive synthesis, so CoreTB runs without its write monitor (the exactly-once check of the
output writes is the RTL tests' job; here every result element is still compared).
"""

import time

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from sw.numerics import Requant
from core_tb import CoreTB

CORE = dict(rows=2, cols=2, a_depth=64, w_depth=64, out_words=64)
#: simulated cycles per wall second the driver may assume for the SoC netlist model
# (the core v2 SoC's netlist runs a few thousand cycles/s at -O0 on a loaded machine, about
# ten times slower than the v1 core's: four edge units with 48-bit pipelines and LUT RAMs)
NETLIST_RATE_MIN = 1e3
#: GEMMs through the 12F SoC netlist: (M, K, N, requant or None); small, as the gate-level
#: model is slow: the RTL regression covers the large shapes
SOC_GEMMS = [
    (5, 17, 6, None),
    (9, 64, 7, Requant(40000, 24, 0)),
    (4, 100, 4, Requant(65535, 63, -128)),
    (7, 33, 9, Requant(1 << 15, 20, 5, True)),
    (6, 40, 5, None),
    (3, 150, 5, Requant(12345, 40, 0, True)),
]


def test_core_netlist():
    """2x2 core: synthesize (cached), build with the cell models (cached), run the GEMMs."""
    from hw.netlist import (NETLIST_CXX_OPT, cell_models, cxx_opt, port_names, synthesize,
                            vpi_top_only)
    from hw.simulate import build, run_cocotb
    from hw.systolic.core import MpGemmCore

    core = MpGemmCore(**CORE, impl="ecp5")
    text, info = synthesize(core, "core_net")
    assert info["cells"].get("MULT18X18D") == CORE["rows"] * CORE["cols"] + 2, info["cells"]
    # only the ports are visible to cocotb, so Verilator may optimise the gates between them
    vlt, args = vpi_top_only("core_net", port_names(core))
    sources = {**cell_models(), **vlt}
    args += ["-CFLAGS", NETLIST_CXX_OPT]         # part of the build's cache key
    t0 = time.monotonic()
    with cxx_opt(NETLIST_CXX_OPT):
        build(text, "core_net", extra_sources=sources, build_args=args)
    print(f"\ncore netlist {CORE}: cells {info['cells']}, synth {info['synth_seconds']} s "
          f"(when made), Verilator build {time.monotonic() - t0:.1f} s (0 when cached)")
    run_cocotb(text, name="core_net", test_module="test_netlist", testcase="core_gemms",
               params=dict(CORE, monitor=False, max_k=core.max_k,
                           read_latency=core.READ_LATENCY, tile_period_min=core.TILE_PERIOD_MIN),
               extra_sources=sources, build_args=args)


def _fits(cfg, M, K, N, raw):
    mt, nt = -(-M // cfg["rows"]), -(-N // cfg["cols"])
    return (mt * K <= cfg["a_depth"] and nt * K <= cfg["w_depth"]
            and M * N <= cfg["out_words"] * (1 if raw else 4))


def _rand(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


@cocotb.test()
async def core_gemms(dut):
    """Random shapes that fit, RAW32 and INT8, plus the extreme accumulators."""
    from cocotb.utils import get_sim_time
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(12)
    R, C, K_max = cfg["rows"], cfg["cols"], cfg["max_k"]
    rqs = [None, Requant(1, 0), Requant(65535, 0), Requant(65535, 63, -128),
           Requant(1 << 15, 20, 5, True), Requant(40000, 24, 0), Requant(12345, 17, -3),
           Requant(0, 5, 7), Requant(65535, 40, 0, True), Requant(3, 39, 0),
           Requant(50000, 10, 0), Requant(777, 2, 100, True)]
    cases = []
    for rq in rqs + [None] * 4:
        while True:
            M, K, N = (int(x) for x in rng.integers(1, [4 * R + 2, K_max + 1, 4 * C + 2]))
            if _fits(cfg, M, K, N, raw=rq is None):
                break
        cases.append((_rand(rng, (M, K)), _rand(rng, (K, N)), rq))
    # largest |accumulator|: -128 * -128 summed max_k times, raw and saturating
    for av, wv, rq in ((-128, -128, None), (-128, 127, None), (-128, -128, Requant(65535, 10)),
                       (-128, 127, Requant(65535, 63, 0, True))):
        cases.append((np.full((R, K_max), av, np.int8), np.full((K_max, C), wv, np.int8), rq))
    t0, c0 = time.perf_counter(), get_sim_time("ns")
    for a, w, rq in cases:
        got, _ = await tb.gemm(a, w, rq)
        np.testing.assert_array_equal(got, numerics.mpgemm(a, w, rq), strict=True,
                                      err_msg=f"{a.shape} x {w.shape}, {rq}")
    cycles = (get_sim_time("ns") - c0) / 10
    secs = time.perf_counter() - t0
    dut._log.info(f"core netlist: {len(cases)} GEMMs bit-exact, {cycles:.0f} cycles in "
                  f"{secs:.1f} s = {cycles / secs:.0f} cycles/s (cocotb-driven)")


def test_soc_netlist_12f():
    """The 12F SoC's netlist behind the driver: raw and requantized GEMMs, bit-exact."""
    from hw.netlist import build_soc_netlist_model
    from sw.driver import Accelerator
    from sw.transport import SimTransport

    t0 = time.monotonic()
    exe, info = build_soc_netlist_model("12F")
    build_s = time.monotonic() - t0
    rng = np.random.default_rng(13)
    t = SimTransport("12F", executable=exe)
    # the driver's timeouts assume the RTL model's speed (SimTransport.RATE_MIN cycles/s);
    # the gate-level model runs ~20k cycles/s on a loaded machine, so allow a fifth of that
    t.RATE_MIN = NETLIST_RATE_MIN
    t1 = time.monotonic()
    with Accelerator(t) as acc:
        for M, K, N, rq in SOC_GEMMS:
            a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
            np.testing.assert_array_equal(acc.gemm(a, w, requant=rq), numerics.mpgemm(a, w, rq),
                                          strict=True, err_msg=f"{M}x{K}x{N} {rq}")
    stats = t.sim_stats
    print(f"\n12F SoC netlist: cells {info['cells']}, synth {info['synth_seconds']} s (when "
          f"made), synth+build now {build_s:.1f} s, {len(SOC_GEMMS)} GEMMs in "
          f"{time.monotonic() - t1:.1f} s, sim {stats}")
    assert stats and stats["cycles"] > 0, "the model reported no cycle statistics"
