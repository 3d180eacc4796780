"""Layer programs end to end: models compiled by ``sw.program``, resident on the simulated SoC
(Verilator model of the 12F-sized MixPE SoC, the real driver through SimTransport), compared
bit for bit with ``sw.model.Model.golden``; per-layer counters; refusals and faults."""

import numpy as np
import pytest

from sw import model as mdl, numerics, protocol as P
from sw.program import ModelTooLarge
from sw.numerics import WeightFormat
from program_models import cnn, lin

DEVICE, PE = "12F", "mixpe"


@pytest.fixture(scope="module")
def acc():
    from sw.driver import Accelerator
    from sw.transport import SimTransport
    a = Accelerator(SimTransport(DEVICE, pe=PE))
    yield a
    a.close()


_lin = lin
_cnn = cnn


def _check(lm, m, x):
    y = lm.run(x)
    np.testing.assert_array_equal(y, m.golden(x), strict=True)
    return y


def test_cnn_bit_exact_random_and_extremes(acc):
    rng = np.random.default_rng(1)
    m = _cnn(rng)
    lm = acc.load_model(m)
    assert lm.compiled.batch >= 1
    x = rng.integers(-128, 128, size=(2 * lm.compiled.batch + 1, 8, 8, 1))   # ragged last run
    _check(lm, m, x)
    ext = np.stack([np.full((8, 8, 1), v) for v in (-128, 127, 0, 3)])
    _check(lm, m, ext)
    assert lm.loads == 1                     # weights sent once, resident for every run


def test_cnn_odd_image_stride2_pad_value(acc):
    # 10x6x2 input: stride 2 over an odd size (5x3 after pooling), padding = the -128 zero point
    rng = np.random.default_rng(2)
    m = _cnn(rng, in_shape=(10, 6, 2), in_zero=-128)
    lm = acc.load_model(m, batch=1)
    _check(lm, m, rng.integers(-128, 128, size=(3, 10, 6, 2)))


@pytest.mark.parametrize("fmt,group,symmetric", [
    (WeightFormat.INT4, 32, True), (WeightFormat.INT4, None, False), (WeightFormat.INT2, 64, True),
    (WeightFormat.TERNARY, None, True), (WeightFormat.POW2, 128, True),
    (WeightFormat.INT8, 32, False)])
def test_mlp_every_format(acc, fmt, group, symmetric):
    rng = np.random.default_rng(int(fmt) * 7 + (group or 0))
    l1 = _lin(rng, 70, 24, fmt=fmt, group=group, symmetric=symmetric, xz=-2, yz=4, relu=True)
    l2 = _lin(rng, 24, 10, fmt=fmt, group=group, symmetric=symmetric, xz=4, yz=0)
    m = mdl.Model([mdl.Dense(l1, name="fc1"), mdl.Dense(l2, name="fc2")], input_shape=(70,),
                  in_scale=0.05, in_zero=-2, out_scale=0.05, out_zero=0)
    lm = acc.load_model(m)
    _check(lm, m, rng.integers(-128, 128, size=(lm.compiled.batch + 3, 70)))


def test_layer_counters_and_link_bytes(acc):
    rng = np.random.default_rng(3)
    m = _cnn(rng)
    lm = acc.load_model(m, batch=2)
    x = rng.integers(-128, 128, size=(2, 8, 8, 1))
    _check(lm, m, x)
    run = lm.last
    cp = lm.compiled
    assert run.program_runs == 1 and run.samples == 2
    # the device counts every real MAC of each GEMM layer; MAXPOOL does none
    assert run.macs == cp.macs
    kinds = [r.kind for r in cp.layers]
    for k, c, cc, b in zip(kinds, run.cycles, run.core_cycles, run.busy):
        assert c > cc >= b if k == P.LayerKind.GEMM else cc == b == 0
    # resident weights: a run sends only the inputs and reads only the outputs
    assert run.stats.payload_sent == x.size
    assert run.stats.payload_received == cp.output_bytes + len(cp.layers) * P.LCNT_RECORD
    recs = acc.layer_counters(len(cp.layers))
    assert [r.status for r in recs] == [P.ErrorCode.OK] * len(cp.layers)
    assert [r.kind for r in recs] == [int(k) for k in kinds]


def test_other_work_between_runs_reloads(acc):
    rng = np.random.default_rng(4)
    m = _cnn(rng)
    lm = acc.load_model(m, batch=1)
    x = rng.integers(-128, 128, size=(1, 8, 8, 1))
    _check(lm, m, x)
    a = rng.integers(-128, 128, size=(5, 40))
    w = rng.integers(-128, 128, size=(40, 7))
    np.testing.assert_array_equal(acc.gemm(a, w), numerics.mixgemm(a, w), strict=True)  # uses W
    _check(lm, m, x)
    assert lm.loads == 2


