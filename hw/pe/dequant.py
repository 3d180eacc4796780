"""Baseline for the MixPE comparison: a PE that dequantizes every weight before multiplying."""

from __future__ import annotations

from amaranth import Module, Signal, signed, unsigned, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sw.numerics import GSCALE_BITS, GZERO_BITS, EDGE_ACC_BITS

__all__ = ["DequantPE"]


class DequantPE(wiring.Component):
    """``acc += a * (gscale * (q - zero))``: the dequantize-then-multiply dataflow MixPE avoids.

    One INT8 activation and one INT4 weight code per cycle, with the weight's group scale and
    zero point travelling next to it; the dequantized weight is ``GSCALE_BITS + 5`` bits wide,
    so every MAC needs a 9 x 16 and an 8 x 21 bit multiplier and a 48-bit accumulator, against
    MixPE's shift-add chunks and integer group sums (dequantized once per group at the edge).
    Built only to compare costs (``python -m hw.bench pe``); exact, so
    ``acc == sw.numerics.group_dequant`` for one output.

    Members
    -------
    a : In(signed(8)), q : In(signed(4)), gscale : In(GSCALE_BITS), gzero : In(signed(8))
    valid, first : In(1)
    acc : Out(signed(EDGE_ACC_BITS))
    """

    LATENCY = 3

    def __init__(self):
        super().__init__({
            "a": In(signed(8)), "q": In(signed(4)), "gscale": In(unsigned(GSCALE_BITS)),
            "gzero": In(signed(GZERO_BITS)), "valid": In(1), "first": In(1),
            "acc": Out(signed(EDGE_ACC_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        w = Signal(signed(GSCALE_BITS + 10))
        a1 = Signal(signed(8)); v1 = Signal(); f1 = Signal()
        m.d.sync += [w.eq(self.gscale * (self.q - self.gzero)), a1.eq(self.a),
                     v1.eq(self.valid), f1.eq(self.first)]
        p = Signal(signed(GSCALE_BITS + 18))
        v2 = Signal(); f2 = Signal()
        m.d.sync += [p.eq(a1 * w), v2.eq(v1), f2.eq(f1)]
        with m.If(v2):
            m.d.sync += self.acc.eq(Mux(f2, 0, self.acc) + p)
        return m
