"""Minifloat multipliers: FpMul (exact) and LMul (L-Mul, one integer adder)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sw.numerics import FpFormat, Minifloat, Special, fp_mul_frac_bits, lmul_l

from ._common import check_bool, stage

__all__ = ["FpMul", "LMul"]

OUTPUTS = ("fields", "fixed")


def _fmt(name: str, fmt) -> Minifloat:
    if isinstance(fmt, FpFormat):
        return fmt.value
    if isinstance(fmt, Minifloat):
        return fmt
    raise TypeError(f"{name} must be an sw.numerics.FpFormat or Minifloat, not {fmt!r}")


def _decode(m, code, f: Minifloat, name: str):
    """sign, exp field, mant field, nan, inf, zero-exponent of ``code``."""
    sgn = code[f.e + f.m]
    ef = code[f.m:f.m + f.e]
    mf = code[:f.m]
    top = ef == (1 << f.e) - 1
    if f.special is Special.IEEE:
        nan, inf = top & (mf != 0), top & (mf == 0)
    elif f.special is Special.FN:
        nan, inf = top & (mf == (1 << f.m) - 1), Const(0, 1)
    else:
        nan, inf = Const(0, 1), Const(0, 1)
    return sgn, ef, mf, nan, inf, ef == 0


class FpMul(wiring.Component):
    """Exact minifloat multiplier, the baseline L-Mul is measured against.

    Multiplies the significands (hidden bit from ``exp != 0``) and adds the effective exponent
    fields; nothing is rounded, so the product is exact (``sw.numerics.fp_mul_exact``). With
    ``output="fixed"`` a shifter turns it into the signed fixed-point integer a wide FP
    accumulator adds (``sw.numerics.fp_mul_fixed``).

    Parameters
    ----------
    fmt_a, fmt_b : sw.numerics.FpFormat or Minifloat
        Operand formats; ``fmt_b`` defaults to ``fmt_a`` (E4M3, E5M2, or E2M1 x E4M3 ...).
    output : "fields" | "fixed"
    pipeline : bool or None
        "fixed" only: register the fields before the alignment shifter and the shifted
        magnitude before the negation (2 more cycles); default on for "fixed".
    reg_in, reg_out : bool

    Attributes
    ----------
    LATENCY : int
        ``reg_in + reg_out`` (+ 2 for a pipelined "fixed" output).
    FRAC_BITS : int
        Fraction bits of ``p`` in fixed mode.

    Members
    -------
    a : In(fmt_a.width), b : In(fmt_b.width)
        Codes.
    sign : Out(1), exp : Out(max(e_a, e_b) + 1), mant : Out(m_a + m_b + 2)
        ``value = (-1)**sign * mant * 2**(exp - bias_a - bias_b - m_a - m_b)`` ("fields" only).
    p : Out(signed(...))
        ``value * 2**FRAC_BITS`` ("fixed" only).
    nan, inf : Out(1)
        NaN (NaN operand, inf x 0) / infinite product; ``exp``, ``mant``, ``p`` are then raw.
    """

    def __init__(self, *, fmt_a=FpFormat.E4M3, fmt_b=None, output: str = "fields",
                 pipeline: bool | None = None, reg_in: bool = True, reg_out: bool = True):
        self.fmt_a = _fmt("fmt_a", fmt_a)
        self.fmt_b = self.fmt_a if fmt_b is None else _fmt("fmt_b", fmt_b)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS!r}, not {output!r}")
        self.output = output
        if pipeline is None:
            pipeline = output == "fixed"
        self.pipeline = check_bool("pipeline", pipeline)
        if pipeline and output != "fixed":
            raise ValueError(f"pipeline applies to output='fixed' only, not {output!r}")
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.LATENCY = int(reg_in) + int(reg_out) + 2 * int(pipeline)
        fa, fb = self.fmt_a, self.fmt_b
        self.FRAC_BITS = fp_mul_frac_bits(fa, fb)
        self._exp_w = max(fa.e, fb.e) + 1
        self._mant_w = fa.m + fb.m + 2
        ports = {"a": In(fa.width), "b": In(fb.width), "nan": Out(1), "inf": Out(1)}
        if output == "fields":
            ports.update(sign=Out(1), exp=Out(self._exp_w), mant=Out(self._mant_w))
        else:
            max_shift = ((1 << fa.e) - 1) + ((1 << fb.e) - 1) - 2   # raw fields, specials too
            ports["p"] = Out(signed(self._mant_w + max_shift + 1))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        fa, fb = self.fmt_a, self.fmt_b
        a = stage(m, self.a, self.reg_in, "a_r")
        b = stage(m, self.b, self.reg_in, "b_r")
        sa, ea, ma, nana, infa, za_e = _decode(m, a, fa, "a")
        sb, eb, mb, nanb, infb, zb_e = _decode(m, b, fb, "b")
        siga = Cat(ma, ~za_e)
        sigb = Cat(mb, ~zb_e)
        sign = Signal()
        exp = Signal(self._exp_w)
        mant = Signal(self._mant_w)
        nan, inf = Signal(), Signal()
        # A subnormal's effective exponent is 1, same as the smallest normal: OR-ing the
        # "exp == 0" flag into bit 0 gives that without a mux.
        m.d.comb += [
            sign.eq(sa ^ sb),
            exp.eq((ea | za_e) + (eb | zb_e)),
            mant.eq(siga * sigb),
        ]
        zero_a = za_e & (ma == 0)
        zero_b = zb_e & (mb == 0)
        m.d.comb += [
            nan.eq(nana | nanb | (infa & zero_b) | (infb & zero_a)),
            inf.eq((infa | infb) & ~nan),
        ]
        if self.pipeline:                 # the flags keep pace with the two extra stages
            nan = stage(m, stage(m, nan, True, "nan_p1"), True, "nan_p2")
            inf = stage(m, stage(m, inf, True, "inf_p1"), True, "inf_p2")
        m.d.comb += [self.nan.eq(stage(m, nan, self.reg_out, "nan_r")),
                     self.inf.eq(stage(m, inf, self.reg_out, "inf_r"))]
        if self.output == "fields":
            m.d.comb += [self.sign.eq(stage(m, sign, self.reg_out, "sign_r")),
                         self.exp.eq(stage(m, exp, self.reg_out, "exp_r")),
                         self.mant.eq(stage(m, mant, self.reg_out, "mant_r"))]
        else:
            p = self.pipeline
            sign, exp, mant = (stage(m, v, p, f"{n}_p1") for v, n in
                               ((sign, "sign"), (exp, "exp"), (mant, "mant")))
            sh = Signal(self._exp_w)
            mag = Signal(len(self.p))
            m.d.comb += [sh.eq(exp - 2), mag.eq(mant << sh)]
            mag, sign = stage(m, mag, p, "mag_p2"), stage(m, sign, p, "sign_p2")
            # conditional negate as (mag ^ S) + s: one carry chain, the +s as its carry-in
            neg = (mag ^ sign.replicate(len(mag))) + sign
            m.d.comb += self.p.eq(stage(m, neg[:len(self.p)].as_signed(), self.reg_out, "p_r"))
        return m


class LMul(wiring.Component):
    """L-Mul ("Addition is All You Need"): one integer adder over the exponent|mantissa fields.

    ``s = (Ea<<m | Ma) + (Eb<<m | Mb) - (bias<<m) + 2**(m - l(m))``; the mantissa carry
    ripples into the exponent, sign is the XOR. Zero/subnormal operands and underflow give a
    signed zero, overflow the largest finite code; NaN (and, for IEEE formats, inf) follow
    ``sw.numerics.lmul``, the golden model.

    For ``m <= 3`` the offset ``2**(m-l)`` is 1, which rides in as the adder's carry-in, and
    ``bias<<m`` has zero low bits, so it only touches the exponent part: the adder sees two
    operands, and under/overflow are comparisons of its output against constants.

    Parameters
    ----------
    fmt : sw.numerics.FpFormat or Minifloat
        Any (e, m): E4M3, E5M2, E3M2, E2M1, BF16 or a custom ``minifloat(e, m)``.
    reg_in, reg_out : bool

    Attributes
    ----------
    LATENCY : int
        ``reg_in + reg_out``.

    Members
    -------
    a, b : In(fmt.width)
        Codes.
    p : Out(fmt.width)
        Code of the L-Mul product.
    """

    def __init__(self, *, fmt=FpFormat.E4M3, reg_in: bool = True, reg_out: bool = True):
        self.fmt = _fmt("fmt", fmt)
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.LATENCY = int(reg_in) + int(reg_out)
        w = self.fmt.width
        super().__init__({"a": In(w), "b": In(w), "p": Out(w)})

    def elaborate(self, platform):
        m = Module()
        f = self.fmt
        em = f.e + f.m
        a = stage(m, self.a, self.reg_in, "a_r")
        b = stage(m, self.b, self.reg_in, "b_r")
        sa, ea, _, nana, infa, za = _decode(m, a, f, "a")
        sb, eb, _, nanb, infb, zb = _decode(m, b, f, "b")
        off = 1 << (f.m - lmul_l(f.m))
        # t = magnitude sum + offset (em + 1 bits); s = t - (bias << m) only in comparisons
        # and in the exponent bits of the result.
        t = Signal(em + 1)
        if off == 1:
            m.d.comb += t.eq(a[:em] + b[:em] + 1)
        else:
            m.d.comb += t.eq(a[:em] + b[:em] + off)
        # Everything after the adder is a function of the exponent part t[m:] (e+1 bits) plus,
        # at the saturation boundary, the mantissa bits: the "- bias", the underflow test
        # (s < 2**m) and the overflow test (s > max code). Written as one truth table over
        # t[m:] for small e, so Yosys builds LUT logic that ABC merges with the selection
        # below, instead of a second carry chain and two comparator chains.
        hi = f.max_code + (f.bias << f.m)             # s > max  <=>  t > hi
        res_e = Signal(f.e)
        under = Signal()                              # s < 2**m
        over_e = Signal()                             # exponent part alone says overflow
        at_e = Signal()                               # exponent part equals hi's
        if f.e <= 5:
            with m.Switch(t[f.m:]):
                for v in range(1 << (f.e + 1)):
                    with m.Case(v):
                        m.d.comb += [res_e.eq((v - f.bias) % (1 << f.e)),
                                     under.eq(v < f.bias + 1),
                                     over_e.eq(v > hi >> f.m), at_e.eq(v == hi >> f.m)]
            over = over_e | (at_e & (t[:f.m] > (hi & ((1 << f.m) - 1))))
        else:                                         # wide exponents (BF16): plain arithmetic
            m.d.comb += [res_e.eq(t[f.m:] - f.bias), under.eq(t < (f.bias + 1) << f.m)]
            over = t > hi
        mag = Signal(em)
        with m.If(za | zb | under):
            m.d.comb += mag.eq(0)
        with m.Elif(over):
            m.d.comb += mag.eq(f.max_code)
        with m.Else():
            m.d.comb += mag.eq(Cat(t[:f.m], res_e))
        sign = sa ^ sb
        out = Signal(f.width)
        m.d.comb += out.eq(Cat(mag, sign))
        if f.special is Special.IEEE:
            nan = nana | nanb | (infa & zb) | (infb & za)
            with m.If(nan):
                m.d.comb += out.eq(f.nan_code)
            with m.Elif(infa | infb):
                m.d.comb += out.eq(Cat(Const(f.inf_code, em), sign))
        elif f.special is Special.FN:
            with m.If(nana | nanb):
                m.d.comb += out.eq(f.nan_code)
        m.d.comb += self.p.eq(stage(m, out, self.reg_out, "p_r"))
        return m
