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
import pytest
from cocotb.triggers import Timer

from hw.simulate import run_cocotb, strip_init, tb_params, to_verilog
from test_core import TOP_ONLY, core_and_params

XINIT_BUILD_ARGS = ["--x-assign", "unique", "--x-initial", "unique"]
SEEDS = (1, 2, 3)
CONFIG = "1x1"            # the smallest build; the SoC test runs a 4x4 core this way too
#: top-level registers without reset whose power-up value the probe reads
PROBES = ("e2_plo", "e2_phi", "ga0", "gw0")

def _xinit_core():
    core, params = core_and_params(CONFIG)
    text, nreg, nmem = strip_init(to_verilog(core, "core"))
    for p in PROBES:
        assert re.search(rf"^\s*reg\b[^;]*\b{p} ;$", text, re.M), f"probe register {p} not found"
    assert nreg > 100 and nmem > 0, (nreg, nmem)
    return text, params


def _plusargs(seed):
    return [f"+verilator+seed+{seed}", "+verilator+rand+reset+2"]


def test_power_up_state_is_random(tmp_path):
    """The probe: with these options the power-up state really is random and seed-dependent
    (so the runs below cannot pass vacuously)."""
    text, _ = _xinit_core()
    seen = {}
    for seed in SEEDS:
        out = tmp_path / f"probe{seed}.json"
        run_cocotb(text, name="core", test_module="test_core_xinit",
                   build_args=XINIT_BUILD_ARGS + TOP_ONLY["build_args"],
                   extra_sources=TOP_ONLY["extra_sources"],
                   plusargs=_plusargs(seed), params={"out": str(out)})
        seen[seed] = json.loads(out.read_text())
    # a 32-bit register is 0 with probability 2**-32, and the seed changes the state
    for seed, vals in seen.items():
        assert any(v != 0 for v in vals.values()), (seed, vals)
    assert len({json.dumps(v, sort_keys=True) for v in seen.values()}) == len(SEEDS), seen


@pytest.mark.parametrize("seed", SEEDS)
def test_core_random_initial_state(seed):
    """Every cocotb test of test_core.py from a random power-up state (one seed per test, so
    pytest -n spreads them)."""
    text, params = _xinit_core()
    run_cocotb(text, name="core", test_module="test_core",
               build_args=XINIT_BUILD_ARGS + TOP_ONLY["build_args"],
               extra_sources=TOP_ONLY["extra_sources"], plusargs=_plusargs(seed), params=params)


@cocotb.test()
async def power_up_state(dut):
    """Record the probe registers before any clock edge or reset."""
    await Timer(1, unit="ns")
    vals = {p: int(getattr(dut, p).value) for p in PROBES}
    with open(tb_params()["out"], "w") as f:
        json.dump(vals, f)
