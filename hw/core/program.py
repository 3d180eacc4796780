"""ProgramCore: the core plus layer programs, so a model runs with its activations on chip.

::

    host bus ──> ACT (activations)   PROG (layer records)   LCNT (per-layer counters)
            └──> MixCore buffers (A, W, OUT, CHAN, GROUP)
                         ^   A <── gather (im2col) ── ACT ── scatter <── OUT
                         └── runner: per layer FETCH -> GATHER -> core RUN -> SCATTER -> COUNT

A program is a list of :class:`sw.protocol.ProgramLayer` records in PROG. RUN_PROGRAM runs
layers ``0 .. count-1``: each GEMM layer gathers its A operand from ACT with a six-loop
address generator (im2col with padding for conv2d, row-major for linear layers, transposed
for global average pooling), runs the core on its resident weights (the descriptor's bases)
and writes its INT8 result back into ACT in the row-major layout the next layer reads; a
MAXPOOL layer reduces ACT to ACT. Nothing crosses the host link between layers. One byte
moves per cycle in the gather, scatter and pool loops; their cycles are in the per-layer
counters next to the core's.
"""

from __future__ import annotations

from amaranth import Module, Signal, Mux, Cat, Const, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from sw.numerics import OutMode
from sw.protocol import (Buffer, ErrorCode, LayerKind, LayerDescriptor, PROGRAM_RECORD,
                         LCNT_RECORD, GATHER_LOOPS)

from hw.arith._common import use_ecp5
from hw.systolic.util import delay, fanout_delay, select_tree, tree_levels
from .core import MixCore, core_signature, COUNTER_BITS
from .desc import decode_descriptor, assign_descriptor, LAYER_LAYOUT

__all__ = ["ProgramCore", "program_signature"]

_ADDR = 16          # ACT addresses (the generator wraps modulo 2**16)
_RECORD_BITS = 8 * PROGRAM_RECORD


def program_signature(*, addr_bits: int) -> wiring.Signature:
    """:func:`hw.core.core.core_signature` plus the program start (RUN_PROGRAM)."""
    members = dict(core_signature(addr_bits=addr_bits).members)
    members.update({"prog_start": In(1), "prog_count": In(8)})
    return wiring.Signature(members)


def _local(sel):
    """The buffers the program core holds itself (the others are the MixCore's)."""
    return (sel == Buffer.ACT) | (sel == Buffer.PROG) | (sel == Buffer.LCNT)


