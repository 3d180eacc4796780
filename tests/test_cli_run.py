"""``python -m sw run`` / ``python -m sw demo`` through ``sw.__main__.main`` on the simulated SoC
(12F, MixPE): ONNX models made here (random float weights quantized by onnxruntime's
quantize_static), outputs against the golden model, the printed report, ``--json``, the
progress bar and the error exits (one line, status 2)."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto as TP  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from sw import demo, model_cli  # noqa: E402
from sw.__main__ import main  # noqa: E402
from sw.onnx_import import ONNX_EXTRA_MESSAGE, load_onnx  # noqa: E402

SIM = ["--backend", "sim", "--device", "12F", "--pe", "mixpe"]


@pytest.fixture(scope="module", autouse=True)
def prebuilt_sim():
    """Build (or find cached) the 12F MixPE model once; every CLI call then starts that
    executable instead of asking hw.build again (which elaborates the design, seconds)."""
    from sw import transport
    real = transport.SimTransport
    t = real("12F", pe="mixpe")
    exe = t.executable
    t.close()

    class Prebuilt(real):
        def __init__(self, device="85F", **kw):
            assert device == "12F" and kw.get("pe") == "mixpe", (device, kw)
            kw.setdefault("executable", exe)
            super().__init__(device, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(transport, "SimTransport", Prebuilt)
    yield
    mp.undo()


def call(argv):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        rc = main(argv, out=out)
    finally:
        sys.stderr = old
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small QDQ CNN (NCHW 1x8x8 input), a QDQ MLP with TERNARY codes, their inputs."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(5)
    c1, c2 = 4, 8
    params = (rng.normal(0, 0.5, (9, c1)), rng.normal(0, 0.1, c1),
              rng.normal(0, 0.2, (9 * c1, c2)), rng.normal(0, 0.1, c2),
              rng.normal(0, 0.3, (c2, 10)), rng.normal(0, 0.1, 10))
    calib = rng.random((64, 1, 8, 8)).astype(np.float32)
    cnn = demo.quantize_onnx(demo.cnn_to_onnx(params), calib)
    mlp_f = demo.mlp_to_onnx([(rng.normal(0, 0.2, (64, 12)), rng.normal(0, 0.1, 12)),
                              (rng.normal(0, 0.3, (12, 10)), rng.normal(0, 0.1, 10))])
    mlp = model_cli.narrow_qdq_weights(demo.quantize_onnx(mlp_f, calib.reshape(64, 64)),
                                       "TERNARY")
    paths = {"cnn": d / "cnn.onnx", "mlp": d / "mlp.onnx", "x_img": d / "x_img.npy",
             "x_vec": d / "x_vec.npy", "dir": d}
    paths["cnn"].write_bytes(cnn.SerializeToString())
    paths["mlp"].write_bytes(mlp.SerializeToString())
    np.save(paths["x_img"], rng.random((7, 1, 8, 8)).astype(np.float32))
    np.save(paths["x_vec"], rng.random((5, 64)))
    return paths


def golden_onnx(model, x):
    y = model.golden(model.quantize_input(model.input_from_onnx(np.asarray(x, np.float32))))
    return model.output_to_onnx(model.dequantize_output(y)).astype(np.float32)


def test_run_cnn(files):
    y_path, j_path = files["dir"] / "y.npy", files["dir"] / "run.json"
    rc, out, err = call(["run", str(files["cnn"]), "--input", str(files["x_img"]),
                         "--output", str(y_path), "--json", str(j_path), *SIM])
    assert rc == 0, out + err
    model = load_onnx(str(files["cnn"]))
    x = np.load(files["x_img"])
    y = np.load(y_path)
    assert y.dtype == np.float32 and y.shape == (7, 10)
    assert np.array_equal(y, golden_onnx(model, x))
    ort = demo.onnxruntime_predict(str(files["cnn"]), x)
    assert np.abs(ort - y).max() <= 2 * model.out_scale + 1e-6     # requant rounding only
    for head in ("Model 'digits_cnn'", "device            2x4 mixpe array", "resident ",
                 "device counters over the", "per inference ",
                 "inferences/s (device clock)", "wall time ", "link ",
                 "result            bit-exact vs the golden model (7 samples)", "output "):
        assert head in out, head
    table = {line.split()[0]: line.split() for line in out.splitlines()
             if line.startswith("  ") and line.split()[0] in ("conv1", "pool1", "gap", "fc")}
    assert table["pool1"][-1] == "-" and table["conv1"][-1] == "%"
    f = json.loads(j_path.read_text())
    assert f["command"] == "run" and f["bit_exact"] and f["samples"] == 7
    assert [x["name"] for x in f["layers"]] == ["conv1", "pool1", "conv2", "gap", "fc"]
    assert [x["kind"] for x in f["layers"]] == ["GEMM", "MAXPOOL", "GEMM", "GEMM", "GEMM"]
    assert f["layers"][1]["utilization"] is None
    assert all(0 < x["utilization"] <= 1 for x in f["layers"] if x["kind"] == "GEMM")
    assert f["cycles"] == sum(x["cycles"] for x in f["layers"])
    assert f["cycles_per_inference"] == pytest.approx(f["cycles"] / 7)
    assert f["inferences_per_second_device"] == pytest.approx(
        f["device"]["clock_hz"] / f["cycles_per_inference"])
    assert f["link_bytes_per_inference"] == pytest.approx(
        (f["wire_sent"] + f["wire_received"]) / 7)
    assert f["program"]["resident_bytes"] > 0 and f["device"]["pe"] == "mixpe"
    assert f["model"]["macs_per_sample"] == sum(model.macs())


def test_run_narrow_batches_and_progress(files, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    j_path = files["dir"] / "mlp.json"
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", tty)
    rc = main(["run", str(files["mlp"]), "--input", str(files["x_vec"]), "--batch", "2",
               "--narrow-weights", "--json", str(j_path), *SIM], out=out)
    monkeypatch.undo()
    assert rc == 0, out.getvalue() + tty.getvalue()
    bar = tty.getvalue()
    assert bar.startswith("\r") and "5/5 samples" in bar and bar.endswith("\n"), bar
    assert "3 program run(s) for 5 sample(s) (the last one padded)" in out.getvalue()
    f = json.loads(j_path.read_text())
    assert f["program"]["batch"] == 2 and f["program_runs"] == 3 and f["bit_exact"]
    assert [x["weights"] for x in f["layers"]] == ["TERNARY", "TERNARY"]
    # --quiet: no bar even on a terminal
    tty2 = Tty()
    monkeypatch.setattr(sys, "stderr", tty2)
    rc = main(["run", str(files["mlp"]), "--input", str(files["x_vec"]), "--batch", "2",
               "--quiet", *SIM], out=io.StringIO())
    monkeypatch.undo()
    assert rc == 0 and tty2.getvalue() == ""


def unsupported_model(path):
    s, z = numpy_helper.from_array(np.float32(1 / 64), "s"), numpy_helper.from_array(
        np.int8(0), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="in_Q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="in_DQ"),
             helper.make_node("Sigmoid", ["xd"], ["y"], name="squash"),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="out_Q"),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"], name="out_DQ")]
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TP.FLOAT, ["B", 4])],
                          [helper.make_tensor_value_info("out", TP.FLOAT, ["B", 4])], [s, z])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(m.SerializeToString())


def one_line_error(rc, out, err, *needles):
    assert rc == 2 and out == "", (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_run_errors(files, monkeypatch):
    d = files["dir"]
    unsupported_model(d / "bad.onnx")
    np.save(d / "x4.npy", np.zeros((3, 4), np.float32))
    one_line_error(*call(["run", str(d / "bad.onnx"), "--input", str(d / "x4.npy"), *SIM]),
                   "Sigmoid 'squash'", "not supported")
    np.save(d / "x63.npy", np.zeros((3, 63), np.float32))
    one_line_error(*call(["run", str(files["mlp"]), "--input", str(d / "x63.npy"), *SIM]),
                   "--input has shape (3, 63)", "(samples, 64)")
    one_line_error(*call(["run", str(files["cnn"]), "--input", str(files["x_vec"]), *SIM]),
                   "--input has shape (5, 64)", "(samples, 1, 8, 8)")
    one_line_error(*call(["run", str(files["cnn"]), "--input", str(d / "nope.npy"), *SIM]),
                   "no such file")
    one_line_error(*call(["run", str(d / "x4.npy"), "--input", str(d / "x4.npy"), *SIM]),
                   "not an ONNX model")
    # does not fit: the input alone needs more ACT than the device has
    one_line_error(*call(["run", str(files["mlp"]), "--input", str(files["x_vec"]),
                          "--batch", "4096", *SIM]), "does not fit the device")
    monkeypatch.setitem(sys.modules, "onnx", None)
    one_line_error(*call(["run", str(files["mlp"]), "--input", str(files["x_vec"]), *SIM]),
                   ONNX_EXTRA_MESSAGE)
    one_line_error(*call(["demo", "digits", *SIM]), ONNX_EXTRA_MESSAGE)


def test_help_without_onnx():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
            "sys.modules['sklearn'] = None; from sw.__main__ import main; main(['--help'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "run" in res.stdout and "demo" in res.stdout


def test_demo_digits(files):
    pytest.importorskip("sklearn")
    j_path = files["dir"] / "demo.json"
    rc, out, err = call(["demo", "digits", *SIM, "--model", "both", "--samples", "24",
                         "--epochs", "2", "--fmt", "INT8", "INT4", "TERNARY",
                         "--json", str(j_path)])
    assert rc == 0, out + err
    assert "accuracy on 24 digits test samples" in out
    rows = [line.split() for line in out.splitlines()
            if line.startswith("  mlp ") or line.startswith("  cnn ")]
    assert [(r[0], r[1]) for r in rows] == [(n, f) for n in ("mlp", "cnn")
                                            for f in ("INT8", "INT4", "TERNARY")]
    assert all("yes" in r for r in rows)
    assert out.count("device counters over the") == 6
    f = json.loads(j_path.read_text())
    assert f["command"] == "demo" and f["bit_exact"] and f["samples"] == 24
    runs = {(r["net"], r["fmt"]): r for r in f["runs"]}
    assert len(runs) == 6
    for (net, fmt), r in runs.items():
        assert r["bit_exact"] and r["mismatched_samples"] == 0
        for k in ("accuracy_float", "accuracy_onnxruntime", "accuracy_device",
                  "top1_agreement_device_onnxruntime"):
            assert 0 <= r[k] <= 1
        assert r["max_lsb_device_onnxruntime"] <= 4
        gemm = [x["weights"] for x in r["layers"] if x["name"] != "gap" and x["weights"]]
        assert set(gemm) == {fmt}, (net, fmt, gemm)


def test_run_sparse_without_a_dsp_engine_runs_dense(files):
    """--sparse on a device without the sparse DSP engine says so and runs every layer on
    the array, still bit-exact."""
    rc, out, err = call(["run", str(files["mlp"]), "--input", str(files["x_vec"]), "--sparse",
                         "--quiet", "--narrow-weights", *SIM])
    assert rc == 0, out + err
    assert "sparse layers     none: the device has no sparse DSP engine" in out
    assert "result            bit-exact vs the golden model (5 samples)" in out