def test_model_too_large_names_layer_and_bytes(acc):
    from sw.program import ModelTooLarge, compile_model
    rng = np.random.default_rng(5)
    big = mdl.Model([mdl.Dense(_lin(rng, 1000, 160), name="huge")], input_shape=(1000,),
                    in_scale=0.05, in_zero=0, out_scale=0.05, out_zero=0)
    with pytest.raises(ModelTooLarge, match=r"layer 'huge'.*W bank.*more than"):
        acc.load_model(big)
    m = _cnn(rng)
    with pytest.raises(ModelTooLarge, match=r"layer 'conv1'.*bytes"):
        compile_model(m, acc.info, batch=64)


def _raw_program(acc, records):
    acc.write_buffer(P.Buffer.PROG, 0, b"".join(r.pack() for r in records))


def test_bad_layer_stops_program_with_its_status(acc):
    rng = np.random.default_rng(6)
    m = _cnn(rng)
    lm = acc.load_model(m, batch=1)
    good = lm.compiled.layers
    bad_kind = P.ProgramLayer(P.LayerDescriptor(1, 1, 1), kind=9)
    _raw_program(acc, [good[0], bad_kind, good[2]])
    with pytest.raises(P.DeviceError) as e:
        acc.run_program(3)
    assert e.value.code == P.ErrorCode.BAD_PARAM
    st = [r.status for r in acc.layer_counters(2)]
    assert st == [P.ErrorCode.OK, P.ErrorCode.BAD_PARAM]
    # weights past the W banks: the core refuses the layer (BAD_SHAPE)
    d = good[0].desc
    over = P.ProgramLayer(P.LayerDescriptor(d.m, d.k, d.n, d.out_mode, fmt=d.fmt, chan=1,
                                            w_base=acc.info.w_bytes // acc.info.cols - 1),
                          n=good[0].n, s=good[0].s, in_base=good[0].in_base,
                          stride=good[0].stride, pad=good[0].pad, h=good[0].h, w=good[0].w)
    _raw_program(acc, [over])
    with pytest.raises(P.DeviceError) as e:
        acc.run_program(1)
    assert e.value.code == P.ErrorCode.BAD_SHAPE
    # RAW32 output is refused in programs (the next layer reads INT8)
    raw = P.ProgramLayer(P.LayerDescriptor(d.m, d.k, d.n, numerics.OutMode.RAW32, fmt=d.fmt),
                         n=good[0].n, s=good[0].s)
    _raw_program(acc, [raw])
    with pytest.raises(P.DeviceError) as e:
        acc.run_program(1)
    assert e.value.code == P.ErrorCode.BAD_PARAM
    with pytest.raises(ValueError, match="count must be in"):
        acc.run_program(acc.info.max_layers + 1)
    # the device keeps working: the model (reloaded, PROG was overwritten) is still exact
    _check(lm, m, rng.integers(-128, 128, size=(2, 8, 8, 1)))


def test_reset_stops_a_running_program(acc):
    rng = np.random.default_rng(7)
    m = _cnn(rng)
    lm = acc.load_model(m)
    x = rng.integers(-128, 128, size=(lm.compiled.batch, 8, 8, 1))
    acc.write_buffer(P.Buffer.ACT, lm.compiled.input_base, x.astype(np.int8).tobytes())
    t = acc.transport
    t.exchange(P.run_program(len(lm.compiled.layers), wait=False, seq=77), seq=77, timeout=30)
    assert acc.status().busy
    acc.reset()
    st = acc.status()
    assert not st.busy and st.last_error == P.ErrorCode.OK
    _check(lm, m, x)


def test_program_refused_by_mismatched_bitstream(acc):
    from dataclasses import replace
    from sw.program import DeviceLacks, compile_model
    rng = np.random.default_rng(8)
    m = _cnn(rng)
    # a protocol-4 device without layer programs
    with pytest.raises(DeviceLacks, match="no layer programs"):
        compile_model(m, replace(acc.info, act_bytes=0, max_layers=0))
    # an INT8-DSP bitstream: INT8 only, no groups, and no MAXPOOL
    int8 = replace(acc.info, formats=1 << int(WeightFormat.INT8), group_sizes=0)
    mlp = mdl.Model([mdl.Dense(_lin(rng, 40, 8, fmt=WeightFormat.INT4), name="fc4")],
                    input_shape=(40,), in_scale=0.05, in_zero=0, out_scale=0.05, out_zero=0)
    with pytest.raises(DeviceLacks, match=r"layer 'fc4'.*does not compute INT4.*INT8"):
        compile_model(mlp, int8)
    g = mdl.Model([mdl.Dense(_lin(rng, 40, 8, group=32), name="fcg")], input_shape=(40,),
                  in_scale=0.05, in_zero=0, out_scale=0.05, out_zero=0)
    with pytest.raises(DeviceLacks, match=r"layer 'fcg'.*no groups of 32"):
        compile_model(g, int8)
    with pytest.raises(DeviceLacks, match=r"layer 'pool1'.*no MAXPOOL"):
        compile_model(m, replace(acc.info, layer_kinds=1 << int(P.LayerKind.GEMM)))
    # a program longer than the device's PROG buffer
    with pytest.raises(ModelTooLarge, match=r"6 device layers.*at most 2"):
        compile_model(m, replace(acc.info, max_layers=2))


def test_random_models_fuzz_and_nothing_written_outside(acc):
    """Seeded random CNNs (kernel 1 or 3, stride 1 or 2, pad 0 or 1, channels, image sizes,
    optional pooling): bit-exact, and ACT outside the input and the layers' output regions
    keeps its fill pattern (the scatter and pool write exactly their outputs)."""
    rng = np.random.default_rng(9)
    for trial in range(8):
        H, W, C = int(rng.integers(3, 9)), int(rng.integers(3, 9)), int(rng.integers(1, 5))
        z = int(rng.integers(-128, 128))
        layers, shape, xs, xz = [], (H, W, C), 0.05, z
        for i in range(int(rng.integers(1, 4))):
            k = int(rng.choice([1, 3]))
            st = int(rng.choice([1, 2]))
            pd = int(rng.integers(0, 2)) if k == 3 else 0
            if min(shape[0], shape[1]) + 2 * pd < k:
                k, st, pd = 1, 1, 0
            n = int(rng.integers(1, 11))
            yz = int(rng.integers(-128, 128))
            fmt = WeightFormat(int(rng.choice([0, 1, 2, 3])))
            layers.append(mdl.Conv2d(_lin(rng, k * k * shape[2], n, fmt=fmt, xz=xz, yz=yz,
                                          relu=bool(rng.integers(0, 2))),
                                     kernel=k, stride=st, pad=pd, in_shape=shape, name=f"c{i}"))
            shape = layers[-1].out_shape(shape)
            xz = yz
            if shape[0] >= 2 and shape[1] >= 2 and rng.integers(0, 2):
                layers.append(mdl.MaxPool2d(name=f"p{i}"))
                shape = layers[-1].out_shape(shape)
        layers.append(mdl.Flatten())
        K = int(np.prod(shape))
        layers.append(mdl.Dense(_lin(rng, K, 5, xz=xz, yz=0), name="fc"))
        m = mdl.Model(layers, input_shape=(H, W, C), in_scale=xs, in_zero=z, out_scale=0.05,
                      out_zero=0)
        lm = acc.load_model(m)
        size = acc.info.act_bytes
        acc.write_buffer(P.Buffer.ACT, 0, bytes([0x5A]) * size)
        x = rng.integers(-128, 128, size=(lm.compiled.batch, H, W, C))
        _check(lm, m, x)
        act = np.frombuffer(acc.read_buffer(P.Buffer.ACT, 0, size), dtype=np.uint8)
        touched = np.zeros(size, dtype=bool)
        cp = lm.compiled
        touched[cp.input_base:cp.input_base + cp.input_bytes] = True
        for base, n in cp.regions:
            touched[base:base + n] = True
        assert (act[~touched] == 0x5A).all(), f"trial {trial}: ACT written outside the regions"


def test_fault_campaign_program_runs_exact_or_raise():
    """Bit flips in both directions on real traffic while a resident model runs: a lost or
    damaged RUN_PROGRAM reply is not resent blindly (the program overwrites its own input);
    the run writes the input again and reruns. Every result is exact or an exception."""
    from sw.driver import Accelerator
    from sw.transport import FaultInjector, SimTransport
    rng = np.random.default_rng(10)
    m = cnn(rng)
    fi = FaultInjector(SimTransport(DEVICE, pe=PE), tx_rate=0.04, rx_rate=0.04, seed=3)
    exact = raised = 0
    with Accelerator(fi, retries=4) as acc:
        lm = acc.load_model(m, batch=1)
        for i in range(40):
            x = rng.integers(-128, 128, size=(2, 8, 8, 1))
            try:
                y = lm.run(x)
            except Exception:
                raised += 1
                continue
            np.testing.assert_array_equal(y, m.golden(x), strict=True)
            exact += 1
        assert fi.tx_faults + fi.rx_faults >= 20, (fi.tx_faults, fi.rx_faults)
        assert acc.total.retries >= 10
    assert exact >= 30, (exact, raised)
