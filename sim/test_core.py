"""mpGEMM core: random shapes (1x1x1, K/N not multiples of the array, buffer-filling), extremes,
K at the tile-period boundary, requantization (every shift, the largest and smallest
accumulators a configuration reaches, rounding ties, zero points, ReLU), shape errors;
bit-exact against sw.numerics, every output written exactly once.

Every shape is generated to fit the configuration and asserted to fit: a generator that
produced a shape the buffers cannot hold fails instead of skipping it."""

import numpy as np
import pytest
import cocotb

from hw.simulate import run_cocotb, tb_params
from sw import numerics
from sw.numerics import Requant, REQUANT_MULT_BITS
from sw.protocol import ErrorCode
from core_tb import CoreTB

CONFIGS = {
    "4x4": dict(rows=4, cols=4, a_depth=256, w_depth=128, out_words=256),
    "2x8": dict(rows=2, cols=8, a_depth=128, w_depth=64, out_words=128),
    "1x1": dict(rows=1, cols=1, a_depth=64, w_depth=64, out_words=64),
}

MAX_MULT = (1 << REQUANT_MULT_BITS) - 1
#: nonzero zero points with their ReLU setting; none is -128, whose lower clamp would hide a
#: result that is one too small
ZP_RELU = ((5, False), (-3, True), (100, False), (-100, True))


def directed_k(tile_period_min: int, max_k: int) -> list[int]:
    """K just below, at and just above the core's tile period, if the configuration holds it."""
    ks = [tile_period_min - 1, tile_period_min, tile_period_min + 1]
    return ks if ks[-1] <= max_k else []


def _top_only():
    from hw.netlist import vpi_top_only
    vlt, args = vpi_top_only("core")
    return {"extra_sources": vlt, "build_args": args}


#: cocotb sees the core's own signals (ports, the epilogue's e4_v / e4_idx the testbench
#: monitors, the registers the x-init probe reads), not those of its PEs: with every PE's
#: signals public the C++ was several times larger and slower to compile
TOP_ONLY = _top_only()


def core_and_params(name):
    from hw.systolic.core import MpGemmCore
    cfg = CONFIGS[name]
    core = MpGemmCore(**cfg)
    return core, dict(cfg, max_k=core.max_k, read_latency=core.READ_LATENCY,
                      tile_period_min=core.TILE_PERIOD_MIN, acc_width=core.acc_width,
                      directed_k=directed_k(core.TILE_PERIOD_MIN, core.max_k))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_core(name):
    core, params = core_and_params(name)
    run_cocotb(core, name="core", test_module="test_core", params=params, **TOP_ONLY)


def test_tile_period_boundary_covered():
    """The directed K values around TILE_PERIOD_MIN run on some configuration (here: all)."""
    covered = []
    for name in CONFIGS:
        core, params = core_and_params(name)
        core._MustUse__silence = True
        if params["directed_k"]:
            covered.append(name)
    assert covered == list(CONFIGS), f"tile-period boundary K runs only on {covered}"


# -- shape generation ------------------------------------------------------------------------

