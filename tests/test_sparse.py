"""N:M sparsity and DSP packing on the host: sw.numerics.NMSparse (every validation error),
sparse_gemm against the dense GEMM of to_dense and a Python-integer loop, sw.quant.prune_nm /
compress_nm properties, and dsp_pack2 / dsp_unpack2 exhaustively against integer products,
with both ends of dsp_pack_bounds shown to be tight."""

import itertools

import numpy as np
import pytest

from sw import numerics, quant
from sw.numerics import NMPattern, NMSparse, WeightFormat as F

SPARSE_FORMATS = (F.INT8, F.INT4, F.INT2, F.TERNARY)


def random_nm(rng, blocks, ncols, n, m, fmt=F.INT8):
    lo, hi = numerics.weight_range(fmt)
    vals = rng.integers(lo, hi + 1, (blocks * n, ncols))
    idx = np.stack([np.concatenate([rng.permutation(m)[:n] for _ in range(blocks)])
                    for _ in range(ncols)], axis=1)
    return NMSparse(n, m, vals, idx, fmt)


# -- NMSparse ---------------------------------------------------------------------------------

def _ok():
    return dict(n=2, m=4, values=np.array([[1, -2], [3, 0]]), idx=np.array([[0, 3], [2, 1]]))


def test_valid_and_properties():
    sp = NMSparse(**_ok())
    assert (sp.n, sp.m, sp.blocks, sp.k, sp.ncols, sp.fmt) == (2, 4, 1, 4, 2, F.INT8)
    assert sp.pattern is NMPattern.NM2_4
    assert sp.values.dtype == np.int64 and not sp.values.flags.writeable
    with pytest.raises(ValueError):
        sp.idx[0, 0] = 1
    src = np.array([[1, -2], [3, 0]])
    sp = NMSparse(2, 4, src, np.array([[0, 3], [2, 1]]))
    src[0, 0] = 99                               # a copy was stored
    assert sp.values[0, 0] == 1


@pytest.mark.parametrize("change, exc, msg", [
    (dict(m=3), ValueError, r"m \(the block size\) must be one of \(4, 8\), not 3"),
    (dict(m=16), ValueError, "not 16"),
    (dict(m=True), ValueError, "not True"),
    (dict(n=0), ValueError, r"n \(weights kept per block of 4\) must be an integer in \[1, 4\], not 0"),
    (dict(n=5), ValueError, "not 5"),
    (dict(n=2.0), ValueError, "not 2.0"),
    (dict(fmt=F.POW2), ValueError, "cannot be POW2"),
    (dict(fmt=9), ValueError, "unknown weight format 9"),
    (dict(values=np.array([[1.0, 2.0], [3.0, 0.0]])), TypeError, "values must have an integer dtype"),
    (dict(idx=np.array([[0.0, 3.0], [2.0, 1.0]])), TypeError, "idx must have an integer dtype"),
    (dict(values=np.array([1, 2]), idx=np.array([0, 1])), ValueError, r"must be 2-D"),
    (dict(idx=np.array([[0, 3]])), ValueError, r"same shape; got \(2, 2\) and \(1, 2\)"),
    (dict(values=np.zeros((0, 2), dtype=int), idx=np.zeros((0, 2), dtype=int)), ValueError,
     "must not be empty"),
    (dict(values=np.array([[1, 2], [3, 4], [5, 6]]), idx=np.array([[0, 1], [1, 2], [2, 3]])),
     ValueError, "3 rows, not a multiple of n = 2: K must be a multiple of m = 4"),
    (dict(values=np.array([[1, -2], [3, 8]]), fmt=F.INT4), ValueError,
     r"INT4 values must lie in \[-8, 7\]; found \[-2, 8\]"),
    (dict(values=np.array([[1, -2], [3, 0]]), fmt=F.TERNARY), ValueError,
     r"TERNARY values must lie in \[-1, 1\]"),
    (dict(values=np.array([[1, -2], [3, 128]])), ValueError, r"INT8 values must lie in \[-128, 127\]"),
    (dict(idx=np.array([[0, 3], [4, 1]])), ValueError, r"idx must lie in \[0, 4\); idx\[1, 0\] = 4"),
    (dict(idx=np.array([[0, -1], [2, 1]])), ValueError, r"idx\[0, 1\] = -1"),
    (dict(idx=np.array([[0, 3], [2, 3]])), ValueError,
     r"duplicate index within block 0 \(rows 0..1\) of column 1: \[3, 3\]"),
])
def test_validation_errors(change, exc, msg):
    kw = {**_ok(), **change}
    with pytest.raises(exc, match=msg):
        NMSparse(**kw)


