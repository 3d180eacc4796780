"""hw.report: re-measuring some blocks keeps the other rows of the report (synthesis faked)."""

import json

import pytest

from hw import report
from hw.build import main as build_main


def _row(lut4):
    return {"lut4": lut4, "lut4_logic": lut4, "lut4_carry": 0, "trellis_comb": lut4, "ff": 16,
            "mult18x18d": 0, "fmax_mhz": 200.0, "fmax_seeds": [200.0, 201.0, 199.0],
            "transistors": 100, "yosys_ccu2c": 0, "yosys_lut4": lut4, "latency": 0}


@pytest.fixture
def fake_synth(monkeypatch):
    """synth_block without the tools: each call returns a row whose LUT4 count says which call."""
    calls = []

    def synth(name, factory, opts, work, seeds):
        calls.append((name, seeds))
        return _row(1000 + len(calls))
    monkeypatch.setattr(report, "synth_block", synth)
    return calls


def test_only_remeasures_those_blocks_and_keeps_the_others(tmp_path, fake_synth):
    library = list(report.arith_blocks())
    full = report.main_report("arith", tmp_path, seeds=3)
    assert list(full["blocks"]) == library and len(fake_synth) == len(library)
    before = json.loads((tmp_path / "arith_report.json").read_text())["blocks"]

    picked = [library[3], library[0]]
    doc = report.main_report("arith", tmp_path, seeds=3, only=picked)
    # the library's order; LUT4 counts go on from the full run's, so every new row differs
    assert fake_synth[len(library):] == [(library[0], 3), (library[3], 3)]
    saved = json.loads((tmp_path / "arith_report.json").read_text())
    assert list(saved["blocks"]) == library == list(doc["blocks"])
    for name in library:
        if name in picked:
            assert saved["blocks"][name] != before[name]
        else:
            assert saved["blocks"][name] == before[name]
    md = (tmp_path / "arith.md").read_text()
    assert all(f"| {name} |" in md for name in library)
    assert f"| {library[0]} | {1001 + len(library)} |" in md
    assert f"| {library[1]} | {before[library[1]]['lut4']} |" in md


def test_only_without_a_report_writes_just_those_blocks(tmp_path, fake_synth):
    doc = report.main_report("arith", tmp_path, seeds=1, only=["ternary"])
    assert list(doc["blocks"]) == ["ternary"] and fake_synth == [("ternary", 1)]


def test_only_refuses_other_seed_counts_and_unknown_blocks(tmp_path, fake_synth):
    report.main_report("arith", tmp_path, seeds=3, only=["ternary"])
    with pytest.raises(ValueError, match="holds medians of 3 seeds, not 1: re-measure all"):
        report.main_report("arith", tmp_path, seeds=1, only=["pow2_e2"])
    with pytest.raises(ValueError, match=r"unknown blocks \['intmul_9x9'\]"):
        report.main_report("arith", tmp_path, seeds=3, only=["intmul_9x9"])
    assert [n for n, _ in fake_synth] == ["ternary"]


def test_build_cli_passes_only_to_the_report(tmp_path, fake_synth, capsys):
    assert build_main(["--target", "report", "--out", str(tmp_path), "--only", "ternary"]) == 0
    assert fake_synth == [("ternary", 3)]
    with pytest.raises(SystemExit):
        build_main(["--target", "verilog", "--only", "ternary"])
    assert "--only applies to the report target, not 'verilog'" in capsys.readouterr().err
    assert fake_synth == [("ternary", 3)]