def _fits(cfg, M, K, N, raw):
    mt, nt = -(-M // cfg["rows"]), -(-N // cfg["cols"])
    cap = cfg["out_words"] * (1 if raw else 4)
    return (1 <= K <= cfg["max_k"] and M >= 1 and N >= 1 and mt * K <= cfg["a_depth"]
            and nt * K <= cfg["w_depth"] and M * N <= cap)


def _limits(cfg, K, raw):
    """(largest M, largest N, output capacity in elements) for this K."""
    assert 1 <= K <= cfg["max_k"], K
    return (cfg["rows"] * (cfg["a_depth"] // K), cfg["cols"] * (cfg["w_depth"] // K),
            cfg["out_words"] * (1 if raw else 4))


def _shape(cfg, K, m_want, n_want, raw):
    """The shape nearest to ``m_want x K x n_want`` that the buffers hold (asserted)."""
    m_max, n_max, cap = _limits(cfg, K, raw)
    M = max(1, min(m_want, m_max, cap))
    N = max(1, min(n_want, n_max, cap // M))
    assert _fits(cfg, M, K, N, raw), (M, K, N)
    return M, K, N


def _rand_shape(rng, cfg, m_hi, k_hi, n_hi, raw):
    """A random shape with M <= m_hi, K <= k_hi, N <= n_hi that fits by construction."""
    K = int(rng.integers(1, min(k_hi, cfg["max_k"]) + 1))
    m_max, n_max, cap = _limits(cfg, K, raw)
    M = int(rng.integers(1, min(m_hi, m_max, cap) + 1))
    N = int(rng.integers(1, min(n_hi, n_max, cap // M) + 1))
    assert _fits(cfg, M, K, N, raw), (M, K, N)
    return M, K, N


def _rand(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


async def _check(tb, a, w, rq=None):
    got, cnt = await tb.gemm(a, w, rq)
    want = numerics.mpgemm(a, w, rq)
    np.testing.assert_array_equal(got, want, strict=True)
    M, K = a.shape
    assert cnt["macs"] == M * K * w.shape[1], cnt
    assert cnt["busy"] == -(-M // tb.rows) * -(-w.shape[1] // tb.cols) * K, cnt
    return cnt


async def _sweep_requant(tb, a, w, rqs):
    """Load a and w once, then run and check every Requant in ``rqs`` on them."""
    await tb.load(a, w)
    M, K = a.shape
    N = w.shape[1]
    for rq in rqs:
        got, _ = await tb.compute(M, K, N, rq)
        np.testing.assert_array_equal(got, numerics.mpgemm(a, w, rq), strict=True,
                                      err_msg=f"{M}x{K}x{N} {rq}")
    return len(rqs)


# -- tests -----------------------------------------------------------------------------------

@cocotb.test()
async def shapes_raw(dut):
    """1x1x1, sizes around the array edges, random shapes; RAW32 output."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(2)
    R, C = cfg["rows"], cfg["cols"]
    shapes = [(1, 1, 1), (R, 1, C), (R + 1, 3, C + 1), (1, 7, 2 * C - 1), (2 * R - 1, 5, 1)]
    for s in shapes:
        assert _fits(cfg, *s, raw=True), s
    shapes += [_rand_shape(rng, cfg, 4 * R + 1, 39, 4 * C + 1, raw=True) for _ in range(9)]
    for M, K, N in shapes:
        await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)))


@cocotb.test()
async def tile_period_boundary(dut):
    """K = TILE_PERIOD_MIN - 1, TILE_PERIOD_MIN, TILE_PERIOD_MIN + 1 (stall-padded tiles vs
    back-to-back tiles), several tiles each way where the buffers allow, RAW32 and INT8."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(6)
    R, C, tpm = cfg["rows"], cfg["cols"], cfg["tile_period_min"]
    ks = cfg["directed_k"]
    assert ks == directed_k(tpm, cfg["max_k"])
    ran = []
    for K in ks:
        for raw, rq in ((True, None), (False, Requant(40503, 22, -3))):
            M, _, N = _shape(cfg, K, 2 * R + 1, 2 * C + 1, raw)
            assert -(-M // R) * -(-N // C) >= 2, (M, K, N)      # tiles follow each other
            await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)), rq)
            ran.append(K)
    assert sorted(set(ran)) == sorted(ks) and len(ran) == 2 * len(ks), ran


@cocotb.test()
async def extremes(dut):
    """-128 x -128 summed max_k times (largest accumulator), mixed extremes, zeros."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    K = cfg["max_k"]
    M, _, N = _shape(cfg, K, cfg["rows"], cfg["cols"], raw=True)
    for av, wv in ((-128, -128), (-128, 127), (127, 127), (0, -128)):
        a = np.full((M, K), av, dtype=np.int8)
        w = np.full((K, N), wv, dtype=np.int8)
        await _check(tb, a, w)


@cocotb.test()
async def requant(dut):
    """INT8 epilogue: random dyadic scales, zero points, ReLU, shift 0, saturation both ways."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(3)
    rqs = [Requant(1, 0), Requant(65535, 0), Requant(65535, 63, -127), Requant(1 << 15, 20, 5, True),
           Requant(12345, 17, -3, False), Requant(0, 5, 7)]
    rqs += [Requant(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 30)),
                    int(rng.integers(-128, 128)), bool(rng.integers(0, 2))) for _ in range(6)]
    for rq in rqs:
        M, K, N = _rand_shape(rng, cfg, 3 * cfg["rows"], 29, 3 * cfg["cols"], raw=False)
        await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)), rq)


#: K = 4 operands with acc[m, n] = base[m] + offset[n]: a_m = [x, s1, s2, 1],
#: w_n = [1, -128, -128, offset], base = x - 128 * (s1 + s2)
#: (ties of round-half-up with multiplier 1: -1, +-2, -4, -128, -6144, +-16384)
GRID_BASES = (0, -3, -129, -1000, -6144, -16384, -32576, 16384)
GRID_OFFSETS = (0, -1, 1, -2, 2, -128, 127)


def _grid_row(base):
    x = (base + 64) % 128 - 64
    s = (x - base) // 128
    s1 = max(-128, min(127, s))
    row = [x, s1, s - s1, 1]
    assert all(-128 <= v <= 127 for v in row) and x - 128 * (s1 + row[2]) == base, base
    return row


def _grid_operands(rng):
    offsets = list(GRID_OFFSETS) + [int(rng.integers(-128, 128))]
    a = np.array([_grid_row(b) for b in GRID_BASES], dtype=np.int8)
    w = np.array([[1, -128, -128, u] for u in offsets], dtype=np.int8).T
    # the construction does what it says (the expected results still come from sw.numerics)
    acc = numerics.gemm(a, w)
    assert (acc == np.add.outer(GRID_BASES, offsets)).all()
    return a, w


@cocotb.test()
async def requant_every_shift(dut):
    """Every shift 0..63 with zero point 0 at multipliers 1 and 65535, and every other shift
    with a random multiplier, a nonzero zero point, ReLU on or off; 8 x 8 accumulators from
    -32704 to 16511 around chosen bases (small negatives, rounding ties)."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(7)
    a, w = _grid_operands(rng)
    M, K, N = a.shape[0], a.shape[1], w.shape[1]
    assert _fits(cfg, M, K, N, raw=False), (M, K, N)
    rqs = [Requant(m, s) for s in range(64) for m in (1, MAX_MULT)]
    for s in range(0, 64, 2):
        zp, relu = ZP_RELU[(s // 2) % len(ZP_RELU)]
        rqs.append(Requant(int(rng.integers(1, MAX_MULT + 1)), s, zp, relu))
    assert await _sweep_requant(tb, a, w, rqs) == 128 + 32


def _extreme_pairs(K, rng):
    """(a row, w column, the accumulator it gives) at K = max_k: the extremes, and products of
    +-16384 cancelling to small values (the accumulator swings through its range first)."""
    def full(v):
        return [v] * K

    def mix(parts):
        a, w = [], []
        for av, wv, n in parts:
            a += [av] * n
            w += [wv] * n
        return a + [0] * (K - len(a)), w + [0] * (K - len(w))

    h = (K - 1) // 3
    pairs = [(full(-128), full(-128), 16384 * K),         # the largest accumulator
             (full(-128), full(127), -16256 * K),         # the most negative one
             (full(127), full(127), 16129 * K),
             (*mix([(-128, -128, h), (-128, 127, h), (-128, 1, h), (-1, 1, 1)]), -1),
             (*mix([(-128, 127, h), (-128, -128, h), (-128, 1, h), (-1, 1, 1)]), -1),
             (*mix([(127, -128, h), (-128, -128, h), (-128, 1, h), (-2, 1, 1)]), -2),
             (*mix([(-128, -128, h), (-128, 127, h), (-128, 1, h), (1, 1, 1)]), 1),
             ([0] * (K - 1) + [-1], [0] * (K - 1) + [1], -1),
             ([int(v) for v in rng.integers(-128, 128, K)], [int(v) for v in rng.integers(-128, 128, K)], None)]
    out = []
    for a, w, want in pairs:
        assert len(a) == len(w) == K
        if want is not None:      # the construction does what it says
            assert sum(x * y for x, y in zip(a, w)) == want, (want, a[:4], w[:4])
        out.append((a, w))
    return out


@cocotb.test()
async def requant_extremes(dut):
    """K = max_k: the largest and the most negative accumulators of the configuration and
    large products cancelling to -1, -2, 1; every shift at multipliers 65535 and 1 with zero
    point 0, and around the accumulator / product widths with nonzero zero points, ReLU on
    and off."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(8)
    K, aw = cfg["max_k"], cfg["acc_width"]
    prod_w = aw + REQUANT_MULT_BITS + 1
    key_shifts = sorted({0, 1, 2, 15, 16, 17, aw - 1, aw, aw + 1, prod_w - 2, prod_w - 1,
                         prod_w, prod_w + 1, 62, 63})
    assert max(key_shifts) == 63 and min(key_shifts) == 0
    rqs = [Requant(m, s) for s in range(64) for m in (MAX_MULT, 1)]
    for j, s in enumerate(key_shifts):
        for t, m in enumerate((1, MAX_MULT)):
            zp, relu = ZP_RELU[(2 * j + t) % len(ZP_RELU)]
            rqs.append(Requant(m, s, zp, relu))
    pairs = _extreme_pairs(K, rng)
    m_max, n_max, cap = _limits(cfg, K, raw=False)
    g = min(m_max, n_max, int(cap ** 0.5))
    assert g >= 1
    runs = 0
    for i in range(0, len(pairs), g):
        grp = pairs[i:i + g]
        a = np.array([p[0] for p in grp], dtype=np.int8)
        w = np.array([p[1] for p in grp], dtype=np.int8).T
        assert _fits(cfg, a.shape[0], K, w.shape[1], raw=False)
        runs += await _sweep_requant(tb, a, w, rqs)
    assert runs == len(rqs) * -(-len(pairs) // g)


@cocotb.test()
async def buffer_filling(dut):
    """The largest shapes the buffers hold: full K, and full M x N output."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(4)
    R, C = cfg["rows"], cfg["cols"]
    K = cfg["max_k"]
    M = R * (cfg["a_depth"] // K)
    N = min(C * (cfg["w_depth"] // K), cfg["out_words"] // M) or 1
    assert _fits(cfg, M, K, N, raw=True), (M, K, N)
    await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)))
    # full INT8 output buffer with a short K
    K = 2
    M = min(R * (cfg["a_depth"] // K), 4 * cfg["out_words"] // C)
    N = min(C * (cfg["w_depth"] // K), (4 * cfg["out_words"]) // M)
    assert _fits(cfg, M, K, N, raw=False), (M, K, N)
    await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)), Requant(1, 2))


@cocotb.test()
async def bad_shapes(dut):
    """Shapes that do not fit are refused with BAD_SHAPE; the core then still works."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    R, C = cfg["rows"], cfg["cols"]
    bad = [(0, 1, 1), (1, 0, 1), (1, 1, 0), (1, cfg["max_k"] + 1, 1),
           (R * cfg["a_depth"] + 1, 1, 1), (1, 1, C * cfg["w_depth"] + 1),
           (cfg["out_words"] + 1, 1, 1)]
    for M, K, N in bad:
        assert not _fits(cfg, M, K, N, raw=True), (M, K, N)
        err, _ = await tb.run(M, K, N, None, timeout=100)
        assert err == ErrorCode.BAD_SHAPE, (M, K, N, err)
        assert not tb.writes, "a refused GEMM wrote results"
    rng = np.random.default_rng(5)
    await _check(tb, _rand(rng, (R + 1, 3)), _rand(rng, (3, C)))