def test_duplicate_in_later_block():
    sp = dict(n=2, m=8, values=np.zeros((4, 1), dtype=int), idx=np.array([[0], [7], [5], [5]]))
    with pytest.raises(ValueError, match=r"block 1 \(rows 2..3\) of column 0: \[5, 5\]"):
        NMSparse(**sp)


def test_patterns():
    assert {(p.n, p.m) for p in NMPattern} == {(4, 4), (8, 8), (4, 8), (2, 4), (1, 4), (2, 8)}
    for p in NMPattern:
        assert numerics.nm_pattern(p.n, p.m) is p
    with pytest.raises(ValueError, match="3:8 is not a hardware N:M pattern"):
        numerics.nm_pattern(3, 8)
    # any n:m is a valid compressed format; only the hardware pattern is refused
    sp = NMSparse(3, 8, np.zeros((3, 1), dtype=int), np.array([[0], [1], [2]]))
    with pytest.raises(ValueError, match="not a hardware"):
        sp.pattern


# -- sparse_gemm, to_dense --------------------------------------------------------------------

def _loop_reference(a, sp):
    """out[r, c] = sum_b sum_j values[b*n+j, c] * a[r, b*m + idx[b*n+j, c]], Python ints."""
    out = [[0] * sp.ncols for _ in range(a.shape[0])]
    for r in range(a.shape[0]):
        for c in range(sp.ncols):
            for b in range(sp.blocks):
                for j in range(sp.n):
                    row = b * sp.m + int(sp.idx[b * sp.n + j, c])
                    out[r][c] += int(sp.values[b * sp.n + j, c]) * int(a[r, row])
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
@pytest.mark.parametrize("n, m", [(4, 4), (8, 8), (4, 8), (2, 4), (1, 4), (2, 8), (3, 8)])
def test_sparse_gemm_vs_dense(n, m, fmt):
    rng = np.random.default_rng(n * 10 + m + int(fmt))
    sp = random_nm(rng, 5, 3, n, m, fmt)
    a = rng.integers(-128, 128, (4, sp.k))
    got = numerics.sparse_gemm(a, sp)
    dense = numerics.to_dense(sp)
    assert dense.shape == (5 * m, 3)
    # exactly the kept weights, at their rows; everything else zero
    assert (np.count_nonzero(dense, axis=0) == np.count_nonzero(sp.values, axis=0)).all()
    np.testing.assert_array_equal(got, numerics.gemm(a, dense), strict=True)
    np.testing.assert_array_equal(got, _loop_reference(a, sp), strict=True)


def test_to_dense_places_each_weight():
    sp = NMSparse(2, 4, np.array([[5, -1], [7, 2], [0, 3], [-8, 4]]),
                  np.array([[3, 0], [1, 2], [0, 3], [2, 1]]))
    want = np.zeros((8, 2), dtype=np.int64)
    want[[3, 1, 4, 6], 0] = [5, 7, 0, -8]
    want[[0, 2, 7, 5], 1] = [-1, 2, 3, 4]
    np.testing.assert_array_equal(numerics.to_dense(sp), want, strict=True)