class ProgramCore(wiring.Component):
    """A :class:`MixCore` with ACT / PROG / LCNT memories and the layer-program runner.

    Parameters
    ----------
    act_bytes : int
        Size of the activation memory (a power of two, at most 65536).
    act_bank_bytes : int
        Size of one bank of the activation memory (a power of two, default 2048: one ECP5
        EBR of 2048 bytes). Each bank takes its read and write addresses from its own
        register at the end of a radix-4 tree, and its read data joins the others' through
        a registered radix-4 mux tree, so a read takes :attr:`ACT_LATENCY` cycles.
    max_layers : int
        Layers a program may have (PROG holds ``max_layers`` records).
    **core
        :class:`MixCore` parameters.

    Members
    -------
    See :func:`program_signature`. Outside programs the core's ports pass through; while a
    program runs, ``busy`` is high, and ``done`` / ``error`` report the program's end (the
    first failing layer's status, e.g. BAD_SHAPE, BAD_PARAM for an unknown kind or
    descriptor field, WATCHDOG, ABORTED).
    """

    layer_kinds = (LayerKind.GEMM, LayerKind.MAXPOOL)

    def __init__(self, *, act_bytes: int = 4096, act_bank_bytes: int = 2048,
                 max_layers: int = 32, **core):
        self.core = MixCore(**core)
        for name, v in (("act_bytes", act_bytes), ("act_bank_bytes", act_bank_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v & (v - 1) or \
                    not 256 <= v <= (1 << _ADDR):
                raise ValueError(f"{name} must be a power of two in [256, 65536], not {v!r}")
        if not isinstance(max_layers, int) or not 1 <= max_layers <= 255:
            raise ValueError(f"max_layers must be an int in [1, 255], not {max_layers!r}")
        self.act_bytes, self.max_layers = act_bytes, max_layers
        #: ACT banks, and the registers in front of them: one after the access decode, then
        #: the address tree's levels
        self.act_banks = max(1, act_bytes // act_bank_bytes)
        self._act_addr_stages = tree_levels(self.act_banks) + 1
        #: cycles from an ACT address to its byte: the address registers, the EBR, the data tree
        self.ACT_LATENCY = self._act_addr_stages + 1 + tree_levels(self.act_banks)
        for name in ("rows", "cols", "a_depth", "w_depth", "out_depth", "chan_depth",
                     "group_depth", "formats", "group_sizes", "PE_KIND", "max_k", "acc_width",
                     "a_bytes", "w_bytes", "out_bytes", "chan_bytes", "group_bytes",
                     "MIN_PERIOD", "WATCHDOG", "pe", "ABORT_CYCLES", "max_run_cycles",
                     "dsp_stages", "dsp_chains", "dsp_packed", "dsp_patterns", "dsp_depth",
                     "dsp_bytes", "dsp_share", "edge_width"):
            setattr(self, name, getattr(self.core, name))
        self.addr_bits = max(self.core.addr_bits, (act_bytes - 1).bit_length(),
                             (max_layers * PROGRAM_RECORD - 1).bit_length())
        if self.ACT_LATENCY > self.core.READ_LATENCY:
            raise ValueError(f"act_bank_bytes {act_bank_bytes}: {self.act_banks} ACT banks take "
                             f"{self.ACT_LATENCY} cycles to read, more than the core's "
                             f"{self.core.READ_LATENCY}; use larger banks")
        #: cycles from ``bus_re`` to ``bus_rdata`` (the core's plus the output register)
        self.READ_LATENCY = self.core.READ_LATENCY + 1
        super().__init__(program_signature(addr_bits=self.addr_bits))

    def config(self) -> dict:
        return dict(self.core.config(), act_bytes=self.act_bytes, max_layers=self.max_layers)

    def config_hash(self) -> int:
        import hashlib
        import json
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        R = core.rows
        lr = R.bit_length() - 1
        act_bits = (self.act_bytes - 1).bit_length()

        # ACT in banks (see act_bank_bytes): its 32 EBRs on the 85F lie all over the die, and
        # one address register driving them all was the slowest path of two of its seeds (a
        # 10.50 ns wire to one EBR's address)
        nb = self.act_banks
        bank_bits = act_bits - (nb.bit_length() - 1)    # address bits inside a bank
        act_r, act_w = [], []
        for b in range(nb):
            m.submodules[f"act{b}"] = bank = Memory(shape=8, depth=self.act_bytes // nb, init=[])
            act_r.append(bank.read_port())
            act_w.append(bank.write_port())
        m.submodules.prog = prog = Memory(shape=8, depth=self.max_layers * PROGRAM_RECORD, init=[])
        m.submodules.lcnt = lcnt = Memory(shape=8, depth=self.max_layers * LCNT_RECORD, init=[])
        prog_r, prog_w = prog.read_port(), prog.write_port()
        lcnt_r, lcnt_w = lcnt.read_port(), lcnt.write_port()

        running = Signal()                  # a program runs (the runner owns the core)
        prog_mode = Signal()                # the last run was a program: done / error are ours
        p_done = Signal()
        p_error = Signal(ErrorCode)

        # -- the runner's view of the core -----------------------------------------------
        r_sel = Signal(Buffer); r_addr = Signal(self.core.addr_bits); r_wdata = Signal(8)
        r_we = Signal(); r_start = Signal()
        r_cfg = Signal(LAYER_LAYOUT)
        passthrough = ["cnt_cycles", "cnt_busy", "cnt_stall", "cnt_macs", "cnt_dq_stall"]
        for name in passthrough:
            m.d.comb += getattr(self, name).eq(getattr(core, name))
        m.d.comb += [
            core.bus_sel.eq(Mux(running, r_sel, self.bus_sel)),
            core.bus_addr.eq(Mux(running, r_addr, self.bus_addr)),
            core.bus_wdata.eq(Mux(running, r_wdata, self.bus_wdata)),
            core.bus_we.eq(Mux(running, r_we, self.bus_we & ~_local(self.bus_sel))),
            core.bus_re.eq(self.bus_re),
            self.bus_wbusy.eq(core.bus_wbusy),
            core.cfg.eq(Mux(running, r_cfg, self.cfg)),
            core.start.eq(Mux(running, r_start, self.start)),
            core.abort.eq(self.abort),
            self.busy.eq(core.busy | running),
            self.done.eq(Mux(prog_mode, p_done, core.done)),
            self.error.eq(Mux(prog_mode, p_error, core.error)),
        ]
        with m.If(self.start):
            m.d.sync += prog_mode.eq(0)

        # -- host access to ACT / PROG / LCNT (while idle) --------------------------------
        host_we = self.bus_we & ~self.busy
        m.d.comb += [
            prog_w.addr.eq(self.bus_addr), prog_w.data.eq(self.bus_wdata),
            prog_w.en.eq(host_we & (self.bus_sel == Buffer.PROG) &
                         (self.bus_addr < self.max_layers * PROGRAM_RECORD)),
        ]
        h_act_we = host_we & (self.bus_sel == Buffer.ACT) & (self.bus_addr < self.act_bytes)
        # host reads: PROG / LCNT data one cycle after the address, ACT's ACT_LATENCY cycles,
        # both delayed to the core's READ_LATENCY (lat), then one register
        lat = self.core.READ_LATENCY
        sel_d = delay(m, self.bus_sel, lat, "hsel", reset_less=True)
        pl = Mux(delay(m, self.bus_sel, 1, "hsel_pl", reset_less=True) == Buffer.PROG,
                 prog_r.data, lcnt_r.data)
        act_q = Signal(8)                   # ACT's byte, ACT_LATENCY cycles after its address
        loc = Mux(sel_d == Buffer.ACT, delay(m, act_q, lat - self.ACT_LATENCY, "hact",
                                             reset_less=True),
                  delay(m, pl, lat - 1, "hpl", reset_less=True))
        m.d.sync += self.bus_rdata.eq(Mux(_local(sel_d), loc, core.bus_rdata))

        # -- the current layer record ---------------------------------------------------------
        rec = Signal(_RECORD_BITS)
        rb = [rec[8 * i:8 * i + 8] for i in range(PROGRAM_RECORD)]
        D = LayerDescriptor.SIZE

        def u16(i):
            return Cat(rb[i], rb[i + 1])
        kind = rb[D]
        stride, pad = rb[D + 1], rb[D + 2]
        pad_value = rb[D + 3].as_signed()
        lim_h, lim_w = u16(D + 5), u16(D + 7)
        in_base, out_base = u16(D + 9), u16(D + 11)
        n_loop = [u16(D + 13 + 2 * j) for j in range(GATHER_LOOPS)]
        s_loop = [u16(D + 13 + 2 * GATHER_LOOPS + 2 * j) for j in range(GATHER_LOOPS)]
        fields, bad_param, bad_shape = decode_descriptor(
            rb[:D], formats=core.formats, group_sizes=core.group_sizes, dim_bits=len(core.cfg.m),
            dsp_patterns=core.dsp_patterns, dsp_packed=core.dsp_packed)

        layer = Signal(8); count = Signal(8)
        fidx = Signal(range(PROGRAM_RECORD + 2))
        cyc = Signal(COUNTER_BITS)
        st = Signal(ErrorCode)
        c_core = Signal(COUNTER_BITS); c_busy = Signal(COUNTER_BITS); c_macs = Signal(COUNTER_BITS)

        # -- the six-loop ACT address generator -------------------------------------------------
        # Timing: the loop control runs on registered flags. last[j] is "idx[j] == n_loop[j] - 1",
        # kept up to date with idx[j] (set from n_loop[j] == 1 when the loop restarts at 0, from
        # idx[j] == n_loop[j] - 2 when it counts up), so inc / all_last / m_step / w_end are a
        # few LUTs on flip-flops. Compared against rec every cycle (a subtract carry chain and a
        # 16-bit compare, then the AND chain of inc and the selection of the next idx / addr),
        # it was the 12F's slowest path (15.1 ns, 7 LUT levels plus a carry chain).
        g_run = Signal()                    # generator steps this cycle
        g_on = Signal()                     # generator has elements left
        idx = [Signal(16, name=f"gi{j}") for j in range(GATHER_LOOPS)]
        addr = [Signal(_ADDR, name=f"ga{j}") for j in range(GATHER_LOOPS)]
        y1 = Signal(16); x2 = Signal(16)    # i1 * stride, i2 * stride
        last = [Signal(name=f"glast{j}") for j in range(GATHER_LOOPS)]   # idx[j] == n_loop[j] - 1
        # latched from the record in DECODE (rec is stable from DECODE on), there for the first
        # GATHER / POOL cycle: the compare target of a counting loop, and "a loop of one"
        n_m2 = [Signal(16, name=f"gnm2_{j}") for j in range(GATHER_LOOPS)]  # n_loop[j] - 2
        n_one = [Signal(name=f"gone{j}") for j in range(GATHER_LOOPS)]      # n_loop[j] == 1
        inc = []
        for j in range(GATHER_LOOPS):
            inner_last = Const(1, 1)
            for l in range(j + 1, GATHER_LOOPS):
                inner_last = inner_last & last[l]
            inc.append(Signal(name=f"ginc{j}"))
            m.d.comb += inc[j].eq(inner_last & ~last[j])
        all_last = Signal()
        m.d.comb += all_last.eq(Cat(*last).all())
        # the element now addressed: padding? Its input row is iy = y1 + idx[3] - pad (column
        # ix = x2 + idx[4] - pad), padding when outside [0, lim_h) (or [0, lim_w)). Timing: the
        # check is split over two cycles, one carry chain each: the sums sy = y1 + idx[3],
        # sx = x2 + idx[4] are registered with the read (p1_sy, p1_sx), and the next cycle
        # compares them against pad and lim + pad (latched in DECODE), giving p2_pad: iy < 0 is
        # sy < pad, iy >= lim_h is sy >= lim_h + pad (exact: 17 bits hold every sum). Both adds
        # and the four compares in one cycle took 8.9 ns.
        sy = Signal(17); sx = Signal(17)
        m.d.comb += [sy.eq(y1 + idx[3]), sx.eq(x2 + idx[4])]
        lim_hp = Signal(17); lim_wp = Signal(17)    # lim_h + pad, lim_w + pad
        m_step = Signal()                   # next element starts a new row of A (loops 0..2)
        m.d.comb += m_step.eq(inc[0] | inc[1] | inc[2])
        w_end = Signal()                    # this element ends a pooling window (loops 4, 5)
        m.d.comb += w_end.eq(last[4] & last[5])
        # idx[4] == 0 and idx[5] == 0, registered too (set when loops 4, 5 restart, cleared
        # when one of them counts up: idx[j] + 1 never wraps to 0, as idx[j] < n_loop[j] - 1)
        w_first = Signal(init=1)

        def gen_reset():
            return ([i.eq(0) for i in idx] + [a.eq(in_base) for a in addr] +
                    [y1.eq(0), x2.eq(0), g_on.eq(1), w_first.eq(1),
                     lim_hp.eq(lim_h + pad), lim_wp.eq(lim_w + pad)] +
                    [x.eq(n_loop[j] == 1) for j, x in enumerate(last)] +
                    [x.eq(n_loop[j] == 1) for j, x in enumerate(n_one)] +
                    [x.eq(n_loop[j] - 2) for j, x in enumerate(n_m2)])

        # One step: the innermost loop j not at its end counts up (inc[j]), the loops inside it
        # restart at 0 from addr[j]'s next value; none does on the last element (all_last).
        # inc is one-hot (inc[j] needs last[l] for l > j, inc[l] needs ~last[l]), so each
        # register takes its next value from an AND-OR of the inc flags, not a chain of six
        # priority muxes (timing): upd(l) = "loop l or one outside it counts" is its enable.
        def upd(l):
            return Cat(*inc[:l + 1]).any()

        def pick(pairs, width):
            # the value whose (one-hot) flag is set; 0 if none is
            out = Const(0, width)
            for f, v in pairs:
                out = out | (v[:width] & f.replicate(width))
            return out

        nxt = [(addr[j] + s_loop[j])[:_ADDR] for j in range(GATHER_LOOPS)]
        with m.If(g_run & g_on):
            with m.If(all_last):
                m.d.sync += g_on.eq(0)
            with m.Else():
                # loops 4 and 5 restart (idx 0, 0) exactly when both were at their ends
                m.d.sync += w_first.eq(w_end)
            for l in range(GATHER_LOOPS):
                with m.If(upd(l)):
                    m.d.sync += [
                        idx[l].eq(Mux(inc[l], idx[l] + 1, 0)),
                        addr[l].eq(pick([(inc[j], nxt[j]) for j in range(l + 1)], _ADDR)),
                        last[l].eq(Mux(inc[l], idx[l] == n_m2[l], n_one[l])),
                    ]
            with m.If(upd(1)):                  # y1: 0 when loop 0 counts, + stride for loop 1
                m.d.sync += y1.eq(Mux(inc[1], y1 + stride, 0))
            with m.If(upd(2)):                  # x2: 0 when loop 0 or 1 counts, + stride for 2
                m.d.sync += x2.eq(Mux(inc[2], x2 + stride, 0))

        # A bus address of element (m, k): bank m % R, word (m // R) * kw + k // 4, byte k % 4;
        # for a DSP layer (striped along K, sw.layout.dsp_act_image): bank (k // 4) % (Wp / 4),
        # word m * S + k // Wp, byte k % 4, with the row's base advancing S * 4R bytes per row
        kw_bytes = Signal(2 * 16)           # ceil(K / 4) * 4 * R: bytes per R rows of A
        a_rowbase = Signal(32); a_bank = Signal(range(R)) if R > 1 else Signal(1)
        a_k = Signal(16)
        a_byte = Signal(32)
        d_layer = Signal()                  # the layer runs on the DSP engine
        d_wlog = Signal(range(6))           # log2 of the pattern's window Wp
        d_bmask = Signal(4)                 # Wp / 4 - 1: the banks a window spans
        arr_byte = a_rowbase + ((a_k >> 2) << (lr + 2)) + (a_bank << 2) + a_k[:2]
        dsp_byte = (a_rowbase + ((a_k >> d_wlog) << (lr + 2)) + (((a_k >> 2) & d_bmask) << 2) +
                    a_k[:2])
        m.d.comb += a_byte.eq(Mux(d_layer, dsp_byte, arr_byte))
        with m.If(g_run & g_on):
            with m.If(m_step & d_layer):
                m.d.sync += [a_k.eq(0), a_rowbase.eq(a_rowbase + kw_bytes)]
            with m.Elif(m_step):
                m.d.sync += a_k.eq(0)
                if R > 1:
                    m.d.sync += a_bank.eq(a_bank + 1)
                    with m.If(a_bank == R - 1):
                        m.d.sync += a_rowbase.eq(a_rowbase + kw_bytes)
                else:
                    m.d.sync += a_rowbase.eq(a_rowbase + kw_bytes)
            with m.Else():
                m.d.sync += a_k.eq(a_k + 1)

        # pipeline: the ACT read issued with its flags; p1 = ACT_LATENCY cycles later, its data
        # there (p_v: the valid bits of the reads in flight), p2 = the data registered
        p_v = Signal(self.ACT_LATENCY)
        m.d.sync += p_v.eq(Cat(g_run & g_on, p_v[:-1]))
        p1_v = p_v[-1]
        p1_sy, p1_sx, p1_a, p1_wend, p1_wfirst = (
            delay(m, v, self.ACT_LATENCY, f"p1_{n}", reset_less=True)
            for n, v in (("sy", sy), ("sx", sx), ("a", a_byte), ("wend", w_end),
                         ("wfirst", w_first)))
        p1_pad = Signal()                   # the padding check's second half (see sy above)
        m.d.comb += p1_pad.eq((p1_sy < pad) | (p1_sy >= lim_hp) |
                              (p1_sx < pad) | (p1_sx >= lim_wp))
        # p2: the ACT byte registered (EBR clock-to-out is slow and ACT spans many EBRs: the
        # 85F's slowest path ran from ACT's output through the pool compare back into ACT)
        p2_v = Signal(); p2_pad = Signal(); p2_a = Signal(32); p2_wend = Signal()
        p2_wfirst = Signal(); p2_data = Signal(8)
        m.d.sync += [p2_v.eq(p1_v), p2_pad.eq(p1_pad), p2_a.eq(p1_a), p2_wend.eq(p1_wend),
                     p2_wfirst.eq(p1_wfirst), p2_data.eq(act_q)]
        p2_val = Signal(8)
        m.d.comb += p2_val.eq(Mux(p2_pad, pad_value, p2_data))

        # -- scatter: OUT (m, n) -> ACT[out_base + t] -------------------------------------------
        # OUT (m, n) is bank m % R, word e // 4, byte e % 4 with e = (m // R) * N + n: its bus
        # address ((e >> 2) << (lr + 2)) + (bank << 2) + e % 4 is e's bits with the bank's between
        # them (R is a power of two). Timing: e is a register (s_e, counted along with s_n; s_ebase
        # is e at n = 0 of this bank round), so the address is wires, not the adders of
        # s_ebase + s_n and the sum above ahead of the core's bus; and the end-of-count tests are
        # registered flags like the generator's last[j] (s_nlast: s_n == N - 1, s_mlast:
        # s_m == M - 1, s_blast: s_bank == R - 1), updated from compares against N - 2, M - 2
        # latched in DECODE (M, N are decoded from rec) instead of a subtract and a 16-bit
        # compare each cycle ahead of the counters' muxes.
        s_on = Signal(); s_m = Signal(16); s_n = Signal(16); s_bank = Signal.like(a_bank)
        s_ebase = Signal(32)
        s_e = Signal(32)
        s_addr = Signal(32)
        m.d.comb += s_addr.eq(Cat(s_e[:2], s_bank, s_e[2:]) if R > 1 else s_e)
        M, N = fields["m"], fields["n"]
        s_nlast = Signal(); s_mlast = Signal(); s_blast = Signal()
        # latched in DECODE; the core stops a layer with M or N of 0 (BAD_SHAPE) before SCATTER
        s_nm2 = Signal(16); s_mm2 = Signal(16)          # N - 2, M - 2
        s_none = Signal(); s_mone = Signal()            # N == 1, M == 1
        lat_core = self.core.READ_LATENCY
        s_v = Signal(lat_core)              # read issued, data arrives lat_core cycles later
        t_out = Signal(_ADDR)               # next ACT write offset

        # -- pool reduction -------------------------------------------------------------------
        mx = Signal(signed(8))

        act_rd_addr = Signal(_ADDR)
        m.d.comb += act_rd_addr.eq(Mux(running, addr[GATHER_LOOPS - 1], self.bus_addr))
        # ACT's address tree: each bank's address from its own register, kept apart on ECP5
        # (Yosys would merge the copies); the bank's bytes join through a registered mux
        # tree. Writes take the same tree, so a read issued after a write reads its byte.
        # One plain register comes first: the host's access decode (the link's registers,
        # an address compare, the core's busy) fed the tree's roots directly, and the placer
        # pulls those towards the EBRs: the slowest path of two 85F dsp8s seeds (14.9 ns)
        apart = use_ecp5(self.core.impl, platform)
        stages = self._act_addr_stages
        for b, ra in enumerate(fanout_delay(m, act_rd_addr[:act_bits], stages, nb, "act_ra",
                                            apart=apart)):
            m.d.comb += [act_r[b].addr.eq(ra[:bank_bits]), act_r[b].en.eq(1)]
        if nb > 1:
            bsel = delay(m, act_rd_addr[bank_bits:act_bits], stages + 1, "act_bsel",
                         reset_less=True)
            m.d.comb += act_q.eq(select_tree(m, [r.data for r in act_r], bsel, name="act_q"))
        else:
            m.d.comb += act_q.eq(act_r[0].data)
        m.d.comb += [prog_r.addr.eq(Mux(running, layer * PROGRAM_RECORD + fidx, self.bus_addr)),
                     prog_r.en.eq(1), lcnt_r.addr.eq(self.bus_addr), lcnt_r.en.eq(1)]
        # runner writes to ACT go through a register stage too (address, data, enable)
        aw_addr = Signal(_ADDR); aw_data = Signal(8); aw_en = Signal()
        awr_addr = Signal(_ADDR); awr_data = Signal(8); awr_en = Signal()
        m.d.sync += [awr_addr.eq(aw_addr), awr_data.eq(aw_data), awr_en.eq(aw_en)]
        act_wr = Cat(Mux(running, awr_addr, self.bus_addr)[:act_bits],
                     Mux(running, awr_data, self.bus_wdata), Mux(running, awr_en, h_act_we))
        for b, wr in enumerate(fanout_delay(m, act_wr, stages, nb, "act_w", apart=apart)):
            w_addr, w_data, w_en = wr[:act_bits], wr[act_bits:act_bits + 8], wr[-1]
            hit = (w_addr[bank_bits:] == b) if nb > 1 else 1
            m.d.comb += [act_w[b].addr.eq(w_addr[:bank_bits]), act_w[b].data.eq(w_data),
                         act_w[b].en.eq(w_en & hit)]

        # LCNT record writer
        l_rec = Signal(8 * LCNT_RECORD)
        l_idx = Signal(range(LCNT_RECORD + 1))
        h_lcnt_we = host_we & (self.bus_sel == Buffer.LCNT) & \
            (self.bus_addr < self.max_layers * LCNT_RECORD)
        m.d.comb += [lcnt_w.addr.eq(Mux(running, layer * LCNT_RECORD + l_idx, self.bus_addr)),
                     lcnt_w.data.eq(Mux(running, l_rec.word_select(l_idx[:5], 8),
                                        self.bus_wdata)),
                     lcnt_w.en.eq(h_lcnt_we)]

        with m.If(running):
            m.d.sync += cyc.eq(cyc + 1)
        wd_hit = Signal()
        m.d.sync += wd_hit.eq(cyc >= self.WATCHDOG)

        def finish(code):
            # the scatter pipeline empties too: a run stopped in SCATTER would otherwise leave
            # s_v frozen, and its stale read-valid bits would write OUT bytes into ACT (and
            # move t_out) in the next run's first layer
            return [p_error.eq(code), p_done.eq(1), running.eq(0), s_on.eq(0), s_v.eq(0)]

        def watchdog_and_abort():
            # last in each state, so that it overrides the state's own transition. RESET stops
            # the program between bytes (in WAIT the core aborts its own run and reports
            # ABORTED, which ends the program like any core error); a layer whose loops run
            # longer than the core's watchdog is stopped (a malformed record cannot hang it)
            with m.If(self.abort):
                m.d.sync += finish(ErrorCode.ABORTED)
                m.next = "IDLE"
            with m.Elif(wd_hit):
                m.d.sync += finish(ErrorCode.WATCHDOG)
                m.next = "IDLE"

        m.d.sync += p_done.eq(0)
        with m.FSM(name="runner"):
            with m.State("IDLE"):
                with m.If(self.prog_start):
                    m.d.sync += [prog_mode.eq(1), layer.eq(0), count.eq(self.prog_count)]
                    with m.If((self.prog_count == 0) | (self.prog_count > self.max_layers)):
                        m.d.sync += [p_error.eq(ErrorCode.BAD_PARAM), p_done.eq(1)]
                    with m.Else():
                        m.d.sync += [running.eq(1), fidx.eq(0), cyc.eq(0)]
                        m.next = "FETCH"
            with m.State("FETCH"):
                # record bytes arrive one cycle after their address
                m.d.sync += fidx.eq(fidx + 1)
                with m.If(fidx != 0):
                    m.d.sync += rec.eq(Cat(rec[8:], prog_r.data))
                with m.If(fidx == PROGRAM_RECORD):
                    m.next = "DECODE"
                watchdog_and_abort()
            with m.State("DECODE"):
                m.d.sync += [s_nm2.eq(N - 2), s_mm2.eq(M - 2), s_none.eq(N == 1),
                             s_mone.eq(M == 1)]
                m.d.sync += [c_core.eq(0), c_busy.eq(0), c_macs.eq(0), t_out.eq(0),
                             a_rowbase.eq(0), a_bank.eq(0), a_k.eq(0), *gen_reset(),
                             r_cfg.eq(0), *assign_descriptor(r_cfg, fields)]
                # bytes of A per R rows: ceil(K / 4) words of 4 bytes in each of R banks;
                # DSP layers: per row, S = ceil(K / Wp) words of 4 bytes in each of R banks
                m.d.sync += [kw_bytes.eq(((fields["k"] + 3) >> 2) << (lr + 2)),
                             d_layer.eq((fields["sparse"] != 0) if core.dsp_stages else 0)]
                with m.Switch(fields["sparse"]):
                    for pat, win in core.dsp_windows.items():
                        with m.Case(1 + int(pat)):
                            wl = win.bit_length() - 1
                            m.d.sync += [
                                kw_bytes.eq(((fields["k"] + win - 1) >> wl) << (lr + 2)),
                                d_wlog.eq(wl), d_bmask.eq(win // 4 - 1)]
                zero_loop = Cat(*(n == 0 for n in n_loop)).any()
                with m.If(zero_loop | ((kind == LayerKind.GEMM) &
                                       (bad_param | (fields["out_mode"] != OutMode.INT8)))):
                    m.d.sync += st.eq(ErrorCode.BAD_PARAM)
                    m.next = "COUNT"
                with m.Elif((kind == LayerKind.GEMM) & bad_shape):
                    m.d.sync += st.eq(ErrorCode.BAD_SHAPE)
                    m.next = "COUNT"
                with m.Elif(kind == LayerKind.GEMM):
                    m.d.sync += st.eq(ErrorCode.OK)
                    m.next = "GATHER"
                with m.Elif(kind == LayerKind.MAXPOOL):
                    m.d.sync += st.eq(ErrorCode.OK)
                    m.next = "POOL"
                with m.Else():
                    m.d.sync += st.eq(ErrorCode.BAD_PARAM)
                    m.next = "COUNT"
                watchdog_and_abort()
            with m.State("GATHER"):
                m.d.comb += g_run.eq(1)
                with m.If(~g_on & ~p_v.any() & ~p2_v):
                    m.next = "START"
                watchdog_and_abort()
            with m.State("START"):
                m.d.comb += r_start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(core.done):
                    m.d.sync += [c_core.eq(core.cnt_cycles), c_busy.eq(core.cnt_busy),
                                 c_macs.eq(core.cnt_macs), st.eq(core.error),
                                 s_on.eq(1), s_m.eq(0), s_n.eq(0), s_bank.eq(0), s_ebase.eq(0),
                                 s_e.eq(0), s_nlast.eq(s_none), s_mlast.eq(s_mone),
                                 s_blast.eq(R == 1)]
                    with m.If(core.error != ErrorCode.OK):
                        m.next = "COUNT"
                    with m.Else():
                        m.next = "SCATTER"
            with m.State("SCATTER"):
                m.d.sync += s_v.eq(Cat(s_on, s_v[:-1]))
                with m.If(s_on):
                    with m.If(s_nlast):
                        # the row's end: the next row starts at s_ebase (the same bank round)
                        # or, after bank R - 1, at s_ebase + N = s_e + 1 (a new round)
                        m.d.sync += [s_n.eq(0), s_nlast.eq(s_none),
                                     s_m.eq(s_m + 1), s_mlast.eq(s_m == s_mm2)]
                        if R > 1:
                            m.d.sync += [s_bank.eq(s_bank + 1), s_blast.eq(s_bank == R - 2)]
                        with m.If(s_blast):
                            m.d.sync += [s_e.eq(s_e + 1), s_ebase.eq(s_e + 1)]
                        with m.Else():
                            m.d.sync += s_e.eq(s_ebase)
                        with m.If(s_mlast):
                            m.d.sync += s_on.eq(0)
                    with m.Else():
                        m.d.sync += [s_n.eq(s_n + 1), s_nlast.eq(s_n == s_nm2), s_e.eq(s_e + 1)]
                with m.If(~s_on & ~s_v.any() & ~awr_en):
                    m.next = "COUNT"
                watchdog_and_abort()
            with m.State("POOL"):
                m.d.comb += g_run.eq(1)
                with m.If(~g_on & ~p_v.any() & ~p2_v & ~awr_en):
                    m.next = "COUNT"
                watchdog_and_abort()
            with m.State("COUNT"):
                m.d.sync += [l_idx.eq(0),
                             l_rec.eq(Cat(st, Const(0, 8 - len(st)), kind, Const(0, 16),
                                          cyc, c_core, c_busy, c_macs))]
                m.next = "LCNT"
                watchdog_and_abort()
            with m.State("LCNT"):
                m.d.comb += lcnt_w.en.eq(1)
                m.d.sync += l_idx.eq(l_idx + 1)
                with m.If(l_idx == LCNT_RECORD - 1):
                    with m.If(st != ErrorCode.OK):
                        m.d.sync += finish(st)
                        m.next = "IDLE"
                    with m.Elif(layer == count - 1):
                        m.d.sync += finish(ErrorCode.OK)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), fidx.eq(0), cyc.eq(0)]
                        m.next = "FETCH"
                watchdog_and_abort()
        # runner bus: gather writes A (one cycle after the ACT read), scatter reads OUT
        in_gather = Signal()
        m.d.comb += in_gather.eq(p2_v & (kind == LayerKind.GEMM))
        m.d.comb += [
            r_sel.eq(Mux(in_gather, Buffer.A, Buffer.OUT)),
            r_addr.eq(Mux(in_gather, p2_a, s_addr)),
            r_wdata.eq(p2_val), r_we.eq(in_gather),
        ]
        # scatter data: OUT byte arrives lat_core cycles after its address
        with m.If(s_v[-1]):
            m.d.comb += [aw_addr.eq(out_base + t_out), aw_data.eq(core.bus_rdata), aw_en.eq(1)]
            m.d.sync += t_out.eq(t_out + 1)
        # pool: running maximum over each window, written at its end
        with m.If(p2_v & (kind == LayerKind.MAXPOOL)):
            cur = Mux(p2_wfirst | (p2_val.as_signed() > mx), p2_val.as_signed(), mx)
            m.d.sync += mx.eq(cur)
            with m.If(p2_wend):
                m.d.comb += [aw_addr.eq(out_base + t_out), aw_data.eq(cur), aw_en.eq(1)]
                m.d.sync += t_out.eq(t_out + 1)
        return m
