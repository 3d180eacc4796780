"""SparseDSPChain (hw.dsp) on Verilator, bit-exact against ``sw.numerics.sparse_gemm``.

Eight configurations in ONE build (the C++ compile dominates): INT8 and packed chains on the
behavioural MULT18X18D (impl="ecp5", 2 chains of 8 each, sharing the window) and on plain
operators (impl="generic": a 4-stage m_max=4 chain, a one-chain packed chain, the dense
baseline, an 8-stage chain limited to a 16-activation window, as the core builds it on
4 rows, 4 chains of 8 sharing their indices, ``share=4``, and 4 chains of 4 in two index
groups, ``share=2``), each behind flattened ports. The narrower accumulators (20 bits) exercise the
documented wrap-around.

Expected values come from ``sw.numerics`` only: every dot product the chain emits is rebuilt
as a 1-row N:M problem (its activations, and per column its kept weights with their indices,
a block cut by a break padded with zero weights at unused indices) and evaluated with
``sparse_gemm``; whole GEMMs are compared with ``sparse_gemm(A, sp)`` directly. Every test
checks that each expected sum arrives exactly once, at its stage, with its step's tag, and
that nothing else is emitted.
"""

from __future__ import annotations

import itertools

import numpy as np
import cocotb

from arith_harness import pack, start_clock
from amaranth.hdl import Module, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith.models import ecp5_fabric_model, mult18x18d_model
from hw.netlist import vpi_top_only
from hw.simulate import run_cocotb, tb_params
from sw import numerics
from sw.numerics import NMPattern, NMSparse, WeightFormat as F

#: name -> SparseDSPChain parameters
CONFIGS = {
    "u8": dict(stages=8, chains=2, m_max=8, impl="ecp5", acc_width=24),
    "p8": dict(stages=8, chains=2, m_max=8, packed=True, impl="ecp5", acc_width=24),
    "u4g": dict(stages=4, chains=1, m_max=4, impl="generic", acc_width=20),
    "p8g": dict(stages=8, chains=1, m_max=8, packed=True, impl="generic", acc_width=20),
    "d4g": dict(stages=4, chains=1, sparse=False, impl="generic", acc_width=20),
    # the core's 8 stages on 4 A banks: a 16-activation window, dense / 4:8 / 2:4 only
    "u8w": dict(stages=8, chains=1, m_max=8, max_window=16, impl="generic", acc_width=24),
    # shared indices: one group of 4 chains (as the dsp4s / dsp8s engines) and two groups
    # of 2
    "s8g": dict(stages=8, chains=4, m_max=8, share=4, impl="generic", acc_width=20),
    "s4g": dict(stages=4, chains=4, m_max=8, share=2, impl="generic", acc_width=20),
}
PACKED_FORMATS = (F.INT4, F.INT2, F.TERNARY)


class Flat(wiring.Component):
    """Several components behind flat ports ``<name>_<port>`` (array leaves concatenated
    row-major, leaf 0 in the low bits), so a testbench writes one integer per port."""

    def __init__(self, duts: dict):
        self._duts = duts
        ports = {}
        for name, dut in duts.items():
            for port, member in dut.signature.members.items():
                n = int(np.prod(member.dimensions)) if member.dimensions else 1
                w = Shape.cast(member.shape).width * n
                ports[f"{name}_{port}"] = (In if member.flow == wiring.In else Out)(w)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for name, dut in self._duts.items():
            m.submodules[name] = dut
            offs = {}
            for path, member, leaf in dut.signature.flatten(dut):
                port = path[0]
                w = Shape.cast(member.shape).width
                o = offs.get(port, 0)
                outer = getattr(self, f"{name}_{port}")[o:o + w]
                offs[port] = o + w
                if member.flow == wiring.In:
                    m.d.comb += leaf.eq(outer)
                else:
                    m.d.comb += outer.eq(leaf)
        return m


def _desc(dut) -> dict:
    return {"stages": dut.stages, "chains": dut.chains, "m_max": dut.m_max, "packed": dut.packed,
            "sparse": dut.sparse, "acc_width": dut.acc_width, "tag_width": dut.tag_width,
            "latency": dut.LATENCY, "window": dut.WINDOW, "columns": dut.COLUMNS,
            "lanes": dut.LANES, "w_width": dut.W_WIDTH, "patterns": [int(p) for p in dut.PATTERNS],
            "share": dut.share,
            "idx_bits": max(1, (dut.m_max - 1).bit_length())}