def test_sparse_gemm_extremes_and_empty():
    k = 8192
    sp = NMSparse(4, 8, np.full((k // 2, 1), -128), np.tile(np.arange(4), k // 8)[:, None])
    a = np.full((1, k), -128)
    assert numerics.sparse_gemm(a, sp)[0, 0] == (k // 2) * 16384
    empty = NMSparse(2, 4, np.zeros((4, 2), dtype=int), np.tile([[0], [1]], (2, 2)))
    np.testing.assert_array_equal(numerics.sparse_gemm(np.full((3, 8), 127), empty),
                                  np.zeros((3, 2), dtype=np.int64), strict=True)


def test_sparse_gemm_errors():
    sp = NMSparse(**_ok())
    with pytest.raises(ValueError, match=r"K = 4 .* got shape \(2, 8\)"):
        numerics.sparse_gemm(np.zeros((2, 8), dtype=int), sp)
    with pytest.raises(ValueError, match=r"a values must lie in \[-128, 127\]"):
        numerics.sparse_gemm(np.full((1, 4), 128), sp)
    with pytest.raises(TypeError, match="needs an NMSparse"):
        numerics.sparse_gemm(np.zeros((1, 4), dtype=int), numerics.to_dense(sp))
    with pytest.raises(TypeError, match="needs an NMSparse"):
        numerics.to_dense(np.zeros((4, 2)))


# -- pruning ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (2, 8), (4, 8), (4, 4), (3, 8)])
def test_prune_nm_properties(n, m):
    rng = np.random.default_rng(n + m)
    w = rng.normal(size=(6 * m, 5))
    mask = quant.prune_nm(w, n, m)
    assert mask.dtype == bool and mask.shape == w.shape
    blocks = mask.reshape(6, m, 5)
    assert (blocks.sum(axis=1) == n).all()
    mag = np.abs(w).reshape(6, m, 5)
    kept = np.where(blocks, mag, np.inf).min(axis=1)
    dropped = np.where(blocks, -np.inf, mag).max(axis=1)
    assert (kept >= dropped).all()               # the largest magnitudes are kept


def test_prune_nm_ties_keep_lower_rows():
    w = np.array([[1.0], [-1.0], [1.0], [0.5], [2.0], [2.0], [-2.0], [2.0]])
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 4)[:, 0],
                                  [True, True, False, False, True, True, False, False])


def test_prune_nm_pair_columns():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(32, 6))
    w[:, 1] *= 10                   # column 1 dominates its pair's choice
    mask = quant.prune_nm(w, 2, 8, pair_columns=True)
    np.testing.assert_array_equal(mask[:, 0::2], mask[:, 1::2], strict=True)
    assert (mask.reshape(4, 8, 6).sum(axis=1) == 2).all()
    for c in range(3):
        np.testing.assert_array_equal(
            mask[:, 2 * c], quant.prune_nm(np.abs(w[:, 2 * c:2 * c + 2]).sum(axis=1, keepdims=True),
                                           2, 8)[:, 0])
    # the paired mask feeds a packed compression: both columns share their indices
    q = np.clip(np.round(w), -8, 7).astype(np.int64)
    sp = quant.compress_nm(q, mask, n=2, m=8, fmt=F.INT4)
    np.testing.assert_array_equal(sp.idx[:, 0::2], sp.idx[:, 1::2], strict=True)


@pytest.mark.parametrize("args, kw, exc, msg", [
    ((np.zeros((10, 2)), 2, 4), {}, ValueError,
     r"K = 10 is not a multiple of the block size m = 4; pad K with zero rows to 12"),
    ((np.zeros((8, 2)), 2, 6), {}, ValueError, r"m \(the block size\) must be one of"),
    ((np.zeros((8, 2)), 0, 4), {}, ValueError, r"must be an integer in \[1, 4\], not 0"),
    ((np.zeros((8, 2)), 5, 4), {}, ValueError, "not 5"),
    ((np.zeros((8, 3)), 2, 4), {"pair_columns": True}, ValueError, "even number of columns, not 3"),
    ((np.zeros((8, 2)), 2, 4), {"pair_columns": 1}, ValueError, "pair_columns must be a bool"),
    ((np.zeros(8), 2, 4), {}, ValueError, "must be 2-D"),
    ((np.full((8, 2), np.nan), 2, 4), {}, ValueError, "finite"),
])
def test_prune_nm_errors(args, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        quant.prune_nm(*args, **kw)


# -- pruning with shared masks (index groups of the DSP engine) ------------------------------

def ref_shared_mask(w, n, m, group):
    """Reference: per group of ``group`` consecutive columns (from column 0, the last one
    possibly partial) and per block, the first n-subset of rows in lexicographic order whose
    summed group magnitude is the largest (= the largest magnitudes, ties to lower rows)."""
    k, ncol = w.shape
    mask = np.zeros((k, ncol), dtype=bool)
    for g0 in range(0, ncol, group):
        cols = range(g0, min(g0 + group, ncol))
        for b in range(k // m):
            mag = [sum(abs(float(w[b * m + r, c])) for c in cols) for r in range(m)]
            best, best_sum = None, None
            for rows in itertools.combinations(range(m), n):
                total = sum(mag[r] for r in rows)
                if best is None or total > best_sum:
                    best, best_sum = rows, total
            for r in best:
                for c in cols:
                    mask[b * m + r, c] = True
    return mask


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("share, levels", [(2, (0.0, 1.0, -2.0)), (3, (0.0, -1.0))])
def test_prune_nm_share_exhaustive(n, share, levels):
    """Every group of one 4-row block with entries from ``levels`` (all ties included): the
    group keeps the rows of the largest summed |w|, lower rows first among equals."""
    cases = np.array(list(itertools.product(levels, repeat=4 * share)))   # (cases, 4 * share)
    w = cases.reshape(-1, 4, share).transpose(1, 0, 2).reshape(4, -1)     # group g = case g
    mask = quant.prune_nm(w, n, 4, share=share)
    np.testing.assert_array_equal(mask, ref_shared_mask(w, n, 4, share), strict=True)
    groups = mask.reshape(4, -1, share)
    assert (groups == groups[:, :, :1]).all() and (groups.sum(axis=0) == n).all()


@pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (2, 8), (4, 8)])
@pytest.mark.parametrize("share, ncol", [(1, 5), (4, 16), (4, 11), (16, 10), (3, 7), (5, 23)])
def test_prune_nm_share_random(n, m, share, ncol):
    """Seeded random weights (small integers: exact sums, many ties), full and partial last
    groups: equal to the reference, equal masks within each group, n per block and column."""
    rng = np.random.default_rng(100 * share + 10 * n + m + ncol)
    w = rng.integers(-20, 21, (3 * m, ncol)).astype(np.float64)
    mask = quant.prune_nm(w, n, m, share=share)
    np.testing.assert_array_equal(mask, ref_shared_mask(w, n, m, share), strict=True)
    for g0 in range(0, ncol, share):
        grp = mask[:, g0:g0 + share]
        np.testing.assert_array_equal(grp, np.repeat(grp[:, :1], grp.shape[1], axis=1),
                                      strict=True)
    assert (mask.reshape(3, m, ncol).sum(axis=1) == n).all()


def test_prune_nm_share_gaussian_keeps_the_largest_group_sums():
    rng = np.random.default_rng(11)
    w = rng.normal(size=(32, 21))
    mask = quant.prune_nm(w, 2, 8, share=8)                # groups of 8, 8, 5
    for g0 in (0, 8, 16):
        grp = mask[:, g0:g0 + 8]
        assert (grp == grp[:, :1]).all()
        mag = np.abs(w[:, g0:g0 + 8]).sum(axis=1).reshape(4, 8)
        keep = grp[:, 0].reshape(4, 8)
        assert (np.where(keep, mag, np.inf).min(axis=1)
                >= np.where(keep, -np.inf, mag).max(axis=1)).all()
    # a group of one column is per-column pruning of that column
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 8, share=8)[:, 16:],
                                  quant.prune_nm(w[:, 16:], 2, 8, share=8), strict=True)


