"""hw.systolic.util.select_tree: the registered mux tree of the core's host reads.

Every select value of several tree shapes (a full tree, ragged last groups, one input, a
select wider and narrower than the tree needs), one select per cycle back to back, checked
``tree_levels`` cycles later against plain indexing (0 past the end).
"""

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from hw.systolic.util import select_tree, tree_levels


@pytest.mark.parametrize("n, radix, sel_bits, copies", [
    (16, 4, 4, 1), (256, 4, 8, 1), (11, 4, 4, 1), (5, 2, 3, 1), (1, 4, 2, 1), (8, 4, 3, 1),
    (6, 8, 4, 1),
    # the select given as copies, one per block of first-level muxes (the DSPW read)
    (256, 4, 8, 16), (16, 4, 4, 4), (11, 4, 4, 3), (6, 8, 4, 2), (1, 4, 2, 2),
])
def test_select_tree_picks_every_input(n, radix, sel_bits, copies):
    rng = random.Random(n * 131 + radix + copies)
    values = [rng.randrange(256) for _ in range(n)]
    m = Module()
    ins = [Signal(8, name=f"in{i}") for i in range(n)]
    sels_in = [Signal(sel_bits, name=f"sel{k}") for k in range(copies)]
    out = select_tree(m, ins, sels_in if copies > 1 else sels_in[0], name="t", radix=radix)
    lat = tree_levels(n, radix)
    sels = list(range(1 << sel_bits)) * 2
    rng.shuffle(sels)

    def want(s):
        return values[s] if s < n else 0

    def set_sel(ctx, s):
        for c in sels_in:
            ctx.set(c, s)

    async def bench(ctx):
        for i, v in enumerate(values):
            ctx.set(ins[i], v)
        if lat == 0:                        # one input: no register, passed through
            for s in sels:
                set_sel(ctx, s)
                assert ctx.get(out) == want(s), s
            return
        got = []
        for k in range(len(sels) + lat):
            set_sel(ctx, sels[k] if k < len(sels) else 0)
            await ctx.tick()
            got.append(ctx.get(out))
        # the select set before tick k + 1 shows its input after tick k + lat
        for k, s in enumerate(sels):
            assert got[k + lat - 1] == want(s), (k, s)

    sim = Simulator(m)
    if lat:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_tree_levels():
    assert [tree_levels(n) for n in (1, 2, 4, 5, 16, 17, 64, 256)] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert tree_levels(8, 2) == 3


def test_select_tree_rejects_bad_radix():
    with pytest.raises(ValueError, match="radix"):
        select_tree(Module(), [Signal(8)], Signal(2), name="t", radix=3)


def test_each_select_copy_serves_its_own_block():
    """With 4 copies over 16 inputs (radix 4), copy k alone selects within inputs 4k..4k+3:
    a wrong value in copy k changes what those inputs read and nothing else."""
    n, copies = 16, 4
    m = Module()
    ins = [Signal(8, name=f"in{i}") for i in range(n)]
    sels_in = [Signal(4, name=f"sel{k}") for k in range(copies)]
    out = select_tree(m, ins, sels_in, name="t")
    lat = tree_levels(n)

    async def bench(ctx):
        for i in range(n):
            ctx.set(ins[i], 100 + i)
        for bad in range(copies):
            for s in range(n):
                for k, c in enumerate(sels_in):
                    # the wrong copy points at the next input of the same block
                    ctx.set(c, s ^ 1 if k == bad else s)
                await ctx.tick().repeat(lat)
                want = 100 + (s ^ 1 if s // 4 == bad else s)
                assert ctx.get(out) == want, (bad, s)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_select_tree_rejects_copies_of_different_widths():
    with pytest.raises(ValueError, match="differ in width"):
        select_tree(Module(), [Signal(8)] * 4, [Signal(2), Signal(3)], name="t")
