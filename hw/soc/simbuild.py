"""Build the SoC's Verilator model for SimTransport (``python -m hw.build --target sim``).

The model is the same :class:`~hw.soc.top.SoC` the board runs (minus the UART, which is
tested on its own), compiled with a C++ harness that moves bytes between stdin/stdout and the
SoC's byte streams. Builds are cached under ``fpga/build/sim-<device>-<hash>/`` by a hash of
the Verilog and the harness, so an unchanged design is never rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
from pathlib import Path

from hw.simulate import _tool_env, strip_init, to_verilog

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "harness" / "sim_main.cpp"

#: cycles of silence inside a frame before the link answers TIMEOUT; the harness gives the
#: host a grace period in wall time before it lets these cycles run (see sim_main.cpp)
SIM_TIMEOUT = 1 << 12


#: ``x_init`` values: "fast" gives every register without a reset value 0; "unique" gives
#: each one a random value chosen at start-up from the seed passed to the model as
#: ``+verilator+seed+N +verilator+rand+reset+2`` (``sw.transport.SimTransport`` does that)
X_INIT = ("fast", "unique")


def sim_soc(device: str, pe: str | None = None, dsp: str | None = None):
    """The SoC the model of ``device`` simulates: the board's, with a shorter link timeout
    (``dsp``: the DSP engine, a key of ``hw.sizes.DSP_ENGINES``)."""
    from hw.sizes import DEFAULT_FREQ_MHZ, core_size
    from hw.soc.top import SoC

    return SoC(**core_size(device, pe, dsp).geometry(), timeout=SIM_TIMEOUT,
               clk_freq=DEFAULT_FREQ_MHZ[device] * 1e6)


def build_sim_model(device: str = "12F", *, quiet: bool = True, x_init: str = "fast",
                    pe: str | None = None, dsp: str | None = None) -> Path:
    """Build (once) and return the path of the simulator executable for ``device``'s core.

    ``x_init="unique"`` builds a model whose uninitialised registers start random (see
    :data:`X_INIT`), to show that nothing depends on a register without a reset.
    """
    if x_init not in X_INIT:
        raise ValueError(f"x_init must be one of {X_INIT!r}, not {x_init!r}")
    verilog = to_verilog(sim_soc(device, pe, dsp), "soc")
    if x_init == "unique":
        # without Amaranth's initializers, or --x-initial unique would randomise nothing
        verilog, nreg, nmem = strip_init(verilog)
        assert nreg > 100 and nmem > 0, (nreg, nmem)
    tag = f"sim-{device}" + (f"-{pe}" if pe else "") + (f"-{dsp}" if dsp and dsp != "none" else "")
    return build_harness_model(verilog, tag, x_init=x_init, quiet=quiet)


def build_harness_model(verilog: str, tag: str, *, x_init: str = "fast", quiet: bool = True) -> Path:
    """Compile ``verilog`` (top module ``soc`` with the SoC's ports) with the C++ harness
    into a SimTransport executable, cached under ``fpga/build/<tag>-<x_init>-<hash>/``.

    :func:`build_sim_model` passes the SoC's Verilog; ``hw.netlist`` its gate-level
    netlist plus cell models.
    """
    from hw.simulate import verilator_bin_dir

    if x_init not in X_INIT:
        raise ValueError(f"x_init must be one of {X_INIT!r}, not {x_init!r}")
    harness = HARNESS.read_text()
    key = hashlib.sha256((verilog + harness + x_init).encode()).hexdigest()[:16]
    bdir = ROOT / "fpga" / "build" / f"{tag}-{x_init}-{key}"
    exe = bdir / "Vsoc"
    bdir.mkdir(parents=True, exist_ok=True)
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():
            return exe
        _tool_env()
        (bdir / "soc.v").write_text(verilog)
        cmd = [str(verilator_bin_dir() / "verilator"), "--cc", "--exe", "--build", "-j", "2",
               "-O3", "--x-assign", x_init, "--x-initial", x_init, "-Wno-fatal",
               "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "--top-module", "soc", "-Mdir", str(bdir),
               "-CFLAGS", "-O2", "-o", "Vsoc", str(bdir / "soc.v"), str(HARNESS)]
        res = subprocess.run(cmd, cwd=bdir, capture_output=quiet, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"Verilator build of the SoC model failed:\n{res.stdout}\n{res.stderr}")
    return exe
