"""MixCore (core v2): every weight format x group size x ragged shapes, extremes, per-channel
requantization with bias and its scalar one-channel form, RAW32, shape and format errors,
counters; bit-exact against sw.numerics.mixgemm, and nothing written outside the result.

Shapes are generated to fit each configuration and asserted to fit."""

import os

import numpy as np
import pytest
import cocotb

from hw.simulate import run_cocotb, tb_params
from sw import numerics
from sw.numerics import (WeightFormat, GroupQuant, ChannelRequant, Requant, weight_range,
                         WEIGHT_LANES, GSCALE_BITS, OutMode)
from sw.protocol import Buffer, ErrorCode
from mixcore_tb import MixCoreTB, check_write_ring

CONFIGS = {
    # with an 8-stage DSP engine too: the same model runs sim/test_mixcore_dsp.py's
    # "dsp8-4x4" (one build for both files)
    # a long host-write ring (40 stages, as the 85F dsp8s build's 42): a run that did not
    # wait for it would read the last writes' old bytes
    "mixpe-4x4": dict(rows=4, cols=4, a_depth=64, w_depth=128, out_depth=64, chan_depth=64,
                      group_depth=128, pe="mixpe", dsp_stages=8, dsp_depth=64, dsp_share=4,
                      write_relays=24),
    "mixpe-2x8": dict(rows=2, cols=8, a_depth=64, w_depth=64, out_depth=64, chan_depth=64,
                      group_depth=64, pe="mixpe"),
    "int8dsp-4x2": dict(rows=4, cols=2, a_depth=32, w_depth=64, out_depth=64, chan_depth=32,
                        group_depth=16, pe="int8-dsp"),
}


def _top_only():
    """Build options shared with sim/test_mixcore_dsp.py (same top, same model)."""
    from hw.netlist import vpi_top_only
    vlt, args = vpi_top_only("mixcore")
    return {"extra_sources": vlt, "build_args": args}


def core_and_params(name):
    from hw.core import MixCore, LAYER_LAYOUT
    cfg = CONFIGS[name]
    core = MixCore(**cfg)
    fields = {n: (f.offset, f.width) for n, f in LAYER_LAYOUT}
    return core, dict(cfg, max_k=core.max_k, read_latency=core.READ_LATENCY,
                      host_write_latency=core.HOST_WRITE_LATENCY,
                      out_bytes=core.out_bytes, checked_out_bytes=core.out_bytes,
                      cfg_fields=fields, formats=[int(f) for f in core.formats],
                      groups=core.groups, watchdog=core.WATCHDOG, min_period=core.MIN_PERIOD)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixcore(name):
    core, params = core_and_params(name)
    run_cocotb(core, name="mixcore", test_module="test_mixcore", params=params, **_top_only())


# -- cocotb side ------------------------------------------------------------------------------

def random_weights(rng, fmt, shape, kind="random"):
    lo, hi = weight_range(fmt)
    if fmt is WeightFormat.POW2:
        vals = np.array([s * (1 << e) for s in (1, -1) for e in range(8)])
        if kind == "min":
            return np.full(shape, -128)
        if kind == "max":
            return np.full(shape, 128)
        return rng.choice(vals, size=shape)
    if kind == "min":
        return np.full(shape, lo)
    if kind == "max":
        return np.full(shape, hi)
    return rng.integers(lo, hi + 1, size=shape)


