"""MixCore's second engine, the N:M sparse DSP chains (hw.dsp.chain.SparseDSPChain), run as
layers of the core: every pattern the engine has x ragged shapes (M and N not multiples of
the array, K not a multiple of the window), packed 4-bit weights (L = 8 unpacked beside the
MixPE array on 4 rows, whose A banks fit only the dense, 2:4 and 4:8 windows, and L = 8
packed on 8 rows, every pattern), the patterns an engine lacks refused, empty and all-dense
blocks, extremes, per-channel and scalar requantization and RAW32, weight records at an
offset, array layers between DSP layers (shared buffers and epilogue), configuration errors,
and the dense-equivalent MAC counter; bit-exact against sw.numerics.sparse_gemm and the
requantization golden models, and nothing written outside the result."""

import numpy as np
import pytest
import cocotb

from hw.simulate import run_cocotb
from sw import layout, numerics
from sw.numerics import (WeightFormat, NMPattern, NMSparse, OutMode, Requant, weight_range)
from sw.protocol import Buffer, ErrorCode
from mixcore_tb import MixCoreTB, check_write_ring
from test_mixcore import (random_requant, fits as array_fits, CONFIGS as MIXCORE_CONFIGS,
                          _top_only, boundary_dims)

CONFIGS = {
    # dsp8p first: by the time dsp8-4x4 runs, test_mixcore.py (scheduled earlier) has
    # usually built the shared model, so this worker does not wait on its lock
    # L = 8 with two 4-bit weights per DSP (one chain carrying both columns), 8 rows
    "dsp8p-8x2": dict(rows=8, cols=2, a_depth=32, w_depth=32, out_depth=32, chan_depth=16,
                      group_depth=16, pe="int8-dsp", dsp_stages=8, dsp_packed=True,
                      dsp_depth=32),
    # the MixPE array with L = 8 on 4 rows (the 85F `--dsp dsp8 --rows 4` build, smaller):
    # windows of 16 activations, so dense, 2:4 and 4:8 only, the other patterns refused;
    # the very model of sim/test_mixcore.py's "mixpe-4x4", built once for both files
    "dsp8-4x4": MIXCORE_CONFIGS["mixpe-4x4"],
}


def core_and_params(name):
    from hw.core import MixCore, LAYER_LAYOUT
    cfg = CONFIGS[name]
    core = MixCore(**cfg)
    fields = {n: (f.offset, f.width) for n, f in LAYER_LAYOUT}
    return core, dict(cfg, dsp_packed=core.dsp_packed, dsp_share=core.dsp_share,
                      group=core.dsp_share * (2 if core.dsp_packed else 1), max_k=core.max_k,
                      read_latency=core.READ_LATENCY, out_bytes=core.out_bytes,
                      host_write_latency=core.HOST_WRITE_LATENCY,
                      checked_out_bytes=core.out_bytes, cfg_fields=fields,
                      patterns=[int(p) for p in core.dsp_patterns], watchdog=core.WATCHDOG,
                      min_period=core.MIN_PERIOD, chains=core.dsp_chains)


