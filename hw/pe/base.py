"""The processing-element interface shared by every PE kind, and the accumulate/drain half."""

from __future__ import annotations

from amaranth import Module, Signal, signed, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith._common import use_ecp5
from hw.systolic.util import register
from sw.numerics import WeightFormat

__all__ = ["ProcessingElement", "pe_signature", "PE_KINDS", "pe_class", "pe_formats"]

#: activations per row and cycle (INT2 / ternary weights: four MACs per PE and cycle)
LANES = 4


def pe_signature(*, x_width: int, acc_width: int) -> wiring.Signature:
    """Ports of a processing element (the array wires every kind the same way).

    ``x`` carries ``x_width // 8`` INT8 activations, arranged per weight chunk by the row's
    feeder (see :class:`~hw.pe.mixpe.MixPE`); ``wb`` one weight byte, ``wsgn`` which 2-bit
    chunks of it are signed, ``mode`` how chunk products combine. Everything but the drain
    chain moves on to the right / bottom neighbour through a register.
    """
    return wiring.Signature({
        "x": In(x_width), "wb": In(8), "wsgn": In(4), "mode": In(2),
        "valid": In(1), "first": In(1), "last": In(1),
        "x_out": Out(x_width), "wb_out": Out(8), "wsgn_out": Out(4), "mode_out": Out(2),
        "valid_out": Out(1), "first_out": Out(1), "last_out": Out(1),
        "shift_in": In(signed(acc_width)), "shift_en": In(1), "drain_first": In(1),
        "shadow": Out(signed(acc_width)), "captured": Out(1),
    })


class ProcessingElement(wiring.Component):
    """Output-stationary PE: ``acc += product(x, wb)`` per valid cycle, a drain-chain cell.

    Subclasses implement :meth:`product`, a pipelined function of the registered inputs.
    At a tile's (or group's) ``last`` operand the finished sum is copied into ``shadow``,
    a cell of its row's drain chain, and the accumulator restarts with the next ``first``
    at once. The chain shifts towards the row's right end while ``shift_en`` is high, except
    into a cell marked *fresh*: a cell that has already captured the next sum (the capture
    wave runs along the row one cell per cycle, just ahead of the shift) keeps it. The
    marks clear in the drain's first cycle (``drain_first``). So a row drains one group
    while its left part already holds the next, and groups may follow each other every
    ``cols`` cycles.

    Parameters
    ----------
    acc_width : int
        Accumulator / chain width.
    impl : "auto" | "generic" | "ecp5"
        Multiplier implementation where the kind uses one.
    """

    #: activation bits per row (subclass)
    X_WIDTH = 32
    #: cycles of :meth:`product`
    PRODUCT_LATENCY = 1
    #: weight formats this kind computes (subclass)
    FORMATS = ()

    def __init__(self, *, acc_width: int, impl: str = "auto"):
        if not isinstance(acc_width, int) or not 16 <= acc_width <= 48:
            raise ValueError(f"acc_width must be an int in [16, 48], not {acc_width!r}")
        self.acc_width = acc_width
        self.impl = impl
        #: cycles from operands at the inputs to the finished sum in ``shadow``
        self.LATENCY = self.latency()
        super().__init__(pe_signature(x_width=self.X_WIDTH, acc_width=acc_width))

    @classmethod
    def latency(cls) -> int:
        """Cycles from operands at the inputs to the finished sum in ``shadow``."""
        return 1 + cls.PRODUCT_LATENCY + 1

    def product(self, m, x, wb, wsgn, mode):
        """Return the product sum of one cycle's (registered) operands, ``PRODUCT_LATENCY``
        cycles later, as a signed value."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        self.platform = platform
        # operand registers double as the hop to the neighbours
        x_r = Signal(self.X_WIDTH, reset_less=True)
        wb_r = Signal(8, reset_less=True)
        wsgn_r = Signal(4, reset_less=True)
        m.d.sync += [x_r.eq(self.x), wb_r.eq(self.wb), wsgn_r.eq(self.wsgn)]
        # mode and the flags are the same on a whole anti-diagonal of the array: registers
        # of the PE's own, or Yosys merges them into one that drives PEs far apart
        apart = use_ecp5(self.impl, platform)
        mode_r = register(m, self.mode, "mode_r", reset_less=True, apart=apart)
        v_r = register(m, self.valid, "v_r", apart=apart)
        f_r = register(m, self.first & self.valid, "f_r", apart=apart)
        l_r = register(m, self.last & self.valid, "l_r", apart=apart)
        m.d.comb += [self.x_out.eq(x_r), self.wb_out.eq(wb_r), self.wsgn_out.eq(wsgn_r),
                     self.mode_out.eq(mode_r), self.valid_out.eq(v_r), self.first_out.eq(f_r),
                     self.last_out.eq(l_r)]
        prod = self.product(m, x_r, wb_r, wsgn_r, mode_r)
        p_valid, p_first, p_last = v_r, f_r, l_r
        for k in range(self.PRODUCT_LATENCY):
            p_valid = register(m, p_valid, f"v{k}", apart=apart)
            p_first = register(m, p_first, f"f{k}", apart=apart)
            p_last = register(m, p_last, f"l{k}", apart=apart)
        # data registers carry no reset: only flags must be clean after reset
        acc = Signal(signed(self.acc_width), reset_less=True)
        shadow = Signal(signed(self.acc_width), reset_less=True)
        fresh = Signal()
        m.d.comb += self.shadow.eq(shadow)
        total = Mux(p_first, 0, acc) + prod
        cap = p_valid & p_last
        with m.If(p_valid):
            m.d.sync += acc.eq(total)
        m.d.sync += self.captured.eq(cap)
        with m.If(cap):
            m.d.sync += [shadow.eq(total), fresh.eq(1)]
        with m.Else():
            with m.If(self.shift_en & (~fresh | self.drain_first)):
                m.d.sync += shadow.eq(self.shift_in)
            with m.If(self.drain_first):
                m.d.sync += fresh.eq(0)
        return m


PE_KINDS = {}


def _register(name):
    def deco(cls):
        PE_KINDS[name] = cls
        return cls
    return deco


def pe_class(kind: str):
    """The :class:`ProcessingElement` subclass of a PE kind name (``"mixpe"``, ``"int8-dsp"``)."""
    from . import mixpe, int8dsp  # noqa: F401  (registers the kinds)
    if kind not in PE_KINDS:
        raise ValueError(f"unknown PE kind {kind!r}; expected one of {sorted(PE_KINDS)}")
    return PE_KINDS[kind]


def pe_formats(kind: str) -> tuple[WeightFormat, ...]:
    """Weight formats a PE kind computes."""
    return pe_class(kind).FORMATS
