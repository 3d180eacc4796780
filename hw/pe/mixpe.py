"""MixPE: INT8 activations x INT8 / INT4 / INT2 / ternary / power-of-two weights, chosen per
layer at run time, by shift and add (no multiplier)."""

from __future__ import annotations

from amaranth import Signal, signed, Mux, Cat, Const

from sw.numerics import WeightFormat

from .base import ProcessingElement, _register

__all__ = ["MixPE", "decode_weight_byte", "arrange_activations", "COMBINE"]

#: ``mode`` bits per format: bit 0 = chunk pairs combine with weight 4 (INT8, INT4, POW2),
#: bit 1 = the two halves combine with weight 16 (INT8, POW2)
COMBINE = {WeightFormat.INT8: 0b11, WeightFormat.POW2: 0b11, WeightFormat.INT4: 0b01,
           WeightFormat.INT2: 0b00, WeightFormat.TERNARY: 0b00}


def decode_weight_byte(m, fmt, byte, name="wdec"):
    """A W-buffer byte of format ``fmt`` -> (chunk byte, chunk-signed flags, mode).

    The MixPE datapath sees every weight byte as four 2-bit chunks ``c_k``, each unsigned
    (0..3) or signed (-2..1), with chunk products ``a * c_k`` combined by shifts. INT8 is one
    weight (chunk 3 signed), INT4 two (chunks 1, 3 signed), INT2 four (all signed). Ternary
    codes are INT2 codes except 0b10, which means 0. A power of two ``+-2**e`` is one nonzero
    chunk at position ``e // 2`` with value +-1 or +-2. Done once per column at the array's
    top edge, so the PEs never see a format.
    """
    chunks = Signal(8, name=f"{name}_c")
    sgn = Signal(4, name=f"{name}_s")
    mode = Signal(2, name=f"{name}_m")
    with m.Switch(fmt):
        with m.Case(WeightFormat.INT8):
            m.d.comb += [chunks.eq(byte), sgn.eq(0b1000)]
        with m.Case(WeightFormat.INT4):
            m.d.comb += [chunks.eq(byte), sgn.eq(0b1010)]
        with m.Case(WeightFormat.INT2):
            m.d.comb += [chunks.eq(byte), sgn.eq(0b1111)]
        with m.Case(WeightFormat.TERNARY):
            m.d.comb += [chunks.eq(Cat(*[Mux(byte[2 * k:2 * k + 2] == 0b10, 0, byte[2 * k:2 * k + 2])
                                         for k in range(4)])), sgn.eq(0b1111)]
        with m.Case(WeightFormat.POW2):
            s, e = byte[3], byte[:3]
            # +1 = 01, +2 = 10 (unsigned chunk), -1 = 11, -2 = 10 (signed chunk)
            val = Mux(e[0], Const(0b10, 2), Cat(Const(1, 1), s))
            m.d.comb += [chunks.eq(val << (e[1:3] * 2)), sgn.eq(Mux(s, Const(1, 4) << e[1:3], 0))]
    with m.Switch(fmt):
        for f, bits in COMBINE.items():
            with m.Case(f):
                m.d.comb += mode.eq(bits)
    return chunks, sgn, mode


def arrange_activations(m, fmt, word, lane_mask, name="xarr"):
    """One row's activations for a step -> the 32-bit ``x`` of its PEs (byte ``k`` feeds
    chunk ``k``): INT8 / POW2 ``(a0, a0, a0, a0)``, INT4 ``(a0, a0, a1, a1)``, INT2 / ternary
    ``(a0, a1, a2, a3)``. ``word`` holds the (up to) four activations of the step in its
    bytes; ``lane_mask`` zeroes activations beyond K."""
    a = [Mux(lane_mask[i], word[8 * i:8 * i + 8], 0) for i in range(4)]
    x = Signal(32, name=name)
    with m.Switch(fmt):
        with m.Case(WeightFormat.INT8, WeightFormat.POW2):
            m.d.comb += x.eq(Cat(a[0], a[0], a[0], a[0]))
        with m.Case(WeightFormat.INT4):
            m.d.comb += x.eq(Cat(a[0], a[0], a[1], a[1]))
        with m.Default():
            m.d.comb += x.eq(Cat(a[0], a[1], a[2], a[3]))
    return x


@_register("mixpe")
class MixPE(ProcessingElement):
    """MixPE-style processing element: 1, 2 or 4 MACs per cycle, by the weight format.

    Four chunk products ``p_k = x_k * c_k`` (``x_k`` byte ``k`` of ``x``, ``c_k`` 2-bit chunk
    ``k`` of the weight byte, unsigned or signed per ``wsgn``), each one shifted-add of the
    activation: ``(c0 ? x : 0) + (c1 ? +-2x : 0)``. Then ``s01 = p0 + p1 * 4**mode[0]``,
    ``s23`` likewise, and ``P = s01 + s23 * 16**mode[1]``: for INT8 that is
    ``a * (c0 + 4 c1 + 16 c2 + 64 c3)``, for INT4 ``a0 * w0 + a1 * w1``, for INT2
    ``sum_k a_k * w_k``. Exact, so the golden model is :func:`sw.numerics.mixgemm`.
    """

    X_WIDTH = 32
    PRODUCT_LATENCY = 2
    FORMATS = (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.INT2, WeightFormat.TERNARY,
               WeightFormat.POW2)

    def product(self, m, x, wb, wsgn, mode):
        ps = []
        for k in range(4):
            xk = x[8 * k:8 * k + 8].as_signed()
            c0, c1 = wb[2 * k], wb[2 * k + 1]
            # the top chunk bit weighs -2 when the chunk is signed: ~(2x) + 1 = -2x
            neg = c1 & wsgn[k]
            x2 = Signal(signed(10), name=f"x2_{k}")
            m.d.comb += x2.eq(Mux(c1, Cat(Const(0, 1), xk).as_signed(), 0))
            t1 = x2.as_unsigned() ^ neg.replicate(10)
            p = Signal(signed(10), name=f"p{k}", reset_less=True)
            m.d.sync += p.eq(Mux(c0, xk, 0) + t1.as_signed() + neg)
            ps.append(p)
        s01 = ps[0] + Mux(mode[0], ps[1] << 2, ps[1])
        s23 = ps[2] + Mux(mode[0], ps[3] << 2, ps[3])
        P = Signal(signed(17), name="psum", reset_less=True)
        m.d.sync += P.eq(s01 + Mux(mode[1], s23 << 4, s23))
        return P