def test_dsp_chain():
    from hw.dsp import SparseDSPChain
    duts = {name: SparseDSPChain(**kw) for name, kw in CONFIGS.items()}
    params = {name: _desc(d) for name, d in duts.items()}
    vlt, args = vpi_top_only("dsp_chain")
    # impl="ecp5" instantiates MULT18X18D (the project's behavioural model) and CCU2C, LUT4,
    # PFUMX, L6MUX21 (Yosys' models)
    # -O0: the Yosys cell models make this the largest C++ of the cocotb models, and its
    # short simulation hardly notices (cold: 70 s at -O0, 89 s at -O1, 108 s at -Os)
    run_cocotb(Flat(duts), name="dsp_chain", test_module="test_dsp_chain", params=params,
               extra_sources={**mult18x18d_model(), **ecp5_fabric_model(), **vlt}, build_args=args,
               opt="-O0")


# -- the testbench's model of a step stream (host side, NumPy) -------------------------------

def _pattern(d, step) -> tuple[int, int]:
    if not d["sparse"]:
        return 4, 4            # stage j multiplies a[j]: DENSE4 with idx = j % 4
    return NMPattern(step["pattern"]).n, NMPattern(step["pattern"]).m


def _runs(brk: int, L: int) -> list[tuple[int, int]]:
    """Stage ranges (first, last) of a step's runs; the last always ends at stage L-1."""
    runs, start = [], 0
    for j in range(L):
        if (brk >> j) & 1 or j == L - 1:
            runs.append((start, j))
            start = j + 1
    return runs


