"""Benchmark (not a test): the sparse DSP engine's dense-equivalent MACs per cycle and per
MULT18X18D, per N:M pattern, from MixCore's counters. Run via ``python -m hw.bench dsp``.

The values do not change the cycle counts, so the buffers are not loaded; correctness is the
regression's job (sim/test_mixcore_dsp.py, sim/test_dsp_soc.py)."""

import json

import cocotb

from hw.simulate import tb_params
from sw.numerics import NMPattern
from sw.protocol import ErrorCode
from mixcore_tb import MixCoreTB


@cocotb.test()
async def dsp_rates(dut):
    p = tb_params()
    tb = MixCoreTB(dut, dict(p, checked_out_bytes=4))
    await tb.reset()
    rows = []
    dsps = p["chains"] * p["dsp_stages"]
    for M, K, N, pat, fmt in p["runs"]:
        pat = NMPattern(pat)
        await tb.start(m=M, k=K, n=N, fmt=fmt, sparse=1 + int(pat), out_mode=1, mult=1, shift=8)
        err, cnt = await tb.wait_done(p["timeout"])
        assert err == ErrorCode.OK, (M, K, N, pat, err)
        assert cnt["macs"] == M * K * N, cnt
        rows.append(dict(M=M, K=K, N=N, pattern=pat.name, fmt=fmt, **cnt,
                         macs_per_cycle=cnt["macs"] / cnt["cycles"],
                         macs_per_dsp_cycle=cnt["macs"] / cnt["cycles"] / dsps,
                         feed_share=cnt["busy"] / cnt["cycles"]))
    with open(p["out"], "w") as f:
        json.dump(rows, f, indent=1)
