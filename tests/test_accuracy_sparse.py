"""sw.accuracy with N:M sparse weights (issue 10): pruning keeps exactly n of m, fine-tuning
keeps the masks, the sparse integer path (sparse_gemm on NMSparse, then the QuantLinear
epilogue) equals the dense golden model and fails loudly when it does not, 2:4 with
fine-tuning stays near dense, masks shared by groups of columns (the shared-index DSP engines)
stay shared through fine-tuning and are what a shared-index device is given, and --sparse
rewrites only its own section of the report."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sw import accuracy, layout, numerics, quant  # noqa: E402
from sw.numerics import WeightFormat as F  # noqa: E402
from sw.protocol import DeviceInfo  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    x_tr, x_te, y_tr, y_te = accuracy.load_data()
    layers = accuracy.train_mlp(x_tr, y_tr, hidden=32, epochs=20)
    return x_tr, x_te, y_tr, y_te, layers


def _blocks_kept(mask, m):
    k, ncol = mask.shape
    return mask.reshape(k // m, m, ncol).sum(axis=1)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8)])
@pytest.mark.parametrize("pair", [False, True])
def test_prune_keeps_n_of_m_and_finetune_keeps_mask(trained, n, m, pair):
    x_tr, _, y_tr, _, layers = trained
    pruned, masks = accuracy.prune_mlp(layers, n, m, pair_columns=pair)
    for (w0, b0), (w, b), mk in zip(layers, pruned, masks):
        assert mk.shape == w0.shape and mk.dtype == bool
        assert np.all(_blocks_kept(mk, m) == n)
        if pair:
            assert np.array_equal(mk[:, 0::2], mk[:, 1::2])
        assert np.all(w[~mk] == 0) and np.array_equal(w[mk], w0[mk]) and np.array_equal(b, b0)
    tuned = accuracy.train_mlp(x_tr, y_tr, seed=1, epochs=2, lr=1e-3, init=pruned, masks=masks)
    for (w, _), (w_p, _), mk in zip(tuned, pruned, masks):
        assert np.all(w[~mk] == 0)                       # exactly zero, not just small
        assert not np.allclose(w[mk], w_p[mk])           # the kept weights did train
    for (w, _), (w_p, _) in zip(layers, pruned):         # init was not modified in place
        assert np.count_nonzero(w) > np.count_nonzero(w_p)


@pytest.mark.parametrize("share", [8, 16, 5])
def test_shared_masks_stay_shared_through_finetuning(trained, share):
    """Groups of ``share`` columns (layer 1: 32 columns, layer 2: 10, a partial last group)
    keep one mask, chosen by the group's summed |w|; fine-tuning keeps it."""
    x_tr, _, y_tr, _, layers = trained
    pruned, masks = accuracy.prune_mlp(layers, 2, 4, share=share)
    for (w0, _), (w, _), mk in zip(layers, pruned, masks):
        np.testing.assert_array_equal(mk, quant.prune_nm(w0, 2, 4, share=share), strict=True)
        assert np.all(_blocks_kept(mk, 4) == 2)
        for g0 in range(0, mk.shape[1], share):
            grp = mk[:, g0:g0 + share]
            assert (grp == grp[:, :1]).all(), g0
        assert np.all(w[~mk] == 0) and np.array_equal(w[mk], w0[mk])
    assert not np.array_equal(masks[0], accuracy.prune_mlp(layers, 2, 4)[1][0])
    tuned = accuracy.train_mlp(x_tr, y_tr, seed=1, epochs=2, lr=1e-3, init=pruned, masks=masks)
    for (w, _), mk in zip(tuned, masks):
        assert np.all(w[~mk] == 0)
        nz = w != 0
        for g0 in range(0, nz.shape[1], share):        # the kept rows are the group's
            assert not (nz[:, g0:g0 + share] & ~mk[:, g0:g0 + share]).any()


def test_train_mlp_rejects_bad_init_and_masks(trained):
    x_tr, _, y_tr, _, layers = trained
    with pytest.raises(ValueError, match="mask shape"):
        accuracy.train_mlp(x_tr, y_tr, epochs=1, init=layers, masks=[np.ones((3, 3), bool), None])
    with pytest.raises(ValueError, match="one entry per layer"):
        accuracy.train_mlp(x_tr, y_tr, epochs=1, init=layers, masks=[None])
    with pytest.raises(ValueError, match="do not fit"):
        accuracy.train_mlp(x_tr[:, :32], y_tr, epochs=1, init=layers)