def _golden(d, steps, members, fmt) -> np.ndarray:
    """One dot product per column: ``members`` = its (step, stage) slots, as a 1-row
    N:M problem evaluated by ``sparse_gemm`` (wrapped to the accumulator width)."""
    n, m = _pattern(d, steps[members[0][0]])
    blocks = {}
    for t, j in members:
        assert _pattern(d, steps[t]) == (n, m), "a dot product must keep its pattern"
        blocks.setdefault((t, j // n), []).append(j)
    C, lanes = d["columns"], d["lanes"]
    vals = np.zeros((len(blocks) * n, C), dtype=np.int64)
    idxs = np.zeros((len(blocks) * n, C), dtype=np.int64)
    a_row = np.zeros(len(blocks) * m, dtype=np.int64)
    for bi, ((t, bb), js) in enumerate(blocks.items()):
        st = steps[t]
        a_row[bi * m:(bi + 1) * m] = st["a"][bb * m:(bb + 1) * m]
        for q in range(C):
            used = [int(st["idx"][q // lanes][j]) for j in js]
            free = [i for i in range(m) if i not in used]
            entries = [(int(st["idx"][q // lanes][j]), int(st["w"][q][j])) for j in js]
            entries += [(free[e], 0) for e in range(n - len(js))]
            for e, (ix, v) in enumerate(entries):
                idxs[bi * n + e, q], vals[bi * n + e, q] = ix, v
    sp = NMSparse(n, m, vals, idxs, fmt)
    return numerics.wrap_int(numerics.sparse_gemm(a_row[None, :], sp)[0], d["acc_width"])


def expected_sums(d, steps, fmt) -> dict:
    """(step, stage) -> expected sums of all columns, for every sum the chain must emit."""
    L = d["stages"]
    exp, open_run = {}, []
    for t, st in enumerate(steps):
        if not st["valid"]:
            continue
        for j0, j1 in _runs(st["brk"], L):
            members = [(t, j) for j in range(j0, j1 + 1)]
            if j1 < L - 1:
                exp[(t, j1)] = _golden(d, steps, members, fmt)
                continue
            open_run += members             # the accumulator's run
            if (st["brk"] >> (L - 1)) & 1:
                exp[(t, L - 1)] = _golden(d, steps, open_run, fmt)
                open_run = []
    assert not open_run, "a test stream must close its last dot product"
    return exp


def _idle(d) -> dict:
    return {"a": np.zeros(d["window"], dtype=np.int64), "pattern": 0, "brk": 0, "valid": 0,
            "tag": 0, "w": np.zeros((d["columns"], d["stages"]), dtype=np.int64),
            "idx": np.zeros((d["chains"], d["stages"]), dtype=np.int64)}


def random_step(d, rng, pattern, fmt, brk: int, *, valid: int = 1) -> dict:
    """Random window and weights of ``fmt``; per index group and block distinct random
    indices (every chain of a group carries the group's)."""
    L = d["stages"]
    st = _idle(d)
    n, m = (pattern.n, pattern.m) if d["sparse"] else (4, 4)
    lo, hi = numerics.weight_range(fmt)
    st.update(a=rng.integers(-128, 128, d["window"]), pattern=int(pattern) if d["sparse"] else 0,
              brk=brk, valid=valid, w=rng.integers(lo, hi + 1, (d["columns"], L)))
    for c in range(d["chains"]):
        for b in range(L // n):
            st["idx"][c][b * n:(b + 1) * n] = np.arange(n) if not d["sparse"] else \
                rng.permutation(m)[:n] if c % d["share"] == 0 else \
                st["idx"][c - c % d["share"]][b * n:(b + 1) * n]
    return st


def gemm_steps(d, a, sp: NMSparse, rng) -> tuple[list, dict]:
    """Compile ``a @ sp`` onto the chain: each output column group of COLUMNS columns, each
    row a dot product. Longer than a step: whole steps (the tail blocks zero-weighted, their
    activations random), the last with ``brk = 1 << (L-1)``. Shorter: ``L / nnz`` dot products
    (consecutive rows) share a step, separated by breaks. Returns the steps and
    (step, stage) -> [(row, column) per chain column]."""
    L, C, lanes = d["stages"], d["columns"], d["lanes"]
    n, m = sp.n, sp.m
    bps = L // n                       # blocks per step
    M, ncols = a.shape[0], sp.ncols
    nnz = sp.blocks * n
    steps, where = [], {}
    for g in range(-(-ncols // C)):
        cols = [g * C + q for q in range(C)]
        colv = [min(col, ncols - 1) for col in cols]      # the last group repeats a column

        def blk(b, q):
            """Values and indices of block b of chain column q."""
            return sp.values[b * n:(b + 1) * n, colv[q]], sp.idx[b * n:(b + 1) * n, colv[q]]

        def fill(st, slot, r, b):
            """Stages of window block ``slot`` <- row r's block b (None: zero weights)."""
            if b is None:
                st["a"][slot * m:(slot + 1) * m] = rng.integers(-128, 128, m)
                for c in range(d["chains"]):
                    st["idx"][c][slot * n:(slot + 1) * n] = np.arange(n)
                return
            st["a"][slot * m:(slot + 1) * m] = a[r, b * m:(b + 1) * m]
            for q in range(C):
                v, ix = blk(b, q)
                st["w"][q][slot * n:(slot + 1) * n] = v
                c = q // lanes
                st["idx"][c][slot * n:(slot + 1) * n] = ix
                lead = st["idx"][c - c % d["share"]][slot * n:(slot + 1) * n]
                assert (ix == lead).all(), \
                    "the columns of a packed pair or an index group must share their indices"

        if nnz <= L:
            assert L % nnz == 0
            per = L // nnz
            for r0 in range(0, M, per):
                st = _idle(d)
                st.update(pattern=int(sp.pattern) if d["sparse"] else 0, valid=1)
                for k in range(per):
                    r = r0 + k
                    for b in range(sp.blocks):
                        fill(st, k * sp.blocks + b, r if r < M else None, b if r < M else None)
                    st["brk"] |= 1 << ((k + 1) * nnz - 1)
                    # rows past M are zero-weight padding: emitted, but not part of the GEMM
                    where[(len(steps), (k + 1) * nnz - 1)] = \
                        [(r, col) for col in cols] if r < M else None
                steps.append(st)
        else:
            nsteps = -(-sp.blocks // bps)
            for r in range(M):
                for s in range(nsteps):
                    st = _idle(d)
                    st.update(pattern=int(sp.pattern) if d["sparse"] else 0, valid=1,
                              brk=(1 << (L - 1)) if s == nsteps - 1 else 0)
                    for slot in range(bps):
                        b = s * bps + slot
                        fill(st, slot, r, b if b < sp.blocks else None)
                    steps.append(st)
                where[(len(steps) - 1, L - 1)] = [(r, col) for col in cols]
    return steps, where


def random_sparse(rng, k, ncols, pattern, fmt, *, group=1, empty=0.0, identity=False):
    """Random N:M weights of ``fmt``: some blocks empty (all-zero values), the rest with
    every kept weight nonzero (all-dense blocks). ``group``: columns in groups of ``group``
    share their indices (2: packed pairs; ``share * lanes`` on a shared chain);
    ``identity``: indices 0..n-1 in order (the dense baseline ignores them)."""
    n, m = pattern.n, pattern.m
    nb = k // m
    lo, hi = numerics.weight_range(fmt)
    nz = np.array([v for v in range(lo, hi + 1) if v != 0])
    vals = rng.choice(nz, (nb * n, ncols))
    blk_empty = rng.random((nb, ncols)) < empty
    vals[np.repeat(blk_empty, n, axis=0)] = 0
    idx = np.zeros((nb * n, ncols), dtype=np.int64)
    for b in range(nb):
        for c in range(ncols):
            if identity:
                idx[b * n:(b + 1) * n, c] = np.arange(n)
            elif c % group:
                idx[b * n:(b + 1) * n, c] = idx[b * n:(b + 1) * n, c - c % group]
            else:
                idx[b * n:(b + 1) * n, c] = rng.permutation(m)[:n]
    return NMSparse(n, m, vals, idx, fmt)


# -- cocotb side ----------------------------------------------------------------------------

# one definition of the lane packing and the clock/reset start (arith_harness)


def _pack(vals, width: int) -> int:
    return pack(np.ravel(vals), width)


_start = start_clock


async def run_steps(dut, name, d, steps) -> dict:
    """Drive one step per cycle; return (step, stage) -> sums of all columns, for every bit
    of ``sum_valid``, checking each carries its step's tag."""
    from cocotb.triggers import FallingEdge
    L, C, aw, lat = d["stages"], d["columns"], d["acc_width"], d["latency"]
    port = lambda p: getattr(dut, f"{name}_{p}")          # noqa: E731
    got = {}
    idle = _idle(d)
    tags = []
    for t in range(len(steps) + lat + 1):
        st = steps[t] if t < len(steps) else idle
        tag = t % (1 << d["tag_width"])
        tags.append(tag)
        port("a").value = _pack(st["a"], 8)
        port("w").value = _pack(st["w"], d["w_width"])
        port("brk").value = int(st["brk"])
        port("valid").value = int(st["valid"]) if t < len(steps) else 0
        port("tag").value = tag
        if d["sparse"]:
            port("pattern").value = int(st["pattern"])
            # one index per group: its first chain's (the others carry the same, the tb's
            # golden model reads each chain's own)
            port("idx").value = _pack(st["idx"][::d["share"]], d["idx_bits"])
        # registered outputs: what the step that entered LATENCY cycles ago produced
        sv = port("sum_valid").value.to_unsigned()
        if sv:
            ts = t - lat
            assert 0 <= ts < len(steps), f"{name}: sums at cycle {t} belong to no step"
            assert port("sum_tag").value.to_unsigned() == tags[ts], f"{name}: tag of step {ts}"
            word = port("sum").value.to_unsigned()
            for j in range(L):
                if (sv >> j) & 1:
                    vals = [(word >> ((q * L + j) * aw)) & ((1 << aw) - 1) for q in range(C)]
                    got[(ts, j)] = numerics.wrap_int(np.array(vals), aw)
        await FallingEdge(dut.clk)
    return got


def check(name, got: dict, exp: dict):
    """Each expected sum exactly once, nothing else."""
    assert sorted(got) == sorted(exp), (f"{name}: emitted {len(got)} sums, expected "
                                        f"{len(exp)}; extra {sorted(set(got) - set(exp))[:5]}, "
                                        f"missing {sorted(set(exp) - set(got))[:5]}")
    keys = sorted(exp)
    np.testing.assert_array_equal(np.array([got[k] for k in keys], dtype=np.int64),
                                  np.array([exp[k] for k in keys], dtype=np.int64),
                                  strict=True, err_msg=name)


def _patterns(d):
    return [NMPattern(p) for p in d["patterns"]] if d["sparse"] else [NMPattern.DENSE4]


def _formats(d):
    return PACKED_FORMATS if d["packed"] else (F.INT8,)


@cocotb.test()
async def gemm_every_pattern(dut):
    """Random sparse GEMMs in every pattern (long K over several steps, K not a multiple of
    the step, small K with several dot products per step), empty and all-dense blocks,
    packed INT4 / INT2 / TERNARY; against ``sparse_gemm(A, sp)`` of the whole matrix."""
    desc = tb_params()
    await _start(dut)
    rng = np.random.default_rng(10)
    for name, d in desc.items():
        L = d["stages"]
        for pi, pat in enumerate(_patterns(d)):
            fmt = _formats(d)[pi % len(_formats(d))]
            ncols = d["columns"] + 1                     # two column groups, the last partial
            bps = L // pat.n
            for nb in sorted({max(1, bps // 2), 1, 2 * bps + 1, 3 * bps}):
                k = nb * pat.m
                if nb * pat.n <= L and L % (nb * pat.n):
                    continue                              # short K must tile the step
                sp = random_sparse(rng, k, ncols, pat, fmt, group=d["lanes"] * d["share"],
                                   empty=0.25,
                                   identity=not d["sparse"])
                a = rng.integers(-128, 128, (3, k))
                steps, where = gemm_steps(d, a, sp, rng)
                got = await run_steps(dut, name, d, steps)
                assert sorted(got) == sorted(where), f"{name} {pat.name} K={k}: emitted " \
                    f"{sorted(got)[:6]}, expected {sorted(where)[:6]}"
                out = np.full((a.shape[0], ncols), np.iinfo(np.int64).min, dtype=np.int64)
                for key, dest in where.items():
                    for q, (r, col) in enumerate(dest or []):
                        if col < ncols:
                            out[r, col] = got[key][q]
                want = numerics.wrap_int(numerics.sparse_gemm(a, sp), d["acc_width"])
                np.testing.assert_array_equal(out, want, strict=True,
                                              err_msg=f"{name} {pat.name} {fmt.name} K={k}")
                # the step-level model agrees on every emitted sum (and on the count)
                check(f"{name} {pat.name} K={k}", got, expected_sums(d, steps, fmt))


@cocotb.test()
async def every_break_mask(dut):
    """Every one of the 2**L break masks in every pattern (runs cut mid-block included),
    back to back; masks without the last bit carry the last run into the next step."""
    desc = tb_params()
    await _start(dut)
    rng = np.random.default_rng(11)
    for name, d in desc.items():
        L = d["stages"]
        for pi, pat in enumerate(_patterns(d)):
            fmt = _formats(d)[pi % len(_formats(d))]
            masks = list(range(1 << L))
            rng.shuffle(masks)
            steps = [random_step(d, rng, pat, fmt, int(b)) for b in masks]
            steps.append(random_step(d, rng, pat, fmt, 1 << (L - 1)))    # close the last run
            check(f"{name} {pat.name}", await run_steps(dut, name, d, steps),
                  expected_sums(d, steps, fmt))


@cocotb.test()
async def bubbles_and_extremes(dut):
    """Invalid steps (random garbage, random breaks) between and inside dot products leave
    no trace; extreme operands (-128 x most negative weight) over long dot products, where
    the 20-bit accumulators wrap (two's complement, as documented)."""
    desc = tb_params()
    await _start(dut)
    rng = np.random.default_rng(12)
    wrapped = {}
    for name, d in desc.items():
        L = d["stages"]
        for fmt in _formats(d):
            pat = _patterns(d)[-1]
            steps = []
            for _ in range(40):
                brk = int(rng.integers(0, 1 << L)) if rng.random() < 0.5 else 0
                if rng.random() < 0.3:
                    brk |= 1 << (L - 1)
                steps.append(random_step(d, rng, pat, fmt, brk, valid=int(rng.random() < 0.6)))
            steps.append(random_step(d, rng, pat, fmt, 1 << (L - 1)))
            check(f"{name} bubbles {fmt.name}", await run_steps(dut, name, d, steps),
                  expected_sums(d, steps, fmt))
            # extremes: every product at the format's largest magnitude, 96 steps per sum
            lo, _ = numerics.weight_range(fmt)
            steps = []
            for s in range(2 * 96):
                st = random_step(d, rng, pat, fmt, (1 << (L - 1)) if s % 96 == 95 else 0)
                st["a"][:] = -128 if s < 96 else 127
                st["w"][:] = lo
                steps.append(st)
            got = await run_steps(dut, name, d, steps)
            exp = expected_sums(d, steps, fmt)
            check(f"{name} extremes {fmt.name}", got, exp)
            # the unwrapped first sum, to see whether this case crossed the accumulator range
            full = numerics.gemm(np.full((1, 96 * L), -128), np.full((96 * L, 1), lo))[0, 0]
            assert exp[(95, L - 1)][0] == numerics.wrap_int(full, d["acc_width"])
            wrapped[name] = wrapped.get(name, False) or bool(full >= 1 << (d["acc_width"] - 1))
    # every configuration with a 20-bit accumulator wrapped in at least one format
    assert all(wrapped[n] for n, d in desc.items() if d["acc_width"] == 20), wrapped


@cocotb.test()
async def packing_exhaustive(dut):
    """Packed chains: every (w_hi, w_lo, x) triple of INT4 (65,536), INT2 and TERNARY, one
    product per stage (1:4, a break at every stage), against ``int_mul`` per column and the
    host's own packing (``dsp_pack2`` / ``dsp_unpack2`` at ``DSP_PACK_SHIFT``)."""
    desc = tb_params()
    await _start(dut)
    rng = np.random.default_rng(13)
    for name, d in desc.items():
        if not d["packed"]:
            continue
        L, ch = d["stages"], d["chains"]
        for fmt in PACKED_FORMATS:
            lo_, hi_ = numerics.weight_range(fmt)
            ws = np.arange(lo_, hi_ + 1)
            trip = np.array(list(itertools.product(ws, ws, range(-128, 128))), dtype=np.int64)
            per = L * ch
            nsteps = -(-len(trip) // per)
            pad = np.zeros((nsteps * per - len(trip), 3), dtype=np.int64)
            tr = np.concatenate([trip, pad]).reshape(nsteps, ch, L, 3)
            steps = []
            for s in range(nsteps):
                st = random_step(d, rng, NMPattern.NM1_4, fmt, (1 << L) - 1)
                for j in range(L):           # distinct positions: every chain its own x
                    st["idx"][:, j] = rng.permutation(4)[:ch]
                for c in range(ch):
                    st["w"][2 * c + 1] = tr[s, c, :, 0]          # high column
                    st["w"][2 * c] = tr[s, c, :, 1]              # low column
                    # the window is shared: each chain reads its own position of the block
                    for j in range(L):
                        st["a"][4 * j + st["idx"][c][j]] = tr[s, c, j, 2]
                steps.append(st)
            got = await run_steps(dut, name, d, steps)
            assert len(got) == nsteps * L
            hw = np.array([[got[(s, j)] for j in range(L)] for s in range(nsteps)])  # s, j, q
            hw_hi = hw[:, :, 1::2].transpose(0, 2, 1).reshape(-1)[:len(trip)]
            hw_lo = hw[:, :, 0::2].transpose(0, 2, 1).reshape(-1)[:len(trip)]
            x = tr[:, :, :, 2].reshape(-1)[:len(trip)]
            w_hi = tr[:, :, :, 0].reshape(-1)[:len(trip)]
            w_lo = tr[:, :, :, 1].reshape(-1)[:len(trip)]
            bits = numerics.WEIGHT_BITS[fmt]
            np.testing.assert_array_equal(hw_hi, numerics.int_mul(x, w_hi, b_bits=bits),
                                          strict=True, err_msg=f"{name} {fmt.name} high")
            np.testing.assert_array_equal(hw_lo, numerics.int_mul(x, w_lo, b_bits=bits),
                                          strict=True, err_msg=f"{name} {fmt.name} low")
            k = numerics.DSP_PACK_SHIFT
            sw_hi, sw_lo = numerics.dsp_unpack2(x * numerics.dsp_pack2(w_hi, w_lo, k), k)
            np.testing.assert_array_equal(hw_hi, sw_hi, strict=True)
            np.testing.assert_array_equal(hw_lo, sw_lo, strict=True)
            if ch == 1:
                assert len(trip) == len(ws) ** 2 * 256
