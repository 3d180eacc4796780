"""Output-stationary systolic array of INT8 PEs with input skew and a drain shift chain."""

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith._common import check_impl

from .pe import PE

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows x cols`` grid of :class:`PE` in the output-stationary dataflow.

    All inputs are presented unskewed, in the same cycle: row ``i``'s activation and the
    tile flags are delayed by ``i`` cycles and column ``j``'s weight by ``j`` cycles inside the
    array, so operand pairs meet in PE ``(i, j)`` ``i + j`` cycles after they entered.

    Finished tile sums are drained through one shift chain running through the PEs in
    row-major order (PE ``(rows-1, cols-1)`` is its output end): after ``drain_ready`` pulses,
    ``drain_out`` shows element ``(rows-1, cols-1)``; each ``shift_en`` cycle brings the next
    element in descending row-major order. The parent must finish draining a tile before the
    next tile's sums are captured (see ``MpGemmCore.TILE_PERIOD_MIN``).

    Parameters
    ----------
    rows, cols : int
        Array shape.
    acc_width : int
        PE accumulator width.
    impl : "auto" | "generic" | "ecp5"
        Multiplier implementation of every PE (see :class:`~hw.systolic.pe.PE`).

    Members
    -------
    a : In(signed(8)).array(rows)
        Activations, one per row.
    w : In(signed(8)).array(cols)
        Weights, one per column.
    valid, first, last : In(1)
        Operands meaningful / first / last element of a tile along K.
    shift_en : In(1)
        Advance the drain chain.
    drain_out : Out(signed(acc_width))
        Output end of the drain chain.
    drain_ready : Out(1)
        The last PE just captured a finished tile: the chain holds the whole tile.
    """

    #: cycles from the inputs to ``drain_ready`` for a tile whose last operands entered at 0
    def __init__(self, *, rows: int, cols: int, acc_width: int, impl: str = "auto"):
        for name, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")
        self.rows, self.cols, self.acc_width = rows, cols, acc_width
        self.impl = check_impl(impl)
        self.LATENCY = (rows - 1) + (cols - 1) + PE.LATENCY
        super().__init__({
            "a": In(signed(8)).array(rows), "w": In(signed(8)).array(cols),
            "valid": In(1), "first": In(1), "last": In(1), "shift_en": In(1),
            "drain_out": Out(signed(acc_width)), "drain_ready": Out(1),
        })

    @staticmethod
    def _delay(m, sig, n, name, reset_less=False):
        for k in range(n):
            r = Signal.like(sig, name=f"{name}_d{k}", reset_less=reset_less)
            m.d.sync += r.eq(sig)
            sig = r
        return sig

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        pes = [[PE(acc_width=self.acc_width, impl=self.impl) for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]
        for i in range(R):
            left = pes[i][0]
            m.d.comb += [
                left.a.eq(self._delay(m, self.a[i], i, f"a{i}", reset_less=True)),
                left.valid.eq(self._delay(m, self.valid, i, f"v{i}")),
                left.first.eq(self._delay(m, self.first, i, f"f{i}")),
                left.last.eq(self._delay(m, self.last, i, f"l{i}")),
            ]
            for j in range(1, C):
                src, dst = pes[i][j - 1], pes[i][j]
                m.d.comb += [dst.a.eq(src.a_out), dst.valid.eq(src.valid_out),
                             dst.first.eq(src.first_out), dst.last.eq(src.last_out)]
        for j in range(C):
            m.d.comb += pes[0][j].w.eq(self._delay(m, self.w[j], j, f"w{j}", reset_less=True))
            for i in range(1, R):
                m.d.comb += pes[i][j].w.eq(pes[i - 1][j].w_out)
        chain = [pes[i][j] for i in range(R) for j in range(C)]
        for p, pe in enumerate(chain):
            m.d.comb += [pe.shift_en.eq(self.shift_en),
                         pe.shift_in.eq(chain[p - 1].shadow if p else 0)]
        m.d.comb += [self.drain_out.eq(chain[-1].shadow),
                     self.drain_ready.eq(chain[-1].captured)]
        return m
