"""Benchmark (not a test): array utilisation from the core's counters. Run via hw.bench."""

import json

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from core_tb import CoreTB


@cocotb.test()
async def utilization(dut):
    p = tb_params()
    tb = CoreTB(dut, dict(p, monitor=False))
    await tb.reset()
    rng = np.random.default_rng(0)
    rows = []
    for M, K, N in p["shapes"]:
        a = rng.integers(-128, 128, (M, K)).astype(np.int8)
        w = rng.integers(-128, 128, (K, N)).astype(np.int8)
        got, cnt = await tb.gemm(a, w, numerics.Requant(1, 12))
        np.testing.assert_array_equal(got, numerics.mpgemm(a, w, numerics.Requant(1, 12)), strict=True)
        peak = cnt["cycles"] * p["rows"] * p["cols"]
        rows.append(dict(M=M, K=K, N=N, **cnt, utilization=cnt["macs"] / peak))
    with open(p["out"], "w") as f:
        json.dump(rows, f, indent=1)
