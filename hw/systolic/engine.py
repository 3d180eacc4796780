"""Systolic engine of any PE kind: output-stationary, one drain chain per row."""

from __future__ import annotations

from amaranth import Module, Signal, signed, Mux, Const
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith._common import check_impl, use_ecp5
from hw.pe import pe_class
from hw.pe.mixpe import MixPE

from .util import delay as _delay

__all__ = ["SystolicEngine"]


class SystolicEngine(wiring.Component):
    """``rows x cols`` processing elements of one kind, their input skew and drain chains.

    Operands enter unskewed: row ``i``'s activations and the step flags are delayed ``i``
    cycles and column ``j``'s weight byte ``j`` cycles inside, so they meet in PE ``(i, j)``
    ``i + j`` cycles after entering. Each step of the feed carries one weight byte per column
    (1, 2 or 4 weights by the format) and the matching activations per row.

    Every row has its own drain chain through its PEs, emptied at the row's right end: when a
    group (or tile) ends, row ``i`` shows its ``cols`` sums on ``sum[i]``, one per cycle from
    column ``cols - 1`` down to 0, while ``sum_valid[i]`` is high; ``sum_first[i]`` marks the
    first. Row ``i`` starts ``LATENCY + i`` cycles after the last step of the group entered.
    Consecutive group ends must be at least ``MIN_PERIOD`` (= ``cols``) steps apart.

    With ``act_sums`` a column of extra PEs with weight 1 (MixPE's ``S_g``, the group's
    activation sum per row) sits right of the array: ``act_sum[i]`` holds row ``i``'s sum
    from the cycle after ``sum_first[i]`` until the group after next starts to drain.

    Parameters
    ----------
    rows, cols : int
    acc_width : int
        PE accumulator width.
    pe : str
        PE kind (:data:`hw.pe.PE_KINDS`).
    act_sums : bool
        Build the activation-sum column (MixPE group dequantization).
    impl : "auto" | "generic" | "ecp5"

    Members
    -------
    x : In(x_width).array(rows)
        Arranged activations of each row (:func:`hw.pe.mixpe.arrange_activations`).
    wb : In(8).array(cols), wsgn : In(4).array(cols)
        Decoded weight byte and chunk signs of each column.
    mode : In(2)
        Chunk combination of the layer's format.
    valid, first, last : In(1)
        Step carries operands / is a group's first / last step.
    sum : Out(signed(acc_width)).array(rows)
    sum_valid, sum_first : Out(1).array(rows)
    act_sum : Out(signed(acc_width)).array(rows)
    """

    def __init__(self, *, rows: int, cols: int, acc_width: int, pe: str = "mixpe",
                 act_sums: bool = False, impl: str = "auto"):
        for name, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")
        self.rows, self.cols, self.acc_width = rows, cols, acc_width
        self.pe_cls = pe_class(pe)
        self.pe = pe
        if act_sums and self.pe_cls is not MixPE:
            raise ValueError(f"act_sums needs the mixpe PE kind, not {pe!r}")
        self.act_sums = act_sums
        self.impl = check_impl(impl)
        #: cycles from a group's last step at the inputs to ``sum_first[0]``
        self.LATENCY = (cols - 1) + self.pe_cls.latency()
        #: minimum steps between two group ends
        self.MIN_PERIOD = cols
        self.x_width = self.pe_cls.X_WIDTH
        super().__init__({
            "x": In(self.x_width).array(rows), "wb": In(8).array(cols),
            "wsgn": In(4).array(cols), "mode": In(2),
            "valid": In(1), "first": In(1), "last": In(1),
            "sum": Out(signed(acc_width)).array(rows),
            "sum_valid": Out(1).array(rows), "sum_first": Out(1).array(rows),
            "act_sum": Out(signed(acc_width)).array(rows),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        # the skew chains of mode and the flags start from one input each: registers of
        # their own (hw.systolic.util.register), as in the PEs
        apart = use_ecp5(self.impl, platform)
        mk = lambda: self.pe_cls(acc_width=self.acc_width, impl=self.impl)   # noqa: E731
        pes = [[mk() for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]
        sums = []
        if self.act_sums:
            sums = [MixPE(acc_width=self.acc_width, impl=self.impl) for _ in range(R)]
            for i, s in enumerate(sums):
                m.submodules[f"sum_{i}"] = s
        for i in range(R):
            row = pes[i] + sums[i:i + 1]
            left = row[0]
            m.d.comb += [
                left.x.eq(_delay(m, self.x[i], i, f"x{i}", reset_less=True)),
                left.valid.eq(_delay(m, self.valid, i, f"v{i}", apart=apart)),
                left.first.eq(_delay(m, self.first, i, f"f{i}", apart=apart)),
                left.last.eq(_delay(m, self.last, i, f"l{i}", apart=apart)),
            ]
            for j in range(1, len(row)):
                src, dst = row[j - 1], row[j]
                m.d.comb += [dst.x.eq(src.x_out), dst.valid.eq(src.valid_out),
                             dst.first.eq(src.first_out), dst.last.eq(src.last_out)]
        for j in range(C):
            top = pes[0][j]
            m.d.comb += [top.wb.eq(_delay(m, self.wb[j], j, f"wb{j}", reset_less=True)),
                         top.wsgn.eq(_delay(m, self.wsgn[j], j, f"ws{j}", reset_less=True)),
                         top.mode.eq(_delay(m, self.mode, j, f"md{j}", reset_less=True,
                                                    apart=apart))]
        cols = [[pes[i][j] for i in range(R)] for j in range(C)]
        if self.act_sums:
            # weight 1 in every lane of the format: INT8/POW2 byte 0x01, INT4 0x11, INT2 0x55
            md = _delay(m, self.mode, C, "mds", reset_less=True, apart=apart)
            ones = Mux(md[1], Const(0x01, 8), Mux(md[0], Const(0x11, 8), Const(0x55, 8)))
            m.d.comb += [sums[0].wb.eq(ones), sums[0].wsgn.eq(0), sums[0].mode.eq(md)]
            cols.append(sums)
            for i, s in enumerate(sums):
                m.d.comb += [s.shift_en.eq(0), s.drain_first.eq(0), s.shift_in.eq(0),
                             self.act_sum[i].eq(s.shadow)]
        for col in cols:
            for i in range(1, R):
                m.d.comb += [col[i].wb.eq(col[i - 1].wb_out), col[i].wsgn.eq(col[i - 1].wsgn_out),
                             col[i].mode.eq(col[i - 1].mode_out)]
        for i in range(R):
            row = pes[i]
            end = row[-1]
            cnt = Signal(range(C), name=f"drain{i}")
            go_first = end.captured
            go = Signal(name=f"go{i}")
            m.d.comb += go.eq(go_first | (cnt != 0))
            with m.If(go_first):
                m.d.sync += cnt.eq(C - 1)
            with m.Elif(cnt != 0):
                m.d.sync += cnt.eq(cnt - 1)
            for j, pe in enumerate(row):
                m.d.comb += [pe.shift_en.eq(go), pe.drain_first.eq(go_first),
                             pe.shift_in.eq(row[j - 1].shadow if j else 0)]
            m.d.comb += [self.sum[i].eq(end.shadow), self.sum_valid[i].eq(go),
                         self.sum_first[i].eq(go_first)]
        return m
