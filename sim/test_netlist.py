"""The synthesized gate-level netlist, simulated: what Yosys' ``synth_ecp5`` (the bitstream
build's own script, see ``hw.netlist``) made of the ULX3S-12F SoC (core v2, host link), under
Verilator with Yosys' ECP5 cell models plus ours for MULT18X18D and DP16KD, behind the public
driver: ``Accelerator(SimTransport(executable=<netlist model>))``, random GEMMs, raw and
requantized, bit-exact vs ``sw.numerics.mpgemm``.
"""

import time

import numpy as np

from sw import numerics
from sw.numerics import Requant

#: simulated cycles per wall second the driver may assume for the SoC netlist model
# (the SoC's netlist runs a few thousand cycles/s at -O0 on a loaded machine: four edge units
# with 48-bit pipelines and LUT RAMs)
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


def _rand(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def test_soc_netlist_12f():
    """The 12F SoC's netlist behind the driver: raw and requantized GEMMs, bit-exact."""
    from hw.netlist import build_soc_netlist_model
    from sw.driver import Accelerator
    from sw.transport import SimTransport

    t0 = time.monotonic()
    exe, info = build_soc_netlist_model("12F")
    build_s = time.monotonic() - t0
    rng = np.random.default_rng(13)
    # the driver's timeouts assume the RTL model's speed (SimTransport.RATE_MIN cycles/s);
    # the gate-level model is far slower
    t = SimTransport("12F", executable=exe, rate_min=NETLIST_RATE_MIN)
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
