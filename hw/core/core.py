"""MixCore: the mpGEMM core v2, split at its seams.

::

    buffers + address generators --operands--> engine --sums--> drain chains --> edge units
    (A, W, channel / group tables)             (systolic,      (one per row)    (dequant,
                                                any PE kind)                     requant, sink)
"""

from __future__ import annotations

import hashlib
import json

from amaranth import Module, Signal, signed, unsigned, Mux, Cat, Const
from amaranth.lib import data, wiring, fifo
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw import numerics
from sw.numerics import OutMode, WeightFormat, NMPattern
from sw.protocol import Buffer, ErrorCode, PeKind

from hw.arith._common import check_impl, check_bool, check_int_param, use_ecp5
from hw.dsp.chain import SparseDSPChain
from hw.pe import pe_class
from hw.pe.mixpe import decode_weight_byte, arrange_activations, MixPE
from hw.systolic.engine import SystolicEngine
from hw.systolic.util import (is_pow2 as _is_pow2, serial_mul_step as _serial_mul_step,
                               delay as _delay, register as _register, select_tree,
                               tree_levels)

from .desc import LAYER_LAYOUT, GROUP_CODES, TOKEN_LAYOUT, TABLE_LAYOUT, DIM_BITS, DSP_FORMATS
from .edge import EdgeUnit

__all__ = ["MixCore", "core_signature"]

COUNTER_BITS = 48

#: the host-visible buffers are the wire protocol's (one definition, in sw)
CoreBuffer = Buffer


def core_signature(*, addr_bits: int) -> wiring.Signature:
    """The core's ports, defined once: host bus, layer descriptor, control, counters."""
    return wiring.Signature({
        "bus_sel": In(CoreBuffer), "bus_addr": In(unsigned(addr_bits)),
        "bus_wdata": In(8), "bus_we": In(1), "bus_re": In(1), "bus_rdata": Out(8),
        "bus_wbusy": Out(1),
        "cfg": In(LAYER_LAYOUT),
        "start": In(1), "abort": In(1), "busy": Out(1), "done": Out(1), "error": Out(ErrorCode),
        "cnt_cycles": Out(COUNTER_BITS), "cnt_busy": Out(COUNTER_BITS),
        "cnt_stall": Out(COUNTER_BITS), "cnt_macs": Out(COUNTER_BITS),
        "cnt_dq_stall": Out(COUNTER_BITS),
    })


