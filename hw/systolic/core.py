"""mpGEMM core: buffers, sequencer, systolic array, requantization epilogue, counters."""

from __future__ import annotations

import hashlib
import json

from amaranth import Module, Signal, signed, unsigned, Mux, Cat, Const
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw import numerics
from sw.numerics import OutMode, REQUANT_MULT_BITS, REQUANT_SHIFT_BITS, REQUANT_ZP_BITS
from sw.protocol import Buffer, ErrorCode, PeKind

from .array import SystolicArray
from .pe import PE
from hw.arith._common import check_impl
from hw.arith.intmul import IntMul

__all__ = ["MpGemmCore"]

COUNTER_BITS = 48
DIM_BITS = 16


def _is_pow2(v):
    return isinstance(v, int) and v >= 1 and (v & (v - 1)) == 0


def _serial_mul_step(m, acc, x, y, bit):
    """One step of a bit-serial ``x * y`` (LSB first): shape-checks need no DSP block."""
    m.d.sync += acc.eq(acc + Mux(y.bit_select(bit, 1), x << bit, 0))


class MpGemmCore(wiring.Component):
    """INT8 x INT8 GEMM engine: ``OUT = epilogue(A @ W)`` for any ``M x K x N`` that fits.

    Dataflow: output-stationary (see docs/architecture.md). The sequencer walks output tiles
    of ``rows x cols`` (``N`` tiles outer, ``M`` tiles inner) and streams ``K`` operand pairs
    per tile; the array keeps the sums in its PEs, so no partial sum ever goes to memory and
    ``K`` is limited only by the buffers. Rows/columns beyond ``M``/``N`` get zero operands and
    their results are not written. Tiles follow each other back to back when
    ``K >= TILE_PERIOD_MIN``; shorter tiles are padded with stall cycles so the drain chain is
    empty before it is reloaded.

    Host address spaces (all byte addressed, see :mod:`sw.layout`):

    * ``A``: bank-interleaved, byte ``L`` goes to row bank ``L % rows`` at ``L // rows``;
      element ``A[m, k]`` lives at ``((m // rows) * K + k) * rows + m % rows``.
    * ``W``: likewise with ``cols`` banks; ``W[k, n]`` at ``((n // cols) * K + k) * cols + n % cols``.
    * ``OUT``: 32-bit words; INT8 results row-major one per byte, RAW32 one per word (LE).

    Parameters
    ----------
    rows, cols : int
        Array shape (powers of two, so bank selection is a bit slice).
    a_depth, w_depth : int
        Words per activation / weight bank (each bank is 8 bits wide).
    out_words : int
        32-bit words in the output buffer.
    a_init, w_init : list of int, optional
        Initial contents of the A / W address spaces (bytes), e.g. for a self-test.
    watchdog : int, optional
        Cycles a GEMM may stay busy before it is stopped with ``WATCHDOG`` (default: twice
        the longest GEMM the buffers can hold, :meth:`max_run_cycles`, so only a stuck
        sequencer ever meets it).
    impl : "auto" | "generic" | "ecp5"
        Multiplier implementation of the PEs and the epilogue (see
        :class:`~hw.arith.intmul.IntMul`): "ecp5" instantiates MULT18X18D everywhere, so a
        simulation with its behavioural model checks the primitive the board uses.

    Members
    -------
    bus_sel : In(Buffer)
    bus_addr : In(unsigned(addr_bits))
    bus_wdata : In(8)
    bus_we, bus_re : In(1)
        Host access to the buffers, legal while ``busy`` is low. Writes outside a buffer
        are ignored. ``bus_rdata`` is valid ``READ_LATENCY`` cycles after ``bus_re``
        (reads may be pipelined, one per cycle).
    bus_rdata : Out(8)
    cfg_m, cfg_k, cfg_n : In(16)
    cfg_out_mode : In(OutMode)
    cfg_mult : In(16), cfg_shift : In(6), cfg_zp : In(signed(8)), cfg_relu : In(1)
        Layer configuration; sampled at ``start``.
    start : In(1)
        Begin a GEMM.
    abort : In(1)
        Stop a running GEMM: feeding stops at once, the core stays busy until the pipeline
        has drained (``ABORT_CYCLES``), then ``done`` pulses with ``error = ABORTED``.
    busy : Out(1)
    done : Out(1)
        Pulses once when a GEMM (or a refused start) has finished.
    error : Out(ErrorCode)
        ``OK``; ``BAD_SHAPE`` when the shape does not fit (nothing is computed);
        ``ABORTED`` after ``abort``; ``WATCHDOG`` when the run exceeded ``watchdog`` cycles.
    cnt_cycles, cnt_busy, cnt_stall, cnt_macs : Out(48)
        Cycles from start to done; cycles feeding the array; stall cycles inside the run;
        multiply-accumulates issued on real (not padding) operands.
    """

    #: cycles from ``bus_re`` (with ``bus_addr``) to ``bus_rdata``
    READ_LATENCY = 4
    #: epilogue pipeline depth: capture, partial products (DSP in/out regs + fabric), sum,
    #: round, shift, clamp+write
    EPILOGUE_LATENCY = 8
    #: processing element of the array (IDENTIFY reports it)
    PE_KIND = PeKind.INT8_DSP

    def __init__(self, *, rows: int = 4, cols: int = 4, a_depth: int = 512, w_depth: int = 512,
                 out_words: int = 512, a_init=None, w_init=None, watchdog: int | None = None,
                 impl: str = "auto"):
        for name, v in (("rows", rows), ("cols", cols)):
            if not _is_pow2(v) or v > 64:
                raise ValueError(f"{name} must be a power of two in [1, 64], not {v!r}")
        for name, v in (("a_depth", a_depth), ("w_depth", w_depth), ("out_words", out_words)):
            if not _is_pow2(v) or not 16 <= v <= (1 << 17):
                raise ValueError(f"{name} must be a power of two in [16, 131072], not {v!r}")
        self.rows, self.cols = rows, cols
        self.impl = check_impl(impl)
        self.a_depth, self.w_depth, self.out_words = a_depth, w_depth, out_words
        self.max_k = min(a_depth, w_depth, (1 << DIM_BITS) - 1)
        self.acc_width = numerics.acc_bits(self.max_k)
        assert self.acc_width <= 32, "RAW32 output needs the accumulator to fit 32 bits"
        # width of acc * mult (signed x unsigned); < 64, so a 6-bit shift can express it
        self._prod_w = self.acc_width + REQUANT_MULT_BITS + 1
        self.a_bytes = rows * a_depth
        self.w_bytes = cols * w_depth
        self.out_bytes = 4 * out_words
        self.addr_bits = max(self.a_bytes, self.w_bytes, self.out_bytes).bit_length() - 1
        #: minimum cycles between tile starts: the drain chain must empty first
        # (the PE latency term keeps a tile's drain bookkeeping from being overwritten by
        # the next tile's before its drain starts, which matters for tiny arrays)
        self.TILE_PERIOD_MIN = rows * cols + rows + cols + 4 + PE.LATENCY
        #: cycles an aborted GEMM stays busy: a tile already fed drains through the array,
        # the drain chain and the epilogue, so nothing of it is written after ``done``
        self.ABORT_CYCLES = self.TILE_PERIOD_MIN + self.EPILOGUE_LATENCY + 8
        if watchdog is None:
            watchdog = 2 * self.max_run_cycles()
        if isinstance(watchdog, bool) or not isinstance(watchdog, int) or not \
                64 <= watchdog < (1 << 32):
            raise ValueError(f"watchdog must be an int in [64, 2**32) cycles, not {watchdog!r}")
        #: cycles a GEMM may be busy before it is stopped with WATCHDOG
        self.WATCHDOG = watchdog
        self._a_init, self._w_init = a_init, w_init
        super().__init__({
            "bus_sel": In(Buffer), "bus_addr": In(unsigned(self.addr_bits)),
            "bus_wdata": In(8), "bus_we": In(1), "bus_re": In(1), "bus_rdata": Out(8),
            "cfg_m": In(DIM_BITS), "cfg_k": In(DIM_BITS), "cfg_n": In(DIM_BITS),
            "cfg_out_mode": In(OutMode), "cfg_mult": In(REQUANT_MULT_BITS),
            "cfg_shift": In(REQUANT_SHIFT_BITS), "cfg_zp": In(signed(REQUANT_ZP_BITS)),
            "cfg_relu": In(1),
            "start": In(1), "abort": In(1), "busy": Out(1), "done": Out(1), "error": Out(ErrorCode),
            "cnt_cycles": Out(COUNTER_BITS), "cnt_busy": Out(COUNTER_BITS),
            "cnt_stall": Out(COUNTER_BITS), "cnt_macs": Out(COUNTER_BITS),
        })

    def max_run_cycles(self) -> int:
        """An upper bound of the busy cycles of any GEMM the buffers accept.

        A tile takes ``max(K, TILE_PERIOD_MIN)`` cycles. With ``K >= TILE_PERIOD_MIN`` the
        operands of all tiles fit A and W, so ``tiles * K**2 <= a_depth * w_depth``; with a
        shorter K each tile writes at least one output, so ``tiles <= 4 * out_words``.
        """
        p = self.TILE_PERIOD_MIN
        tiles_k = max(self.a_depth * self.w_depth // p, 4 * self.out_words * p)
        return tiles_k + 2 * p + 2 * DIM_BITS + 64

    def config(self) -> dict:
        """The parameters that define this core (reported by the build and IDENTIFY)."""
        return {"rows": self.rows, "cols": self.cols, "a_depth": self.a_depth,
                "w_depth": self.w_depth, "out_words": self.out_words, "max_k": self.max_k,
                "acc_width": self.acc_width}

    def config_hash(self) -> int:
        """32-bit hash of :meth:`config`; the driver checks it against what it expects."""
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _bank_init(image, banks, depth, lane):
        if image is None:
            return []
        image = list(image) + [0] * (banks * depth - len(image))
        return [b & 0xFF for b in image[lane::banks]][:depth]

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        lr, lc = R.bit_length() - 1, C.bit_length() - 1

        m.submodules.array = array = SystolicArray(rows=R, cols=C, acc_width=self.acc_width,
                                                     impl=self.impl)

        # The host side (link) and the core sit far apart on a big device: every input from
        # it is registered once here, so no path runs link logic -> core logic in one cycle.
        bus_sel = Signal(Buffer); bus_addr = Signal(self.addr_bits); bus_wdata = Signal(8)
        bus_we = Signal(); start = Signal(); abort = Signal()
        m.d.sync += [bus_sel.eq(self.bus_sel), bus_addr.eq(self.bus_addr),
                     bus_wdata.eq(self.bus_wdata), bus_we.eq(self.bus_we), start.eq(self.start),
                     abort.eq(self.abort)]

        # -- buffers -------------------------------------------------------------------
        a_mems = [Memory(shape=8, depth=self.a_depth,
                         init=self._bank_init(self._a_init, R, self.a_depth, i)) for i in range(R)]
        w_mems = [Memory(shape=8, depth=self.w_depth,
                         init=self._bank_init(self._w_init, C, self.w_depth, j)) for j in range(C)]
        out_mem = Memory(shape=32, depth=self.out_words, init=[])
        for i, mem in enumerate(a_mems):
            m.submodules[f"a_bank{i}"] = mem
        for j, mem in enumerate(w_mems):
            m.submodules[f"w_bank{j}"] = mem
        m.submodules.out_mem = out_mem

        # -- layer configuration, latched at start --------------------------------------
        M = Signal(DIM_BITS); K = Signal(DIM_BITS); N = Signal(DIM_BITS)
        mode = Signal(OutMode); mult = Signal(REQUANT_MULT_BITS)
        shift = Signal(REQUANT_SHIFT_BITS); zp = Signal(signed(REQUANT_ZP_BITS)); relu = Signal()

        # -- sequencer state -------------------------------------------------------------
        a_addr = Signal(range(self.a_depth + 1))
        w_base = Signal(range(self.w_depth + 1))
        w_addr = Signal(range(self.w_depth + 1))
        # Control decisions use registered flags only (row_last, col_last, k_left == 0,
        # first): on the 85F the compare-then-decide paths were the slowest in the design.
        k_left = Signal(DIM_BITS)               # feeds left in this tile, minus one
        k_m1 = Signal(DIM_BITS)                 # K - 1
        first = Signal()                        # next feed is the tile's first
        row_last = Signal(); col_last = Signal()   # current tile is the last along M / N
        bad = Signal()
        row0 = Signal(DIM_BITS + 1); col0 = Signal(DIM_BITS + 1)
        out_row_base = Signal(2 * DIM_BITS + 1)
        tile_fed = Signal()
        tile_cyc_max = self.TILE_PERIOD_MIN
        tile_cyc = Signal(range(tile_cyc_max + 1))
        macs_per_feed = Signal(range(R * C + 1))
        issue = Signal()
        # shape check products (computed bit-serially)
        mt_cnt = Signal(DIM_BITS); nt_cnt = Signal(DIM_BITS)
        p_a = Signal(2 * DIM_BITS); p_w = Signal(2 * DIM_BITS); p_o = Signal(2 * DIM_BITS)
        chk_bit = Signal(range(DIM_BITS + 1))

        # pending tile info handed to the drain unit when the tile's sums are captured
        # the drain starts at the tile's last element: (row0 + R-1, col0 + C-1)
        pend_m = Signal.like(row0); pend_n = Signal.like(col0)
        pend_base = Signal.like(out_row_base); pend_final = Signal()
        rn_minus_n = Signal.like(out_row_base)   # (R-1) * N, set at start
        final_drained = Signal()

        def rows_valid(r0):
            rem = M - r0
            return Mux(rem >= R, R, rem)[:lr + 1]

        def cols_valid(c0):
            rem = N - c0
            return Mux(rem >= C, C, rem)[:lc + 1]

        # MACs per feed cycle = valid rows x valid columns of the current tile, computed in a
        # two-stage pipeline from row0/col0 (constant within a tile) and added to the counter
        # two cycles after the feed: off the sequencer's critical path and off the DSPs.
        rv_q = Signal(range(R + 1)); cv_q = Signal(range(C + 1))
        m.d.sync += [rv_q.eq(rows_valid(row0)), cv_q.eq(cols_valid(col0))]
        terms = [Mux(rv_q[b], cv_q << b, 0) for b in range(lr + 1)]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        m.d.sync += macs_per_feed.eq(total)
        issue_d = Signal(); issue_dd = Signal()
        m.d.sync += [issue_d.eq(issue), issue_dd.eq(issue_d)]
        with m.If(issue_dd):
            m.d.sync += self.cnt_macs.eq(self.cnt_macs + macs_per_feed)

        m.d.comb += self.busy.eq(0)
        m.d.sync += self.done.eq(0)
        with m.If(self.busy):
            m.d.sync += self.cnt_cycles.eq(self.cnt_cycles + 1)

        # watchdog: a down-counter loaded at start; its zero flag is registered, so the
        # sequencer decides from a flip-flop, not from a 32-bit compare
        wd = Signal(32); wd_hit = Signal()
        m.d.sync += [wd.eq(wd - 1), wd_hit.eq(self.busy & (wd == 0))]
        ab_cnt = Signal(range(self.ABORT_CYCLES + 1))

        def abortable():
            # placed last in a busy state, so it overrides that state's own transition
            with m.If(abort | wd_hit):
                m.d.sync += [self.error.eq(Mux(abort, ErrorCode.ABORTED, ErrorCode.WATCHDOG)),
                             ab_cnt.eq(self.ABORT_CYCLES)]
                m.next = "ABORT"

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [
                        M.eq(self.cfg_m), K.eq(self.cfg_k), N.eq(self.cfg_n),
                        mode.eq(self.cfg_out_mode), mult.eq(self.cfg_mult),
                        # a shift beyond the product width gives 0 for every product; clamped
                        # here so the rounding constant 2**(shift-1) always fits the adder
                        shift.eq(Mux(self.cfg_shift > self._prod_w, self._prod_w, self.cfg_shift)),
                        zp.eq(self.cfg_zp), relu.eq(self.cfg_relu),
                        mt_cnt.eq((self.cfg_m + R - 1) >> lr), nt_cnt.eq((self.cfg_n + C - 1) >> lc),
                        p_a.eq(0), p_w.eq(0), p_o.eq(0), chk_bit.eq(0),
                        self.error.eq(ErrorCode.OK), wd.eq(self.WATCHDOG - 1),
                        self.cnt_cycles.eq(0), self.cnt_busy.eq(0),
                        self.cnt_stall.eq(0), self.cnt_macs.eq(0),
                    ]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                _serial_mul_step(m, p_a, mt_cnt, K, chk_bit)
                _serial_mul_step(m, p_w, nt_cnt, K, chk_bit)
                _serial_mul_step(m, p_o, M, N, chk_bit)
                m.d.sync += chk_bit.eq(chk_bit + 1)
                with m.If(chk_bit == DIM_BITS):
                    out_cap = Mux(mode == OutMode.INT8, 4 * self.out_words, self.out_words)
                    m.d.sync += bad.eq((M == 0) | (K == 0) | (N == 0) | (K > self.max_k) |
                                       (p_a > self.a_depth) | (p_w > self.w_depth) | (p_o > out_cap))
                    m.next = "DECIDE"
                abortable()
            with m.State("DECIDE"):
                m.d.comb += self.busy.eq(1)
                with m.If(bad):
                    m.d.sync += [self.error.eq(ErrorCode.BAD_SHAPE), self.done.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [a_addr.eq(0), w_base.eq(0), w_addr.eq(0),
                                 k_m1.eq(K - 1), k_left.eq(K - 1), first.eq(1),
                                 row0.eq(0), col0.eq(0), out_row_base.eq(0),
                                 row_last.eq(M <= R), col_last.eq(N <= C),
                                 tile_fed.eq(0), tile_cyc.eq(0), final_drained.eq(0),
                                 rn_minus_n.eq((N << lr) - N)]
                    m.next = "RUN"
                abortable()
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                last_tile = row_last & col_last
                with m.If(tile_cyc != tile_cyc_max):
                    m.d.sync += tile_cyc.eq(tile_cyc + 1)
                with m.If(~tile_fed):
                    m.d.comb += issue.eq(1)
                    m.d.sync += [a_addr.eq(a_addr + 1), w_addr.eq(w_addr + 1),
                                 k_left.eq(k_left - 1), first.eq(0),
                                 self.cnt_busy.eq(self.cnt_busy + 1)]
                    with m.If(k_left == 0):
                        m.d.sync += [tile_fed.eq(1), k_left.eq(k_m1),
                                     pend_m.eq(row0 + (R - 1)), pend_n.eq(col0 + (C - 1)),
                                     pend_base.eq(out_row_base + rn_minus_n),
                                     pend_final.eq(last_tile)]
                with m.Else():
                    m.d.sync += self.cnt_stall.eq(self.cnt_stall + 1)
                    with m.If(tile_cyc >= self.TILE_PERIOD_MIN - 1):
                        # advance to the next tile: M tiles inner, N tiles outer
                        m.d.sync += [tile_fed.eq(0), tile_cyc.eq(0), first.eq(1)]
                        with m.If(last_tile):
                            m.next = "FLUSH"
                        with m.Elif(row_last):
                            m.d.sync += [row0.eq(0), col0.eq(col0 + C), out_row_base.eq(0),
                                         a_addr.eq(0), w_base.eq(w_base + K),
                                         w_addr.eq(w_base + K),
                                         row_last.eq(M <= R), col_last.eq(col0 + 2 * C >= N)]
                        with m.Else():
                            m.d.sync += [row0.eq(row0 + R), out_row_base.eq(out_row_base + (N << lr)),
                                         w_addr.eq(w_base), row_last.eq(row0 + 2 * R >= M)]
                abortable()
            with m.State("FLUSH"):
                m.d.comb += self.busy.eq(1)
                with m.If(final_drained):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
                abortable()
            with m.State("ABORT"):
                # nothing more is fed; what is in the array drains out before done
                m.d.comb += self.busy.eq(1)
                m.d.sync += ab_cnt.eq(ab_cnt - 1)
                with m.If(ab_cnt == 0):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"

        # -- operand fetch: one cycle of memory latency, then mask padding rows/cols ---------
        host_a = (bus_sel == Buffer.A)
        host_w = (bus_sel == Buffer.W)
        lane_a = bus_addr[:lr] if lr else Const(0, 1)
        lane_w = bus_addr[:lc] if lc else Const(0, 1)
        idx_a = bus_addr[lr:]
        idx_w = bus_addr[lc:]
        a_rd, w_rd = [], []

        def host_write(wp, idx, sel, name):
            # one register set per bank between the host bus and the bank's write port: the
            # banks are spread over the die (24 EBR groups on the 85F), and a single register
            # fanning out to all of them was the slowest route of the 85F build
            addr = Signal.like(idx, name=f"{name}_waddr", reset_less=True)
            data = Signal(8, name=f"{name}_wdata", reset_less=True)
            en = Signal(name=f"{name}_we")
            m.d.sync += [addr.eq(idx), data.eq(bus_wdata), en.eq(~self.busy & bus_we & sel)]
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(data), wp.en.eq(en)]

        for i, mem in enumerate(a_mems):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(Mux(self.busy, a_addr, idx_a)), rp.en.eq(1)]
            host_write(mem.write_port(), idx_a,
                       host_a & (lane_a == i) & (idx_a < self.a_depth), f"a{i}")
            a_rd.append(rp.data)
        for j, mem in enumerate(w_mems):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(Mux(self.busy, w_addr, idx_w)), rp.en.eq(1)]
            host_write(mem.write_port(), idx_w,
                       host_w & (lane_w == j) & (idx_w < self.w_depth), f"w{j}")
            w_rd.append(rp.data)

        # The EBR read data (clock-to-out ~5.6 ns on ECP5 without its output register) is
        # registered in the fabric before it meets the DSPs, so flags are delayed two cycles.
        f_valid, f_first, f_last = Signal(), Signal(), Signal()
        f_rmask, f_cmask = Signal(R), Signal(C)
        m.d.sync += [f_valid.eq(issue), f_first.eq(issue & first), f_last.eq(issue & (k_left == 0)),
                     # all ones when idle: the host reads the banks through ga/gw too
                     f_rmask.eq(Mux(self.busy, Cat(row0 + i < M for i in range(R)), ~0)),
                     f_cmask.eq(Mux(self.busy, Cat(col0 + j < N for j in range(C)), ~0))]
        g_valid, g_first, g_last = Signal(), Signal(), Signal()
        m.d.sync += [g_valid.eq(f_valid), g_first.eq(f_first), g_last.eq(f_last)]
        m.d.comb += [array.valid.eq(g_valid), array.first.eq(g_first), array.last.eq(g_last)]
        ga = [Signal(signed(8), name=f"ga{i}") for i in range(R)]
        gw = [Signal(signed(8), name=f"gw{j}") for j in range(C)]
        for i in range(R):
            m.d.sync += ga[i].eq(Mux(f_rmask[i], a_rd[i].as_signed(), 0))
            m.d.comb += array.a[i].eq(ga[i])
        for j in range(C):
            m.d.sync += gw[j].eq(Mux(f_cmask[j], w_rd[j].as_signed(), 0))
            m.d.comb += array.w[j].eq(gw[j])

        # -- drain: one element per cycle from the shift chain ------------------------------
        draining = Signal()
        d_i = Signal(range(R)); d_j = Signal(range(C))
        d_m = Signal.like(row0); d_n = Signal.like(col0)      # absolute row / column
        d_row_addr = Signal.like(out_row_base); d_final = Signal()
        go = Signal()
        m.d.comb += go.eq(array.drain_ready | draining)
        m.d.comb += array.shift_en.eq(go)
        # element of the tile currently at the chain's output
        cur_i = Mux(draining, d_i, R - 1)
        cur_j = Mux(draining, d_j, C - 1)
        cur_m = Mux(draining, d_m, pend_m)
        cur_n = Mux(draining, d_n, pend_n)
        cur_row_addr = Mux(draining, d_row_addr, pend_base)
        cur_final = Mux(draining, d_final, pend_final)
        with m.If(go):
            m.d.sync += [draining.eq(1), d_final.eq(cur_final)]
            with m.If(cur_j == 0):
                m.d.sync += [d_j.eq(C - 1), d_n.eq(cur_n + (C - 1)), d_i.eq(cur_i - 1),
                             d_m.eq(cur_m - 1), d_row_addr.eq(cur_row_addr - N)]
                with m.If(cur_i == 0):
                    m.d.sync += draining.eq(0)
            with m.Else():
                m.d.sync += [d_j.eq(cur_j - 1), d_n.eq(cur_n - 1), d_i.eq(cur_i),
                             d_m.eq(cur_m), d_row_addr.eq(cur_row_addr)]

        # -- epilogue: requantize and write ----------------------------------------------
        e1_v = Signal(); e1_acc = Signal(signed(self.acc_width)); e1_idx = Signal(2 * DIM_BITS)
        e1_last = Signal()
        m.d.sync += [
            e1_v.eq(go & (cur_m < M) & (cur_n < N)),
            e1_acc.eq(array.drain_out),
            e1_idx.eq(cur_row_addr + cur_n),
            e1_last.eq(go & cur_final & (cur_i == 0) & (cur_j == 0)),
        ]
        prod_w = self._prod_w
        # acc * mult as two partial products (each one MULT18X18D), summed a cycle later:
        # a single wide product plus its carry chain did not fit in 10 ns on ECP5.
        lo_w = 16
        # both partial products on DSPs with their own input/output registers, plus a fabric
        # stage: the epilogue's DSPs, too, may be placed far from its logic
        m.submodules.mul_lo = mul_lo = IntMul(a_width=lo_w, b_width=REQUANT_MULT_BITS,
                                              a_signed=False, b_signed=False, impl=self.impl)
        m.submodules.mul_hi = mul_hi = IntMul(a_width=self.acc_width - lo_w,
                                              b_width=REQUANT_MULT_BITS, b_signed=False,
                                              impl=self.impl)
        m.d.comb += [mul_lo.a.eq(e1_acc[:lo_w]), mul_lo.b.eq(mult),
                     mul_hi.a.eq(e1_acc[lo_w:].as_signed()), mul_hi.b.eq(mult)]
        side = (e1_v, e1_acc, e1_idx)
        for k in range(mul_lo.LATENCY + 1):
            nxt = tuple(Signal.like(x, name=f"{x.name}_m{k}") for x in side)
            m.d.sync += [n.eq(x) for n, x in zip(nxt, side)]
            side = nxt
        e2_plo = Signal(lo_w + REQUANT_MULT_BITS, reset_less=True)
        e2_phi = Signal(signed(self.acc_width - lo_w + REQUANT_MULT_BITS + 1), reset_less=True)
        m.d.sync += [e2_plo.eq(mul_lo.p), e2_phi.eq(mul_hi.p)]
        e2b_v = Signal(); e2b_acc = Signal.like(e1_acc); e2b_idx = Signal.like(e1_idx)
        e2_prod = Signal(signed(prod_w))
        m.d.sync += [e2b_v.eq(side[0]), e2b_acc.eq(side[1]), e2b_idx.eq(side[2]),
                     e2_prod.eq((e2_phi << lo_w) + e2_plo)]
        # 2**(shift-1), or 0 for shift 0; shift <= prod_w (clamped at start), so it never
        # falls off the top (it did when it was cut to prod_w - 1 bits: negative products
        # then rounded towards -inf at shifts >= prod_w)
        rnd = (Const(1, 1) << shift)[1:prod_w + 1]
        e3_v = Signal(); e3_acc = Signal.like(e1_acc); e3_idx = Signal.like(e1_idx)
        e3_sum = Signal(signed(prod_w + 1))
        m.d.sync += [e3_v.eq(e2b_v), e3_acc.eq(e2b_acc), e3_idx.eq(e2b_idx),
                     e3_sum.eq(e2_prod + rnd)]
        e4_v = Signal(); e4_acc = Signal.like(e1_acc); e4_idx = Signal.like(e1_idx)
        e4_q = Signal(signed(prod_w + 1))
        m.d.sync += [e4_v.eq(e3_v), e4_acc.eq(e3_acc), e4_idx.eq(e3_idx),
                     e4_q.eq(e3_sum >> shift)]
        y = Signal(signed(prod_w + 2))
        lo = Mux(relu, zp, -128)
        m.d.comb += y.eq(e4_q + zp)
        y8 = Signal(signed(8))
        m.d.comb += y8.eq(Mux(y > 127, 127, Mux(y < lo, lo, y)))
        wp = out_mem.write_port(granularity=8)
        is_raw = mode == OutMode.RAW32
        m.d.comb += [
            wp.addr.eq(Mux(is_raw, e4_idx, e4_idx >> 2)),
            wp.data.eq(Mux(is_raw, e4_acc.as_signed(), Cat(y8, y8, y8, y8))),
            wp.en.eq(Mux(~e4_v, 0, Mux(is_raw, 0b1111, Const(1, 4) << e4_idx[:2]))),
        ]
        # done follows the final tile's last element through the epilogue
        fin = e1_last
        for s in range(self.EPILOGUE_LATENCY - 2):
            nxt = Signal(name=f"fin{s}")
            m.d.sync += nxt.eq(fin)
            fin = nxt
        with m.If(fin):
            m.d.sync += final_drained.eq(1)

        # -- host reads --------------------------------------------------------------------
        orp = out_mem.read_port()
        m.d.comb += [orp.addr.eq(bus_addr >> 2), orp.en.eq(1)]
        # Host reads take four cycles: input register, EBR -> register (ga/gw/o_q) -> byte mux -> register,
        # so the EBR's slow clock-to-out never meets the muxes in the same cycle.
        r_sel = Signal(Buffer); r_lane_a = Signal.like(lane_a); r_lane_w = Signal.like(lane_w)
        r_byte = Signal(2)
        r_sel2 = Signal(Buffer); r_lane_a2 = Signal.like(lane_a); r_lane_w2 = Signal.like(lane_w)
        r_byte2 = Signal(2)
        m.d.sync += [r_sel.eq(bus_sel), r_lane_a.eq(lane_a), r_lane_w.eq(lane_w),
                     r_byte.eq(bus_addr[:2]),
                     r_sel2.eq(r_sel), r_lane_a2.eq(r_lane_a), r_lane_w2.eq(r_lane_w),
                     r_byte2.eq(r_byte)]
        o_q = Signal(32)
        m.d.sync += o_q.eq(orp.data)
        a_data = Signal(8); w_data = Signal(8)
        with m.Switch(r_lane_a2):
            for i in range(R):
                with m.Case(i):
                    m.d.comb += a_data.eq(ga[i])
        with m.Switch(r_lane_w2):
            for j in range(C):
                with m.Case(j):
                    m.d.comb += w_data.eq(gw[j])
        o_data = o_q.word_select(r_byte2, 8)
        with m.Switch(r_sel2):
            with m.Case(Buffer.A):
                m.d.sync += self.bus_rdata.eq(a_data)
            with m.Case(Buffer.W):
                m.d.sync += self.bus_rdata.eq(w_data)
            with m.Case(Buffer.OUT):
                m.d.sync += self.bus_rdata.eq(o_data)
        return m
