"""sw.layout's images of the sparse DSP engine (protocol 5): the A buffer of a DSP layer
(``dsp_act_image``) and the DSPW records (``dsp_weight_image``), with their size helpers.

Each image is decoded here with the address formulas of the protocol (docs/protocol.md,
"A layout of a DSP layer" and "DSPW layout"), written out again in this file, and compared
with the dense activations / the ``NMSparse`` it came from; every byte the formulas do not
name must be zero. The two images together then compute ``sparse_gemm`` when every stage
value is multiplied with the activation its index selects (what the engine does)."""

import itertools

import numpy as np
import pytest

from sw import layout, quant
from sw.numerics import NM_PATTERNS, NMPattern, NMSparse, WeightFormat as F, sparse_gemm

STAGES = (4, 8)


def runs_on(L):
    """The patterns a chain of L stages runs: n divides L."""
    return [p for p, (n, m) in NM_PATTERNS.items() if L % n == 0]


def random_sparse(rng, blocks, ncols, n, m, fmt=F.INT8, *, pair=False):
    """Random N:M weights; with ``pair`` columns 2c and 2c + 1 share their indices."""
    lo, hi = {F.INT8: (-128, 127), F.INT4: (-8, 7), F.INT2: (-2, 1), F.TERNARY: (-1, 1)}[fmt]
    vals = rng.integers(lo, hi + 1, (blocks * n, ncols))
    idx = np.empty((blocks * n, ncols), dtype=np.int64)
    for c in range(ncols):
        for b in range(blocks):
            if pair and c % 2:
                idx[b * n:(b + 1) * n, c] = idx[b * n:(b + 1) * n, c - 1]
            else:
                idx[b * n:(b + 1) * n, c] = rng.permutation(m)[:n]
    return NMSparse(n, m, vals, idx, fmt)


# -- the protocol's formulas, written out again ------------------------------------------------

def window(L, n, m):
    return L // n * m


def decode_act(img, M, K, *, rows, L, n, m):
    """A[r, k] for k < S * Wp (bytes past K included) and the set of addresses read."""
    wp = window(L, n, m)
    bp, S = wp // 4, -(-K // wp)
    a = np.zeros((M, S * wp), dtype=np.int64)
    used = set()
    for r in range(M):
        for k in range(S * wp):
            word, bank, byte = r * S + k // wp, (k // 4) % bp, k % 4
            addr = ((word * rows + bank) << 2) | byte
            a[r, k] = img[addr] - 256 * (img[addr] >= 128)
            used.add(addr)
    return a, used


