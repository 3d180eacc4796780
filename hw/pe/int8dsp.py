"""INT8 x INT8 processing element on one MULT18X18D."""

from __future__ import annotations

from amaranth import Signal, signed

from hw.arith.intmul import IntMul
from sw.numerics import WeightFormat

from .base import ProcessingElement, _register

__all__ = ["Int8DspPE"]


@_register("int8-dsp")
class Int8DspPE(ProcessingElement):
    """One INT8 MAC per cycle on an :class:`~hw.arith.intmul.IntMul` (on ECP5 a MULT18X18D
    with its input and output registers), its product registered once more in the fabric:
    with a hundred PEs the DSP columns sit far from the PE's logic."""

    X_WIDTH = 8
    FORMATS = (WeightFormat.INT8,)
    #: DSP input and output registers, then a fabric register
    PRODUCT_LATENCY = 3

    def product(self, m, x, wb, wsgn, mode):
        m.submodules.mul = mul = IntMul(a_width=8, b_width=8, reg_in=True, reg_out=True,
                                         impl=self.impl)
        assert mul.LATENCY + 1 == self.PRODUCT_LATENCY
        m.d.comb += [mul.a.eq(x[:8].as_signed()), mul.b.eq(wb.as_signed())]
        p = Signal(signed(16), reset_less=True, name="prod")
        m.d.sync += p.eq(mul.p)
        return p
