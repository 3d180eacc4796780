"""Output-stationary INT8 processing element."""

from amaranth import Module, Signal, signed, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith._common import check_impl
from hw.arith.intmul import IntMul

__all__ = ["PE"]


class PE(wiring.Component):
    """One multiply-accumulate cell of the output-stationary systolic array.

    Activations (with their control flags) move right, weights move down, one hop per cycle.
    The multiplier is an :class:`~hw.arith.intmul.IntMul` with input and output registers (on
    ECP5 the MULT18X18D's own), and its product is registered once more in the fabric before
    it is accumulated: with 128 PEs the DSP columns sit far from the PE's logic, and each of
    these routes needs a cycle of its own to close 100 MHz. When the last
    product of a tile arrives, the finished sum is copied into the ``shadow`` register, which
    is part of the array's drain shift chain; the accumulator restarts at once, so tiles
    follow each other without a gap.

    Parameters
    ----------
    acc_width : int
        Accumulator width in bits (see :func:`sw.numerics.acc_bits`).
    impl : "auto" | "generic" | "ecp5"
        Multiplier implementation (see :class:`~hw.arith.intmul.IntMul`); "ecp5" instantiates
        MULT18X18D even outside an ECP5 build, for simulation with its behavioural model.

    Members
    -------
    a, w : In(signed(8))
        Operands from the left / top neighbour.
    valid, first, last : In(1)
        ``a`` is meaningful / first of a tile / last of a tile.
    a_out, w_out, valid_out, first_out, last_out : Out
        The same, registered, to the right / bottom neighbour.
    shift_in : In(signed(acc_width))
        Drain chain input (previous PE's ``shadow``).
    shift_en : In(1)
        Shift the drain chain by one.
    shadow : Out(signed(acc_width))
        Finished tile sum (drain chain output).
    captured : Out(1)
        Pulses when ``shadow`` was just loaded with a finished sum.
    """

    #: cycles from operands at the inputs to the sum being visible in ``shadow``
    LATENCY = 4

    def __init__(self, *, acc_width: int, impl: str = "auto"):
        if not isinstance(acc_width, int) or not 16 <= acc_width <= 48:
            raise ValueError(f"acc_width must be an int in [16, 48], not {acc_width!r}")
        self.acc_width = acc_width
        self.impl = check_impl(impl)
        super().__init__({
            "a": In(signed(8)), "w": In(signed(8)),
            "valid": In(1), "first": In(1), "last": In(1),
            "a_out": Out(signed(8)), "w_out": Out(signed(8)),
            "valid_out": Out(1), "first_out": Out(1), "last_out": Out(1),
            "shift_in": In(signed(acc_width)), "shift_en": In(1),
            "shadow": Out(signed(acc_width)), "captured": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        a_r = Signal(signed(8), reset_less=True)
        w_r = Signal(signed(8), reset_less=True)
        m.d.sync += [a_r.eq(self.a), w_r.eq(self.w)]
        m.d.comb += [self.a_out.eq(a_r), self.w_out.eq(w_r)]
        m.d.sync += [
            self.valid_out.eq(self.valid), self.first_out.eq(self.first & self.valid),
            self.last_out.eq(self.last & self.valid),
        ]
        # stages 1-2: the DSP's input and output registers; stage 3: fabric register
        m.submodules.mul = mul = IntMul(a_width=8, b_width=8, reg_in=True, reg_out=True,
                                         impl=self.impl)
        m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.w)]
        # data registers carry no reset: only the flags must be clean after reset, and a
        # reset net reaching every datapath flip-flop was the 85F's slowest route
        prod = Signal(signed(16), reset_less=True)
        m.d.sync += prod.eq(mul.p)
        p_valid, p_first, p_last = self.valid, self.first & self.valid, self.last & self.valid
        for k in range(mul.LATENCY + 1):
            nv, nf, nl = Signal(name=f"v{k}"), Signal(name=f"f{k}"), Signal(name=f"l{k}")
            m.d.sync += [nv.eq(p_valid), nf.eq(p_first), nl.eq(p_last)]
            p_valid, p_first, p_last = nv, nf, nl
        # stage 4: accumulate; a tile's first product restarts the sum
        acc = Signal(signed(self.acc_width), reset_less=True)
        shadow = Signal(signed(self.acc_width), reset_less=True)
        m.d.comb += self.shadow.eq(shadow)
        total = Mux(p_first, 0, acc) + prod
        with m.If(p_valid):
            m.d.sync += acc.eq(total)
        m.d.sync += self.captured.eq(p_valid & p_last)
        with m.If(p_valid & p_last):
            m.d.sync += shadow.eq(total)
        with m.Elif(self.shift_en):
            m.d.sync += shadow.eq(self.shift_in)
        return m