@pytest.mark.parametrize("fmt", [F.INT8, F.INT4])
def test_sparse_integer_path_equals_dense_golden(trained, fmt):
    x_tr, x_te, _, _, layers = trained
    pruned, masks = accuracy.prune_mlp(layers, 2, 4, pair_columns=True)
    qlayers, _ = accuracy.quantize_mlp(pruned, x_tr, fmt=fmt)
    sparse = accuracy.sparse_qlayers(qlayers, masks, 2, 4)
    h = quant.quantize_act(x_te, qlayers[0].x_scale, qlayers[0].x_zero)
    for ql, sp, mk in zip(qlayers, sparse, masks):
        assert sp.pattern is numerics.NMPattern.NM2_4 and sp.fmt is fmt
        assert sp.values.shape == (ql.in_features // 2, ql.out_features)
        assert np.array_equal(numerics.to_dense(sp), ql.q) and not np.any(ql.q[~mk])
        out = numerics.requantize_channels(numerics.sparse_gemm(h, sp), ql.requant)
        assert np.array_equal(out, ql.golden(h))
        h = out
    pred = accuracy.sparse_int_predict(qlayers, sparse, x_te)
    assert np.array_equal(pred, np.argmax(h, axis=1))
    assert np.array_equal(pred, accuracy.int_predict(qlayers, x_te))


def test_sparse_path_checks_fire(trained):
    x_tr, x_te, _, _, layers = trained
    pruned, masks = accuracy.prune_mlp(layers, 2, 4)
    qlayers, _ = accuracy.quantize_mlp(pruned, x_tr, fmt=F.INT8)
    sparse = accuracy.sparse_qlayers(qlayers, masks, 2, 4)
    sp = sparse[0]                                   # one kept weight off by one
    vals = sp.values.copy()
    vals[0, 0] += 1 if vals[0, 0] < 127 else -1
    bad = [numerics.NMSparse(2, 4, vals, sp.idx, sp.fmt), sparse[1]]
    with pytest.raises(AssertionError, match="layer 0: the sparse path differs"):
        accuracy.sparse_int_predict(qlayers, bad, x_te)
    # the dense weights quantized with the pruned masks: pruned weights are not code 0
    dense_q, _ = accuracy.quantize_mlp(layers, x_tr, fmt=F.INT8)
    with pytest.raises(AssertionError, match="pruned weight quantized to a non-zero code"):
        accuracy.sparse_qlayers(dense_q, masks, 2, 4)
    group_q, _ = accuracy.quantize_mlp(pruned, x_tr, fmt=F.INT8, group=32)
    with pytest.raises(ValueError, match="per-channel symmetric"):
        accuracy.sparse_qlayers(group_q, masks, 2, 4)


def test_run_sparse_2_4_finetuned_near_dense():
    rep = accuracy.run_sparse(patterns=((2, 4),))
    assert rep.float_accuracy > 0.95
    assert len(rep.rows) == 6                        # 3 mask variants x INT8, INT4
    assert [(r.masks, r.share, r.pair_columns) for r in rep.rows[::2]] == \
        [("per column", 1, False), ("pairs", 1, True), ("groups of 16", 16, False)]
    for r in rep.rows:
        assert (r.n, r.m) == (2, 4)
        assert r.dense_accuracy >= rep.float_accuracy - 0.02, r
        assert r.finetuned_accuracy >= r.dense_accuracy - 0.05, r
        assert r.finetuned_accuracy >= r.accuracy, r
        assert r.float_finetuned_accuracy >= r.float_accuracy, r
    text = accuracy.sparse_markdown(rep, "python -m sw.accuracy --sparse")
    assert text.startswith(accuracy.SPARSE_HEADING + "\n")
    assert "`python -m sw.accuracy --sparse`" in text
    assert text.count("| 2:4 |") == 6
    assert text.count("| 2:4 | groups of 16 |") == 2 and text.count("| 2:4 | pairs |") == 2


def test_cli_sparse_replaces_only_its_section(tmp_path, capsys):
    out = tmp_path / "accuracy.md"
    out.write_text("# Dense report\n\n| a | b |\n")
    argv = ["--sparse", "--hidden", "16", "--epochs", "5", "--finetune-epochs", "1",
            "--out", str(out)]
    assert accuracy.main(argv) == 0
    first = out.read_text()
    assert first.startswith("# Dense report\n\n| a | b |\n\n" + accuracy.SPARSE_HEADING)
    assert "`python -m sw.accuracy --sparse --hidden 16" in first
    assert accuracy.main(argv) == 0                  # again: replaced, not appended
    assert out.read_text() == first
    rest, section = accuracy._split_sparse(first + "\n## Later\n\ntext\n")
    assert rest == "# Dense report\n\n| a | b |\n## Later\n\ntext\n"
    assert section.startswith(accuracy.SPARSE_HEADING) and "## Later" not in section
    with pytest.raises(SystemExit):
        accuracy.main(["--sparse", "--backend", "sim", "--dsp", "bogus", "--out", "-"])
    capsys.readouterr()


def test_sparse_path_compares_the_device(trained):
    """With a device, every layer's int8 output from it must equal the golden model's: a
    device that returns the golden outputs passes, one that is off in one output fails."""
    x_tr, x_te, _, _, layers = trained
    pruned, masks = accuracy.prune_mlp(layers, 2, 4)
    qlayers, _ = accuracy.quantize_mlp(pruned, x_tr, fmt=F.INT8)
    sparse = accuracy.sparse_qlayers(qlayers, masks, 2, 4)

    class Device:
        def __init__(self, off):
            self.off, self.calls = off, 0

        def sparse_gemm(self, h, sp, *, requant):
            self.calls += 1
            y = numerics.requantize_channels(numerics.sparse_gemm(h, sp), requant)
            if self.off:
                y = y.copy()
                y[0, 0] = y[0, 0] - 1 if y[0, 0] > -128 else 127
            return y

    good = Device(False)
    np.testing.assert_array_equal(accuracy.sparse_int_predict(qlayers, sparse, x_te, good),
                                  accuracy.sparse_int_predict(qlayers, sparse, x_te),
                                  strict=True)
    assert good.calls == len(qlayers)
    with pytest.raises(AssertionError, match="layer 0: the device differs"):
        accuracy.sparse_int_predict(qlayers, sparse, x_te, Device(True))


class SharedDevice:
    """A stand-in Accelerator whose DSP engine reads one index per group of chains: refuses
    weights whose index groups differ (sw.layout's check, as the driver does) and otherwise
    answers with the golden model; records the mask variants it was given."""

    def __init__(self, *, cols=8, packed=False, share=8):
        chains = cols // 2 if packed else cols
        self.info = DeviceInfo(6, 0, 4, cols, 1024, 1024, 1024, 64, 256, 3, dsp_stages=4,
                               dsp_chains=chains, dsp_packed=int(packed), dsp_patterns=0x3F,
                               dsp_bytes=1024, dsp_share=share)
        self.calls = 0

    def sparse_gemm(self, h, sp, *, requant):
        layout.dsp_check_indices(sp, cols=self.info.cols, packed=bool(self.info.dsp_packed),
                                 share=self.info.dsp_share)
        self.calls += 1
        return numerics.requantize_channels(numerics.sparse_gemm(h, sp), requant)


FAST = dict(hidden=16, epochs=5, finetune_epochs=1, patterns=((2, 4),), formats=(F.INT4,))


def test_run_sparse_on_a_shared_index_device_prunes_with_its_group():
    dev = SharedDevice(cols=8, share=8)
    rep = accuracy.run_sparse(**FAST, device=dev, device_name="stub")
    assert [(r.masks, r.share, r.pair_columns) for r in rep.rows] == [("groups of 8", 8, False)]
    assert dev.calls == 2 * 2                        # pruned and fine-tuned, two layers each
    text = accuracy.sparse_markdown(rep, "cmd")
    assert "| 2:4 | groups of 8 | INT4 |" in text and "ran layer by layer on stub" in text
    # packed, two chains per group: pairs inside groups of 4 columns
    dev = SharedDevice(cols=8, packed=True, share=2)
    rep = accuracy.run_sparse(**FAST, device=dev, share=4)
    assert [(r.masks, r.share, r.pair_columns) for r in rep.rows] == [("groups of 4", 4, True)]
    # a packed engine without sharing: pairs only
    rep = accuracy.run_sparse(**FAST, device=SharedDevice(cols=8, packed=True, share=1))
    assert [r.masks for r in rep.rows] == ["pairs"]
    # a share other than the device's group is refused
    with pytest.raises(ValueError, match="shares its indices in groups of 8 columns, so its "
                                         "layers must be pruned with share=8, not share=16"):
        accuracy.run_sparse(**FAST, device=SharedDevice(share=8), share=16)
    # the device's check is real: per-column masks are refused by it
    mask = quant.prune_nm(np.random.default_rng(0).normal(size=(64, 16)), 2, 4)
    with pytest.raises(ValueError, match="share one index per stage"):
        SharedDevice(share=8).sparse_gemm(
            np.zeros((1, 64), np.int64), quant.compress_nm(mask.astype(np.int64), mask, n=2, m=4),
            requant=numerics.ChannelRequant.from_requant(numerics.Requant(1 << 14, 14), 16))


def test_run_sparse_share_parameter():
    rep = accuracy.run_sparse(**FAST, share=4)
    assert [r.masks for r in rep.rows] == ["per column", "pairs", "groups of 4"]
    rep = accuracy.run_sparse(**FAST, share=1, pair_columns=(True,))
    assert [r.masks for r in rep.rows] == ["pairs"]
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="share must be None or a positive integer"):
            accuracy.run_sparse(**FAST, share=bad)


def test_cli_share_and_engine_choices(capsys):
    from hw.sizes import DSP_ENGINES
    assert list(accuracy.DSP_CHOICES) == [e for e in DSP_ENGINES if e != "none"]
    assert accuracy.main(["--sparse", "--hidden", "16", "--epochs", "5", "--finetune-epochs",
                          "1", "--share", "8", "--out", "-"]) == 0
    out = capsys.readouterr().out
    assert out.count("| groups of 8 |") == 2 * len(accuracy.SPARSE_PATTERNS)  # x INT8, INT4
    assert "groups of 16" not in out
    with pytest.raises(SystemExit):
        accuracy.main(["--sparse", "--share", "0", "--out", "-"])
    capsys.readouterr()
    for engine in ("dsp4s", "dsp8s"):                # accepted by the parser
        with pytest.raises(SystemExit):
            accuracy.main(["--sparse", "--dsp", engine, "--share", "0", "--out", "-"])
        err = capsys.readouterr().err
        assert "--share must be a positive integer, not 0" in err and "invalid choice" not in err