def test_prune_nm_share_1_and_pairs_are_the_old_masks():
    rng = np.random.default_rng(12)
    w = rng.integers(-9, 10, (16, 6)).astype(np.float64)
    per_column = np.hstack([quant.prune_nm(w[:, [c]], 2, 4) for c in range(6)])
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 4, share=1), per_column, strict=True)
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 4), ref_shared_mask(w, 2, 4, 1),
                                  strict=True)
    pairs = quant.prune_nm(w, 2, 4, pair_columns=True)
    np.testing.assert_array_equal(pairs, ref_shared_mask(w, 2, 4, 2), strict=True)
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 4, share=2), pairs, strict=True)
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 4, pair_columns=True, share=2), pairs,
                                  strict=True)
    # pairs inside groups of an even size: the groups' masks
    np.testing.assert_array_equal(quant.prune_nm(w, 2, 4, pair_columns=True, share=4),
                                  quant.prune_nm(w, 2, 4, share=4), strict=True)
    assert not np.array_equal(quant.prune_nm(w, 2, 4, share=4), pairs)


@pytest.mark.parametrize("kw, msg", [
    (dict(share=0), r"share must be a positive integer .*not 0"),
    (dict(share=-2), "not -2"),
    (dict(share=2.0), "not 2.0"),
    (dict(share=True), "not True"),
    (dict(share="4"), "not '4'"),
    (dict(share=None), "not None"),
    (dict(share=3, pair_columns=True),
     r"with pair_columns=True, share must be 1 or even \(groups of whole column pairs\), not "
     r"3; pass share=4 or share=2, or pair_columns=False"),
])
def test_prune_nm_bad_share(kw, msg):
    with pytest.raises(ValueError, match=msg):
        quant.prune_nm(np.ones((8, 4)), 2, 4, **kw)