class MixCore(wiring.Component):
    """Mixed-precision GEMM: ``OUT = epilogue(A @ dequant(W))`` for any shape that fits.

    Output-stationary: output tiles of ``rows x cols`` (N tiles outer, M inner); each step
    feeds every column one weight byte (1, 2 or 4 weights along K by the format) and every
    row the matching activations. Group ends (every ``G / lanes`` steps, and every tile end)
    drain the rows' sums to the edge units, which dequantize per group, accumulate, add the
    bias and requantize per output channel. Consecutive group ends are kept at least
    ``cols`` steps apart (the drain chains' period); stall cycles this costs inside a tile
    are counted in ``cnt_dq_stall``.

    Host address spaces (bytes; :mod:`sw.layout` builds and reads them):

    * ``A``: byte ``L`` in row bank ``(L >> 2) % rows``, word ``(L >> 2) // rows``, byte
      ``L & 3``; ``A[m, k]`` is byte ``k % 4`` of word ``(m // rows) * ceil(K / 4) + k // 4``
      of bank ``m % rows``.
    * ``W``: byte ``L`` in column bank ``L % cols`` at ``L // cols``; packed byte ``[kb, n]``
      (``sw.numerics.pack_weights``) at ``(n // cols) * KB + kb`` of bank ``n % cols``.
    * ``OUT``: like A; element ``(m, n)`` has index ``e = (m // rows) * N + n`` in bank
      ``m % rows``: byte ``e`` (INT8) or word ``e`` (RAW32).
    * ``CHAN``: 8 bytes per channel ``n``; ``GROUP``: 4 bytes per ``g * N + n``.
    * ``DSPW`` (with a DSP engine): 16-byte records per chain, byte ``b`` of record ``r`` of
      chain ``c`` at ``((r * CH + c) << 4) | b`` (``CH``: chains rounded up to a power of
      two); bytes ``0 .. L-1`` the stages' weights, bytes 8-10 their 3-bit indices.

    The sparse DSP engine (``dsp_stages > 0``, :class:`hw.dsp.chain.SparseDSPChain`) runs
    the layers whose descriptor has ``sparse = 1 + pattern``: ``cols`` output columns
    (``cols`` chains, or ``cols / 2`` packed ones), one activation row at a time, its window
    of ``Wp = L / n * m`` activations read from the first ``Wp / 4`` row banks in one
    cycle (the host writes a DSP layer's A striped along K: ``A[m, k]`` is byte ``k % 4`` of
    word ``m * S + k // Wp`` of bank ``(k // 4) % (Wp / 4)``, ``S = ceil(K / Wp)`` steps per
    row). Each row's ``cols`` dot products drain through the row's edge unit (same tables,
    requantization and OUT layout as the array), two rows together (the odd one a cycle
    behind), at most one pair per ``cols`` cycles.

    Parameters
    ----------
    rows, cols : int
        Array shape (powers of two).
    a_depth : int
        32-bit words per activation bank.
    w_depth : int
        Bytes per weight bank.
    out_depth : int
        32-bit words per output bank.
    chan_depth, group_depth : int
        Entries of the per-channel and per-group tables.
    pe : str
        PE kind (``"mixpe"`` or ``"int8-dsp"``).
    dsp_stages : 0, 4 or 8
        Stages ``L`` of the sparse DSP engine's chains (0: no DSP engine).
    dsp_packed : bool
        Two 4-bit weights per MULT18X18D (``cols / 2`` chains).
    dsp_share : int
        Chains per index group (a divisor of the chain count; 1: every chain its own
        indices): a group's chains take the indices of its first chain's DSPW records and
        share its index muxes (``SparseDSPChain(share=...)``).
    dsp_depth : int
        16-byte records per chain of the DSP engine's weight memory.
    watchdog : int, optional
        Cycles a run may stay busy before it is stopped with WATCHDOG.
    write_relays : int
        Relay registers of the host-write ring between the core's input registers and its
        first buffer (the link may sit far from the buffers); each adds a cycle to
        ``HOST_WRITE_LATENCY``.
    impl : "auto" | "generic" | "ecp5"

    Members
    -------
    See :func:`core_signature`. ``cfg`` (``LAYER_LAYOUT``) is sampled at ``start``. Host
    writes travel a ring of registers through the buffers and land up to
    ``HOST_WRITE_LATENCY`` cycles after ``bus_we``; ``bus_wbusy`` is set while one is on its
    way. A host read issued while ``bus_wbusy`` is clear sees every earlier write; a run
    waits for the ring to drain before it reads a buffer.
    """

    def __init__(self, *, rows: int = 4, cols: int = 4, a_depth: int = 256, w_depth: int = 1024,
                 out_depth: int = 256, chan_depth: int = 256, group_depth: int = 1024,
                 pe: str = "mixpe", watchdog: int | None = None, impl: str = "auto",
                 dsp_stages: int = 0, dsp_packed: bool = False, dsp_depth: int = 256,
                 dsp_share: int = 1, write_relays: int = 2):
        for name, v in (("rows", rows), ("cols", cols)):
            if not _is_pow2(v) or v > 64:
                raise ValueError(f"{name} must be a power of two in [1, 64], not {v!r}")
        for name, v in (("a_depth", a_depth), ("w_depth", w_depth), ("out_depth", out_depth),
                        ("chan_depth", chan_depth), ("group_depth", group_depth)):
            if not _is_pow2(v) or not 16 <= v <= (1 << 16):
                raise ValueError(f"{name} must be a power of two in [16, 65536], not {v!r}")
        self.rows, self.cols = rows, cols
        self.write_relays = check_int_param("write_relays", write_relays, range(0, 65))
        self.pe = pe
        self.pe_cls = pe_class(pe)
        self.formats = self.pe_cls.FORMATS
        self.groups = self.pe_cls is MixPE
        #: group sizes along K this core dequantizes (IDENTIFY)
        self.group_sizes = tuple(g for g in GROUP_CODES.values() if g) if self.groups else ()
        #: processing element kind (IDENTIFY)
        self.PE_KIND = PeKind.MIXPE if pe == "mixpe" else PeKind.INT8_DSP
        self.impl = check_impl(impl)
        self.a_depth, self.w_depth, self.out_depth = a_depth, w_depth, out_depth
        self.chan_depth, self.group_depth = chan_depth, group_depth
        #: largest K of any format (INT2 / ternary: four per weight byte)
        self.max_k = min(4 * a_depth, max(numerics.WEIGHT_LANES[f] for f in self.formats) * w_depth,
                         (1 << DIM_BITS) - 1)
        # widest sum of a tile: INT8 (and POW2) weights, K <= w_depth
        self.acc_width = max(numerics.acc_bits(min(w_depth, 4 * a_depth)), 17)
        assert self.acc_width <= 32, "RAW32 output needs the tile sums to fit 32 bits"
        self.a_bytes = 4 * rows * a_depth
        self.w_bytes = cols * w_depth
        self.out_bytes = 4 * rows * out_depth
        self.chan_bytes = 8 * chan_depth
        self.group_bytes = 4 * group_depth
        # -- the sparse DSP engine --
        if dsp_stages not in (0, 4, 8):
            raise ValueError(f"dsp_stages must be 0 (no DSP engine), 4 or 8, not {dsp_stages!r}")
        self.dsp_stages = dsp_stages
        self.dsp_packed = check_bool("dsp_packed", dsp_packed)
        if not _is_pow2(dsp_depth) or not 16 <= dsp_depth <= (1 << 16):
            raise ValueError(f"dsp_depth must be a power of two in [16, 65536], not {dsp_depth!r}")
        self.dsp_depth = dsp_depth
        if dsp_stages:
            if dsp_packed and cols < 2:
                raise ValueError("a packed DSP engine needs cols >= 2 (two columns per chain)")
            self.dsp_chains = cols // (2 if dsp_packed else 1)
            self.dsp_share = check_int_param("dsp_share", dsp_share,
                                             range(1, self.dsp_chains + 1))
            if self.dsp_chains % self.dsp_share:
                raise ValueError(f"dsp_share must divide the DSP engine's {self.dsp_chains} "
                                 f"chains, not {dsp_share}")
            #: N:M patterns the DSP engine runs (IDENTIFY): those whose window fits the
            #: ``4 * rows`` bytes the A banks give per cycle (8 stages on 4 rows: dense,
            #: 2:4 and 4:8; 1:4 and 2:8 would need 32)
            self.dsp_patterns = SparseDSPChain.patterns_for(stages=dsp_stages,
                                                            max_window=4 * rows)
            if not self.dsp_patterns:
                raise ValueError(f"a DSP engine of {dsp_stages} stages needs windows of at "
                                 f"least {dsp_stages} activations, more than the {4 * rows} "
                                 f"bytes the {rows} A banks give per cycle")
            #: activations per step of each pattern
            self.dsp_windows = {p: SparseDSPChain.window_for(stages=dsp_stages, pattern=p)
                                for p in self.dsp_patterns}
            self.dsp_ch_pow2 = 1 << (self.dsp_chains - 1).bit_length()
            self.dsp_bytes = 16 * self.dsp_ch_pow2 * dsp_depth
        else:
            if dsp_share != 1:
                raise ValueError(f"dsp_share applies to a DSP engine (dsp_stages > 0) only, "
                                 f"not {dsp_share!r}")
            self.dsp_chains, self.dsp_patterns, self.dsp_windows = 0, (), {}
            self.dsp_share = 0
            self.dsp_ch_pow2, self.dsp_bytes = 1, 0
        #: bytes each buffer's host-read select tree chooses from (a DSPW record's lanes
        #: padded to 16, the last always 0)
        self._read_fanin = {CoreBuffer.A: 4 * rows, CoreBuffer.W: cols,
                            CoreBuffer.OUT: 4 * rows, CoreBuffer.CHAN: 8, CoreBuffer.GROUP: 4}
        if dsp_stages:
            self._read_fanin[CoreBuffer.DSPW] = 16 * self.dsp_chains
        self._read_levels = max(tree_levels(n) for n in self._read_fanin.values())
        #: cycles from ``bus_re`` to ``bus_rdata``: the input register, the read address
        #: registered and copied beside each memory, the memory, its data registered, the
        #: select trees, the output register
        self.READ_LATENCY = 6 + self._read_levels
        #: cycles ``bus_wbusy`` stays set after ``bus_we``: the input register, the ring's
        #: entry, its stages and the memory's write, then one cycle for the flag's register
        self.HOST_WRITE_LATENCY = len(self._ring_order()) + 4
        #: width of the sums the edge units take (a DSP dot product spans up to max_k INT8 MACs)
        self.edge_width = max(self.acc_width, numerics.acc_bits(self.max_k)) if dsp_stages \
            else self.acc_width
        assert self.edge_width <= 32
        self.addr_bits = max(self.a_bytes, self.w_bytes, self.out_bytes, self.chan_bytes,
                             self.group_bytes, self.dsp_bytes).bit_length() - 1
        self.engine_latency = (cols - 1) + self.pe_cls.latency()
        #: minimum steps between group (and tile) ends (the drain chains' period)
        self.MIN_PERIOD = cols
        #: cycles the drained sums wait for their table records (registered table reads)
        self.EDGE_DELAY = 2
        self.edge_latency = EdgeUnit.latency() + self.EDGE_DELAY
        #: cycles an aborted run stays busy: everything fed drains out before ``done``
        self.ABORT_CYCLES = (11 + self.engine_latency + rows + cols + self.edge_latency
                             + 2 * self.MIN_PERIOD)
        if dsp_stages:
            # the DSP engine's pipeline (fetch, chain) and one row's drain
            self.ABORT_CYCLES += dsp_stages + 5 + 4 + 2 * cols
        if watchdog is None:
            watchdog = 2 * self.max_run_cycles()
        if isinstance(watchdog, bool) or not isinstance(watchdog, int) or not \
                64 <= watchdog < (1 << 32):
            raise ValueError(f"watchdog must be an int in [64, 2**32) cycles, not {watchdog!r}")
        self.WATCHDOG = watchdog
        super().__init__(core_signature(addr_bits=self.addr_bits))

    def _token_layout(self):
        return TOKEN_LAYOUT(tg_bits=max(1, (self.group_depth - 1).bit_length()),
                            out_bits=(4 * self.out_depth).bit_length(),
                            rows=self.rows, cols=self.cols)

    def max_run_cycles(self) -> int:
        """An upper bound of the busy cycles of any run the buffers accept.

        A run feeds ``tiles_m * tiles_n * KB`` steps with ``tiles_n * KB <= w_depth`` and
        ``tiles_m <= a_depth``; a step takes at most ``MIN_PERIOD`` cycles (a group end
        every step). A DSP layer feeds at most ``a_depth`` words of rows plus one step per
        padding row, each row end at least ``MIN_PERIOD`` steps apart, per column tile
        (``tiles_n <= dsp_depth``)."""
        array = self.MIN_PERIOD * self.a_depth * self.w_depth
        dsp = self.dsp_depth * (self.a_depth + self.rows) * (self.MIN_PERIOD + 1) \
            if self.dsp_stages else 0
        return max(array, dsp) + 4 * DIM_BITS + 4096

    def config(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "a_depth": self.a_depth,
                "w_depth": self.w_depth, "out_depth": self.out_depth,
                "chan_depth": self.chan_depth, "group_depth": self.group_depth,
                "max_k": self.max_k, "acc_width": self.acc_width, "pe": self.pe,
                **({"dsp_stages": self.dsp_stages, "dsp_packed": self.dsp_packed,
                    "dsp_depth": self.dsp_depth} if self.dsp_stages else {}),
                **({"dsp_share": self.dsp_share} if self.dsp_share > 1 else {})}

    def config_hash(self) -> int:
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def _ring_order(self):
        """The host-write ring's stages: buffer names in ring order, ``None`` a relay.

        Relays from the input registers, the A banks up the rows, then the W banks along the
        columns (row 0's and column 0's banks sit at the array's corner), the epilogue's
        tables, the DSP engine's chains; a relay between the groups, which lie in different
        places."""
        a = [f"a{i}" for i in range(self.rows)][::-1]
        w = [f"w{j}" for j in range(self.cols)]
        d = [f"dw{c}" for c in range(self.dsp_chains)] if self.dsp_stages else []
        return [None] * self.write_relays + a + w + [None, "tc", "tg"] + ([None] + d if d else [])

    def _host_write_ring(self, m, writers, addr, wdata, we):
        """Host writes travel a ring of registers through the buffers, one stage per buffer.

        Each buffer writes from its own stage: the row and data straight from the stage's
        registers, the byte enables from a register loaded from the stage before (which
        buffer and which bytes are decoded once, at the ring's entry). A stage drives its
        buffer and the next stage only, so every hop spans two neighbouring buffers. One
        register per buffer loaded from the core's input registers (by the link) was the
        most frequent slowest path of the routed 85F builds (13-17 ns of routing across the
        die), and a second register per buffer did not shorten it: the input registers' nets
        reached every buffer, so the placer kept each second register beside its buffer. A
        write lands at most ``HOST_WRITE_LATENCY`` cycles after ``bus_we``; ``bus_wbusy``
        tells the host side, and a run waits for the ring to drain.
        """
        order = self._ring_order()
        by_name = {w[0]: (k, w) for k, w in enumerate(writers)}
        assert sorted(n for n in order if n) == sorted(by_name)
        lanes = max(w[5] for w in writers)
        bank_bits = len(writers).bit_length()
        layout = data.StructLayout({"addr": len(addr), "wdata": 8, "bank": bank_bits,
                                    "lanes": lanes, "we": 1})
        # entry: which buffer (mutually exclusive conditions) and which byte lanes
        hit = [w[3] for w in writers]
        bank = 0
        for k, h in enumerate(hit):
            bank = bank | Mux(h, k, 0)
        byte = 0
        for w, h in zip(writers, hit):
            if w[5] > 1:
                byte = byte | Mux(h, w[4], 0)
        entry = Signal(layout, name="ring_in")
        m.d.sync += [entry.addr.eq(addr), entry.wdata.eq(wdata), entry.bank.eq(bank),
                     entry.lanes.eq(Const(1, lanes) << byte),
                     entry.we.eq(we & Cat(*hit).any())]
        prev = entry
        for k, name in enumerate(order):
            st = Signal(layout, name=f"ring{k}")
            m.d.sync += [st.addr.eq(prev.addr), st.wdata.eq(prev.wdata), st.bank.eq(prev.bank),
                         st.lanes.eq(prev.lanes), st.we.eq(prev.we)]
            if name is not None:
                idx, (_, wp, row, _, _, gran) = by_name[name]
                en = Signal(gran, name=f"{name}_we")
                mine = prev.we & (prev.bank == idx)
                m.d.sync += en.eq(Mux(mine, prev.lanes[:gran] if gran > 1 else 1, 0))
                m.d.comb += [wp.addr.eq(row(st.addr)), wp.data.eq(st.wdata.replicate(gran)),
                             wp.en.eq(en)]
            prev = st
        # cycles since a write entered, saturating: the ring is empty at ``len(order) + 1``
        # (its last buffer writes at the clock edge after its stage loads)
        drain = len(order) + 1
        quiet = Signal(range(drain + 1), init=drain)
        with m.If(entry.we):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != drain):
            m.d.sync += quiet.eq(quiet + 1)
        # a register: combined at once, the flag ran from the counter through the link's
        # reply logic into the core (an 85F dsp8s seed's slowest path, 12.4 ns of routing
        # over 7 LUTs). Loaded from the bus_we port too, so it is set the cycle after a write
        wbusy = Signal()
        m.d.sync += wbusy.eq(self.bus_we | we | entry.we | (quiet != drain))
        m.d.comb += self.bus_wbusy.eq(wbusy)

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        lr, lc = R.bit_length() - 1, C.bit_length() - 1

        m.submodules.engine = eng = SystolicEngine(
            rows=R, cols=C, acc_width=self.acc_width, pe=self.pe, act_sums=self.groups,
            impl=self.impl)
        L = self.dsp_stages
        if L:
            m.submodules.dsp = dsp = SparseDSPChain(
                stages=L, chains=self.dsp_chains, m_max=8, packed=self.dsp_packed,
                acc_width=self.edge_width, tag_width=max(1, lr), max_window=4 * R,
                share=self.dsp_share, impl=self.impl)

        # host-side inputs registered once: the link sits far away on a big device
        bus_sel = Signal(CoreBuffer); bus_addr = Signal(self.addr_bits); bus_wdata = Signal(8)
        bus_we = Signal(); start = Signal(); abort = Signal()
        m.d.sync += [bus_sel.eq(self.bus_sel), bus_addr.eq(self.bus_addr),
                     bus_wdata.eq(self.bus_wdata), bus_we.eq(self.bus_we), start.eq(self.start),
                     abort.eq(self.abort)]

        # -- buffers ------------------------------------------------------------------------
        a_mems = [Memory(shape=32, depth=self.a_depth, init=[]) for _ in range(R)]
        w_mems = [Memory(shape=8, depth=self.w_depth, init=[]) for _ in range(C)]
        o_mems = [Memory(shape=32, depth=self.out_depth, init=[]) for _ in range(R)]
        chan_mem = Memory(shape=64, depth=self.chan_depth, init=[])
        grp_mem = Memory(shape=32, depth=self.group_depth, init=[])
        for i, mem in enumerate(a_mems):
            m.submodules[f"a_bank{i}"] = mem
        for j, mem in enumerate(w_mems):
            m.submodules[f"w_bank{j}"] = mem
        for i, mem in enumerate(o_mems):
            m.submodules[f"o_bank{i}"] = mem
        m.submodules.chan_mem = chan_mem
        m.submodules.grp_mem = grp_mem

        # -- layer configuration, latched at start --------------------------------------------
        cfg = Signal(LAYER_LAYOUT)
        M, K, N = cfg.m, cfg.k, cfg.n
        # copies of the configuration for its far-reaching uses, loaded from ``cfg`` a cycle
        # after it (the run starts DIM_BITS + 3 cycles after the latch; CHECK, in between,
        # reads ``cfg`` itself). ``cfg`` has sinks all over the die, and its routes into the
        # tile sequencer's next-tile arithmetic and into the rows' activation arrangement
        # were the 85F dsp8s build's slowest paths (5.4-5.8 ns of routing of 15.4-16.6 ns):
        # the sequencer gets its own M and N, each row and column its own format (kept
        # apart on ECP5, or Yosys merges the copies back into one register)
        apart = use_ecp5(self.impl, platform)
        Ms = _register(m, cfg.m, "cfg_m_seq")
        Ns = _register(m, cfg.n, "cfg_n_seq")
        lanes_log = Signal(2)               # log2 of weights per byte
        kb = Signal(DIM_BITS)               # steps per tile
        kb_last = Signal(DIM_BITS)          # kb - 1, a register: ``step == kb - 1`` (a
                                            # subtract and a compare) was the slowest path
        gsteps_last = Signal(DIM_BITS)      # gsteps - 1, likewise
        kw = Signal(DIM_BITS)               # A words per row of a tile
        gsteps = Signal(DIM_BITS)           # steps per group (0: no groups)
        glog = Signal(range(8))             # log2 of the group size
        ngroups = Signal(DIM_BITS)
        kmod = Signal(2)                    # valid lanes of the last step (0: all)
        group_on = Signal()
        dsp_on = Signal()                   # the layer runs on the DSP engine

        # -- sequencer state ------------------------------------------------------------------
        step = Signal(DIM_BITS)             # step within the tile
        gstep = Signal(DIM_BITS)            # step within the group
        row0 = Signal(DIM_BITS + 1); col0 = Signal(DIM_BITS + 1)
        a_tile = Signal(range(self.a_depth + 1))
        w_tile = Signal(range(max(self.w_depth, self.dsp_depth) + 1))
        out_row = Signal((4 * self.out_depth).bit_length() + DIM_BITS)
        gbase = Signal(2 * DIM_BITS)
        row_last = Signal(); col_last = Signal()
        since = Signal(range(self.MIN_PERIOD + 1))
        bad = Signal()
        mt_cnt = Signal(DIM_BITS); nt_cnt = Signal(DIM_BITS)
        p_a = Signal(2 * DIM_BITS + 1); p_w = Signal(2 * DIM_BITS + 1)
        p_o = Signal(2 * DIM_BITS + 1); p_g = Signal(2 * DIM_BITS + 1)
        chk_bit = Signal(range(DIM_BITS + 1))
        final_drained = Signal()
        issue = Signal()
        # DSP layers: the row within the tile; ``step`` counts the row's steps, ``a_tile``
        # is the row's first A word, ``w_tile`` the column tile's first weight record
        drow = Signal(range(R))
        d_issue = Signal()
        d_last = Signal()
        d_push = Signal()

        tok_layout = self._token_layout()
        m.submodules.tokens = tokens = fifo.SyncFIFOBuffered(width=tok_layout.size, depth=4)

        # ``busy`` is a register of its own, set and cleared with the FSM's moves out of and
        # into IDLE: it selects addresses and enables all over the die (and the link's
        # replies), so no state decode sits in front of those nets
        busy = Signal()
        m.d.comb += self.busy.eq(busy)
        m.d.sync += self.done.eq(0)
        with m.If(self.busy):
            m.d.sync += self.cnt_cycles.eq(self.cnt_cycles + 1)
        wd = Signal(32); wd_hit = Signal()
        m.d.sync += [wd.eq(wd - 1), wd_hit.eq(self.busy & (wd == 0))]
        ab_cnt = Signal(range(self.ABORT_CYCLES + 1))

        def abortable():
            with m.If(abort | wd_hit):
                # an abort wins over a move to IDLE in the same cycle: the core stays busy,
                # and its ``done`` waits for the abort's end (one ``done`` per start)
                m.d.sync += [self.error.eq(Mux(abort, ErrorCode.ABORTED, ErrorCode.WATCHDOG)),
                             ab_cnt.eq(self.ABORT_CYCLES), busy.eq(1), self.done.eq(0)]
                m.next = "ABORT"

        fmt_ok = Signal()
        m.d.comb += fmt_ok.eq(0)
        with m.Switch(cfg.fmt):
            for f in self.formats:
                with m.Case(f):
                    m.d.comb += fmt_ok.eq(1)

        # valid rows / columns of the current tile, updated together with row0 / col0
        rows_left = Signal(range(R + 1)); cols_left = Signal(range(C + 1))
        # rows / columns after the current tile (M - row0 - R, N - col0 - C), kept as
        # registers so that a tile advance is a compare and a subtract from them, not a
        # subtract from M / N and then a compare (a routed 85F build's slowest path was
        # the N copy -> N - col0 - C -> clip -> cols_left). They wrap below 0 only on a
        # last tile, where they are not read. The ``*0`` registers hold them and the flags
        # for the first tile, loaded during CHECK from the M / N copies
        m_after = Signal(DIM_BITS + 1); n_after = Signal(DIM_BITS + 1)
        m_after0 = Signal(DIM_BITS + 1); n_after0 = Signal(DIM_BITS + 1)
        rows_left0 = Signal.like(rows_left); cols_left0 = Signal.like(cols_left)
        row_last0 = Signal(); col_last0 = Signal()

        def clip(v, lim):
            return Mux(v >= lim, lim, v)

        group_end = Signal()
        tile_end = Signal()
        m.d.comb += [tile_end.eq(step == kb_last),
                     group_end.eq(tile_end | (group_on & (gstep == gsteps_last)))]
        wait_drain = Signal()
        m.d.comb += wait_drain.eq(group_end & (since != self.MIN_PERIOD))
        with m.If(since != self.MIN_PERIOD):
            m.d.sync += since.eq(since + 1)

        def next_tile(*, next_a_rows):
            """After a tile: done, or the first M tile of the next column tile, or the next M
            tile (``next_a_rows``: A's word pointer moves on to its rows here)."""
            with m.If(row_last & col_last):
                m.next = "FLUSH"
            with m.Elif(row_last):
                m.d.sync += [row0.eq(0), col0.eq(col0 + C), out_row.eq(0),
                             a_tile.eq(0), w_tile.eq(w_tile + kb),
                             row_last.eq(row_last0), rows_left.eq(rows_left0),
                             m_after.eq(m_after0),
                             col_last.eq(n_after <= C), cols_left.eq(clip(n_after, C)),
                             n_after.eq(n_after - C)]
            with m.Else():
                m.d.sync += [row0.eq(row0 + R), out_row.eq(out_row + Ns),
                             row_last.eq(m_after <= R), rows_left.eq(clip(m_after, R)),
                             m_after.eq(m_after - R)]
                if next_a_rows:
                    m.d.sync += a_tile.eq(a_tile + kw)

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [
                        cfg.eq(self.cfg), busy.eq(1),
                        self.error.eq(ErrorCode.OK), wd.eq(self.WATCHDOG - 1),
                        self.cnt_cycles.eq(0), self.cnt_busy.eq(0), self.cnt_stall.eq(0),
                        self.cnt_macs.eq(0), self.cnt_dq_stall.eq(0),
                    ]
                    m.next = "PREP"
            with m.State("PREP"):
                # the derived counts from the latched ``cfg``, a cycle after the latch: the
                # port's register sits by the link, and its carry chains into ``kb`` were a
                # routed 85F build's slowest path
                c = cfg
                lanes = Signal(2)
                m.d.comb += lanes.eq(Mux(c.fmt == WeightFormat.INT4, 1,
                                     Mux((c.fmt == WeightFormat.INT2) |
                                         (c.fmt == WeightFormat.TERNARY), 2, 0)))
                # DSP layers: S = ceil(K / Wp) steps per row, both for A words and
                # weight records (kb, kw)
                d_steps = Signal(DIM_BITS)
                m.d.comb += d_steps.eq(0)
                with m.Switch(c.sparse):
                    for pat, win in self.dsp_windows.items():
                        with m.Case(1 + int(pat)):
                            wl = win.bit_length() - 1
                            m.d.comb += d_steps.eq((c.k + win - 1) >> wl)
                # without a DSP engine the flag is a constant 0 and its logic goes away
                d_on = (c.sparse != 0) if self.dsp_stages else Const(0, 1)
                m.d.sync += [
                    lanes_log.eq(lanes), dsp_on.eq(d_on),
                    kb.eq(Mux(d_on, d_steps, (c.k + (1 << lanes) - 1) >> lanes)),
                    kw.eq(Mux(d_on, d_steps, (c.k + 3) >> 2)),
                    kmod.eq(c.k & ((1 << lanes) - 1)),
                    group_on.eq(c.group != 0),
                    mt_cnt.eq((c.m + R - 1) >> lr), nt_cnt.eq((c.n + C - 1) >> lc),
                    p_a.eq(0), p_w.eq(0), p_o.eq(0), p_g.eq(0), chk_bit.eq(0),
                ]
                with m.Switch(c.group):
                    for code, size in GROUP_CODES.items():
                        with m.Case(code):
                            lg = max(size, 1).bit_length() - 1
                            m.d.sync += [glog.eq(lg),
                                         gsteps.eq(Const(size, DIM_BITS) >> lanes),
                                         ngroups.eq((c.k + size - 1) >> lg if size else 1)]
                m.next = "CHECK"
                abortable()
            with m.State("CHECK"):
                # DSP layers: M rows of S words each (no padding rows in A)
                _serial_mul_step(m, p_a, Mux(dsp_on, M, mt_cnt), kw, chk_bit, name="p_a")
                _serial_mul_step(m, p_w, nt_cnt, kb, chk_bit, name="p_w")
                _serial_mul_step(m, p_o, mt_cnt, N, chk_bit, name="p_o")
                _serial_mul_step(m, p_g, ngroups, N, chk_bit, name="p_g")
                m.d.sync += [chk_bit.eq(chk_bit + 1), kb_last.eq(kb - 1),
                             gsteps_last.eq(gsteps - 1),
                             m_after0.eq(Ms - R), n_after0.eq(Ns - C),
                             rows_left0.eq(clip(Ms, R)), cols_left0.eq(clip(Ns, C)),
                             row_last0.eq(Ms <= R), col_last0.eq(Ns <= C)]
                with m.If(chk_bit == DIM_BITS):
                    out_cap = Mux(cfg.out_mode == OutMode.INT8, 4 * self.out_depth, self.out_depth)
                    dsp_cfg_ok = Signal()
                    m.d.comb += dsp_cfg_ok.eq(0)
                    dsp_fmt = 0
                    for f in DSP_FORMATS[self.dsp_packed]:
                        dsp_fmt = dsp_fmt | (cfg.fmt == f)
                    with m.Switch(cfg.sparse):
                        for pat in self.dsp_patterns:
                            with m.Case(1 + int(pat)):
                                m.d.comb += dsp_cfg_ok.eq(~group_on & dsp_fmt)
                    w_cap = Mux(dsp_on, self.dsp_depth, self.w_depth)
                    m.d.sync += bad.eq(
                        (M == 0) | (K == 0) | (N == 0) | (K > self.max_k) |
                        Mux(dsp_on, ~dsp_cfg_ok, ~fmt_ok) |
                        (group_on & (Const(int(self.groups), 1) == 0)) |
                        (p_a > self.a_depth) | (p_w + cfg.w_base > w_cap) |
                        (p_o > out_cap) | (cfg.chan & (N + cfg.chan_base > self.chan_depth)) |
                        (group_on & (p_g + cfg.group_base > self.group_depth)))
                    m.next = "DECIDE"
                abortable()
            with m.State("DECIDE"):
                with m.If(bad):
                    m.d.sync += [self.error.eq(ErrorCode.BAD_SHAPE), self.done.eq(1), busy.eq(0)]
                    m.next = "IDLE"
                with m.Elif(~self.bus_wbusy):   # host writes still in the ring land first
                    m.d.sync += [step.eq(0), gstep.eq(0), row0.eq(0), col0.eq(0),
                                 a_tile.eq(0), w_tile.eq(cfg.w_base), out_row.eq(0),
                                 gbase.eq(cfg.group_base),
                                 row_last.eq(row_last0), col_last.eq(col_last0),
                                 rows_left.eq(rows_left0), cols_left.eq(cols_left0),
                                 m_after.eq(m_after0), n_after.eq(n_after0),
                                 since.eq(self.MIN_PERIOD), final_drained.eq(0), drow.eq(0)]
                    with m.If(dsp_on):
                        m.next = "DRUN"
                    with m.Else():
                        m.next = "RUN"
                abortable()
            with m.State("RUN"):
                with m.If(wait_drain):
                    m.d.sync += self.cnt_stall.eq(self.cnt_stall + 1)
                    with m.If(~tile_end):
                        m.d.sync += self.cnt_dq_stall.eq(self.cnt_dq_stall + 1)
                with m.Else():
                    m.d.comb += issue.eq(1)
                    m.d.sync += [step.eq(step + 1), gstep.eq(gstep + 1),
                                 self.cnt_busy.eq(self.cnt_busy + 1)]
                    with m.If(group_end):
                        m.d.sync += [gstep.eq(0), since.eq(1), gbase.eq(gbase + N)]
                    with m.If(tile_end):
                        m.d.sync += [step.eq(0), gbase.eq(cfg.group_base)]
                        next_tile(next_a_rows=True)
                abortable()
            with m.State("DRUN"):
                m.d.comb += d_last.eq(step == kb_last)
                # rows drain in pairs (one row with a single row bank), each pair's sums
                # take the edge ``cols`` cycles: pair ends at least that far apart
                pair_end = drow[0] if R > 1 else Const(1, 1)
                with m.If(d_last & pair_end & (since != self.MIN_PERIOD)):
                    m.d.sync += self.cnt_stall.eq(self.cnt_stall + 1)
                with m.Else():
                    m.d.comb += [d_issue.eq(1), d_push.eq(d_last & (drow == 0))]
                    m.d.sync += [step.eq(step + 1), self.cnt_busy.eq(self.cnt_busy + 1)]
                    with m.If(d_last):
                        # rows past M get one step: their (unwritten) drain carries the
                        # tile's token to the last edge unit
                        m.d.sync += [drow.eq(drow + 1), a_tile.eq(a_tile + kw),
                                     step.eq(Mux(drow + 1 < rows_left, 0, kb_last))]
                        with m.If(pair_end):
                            m.d.sync += since.eq(1)
                        with m.If(drow == R - 1):
                            m.d.sync += [drow.eq(0), step.eq(0)]
                            # a_tile already moved on with every row
                            next_tile(next_a_rows=False)
                abortable()
            with m.State("FLUSH"):
                with m.If(final_drained):
                    m.d.sync += [self.done.eq(1), busy.eq(0)]
                    m.next = "IDLE"
                abortable()
            with m.State("ABORT"):
                m.d.sync += ab_cnt.eq(ab_cnt - 1)
                with m.If(ab_cnt == 0):
                    m.d.sync += [self.done.eq(1), final_drained.eq(0), busy.eq(0)]
                    m.next = "IDLE"

        # -- drain tokens: one per group end, consumed when row 0 starts draining it ---------
        tok_w = Signal(tok_layout)
        m.d.comb += [
            tok_w.gbase.eq(gbase), tok_w.col0.eq(col0), tok_w.out_row.eq(out_row),
            tok_w.rows_left.eq(rows_left), tok_w.cols_left.eq(cols_left),
            # the tile's first group ends while gstep still counts from the tile's start
            tok_w.first_g.eq(dsp_on | (gstep == step)),
            tok_w.last_g.eq(dsp_on | tile_end),
            tok_w.final.eq((dsp_on | tile_end) & row_last & col_last),
            # a DSP tile's token goes in with its first row's last step
            tokens.w_data.eq(tok_w), tokens.w_en.eq(Mux(dsp_on, d_push, issue & group_end)),
        ]

        # -- operand fetch ---------------------------------------------------------------------
        sel_bits = Signal(2)                # which bytes of the A word this step uses
        m.d.comb += sel_bits.eq(Mux(lanes_log == 0, step[:2], Mux(lanes_log == 1, step[:1] << 1, 0)))
        a_word = Signal(DIM_BITS)
        m.d.comb += a_word.eq(Mux(dsp_on | (lanes_log == 2), step,
                                  Mux(lanes_log == 0, step >> 2, step >> 1)))
        # lanes valid in this step (the last step of a ragged K has fewer)
        nlanes = Signal(3)
        m.d.comb += nlanes.eq(Mux(tile_end & (kmod != 0), kmod, 1 << lanes_log))
        lane_mask = Signal(4)
        m.d.comb += lane_mask.eq((Const(1, 5) << nlanes) - 1)

        lane_a = (bus_addr >> 2)[:lr] if lr else Const(0, 1)
        lane_w = bus_addr[:lc] if lc else Const(0, 1)
        idx_a = bus_addr >> (2 + lr)
        idx_w = bus_addr >> lc

        # host writes, gathered here and built below as a ring through the buffers: (name,
        # write port, ring address -> row, this buffer is written (decoded at the ring's
        # entry from the input registers), its byte lane, lanes)
        writers = []

        def host_write(wp, row, hit, name, gran_bytes=1, byte=None):
            writers.append((name, wp, row, hit, byte, gran_bytes))

        # stage e: the read addresses registered once by the sequencer; stage e2: a copy per
        # bank / chain beside its memory. The busy select and the adders stay off the
        # memories' address pins, and no register drives the address pins of memories all
        # over the die: on the 85F a 12.9 ns net from the sequencer into a DSPW memory's
        # address, then (one register) a 15.3 ns net from the address register to the
        # address pins of 48 EBRs, were the slowest paths. A copy loads while the core is
        # busy or when the host reads its own bank, so the copies differ in their enables
        # and synthesis keeps them apart.
        a_ra = Signal(range(self.a_depth), reset_less=True)
        w_ra = Signal(range(self.w_depth), reset_less=True)
        o_ra = Signal(range(self.out_depth), reset_less=True)
        e_busy = Signal()
        e_lane_a = Signal.like(lane_a); e_lane_w = Signal.like(lane_w)
        m.d.sync += [a_ra.eq(Mux(self.busy, a_tile + a_word, idx_a)),
                     w_ra.eq(Mux(self.busy, w_tile + step, idx_w)), o_ra.eq(idx_a),
                     e_busy.eq(self.busy), e_lane_a.eq(lane_a), e_lane_w.eq(lane_w)]

        def local_copy(src, en, name):
            r = Signal.like(src, name=name, reset_less=True)
            with m.If(en):
                m.d.sync += r.eq(src)
            return r

        a_rd = []
        for i, mem in enumerate(a_mems):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(local_copy(a_ra, e_busy | (e_lane_a == i), f"a_ra{i}")),
                         rp.en.eq(1)]
            host_write(mem.write_port(granularity=8), lambda a: a >> (2 + lr),
                       (bus_sel == CoreBuffer.A) & (lane_a == i) & (idx_a < self.a_depth),
                       f"a{i}", 4, bus_addr[:2])
            a_rd.append(rp.data)
        w_rd = []
        for j, mem in enumerate(w_mems):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(local_copy(w_ra, e_busy | (e_lane_w == j), f"w_ra{j}")),
                         rp.en.eq(1)]
            host_write(mem.write_port(), lambda a: a >> lc,
                       (bus_sel == CoreBuffer.W) & (lane_w == j) & (idx_w < self.w_depth), f"w{j}")
            w_rd.append(rp.data)
        # the DSP engine's weights: a record of L weight bytes and 3 index bytes per chain
        # and step (host bytes 0 .. L-1 and 8 .. 10 of each 16-byte record)
        dw_rd = []
        if L:
            lch = self.dsp_ch_pow2.bit_length() - 1
            d_byte = bus_addr[:4]
            d_lane = Mux(d_byte < L, d_byte, (d_byte - (8 - L))[:4])
            d_lane_ok = (d_byte < L) | ((d_byte >= 8) & (d_byte < 11))
            d_chain = bus_addr[4:4 + lch] if lch else Const(0, 1)
            d_idx = bus_addr >> (4 + lch)
            d_ra = Signal(range(self.dsp_depth), reset_less=True)
            e_dch = Signal.like(d_chain)
            m.d.sync += [d_ra.eq(Mux(self.busy, w_tile + step, d_idx)), e_dch.eq(d_chain)]
            for c in range(self.dsp_chains):
                mem = Memory(shape=8 * (L + 3), depth=self.dsp_depth, init=[])
                m.submodules[f"dspw{c}"] = mem
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(local_copy(d_ra, e_busy | (e_dch == c), f"d_ra{c}")),
                             rp.en.eq(1)]
                host_write(mem.write_port(granularity=8), lambda a: a >> (4 + lch),
                           (bus_sel == CoreBuffer.DSPW) & (d_chain == c) & d_lane_ok &
                           (d_idx < self.dsp_depth), f"dw{c}", L + 3, d_lane)
                dw_rd.append(rp.data)

        host_write(chan_mem.write_port(granularity=8), lambda a: a >> 3,
                   (bus_sel == CoreBuffer.CHAN) & ((bus_addr >> 3) < self.chan_depth), "tc", 8,
                   bus_addr[:3])
        host_write(grp_mem.write_port(granularity=8), lambda a: a >> 2,
                   (bus_sel == CoreBuffer.GROUP) & ((bus_addr >> 2) < self.group_depth), "tg",
                   4, bus_addr[:2])
        self._host_write_ring(m, writers, bus_addr, bus_wdata, bus_we & ~self.busy)

        # stage e: read addresses registered (above); stage f: memory data arrives; stage g:
        # registered (EBR clock-to-out is slow), stage h: arranged / decoded and registered
        # into the engine
        e_valid, e_first, e_last = Signal(), Signal(), Signal()
        e_sel, e_mask = Signal(2), Signal(4)
        e_rmask, e_cmask = Signal(R), Signal(C)
        m.d.sync += [e_valid.eq(issue), e_first.eq(issue & (gstep == 0)),
                     e_last.eq(issue & group_end), e_sel.eq(sel_bits), e_mask.eq(lane_mask),
                     e_rmask.eq(Mux(self.busy & ~dsp_on, Cat(row0 + i < Ms for i in range(R)),
                                    ~0)),
                     e_cmask.eq(Mux(self.busy, Cat(col0 + j < Ns for j in range(C)), ~0))]
        f_valid, f_first, f_last = Signal(), Signal(), Signal()
        f_sel, f_mask = Signal(2), Signal(4)
        f_rmask, f_cmask = Signal(R), Signal(C)
        e2 = _delay(m, Cat(e_valid, e_first, e_last, e_sel, e_mask, e_rmask, e_cmask), 1, "e2")
        m.d.sync += Cat(f_valid, f_first, f_last, f_sel, f_mask, f_rmask, f_cmask).eq(e2)
        g_valid, g_first, g_last = Signal(), Signal(), Signal()
        g_sel, g_mask = Signal(2), Signal(4)
        m.d.sync += [g_valid.eq(f_valid), g_first.eq(f_first), g_last.eq(f_last),
                     g_sel.eq(f_sel), g_mask.eq(f_mask)]
        ga = [Signal(32, name=f"ga{i}") for i in range(R)]
        gw = [Signal(8, name=f"gw{j}") for j in range(C)]
        for i in range(R):
            m.d.sync += ga[i].eq(Mux(f_rmask[i], a_rd[i], 0))
        for j in range(C):
            m.d.sync += gw[j].eq(Mux(f_cmask[j], w_rd[j], 0))
        # stage s: the step's bytes selected from the A word and registered, so the byte
        # select and the per-format arrangement (both driven by nets that reach every row)
        # are in different cycles; weights and flags wait alongside
        s_valid, s_first, s_last, s_mask = Signal(), Signal(), Signal(), Signal(4)
        m.d.sync += [s_valid.eq(g_valid), s_first.eq(g_first), s_last.eq(g_last),
                     s_mask.eq(g_mask)]
        sa = [Signal(32, name=f"sa{i}", reset_less=True) for i in range(R)]
        sw = [Signal(8, name=f"sw{j}", reset_less=True) for j in range(C)]
        for i in range(R):
            m.d.sync += sa[i].eq((ga[i] >> (g_sel << 3))[:32])
        for j in range(C):
            m.d.sync += sw[j].eq(gw[j])
        h_valid, h_first, h_last = Signal(), Signal(), Signal()
        m.d.sync += [h_valid.eq(s_valid), h_first.eq(s_first), h_last.eq(s_last)]
        m.d.comb += [eng.valid.eq(h_valid), eng.first.eq(h_first), eng.last.eq(h_last)]
        mode_r = None
        for i in range(R):
            word = sa[i]
            if self.pe_cls.X_WIDTH == 32:
                fmt_r = _register(m, cfg.fmt, f"cfg_fmt_x{i}", apart=apart)
                x = arrange_activations(m, fmt_r, word, s_mask, name=f"xarr{i}")
            else:
                x = Mux(s_mask[0], word[:8], 0)
            xr = Signal(self.pe_cls.X_WIDTH, name=f"hx{i}", reset_less=True)
            m.d.sync += xr.eq(x)
            m.d.comb += eng.x[i].eq(xr)
        for j in range(C):
            fmt_r = _register(m, cfg.fmt, f"cfg_fmt_w{j}", apart=apart)
            chunks, sgn, mode = decode_weight_byte(m, fmt_r, sw[j], name=f"wdec{j}")
            wr = Signal(8, name=f"hw{j}", reset_less=True)
            sr = Signal(4, name=f"hs{j}", reset_less=True)
            m.d.sync += [wr.eq(chunks), sr.eq(sgn)]
            m.d.comb += [eng.wb[j].eq(wr), eng.wsgn[j].eq(sr)]
            mode_r = mode
        md = Signal(2, reset_less=True)
        m.d.sync += md.eq(mode_r)
        m.d.comb += eng.mode.eq(md)

        # -- DSP engine feed: the window straight from the registered A words (stage g) -------
        dw_g = []
        if L:
            dv_e, dl_e, dv_f, dl_f, dv_g, dl_g = (Signal() for _ in range(6))
            dt_e, dt_f, dt_g = Signal(range(R)), Signal(range(R)), Signal(range(R))
            de2 = _delay(m, Cat(dv_e, dl_e, dt_e), 1, "de2")
            m.d.sync += [dv_e.eq(d_issue), dl_e.eq(d_last), dt_e.eq(drow),
                         Cat(dv_f, dl_f, dt_f).eq(de2),
                         dv_g.eq(dv_f), dl_g.eq(dl_f), dt_g.eq(dt_f)]
            for c in range(self.dsp_chains):
                r = Signal(8 * (L + 3), name=f"dw_g{c}", reset_less=True)
                m.d.sync += r.eq(dw_rd[c])
                dw_g.append(r)
            for k in range(dsp.WINDOW):
                m.d.comb += dsp.a[k].eq(ga[k // 4].word_select(k % 4, 8))
            m.d.comb += [dsp.pattern.eq(cfg.sparse - 1), dsp.valid.eq(dv_g), dsp.tag.eq(dt_g),
                         dsp.brk.eq(Mux(dl_g, 1 << (L - 1), 0))]
            for c in range(self.dsp_chains):
                for j in range(L):
                    byte = dw_g[c][8 * j:8 * j + 8]
                    if self.dsp_packed:
                        m.d.comb += [dsp.w[2 * c][j].eq(byte[:4]), dsp.w[2 * c + 1][j].eq(byte[4:])]
                    else:
                        m.d.comb += dsp.w[c][j].eq(byte)
                    if c % self.dsp_share == 0:      # the index group's first chain
                        m.d.comb += dsp.idx[c // self.dsp_share][j].eq(
                            dw_g[c][8 * L + 3 * j:8 * L + 3 * j + 3])

        # MACs: valid rows x valid columns x valid lanes per step, two cycles behind
        rv_q = Signal(range(R + 1)); cv_q = Signal(range(C + 1)); nl_q = Signal(3)
        rc = Signal(range(R * C + 1)); macs = Signal(range(4 * R * C + 1))
        issue_d = Signal(); issue_dd = Signal()
        m.d.sync += [rv_q.eq(rows_left), cv_q.eq(cols_left), nl_q.eq(nlanes),
                     issue_d.eq(issue), issue_dd.eq(issue_d)]
        terms = [Mux(rv_q[b], cv_q << b, 0) for b in range(lr + 1)]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        m.d.sync += rc.eq(total)
        nl_d = Signal(3)
        m.d.sync += nl_d.eq(nl_q)
        m.d.comb += macs.eq(Mux(nl_d[0], rc, 0) + Mux(nl_d[1], rc << 1, 0) + Mux(nl_d[2], rc << 2, 0))
        with m.If(issue_dd):
            m.d.sync += self.cnt_macs.eq(self.cnt_macs + macs)
        if L:
            # DSP layers: dense-equivalent MACs, K x valid columns at each valid row's end
            dm_en = Signal(); dm = Signal(DIM_BITS + C.bit_length())
            m.d.sync += [dm_en.eq(d_issue & d_last & (drow < rows_left)),
                         dm.eq(sum(Mux(cols_left[b], K << b, 0)
                                   for b in range(len(cols_left))))]
            with m.If(dm_en):
                m.d.sync += self.cnt_macs.eq(self.cnt_macs + dm)

        # -- DSP drain: two rows' ``cols`` dot products at a time (rows 2p, 2p + 1), one per
        # cycle from column cols - 1, the odd row one cycle behind the even one: the skew of
        # the array's drain, so the odd row takes its table records and its token from the
        # even row's edge unit as in array layers, and two rows share one table read
        pairs = R > 1
        if L:
            ew = self.edge_width
            # the engine's outputs registered once more before the drain: its control and
            # accumulators sit beside the DSP columns, the drain logic by the edge units; the
            # routed 85F engine builds' slowest path was this net (the step tag, 11 ns of
            # routing in one hop)
            out = Signal()
            out_tag = Signal.like(dsp.sum_tag)
            new = [Signal(signed(ew), name=f"dnew{q}", reset_less=True) for q in range(C)]
            m.d.sync += [out.eq(dsp.sum_valid[L - 1]), out_tag.eq(dsp.sum_tag)]
            m.d.sync += [new[q].eq(dsp.sum[q][L - 1]) for q in range(C)]
            sa = [Signal(signed(ew), name=f"dsa{q}", reset_less=True) for q in range(C)]
            dr_act, dr_first = Signal(), Signal()
            dr_cnt = Signal(range(C)); dr_row = Signal(range(R))
            load = out & (out_tag[0] if pairs else 1)
            # the drain runs C cycles from a load; its next state is loaded into dr_act and
            # into each column's own copy below
            dr_act_next = Mux(load, 1, dr_act & (dr_cnt != 0))
            m.d.sync += dr_act.eq(dr_act_next)
            with m.If(dr_act):
                m.d.sync += [dr_first.eq(0), dr_cnt.eq(dr_cnt - 1)]
            with m.If(load):
                m.d.sync += [dr_first.eq(1), dr_cnt.eq(C - 1),
                             dr_row.eq(Cat(Const(0, 1), out_tag[1:]) if pairs else out_tag)]
            # the drain registers sit beside the DSP columns, across the die: each column
            # loads and shifts under its own registered copies of out, the tag bit and dr_act
            # (kept apart on ECP5), where one enable net reached every column's registers
            # (the routed 85F engine build's slowest path: 15.5 ns of routing in two hops)
            if pairs:
                hold = [Signal(signed(ew), name=f"dhold{q}", reset_less=True) for q in range(C)]
                sb = [Signal(signed(ew), name=f"dsb{q}", reset_less=True) for q in range(C)]
            for q in range(C):
                out_q = _register(m, dsp.sum_valid[L - 1], f"dout{q}", apart=apart)
                act_q = _register(m, dr_act_next, f"dact{q}", apart=apart) if q else None
                load_q = out_q
                if pairs:
                    tag_q = _register(m, dsp.sum_tag[0], f"dtag{q}", apart=apart)
                    load_q = out_q & tag_q
                    with m.If(out_q & ~tag_q):
                        m.d.sync += hold[q].eq(new[q])
                with m.If(load_q):
                    m.d.sync += sa[q].eq(hold[q] if pairs else new[q])
                    if pairs:
                        m.d.sync += sb[q].eq(new[q])
                if q:
                    with m.Elif(act_q):
                        m.d.sync += sa[q].eq(sa[q - 1])
                        if pairs:
                            m.d.sync += sb[q].eq(sb[q - 1])
            d_sum = sa[C - 1]
            if pairs:
                # the odd row: the same stream one register later
                ob_sum = Signal(signed(ew)); ob_act = Signal(); ob_first = Signal()
                ob_row = Signal.like(dr_row)
                m.d.sync += [ob_sum.eq(sb[C - 1]), ob_act.eq(dr_act), ob_first.eq(dr_first),
                             ob_row.eq(dr_row)]
        else:
            dr_act = dr_first = dr_row = d_sum = Const(0, 1)

        # -- edge: table readers at row 0, one edge unit per row --------------------------------
        # array layers drain every row of a tile in turn (row i one cycle after row i - 1);
        # DSP layers drain one row at a time and the reader serves that row directly
        rd_first = Mux(dsp_on, dr_first, eng.sum_first[0])
        rd_valid = Mux(dsp_on, dr_act, eng.sum_valid[0])
        rd_pop = Mux(dsp_on, dr_first & (dr_row == 0), eng.sum_first[0])
        tok_head = Signal(tok_layout)
        m.d.comb += [tok_head.eq(tokens.r_data), tokens.r_en.eq(rd_pop)]
        t_cnt = Signal(range(C))
        with m.If(rd_first):
            m.d.sync += t_cnt.eq(C - 2 if C > 1 else 0)
        with m.Elif(rd_valid & (t_cnt != 0)):
            m.d.sync += t_cnt.eq(t_cnt - 1)
        t_j = Mux(rd_first, C - 1, t_cnt)
        t_col0 = Signal(DIM_BITS); t_gbase = Signal.like(tok_head.gbase)
        with m.If(rd_pop):
            m.d.sync += [t_col0.eq(tok_head.col0), t_gbase.eq(tok_head.gbase)]
        cur_col0 = Mux(rd_pop, tok_head.col0, t_col0)
        cur_gbase = Mux(rd_pop, tok_head.gbase, t_gbase)
        # the table reads registered on both sides (the address sums, then the EBR's data),
        # and the drained sums and their token delayed to match (EDGE_DELAY): the drain
        # control, the two adders, the tables' address pins and, a cycle later, the EBR's
        # clock-to-out and the edge unit's first stage were each one cycle before
        crp = chan_mem.read_port()
        grp = grp_mem.read_port()
        c_ra = Signal(range(self.chan_depth), reset_less=True)
        g_ra = Signal(range(self.group_depth), reset_less=True)
        m.d.sync += [c_ra.eq(Mux(self.busy, cfg.chan_base + cur_col0 + t_j, bus_addr >> 3)),
                     g_ra.eq(Mux(self.busy, cur_gbase + cur_col0 + t_j, bus_addr >> 2))]
        m.d.comb += [crp.addr.eq(c_ra), crp.en.eq(1), grp.addr.eq(g_ra), grp.en.eq(1)]
        c_tq = Signal(64, reset_less=True); g_tq = Signal(32, reset_less=True)
        m.d.sync += [c_tq.eq(crp.data), g_tq.eq(grp.data)]
        tbl0 = Signal(TABLE_LAYOUT)
        m.d.comb += [
            tbl0.gscale.eq(g_tq[:16]), tbl0.gzero.eq(g_tq[16:24]),
            tbl0.bias.eq(Mux(cfg.chan, c_tq[:32], 0)),
            tbl0.mult.eq(Mux(cfg.chan, c_tq[32:48], cfg.mult)),
            tbl0.shift.eq(Mux(cfg.chan, c_tq[48:54], cfg.shift)),
        ]
        tok_src, tbl_src = _delay(m, tok_head, self.EDGE_DELAY, "tok_head"), tbl0
        fin = Signal()
        for i in range(R):
            eu = EdgeUnit(row=i, cols=C, acc_width=self.edge_width, token_layout=tok_layout,
                          out_depth=self.out_depth, groups=self.groups, impl=self.impl)
            m.submodules[f"edge{i}"] = eu
            e_sum = Signal.like(eu.sum, name=f"e_sum{i}")
            e_sv = Signal(name=f"e_sv{i}"); e_sf = Signal(name=f"e_sf{i}")
            if L and pairs and i % 2:
                # odd rows: one cycle behind the even row above, tables from its edge unit
                mine = ob_row == i - 1
                m.d.comb += [
                    e_sum.eq(Mux(dsp_on, ob_sum, eng.sum[i])),
                    e_sv.eq(Mux(dsp_on, ob_act & mine, eng.sum_valid[i])),
                    e_sf.eq(Mux(dsp_on, ob_first & mine, eng.sum_first[i])),
                    eu.tbl_in.eq(tbl_src),
                ]
            elif L:
                mine = dr_row == i
                m.d.comb += [
                    e_sum.eq(Mux(dsp_on, d_sum, eng.sum[i])),
                    e_sv.eq(Mux(dsp_on, dr_act & mine, eng.sum_valid[i])),
                    e_sf.eq(Mux(dsp_on, dr_first & mine, eng.sum_first[i])),
                    eu.tbl_in.eq(Mux(dsp_on, tbl0, tbl_src)),
                ]
            else:
                m.d.comb += [e_sum.eq(eng.sum[i]), e_sv.eq(eng.sum_valid[i]),
                             e_sf.eq(eng.sum_first[i]), eu.tbl_in.eq(tbl_src)]
            dly = self.EDGE_DELAY
            m.d.comb += [
                eu.sum.eq(_delay(m, e_sum, dly, f"e_sum{i}", reset_less=True)),
                eu.sum_valid.eq(_delay(m, e_sv, dly, f"e_sv{i}")),
                eu.sum_first.eq(_delay(m, e_sf, dly, f"e_sf{i}")),
                eu.act_sum.eq(_delay(m, eng.act_sum[i], dly, f"e_as{i}", reset_less=True)),
                eu.tok_in.eq(tok_src),
                eu.group.eq(group_on), eu.out_mode.eq(cfg.out_mode), eu.relu.eq(cfg.relu),
                eu.zp.eq(cfg.zp),
            ]
            tok_src, tbl_src = eu.tok_out, eu.tbl_out
            wp = o_mems[i].write_port(granularity=8)
            # the edge writes while busy; the host only while idle (its writes are ignored)
            m.d.comb += [wp.addr.eq(eu.wr_addr), wp.data.eq(eu.wr_data),
                         wp.en.eq(Mux(self.busy, eu.wr_en, 0))]
            if i == R - 1:
                m.d.comb += fin.eq(eu.final)
        with m.If(fin & self.busy):
            m.d.sync += final_drained.eq(1)

        # -- host reads ---------------------------------------------------------------------
        o_rd = []
        for i, mem in enumerate(o_mems):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(local_copy(o_ra, e_lane_a == i, f"o_ra{i}")), rp.en.eq(1)]
            o_rd.append(rp.data)
        # every buffer's data is registered in the same cycle (the fifth after bus_addr):
        # A / W through the engine feed's stage g, OUT / DSPW here, CHAN / GROUP through
        # the table reads' data registers and one more
        o_q = [Signal(32, name=f"o_q{i}", reset_less=True) for i in range(R)]
        m.d.sync += [o_q[i].eq(o_rd[i]) for i in range(R)]
        # each buffer's byte chosen by a registered select tree, then the buffer by one
        # registered mux: the bytes come from EBRs and registers all over the die
        c_q = _delay(m, c_tq, 1, "c_q", reset_less=True)
        g_q = _delay(m, g_tq, 1, "g_q", reset_less=True)
        rd_in = {
            CoreBuffer.A: ([ga[i].word_select(b, 8) for i in range(R) for b in range(4)],
                           Cat(bus_addr[:2], lane_a)),
            CoreBuffer.W: (gw, lane_w),
            CoreBuffer.OUT: ([o_q[i].word_select(b, 8) for i in range(R) for b in range(4)],
                             Cat(bus_addr[:2], lane_a)),
            CoreBuffer.CHAN: ([c_q.word_select(b, 8) for b in range(8)], bus_addr[:3]),
            CoreBuffer.GROUP: ([g_q.word_select(b, 8) for b in range(4)], bus_addr[:2]),
        }
        if L:
            # lane 15 of every chain is 0: the bytes of a record no lane holds read as 0
            lanes = [[dw_g[c].word_select(k, 8) if k < L + 3 else Const(0, 8)
                      for k in range(16)] for c in range(self.dsp_chains)]
            rd_in[CoreBuffer.DSPW] = ([b for ch in lanes for b in ch],
                                      Cat(Mux(d_lane_ok, d_lane, 15)[:4], d_chain))
        D = self._read_levels
        rd_out = {}
        for buf, (items, sel) in rd_in.items():
            assert len(items) == self._read_fanin[buf]
            n = buf.name.lower()
            # the DSPW tree's first level sits beside the chains' weight registers, all over
            # the DSP columns: each chain's muxes get their own copy of the select (kept
            # apart on ECP5), where one select net of 769 sinks reached them all
            copies = self.dsp_chains if buf == CoreBuffer.DSPW else 1
            sel_d = _delay(m, sel, 3, f"rsel_{n}", reset_less=True)
            sel_q = [_register(m, sel_d, f"rsel_{n}_c{k}", reset_less=True,
                               apart=copies > 1 and use_ecp5(self.impl, platform))
                     for k in range(copies)]
            val = select_tree(m, items, sel_q, name=f"rd_{n}")
            rd_out[buf] = _delay(m, val, D - tree_levels(len(items)), f"rdd_{n}",
                                 reset_less=True)
        buf_q = _delay(m, bus_sel, 4 + D, "rbuf")
        with m.Switch(buf_q):
            for buf, val in rd_out.items():
                with m.Case(buf):
                    m.d.sync += self.bus_rdata.eq(val)
        return m
