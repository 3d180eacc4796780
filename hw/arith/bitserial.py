"""BitSerialMul: weight bit-serial multiplier, 1 or 2 weight bits per cycle."""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._common import check_int_param

__all__ = ["BitSerialMul"]


class BitSerialMul(wiring.Component):
    """Weight bit-serial multiplier (BitMoD-style): ``a * b`` over ``ceil(b_width / bits)`` cycles.

    Digits are consumed most significant first (Horner: ``acc = acc * 2**bits + d * a``), so
    the activation is never shifted and the accumulator is the only wide register. One bit
    per cycle: digits are the weight bits, the sign bit counted negative. Two bits per cycle:
    radix-4 Booth digits in {-2..2} (``0, a, 2a`` and a negation), as BitMoD does for INT.

    Parameters
    ----------
    a_width : int
        Activation width (signed), 2..16.
    b_width : int
        Weight width (signed), 1..8 (2..8 with ``bits=2``).
    bits : int
        Weight bits per cycle, 1 or 2.

    Attributes
    ----------
    CYCLES : int
        Cycles per operation (throughput: one ``start`` every CYCLES cycles).
    LATENCY : int
        ``CYCLES + 1``: from the cycle ``start`` is high to the cycle ``valid`` is.

    Members
    -------
    a : In(signed(a_width)), b : In(signed(b_width))
        Operands, sampled when ``start`` is high.
    start : In(1)
        Begin an operation. Allowed in the last cycle of the previous one (back to back);
        earlier, it abandons the running one.
    p : Out(signed(a_width + b_width))
        The product, valid while ``valid`` is high (one cycle).
    valid : Out(1)
    busy : Out(1)
    """

    def __init__(self, *, a_width: int = 8, b_width: int = 8, bits: int = 2):
        self.a_width = check_int_param("a_width", a_width, range(2, 17))
        self.bits = check_int_param("bits", bits, (1, 2))
        self.b_width = check_int_param("b_width", b_width, range(bits, 9))
        self.CYCLES = math.ceil(b_width / bits)
        self.LATENCY = self.CYCLES + 1
        super().__init__({
            "a": In(signed(a_width)), "b": In(signed(b_width)), "start": In(1),
            "p": Out(signed(a_width + b_width)), "valid": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        aw, nb, cyc = self.a_width, self.bits, self.CYCLES
        bw = cyc * nb
        areg = Signal(signed(aw))
        breg = Signal(bw)                       # remaining digits, MSB-aligned, zeros shifted in
        step = Signal(range(cyc + 1))           # 0 idle, k = processing digit k (1 = top)
        acc = Signal(signed(aw + self.b_width))
        valid = Signal()

        first = Signal()                        # processing the top digit: no accumulate
        # d * a as (sel ^ neg) + neg: the "+ neg" rides in the accumulator adder's carry-in,
        # so a step is ONE carry chain, not a negation chain followed by an adder.
        w = len(acc)
        if nb == 1:
            top = breg[bw - 1]
            sel = Mux(top, areg, 0)
            neg = top & first                   # the sign bit's digit has weight -1
        else:
            hi, mid = breg[bw - 1], breg[bw - 2]
            lo = breg[bw - 3] if bw >= 3 else Const(0, 1)
            one = mid ^ lo
            two = (hi & ~mid & ~lo) | (~hi & mid & lo)
            sel = Mux(two, areg << 1, Mux(one, areg, 0))
            neg = hi                            # window 111: magnitude 0, ~0 + 1 = 0
        inv = Signal(w)
        m.d.comb += inv.eq(sel.as_signed() ^ neg.replicate(w))
        base = Signal(w)
        m.d.comb += base.eq(Mux(first, 0, acc << nb))

        m.d.sync += valid.eq(0)
        with m.If(step != 0):
            m.d.sync += [
                acc.eq(base + inv + neg),
                breg.eq(breg << nb),
                step.eq(Mux(step == cyc, 0, step + 1)),
                first.eq(0),
                valid.eq(step == cyc),
            ]
        with m.If(self.start):
            m.d.sync += [areg.eq(self.a), breg.eq(self.b.as_signed()), step.eq(1), first.eq(1)]
        m.d.comb += [self.p.eq(acc), self.valid.eq(valid), self.busy.eq(step != 0)]
        return m
