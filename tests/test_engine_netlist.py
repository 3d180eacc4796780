"""The systolic array's hop registers in the synthesized ECP5 netlist.

Every PE on an anti-diagonal of the array holds the same delayed ``mode`` and flags, so
Yosys' ``opt_merge`` folded them into one register per diagonal that drove PEs far apart
(the 85F ``dsp8s`` build's slowest path). Checked here on what ``synth_ecp5`` makes of a
small array: each PE keeps registers of its own, chained from its neighbour's; and each
sparse DSP chain keeps its own copy of the control its adders and accumulators use.
"""

import json
import subprocess

import pytest
from amaranth.back import verilog

from hw.netlist import _yosys
from hw.systolic.engine import SystolicEngine

ROWS, COLS = 3, 4


def _synth(dut, tmp, ports=None):
    """``dut`` through Yosys' ``synth_ecp5``: the top module of its JSON netlist."""
    (tmp / "top.v").write_text(verilog.convert(dut, name="top", ports=ports, emit_src=False))
    subprocess.run([_yosys(), "-q", "-p", "read_verilog top.v; synth_ecp5 -top top -json top.json"],
                   cwd=tmp, check=True)
    return json.loads((tmp / "top.json").read_text())["modules"]["top"]


@pytest.fixture(scope="module")
def netlist(tmp_path_factory):
    dut = SystolicEngine(rows=ROWS, cols=COLS, acc_width=24, impl="ecp5")
    return dut, _synth(dut, tmp_path_factory.mktemp("engine"))


def _ff(top, name):
    cell = top["cells"].get(name)
    assert cell is not None and cell["type"] == "TRELLIS_FF", f"no register {name} of its own"
    return cell["connections"]


def _walk(top, src, names):
    """The registers ``names`` form one chain from net ``src``, each loading the previous."""
    for name in names:
        ff = _ff(top, name)
        assert ff["DI"] == src, f"{name} is not loaded from the register before it"
        src = ff["Q"]


def test_mode_hops_down_each_column_in_registers_of_its_own(netlist):
    _, top = netlist
    for j in range(COLS):
        for b in range(2):
            # column j's skew chain starts at the input (j registers), then one per PE
            _walk(top, top["ports"]["mode"]["bits"][b:b + 1],
                  [f"md{j}_d{k}_ff{b}" for k in range(j)]
                  + [f"pe_{i}_{j}.mode_r_ff{b}" for i in range(ROWS)])


def test_valid_hops_along_each_row_in_registers_of_its_own(netlist):
    dut, top = netlist
    for i in range(ROWS):
        _walk(top, top["ports"]["valid"]["bits"], [f"v{i}_d{k}_ff0" for k in range(i)]
              + [f"pe_{i}_{j}.v_r_ff0" for j in range(COLS)])
        for j in range(COLS):
            # the product pipeline's flags: the PE's own too
            for k in range(dut.pe_cls.PRODUCT_LATENCY):
                for flag in "vfl":
                    _ff(top, f"pe_{i}_{j}.{flag}{k}_ff0")
            for flag in "fl":
                _ff(top, f"pe_{i}_{j}.{flag}_r_ff0")


def test_dsp_chains_each_have_their_own_control(tmp_path):
    """The sparse DSP engine's restart, accumulate-enable and keep bits: one register per
    chain, all loaded from the same shared delay line (one net of ``chains`` sinks), not one
    shared register driving every chain's adders and accumulators."""
    from hw.dsp import SparseDSPChain
    L, chains = 4, 3
    top = _synth(SparseDSPChain(stages=L, chains=chains, m_max=4, impl="ecp5", acc_width=20),
                 tmp_path)
    for bit in [f"restart{j}" for j in range(1, L)] + ["acc_en", "acc_end", "keep"]:
        ffs = [_ff(top, f"c{c}_{bit}_ff0") for c in range(chains)]
        assert len({str(ff["Q"]) for ff in ffs}) == chains, bit
        # keep loads from its own chain's acc_end, the others from the shared line
        want = chains if bit == "keep" else 1
        assert len({str(ff["DI"]) for ff in ffs}) == want, bit


