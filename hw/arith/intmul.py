"""Integer multipliers: IntMul (DSP or portable), ShiftAddMul, Pow2Mul, TernaryMul."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._common import check_bool, check_impl, check_int_param, fused_add, lut4, mult18x18d, stage, use_ecp5

__all__ = ["IntMul", "ShiftAddMul", "Pow2Mul", "TernaryMul"]


class IntMul(wiring.Component):
    """``a * b`` on one ECP5 MULT18X18D, or a portable ``*`` elsewhere.

    Parameters
    ----------
    a_width, b_width : int
        Operand widths, 1..18 (one MULT18X18D).
    a_signed, b_signed : bool
        Two's complement operands (default) or unsigned.
    reg_in, reg_out : bool
        Register the operands / the product. On ECP5 these are the DSP's own input and output
        registers, so they cost no fabric flip-flops.
    impl : "auto" | "generic" | "ecp5"
        "auto" instantiates MULT18X18D when elaborated for an ECP5 platform and a plain ``*``
        otherwise (simulators have no MULT18X18D model; both compute the same product).

    Attributes
    ----------
    LATENCY : int
        Cycles from ``a``/``b`` to ``p``: ``reg_in + reg_out``.

    Members
    -------
    a : In(a_width), b : In(b_width)
        Operands.
    p : Out(a_width + b_width)
        Exact product (signed if either operand is), see ``sw.numerics.int_mul``.
    """

    def __init__(self, *, a_width: int = 8, b_width: int = 8, a_signed: bool = True,
                 b_signed: bool = True, reg_in: bool = True, reg_out: bool = True,
                 impl: str = "auto"):
        self.a_width = check_int_param("a_width", a_width, range(1, 19))
        self.b_width = check_int_param("b_width", b_width, range(1, 19))
        self.a_signed = check_bool("a_signed", a_signed)
        self.b_signed = check_bool("b_signed", b_signed)
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.impl = check_impl(impl)
        self.LATENCY = int(reg_in) + int(reg_out)
        shp = signed if (a_signed or b_signed) else unsigned
        super().__init__({
            "a": In(signed(a_width) if a_signed else unsigned(a_width)),
            "b": In(signed(b_width) if b_signed else unsigned(b_width)),
            "p": Out(shp(a_width + b_width)),
        })

    def elaborate(self, platform):
        m = Module()
        if use_ecp5(self.impl, platform):
            p = mult18x18d(m, self.a, self.b, a_signed=self.a_signed, b_signed=self.b_signed,
                           reg_in=self.reg_in, reg_out=self.reg_out, name="mul")
            m.d.comb += self.p.eq(p[:len(self.p)])
        else:
            a = stage(m, self.a, self.reg_in, "a_r")
            b = stage(m, self.b, self.reg_in, "b_r")
            m.d.comb += self.p.eq(stage(m, a * b, self.reg_out, "p_r"))
        return m


class ShiftAddMul(wiring.Component):
    """MixPE-style INT8 x INTb product as a sum of shifted activations, no multiplier.

    ``a*q = sum_i q_i (a << i)`` with the sign bit's term subtracted. Rows are summed in
    pairs first, ``a*(q_2k + 2 q_2k+1)`` (the top pair ``a*(q_2k - 2 q_2k+1)``): on ECP5 each
    pair is one carry chain whose LUT4s also compute the second row's AND (and inversion, for
    the subtracted row), so a pair costs ``a_width`` AND LUTs plus one ``a_width + 2`` bit
    chain. The pairs are then added in a binary tree, optionally behind a pipeline register.

    Parameters
    ----------
    a_width : int
        Activation width (signed), 2..16.
    b_width : int
        Weight width (signed two's complement), even, 2..8.
    pipeline : bool or None
        Register the pair sums (one more cycle of latency) so the adder tree closes timing;
        default: only for ``b_width > 4``.
    reg_in, reg_out : bool
        Register the operands / the product.
    impl : "auto" | "generic" | "ecp5"
        Hand-mapped CCU2C chains ("ecp5") or plain operators ("generic"): same function.

    Attributes
    ----------
    LATENCY : int
        ``reg_in + pipeline + reg_out``.

    Members
    -------
    a : In(signed(a_width)), b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
        ``a * b`` exactly.
    """

    def __init__(self, *, a_width: int = 8, b_width: int = 4, pipeline: bool | None = None,
                 reg_in: bool = True, reg_out: bool = True, impl: str = "auto"):
        self.a_width = check_int_param("a_width", a_width, range(2, 17))
        self.b_width = check_int_param("b_width", b_width, (2, 4, 6, 8))
        if pipeline is None:
            pipeline = b_width > 4
        self.pipeline = check_bool("pipeline", pipeline)
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.impl = check_impl(impl)
        self.LATENCY = int(reg_in) + int(pipeline) + int(reg_out)
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "p": Out(signed(a_width + b_width)),
        })

    def elaborate(self, platform):
        m = Module()
        ecp5 = use_ecp5(self.impl, platform)
        aw = self.a_width
        a = stage(m, self.a, self.reg_in, "a_r")
        b = stage(m, self.b, self.reg_in, "b_r")

        def abit(i):  # sign extension of a
            return a[min(i, aw - 1)]

        pairs = []
        npairs = self.b_width // 2
        for k in range(npairs):
            w0, w1 = b[2 * k], b[2 * k + 1]
            sub = k == npairs - 1          # the sign bit's row is subtracted
            x = Signal(aw, name=f"row{2 * k}")
            m.d.comb += x.eq(a & w0.replicate(aw))
            bits = []
            for i in range(aw + 2):
                xi = x[min(i, aw - 1)]
                if i == 0:
                    bits.append(([xi], lambda A: A, (lambda A: 1) if sub else (lambda A: 0)))
                elif sub:
                    bits.append(([xi, abit(i - 1), w1], lambda A, B, C: A,
                                 lambda A, B, C: 1 ^ (B & C)))
                else:
                    bits.append(([xi, abit(i - 1), w1], lambda A, B, C: A,
                                 lambda A, B, C: B & C))
            s = fused_add(m, bits, cin=int(sub), ecp5=ecp5, name=f"pair{k}")
            pairs.append(stage(m, s, self.pipeline, f"pair{k}_r").as_signed())

        # binary tree over the pairs; weights 4**k. The low bits of the lighter operand pass
        # through, so each adder is only as wide as the overlap.
        terms = [(p, 2 * k) for k, p in enumerate(pairs)]
        while len(terms) > 1:
            nxt = []
            for j in range(0, len(terms), 2):
                if j + 1 == len(terms):
                    nxt.append(terms[j])
                    continue
                (lo, slo), (hi, shi) = terms[j], terms[j + 1]
                d = shi - slo
                s = Cat(lo[:d], (lo[d:].as_signed() + hi)[:len(self.p) - shi + 1]).as_signed()
                nxt.append((s, slo))
            terms = nxt
        m.d.comb += self.p.eq(stage(m, terms[0][0], self.reg_out, "p_r"))
        return m


class Pow2Mul(wiring.Component):
    """INT8 x +-2**e (DenseShift / ShiftAddViT weights): a log shifter and a conditional negate.

    The weight code is ``sign << e_bits | e`` (zero-free, ``sw.numerics.pow2_decode``).
    ``-(a << e) = ~(a << e) + 1``: the inversion is folded into the first shift stage (ones
    are shifted in when negative) and the last shift stage sits in the LUT4s of the carry
    chain that adds the ``+1``, so on ECP5 the negation costs no LUTs of its own.

    Parameters
    ----------
    a_width : int
        Activation width (signed), 2..16.
    e_bits : int
        Exponent field width, 1..3: ``e`` in ``0 .. 2**e_bits - 1``.
    reg_in, reg_out : bool
    impl : "auto" | "generic" | "ecp5"

    Attributes
    ----------
    LATENCY : int
        ``reg_in + reg_out``.

    Members
    -------
    a : In(signed(a_width))
    b : In(e_bits + 1)
        Weight code.
    p : Out(signed(a_width + 2**e_bits))
        ``a * (-1)**sign * 2**e`` exactly.
    """

    def __init__(self, *, a_width: int = 8, e_bits: int = 3, reg_in: bool = True,
                 reg_out: bool = True, impl: str = "auto"):
        self.a_width = check_int_param("a_width", a_width, range(2, 17))
        self.e_bits = check_int_param("e_bits", e_bits, range(1, 4))
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.impl = check_impl(impl)
        self.LATENCY = int(reg_in) + int(reg_out)
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(e_bits + 1),
            "p": Out(signed(a_width + (1 << e_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        aw = self.a_width
        a = stage(m, self.a, self.reg_in, "a_r")
        b = stage(m, self.b, self.reg_in, "b_r")
        s, e = b[self.e_bits], b[:self.e_bits]
        ecp5 = use_ecp5(self.impl, platform)
        mux = lambda S, X0, X1: (S & X1) | ((1 ^ S) & X0)          # noqa: E731
        # -(a << e) = ~((a ^ S) << e, filling with s) + s: invert first (folded into the
        # first shift stage's LUTs), shift in ones when negative, and let the last shift
        # stage's LUTs feed a carry chain whose carry-in is s. No separate negation adder.
        x = [lut4(m, [a[min(j, aw - 1)], a[j - 1] if j else s, e[0], s],
                  (lambda A, B, E, S: mux(E, A, B) ^ S) if j else (lambda A, B, E, S: mux(E, A ^ S, B)),
                  ecp5=ecp5, name=f"st0_{j}") for j in range(aw + 1)]
        for k in range(1, self.e_bits - 1):
            d = 1 << k
            x = [lut4(m, [x[min(j, len(x) - 1)], x[j - d] if j >= d else s, e[k]],
                      lambda X0, X1, E: mux(E, X0, X1), ecp5=ecp5, name=f"st{k}_{j}")
                 for j in range(len(x) + d)]
        w = len(self.p)
        if self.e_bits == 1:
            bits = [([x[min(j, len(x) - 1)]], lambda A: A, lambda A: 0) for j in range(w)]
        else:
            k = self.e_bits - 1
            d = 1 << k
            bits = [([e[k], Const(0, 1), x[min(j, len(x) - 1)], x[min(j - d, len(x) - 1)] if j >= d else s],
                     lambda E, _, X0, X1: mux(E, X0, X1), lambda E, _, X0, X1: 0)
                    for j in range(w)]
        x = fused_add(m, bits, cin=s, ecp5=ecp5, name="neg").as_signed()
        m.d.comb += self.p.eq(stage(m, x, self.reg_out, "p_r"))
        return m


class TernaryMul(wiring.Component):
    """INT8 x {-1, 0, +1}: ``(a ^ neg) & nz`` plus ``neg & nz`` as the carry-in.

    The weight is the 2-bit code of ``sw.numerics.ternary_decode`` (bit 0 nonzero, bit 1
    negative; 0b10 reads as zero). On ECP5 the masking and inversion live in the carry
    chain's LUT4s: ``a_width + 1`` chain bits plus one injection half.

    Parameters
    ----------
    a_width : int
        Activation width (signed), 2..16.
    reg_in, reg_out : bool
    impl : "auto" | "generic" | "ecp5"

    Attributes
    ----------
    LATENCY : int
        ``reg_in + reg_out``.

    Members
    -------
    a : In(signed(a_width))
    b : In(2)
        Ternary code.
    p : Out(signed(a_width + 1))
    """

    def __init__(self, *, a_width: int = 8, reg_in: bool = True, reg_out: bool = True,
                 impl: str = "auto"):
        self.a_width = check_int_param("a_width", a_width, range(2, 17))
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.impl = check_impl(impl)
        self.LATENCY = int(reg_in) + int(reg_out)
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(2),
            "p": Out(signed(a_width + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        aw = self.a_width
        a = stage(m, self.a, self.reg_in, "a_r")
        b = stage(m, self.b, self.reg_in, "b_r")
        nz, neg = b[0], b[1]
        cin = Signal()
        m.d.comb += cin.eq(nz & neg)
        bits = [([a[min(i, aw - 1)], neg, nz], lambda A, B, C: (A ^ B) & C, lambda A, B, C: 0)
                for i in range(aw + 1)]
        p = fused_add(m, bits, cin=cin, ecp5=use_ecp5(self.impl, platform), name="tern")
        m.d.comb += self.p.eq(stage(m, p.as_signed(), self.reg_out, "p_r"))
        return m