def test_prune_nm_pair_columns_still_needs_even_columns():
    with pytest.raises(ValueError, match="even number of columns, not 5"):
        quant.prune_nm(np.ones((8, 5)), 2, 4, pair_columns=True, share=4)
    assert quant.prune_nm(np.ones((8, 5)), 2, 4, share=4).shape == (8, 5)   # partial group


def test_find_nm_share_takes_the_union_of_a_group():
    # column c has its single non-zero at row c of the 4-row block
    q = np.diag([3, -1, 2, 5]).astype(np.int64)
    pats = [(1, 4), (2, 4)]
    assert quant.find_nm(q, pats).pattern is NMPattern.NM1_4
    sp = quant.find_nm(q, pats, share=2)                 # pairs: rows {0, 1}, {2, 3}
    assert sp.pattern is NMPattern.NM2_4
    np.testing.assert_array_equal(sp.idx, [[0, 0, 2, 2], [1, 1, 3, 3]], strict=True)
    np.testing.assert_array_equal(numerics.to_dense(sp), q, strict=True)
    np.testing.assert_array_equal(quant.find_nm(q, pats, pair_columns=True).idx, sp.idx,
                                  strict=True)
    assert quant.find_nm(q, pats, share=4) is None       # the union has 4 rows
    assert quant.find_nm(q, pats, share=3) is None       # rows {0, 1, 2}; column 3 alone
    sp3 = quant.find_nm(q, [(1, 4), (2, 4), (3, 4)], share=3)
    assert (sp3.n, sp3.m) == (3, 4)
    np.testing.assert_array_equal(sp3.idx[:, :3], np.array([[0, 1, 2]] * 3).T, strict=True)
    np.testing.assert_array_equal(numerics.to_dense(sp3), q, strict=True)
    with pytest.raises(ValueError, match="share must be a positive integer"):
        quant.find_nm(q, pats, share=0)
    with pytest.raises(ValueError, match="share must be 1 or even"):
        quant.find_nm(q, pats, pair_columns=True, share=3)


def test_find_nm_share_of_shared_pruning():
    rng = np.random.default_rng(13)
    w = rng.normal(size=(32, 12))
    mask = quant.prune_nm(w, 2, 8, share=4)
    q = np.where(mask, rng.integers(1, 8, w.shape), 0)
    sp = quant.find_nm(q, [(1, 8), (2, 8)], share=4)
    assert sp.pattern is NMPattern.NM2_8
    for g0 in (0, 4, 8):
        np.testing.assert_array_equal(sp.idx[:, g0:g0 + 4],
                                      np.repeat(sp.idx[:, g0:g0 + 1], 4, axis=1), strict=True)
    np.testing.assert_array_equal(numerics.to_dense(sp), q, strict=True)


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_compress_nm_roundtrip(fmt):
    rng = np.random.default_rng(int(fmt))
    lo, hi = numerics.weight_range(fmt)
    q = rng.integers(lo, hi + 1, (24, 4))
    mask = quant.prune_nm(rng.normal(size=(24, 4)), 2, 8)
    sp = quant.compress_nm(q, mask, n=2, m=8, fmt=fmt)
    assert sp.fmt is fmt and sp.values.shape == (6, 4)
    np.testing.assert_array_equal(numerics.to_dense(sp), np.where(mask, q, 0), strict=True)
    assert (np.diff(sp.idx.reshape(3, 2, 4), axis=1) > 0).all()      # increasing rows


