"""mpGEMM core: ``abort`` (what RESET drives) and the watchdog stop a GEMM cleanly.

A stopped GEMM ends with ``done`` and ``ABORTED`` / ``WATCHDOG`` within ``ABORT_CYCLES``, writes
nothing to the output buffer after ``done``, and the next GEMM is bit-exact (no state of the
stopped one leaks into it: partial sums, drain bookkeeping, a half-fed tile)."""

import numpy as np
import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, RisingEdge

from hw.simulate import run_cocotb, tb_params
from sw import numerics
from sw.numerics import Requant
from sw.protocol import ErrorCode
from core_tb import CoreTB
from test_core import TOP_ONLY

CFG = dict(rows=2, cols=2, a_depth=128, w_depth=128, out_words=128)
#: small enough that a buffer-filling GEMM exceeds it, large enough for the small ones
WATCHDOG = 500


def test_core_abort_and_watchdog():
    from hw.systolic.core import MpGemmCore
    core = MpGemmCore(**CFG, watchdog=WATCHDOG)
    run_cocotb(core, name="core", test_module="test_core_abort",
               params=dict(CFG, max_k=core.max_k, read_latency=core.READ_LATENCY,
                           tile_period_min=core.TILE_PERIOD_MIN, watchdog=WATCHDOG,
                           abort_cycles=core.ABORT_CYCLES), **TOP_ONLY)


def test_watchdog_default_covers_every_gemm():
    """The default watchdog exceeds the longest GEMM the buffers accept (so it only ever
    stops a stuck sequencer), and bad values are refused."""
    import pytest
    from hw.systolic.core import MpGemmCore
    core = MpGemmCore(**CFG)
    core._MustUse__silence = True
    P = core.TILE_PERIOD_MIN
    worst = 0
    for k in range(1, core.max_k + 1):          # every K, the most tiles the buffers hold
        mt, nt = core.a_depth // k, core.w_depth // k
        tiles = min(mt * nt, 4 * core.out_words)   # INT8: each tile writes >= 1 output
        worst = max(worst, tiles * max(k, P))
    assert core.max_run_cycles() >= worst + P
    assert core.WATCHDOG == 2 * core.max_run_cycles()
    for bad in (0, 63, 1 << 32, 1.5, True):
        with pytest.raises(ValueError, match="watchdog"):
            MpGemmCore(**CFG, watchdog=bad)


def _rand(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


async def _start(tb, M, K, N, rq):
    d = tb.dut
    await FallingEdge(d.clk)
    d.cfg_m.value, d.cfg_k.value, d.cfg_n.value = M, K, N
    d.cfg_out_mode.value = int(numerics.OutMode.RAW32 if rq is None else numerics.OutMode.INT8)
    if rq is not None:
        d.cfg_mult.value, d.cfg_shift.value = rq.multiplier, rq.shift
        d.cfg_zp.value, d.cfg_relu.value = rq.zero_point & 0xFF, int(rq.relu)
    tb.writes.clear()
    d.start.value = 1
    await FallingEdge(d.clk)
    d.start.value = 0


async def _wait_done(tb, limit):
    d = tb.dut
    t = cocotb.utils.get_sim_time("ns")
    await First(RisingEdge(d.done), ClockCycles(d.clk, limit))
    await ReadOnly()
    assert int(d.done.value), f"no done within {limit} cycles"
    cycles = int((cocotb.utils.get_sim_time("ns") - t) // 10)
    return ErrorCode(int(d.error.value)), cycles


async def _no_writes_after(tb, cycles):
    n = len(tb.writes)
    await ClockCycles(tb.dut.clk, cycles)
    assert len(tb.writes) == n, f"{len(tb.writes) - n} output writes after done"


@cocotb.test()
async def abort_then_exact(dut):
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(31)
    R, C = cfg["rows"], cfg["cols"]
    K = 40
    M, N = R * (cfg["a_depth"] // K), C * (cfg["w_depth"] // K)
    a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
    await tb.load(a, w)
    # abort at several points: in the shape check, while feeding, between tiles
    for after in (3, 25, 60, 333):
        await _start(tb, M, K, N, Requant(30000, 20, 1))
        await ClockCycles(dut.clk, after)
        await FallingEdge(dut.clk)
        dut.abort.value = 1
        await FallingEdge(dut.clk)
        dut.abort.value = 0
        err, cycles = await _wait_done(tb, cfg["abort_cycles"] + 8)
        assert err == ErrorCode.ABORTED, (after, err)
        await _no_writes_after(tb, 3 * cfg["tile_period_min"])
        assert not int(dut.busy.value)
        # the next GEMM on the same operands is exact, every output written once
        rq = None if after % 2 else Requant(30000, 20, 1)
        got, _ = await tb.compute(M, K, N, rq)
        np.testing.assert_array_equal(got, numerics.mpgemm(a, w, rq), strict=True)


@cocotb.test()
async def watchdog_then_exact(dut):
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(32)
    R, C = cfg["rows"], cfg["cols"]
    K = cfg["tile_period_min"] + 3
    M, N = R * (cfg["a_depth"] // K), C * (cfg["w_depth"] // K)
    tiles = -(-M // R) * -(-N // C)
    assert tiles * K > cfg["watchdog"] + cfg["tile_period_min"], "GEMM too short to trip it"
    a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
    await tb.load(a, w)
    await _start(tb, M, K, N, Requant(100, 10))
    err, cycles = await _wait_done(tb, cfg["watchdog"] + cfg["abort_cycles"] + 64)
    assert err == ErrorCode.WATCHDOG, err
    assert cfg["watchdog"] <= cycles <= cfg["watchdog"] + cfg["abort_cycles"] + 8, cycles
    await _no_writes_after(tb, 3 * cfg["tile_period_min"])
    # a GEMM within the watchdog is exact
    m2, n2 = 2 * R + 1, C + 1
    a2, w2 = _rand(rng, (m2, K)), _rand(rng, (K, n2))
    got, _ = await tb.gemm(a2, w2, Requant(12345, 15, -2, True))
    np.testing.assert_array_equal(got, numerics.mpgemm(a2, w2, Requant(12345, 15, -2, True)),
                                  strict=True)