def decode_weights(img, K, N, *, cols, L, n, m, packed):
    """Per (column, block) the (value, index) of its stages in stage order, the dense
    weights the records stand for (value at row b * m + index, summed), and the addresses
    of the bytes a record may use."""
    chains = cols // 2 if packed else cols
    CH = 1
    while CH < chains:
        CH *= 2
    wp = window(L, n, m)
    S, T = -(-K // wp), -(-N // cols)
    slots, dense, used = {}, np.zeros((S * wp, T * cols), dtype=np.int64), set()
    for t, s, c in itertools.product(range(T), range(S), range(chains)):
        r = t * S + s
        base = (r * CH + c) << 4
        rec = [img[base | b] for b in range(16)]
        used.update(base | b for b in list(range(L)) + [8, 9, 10])
        bits = rec[8] | rec[9] << 8 | rec[10] << 16
        assert bits >> (3 * L) == 0, (t, s, c, hex(bits))
        for j in range(L):
            b = s * (L // n) + j // n
            index = bits >> (3 * j) & 7
            if packed:
                lo, hi = rec[j] & 0xF, rec[j] >> 4
                pairs = [(t * cols + 2 * c, lo - 16 * (lo >= 8)),
                         (t * cols + 2 * c + 1, hi - 16 * (hi >= 8))]
            else:
                pairs = [(t * cols + c, rec[j] - 256 * (rec[j] >= 128))]
            for col, v in pairs:
                slots.setdefault((col, b), []).append((v, index))
                dense[b * m + index, col] += v
    return slots, dense, used


def check_weight_image(sp, img, *, cols, L, packed):
    n, m, K, N = sp.n, sp.m, sp.k, sp.ncols
    chains = cols // 2 if packed else cols
    CH = 1 << (chains - 1).bit_length()
    wp = window(L, n, m)
    S, T = -(-K // wp), -(-N // cols)
    assert len(img) == T * S * CH * 16
    slots, dense, used = decode_weights(img, K, N, cols=cols, L=L, n=n, m=m, packed=packed)
    for (col, b), got in slots.items():
        if col < N and b < sp.blocks:
            want = [(int(sp.values[b * n + j, col]), int(sp.idx[b * n + j, col]))
                    for j in range(n)]
            assert got == want, (col, b)
        elif packed and col >= N and col - 1 < N and col % 2 and b < sp.blocks:
            # the missing hi column of a pair: value 0 at the lo column's index
            assert [v for v, _ in got] == [0] * n, (col, b)
            assert [i for _, i in got] == [int(sp.idx[b * n + j, col - 1]) for j in range(n)]
        else:
            assert got == [(0, 0)] * n, (col, b)
    # every column and block of the weights has its slots
    assert {(c, b) for c in range(N) for b in range(sp.blocks)} <= set(slots)
    # nothing else: padding chains, record bytes L..7 and 11..15
    assert all(img[i] == 0 for i in range(len(img)) if i not in used)
    # the records stand for the dense weights, zero rows past K
    want = np.zeros_like(dense)
    want[:K, :N] = quant_to_dense(sp)
    np.testing.assert_array_equal(dense, want, strict=True)
    return dense


def quant_to_dense(sp):
    from sw.numerics import to_dense
    return to_dense(sp)


# -- helpers -------------------------------------------------------------------------------

def test_window_and_sizes():
    want = {(4, NMPattern.DENSE4): 4, (4, NMPattern.NM4_8): 8, (4, NMPattern.NM2_4): 8,
            (4, NMPattern.NM1_4): 16, (4, NMPattern.NM2_8): 16,
            (8, NMPattern.DENSE4): 8, (8, NMPattern.DENSE8): 8, (8, NMPattern.NM4_8): 16,
            (8, NMPattern.NM2_4): 16, (8, NMPattern.NM1_4): 32, (8, NMPattern.NM2_8): 32}
    for (L, p), wp in want.items():
        assert layout.dsp_window(stages=L, pattern=p) == wp, (L, p)
        assert layout.dsp_window(stages=L, pattern=int(p)) == wp        # its number works too
        assert layout.dsp_steps(1, stages=L, pattern=p) == 1
        assert layout.dsp_steps(wp, stages=L, pattern=p) == 1
        assert layout.dsp_steps(wp + 1, stages=L, pattern=p) == 2
        assert layout.dsp_act_words(3, 5 * wp - 1, stages=L, pattern=p) == 15
        assert layout.dsp_records(5 * wp, 9, cols=4, stages=L, pattern=p) == 3 * 5
        assert layout.dsp_records(5 * wp, 8, cols=4, stages=L, pattern=p) == 2 * 5
    with pytest.raises(ValueError, match="DENSE8 .* does not run on a DSP chain of L = 4"):
        layout.dsp_window(stages=4, pattern=NMPattern.DENSE8)
    assert [layout.dsp_chain_stride(c) for c in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
    assert layout.dsp_chains(cols=6, packed=False) == 6
    assert layout.dsp_chains(cols=6, packed=True) == 3


@pytest.mark.parametrize("call, match", [
    (lambda: layout.dsp_window(stages=6, pattern=NMPattern.NM2_4), "stages .* one of"),
    (lambda: layout.dsp_window(stages=True, pattern=NMPattern.NM2_4), "stages"),
    (lambda: layout.dsp_window(stages=8, pattern=6), "pattern must be a sw.numerics.NMPattern"),
    (lambda: layout.dsp_window(stages=8, pattern="NM2_4"), "pattern must be"),
    (lambda: layout.dsp_window(stages=8, pattern=None), "pattern must be"),
    (lambda: layout.dsp_steps(0, stages=8, pattern=NMPattern.NM2_4), "k must be a positive"),
    (lambda: layout.dsp_act_words(0, 4, stages=8, pattern=NMPattern.NM2_4), "m must be"),
    (lambda: layout.dsp_records(4, 0, cols=4, stages=8, pattern=NMPattern.NM2_4), "n must be"),
    (lambda: layout.dsp_records(4, 4, cols=0, stages=8, pattern=NMPattern.NM2_4), "cols must"),
    (lambda: layout.dsp_chains(cols=5, packed=True), "cols must be even, not 5"),
    (lambda: layout.dsp_chains(cols=4, packed=1), "packed must be a bool"),
    (lambda: layout.dsp_chain_stride(0), "chains must be a positive"),
])
def test_helper_refusals(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- A -------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", STAGES)
def test_act_image_decodes_back(L):
    rng = np.random.default_rng(L)
    for p in runs_on(L):
        n, m = NM_PATTERNS[p]
        wp = window(L, n, m)
        rows = max(2, wp // 4)                     # the smallest array that fits the window
        for M, K in ((1, 1), (3, wp), (2, wp + 1), (4, 3 * wp - 5), (5, 2 * wp + 4)):
            a = rng.integers(-128, 128, (M, K))
            img = layout.dsp_act_image(a, rows=rows, stages=L, pattern=p)
            S = -(-K // wp)
            assert len(img) == M * S * rows * 4
            assert layout.dsp_act_words(M, K, stages=L, pattern=p) == M * S
            b = np.frombuffer(img, np.uint8).astype(np.int64)
            got, used = decode_act(b, M, K, rows=rows, L=L, n=n, m=m)
            np.testing.assert_array_equal(got[:, :K], a, strict=True)
            assert not got[:, K:].any()            # the rest of the last window: zeros
            assert all(b[i] == 0 for i in range(len(b)) if i not in used)   # unused banks


def test_act_image_more_banks_than_the_window():
    # NM2_4 on L = 4 reads 8 activations (2 banks) per step; an 8-row array leaves 6 empty
    a = np.arange(-10, 10).reshape(2, 10)
    img = np.frombuffer(layout.dsp_act_image(a, rows=8, stages=4, pattern=NMPattern.NM2_4),
                        np.uint8)
    words = img.reshape(-1, 8, 4)                  # (word, bank, byte)
    assert words.shape == (2 * 2, 8, 4) and not words[:, 2:].any()
    assert list(words[0, :2].reshape(-1).astype(np.int8)) == list(range(-10, -2))
    assert list(words[1, :2].reshape(-1).astype(np.int8)) == [-2, -1, 0, 0, 0, 0, 0, 0]
    assert list(words[2, :2].reshape(-1).astype(np.int8)) == list(range(0, 8))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(a=np.zeros((2, 8)), rows=1, stages=4, pattern=NMPattern.NM2_4), ValueError,
     r"NM2_4 on L = 4 stages reads Wp = 8 activations per step, more than the 1 row banks "
     r"hold \(4 \* rows = 4\)"),
    (dict(a=np.zeros((2, 8), np.int64) + 128, rows=2, stages=4, pattern=NMPattern.NM2_4),
     ValueError, "a"),
    (dict(a=np.zeros(8, np.int64), rows=2, stages=4, pattern=NMPattern.NM2_4), ValueError,
     r"2-D \(M, K\)"),
    (dict(a=np.zeros((0, 8), np.int64), rows=2, stages=4, pattern=NMPattern.NM2_4),
     ValueError, "non-empty"),
    (dict(a=np.zeros((2, 8), np.int64), rows=0, stages=4, pattern=NMPattern.NM2_4),
     ValueError, "rows must be a positive integer"),
    (dict(a=np.zeros((2, 8), np.int64), rows=2, stages=4, pattern=NMPattern.DENSE8),
     ValueError, "n = 8 must divide L"),
    (dict(a=np.zeros((2, 8), np.int64), rows=2, stages=5, pattern=NMPattern.NM2_4),
     ValueError, "stages"),
])
def test_act_image_refusals(kw, exc, match):
    with pytest.raises(exc, match=match):
        layout.dsp_act_image(**kw)


# -- DSPW ----------------------------------------------------------------------------------

@pytest.mark.parametrize("L", STAGES)
@pytest.mark.parametrize("cols", [4, 6])
def test_weight_image_unpacked_decodes_back(L, cols):
    """Ragged K (the last step's blocks past K/m), N not a multiple of cols, chains (6) that
    are not a power of two (records 8 chains apart)."""
    rng = np.random.default_rng(10 * L + cols)
    for p in runs_on(L):
        n, m = NM_PATTERNS[p]
        per_step = L // n
        for blocks, N in ((1, 1), (per_step, cols), (per_step + 1, cols + 1),
                          (3 * per_step - 1, 2 * cols - 1)):
            sp = random_sparse(rng, blocks, N, n, m)
            img = layout.dsp_weight_image(sp, cols=cols, stages=L, packed=False)
            assert img == layout.dsp_weight_image(sp, cols=cols, stages=L, packed=False,
                                                  pattern=p)
            S = -(-blocks // per_step)
            assert len(img) // (16 * layout.dsp_chain_stride(cols)) == \
                layout.dsp_records(sp.k, N, cols=cols, stages=L, pattern=p) == -(-N // cols) * S
            check_weight_image(sp, np.frombuffer(img, np.uint8).astype(np.int64), cols=cols,
                               L=L, packed=False)


@pytest.mark.parametrize("L", STAGES)
@pytest.mark.parametrize("fmt", [F.INT4, F.INT2, F.TERNARY])
def test_weight_image_packed_decodes_back(L, fmt):
    """Two 4-bit columns per chain: lo nibble column 2c, hi nibble 2c + 1, one index; an odd
    N leaves the last chain's hi nibble 0."""
    rng = np.random.default_rng(L + int(fmt))
    cols = 4
    for p in runs_on(L):
        n, m = NM_PATTERNS[p]
        for blocks, N in ((1, 2), (L // n + 1, 5), (2 * (L // n) + 1, 8), (3, 1)):
            sp = random_sparse(rng, blocks, N, n, m, fmt, pair=True)
            img = layout.dsp_weight_image(sp, cols=cols, stages=L, packed=True)
            b = np.frombuffer(img, np.uint8).astype(np.int64)
            check_weight_image(sp, b, cols=cols, L=L, packed=True)


def test_weight_image_by_hand():
    """One 2:4 column pair on L = 4, packed, cols 2: blocks 0, 1 in step 0, block 2 (the
    last, K = 12) and an empty block in step 1."""
    vals = np.array([[1, -1], [-8, 7], [3, 0], [-2, 5], [0, -3], [6, 2]])
    idx = np.array([[0, 0], [3, 3], [1, 1], [2, 2], [3, 3], [0, 0]])
    sp = NMSparse(2, 4, vals, idx, F.INT4)
    img = layout.dsp_weight_image(sp, cols=2, stages=4, packed=True)
    assert len(img) == 2 * 16                      # 1 chain (CH 1), S = 2 records
    r0, r1 = img[:16], img[16:]
    assert list(r0[:4]) == [0xF1, 0x78, 0x03, 0x5E] and r0[4:8] == bytes(4)
    # indices 0, 3, 1, 2 -> bits 0..11 = 0b010_001_011_000
    assert int.from_bytes(r0[8:11], "little") == 0 | 3 << 3 | 1 << 6 | 2 << 9
    assert r0[11:] == bytes(5)
    assert list(r1[:4]) == [0xD0, 0x26, 0, 0]
    assert int.from_bytes(r1[8:11], "little") == 3 | 0 << 3
    # unpacked on 2 columns: the same values, one column per chain, int8 bytes
    up = layout.dsp_weight_image(sp, cols=2, stages=4, packed=False)
    assert len(up) == 2 * 2 * 16
    assert list(up[0:4]) == [1, 0xF8, 3, 0xFE] and list(up[16:20]) == [0xFF, 7, 0, 5]


@pytest.mark.parametrize("L, p, cols, packed", [
    (8, NMPattern.NM2_4, 4, False), (4, NMPattern.NM1_4, 4, False),
    (8, NMPattern.DENSE8, 6, False), (8, NMPattern.NM2_8, 4, True),
    (4, NMPattern.NM4_8, 2, True)])
def test_images_compute_sparse_gemm(L, p, cols, packed):
    """The engine's sum over both images (value x the activation its index selects) is
    sparse_gemm, including the zero-padded last window."""
    rng = np.random.default_rng(5)
    n, m = NM_PATTERNS[p]
    wp = window(L, n, m)
    rows = max(2, wp // 4)
    blocks, N, M = 2 * (L // n) + 1, 2 * cols + 1, 3
    sp = random_sparse(rng, blocks, N, n, m, F.INT4 if packed else F.INT8, pair=packed)
    a = rng.integers(-128, 128, (M, sp.k))
    aimg = np.frombuffer(layout.dsp_act_image(a, rows=rows, stages=L, pattern=p), np.uint8)
    wimg = np.frombuffer(layout.dsp_weight_image(sp, cols=cols, stages=L, packed=packed),
                         np.uint8)
    act, _ = decode_act(aimg.astype(np.int64), M, sp.k, rows=rows, L=L, n=n, m=m)
    _, dense, _ = decode_weights(wimg.astype(np.int64), sp.k, N, cols=cols, L=L, n=n, m=m,
                                 packed=packed)
    np.testing.assert_array_equal(act @ dense[:, :N], sparse_gemm(a, sp), strict=True)


def test_weight_image_from_prune_and_compress():
    """quant.prune_nm(pair_columns=True) + compress_nm give weights the packed engine takes;
    without pair_columns they are refused (the indices of a pair differ)."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(16, 6))
    q = rng.integers(-8, 8, (16, 6))
    paired = quant.compress_nm(q, quant.prune_nm(w, 2, 4, pair_columns=True), n=2, m=4,
                               fmt=F.INT4)
    img = layout.dsp_weight_image(paired, cols=6, stages=8, packed=True)
    check_weight_image(paired, np.frombuffer(img, np.uint8).astype(np.int64), cols=6, L=8,
                       packed=True)
    alone = quant.compress_nm(q, quant.prune_nm(w, 2, 4), n=2, m=4, fmt=F.INT4)
    with pytest.raises(ValueError, match="packed columns .* share a DSP chain"):
        layout.dsp_weight_image(alone, cols=6, stages=8, packed=True)


def _sp(**kw):
    f = dict(n=2, m=4, values=np.array([[1, 2], [3, 4]]), idx=np.array([[0, 0], [1, 1]]),
             fmt=F.INT4)
    f.update(kw)
    return NMSparse(**f)


@pytest.mark.parametrize("sp, kw, exc, match", [
    (np.zeros((4, 2), np.int64), dict(), TypeError,
     "sparse must be a sw.numerics.NMSparse, not ndarray"),
    (_sp(n=3, values=np.zeros((3, 2), np.int64), idx=np.array([[0, 0], [1, 1], [2, 2]])),
     dict(), ValueError, "3:4 is not a hardware N:M pattern"),
    (_sp(), dict(pattern=NMPattern.NM2_8), ValueError,
     r"the weights are 2:4 \(NM2_4\), not 2:8 as pattern NM2_8 says"),
    (_sp(), dict(pattern=17), ValueError, "pattern must be a sw.numerics.NMPattern"),
    (_sp(n=8, m=8, values=np.zeros((8, 2), np.int64), idx=np.arange(8)[:, None].repeat(2, 1)),
     dict(), ValueError, r"DENSE8 \(8:8\) does not run on a DSP chain of L = 4"),
    (_sp(), dict(stages=16), ValueError, "stages"),
    (_sp(), dict(cols=3, packed=True), ValueError, "cols must be even, not 3"),
    (_sp(), dict(cols=-1), ValueError, "cols must be a positive integer"),
    (_sp(values=np.array([[100, 2], [3, 4]]), fmt=F.INT8), dict(packed=True), ValueError,
     r"packed DSP engine takes 4-bit weights in \[-8, 7\] .* found \[2, 100\] \(INT8\)"),
    (_sp(idx=np.array([[0, 1], [1, 0]])), dict(packed=True), ValueError,
     r"packed columns 0 and 1 share a DSP chain, so their kept weights of block 0 must sit "
     r"at the same indices in the same order; found \[0, 1\] and \[1, 0\]"),
])
def test_weight_image_refusals(sp, kw, exc, match):
    f = dict(cols=2, stages=4, packed=False)
    f.update(kw)
    with pytest.raises(exc, match=match):
        layout.dsp_weight_image(sp, **f)


def test_odd_last_column_may_have_any_index_when_packed():
    # N = 3: the last chain holds column 2 alone; its index is column 2's
    sp = _sp(values=np.array([[1, 2, -3], [3, 4, 5]]), idx=np.array([[0, 0, 2], [1, 1, 3]]))
    img = layout.dsp_weight_image(sp, cols=4, stages=4, packed=True)
    check_weight_image(sp, np.frombuffer(img, np.uint8).astype(np.int64), cols=4, L=4,
                       packed=True)
    rec1 = img[16:32]                              # chain 1 of record 0
    assert list(rec1[:2]) == [0x0D, 0x05] and int.from_bytes(rec1[8:11], "little") == 2 | 3 << 3


# -- engines whose chains share their indices (IDENTIFY dsp_share) -------------------------------

def shared_sparse(rng, blocks, ncols, n, m, group, fmt=F.INT8):
    """Random N:M weights whose groups of ``group`` columns (from column 0) share indices."""
    sp = random_sparse(rng, blocks, ncols, n, m, fmt)
    lead = np.repeat(sp.idx[:, ::group], group, axis=1)[:, :ncols]
    return NMSparse(n, m, sp.values, lead, fmt)


def leader_dense(img, K, N, *, cols, L, n, m, packed, share):
    """The dense weights a shared-index engine computes with: every chain reads the indices
    of its group leader's record (chain c // share * share), its own values."""
    b = np.frombuffer(img, np.uint8).astype(np.int64)
    chains = cols // 2 if packed else cols
    CH = 1 << (chains - 1).bit_length()
    recs = b.reshape(-1, CH, 16).copy()
    for c in range(chains):
        recs[:, c, 8:11] = recs[:, c // share * share, 8:11]
    _, dense, _ = decode_weights(recs.reshape(-1), K, N, cols=cols, L=L, n=n, m=m,
                                 packed=packed)
    return dense[:K, :N]


@pytest.mark.parametrize("cols, packed, share", [(4, False, 2), (4, False, 4), (6, False, 3),
                                                 (8, True, 2), (8, True, 4), (4, True, 1)])
def test_shared_weights_give_the_unshared_image(cols, packed, share):
    """Weights whose index groups share their indices: accepted, the image is byte for byte
    the share=1 one (every record keeps its indices), and the leader-index reading of the
    engine computes the weights."""
    rng = np.random.default_rng(40 + cols + share + packed)
    G = layout.dsp_index_group(cols=cols, packed=packed, share=share)
    assert G == share * (2 if packed else 1)
    fmt = F.INT4 if packed else F.INT8
    for p in runs_on(8):
        n, m = NM_PATTERNS[p]
        for blocks, N in ((3, cols), (5, 2 * cols + G - 1), (2, 1)):
            sp = shared_sparse(rng, blocks, N, n, m, G, fmt)
            layout.dsp_check_indices(sp, cols=cols, packed=packed, share=share)
            img = layout.dsp_weight_image(sp, cols=cols, stages=8, packed=packed, share=share)
            assert img == layout.dsp_weight_image(sp, cols=cols, stages=8, packed=packed)
            check_weight_image(sp, np.frombuffer(img, np.uint8).astype(np.int64), cols=cols,
                               L=8, packed=packed)
            np.testing.assert_array_equal(
                leader_dense(img, sp.k, N, cols=cols, L=8, n=n, m=m, packed=packed,
                             share=share), quant_to_dense(sp), strict=True)


def test_unshared_weights_are_refused_and_would_be_wrong():
    """Per-column pruned weights on a 4-chain engine sharing its indices in groups of 4:
    refused with the block, the columns and the fix; the engine would compute other weights."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(16, 8))
    q = rng.integers(-100, 100, (16, 8))
    alone = quant.compress_nm(q, quant.prune_nm(w, 2, 4), n=2, m=4)
    img = layout.dsp_weight_image(alone, cols=4, stages=8, packed=False)      # share 1: fine
    assert not np.array_equal(
        leader_dense(img, 16, 8, cols=4, L=8, n=2, m=4, packed=False, share=4),
        quant_to_dense(alone))
    bad = np.argwhere(alone.idx != np.repeat(alone.idx[:, ::4], 4, axis=1))
    r, c = (int(t) for t in bad[0])
    b, g0 = r // 2, c // 4 * 4
    msg = (rf"columns {g0}\.\.{g0 + 3} share one index per stage on this DSP engine \(4 chains "
           rf"per index group: 4 columns\), so their kept weights of block {b} must sit at the "
           rf"same indices in the same order; column {g0} has "
           rf"\[{alone.idx[2 * b, g0]}, {alone.idx[2 * b + 1, g0]}\] but column {c} has "
           rf"\[{alone.idx[2 * b, c]}, {alone.idx[2 * b + 1, c]}\]: prune with "
           rf"sw\.quant\.prune_nm\(\.\.\., share=4\)")
    with pytest.raises(ValueError, match=msg):
        layout.dsp_weight_image(alone, cols=4, stages=8, packed=False, share=4)
    with pytest.raises(ValueError, match=msg):
        layout.dsp_check_indices(alone, cols=4, packed=False, share=4)
    # pruned with share=4 (groups from column 0, as the tiles of 4 columns): accepted
    shared = quant.compress_nm(q, quant.prune_nm(w, 2, 4, share=4), n=2, m=4)
    img = layout.dsp_weight_image(shared, cols=4, stages=8, packed=False, share=4)
    np.testing.assert_array_equal(
        leader_dense(img, 16, 8, cols=4, L=8, n=2, m=4, packed=False, share=4),
        quant_to_dense(shared), strict=True)
    # groups of 2 are not enough for groups of 4
    pairs = quant.compress_nm(q, quant.prune_nm(w, 2, 4, share=2), n=2, m=4)
    layout.dsp_check_indices(pairs, cols=4, packed=False, share=2)
    with pytest.raises(ValueError, match=r"prune with sw\.quant\.prune_nm\(\.\.\., share=4\)"):
        layout.dsp_check_indices(pairs, cols=4, packed=False, share=4)


def test_packed_shared_refusal_names_pairs_and_group():
    # packed, 4 chains sharing in groups of 2: 4 columns per group; column 2 (the second
    # chain's lo) differs from column 0 in block 1
    idx = np.array([[0, 0, 0, 0, 1], [1, 1, 1, 1, 2], [2, 2, 3, 3, 0], [3, 3, 1, 1, 3]])
    sp = NMSparse(2, 4, np.ones((4, 5), np.int64), idx, F.INT4)
    with pytest.raises(ValueError, match=r"columns 0\.\.3 share one index per stage on this DSP "
                       r"engine \(2 chains per index group, two columns per chain: 4 columns\), "
                       r"so their kept weights of block 1 .* column 0 has \[2, 3\] but column 2 "
                       r"has \[3, 1\]: prune with sw\.quant\.prune_nm\(\.\.\., "
                       r"pair_columns=True, share=4\)"):
        layout.dsp_weight_image(sp, cols=8, stages=4, packed=True, share=2)
    # the same weights on the packed engine without sharing: pairs agree, accepted
    layout.dsp_weight_image(sp, cols=8, stages=4, packed=True, share=1)
    # the last group is partial (column 4 alone): any index
    ok = NMSparse(2, 4, np.ones((4, 5), np.int64),
                  np.array([[0, 0, 0, 0, 1], [1, 1, 1, 1, 2], [2, 2, 2, 2, 0], [3, 3, 3, 3, 3]]),
                  F.INT4)
    layout.dsp_weight_image(ok, cols=8, stages=4, packed=True, share=2)


@pytest.mark.parametrize("kw, match", [
    (dict(cols=6, packed=False, share=4), r"share \(DSP chains per index group\) must be a "
     r"positive integer dividing the engine's 6 chains \(cols = 6\), not 4"),
    (dict(cols=4, packed=True, share=4), r"dividing the engine's 2 chains \(packed, cols = 4\), "
     r"not 4"),
    (dict(cols=4, packed=False, share=0), "not 0"),
    (dict(cols=4, packed=False, share=True), "not True"),
    (dict(cols=4, packed=False, share=2.0), "not 2.0"),
    (dict(cols=4, packed=False, share=None), "not None"),
])
def test_bad_share(kw, match):
    sp = random_sparse(np.random.default_rng(8), 2, 4, 2, 4, F.INT4)
    with pytest.raises(ValueError, match=match):
        layout.dsp_weight_image(sp, stages=4, **kw)
    with pytest.raises(ValueError, match=match):
        layout.dsp_index_group(**kw)
    with pytest.raises(ValueError, match=match):
        layout.dsp_check_indices(sp, **kw)
