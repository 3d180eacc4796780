"""Benchmark (not a test): MixCore MACs per cycle, utilisation and group-dequantization stalls
per weight format from the core's counters. Run via ``python -m hw.bench utilization``.

The operands' values do not change the cycle counts, so the buffers are not loaded (a byte
per simulated cycle from Python would dominate the run); correctness is the regression's job
(sim/test_mixcore.py, sim/test_soc.py)."""

import json

import cocotb

from hw.simulate import tb_params
from sw.numerics import WEIGHT_LANES, WeightFormat
from sw.protocol import ErrorCode
from mixcore_tb import MixCoreTB, GROUP_CODE


@cocotb.test()
async def utilization(dut):
    p = tb_params()
    tb = MixCoreTB(dut, dict(p, checked_out_bytes=4))
    await tb.reset()
    rows = []
    for M, K, N, fmt, group in p["runs"]:
        fmt = WeightFormat(fmt)
        await tb.start(m=M, k=K, n=N, fmt=int(fmt), group=GROUP_CODE[group], out_mode=1,
                       mult=1, shift=8)
        err, cnt = await tb.wait_done(p["timeout"])
        assert err == ErrorCode.OK, (M, K, N, fmt, group, err)
        assert cnt["macs"] == M * K * N, cnt
        peak = p["rows"] * p["cols"] * WEIGHT_LANES[fmt]
        rows.append(dict(M=M, K=K, N=N, fmt=fmt.name, group=group or 0, **cnt,
                         macs_per_cycle=cnt["macs"] / cnt["cycles"],
                         utilization=cnt["macs"] / (cnt["cycles"] * peak),
                         dq_share=cnt["dq_stall"] / cnt["cycles"]))
    with open(p["out"], "w") as f:
        json.dump(rows, f, indent=1)
