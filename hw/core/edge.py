"""Epilogue of one array row: group dequantization, accumulation over groups, bias,
per-channel requantization, and the write into the row's output bank."""

from __future__ import annotations

from amaranth import Module, Signal, signed, unsigned, Mux, Cat, Const
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.arith._common import use_ecp5
from hw.arith.intmul import IntMul
from hw.systolic.util import delay, register
from sw.numerics import OutMode, EDGE_ACC_BITS, REQUANT_MULT_BITS, GSCALE_BITS

from .desc import TABLE_LAYOUT

__all__ = ["EdgeUnit"]

#: latency of the IntMuls below (input and output registers: the DSP's own on ECP5)
MUL_LATENCY = 2


class EdgeUnit(wiring.Component):
    """Row ``row``'s epilogue: takes the row's drained sums one per cycle and writes results.

    For element ``j`` (column ``col0 + j``) of a drained group ``g``:

    * group mode: ``d = gscale[g, n] * (P - gzero[g, n] * S)`` with ``S`` the row's activation
      sum of the group (MixPE: dequantize once per group, at the array edge), else ``d = P``;
    * ``acc[j] = d`` for a tile's first group, ``acc[j] + d`` after (a small LUT RAM per row);
    * at the tile's last group: RAW32 writes ``acc``; INT8 writes
      ``clamp(round_half_up(((acc + bias[n]) * mult[n]) >> shift[n]) + zp)``
      (:func:`sw.numerics.requantize_channels`).

    The tables (``TABLE_LAYOUT``) and the group's token arrive from the row above one cycle
    before this row needs them and are passed on to the row below one cycle later, so one
    table read serves every row and no net fans out to all rows.

    Members
    -------
    sum, sum_valid, sum_first, act_sum
        From :class:`~hw.systolic.engine.SystolicEngine` row ``row``.
    tok_in, tbl_in : In
        The group's token (latched at ``sum_first``) and the element's table record (one
        cycle after the sum), from the row above / the table readers.
    tok_out, tbl_out : Out
        The same for the row below, one cycle later.
    group, out_mode, relu, zp : In
        Layer configuration, constant during a run. The unit registers it on entry (its own
        copy, beside its logic), so it must be set at least one cycle before the run's
        first sum arrives.
    wr_addr, wr_data, wr_en : Out
        Output bank write port (32-bit words, byte enables).
    final : Out(1)
        The last element of the final group passed (the run's results are all written).
    """

    def __init__(self, *, row: int, cols: int, acc_width: int, token_layout, out_depth: int,
                 groups: bool, impl: str = "auto"):
        self.row, self.cols, self.acc_width = row, cols, acc_width
        self.groups, self.impl = groups, impl
        self.token_layout = token_layout
        self.out_depth = out_depth
        # a group (G <= 128) sums |P| <= 128 * 2**14 and |S| <= 2**14, so |P - z*S| <= 2**22
        self.s_w = 16
        self.diff_w = 24
        self.DQ_LATENCY = 2 * MUL_LATENCY + 2
        self.RQ_LATENCY = MUL_LATENCY + 3
        #: cycles from an element on ``sum`` to its write on ``wr_*``
        self.LATENCY = self.latency()
        super().__init__({
            "sum": In(signed(acc_width)), "sum_valid": In(1), "sum_first": In(1),
            "act_sum": In(signed(acc_width)),
            "tok_in": In(token_layout), "tbl_in": In(TABLE_LAYOUT),
            "tok_out": Out(token_layout), "tbl_out": Out(TABLE_LAYOUT),
            "group": In(1), "out_mode": In(OutMode), "relu": In(1), "zp": In(signed(8)),
            "wr_addr": Out(range(out_depth)), "wr_data": Out(32), "wr_en": Out(4),
            "final": Out(1),
        })

    @staticmethod
    def latency() -> int:
        """Cycles from an element on ``sum`` to its write on ``wr_*``."""
        return 1 + (2 * MUL_LATENCY + 2) + 1 + (MUL_LATENCY + 3) + 1 + 3 + 1

    def elaborate(self, platform):
        m = Module()
        C = self.cols
        # the layer configuration, registered here: the core's one configuration register
        # reaches every row's unit, and its path into the clamp and the output bank's write
        # data was the 85F dsp8s build's slowest (16-17 ns, 11-12 of them routing). Kept
        # apart on ECP5, or Yosys merges the rows' copies back into one register.
        apart = use_ecp5(self.impl, platform)
        group = register(m, self.group, "group_r", apart=apart) if self.groups else None
        zp = register(m, self.zp, "zp_r", apart=apart)
        # the clamp's lower bound and the RAW32 test are functions of the configuration
        # only, so they are registered too and the clamp compares against a register
        lo = register(m, Mux(self.relu, self.zp, -128), "lo_r", apart=apart)
        is_raw = register(m, self.out_mode == OutMode.RAW32, "raw_r", apart=apart)
        tok = Signal(self.token_layout)
        with m.If(self.sum_first):
            m.d.sync += tok.eq(self.tok_in)
        # the token passes on from this row's latch (the row below latches it one cycle later)
        m.d.comb += self.tok_out.eq(tok)
        m.d.sync += self.tbl_out.eq(self.tbl_in)
        # element counter: j runs cols-1 .. 0
        j = Signal(range(C))
        with m.If(self.sum_first):
            m.d.sync += j.eq(C - 2 if C > 1 else 0)
        with m.Elif(self.sum_valid & (j != 0)):
            m.d.sync += j.eq(j - 1)
        cur_j = Mux(self.sum_first, C - 1, j)

        # e1: the element, its token and its table record
        v1 = Signal(signed(self.acc_width)); ok1 = Signal(); j1 = Signal(range(C))
        first1 = Signal(); e1 = Signal(); last_el1 = Signal()
        m.d.sync += [v1.eq(self.sum), e1.eq(self.sum_valid), first1.eq(self.sum_first),
                     j1.eq(cur_j), last_el1.eq(self.sum_valid & (cur_j == 0))]
        m.d.comb += ok1.eq((self.row < tok.rows_left) & (j1 < tok.cols_left))
        tbl = self.tbl_in
        s_lat = Signal(signed(self.acc_width))
        s1 = Mux(first1, self.act_sum, s_lat)
        with m.If(first1):
            m.d.sync += s_lat.eq(self.act_sum)
        n_addr = Signal(range(4 * self.out_depth))
        m.d.comb += n_addr.eq(tok.out_row + tok.col0 + j1)
        side = Cat(e1, ok1, tok.first_g, tok.last_g, tok.final & last_el1, j1, n_addr,
                   tbl.bias, tbl.mult, tbl.shift)
        side_w = len(side)

        # dequantization: d = gscale * (P - gzero * S), latency D
        m.submodules.zs = zs = IntMul(a_width=8, b_width=self.s_w, impl=self.impl)
        m.d.comb += [zs.a.eq(tbl.gzero), zs.b.eq(s1[:self.s_w].as_signed())]
        v_z = delay(m, v1, zs.LATENCY, "v_z")
        gs_z = delay(m, tbl.gscale, zs.LATENCY, "gs_z")
        diff = Signal(signed(self.diff_w))
        m.d.sync += diff.eq(v_z - zs.p)
        gs_d = Signal(GSCALE_BITS)
        m.d.sync += gs_d.eq(gs_z)
        lo_w = 16
        m.submodules.dlo = dlo = IntMul(a_width=lo_w, b_width=GSCALE_BITS, a_signed=False,
                                        b_signed=False, impl=self.impl)
        m.submodules.dhi = dhi = IntMul(a_width=self.diff_w - lo_w, b_width=GSCALE_BITS,
                                        b_signed=False, impl=self.impl)
        m.d.comb += [dlo.a.eq(diff[:lo_w]), dlo.b.eq(gs_d), dhi.a.eq(diff[lo_w:].as_signed()),
                     dhi.b.eq(gs_d)]
        d = Signal(signed(EDGE_ACC_BITS))
        m.d.sync += d.eq((dhi.p << lo_w) + dlo.p)
        dq_lat = self.DQ_LATENCY
        assert zs.LATENCY == MUL_LATENCY
        assert dq_lat == zs.LATENCY + 1 + dlo.LATENCY + 1
        v_d = delay(m, v1, dq_lat, "v_d")
        side_d = delay(m, side, dq_lat, "side_d")
        if self.groups:
            dsel = Mux(group, d, v_d)
        else:
            dsel = v_d
        e_v, e_ok, e_fg, e_lg, e_fin = side_d[0], side_d[1], side_d[2], side_d[3], side_d[4]
        o = 5
        e_j = side_d[o:o + len(j1)]; o += len(j1)
        e_n = side_d[o:o + len(n_addr)]; o += len(n_addr)
        e_bias = side_d[o:o + 32].as_signed(); o += 32
        e_mult = side_d[o:o + REQUANT_MULT_BITS]; o += REQUANT_MULT_BITS
        e_shift = side_d[o:o + 6]; o += 6
        assert o == side_w

        # accumulation over groups in a LUT RAM of one word per column
        accmem = Memory(shape=signed(EDGE_ACC_BITS), depth=max(C, 2), init=[])
        m.submodules.accmem = accmem
        rd = accmem.read_port(domain="comb")
        wp = accmem.write_port()
        m.d.comb += rd.addr.eq(e_j)
        a_new = Signal(signed(EDGE_ACC_BITS))
        m.d.comb += a_new.eq(Mux(e_fg, dsel, rd.data + dsel))
        m.d.comb += [wp.addr.eq(e_j), wp.data.eq(a_new), wp.en.eq(e_v & ~e_lg)]
        a8 = Signal(signed(EDGE_ACC_BITS)); w8 = Signal(); n8 = Signal.like(e_n); fin8 = Signal()
        bias8 = Signal(signed(32)); mult8 = Signal(REQUANT_MULT_BITS); sh8 = Signal(6)
        m.d.sync += [a8.eq(a_new), w8.eq(e_v & e_lg & e_ok), n8.eq(e_n), fin8.eq(e_v & e_fin),
                     bias8.eq(e_bias), mult8.eq(e_mult), sh8.eq(e_shift)]
        # requantization: (acc + bias) * mult as three 16-bit partial products
        x9 = Signal(signed(EDGE_ACC_BITS))
        m.d.sync += x9.eq(a8 + bias8)
        mult9 = delay(m, mult8, 1, "mult9")
        parts = []
        for k in range(3):
            top = k == 2
            mul = IntMul(a_width=16, b_width=REQUANT_MULT_BITS, a_signed=top, b_signed=False,
                         impl=self.impl)
            m.submodules[f"rq{k}"] = mul
            m.d.comb += [mul.a.eq(x9[16 * k:16 * k + 16].as_signed() if top else x9[16 * k:16 * k + 16]),
                         mul.b.eq(mult9)]
            pk = Signal(signed(33) if top else unsigned(32), name=f"rqp{k}")
            m.d.sync += pk.eq(mul.p)
            parts.append(pk)
        rq_lat = self.RQ_LATENCY
        prod_w = EDGE_ACC_BITS + REQUANT_MULT_BITS + 1
        # the three partial products are summed in two registered steps: one 65-bit
        # three-operand sum was two carry chains in series, the 12F's slowest path
        lo2 = Signal(49)
        hi2 = Signal(signed(33))
        m.d.sync += [lo2.eq((parts[1] << 16) + parts[0]), hi2.eq(parts[2])]
        prod = Signal(signed(prod_w))
        m.d.sync += prod.eq((hi2 << 32) + lo2)
        side8 = Cat(w8, n8, fin8, sh8, a8[:32])
        side_r = delay(m, side8, rq_lat + 1, "side_r")
        r_w, r_n, r_fin = side_r[0], side_r[1:1 + len(n8)], side_r[1 + len(n8)]
        o = 2 + len(n8)
        r_sh = side_r[o:o + 6]
        r_raw = side_r[o + 6:o + 38]
        # round half up: + 2**(shift-1), then shift (shift <= 63 < prod_w: never past the top)
        rnd = (Const(1, 1) << r_sh)[1:prod_w + 1]
        s_sum = Signal(signed(prod_w + 1))
        m.d.sync += s_sum.eq(prod + rnd)
        q = Signal(signed(prod_w + 1))
        m.d.sync += q.eq(s_sum >> delay(m, r_sh, 1, "sh_q"))
        t_w, t_n, t_fin, t_raw = (delay(m, r_w, 3, "t_w"), delay(m, r_n, 3, "t_n"),
                                  delay(m, r_fin, 3, "t_fin"), delay(m, r_raw, 3, "t_raw"))
        # + zp in its own cycle, the clamp's two compares in the next (each a carry chain)
        y = Signal(signed(prod_w + 2))
        m.d.sync += y.eq(q + zp)
        y8 = Signal(signed(8))
        m.d.comb += y8.eq(Mux(y > 127, 127, Mux(y < lo, lo, y)))
        m.d.sync += [
            self.wr_addr.eq(Mux(is_raw, t_n, t_n >> 2)),
            self.wr_data.eq(Mux(is_raw, t_raw, Cat(y8, y8, y8, y8))),
            self.wr_en.eq(Mux(~t_w, 0, Mux(is_raw, 0b1111, Const(1, 4) << t_n[:2]))),
            self.final.eq(t_fin),
        ]
        return m
