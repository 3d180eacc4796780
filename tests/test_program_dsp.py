"""sw.program for N:M sparse Dense and Conv2d layers (the sparse DSP engine inside layer
programs), pure:
descriptors (``sparse = 1 + pattern``, fmt, ``w_base`` in DSPW records, ``chan_base``), the
DSPW images of several sparse layers side by side (decoded back to the pruned weights with
the protocol's address and record formulas, not with ``sw.layout``), CHAN tables, the A
bound ``M * S <= a_depth`` in ``max_batch``, and the refusals (no engine, a pattern it lacks,
INT8 on a packed engine, unpaired columns, index groups of a shared-index engine whose
indices differ, DSPW / A / OUT too small)."""

import dataclasses

import numpy as np
import pytest

from sw import layout, model as M, quant
from sw.numerics import NM_PATTERNS, NMPattern, WeightFormat
from sw.program import DeviceLacks, ModelTooLarge, compile_model, max_batch, use_sparse_engine
from sw.protocol import Buffer, DeviceInfo, LayerKind

I8, I4, I2, TER = (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.INT2,
                   WeightFormat.TERNARY)
ALL_FORMATS = sum(1 << int(f) for f in WeightFormat)


def device(*, rows=4, cols=8, a_depth=256, w_depth=512, out_words=256, chan_depth=128,
           act_bytes=8192, max_layers=8, formats=ALL_FORMATS, dsp_stages=4, dsp_packed=False,
           dsp_patterns=None, dsp_depth=64, max_k=None, dsp_share=None) -> DeviceInfo:
    """An IDENTIFY reply of a ProgramCore device with (``dsp_stages`` > 0) a DSP engine
    (``dsp_share``: chains per index group; None leaves the field 0)."""
    dsp = {}
    if dsp_stages:
        chains = cols // 2 if dsp_packed else cols
        ch = 1 << (chains - 1).bit_length()
        if dsp_patterns is None:
            dsp_patterns = [p for p, (n, m) in NM_PATTERNS.items()
                            if dsp_stages % n == 0 and dsp_stages // n * m <= 4 * rows]
        dsp = dict(dsp_stages=dsp_stages, dsp_chains=chains, dsp_packed=int(dsp_packed),
                   dsp_patterns=sum(1 << int(p) for p in dsp_patterns),
                   dsp_bytes=dsp_depth * ch * 16)
        if dsp_share is not None:
            dsp["dsp_share"] = dsp_share
    if max_k is None:
        max_k = min(4 * a_depth, w_depth, 65535)
    return DeviceInfo(5, 0x1234, rows, cols, 4 * rows * a_depth, cols * w_depth,
                      4 * rows * out_words, out_words, max_k, 0b11, formats=formats,
                      group_sizes=0b111, chan_bytes=8 * chan_depth, group_bytes=4 * 256,
                      act_bytes=act_bytes, max_layers=max_layers, layer_kinds=0b11, **dsp)


def qlin(rng, k, n, *, fmt=I8, sparse=None, pair=False, xz=0, yz=0, relu=False, share=1):
    return quant.quantize_linear(rng.normal(size=(k, n)) / np.sqrt(k), rng.normal(size=n) * 0.2,
                                 fmt=fmt, x_scale=0.05, x_zero=xz, y_scale=0.05, y_zero=yz,
                                 relu=relu, sparse=sparse, pair_columns=pair, share=share)


def mlp(rng, *, nm1=(2, 4), fmt1=I8, nm3=(1, 4), fmt3=I8, pair=False, k=64, share=1):
    """sparse k->32 + ReLU, dense 32->16, sparse 16->12: two sparse layers around a dense one
    (``pair`` / ``share``: pruned with column pairs / groups of ``share`` columns)."""
    l1 = qlin(rng, k, 32, fmt=fmt1, sparse=nm1, pair=pair, xz=3, yz=-9, relu=True, share=share)
    l2 = qlin(rng, 32, 16, xz=-9, yz=2)
    l3 = qlin(rng, 16, 12, fmt=fmt3, sparse=nm3, pair=pair, xz=2, yz=0, share=share)
    return M.Model([M.Dense(l1, name="fc1"), M.Dense(l2, name="fc2"), M.Dense(l3, name="fc3")],
                   input_shape=(k,), in_scale=0.05, in_zero=3, out_scale=0.05, out_zero=0)


def memory(cp, buffer: Buffer, size: int) -> bytearray:
    """The bytes the placements leave in ``buffer``; placements must not overlap."""
    mem = bytearray(size)
    used = np.zeros(size, dtype=bool)
    for p in cp.placements:
        if p.buffer == buffer:
            assert p.address + len(p.data) <= size
            assert not used[p.address:p.address + len(p.data)].any(), "placements overlap"
            used[p.address:p.address + len(p.data)] = True
            mem[p.address:p.address + len(p.data)] = p.data
    return mem


def decode_dspw(mem, *, w_base, K, N, n, m, L, cols, chains, packed, share=1) -> tuple:
    """The K x N weights a DSP layer reads from DSPW (the protocol's formulas): record
    ``r = w_base + t * S + s`` of chain ``c`` at byte ``((r * CH + c) << 4) | b``; stage j's
    value in byte j, its index in bits 3j.. of bytes 8..10 (of chain ``c // share * share``'s
    record on an engine whose chains share their indices); stage j of step s serves block
    ``s * (L // n) + j // n``. Returns the weights and whether every padding stage (a block
    past K / m or a column past N) is value 0, index 0, and the unused bytes are 0."""
    ch = 1 << (chains - 1).bit_length()
    S = -(-K // (L // n * m))
    w = np.zeros((K, N), dtype=np.int64)
    clean = True
    for t in range(-(-N // cols)):
        for s in range(S):
            r = w_base + t * S + s
            for c in range(chains):
                rec = mem[(r * ch + c) << 4:((r * ch + c) << 4) + 16]
                lead = (r * ch + c // share * share) << 4
                idx24 = int.from_bytes(mem[lead + 8:lead + 11], "little")
                clean &= not any(rec[L:8]) and not any(rec[11:16])
                for j in range(L):
                    b = s * (L // n) + j // n
                    idx = idx24 >> (3 * j) & 7
                    byte = rec[j]
                    if packed:
                        vals = [((byte & 0xF) ^ 8) - 8, ((byte >> 4) ^ 8) - 8]
                        cs = [t * cols + 2 * c, t * cols + 2 * c + 1]
                    else:
                        vals, cs = [byte - 256 if byte > 127 else byte], [t * cols + c]
                    for v, col in zip(vals, cs):
                        if b < K // m and col < N:
                            assert w[b * m + idx, col] == 0 or v == 0
                            w[b * m + idx, col] += v
                        elif share == 1:
                            clean &= v == 0 and idx == 0
                        else:                  # a padding column reads its leader's index
                            clean &= v == 0
    return w, clean


# -- the golden model of a sparse Dense --------------------------------------------------------

def test_sparse_dense_in_a_model_compiles_with_records_and_images():
    rng = np.random.default_rng(1)
    model = mlp(rng)
    info = device()
    B = 5
    cp = compile_model(model, info, batch=B)
    assert cp.names == ["fc1", "fc2", "fc3"] and len(cp.layers) == 3
    d1, d2, d3 = (r.desc for r in cp.layers)
    sp1, sp3 = model.layers[0].sparse, model.layers[2].sparse
    # descriptors: DSP layers name their pattern and format; w_base counts DSPW records
    S1 = -(-64 // 8)                                    # NM2_4 on L = 4: Wp = 8
    S3 = -(-16 // 16)                                   # NM1_4: Wp = 16
    R1, R3 = -(-32 // 8) * S1, -(-12 // 8) * S3         # records per chain
    assert (d1.sparse, d1.fmt, d1.w_base, d1.chan, d1.chan_base, d1.group) == \
        (1 + NMPattern.NM2_4, I8, 0, 1, 0, 0)
    assert (d2.sparse, d2.w_base, d2.chan_base) == (0, 0, 32)          # W bank bytes
    assert (d3.sparse, d3.fmt, d3.w_base, d3.chan_base) == (1 + NMPattern.NM1_4, I8, R1, 48)
    assert (d1.m, d1.k, d1.n, d3.m, d3.k, d3.n) == (B, 64, 32, B, 16, 12)
    assert all(r.kind == LayerKind.GEMM for r in cp.layers)
    # row-major gather of the batch rows, as for array layers
    assert cp.layers[0].n == (B, 1, 1, 1, 1, 64) and cp.layers[0].s == (64, 0, 0, 0, 0, 1)
    # dense-equivalent MACs, as the device counts them
    assert cp.macs == [B * 64 * 32, B * 32 * 16, B * 16 * 12]
    # DSPW: both sparse layers resident side by side, decoded with the protocol's formulas
    ch = info.dsp_chain_stride
    assert ch == 8 and info.dsp_depth == 64
    dspw = [p for p in cp.placements if p.buffer == Buffer.DSPW]
    assert [(p.address, len(p.data)) for p in dspw] == [(0, R1 * ch * 16),
                                                        (R1 * ch * 16, R3 * ch * 16)]
    mem = memory(cp, Buffer.DSPW, info.dsp_bytes)
    for d, sp, lay in ((d1, sp1, model.layers[0]), (d3, sp3, model.layers[2])):
        w, clean = decode_dspw(mem, w_base=d.w_base, K=d.k, N=d.n, n=sp.n, m=sp.m, L=4,
                               cols=8, chains=8, packed=False)
        np.testing.assert_array_equal(w, lay.lin.q)       # the pruned codes
        assert clean
    assert not any(mem[(R1 + R3) * ch * 16:])           # nothing past the last layer
    assert cp.weight_bytes["DSPW"] == (R1 + R3) * ch * 16
    # CHAN tables of all three layers side by side; the dense layer's weights in W
    chan = memory(cp, Buffer.CHAN, info.chan_bytes)
    for d, lay in zip((d1, d2, d3), model.layers):
        img = layout.chan_table_image(lay.lin.requant)
        assert chan[d.chan_base * 8:d.chan_base * 8 + len(img)] == img
    (wp,) = [p for p in cp.placements if p.buffer == Buffer.W]
    assert wp.data == layout.weight_image(model.layers[1].lin.packed(), 8)
    # a pure function: the same model and device give the same program
    again = compile_model(model, info, batch=B)
    assert again.placements == cp.placements and again.layers == cp.layers


def test_sparse_conv2d_compiles_like_its_dense_twin():
    """A sparse Conv2d runs on the DSP engine with the dense convolution's gather (im2col
    loops, stride, padding with the input zero point), its pruned weights in DSPW."""
    rng = np.random.default_rng(8)
    sp_lin = qlin(rng, 3 * 3 * 4, 8, sparse=(2, 4), xz=-3, yz=1, relu=True)
    dense_lin = dataclasses.replace(sp_lin, sparse=None)
    kw = dict(kernel=3, stride=2, pad=1, in_shape=(5, 6, 4), name="c1")
    models = [M.Model([M.Conv2d(lin, **kw)], input_shape=(5, 6, 4), in_scale=0.05,
                      in_zero=-3, out_scale=0.05, out_zero=1) for lin in (sp_lin, dense_lin)]
    info = device()
    B = 2
    sparse_cp, dense_cp = (compile_model(m, info, batch=B) for m in models)
    (rs,), (rd,) = sparse_cp.layers, dense_cp.layers
    assert rs.kind == rd.kind == LayerKind.GEMM
    # the same gather: loops, strides, input base, padding
    gather = lambda r: (r.stride, r.pad, r.pad_value, r.h, r.w, r.in_base, r.n, r.s)  # noqa: E731
    assert gather(rs) == gather(rd) == (2, 1, -3, 5, 6, rs.in_base, (B, 3, 3, 3, 3, 4),
                                         (5 * 6 * 4, 2 * 6 * 4, 2 * 4, 6 * 4, 4, 1))
    assert (rs.desc.m, rs.desc.k, rs.desc.n) == (B * 3 * 3, 36, 8)
    assert (rs.desc.sparse, rs.desc.fmt, rs.desc.w_base, rd.desc.sparse) == \
        (1 + NMPattern.NM2_4, I8, 0, 0)
    assert sparse_cp.macs == dense_cp.macs == [B * 9 * 36 * 8]
    mem = memory(sparse_cp, Buffer.DSPW, info.dsp_bytes)
    w, clean = decode_dspw(mem, w_base=0, K=36, N=8, n=2, m=4, L=4, cols=8, chains=8,
                           packed=False)
    np.testing.assert_array_equal(w, sp_lin.q)
    assert clean
    # the A bound counts the DSP layout: M * S = B * 9 * ceil(36 / 8) words per row bank
    assert max_batch(models[0], device(a_depth=9 * 5 * 3)) == 3


@pytest.mark.parametrize("fmt", [I4, I2, TER])
def test_packed_engine_images(fmt):
    """L = 8 packed (two 4-bit columns per chain): pairs of columns share the indices."""
    rng = np.random.default_rng(2 + int(fmt))
    info = device(rows=8, cols=8, dsp_stages=8, dsp_packed=True)
    model = mlp(rng, nm1=(2, 8), fmt1=fmt, nm3=(4, 8), fmt3=fmt, pair=True)
    cp = compile_model(model, info, batch=3)
    d1, _, d3 = (r.desc for r in cp.layers)
    assert (d1.sparse, d3.sparse, d1.fmt, d3.fmt) == (1 + NMPattern.NM2_8, 1 + NMPattern.NM4_8,
                                                      fmt, fmt)
    S1 = -(-64 // 32)                                   # NM2_8 on L = 8: Wp = 32
    assert d3.w_base == -(-32 // 8) * S1
    mem = memory(cp, Buffer.DSPW, info.dsp_bytes)
    for d, lay in ((d1, model.layers[0]), (d3, model.layers[2])):
        sp = lay.sparse
        w, clean = decode_dspw(mem, w_base=d.w_base, K=d.k, N=d.n, n=sp.n, m=sp.m, L=8,
                               cols=8, chains=4, packed=True)
        np.testing.assert_array_equal(w, lay.lin.q)
        assert clean


def test_dsp_layer_format_need_not_be_an_array_format():
    """The DSP engine multiplies INT4 bytes even when the array computes INT8 only."""
    rng = np.random.default_rng(3)
    model = mlp(rng, fmt1=I4, fmt3=TER)
    cp = compile_model(model, device(formats=1 << int(I8)), batch=2)
    assert [r.desc.fmt for r in cp.layers] == [I4, I8, TER]


def test_max_batch_counts_the_dsp_a_words():
    """A DSP layer needs M * S words of each A row bank: with a_depth 64 and S = 8 the batch
    stops at 8 although the array layers and ACT would take more."""
    rng = np.random.default_rng(4)
    model = mlp(rng)
    info = device(a_depth=64)
    assert max_batch(model, info) == 8                   # 8 * 8 = 64 words per bank
    compile_model(model, info, batch=8)
    with pytest.raises(ModelTooLarge, match=r"layer 'fc1': its A operand \(M=9 x K=64\) in "
                                            r"the DSP layout of NM2_4 needs M x S = 9 x 8 = "
                                            r"72 words of each A row bank \(1152 bytes of the "
                                            r"A buffer\), 128 bytes more than its 1024: use a "
                                            r"smaller batch"):
        compile_model(model, info, batch=9)
    # the same model dense is bounded by the array's A layout instead: ceil(M / 4) * 16 <= 64
    dense = M.Model([M.Dense(dataclasses.replace(layer.lin, sparse=None), name=layer.name)
                     for layer in model.layers], input_shape=(64,), in_scale=0.05, in_zero=3,
                    out_scale=0.05, out_zero=0)
    assert max_batch(dense, info) == 16
    # a K that does not fit even one row: no batch helps
    with pytest.raises(ModelTooLarge, match=r"K is too large for the DSP engine's A banks "
                                            r"\(at most 4 steps of 8 activations: K <= 32\)"):
        max_batch(model, device(a_depth=4, max_k=64))


def test_too_large_names_layer_and_buffer():
    rng = np.random.default_rng(5)
    model = mlp(rng)
    # DSPW: fc1 takes 4 tiles x 8 steps = 32 records; fc3 needs 2 more of 33
    with pytest.raises(ModelTooLarge, match=r"layer 'fc3': its weights need 2 records of each "
                                            r"DSPW chain memory after the 32 used by earlier "
                                            r"layers, 1 more than the device's 33"):
        compile_model(model, device(dsp_depth=33), batch=1)
    compile_model(model, device(dsp_depth=34), batch=1)
    with pytest.raises(ModelTooLarge, match=r"layer 'fc1': its weights need 32 records "
                                            r"of each DSPW chain memory after the 0 used by "
                                            r"earlier layers, 16 more than the device's 16"):
        max_batch(model, device(dsp_depth=16))
    # OUT and CHAN as for array layers
    with pytest.raises(ModelTooLarge, match=r"layer 'fc1': its output \(M=9 x N=32\).*OUT"):
        compile_model(model, device(out_words=16), batch=9)
    with pytest.raises(ModelTooLarge, match=r"layer 'fc2'.*CHAN table"):
        compile_model(model, device(chan_depth=40), batch=1)
    with pytest.raises(ModelTooLarge, match=r"layer 'fc1': K=64 exceeds the device's largest "
                                            r"K \(48\)"):
        compile_model(model, device(max_k=48), batch=1)


def test_refusals_name_the_layer():
    rng = np.random.default_rng(6)
    model = mlp(rng)
    with pytest.raises(DeviceLacks, match=r"layer 'fc1': its weights are N:M sparse \(2:4, "
                                          r"INT8\): the device has no sparse DSP engine"):
        compile_model(model, device(dsp_stages=0))
    with pytest.raises(DeviceLacks, match=r"layer 'fc3'.*\(1:4, INT8\): the device's DSP "
                                          r"engine \(L = 4 stages\) does not run pattern "
                                          r"NM1_4 \(1:4\); it runs DENSE4 \(4:4\), NM2_4 \(2:4\)"):
        compile_model(model, device(dsp_patterns=[NMPattern.DENSE4, NMPattern.NM2_4]))
    with pytest.raises(DeviceLacks, match=r"layer 'fc1'.*packed .* does not take INT8 weights"):
        compile_model(model, device(dsp_stages=8, dsp_packed=True, rows=8))
    # 3:4 is no hardware pattern
    odd = mlp(rng, nm1=(3, 4))
    with pytest.raises(DeviceLacks, match=r"layer 'fc1'.*\(3:4, INT8\): 3:4 weights cannot run "
                                          r"on the DSP engine: 3:4 is not a hardware N:M "
                                          r"pattern"):
        compile_model(odd, device())
    # a packed engine: columns pruned without pair_columns
    unpaired = mlp(rng, fmt1=I4, fmt3=I4, nm1=(2, 8), nm3=(2, 8), pair=False)
    with pytest.raises(DeviceLacks, match=r"layer 'fc1': packed columns \d+ and \d+ share a "
                                          r"DSP chain.*pair_columns=True"):
        compile_model(unpaired, device(rows=8, dsp_stages=8, dsp_packed=True))
    # a program without the DSP engine is no reason to refuse dense models
    dense = M.Model([model.layers[1]], input_shape=(32,), in_scale=0.05, in_zero=-9,
                    out_scale=0.05, out_zero=2)
    compile_model(dense, device(dsp_stages=0))


# -- an engine whose chains share their indices (IDENTIFY dsp_share) ---------------------------

@pytest.mark.parametrize("packed, share", [(False, 8), (False, 4), (True, 2), (True, 4)])
def test_shared_index_engine_compiles_shared_layers(packed, share):
    """Layers pruned with the device's index group (``dsp_index_group`` columns: a partial
    last group in fc3) compile; read with the group leaders' indices, the DSPW records are
    the pruned codes. Layers pruned per column (or in pairs only) are refused, naming the
    layer and the pruning the device needs."""
    rng = np.random.default_rng(20 + share + packed)
    kw = dict(rows=8, dsp_stages=8, dsp_packed=True) if packed else {}
    info = device(**kw, dsp_share=share)
    geo_group = share * (2 if packed else 1)
    assert info.dsp_index_group == geo_group
    fmt = I4 if packed else I8
    nms = ((2, 8), (4, 8)) if packed else ((2, 4), (1, 4))
    model = mlp(rng, nm1=nms[0], fmt1=fmt, nm3=nms[1], fmt3=fmt, pair=packed, share=geo_group)
    cp = compile_model(model, info, batch=2)
    mem = memory(cp, Buffer.DSPW, info.dsp_bytes)
    chains = 4 if packed else 8
    for rec, lay in ((cp.layers[0], model.layers[0]), (cp.layers[2], model.layers[2])):
        d, sp = rec.desc, lay.sparse
        w, clean = decode_dspw(mem, w_base=d.w_base, K=d.k, N=d.n, n=sp.n, m=sp.m,
                               L=info.dsp_stages, cols=8, chains=chains, packed=packed,
                               share=share)
        np.testing.assert_array_equal(w, lay.lin.q, strict=True)
        assert clean
    # the image is the one of an engine without sharing (every record keeps its indices)
    plain = compile_model(model, device(**kw), batch=2)
    assert plain.placements == cp.placements
    # pruned per column pair or per column only: refused with the layer and the fix
    how = (r"pair_columns=True, " if packed else "") + f"share={geo_group}"
    other = mlp(rng, nm1=nms[0], fmt1=fmt, nm3=nms[1], fmt3=fmt, pair=packed)
    with pytest.raises(DeviceLacks, match=rf"layer 'fc1': columns \d+\.\.\d+ share one "
                                          rf"index per stage on this DSP engine .*: prune "
                                          rf"with sw\.quant\.prune_nm\(\.\.\., {how}\)"):
        compile_model(other, info, batch=2)
    # the same per-column weights read with the leaders' indices are not the layer's codes
    cp_other = compile_model(other, device(**kw), batch=2)
    mem = memory(cp_other, Buffer.DSPW, info.dsp_bytes)
    d, sp = cp_other.layers[0].desc, other.layers[0].sparse
    w, _ = decode_dspw(mem, w_base=d.w_base, K=d.k, N=d.n, n=sp.n, m=sp.m, L=info.dsp_stages,
                       cols=8, chains=chains, packed=packed, share=share)
    assert not np.array_equal(w, other.layers[0].lin.q)


def test_shared_geometry_and_use_sparse_engine():
    """DeviceGeometry carries dsp_share (1 for an engine that reports 0); use_sparse_engine
    moves a layer only when the union of each index group's non-zero rows fits a pattern."""
    from sw.program import DeviceGeometry
    assert DeviceGeometry.of(device()).dsp_share == 1
    assert DeviceGeometry.of(device(dsp_share=4)).dsp_share == 4
    assert DeviceGeometry.of(device(dsp_share=4)).dsp_index_group == 4
    assert DeviceGeometry.of(device(dsp_stages=0)).dsp_share == 0
    assert DeviceGeometry.of(device(dsp_stages=0)).dsp_index_group == 0
    rng = np.random.default_rng(21)
    info = device(dsp_share=8)                     # cols 8: one index group per tile
    w = rng.normal(size=(64, 16)) / 8

    def layer(mask, name):
        lin = quant.quantize_linear(np.where(mask, w, 0.0), rng.normal(size=16) * 0.2, fmt=I8,
                                    x_scale=0.05, y_scale=0.05)
        return M.Model([M.Dense(lin, name=name)], input_shape=(64,), in_scale=0.05, in_zero=0,
                       out_scale=0.05, out_zero=0)

    shared = layer(quant.prune_nm(w, 1, 4, share=8), "s")    # 1:4 per group of 8
    halves = layer(quant.prune_nm(w, 1, 4, share=4), "h")    # two groups of 4: <= 2 rows
    alone = layer(quant.prune_nm(w, 1, 4), "a")              # per column: up to 4 rows
    for model, want in ((shared, {"s": "1:4"}), (halves, {"h": "2:4"}), (alone, {})):
        got, picked = use_sparse_engine(model, info)
        assert picked == want, model.layers[0].name
        x = rng.integers(-128, 128, size=(3, 64))
        np.testing.assert_array_equal(got.golden(x), model.golden(x), strict=True)
        if want:
            sp = got.layers[0].sparse
            np.testing.assert_array_equal(sp.idx, np.repeat(sp.idx[:, ::8], 8, axis=1),
                                          strict=True)
            compile_model(got, info, batch=1)
    # on an engine without sharing the per-column layer moves (1:4)
    assert use_sparse_engine(alone, device())[1] == {"a": "1:4"}


def _pruned_dense(rng, k, n, nm, *, fmt=I8, pair=False, group=None, xz=0, yz=0):
    """A dense QuantLinear whose float weights were pruned n:m before quantization."""
    w = rng.normal(size=(k, n)) / np.sqrt(k)
    if nm is not None:
        w = np.where(quant.prune_nm(w, *nm, pair_columns=pair), w, 0.0)
    return quant.quantize_linear(w, rng.normal(size=n) * 0.2, fmt=fmt, group=group,
                                 x_scale=0.05, x_zero=xz, y_scale=0.05, y_zero=yz)


def test_use_sparse_engine_moves_only_layers_that_fit():
    """Layers pruned before quantization move to the DSP engine with the sparsest pattern
    the device runs; dense layers, group-quantized ones and a device without the engine
    leave the model as it is; the golden results do not change."""
    rng = np.random.default_rng(12)
    conv = M.Conv2d(_pruned_dense(rng, 36, 8, (2, 4), xz=1, yz=-2), kernel=3, pad=1,
                    in_shape=(4, 4, 4), name="c1")
    fc1 = M.Dense(_pruned_dense(rng, 128, 16, (1, 4), xz=-2, yz=3), name="fc1")
    fc2 = M.Dense(_pruned_dense(rng, 16, 12, None, xz=3, yz=0), name="fc2")            # dense
    fc3 = M.Dense(_pruned_dense(rng, 64, 10, (1, 4), fmt=I4, group=32, yz=4), name="fc3")
    model = M.Model([conv, M.Flatten(), fc1, fc2,
                     M.Dense(_pruned_dense(rng, 12, 64, (2, 4), xz=0, yz=0), name="up"), fc3],
                    input_shape=(4, 4, 4), in_scale=0.05, in_zero=1, out_scale=0.05,
                    out_zero=4)
    out, picked = use_sparse_engine(model, device())
    assert picked == {"c1": "2:4", "fc1": "1:4", "up": "2:4"}
    assert [getattr(lay, "sparse", None) is not None for lay in out.layers] == \
        [True, False, True, False, True, False]
    x = rng.integers(-128, 128, size=(3, 4, 4, 4))
    np.testing.assert_array_equal(out.golden(x), model.golden(x), strict=True)
    cp = compile_model(out, device(), batch=1)
    assert [r.desc.sparse for r in cp.layers] == [1 + NMPattern.NM2_4, 1 + NMPattern.NM1_4, 0,
                                                  1 + NMPattern.NM2_4, 0]
    # a device whose engine lacks 1:4 runs fc1 as 2:4 (1:4 weights fit 2:4 too)
    _, picked = use_sparse_engine(model, device(dsp_patterns=[NMPattern.DENSE4,
                                                              NMPattern.NM2_4]))
    assert picked == {"c1": "2:4", "fc1": "2:4", "up": "2:4"}
    # no engine, or a packed engine and INT8 weights: nothing moves
    assert use_sparse_engine(model, device(dsp_stages=0)) == (model, {})
    assert use_sparse_engine(model, device(rows=8, dsp_stages=8, dsp_packed=True)) == (model, {})
    # a packed engine takes 4-bit layers whose column pairs share their non-zero rows (1:4
    # per column: a pair's non-zeros fit 2:4); an odd N (no partner for the last column)
    # stays on the array
    paired = M.Dense(_pruned_dense(rng, 64, 8, (1, 4), fmt=I4, pair=True), name="p")
    unpaired = M.Dense(_pruned_dense(rng, 64, 8, (1, 4), fmt=I4), name="u")
    odd = M.Dense(_pruned_dense(rng, 64, 7, (1, 4), fmt=I4), name="o")
    for lay, want in ((paired, {"p": "1:4"}), (unpaired, {"u": "2:4"}), (odd, {})):
        m1 = M.Model([lay], input_shape=(64,), in_scale=0.05, in_zero=0, out_scale=0.05,
                     out_zero=0)
        got, picked = use_sparse_engine(m1, device(rows=8, dsp_stages=8, dsp_packed=True))
        assert picked == want, lay.name
        xs = rng.integers(-128, 128, size=(4, 64))
        np.testing.assert_array_equal(got.golden(xs), m1.golden(xs), strict=True)
