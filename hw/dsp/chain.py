"""N:M sparse DSP chains (FlightLLM) on ECP5 MULT18X18D, optionally two products per DSP."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith._common import check_bool, check_impl, check_int_param, fused_add, use_ecp5
from hw.arith.intmul import IntMul
from hw.systolic.util import delay, fanout_delay, register
from .mux import table_mux
from sw import numerics
from sw.numerics import NMPattern

__all__ = ["SparseDSPChain"]


class SparseDSPChain(wiring.Component):
    """``chains`` N:M sparse DSP chains of ``stages`` MULT18X18D each, sharing one activation
    window (FlightLLM's configurable sparse DSP chain, mapped to the ECP5).

    Every cycle one *step* enters: a window of INT8 activations along K and, per chain and
    stage, one kept weight and its index. For the run-time pattern ``n:m`` the window holds
    ``stages / n`` blocks of ``m`` activations; stage ``j`` serves block ``j // n`` and
    multiplies its weight by ``a[(j // n) * m + idx]`` (stages ``j`` with equal ``j // n``
    hold the ``n`` kept weights of one block). So a chain does ``stages`` multiplies per cycle
    and covers ``stages * m / n`` of K: 2x the dense rate at 2:4, 4x at 1:4 and 2:8.

    The products run down a pipelined fabric adder chain, one register per stage (the open
    flow cannot use the ECP5's ALU54B, so there is no DSP cascade). The break mask ``brk``
    cuts the step's stages into runs: bit ``j`` set ends a dot product at stage ``j``, and
    stage ``j + 1`` starts a new one. A run ending at ``j < stages - 1`` is a whole dot
    product and comes out at ``sum[q][j]``. The run that reaches the last stage is added to
    the chain's accumulator; if ``brk[stages-1]`` is set the accumulator's sum comes out at
    ``sum[q][stages-1]`` and the accumulator restarts, else it carries into the next valid
    step. A dot product longer than one step therefore occupies the last runs of consecutive
    steps (typically whole steps with ``brk = 0`` and ``brk = 1 << (stages-1)`` on its last
    step), and a short one (small K, GEMV) shares a step with others. Nothing else leaves the
    chain: ``sum_valid`` bit ``j`` is ``valid & brk[j]`` of the step, exactly once.

    Packed (``packed=True``): each chain carries two output columns (``2c`` low, ``2c + 1``
    high) whose weights share the index (``sw.quant.prune_nm(..., pair_columns=True)``), so
    both multiply the same activation ``x``. One DSP computes
    ``P = x * ((w_hi << k) + w_lo)`` with ``k = sw.numerics.DSP_PACK_SHIFT`` (12, inside
    ``dsp_pack_bounds`` of INT4, INT2 and TERNARY weights) and every stage unpacks its own
    product: ``lo = sext(P[k-1:0])``, ``hi = (P >> k) + P[k-1]``. Unpacking per stage, not at
    the chain end, because the bound holds only for one product: the sum of 8 INT4 x INT8 low
    products needs k >= 15, and an INT4 operand fits the 18-bit port only for k <= 13. The
    two sums share one carry chain per stage, ``[lo | guard | hi]``: the guard bit adds
    ``P[k-1] + P[k-1]``, which swallows the low field's carry-out and carries ``P[k-1]`` (the
    borrow correction) into the high field, so unpacking costs one LUT per stage.

    Pipeline (``tau`` = the cycle a step enters; all of it in registered stages):
    ``tau+1`` the window arranged into block slots (by ``m``), ``tau+2`` each stage's block
    window (by ``n``), then per chain the index mux; stage ``j``'s activation and weight wait
    ``j`` cycles (the adder chain's skew) and enter the DSP's input register at ``tau+2+j``;
    product at ``tau+4+j``; run sum ``s_j`` registered at ``tau+5+j`` (``s_j = p_j +
    (brk[j-1] ? 0 : s_{j-1})``, the restart folded into the adder's LUTs); the accumulator at
    ``tau+5+stages``; runs that ended earlier wait in delay lines so that all sums of a step
    leave together, ``LATENCY`` cycles after it entered. One step per cycle, no stalls.

    The block arrangement (window -> slots -> stage windows), the control delays and the tag
    are built once and shared by all chains; per chain there is one index mux per stage
    (per column pair when packed; on ECP5 mapped onto LUT4 / PFUMX / L6MUX21 by
    :func:`hw.dsp.mux.table_mux`), its DSPs and adders.

    Shared indices (``share > 1``, VENOM's V:N:M vector-wise sparsity): chains in groups of
    ``share`` (``share * lanes`` output columns) keep their weights at the same positions, so
    each group has one index per stage and one index mux per stage, whose activation feeds
    the group's ``share`` DSPs through its skew delay, which branches out into a tree of
    copies (:func:`hw.systolic.util.fanout_delay`). With ``share = chains`` the whole engine has
    ``stages`` index muxes instead of ``chains * stages``; the weights must be pruned so
    (``sw.quant.prune_nm(..., share=...)``), which costs accuracy.

    Parameters
    ----------
    stages : int
        DSPs per chain, ``L``.
    chains : int
        Chains sharing the window (output columns: ``chains``, or ``2 * chains`` packed).
    m_max : 4 or 8
        Largest block size; the patterns are those of :class:`sw.numerics.NMPattern` with
        ``m <= m_max``, ``n`` dividing ``stages`` and a window of at most ``max_window``
        (:attr:`PATTERNS`).
    max_window : int or None
        Most activations the caller can give per step (None: no limit). Patterns whose
        window (``stages / n * m``) is wider are left out: a core whose activation banks
        give 16 bytes per cycle runs an 8-stage chain with dense 8:8, 2:4 and 4:8 only.
    packed : bool
        Two products per DSP (weights of 4 bits or fewer: INT4, INT2, TERNARY values).
    share : int
        Chains per index group (a divisor of ``chains``; 1: every chain its own indices).
    sparse : bool
        False builds the dense baseline: stage ``j`` multiplies ``a[j]``, no pattern, no
        index, no block arrangement (same latency; the cost report's reference).
    acc_width : int
        Accumulator and output width; the accumulator wraps (two's complement) beyond it.
        At least the last stage's run width (:attr:`STAGE_WIDTHS`).
    tag_width : int
        Width of the caller's step tag, returned with the step's sums.
    impl : "auto" | "generic" | "ecp5"
        MULT18X18D and CCU2C carry chains ("ecp5"), plain operators ("generic"), or by
        platform ("auto"); all compute the same function.

    Attributes
    ----------
    LATENCY : int
        ``stages + 5``: cycles from a step's inputs to its sums.
    PATTERNS : tuple of NMPattern
        Run-time patterns (empty when not ``sparse``). Other codes give unspecified sums.
    WINDOW : int
        Activations per step: ``max(stages / n * m)`` over :attr:`PATTERNS` (``stages`` dense).
    COLUMNS : int
        Output columns, ``chains * (2 if packed else 1)``.
    W_WIDTH : int
        Weight input width: 8, or 4 when packed.
    STAGE_WIDTHS : list of int
        Width of the run sum at stage ``j`` (each packed field), exact for ``j + 1`` products.

    Members
    -------
    a : In(signed(8)).array(WINDOW)
        The step's activation window (shared by all chains).
    pattern : In(NMPattern)
        The step's N:M pattern (only when ``sparse``).
    w : In(signed(W_WIDTH)).array(COLUMNS, stages)
        Kept weight of column ``q`` at stage ``j`` (zero pads an empty slot).
    idx : In(range(m_max)).array(chains // share, stages)
        Its position within the block, per index group (only when ``sparse``; group ``g`` is
        chains ``g * share`` .. ``(g + 1) * share - 1``, both columns of each when packed).
    brk : In(stages)
        Stages that end a dot product.
    valid : In(1)
        The step carries data; an invalid step emits nothing and leaves the accumulator alone.
    tag : In(tag_width)
        Caller's id of the step.
    sum : Out(signed(acc_width)).array(COLUMNS, stages)
        The dot product of column ``q`` that ended at stage ``j``.
    sum_valid : Out(stages)
        ``valid & brk`` of the step whose sums are on ``sum``.
    sum_tag : Out(tag_width)
        That step's ``tag``.
    """

    def __init__(self, *, stages: int, chains: int = 1, m_max: int = 8, packed: bool = False,
                 sparse: bool = True, acc_width: int = 32, tag_width: int = 8,
                 max_window: int | None = None, share: int = 1, impl: str = "auto"):
        self.stages = check_int_param("stages", stages, range(1, 65))
        self.chains = check_int_param("chains", chains, range(1, 257))
        self.m_max = check_int_param("m_max", m_max, numerics.NM_BLOCK_SIZES)
        self.packed = check_bool("packed", packed)
        self.sparse = check_bool("sparse", sparse)
        self.share = check_int_param("share", share, range(1, self.chains + 1))
        if self.chains % self.share:
            raise ValueError(f"share must divide chains ({self.chains}), not {share}")
        self.GROUPS = self.chains // self.share
        self.impl = check_impl(impl)
        prod_w_bits = 4 if packed else 8
        self.STAGE_WIDTHS = [numerics.acc_bits(j + 1, 8, prod_w_bits) for j in range(stages)]
        self.acc_width = check_int_param("acc_width", acc_width,
                                         range(self.STAGE_WIDTHS[-1], 65))
        self.tag_width = check_int_param("tag_width", tag_width, range(1, 33))
        self.max_window = None if max_window is None else \
            check_int_param("max_window", max_window, range(1, 1 << 16))
        self.PATTERNS = self.patterns_for(stages=stages, m_max=m_max,
                                          max_window=max_window) if sparse else ()
        if sparse and not self.PATTERNS:
            raise ValueError(f"no N:M pattern fits a chain of {stages} stages with m_max "
                             f"{m_max} in a window of {max_window} activations")
        self.WINDOW = max(self.window_for(stages=stages, pattern=p) for p in self.PATTERNS) \
            if sparse else stages
        self.LANES = 2 if packed else 1
        self.COLUMNS = chains * self.LANES
        self.W_WIDTH = prod_w_bits
        self.PACK_SHIFT = numerics.DSP_PACK_SHIFT
        self.LATENCY = stages + 5
        ports = {
            "a": In(signed(8)).array(self.WINDOW),
            "w": In(signed(self.W_WIDTH)).array(self.COLUMNS, stages),
            "brk": In(stages),
            "valid": In(1),
            "tag": In(tag_width),
            "sum": Out(signed(acc_width)).array(self.COLUMNS, stages),
            "sum_valid": Out(stages),
            "sum_tag": Out(tag_width),
        }
        if sparse:
            ports["pattern"] = In(NMPattern)
            ports["idx"] = In(range(m_max)).array(self.GROUPS, stages)
        super().__init__(ports)

    @staticmethod
    def patterns_for(*, stages: int, m_max: int = 8, max_window: int | None = None) -> tuple:
        """The run-time patterns of a chain of ``stages`` (``m <= m_max``, ``n`` dividing it,
        window at most ``max_window``)."""
        return tuple(p for p in NMPattern if p.m <= m_max and stages % p.n == 0
                     and (max_window is None
                          or SparseDSPChain.window_for(stages=stages, pattern=p) <= max_window))

    @staticmethod
    def window_for(*, stages: int, pattern: NMPattern) -> int:
        """Activations along K one step covers with ``pattern``: ``stages / n`` blocks of ``m``."""
        return stages // pattern.n * pattern.m

    # -- shared front end ---------------------------------------------------------------------

    def _stage_windows(self, m) -> list[list[Value]]:
        """Per stage its block's ``m_max`` activations, registered at ``tau+2``.

        Two registered levels with binary selects instead of one wide mux per stage: block
        slot ``b`` depends only on ``m`` (``a[b*m + i]``, a 2:1 mux), and stage ``j``'s slot
        only on ``n`` (``j // n``, at most 4:1). Left to ABC (plain operators): for L = 8 it
        maps this to 644 LUT4, the hand-mapped LUT4 / PFUMX structure of the index muxes to
        836 (for the index muxes it is the other way round).
        """
        L, pats = self.stages, self.PATTERNS
        m8 = Signal()
        m.d.comb += m8.eq(self.pattern.matches(*[int(p) for p in pats if p.m == 8])
                          if any(p.m == 8 for p in pats) else 0)
        nlog = Signal(2)
        with m.Switch(self.pattern):
            for p in pats:
                with m.Case(int(p)):
                    m.d.comb += nlog.eq(p.n.bit_length() - 1)
        nlog_r = Signal(2, reset_less=True)
        m.d.sync += nlog_r.eq(nlog)

        nslots = max(L // p.n for p in pats)
        slots = [[Signal(signed(8), name=f"slot{b}_{i}", reset_less=True)
                  for i in range(self.m_max)] for b in range(nslots)]
        for b in range(nslots):
            for i in range(self.m_max):
                table = [None, None]                 # by m == 8
                for p in pats:
                    if b < L // p.n and i < p.m:
                        table[int(p.m == 8)] = b * p.m + i
                m.d.sync += slots[b][i].eq(table_mux(
                    m, [m8], table, lambda pos: self.a[pos], width=8, ecp5=False,
                    name=f"slot{b}_{i}_m"))

        win = [[Signal(signed(8), name=f"win{j}_{i}", reset_less=True)
                for i in range(self.m_max)] for j in range(L)]
        for j in range(L):
            for i in range(self.m_max):
                table = [None] * 4                   # by log2(n)
                for p in pats:
                    if i < p.m:
                        table[p.n.bit_length() - 1] = j // p.n
                m.d.sync += win[j][i].eq(table_mux(
                    m, [nlog_r[0], nlog_r[1]], table, lambda s, i=i: slots[s][i], width=8,
                    ecp5=False, name=f"win{j}_{i}_m"))
        return win

    # -- one chain ------------------------------------------------------------------------------

    def _run_add(self, m, bits_x, prev, restart, ecp5: bool, name: str, guard=None) -> Signal:
        """Registered ``x + (restart ? 0 : prev)`` with the restart in the adder's LUTs.

        ``bits_x``: the addend's bits (LSB first, already sign-extended); ``prev``: list of
        the previous run sum's bits (same length, sign-extended); ``guard``: index in
        ``bits_x`` of a packed guard bit (both addends ``P[k-1]``, see the class docstring).
        """
        bits = []
        for i, x in enumerate(bits_x):
            if i == guard:
                bits.append(([x], lambda X: X, lambda X: X))
            else:
                bits.append(([prev[i], restart, x], lambda S, R, X: X, lambda S, R, X: S & (1 ^ R)))
        s = fused_add(m, bits, ecp5=ecp5, name=name)
        r = Signal(len(bits_x), name=f"{name}_r", reset_less=True)
        m.d.sync += r.eq(s)
        return r

    def elaborate(self, platform):
        m = Module()
        ecp5 = use_ecp5(self.impl, platform)
        L, k = self.stages, self.PACK_SHIFT

        # shared control: (valid & brk) delayed; run restarts tap it at their stage's time
        ctl = [Signal(L, name="ctl_in")]
        m.d.comb += ctl[0].eq(self.brk & self.valid.replicate(L))
        vld = [self.valid]
        tags = [self.tag]
        for d in range(1, self.LATENCY + 1):
            ctl.append(Signal(L, name=f"ctl_d{d}"))
            vld.append(Signal(name=f"vld_d{d}"))
            tags.append(Signal(self.tag_width, name=f"tag_d{d}", reset_less=True))
            m.d.sync += [ctl[d].eq(ctl[d - 1]), vld[d].eq(vld[d - 1]), tags[d].eq(tags[d - 1])]
        m.d.comb += [self.sum_valid.eq(ctl[self.LATENCY]), self.sum_tag.eq(tags[self.LATENCY])]

        def chain_control(c):
            """Chain ``c``'s own copy of the control its adders and accumulators use, taken
            from the shared delay line one cycle early. Shared, a restart bit reached every
            chain's stage adder and ``acc_en`` / ``keep`` every accumulator bit of the
            engine: nets of hundreds of sinks across the DSP rows. On ECP5 the copies are
            kept apart (Yosys would merge them back into one)."""
            own = lambda v, n, **kw: register(m, v, f"c{c}_{n}", apart=ecp5, **kw)  # noqa: E731
            # run sum s_j is formed during tau+4+j: it restarts if the step broke at stage j-1
            restart = [None] + [own(ctl[3 + j][j - 1], f"restart{j}") for j in range(1, L)]
            acc_en, acc_end = own(vld[3 + L], "acc_en"), own(ctl[3 + L][L - 1], "acc_end")
            # the accumulator keeps its sum while the last valid step did not end at the last
            # stage
            return restart, acc_en, own(~acc_end, "keep", en=acc_en)

        win = self._stage_windows(m) if self.sparse else None

        group_x = {}                        # (group, stage) -> the group's skewed activation
        for c in range(self.chains):
            restart, acc_en, keep = chain_control(c)
            fields = [[] for _ in range(self.LANES)]     # per lane: run sum of every stage
            for j in range(L):
                # the activation: index mux at tau+2, then j cycles of skew
                g = c // self.share
                if self.sparse and c % self.share:
                    x = group_x[g, j][c % self.share]   # the group's first chain built it
                elif self.sparse:
                    sel = delay(m, self.idx[g][j], 2, f"g{g}_idx{j}", reset_less=True)
                    # hand-mapped (hw.dsp.mux): 4 LUT4 per bit at m_max = 8, ABC needs ~9
                    x = Signal(signed(8), name=f"g{g}_x{j}")
                    m.d.comb += x.eq(table_mux(m, [sel[b] for b in range(len(sel))],
                                               list(range(self.m_max)), lambda i: win[j][i],
                                               width=8, ecp5=ecp5, name=f"g{g}_mux{j}"))
                    # j cycles of skew, branching out to the group's chains (a tree of
                    # copies, so no register drives all ``share`` multipliers)
                    group_x[g, j] = fanout_delay(m, x, j, self.share, f"g{g}_x{j}s",
                                                 apart=ecp5)
                    x = group_x[g, j][0]
                else:
                    x = delay(m, delay(m, self.a[j], 2, f"c{c}_a{j}", reset_less=True), j,
                              f"c{c}_x{j}s", reset_less=True)
                ws = [delay(m, self.w[c * self.LANES + lane][j], 2 + j, f"c{c}_w{lane}_{j}",
                            reset_less=True) for lane in range(self.LANES)]
                if self.packed:
                    lo, hi = ws
                    # (hi << k) + sext(lo): the low k bits are lo sign-extended; hi absorbs
                    # lo's sign as a borrow
                    hi5 = Signal(signed(5), name=f"c{c}_hi{j}")
                    m.d.comb += hi5.eq(hi - lo[3])
                    b = Cat(lo, lo[3].replicate(k - 4), hi5).as_signed()
                else:
                    b = ws[0]
                m.submodules[f"c{c}_mul{j}"] = mul = IntMul(
                    a_width=8, b_width=len(b), reg_in=True, reg_out=True, impl=self.impl)
                assert mul.LATENCY == 2
                m.d.comb += [mul.a.eq(x), mul.b.eq(b)]
                p = mul.p
                pw = len(p)
                width = self.STAGE_WIDTHS[j]
                if not self.packed:
                    px = [p[min(i, pw - 1)] for i in range(width)]
                    if j == 0:
                        s = Signal(width, name=f"c{c}_s0", reset_less=True)
                        m.d.sync += s.eq(Cat(*px))
                    else:
                        prev = fields[0][j - 1]
                        prev = [prev[min(i, len(prev) - 1)] for i in range(width)]
                        s = self._run_add(m, px, prev, restart[j], ecp5, f"c{c}_add{j}")
                    fields[0].append(s.as_signed())
                    continue
                lo_x = [p[min(i, k - 1)] for i in range(width)]
                hi_x = [p[min(k + i, pw - 1)] for i in range(width)]
                if j == 0:
                    lo_s = Signal(width, name=f"c{c}_lo0", reset_less=True)
                    m.d.sync += lo_s.eq(Cat(*lo_x))
                    # (P >> k) + P[k-1]: the borrow correction as the carry-in
                    hi_s = fused_add(m, [([h], lambda X: X, lambda X: 0) for h in hi_x],
                                     cin=p[k - 1], ecp5=ecp5, name=f"c{c}_hi0")
                    hi_r = Signal(width, name=f"c{c}_hi0_r", reset_less=True)
                    m.d.sync += hi_r.eq(hi_s)
                    fields[0].append(lo_s.as_signed())
                    fields[1].append(hi_r.as_signed())
                    continue
                plo, phi = fields[0][j - 1], fields[1][j - 1]
                ext = lambda v: [v[min(i, len(v) - 1)] for i in range(width)]  # noqa: E731
                s = self._run_add(m, lo_x + [p[k - 1]] + hi_x, ext(plo) + [None] + ext(phi),
                                  restart[j], ecp5, f"c{c}_add{j}", guard=width)
                fields[0].append(s[:width].as_signed())
                fields[1].append(s[width + 1:].as_signed())

            for lane in range(self.LANES):
                q = c * self.LANES + lane
                runs = fields[lane]
                for j in range(L - 1):
                    # a run that ended at stage j waits for the step's last sum
                    m.d.comb += self.sum[q][j].eq(delay(m, runs[j], L - j, f"q{q}_run{j}",
                                                        reset_less=True))
                last = runs[L - 1]
                acc = Signal(self.acc_width, name=f"q{q}_acc", reset_less=True)
                tot = fused_add(m, [([acc[i], keep, last[min(i, len(last) - 1)]],
                                     lambda A, K, X: X, lambda A, K, X: A & K)
                                    for i in range(self.acc_width)], ecp5=ecp5, name=f"q{q}_tot")
                with m.If(acc_en):
                    m.d.sync += acc.eq(tot)
                m.d.comb += self.sum[q][L - 1].eq(acc.as_signed())
        return m
