"""mpGEMM core: random shapes (1x1x1, K/N not multiples of the array, buffer-filling), extremes,
requantization, shape errors; bit-exact against sw.numerics, every output written exactly once."""

import numpy as np
import pytest
import cocotb

from hw.simulate import run_cocotb, tb_params
from sw import numerics
from sw.numerics import Requant
from sw.protocol import ErrorCode
from core_tb import CoreTB

CONFIGS = {
    "4x4": dict(rows=4, cols=4, a_depth=256, w_depth=128, out_words=256),
    "2x8": dict(rows=2, cols=8, a_depth=128, w_depth=64, out_words=128),
    "1x1": dict(rows=1, cols=1, a_depth=64, w_depth=64, out_words=64),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_core(name):
    from hw.systolic.core import MpGemmCore
    cfg = CONFIGS[name]
    core = MpGemmCore(**cfg)
    run_cocotb(core, name="core", test_module="test_core", params=dict(cfg, max_k=core.max_k, read_latency=core.READ_LATENCY,
                                                                           tile_period_min=core.TILE_PERIOD_MIN))


def _fits(cfg, M, K, N, raw):
    mt, nt = -(-M // cfg["rows"]), -(-N // cfg["cols"])
    cap = cfg["out_words"] * (1 if raw else 4)
    return mt * K <= cfg["a_depth"] and nt * K <= cfg["w_depth"] and M * N <= cap


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


@cocotb.test()
async def shapes_raw(dut):
    """1x1x1, sizes around the array edges, random shapes; RAW32 output."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(2)
    R, C = cfg["rows"], cfg["cols"]
    shapes = [(1, 1, 1), (R, 1, C), (R + 1, 3, C + 1), (1, 7, 2 * C - 1), (2 * R - 1, 5, 1)]
    while len(shapes) < 14:
        M, K, N = (int(x) for x in rng.integers(1, [4 * R + 2, 40, 4 * C + 2]))
        if _fits(cfg, M, K, N, raw=True):
            shapes.append((M, K, N))
    for M, K, N in shapes:
        if _fits(cfg, M, K, N, raw=True):
            await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)))


@cocotb.test()
async def extremes(dut):
    """-128 x -128 summed max_k times (largest accumulator), mixed extremes, zeros."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    K = cfg["max_k"]
    M = min(cfg["rows"], cfg["a_depth"] // K) or 1
    N = min(cfg["cols"], cfg["w_depth"] // K, cfg["out_words"]) or 1
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
    rqs = [Requant(1, 0), Requant(65535, 0), Requant(65535, 63, -128), Requant(1 << 15, 20, 5, True),
           Requant(12345, 17, -3, False), Requant(0, 5, 7)]
    rqs += [Requant(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 30)),
                    int(rng.integers(-128, 128)), bool(rng.integers(0, 2))) for _ in range(6)]
    for rq in rqs:
        M, K, N = (int(x) for x in rng.integers(1, [3 * cfg["rows"] + 1, 30, 3 * cfg["cols"] + 1]))
        if _fits(cfg, M, K, N, raw=False):
            await _check(tb, _rand(rng, (M, K)), _rand(rng, (K, N)), rq)


@cocotb.test()
async def buffer_filling(dut):
    """The largest shapes the buffers hold: full K, and full M x N output."""
    cfg = tb_params()
    tb = CoreTB(dut, cfg)
    await tb.reset()
    rng = np.random.default_rng(4)
    R, C = cfg["rows"], cfg["cols"]
    K = cfg["max_k"]
    await _check(tb, _rand(rng, (R * (cfg["a_depth"] // K), K)),
                 _rand(rng, (K, min(C * (cfg["w_depth"] // K), cfg["out_words"] // (R * (cfg["a_depth"] // K)) or 1))))
    # full INT8 output buffer with a short K
    K = 2
    M = min(R * (cfg["a_depth"] // K), 4 * cfg["out_words"] // C)
    N = min(C * (cfg["w_depth"] // K), (4 * cfg["out_words"]) // M)
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
        err, _ = await tb.run(M, K, N, None, timeout=100)
        assert err == ErrorCode.BAD_SHAPE, (M, K, N, err)
        assert not tb.writes, "a refused GEMM wrote results"
    rng = np.random.default_rng(5)
    await _check(tb, _rand(rng, (R + 1, 3)), _rand(rng, (3, C)))
