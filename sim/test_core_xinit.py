"""The core's cocotb tests (sim/test_core.py) with random power-up state.

Amaranth gives every register an initializer in its Verilog (``reg [7:0] ga0 = 8'h00;``) and
every memory an ``initial`` block, so Verilator's ``--x-initial unique`` alone would change
nothing. Here the initializers are removed from the Verilog, the model is built with
``--x-assign unique --x-initial unique`` and run with ``+verilator+rand+reset+2`` under several
seeds: every register and memory word starts random, and only the reset (and the host's
writes) may make the results right. Registers without reset (the datapath's) must not matter.
A probe checks that the power-up state really is random and differs between seeds, so the
test cannot pass vacuously.
"""

import json
import re

import cocotb
from cocotb.triggers import Timer

from hw.simulate import run_cocotb, tb_params, to_verilog
from test_core import core_and_params

XINIT_BUILD_ARGS = ["--x-assign", "unique", "--x-initial", "unique"]
SEEDS = (1, 2, 3)
CONFIG = "4x4"
#: top-level registers without reset whose power-up value the probe reads
PROBES = ("e2_plo", "e2_phi", "ga0", "gw3")

_REG_INIT = re.compile(r"^(\s*reg\b[^=;]*?)\s*=\s*[^;]+;[ \t]*$", re.M)
_MEM_INIT = re.compile(r"^[ \t]*initial begin\n(?:[ \t]*\S+ ?\[\d+\] = [^;]+;\n)+[ \t]*end\n", re.M)


def strip_init(verilog: str) -> tuple[str, int, int]:
    """Remove register initializers and memory ``initial`` blocks; returns (text, registers,
    memories). Yosys' own ``$auto$verilog_backend`` trigger register keeps its initializer."""
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


def test_core_random_initial_state(tmp_path):
    core, params = core_and_params(CONFIG)
    text, nreg, nmem = strip_init(to_verilog(core, "core"))
    for p in PROBES:
        assert re.search(rf"^\s*reg\b[^;]*\b{p} ;$", text, re.M), f"probe register {p} not found"
    assert nreg > 100 and nmem > 0, (nreg, nmem)
    seen = {}
    for seed in SEEDS:
        plusargs = [f"+verilator+seed+{seed}", "+verilator+rand+reset+2"]
        out = tmp_path / f"probe{seed}.json"
        run_cocotb(text, name="core", test_module="test_core_xinit", build_args=XINIT_BUILD_ARGS,
                   plusargs=plusargs, params={"out": str(out)})
        seen[seed] = json.loads(out.read_text())
        run_cocotb(text, name="core", test_module="test_core", build_args=XINIT_BUILD_ARGS,
                   plusargs=plusargs, params=params)
    # the power-up state was random (a 32-bit register is 0 with probability 2**-32) and the
    # seed changed it
    for seed, vals in seen.items():
        assert any(v != 0 for v in vals.values()), (seed, vals)
    assert len({json.dumps(v, sort_keys=True) for v in seen.values()}) == len(SEEDS), seen


@cocotb.test()
async def power_up_state(dut):
    """Record the probe registers before any clock edge or reset."""
    await Timer(1, unit="ns")
    vals = {p: int(getattr(dut, p).value) for p in PROBES}
    with open(tb_params()["out"], "w") as f:
        json.dump(vals, f)