def test_register_kept_apart_refuses_an_init_it_cannot_reset_to():
    """A TRELLIS_FF kept apart resets to 0: another init is an error, not a wrong reset."""
    from amaranth import Module, Signal
    from hw.systolic.util import register
    with pytest.raises(ValueError, match="resets to 0, not 1"):
        register(Module(), Signal(init=1), "r", apart=True)
    register(Module(), Signal(init=1), "r")          # a plain register keeps its init


def test_edge_units_each_register_the_layer_configuration(tmp_path):
    """Each row's edge unit keeps its own copy of the layer configuration (zero point, the
    clamp's lower bound, RAW32, group mode), all loaded from the same configuration bits:
    one configuration register driving every row's clamp was the 85F ``dsp8s`` build's
    slowest path."""
    from amaranth import Elaboratable, Module, Signal
    from hw.core.desc import TOKEN_LAYOUT
    from hw.core.edge import EdgeUnit
    from sw.numerics import OutMode

    rows = 2

    class Top(Elaboratable):
        def __init__(self):
            self.zp, self.relu = Signal(8), Signal()
            self.out_mode, self.group = Signal(OutMode), Signal()
            lay = TOKEN_LAYOUT(tg_bits=2, out_bits=6, rows=rows, cols=4)
            self.units = [EdgeUnit(row=i, cols=4, acc_width=20, token_layout=lay, out_depth=16,
                                   groups=True, impl="ecp5") for i in range(rows)]

        def elaborate(self, platform):
            m = Module()
            for i, eu in enumerate(self.units):
                m.submodules[f"e{i}"] = eu
                m.d.comb += [eu.zp.eq(self.zp), eu.relu.eq(self.relu),
                             eu.out_mode.eq(self.out_mode), eu.group.eq(self.group)]
            return m

    top_ = Top()
    ports = [top_.zp, top_.relu, top_.out_mode, top_.group]
    for eu in top_.units:
        ports += [eu.sum, eu.sum_valid, eu.sum_first, eu.act_sum, eu.tok_in.as_value(),
                  eu.tbl_in.as_value(), eu.wr_addr, eu.wr_data, eu.wr_en, eu.final]
    top = _synth(top_, tmp_path, ports)
    for reg, width in [("zp_r", 8), ("lo_r", 8), ("raw_r", 1), ("group_r", 1)]:
        for b in range(width):
            ffs = [_ff(top, f"e{i}.{reg}_ff{b}") for i in range(rows)]
            assert len({str(ff["Q"]) for ff in ffs}) == rows, (reg, b)
            assert len({str(ff["DI"]) for ff in ffs}) == 1, (reg, b)


def test_core_rows_and_columns_each_register_the_weight_format():
    """Each row's activation arrangement and each column's weight decoder read the layer's
    weight format from a register of their own (a ``TRELLIS_FF`` kept apart), all loaded
    from the same configuration bits: the configuration register's route into the rows'
    arrangement was the 85F ``dsp8s`` build's slowest path on one seed. Checked in the
    core's RTLIL, as the ``keep`` instances reach the netlist as they are (see above)."""
    import re
    from amaranth import Shape
    from amaranth.back import rtlil
    from hw.core import MixCore
    from sw.numerics import WeightFormat
    rows, cols, fmt_bits = 2, 4, Shape.cast(WeightFormat).width
    text = rtlil.convert(MixCore(rows=rows, cols=cols, a_depth=64, w_depth=64, out_depth=64,
                                 chan_depth=16, group_depth=16, pe="mixpe", impl="ecp5"))
    cells = {name: (body, keep) for keep, name, body in re.findall(
        r"(attribute \\keep 1\n\s*)?cell \\TRELLIS_FF \\(cfg_fmt_[xw]\d+_ff\d+)\n(.*?)\n\s*end\n",
        text, re.S)}
    names = [[f"cfg_fmt_x{i}_ff{b}" for i in range(rows)] + [f"cfg_fmt_w{j}_ff{b}"
                                                              for j in range(cols)]
             for b in range(fmt_bits)]
    assert sorted(cells) == sorted(n for bit in names for n in bit)
    for bit in names:
        di = {re.search(r"connect \\DI (.*)", cells[n][0]).group(1) for n in bit}
        q = {re.search(r"connect \\Q (.*)", cells[n][0]).group(1) for n in bit}
        assert len(di) == 1 and len(q) == rows + cols, bit
        assert all(cells[n][1] for n in bit), f"{bit}: not kept"
