"""BoothMul: radix-4 Booth partial products in a carry-save tree, optional carry-save MAC."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._common import check_bool, check_int_param, stage

__all__ = ["BoothMul", "booth_digits", "csa_reduce"]


def booth_digits(b, b_width: int):
    """Radix-4 Booth recoding of a signed ``b``: per digit ``(one, two, neg)`` control bits.

    digit_j = -2 b[2j+1] + b[2j] + b[2j-1] (b[-1] = 0). ``neg`` is simply b[2j+1]: for the
    all-ones window the magnitude is 0 and ``~0 + 1 = 0``, so no special case is needed.
    """
    bw = b_width + (b_width % 2)
    bits = [b[min(i, b_width - 1)] for i in range(bw)]
    out = []
    for j in range(bw // 2):
        lo = bits[2 * j - 1] if j else Const(0, 1)
        mid, hi = bits[2 * j], bits[2 * j + 1]
        out.append((mid ^ lo, (hi & ~mid & ~lo) | (~hi & mid & lo), hi))
    return out


def csa_reduce(m, rows, width: int, name: str):
    """3:2 carry-save compression of ``rows`` (width-bit, modulo 2**width) down to two rows."""
    rows = list(rows)
    n = 0
    while len(rows) > 2:
        nxt = []
        for j in range(0, len(rows) - 2, 3):
            x, y, z = rows[j:j + 3]
            s = Signal(width, name=f"{name}_s{n}")
            c = Signal(width, name=f"{name}_c{n}")
            m.d.comb += [s.eq(x ^ y ^ z), c.eq(((x & y) | (x & z) | (y & z)) << 1)]
            nxt += [s, c]
            n += 1
        nxt += rows[len(rows) - len(rows) % 3:]
        rows = nxt
    while len(rows) < 2:
        rows.append(Const(0, width))
    return rows


class BoothMul(wiring.Component):
    """Radix-4 Booth multiplier with a carry-save (3:2) reduction tree (TPE paper, technique 1).

    Each digit in {-2..2} selects ``0, a, 2a`` and inverts it for negative digits; the "+1"
    of those negations is a separate sparse row (bit 2j), so no adder is spent on it. With
    ``mac=True`` the accumulator is kept in carry-save form (``acc_sum``, ``acc_carry``) and
    fed back into the same tree, so a MAC step has no carry-propagate adder in its loop; the
    single carry-propagate add is on the ``acc`` output, ``(acc_sum + acc_carry) mod
    2**acc_width``.

    Parameters
    ----------
    a_width, b_width : int
        Signed operand widths, 2..16.
    mac : bool
        Multiply only (``p``) or multiply-accumulate.
    acc_width : int
        Accumulator width (mac only), at least ``a_width + b_width``; it wraps.
    pipeline : bool
        Register the product's carry-save pair (sum, carry) after the tree: in multiplier mode
        the carry-propagate add moves to the next cycle; in MAC mode the accumulator loop is
        then only a 4:2 compression (product pair + accumulator pair), two 3:2 levels.
    reg_in, reg_out : bool
        Operand registers; product register (multiplier mode only: a MAC's accumulator is its
        register).

    Attributes
    ----------
    LATENCY : int
        Multiplier: ``reg_in + pipeline + reg_out`` to ``p``. MAC: ``reg_in + pipeline + 1``
        from an operand pair to the accumulator that includes it.

    Members
    -------
    a : In(signed(a_width)), b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
        ``a * b`` (multiplier mode).
    en : In(1)
        MAC: accumulate this (registered, if ``reg_in``) operand pair.
    clr : In(1)
        MAC: with ``en``, start a new sum: ``acc = a*b`` instead of ``acc + a*b``.
    acc_sum, acc_carry : Out(acc_width)
        MAC: the redundant accumulator.
    acc : Out(signed(acc_width))
        MAC: ``acc_sum + acc_carry`` (wrapping), see ``sw.numerics.mac_wrap``.
    """

    def __init__(self, *, a_width: int = 8, b_width: int = 8, mac: bool = False,
                 acc_width: int = 32, pipeline: bool = True, reg_in: bool = True,
                 reg_out: bool = True):
        self.a_width = check_int_param("a_width", a_width, range(2, 17))
        self.b_width = check_int_param("b_width", b_width, range(2, 17))
        self.mac = check_bool("mac", mac)
        self.acc_width = check_int_param("acc_width", acc_width, range(a_width + b_width, 65))
        self.pipeline = check_bool("pipeline", pipeline)
        self.reg_in = check_bool("reg_in", reg_in)
        self.reg_out = check_bool("reg_out", reg_out)
        self.LATENCY = int(reg_in) + int(pipeline) + (1 if mac else int(reg_out))
        ports = {"a": In(signed(a_width)), "b": In(signed(b_width))}
        if mac:
            ports.update(en=In(1), clr=In(1), acc_sum=Out(acc_width), acc_carry=Out(acc_width),
                         acc=Out(signed(acc_width)))
        else:
            ports["p"] = Out(signed(a_width + b_width))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        aw = self.a_width
        width = self.acc_width if self.mac else aw + self.b_width
        a = stage(m, self.a, self.reg_in, "a_r")
        b = stage(m, self.b, self.reg_in, "b_r")
        rows = []
        hot = []
        for j, (one, two, neg) in enumerate(booth_digits(b, self.b_width)):
            mag = Signal(signed(aw + 1), name=f"mag{j}")
            m.d.comb += mag.eq(Mux(two, a << 1, Mux(one, a, 0)))
            pp = Signal(signed(aw + 1), name=f"pp{j}")
            m.d.comb += pp.eq(mag ^ neg.replicate(aw + 1))
            row = Signal(width, name=f"row{j}")
            m.d.comb += row.eq(pp << (2 * j))            # sign-extends to width
            rows.append(row)
            hot.append((neg, 2 * j))
        corr = Signal(width, name="hot")                 # the +1s of the negated rows
        m.d.comb += corr.eq(Cat(*[Cat(n, Const(0, 1)) for n, _ in hot]))
        rows.append(corr)

        ps, pc = csa_reduce(m, rows, width, "csa")
        ps = stage(m, ps, self.pipeline, "ps_r")
        pc = stage(m, pc, self.pipeline, "pc_r")
        if not self.mac:
            m.d.comb += self.p.eq(stage(m, (ps + pc)[:width], self.reg_out, "p_r"))
            return m

        en = stage(m, stage(m, self.en, self.reg_in, "en_r"), self.pipeline, "en_p")
        clr = stage(m, stage(m, self.clr, self.reg_in, "clr_r"), self.pipeline, "clr_p")
        acc_s = Signal(width)
        acc_c = Signal(width)
        keep = ~clr
        s, c = csa_reduce(m, [ps, pc, acc_s & keep.replicate(width),
                              acc_c & keep.replicate(width)], width, "acc")
        with m.If(en):
            m.d.sync += [acc_s.eq(s), acc_c.eq(c)]
        m.d.comb += [self.acc_sum.eq(acc_s), self.acc_carry.eq(acc_c),
                     self.acc.eq((acc_s + acc_c)[:width])]
        return m