def test_mixcore_dsp_params():
    """The engine's patterns per L, and parameters that cannot work are refused."""
    from hw.core import MixCore
    for name in CONFIGS:
        core, _ = core_and_params(name)
        want = [p for p in NMPattern if p.m <= 8 and core.dsp_stages % p.n == 0
                and layout.dsp_window(stages=core.dsp_stages, pattern=p) <= 4 * core.rows]
        assert list(core.dsp_patterns) == want
        assert core.dsp_bytes == 16 * core.dsp_ch_pow2 * core.dsp_depth
    # 8 stages on 4 rows: the A banks give 16 bytes per cycle, 1:4 and 2:8 need 32
    assert MixCore(rows=4, cols=4, pe="int8-dsp", dsp_stages=8).dsp_patterns == (
        NMPattern.DENSE4, NMPattern.DENSE8, NMPattern.NM4_8, NMPattern.NM2_4)
    assert MixCore(rows=8, cols=4, pe="int8-dsp", dsp_stages=8).dsp_patterns == tuple(NMPattern)
    with pytest.raises(ValueError, match="A banks"):
        MixCore(rows=1, cols=4, pe="int8-dsp", dsp_stages=8)         # even dense needs 8
    with pytest.raises(ValueError, match="dsp_stages"):
        MixCore(rows=8, cols=4, pe="int8-dsp", dsp_stages=6)
    with pytest.raises(ValueError, match="cols >= 2"):
        MixCore(rows=4, cols=1, pe="int8-dsp", dsp_stages=4, dsp_packed=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixcore_dsp(name):
    core, params = core_and_params(name)
    run_cocotb(core, name="mixcore", test_module="test_mixcore_dsp", params=params,
               **_top_only())


# -- cocotb side ------------------------------------------------------------------------------

def fmts(p):
    return ([WeightFormat.INT4, WeightFormat.INT2, WeightFormat.TERNARY] if p["dsp_packed"]
            else [WeightFormat.INT8, WeightFormat.INT4, WeightFormat.TERNARY])


def random_sparse(rng, pat, K, N, fmt, group, kind="random"):
    """N:M weights: random kept positions, shared by the ``group`` columns of each index
    group (2: packed pairs; ``dsp_share * lanes``), random or extreme values;
    ``kind="empty"`` zeros every value, ``"dense"`` keeps nonzero values."""
    n, m = pat.n, pat.m
    nb = K // m
    lo, hi = weight_range(fmt)
    shared = -(-N // group)
    pos = np.stack([np.stack([rng.permutation(m)[:n] for _ in range(shared)], axis=1)
                    for _ in range(nb)])                     # (nb, n, shared)
    pos = np.repeat(pos, group, axis=2)[:, :, :N]
    idx = pos.reshape(nb * n, N)
    if kind == "min":
        vals = np.full((nb * n, N), lo)
    elif kind == "max":
        vals = np.full((nb * n, N), hi)
    elif kind == "empty":
        vals = np.zeros((nb * n, N), dtype=np.int64)
    else:
        vals = rng.integers(lo, hi + 1, size=(nb * n, N))
        if kind == "dense":
            vals[vals == 0] = hi
    return NMSparse(n=n, m=m, values=vals, idx=idx, fmt=fmt)


def fits(p, pat, M, K, N, w_base=0):
    S = layout.dsp_steps(K, stages=p["dsp_stages"], pattern=pat)
    return (K <= p["max_k"] and M * S <= p["a_depth"]
            and -(-N // p["cols"]) * S + w_base <= p["dsp_depth"]
            and -(-M // p["rows"]) * N <= 4 * p["out_depth"] and N <= p["chan_depth"])


def random_shape(rng, p, pat):
    for _ in range(1000):
        M = int(rng.integers(1, 3 * p["rows"] + 2))
        N = int(rng.integers(1, 3 * p["cols"] + 2))
        K = pat.m * int(rng.integers(1, 40))
        if fits(p, pat, M, K, N):
            return M, K, N
    raise AssertionError(f"no random shape fits {pat.name}")


async def check(tb, a, sp, *, requant=None, w_base=0, w_last=False):
    res, cnt, _ = await tb.run_dsp_layer(a, sp, fmt=sp.fmt, requant=requant, w_base=w_base,
                                         w_last=w_last)
    acc = numerics.sparse_gemm(a, sp)
    if requant is None:
        # RAW32 words come back as int32: the golden sums must fit them (no wrap to hide)
        assert np.abs(acc).max() < 1 << 31
        want = acc.astype(np.int32)
    elif isinstance(requant, numerics.ChannelRequant):
        want = numerics.requantize_channels(acc, requant)
    else:
        want = numerics.requantize(acc, requant)
    M, K = a.shape
    np.testing.assert_array_equal(res, want, strict=True,
                                  err_msg=f"{M}x{K}x{sp.ncols} {sp.pattern.name} {sp.fmt.name}")
    assert cnt["macs"] == M * K * sp.ncols, cnt
    return cnt


@cocotb.test()
async def patterns_shapes(dut):
    """Every pattern x the engine's formats x random ragged shapes; per-channel INT8 and
    RAW32; records at an offset."""
    tb = MixCoreTB(dut, tb_params())
    await tb.reset()
    p = tb.p
    rng = np.random.default_rng(10)
    for pat in map(NMPattern, p["patterns"]):
        for fmt in fmts(p):
            M, K, N = random_shape(rng, p, pat)
            a = rng.integers(-128, 128, size=(M, K))
            sp = random_sparse(rng, pat, K, N, fmt, p["group"])
            acc_bound = int(np.abs(numerics.sparse_gemm(a, sp)).max()) + 1
            await check(tb, a, sp, requant=random_requant(rng, N, acc_bound))
        M, K, N = random_shape(rng, p, pat)
        a = rng.integers(-128, 128, size=(M, K))
        sp = random_sparse(rng, pat, K, N, fmts(p)[0], p["group"])
        await check(tb, a, sp)                                    # RAW32
        S = layout.dsp_steps(K, stages=p["dsp_stages"], pattern=pat)
        base = p["dsp_depth"] - -(-N // p["cols"]) * S             # records end at the top
        await check(tb, a, sp, requant=Requant(1 << 14, 20, 3, False), w_base=base)


@cocotb.test()
async def tile_boundaries(dut):
    """Every M x N around one, two and three tiles (rows x cols) on the engine's first
    pattern, raw sums, one block of K (so the A banks hold three tiles of rows): the DSP
    rows' tile sequencing at each boundary."""
    tb = MixCoreTB(dut, tb_params())
    await tb.reset()
    p = tb.p
    rng = np.random.default_rng(12)
    pat = NMPattern(p["patterns"][0])
    K = pat.m
    for M in boundary_dims(p["rows"]):
        for N in boundary_dims(p["cols"]):
            assert fits(p, pat, M, K, N), (M, N)
            a = rng.integers(-128, 128, size=(M, K))
            await check(tb, a, random_sparse(rng, pat, K, N, fmts(p)[0], p["group"]))


@cocotb.test()
async def host_write_ring(dut):
    """The DSP engine's weight memories at the host-write ring's far end: ``bus_wbusy``
    covers a write to every chain (a weight and an index byte) for exactly
    ``HOST_WRITE_LATENCY`` cycles; a run started the cycle after every chain's first
    record is written computes with it, on every pattern."""
    tb = MixCoreTB(dut, tb_params())
    await tb.reset()
    p = tb.p
    ch = layout.dsp_chain_stride(p["chains"])
    await check_write_ring(tb, [(Buffer.DSPW, (ch + c) * 16 + b)
                                for c in range(p["chains"]) for b in (0, 9)])
    rng = np.random.default_rng(23)
    for pat in map(NMPattern, p["patterns"]):
        M, K, N = p["rows"] + 1, 2 * pat.m, p["cols"] + 1
        a = rng.integers(-128, 128, size=(M, K))
        await check(tb, a, random_sparse(rng, pat, K, N, fmts(p)[0], p["group"]), w_last=True)


@cocotb.test()
async def extremes_and_blocks(dut):
    """-128 activations against all-min / all-max weights at the largest K that fits, empty
    blocks (all zero) and all-dense blocks, zero activations."""
    tb = MixCoreTB(dut, tb_params())
    await tb.reset()
    p = tb.p
    rng = np.random.default_rng(11)
    for pat in map(NMPattern, p["patterns"]):
        fmt = fmts(p)[0]
        S_max = p["a_depth"] // p["rows"]
        wp = layout.dsp_window(stages=p["dsp_stages"], pattern=pat)
        K = min(S_max * wp, p["max_k"]) // pat.m * pat.m
        M, N = p["rows"], p["cols"] + 1
        assert fits(p, pat, M, K, N)
        a = np.full((M, K), -128)
        for kind in ("min", "max", "empty", "dense"):
            sp = random_sparse(rng, pat, K, N, fmt, p["group"], kind)
            await check(tb, a, sp)
        sp = random_sparse(rng, pat, K, N, fmt, p["group"])
        await check(tb, np.zeros((M, K), dtype=np.int64), sp)


@cocotb.test()
async def shared_with_array(dut):
    """Array layers and DSP layers in turn share A, OUT, CHAN and the edge units; the DSPW
    buffer reads back what was written."""
    tb = MixCoreTB(dut, tb_params())
    await tb.reset()
    p = tb.p
    rng = np.random.default_rng(12)
    pat = NMPattern.NM2_4
    for _ in range(2):
        while True:                                   # a shape both engines take
            M, K, N = random_shape(rng, p, pat)
            if array_fits(p, M, K, N, WeightFormat.INT8, None):
                break
        a = rng.integers(-128, 128, size=(M, K))
        q = rng.integers(-128, 128, size=(K, N))
        res, _ = await tb.run_layer(a, q, fmt=WeightFormat.INT8)
        np.testing.assert_array_equal(res, numerics.mixgemm(a, q), strict=True)
        sp = random_sparse(rng, pat, K, N, fmts(p)[0], p["group"])
        _, _, img = await tb.run_dsp_layer(a, sp, fmt=sp.fmt)
        assert await tb.read(8, len(img)) == img
        await check(tb, a, sp, requant=random_requant(rng, N, 1 << 20))


@cocotb.test()
async def errors(dut):
    """DSP layers the engine cannot run are BAD_SHAPE at the core (the link refuses them
    as BAD_PARAM before), and the next good layer runs."""
    tb = MixCoreTB(dut, tb_params())
    await tb.reset()
    p = tb.p
    have = set(p["patterns"])
    missing = [pt for pt in NMPattern if int(pt) not in have]
    good = dict(m=4, k=16, n=4, fmt=int(fmts(p)[0]), sparse=1 + int(NMPattern.NM2_4))
    bad = [dict(good, group=1),                                  # groups: array only
           dict(good, fmt=int(WeightFormat.POW2)),
           dict(good, m=p["a_depth"] + 1),                       # A words
           dict(good, sparse=7)]                                 # no such pattern
    bad += [dict(good, sparse=1 + int(pt)) for pt in missing]
    if p["dsp_packed"]:
        bad.append(dict(good, fmt=int(WeightFormat.INT8)))
    for fields in bad:
        await tb.run_expect_error(ErrorCode.BAD_SHAPE, **fields)
    rng = np.random.default_rng(13)
    a = rng.integers(-128, 128, size=(5, 16))
    await check(tb, a, random_sparse(rng, NMPattern.NM2_4, 16, 5, fmts(p)[0], p["group"]))


from hw.simulate import tb_params  # noqa: E402  (cocotb side reads the runner's params)