def fits(p, M, K, N, fmt, group, raw=False):
    R, C = p["rows"], p["cols"]
    lanes = WEIGHT_LANES[fmt]
    kb = -(-K // lanes)
    ok = (K <= p["max_k"] and -(-M // R) * -(-K // 4) <= p["a_depth"]
          and -(-N // C) * kb <= p["w_depth"]
          and -(-M // R) * N <= (1 if raw else 4) * p["out_depth"] and N <= p["chan_depth"])
    if group is not None:
        ok = ok and -(-K // group) * N <= p["group_depth"]
    return ok


def random_shape(rng, p, fmt, group):
    """A random ragged shape that fits (K not a multiple of the group or the lanes)."""
    for _ in range(1000):
        M = int(rng.integers(1, 3 * p["rows"] + 2))
        N = int(rng.integers(1, 3 * p["cols"] + 2))
        K = int(rng.integers(1, 300))
        if fits(p, M, K, N, fmt, group):
            return M, K, N
    raise AssertionError("no random shape fits this configuration")


def random_group(rng, size, K, N, kind="random"):
    ng = -(-K // size)
    if kind == "zero":
        sc = np.zeros((ng, N), dtype=np.int64)
    elif kind == "max":
        sc = np.full((ng, N), (1 << GSCALE_BITS) - 1)
    else:
        sc = rng.integers(0, 1 << GSCALE_BITS, size=(ng, N))
    return GroupQuant(size, sc, rng.integers(-128, 128, size=(ng, N)))


def random_requant(rng, N, acc_bound):
    """Per-channel requant whose shifts bring accumulators of ``acc_bound`` into range."""
    mult = rng.integers(1, 1 << 16, size=N)
    lg = max(int(acc_bound).bit_length(), 1)
    shift = np.clip(lg + 16 - 7 + rng.integers(-3, 4, size=N), 0, 63)
    bias = rng.integers(-(1 << 31), 1 << 31, size=N) >> rng.integers(0, 31, size=N)
    return ChannelRequant(mult, shift, bias, int(rng.integers(-20, 21)), bool(rng.integers(2)))


async def check(tb, a, q, *, fmt, group=None, requant=None, out_mode=None, w_last=False):
    res, cnt = await tb.run_layer(a, q, fmt=fmt, group=group, requant=requant, out_mode=out_mode,
                                  w_last=w_last)
    if out_mode == OutMode.RAW32 or requant is None:
        want = numerics.mixgemm(a, q, fmt=fmt, group=group)
    else:
        want = numerics.mixgemm(a, q, fmt=fmt, group=group, requant=requant)
    np.testing.assert_array_equal(res, want, strict=True,
                                  err_msg=f"{a.shape[0]}x{a.shape[1]}x{q.shape[1]} {fmt.name} "
                                          f"G={group and group.size}")
    M, K = a.shape
    assert cnt["macs"] == M * K * q.shape[1], cnt
    return cnt


@cocotb.test()
async def formats_groups_shapes(dut):
    """Every supported format x group size x random ragged shapes, per-channel requant."""
    p = tb_params()
    tb = MixCoreTB(dut, p)
    await tb.reset()
    rng = np.random.default_rng(81)
    groups = [None] + ([32, 64, 128] if p["groups"] else [])
    runs = 0
    for fmt in map(WeightFormat, p["formats"]):
        for g in groups:
            for rep in range(2):
                M, K, N = random_shape(rng, p, fmt, g)
                a = rng.integers(-128, 128, size=(M, K))
                q = random_weights(rng, fmt, (K, N))
                gq = random_group(rng, g, K, N) if g else None
                acc = np.abs(numerics.group_dequant(a, q, gq) if gq else a @ q).max()
                crq = random_requant(rng, N, acc)
                await check(tb, a, q, fmt=fmt, group=gq, requant=crq)
                runs += 1
                if g is None and rep == 0:
                    while not fits(p, M, K, N, fmt, None, raw=True):
                        M -= 1
                    await check(tb, a[:M], q, fmt=fmt)        # RAW32: the raw sums
    assert runs >= 2 * len(groups)


def boundary_dims(tile):
    """Sizes on both sides of one, two and three tiles of ``tile``: where the sequencer's
    last-tile flags and valid-row / column counts change."""
    return sorted({d for t in (1, 2, 3) for d in (t * tile - 1, t * tile, t * tile + 1)
                   if d >= 1})


@cocotb.test()
async def tile_boundaries(dut):
    """Every M x N around one, two and three array tiles (rows x cols): the tile
    sequencer's last-row / last-column flags and valid counts at each boundary. INT8
    results (RAW32 would not fit the OUT banks at three tiles), with shifts that keep the
    sums in range. The issued steps are exactly ceil(M / rows) x ceil(N / cols) tiles of
    ceil(K / lanes): a last-tile flag set late runs an extra tile of no valid rows or
    columns, which the results alone do not show."""
    p = tb_params()
    tb = MixCoreTB(dut, p)
    await tb.reset()
    rng = np.random.default_rng(82)
    fmt = WeightFormat(p["formats"][0])
    K = 9                                   # one ragged step for every lane count
    for M in boundary_dims(p["rows"]):
        for N in boundary_dims(p["cols"]):
            assert fits(p, M, K, N, fmt, None), (M, N)
            a = rng.integers(-128, 128, size=(M, K))
            q = random_weights(rng, fmt, (K, N))
            acc = np.abs(numerics.mixgemm(a, q, fmt=fmt)).max()
            cnt = await check(tb, a, q, fmt=fmt, requant=random_requant(rng, N, acc))
            tiles = -(-M // p["rows"]) * -(-N // p["cols"])
            assert cnt["busy"] == tiles * -(-K // WEIGHT_LANES[fmt]), (M, N, cnt)


def ring_targets(p):
    """A byte of every host-written buffer (A and W banks, CHAN, GROUP): bank ``i``'s bytes
    are its lane's (``sw.layout``: A words interleaved over the rows, W bytes over the
    columns), at row 1."""
    R, C = p["rows"], p["cols"]
    return ([(Buffer.A, 4 * (R + i) + 3) for i in range(R)]
            + [(Buffer.W, C + j) for j in range(C)] + [(Buffer.CHAN, 9), (Buffer.GROUP, 5)])


@cocotb.test()
async def host_write_ring(dut):
    """Host writes ride a ring of registers through the buffers: ``bus_wbusy`` covers each
    for exactly ``HOST_WRITE_LATENCY`` cycles, reads after it see the write; a run started
    the cycle after its last writes (each W bank's first row, which the run reads first)
    computes with them, in every format."""
    p = tb_params()
    tb = MixCoreTB(dut, p)
    await tb.reset()
    await check_write_ring(tb, ring_targets(p))
    rng = np.random.default_rng(91)
    for fmt in map(WeightFormat, p["formats"]):
        M, K, N = p["rows"] + 1, 2 * WEIGHT_LANES[fmt] + 1, p["cols"] + 1
        a = rng.integers(-128, 128, size=(M, K))
        await check(tb, a, random_weights(rng, fmt, (K, N)), fmt=fmt, w_last=True)


@cocotb.test()
async def extremes(dut):
    """-128 activations with all-min / all-max weights at the largest K; zero and maximal
    group scales; scalar requant (one-channel case); the largest accumulators."""
    p = tb_params()
    tb = MixCoreTB(dut, p)
    await tb.reset()
    rng = np.random.default_rng(5)
    R, C = p["rows"], p["cols"]
    for fmt in map(WeightFormat, p["formats"]):
        lanes = WEIGHT_LANES[fmt]
        K = min(p["max_k"], lanes * p["w_depth"], 4 * p["a_depth"])
        M, N = R, C
        assert fits(p, M, K, N, fmt, None, raw=True)
        for a_val in (-128, 127):
            for kind in ("min", "max"):
                a = np.full((M, K), a_val)
                q = random_weights(rng, fmt, (K, N), kind)
                await check(tb, a, q, fmt=fmt)                       # RAW32 extremes
                acc = int(np.abs(a @ q).max())
                rq = Requant(65535, min(63, acc.bit_length() + 16 - 7), 0, False)
                await check(tb, a, q, fmt=fmt, requant=rq)            # scalar form
                # saturating at both ends: zero point -100, so a result one below the clamp
                # would show (a zero point of -128 would hide it)
                crq = ChannelRequant(np.full(N, 65535), np.full(N, 0),
                                     np.where(np.arange(N) % 2, -(1 << 31), (1 << 31) - 1),
                                     -100, False)
                await check(tb, a, q, fmt=fmt, requant=crq)
        if p["groups"]:
            for g in (32, 128):
                Kg = min(K, 4 * g + 7)
                assert fits(p, M, Kg, N, fmt, g)
                for kind in ("zero", "max"):
                    a = np.full((M, Kg), -128)
                    q = random_weights(rng, fmt, (Kg, N), "min")
                    gq = random_group(rng, g, Kg, N, kind)
                    gq = GroupQuant(g, gq.scale, np.full(gq.zero.shape, 127))
                    acc = int(np.abs(numerics.group_dequant(a, q, gq)).max())
                    shift = min(63, max(acc.bit_length() + 16 - 7, 0))
                    crq = ChannelRequant(np.full(N, 40000), np.full(N, shift),
                                         rng.integers(-1000, 1000, size=N), 3, True)
                    await check(tb, a, q, fmt=fmt, group=gq, requant=crq)
    # every shift 0..63 on one layer (per-channel table varies the shift along N)
    fmt = WeightFormat(p["formats"][-1])
    M, K = R, 9
    N = min(64, p["chan_depth"], C * (p["w_depth"] // -(-K // WEIGHT_LANES[fmt])))
    assert fits(p, M, K, N, fmt, None)
    a = rng.integers(-128, 128, size=(M, K))
    q = random_weights(rng, fmt, (K, N))
    for base in range(0, 64, N):
        sh = (np.arange(N) + base) % 64
        crq = ChannelRequant(rng.integers(1, 1 << 16, size=N), sh,
                             rng.integers(-(1 << 31), 1 << 31, size=N), -5, False)
        await check(tb, a, q, fmt=fmt, requant=crq)


@cocotb.test()
async def errors_and_counters(dut):
    """Shapes that do not fit and formats the PE lacks are refused; the core keeps working;
    group dequantization costs stall cycles only when a group is shorter than the drain."""
    p = tb_params()
    tb = MixCoreTB(dut, p)
    await tb.reset()
    bad = ErrorCode.BAD_SHAPE
    await tb.run_expect_error(bad, m=0, k=4, n=4, fmt=0)
    await tb.run_expect_error(bad, m=4, k=0, n=4, fmt=0)
    await tb.run_expect_error(bad, m=4, k=p["max_k"] + 1, n=4, fmt=0)
    await tb.run_expect_error(bad, m=4 * p["a_depth"] * p["rows"], k=8, n=1, fmt=0)
    await tb.run_expect_error(bad, m=1, k=8, n=p["chan_depth"] + 1, fmt=0, chan=1, out_mode=1)
    for f in WeightFormat:
        if int(f) not in p["formats"]:
            await tb.run_expect_error(bad, m=1, k=8, n=1, fmt=int(f))
    if not p["groups"]:
        await tb.run_expect_error(bad, m=1, k=64, n=1, fmt=0, group=1)
    # still exact afterwards
    rng = np.random.default_rng(2)
    fmt = WeightFormat(p["formats"][0])
    a = rng.integers(-128, 128, size=(p["rows"], 40))
    q = random_weights(rng, fmt, (40, p["cols"]))
    cnt = await check(tb, a, q, fmt=fmt)
    assert cnt["dq_stall"] == 0


@cocotb.test()
async def busy_is_the_sequencer_out_of_idle(dut):
    """``busy`` is a register of its own, set and cleared beside the sequencer's moves out of
    and into IDLE (not a decode of its state). In every cycle it must equal "the sequencer is
    not in IDLE": through a run, a refusal, and an abort in every cycle of a run, including the
    cycle of its move to IDLE (the abort wins there: the core stays busy and reports ABORTED).
    Each start gives exactly one ``done``, and the core is exact afterwards."""
    from cocotb.triggers import FallingEdge, RisingEdge, ReadOnly
    from mixcore_tb import GROUP_CODE
    p = tb_params()
    tb = MixCoreTB(dut, p)
    await tb.reset()
    d = dut
    await RisingEdge(d.clk)
    await ReadOnly()
    # the FSM's first state (IDLE) is its reset state, encoded 0
    assert int(d.seq_state.value) == 0 and not int(d.busy.value)
    cycles = {0: 0, 1: 0}
    mismatches, dones = [], []

    async def monitor():
        n = 0
        while True:
            await RisingEdge(d.clk)
            await ReadOnly()
            n += 1
            busy, state = int(d.busy.value), int(d.seq_state.value)
            cycles[busy] += 1
            if busy != (state != 0):
                mismatches.append(f"cycle {n}: busy {busy}, sequencer state {state}")
            if int(d.done.value):
                dones.append(ErrorCode(int(d.error.value)))

    mon = cocotb.start_soon(monitor())
    rng = np.random.default_rng(23)
    fmt = WeightFormat(p["formats"][0])
    M, K, N = p["rows"], 24, p["cols"]
    a = rng.integers(-128, 128, size=(M, K))
    q = random_weights(rng, fmt, (K, N))
    await check(tb, a, q, fmt=fmt)                          # loads the operands; RAW32
    await tb.run_expect_error(ErrorCode.BAD_SHAPE, m=0, k=4, n=4, fmt=0)
    fields = dict(m=M, k=K, n=N, fmt=int(fmt), group=GROUP_CODE[None],
                  out_mode=int(OutMode.RAW32))
    await tb.start(**fields)
    for length in range(1, p["watchdog"]):
        await RisingEdge(d.clk)
        await ReadOnly()
        if int(d.done.value):
            break
    await FallingEdge(d.clk)
    dones.clear()
    results = []
    for delay in range(length + 2):
        await tb.start(**fields)
        for _ in range(delay):
            await FallingEdge(d.clk)
        d.abort.value = 1
        await FallingEdge(d.clk)
        d.abort.value = 0
        for _ in range(p["watchdog"]):
            if dones:
                break
            await FallingEdge(d.clk)
        assert len(dones) == 1, f"abort {delay} cycles after start: {len(dones)} done pulses"
        results.append(dones.pop())
        for _ in range(4):                                   # and nothing more arrives
            await FallingEdge(d.clk)
        assert not dones and not int(d.busy.value), f"abort {delay} cycles after start"
    # aborted up to the cycle of the move to IDLE, finished after it: both occur, so the
    # sweep (every cycle) crossed that move
    first_ok = results.index(ErrorCode.OK)
    assert first_ok > 0 and results == ([ErrorCode.ABORTED] * first_ok
                                        + [ErrorCode.OK] * (len(results) - first_ok)), results
    await check(tb, a, q, fmt=fmt)                          # exact afterwards
    mon.cancel()
    assert mismatches == [], mismatches[:5]
    assert cycles[1] > length * (length + 2) // 2 and cycles[0] > 0