@pytest.mark.parametrize("q, mask, kw, exc, msg", [
    (np.zeros((8, 1), dtype=int), np.array([[1], [1], [0], [0], [1], [0], [0], [0]], dtype=bool),
     {}, ValueError, r"keeps 1 weights in block 1 \(rows 4..7\) of column 0, not n = 2"),
    (np.zeros((8, 1), dtype=int), np.ones((8, 1), dtype=int), {}, TypeError, "mask must be a bool array"),
    (np.zeros((8, 1), dtype=int), np.ones((8, 2), dtype=bool), {}, ValueError, "mask shape"),
    (np.zeros((6, 1), dtype=int), np.ones((6, 1), dtype=bool), {}, ValueError, "K = 6 is not a multiple"),
    (np.zeros((8, 1)), np.ones((8, 1), dtype=bool), {}, TypeError, "q must have an integer dtype"),
    (np.full((8, 1), 9), np.array([[1], [1], [0], [0]] * 2, dtype=bool), {"fmt": F.INT4},
     ValueError, r"INT4 values must lie in \[-8, 7\]"),
    (np.zeros((8, 1), dtype=int), np.array([[1], [1], [0], [0]] * 2, dtype=bool), {"fmt": "int9"},
     ValueError, "fmt must be a sw.numerics.WeightFormat"),
])
def test_compress_nm_errors(q, mask, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        quant.compress_nm(q, mask, **{"n": 2, "m": 4, **kw})


def test_compress_nm_drops_pruned_values():
    q = np.array([[9], [1], [2], [3]])
    sp = quant.compress_nm(q, np.array([[0], [1], [1], [0]], dtype=bool), n=2, m=4)
    np.testing.assert_array_equal(sp.values[:, 0], [1, 2], strict=True)
    np.testing.assert_array_equal(sp.idx[:, 0], [1, 2], strict=True)


# -- two products per MULT18X18D ----------------------------------------------------------------

BOUNDS = {F.INT4: (12, 13), F.INT2: (10, 15), F.TERNARY: (9, 16)}


def _triples(fmt):
    lo, hi = numerics.weight_range(fmt)
    t = np.array(list(itertools.product(range(lo, hi + 1), range(lo, hi + 1), range(-128, 128))),
                 dtype=np.int64)
    return t[:, 0], t[:, 1], t[:, 2]


def test_pack_bounds_documented_values():
    for fmt, b in BOUNDS.items():
        assert numerics.dsp_pack_bounds(fmt) == b
        assert b[0] <= numerics.DSP_PACK_SHIFT <= b[1]
    assert set(numerics.DSP_PACK_FORMATS) == set(BOUNDS)
    for fmt in (F.INT8, F.POW2):
        with pytest.raises(ValueError, match=f"{fmt.name} weights cannot be packed"):
            numerics.dsp_pack_bounds(fmt)


@pytest.mark.parametrize("fmt", list(BOUNDS))
def test_pack_unpack_exhaustive(fmt):
    """Every (w_hi, w_lo, x) triple at every valid k: both products exact."""
    w_hi, w_lo, x = _triples(fmt)
    bits = numerics.WEIGHT_BITS[fmt]
    k_min, k_max = numerics.dsp_pack_bounds(fmt)
    for k in range(k_min, k_max + 1):
        op = numerics.dsp_pack2(w_hi, w_lo, k)
        assert op.min() >= -(1 << 17) and op.max() < 1 << 17
        hi, lo = numerics.dsp_unpack2(op * x, k)
        np.testing.assert_array_equal(hi, numerics.int_mul(x, w_hi, b_bits=bits), strict=True)
        np.testing.assert_array_equal(lo, numerics.int_mul(x, w_lo, b_bits=bits), strict=True)


@pytest.mark.parametrize("fmt", list(BOUNDS))
def test_pack_bounds_are_tight(fmt):
    """Below k_min some low product no longer fits (the unpacked pair is wrong); above k_max
    some operand leaves the 18-bit port (dsp_pack2 refuses it)."""
    w_hi, w_lo, x = _triples(fmt)
    k_min, k_max = numerics.dsp_pack_bounds(fmt)
    k = k_min - 1
    hi, lo = numerics.dsp_unpack2(((w_hi << k) + w_lo) * x, k)
    assert ((hi != w_hi * x) | (lo != w_lo * x)).any()
    with pytest.raises(ValueError, match="leaves the signed 18-bit port"):
        numerics.dsp_pack2(w_hi, w_lo, k_max + 1)


def test_unpack_identity_and_errors():
    rng = np.random.default_rng(0)
    p = rng.integers(-(1 << 34), 1 << 34, 10000)
    for k in (1, 9, 12, 17):
        hi, lo = numerics.dsp_unpack2(p, k)
        assert ((hi << k) + lo == p).all()
        assert lo.min() >= -(1 << (k - 1)) and lo.max() < 1 << (k - 1)
    for bad in (0, 18, 12.0, True):
        with pytest.raises(ValueError, match="k must be an integer in"):
            numerics.dsp_unpack2(p, bad)
        with pytest.raises(ValueError, match="k must be an integer in"):
            numerics.dsp_pack2(1, 1, bad)
    with pytest.raises(TypeError, match="integer dtype"):
        numerics.dsp_unpack2(np.array([1.5]), 12)
