"""The systolic array's hop registers in the synthesized ECP5 netlist.

Every PE on an anti-diagonal of the array holds the same delayed ``mode`` and flags, so
Yosys' ``opt_merge`` folded them into one register per diagonal that drove PEs far apart
(the 85F ``dsp8s`` build's slowest path). Checked here on what ``synth_ecp5`` makes of a
small array: each PE keeps registers of its own, chained from its neighbour's.
"""

import json
import subprocess

import pytest
from amaranth.back import verilog

from hw.netlist import _yosys
from hw.systolic.engine import SystolicEngine

ROWS, COLS = 3, 4


@pytest.fixture(scope="module")
def netlist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    dut = SystolicEngine(rows=ROWS, cols=COLS, acc_width=24, impl="ecp5")
    (tmp / "top.v").write_text(verilog.convert(dut, name="top", emit_src=False))
    subprocess.run([_yosys(), "-q", "-p", "read_verilog top.v; synth_ecp5 -top top -json top.json"],
                   cwd=tmp, check=True)
    top = json.loads((tmp / "top.json").read_text())["modules"]["top"]
    return dut, top


def _ff(top, name):
    cell = top["cells"].get(name)
    assert cell is not None and cell["type"] == "TRELLIS_FF", f"no register {name} of its own"
    return cell["connections"]


def test_mode_hops_down_each_column_in_registers_of_its_own(netlist):
    _, top = netlist
    for j in range(COLS):
        for b in range(2):
            # column j's skew chain starts at the input (j registers), then one per PE
            src = top["ports"]["mode"]["bits"][b:b + 1]
            for k in range(j):
                ff = _ff(top, f"md{j}_d{k}_ff{b}")
                assert ff["DI"] == src, f"md{j}_d{k} bit {b}"
                src = ff["Q"]
            for i in range(ROWS):
                ff = _ff(top, f"pe_{i}_{j}.mode_r_ff{b}")
                assert ff["DI"] == src, f"PE ({i}, {j}) mode bit {b}"
                src = ff["Q"]


def test_valid_hops_along_each_row_in_registers_of_its_own(netlist):
    dut, top = netlist
    for i in range(ROWS):
        src = top["ports"]["valid"]["bits"]
        for k in range(i):
            ff = _ff(top, f"v{i}_d{k}_ff0")
            assert ff["DI"] == src, f"v{i}_d{k}"
            src = ff["Q"]
        for j in range(COLS):
            ff = _ff(top, f"pe_{i}_{j}.v_r_ff0")
            assert ff["DI"] == src, f"PE ({i}, {j}) valid"
            src = ff["Q"]
            # the product pipeline's flags: the PE's own too
            for k in range(dut.pe_cls.PRODUCT_LATENCY):
                for flag in "vfl":
                    _ff(top, f"pe_{i}_{j}.{flag}{k}_ff0")
            for flag in "fl":
                _ff(top, f"pe_{i}_{j}.{flag}_r_ff0")
