"""hw.systolic.util.fanout_delay: a delay line branching out into a tree of copies.

Every copy of several shapes (no delay, fewer registers than tree levels, a full tree with
shared registers before it, ragged groups) must carry the input exactly ``n`` cycles late,
checked on a random stream; and no register may feed more than ``radix`` copies.
"""

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from hw.systolic.util import fanout_delay, tree_levels


@pytest.mark.parametrize("n, copies", [
    (0, 1), (0, 16), (1, 1), (1, 4), (1, 16), (2, 16), (7, 16), (3, 6), (2, 3), (4, 2), (3, 17),
])
def test_every_copy_is_the_input_n_cycles_late(n, copies):
    rng = random.Random(n * 37 + copies)
    m = Module()
    x = Signal(8)
    outs = fanout_delay(m, x, n, copies, "f")
    assert len(outs) == copies
    stream = [rng.randrange(256) for _ in range(40)]

    async def bench(ctx):
        got = []
        for v in stream + [0] * n:
            ctx.set(x, v)
            if n == 0:                      # no register: the copies are the input
                got.append([ctx.get(o) for o in outs])
            else:
                await ctx.tick()
                got.append([ctx.get(o) for o in outs])
        # the value set before tick k + 1 is on every copy after tick k + n
        for k, v in enumerate(stream):
            assert got[k + max(n, 1) - 1] == [v] * copies, (k, v)

    sim = Simulator(m)
    if n:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("n, copies, radix", [(7, 16, 4), (2, 16, 4), (1, 16, 4), (3, 17, 4),
                                              (5, 64, 4), (3, 9, 2)])
def test_no_register_feeds_more_than_radix_copies(n, copies, radix):
    """The tree's registers each load from one parent; count children per parent and the
    copies each last-level register drives (more than ``radix`` only when the line has
    fewer registers than the tree has levels)."""
    m = Module()
    x = Signal(8)
    outs = fanout_delay(m, x, n, copies, "f", radix=radix)
    # each register's statement ``reg.eq(parent)``: count the registers loading from
    # each parent signal
    children = {}
    for stmt in m._statements.get("sync", []):
        parent = stmt.rhs.name
        children[parent] = children.get(parent, 0) + 1
    assert max(children.values()) <= radix, children
    distinct = len({id(o) for o in outs})
    levels = tree_levels(copies, radix)
    if n >= levels:                         # the whole tree: one register per copy
        assert distinct == copies
    else:                                   # its top n levels: the last one's size
        assert distinct == -(-copies // radix ** (levels - n))
    assert max(sum(o is p for o in outs) for p in outs) <= -(-copies // distinct)


def test_tree_copies_are_distinct_registers():
    m = Module()
    outs = fanout_delay(m, Signal(8), 3, 16, "f")
    assert len({id(o) for o in outs}) == 16
