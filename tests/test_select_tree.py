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


@pytest.mark.parametrize("n, radix, sel_bits", [
    (16, 4, 4), (256, 4, 8), (11, 4, 4), (5, 2, 3), (1, 4, 2), (8, 4, 3), (6, 8, 4),
])
def test_select_tree_picks_every_input(n, radix, sel_bits):
    rng = random.Random(n * 131 + radix)
    values = [rng.randrange(256) for _ in range(n)]
    m = Module()
    ins = [Signal(8, name=f"in{i}") for i in range(n)]
    sel = Signal(sel_bits)
    out = select_tree(m, ins, sel, name="t", radix=radix)
    lat = tree_levels(n, radix)
    sels = list(range(1 << sel_bits)) * 2
    rng.shuffle(sels)

    def want(s):
        return values[s] if s < n else 0

    async def bench(ctx):
        for i, v in enumerate(values):
            ctx.set(ins[i], v)
        if lat == 0:                        # one input: no register, passed through
            for s in sels:
                ctx.set(sel, s)
                assert ctx.get(out) == want(s), s
            return
        got = []
        for k in range(len(sels) + lat):
            ctx.set(sel, sels[k] if k < len(sels) else 0)
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
