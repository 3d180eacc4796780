"""hw.systolic.util.serial_mul_step: the core's bit-serial shape-check products.

The helper runs in the cycles ``bit`` = 0 .. ``len(y)`` after ``acc`` is cleared; the
product must then be ``x * y``. Checked exhaustively for 4-bit operands and on random and
extreme 16-bit ones (the core's DIM_BITS), each product from a cleared accumulator with
stale shift registers left by the product before it.
"""

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from hw.systolic.util import serial_mul_step


def _products(xw, yw, pairs):
    m = Module()
    x = Signal(xw); y = Signal(yw)
    acc = Signal(xw + yw + 1)
    bit = Signal(range(yw + 2))
    clear = Signal()
    with m.If(clear):
        m.d.sync += [acc.eq(0), bit.eq(0)]
    with m.Elif(bit <= yw):
        serial_mul_step(m, acc, x, y, bit, name="p")
        m.d.sync += bit.eq(bit + 1)
    got = []

    async def bench(ctx):
        for a, b in pairs:
            ctx.set(x, a); ctx.set(y, b); ctx.set(clear, 1)
            await ctx.tick()
            ctx.set(clear, 0)
            for _ in range(yw + 1):
                await ctx.tick()
            got.append(ctx.get(acc))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_serial_mul_exhaustive_4x4():
    pairs = [(a, b) for a in range(16) for b in range(16)]
    assert _products(4, 4, pairs) == [a * b for a, b in pairs]


@pytest.mark.parametrize("xw, yw", [(16, 16), (17, 16), (16, 5)])
def test_serial_mul_random_and_extremes(xw, yw):
    rng = random.Random(xw * 100 + yw)
    top_x, top_y = (1 << xw) - 1, (1 << yw) - 1
    pairs = [(top_x, top_y), (top_x, 1), (1, top_y), (0, top_y), (top_x, 0),
             (1 << (xw - 1), 1 << (yw - 1))]
    pairs += [(rng.randrange(1 << xw), rng.randrange(1 << yw)) for _ in range(60)]
    assert _products(xw, yw, pairs) == [a * b for a, b in pairs]
