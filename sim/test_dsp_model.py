"""IntMul on the ECP5 MULT18X18D (impl="ecp5") under the behavioural model
``hw/arith/models/MULT18X18D.v``, bit-exact vs ``sw.numerics.int_mul``.

Every register mode the project uses (reg_in / reg_out on or off), every sign combination of
INT8 operands over all 65,536 operand pairs, and the epilogue's two partial-product shapes
(16-bit unsigned x 16-bit unsigned, and the accumulator's signed high part x 16-bit unsigned
for every accumulator width a shipped or tested core has) on a 65,536-pair grid of edge and
random values. A raw MULT18X18D whose SIGNEDA / SIGNEDB change every cycle checks that the
model registers each sign together with its operand. A second build checks that a mode the
model does not implement stops the simulation instead of simulating wrongly.
"""

import numpy as np
import pytest
import cocotb
from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith.models import ecp5_fabric_model, mult18x18d_model
from hw.netlist import vpi_top_only
from hw.simulate import run_cocotb, tb_params
from sw import numerics
from arith_harness import Lanes, start_clock, sweep

#: lanes per configuration: the C++ grows with the DSP instances (each an inlined model),
#: the Python-driven sweep with 65,536 / LANES cycles per configuration; 4 balances the two
LANES = 4
#: signed high parts narrower than 16 bits, acc_bits(max_k) - 16 for max_k 64 ... 4096 (the
#: high partial products of the retired core v1's epilogue; kept as signed x unsigned
#: shapes of odd widths)
HI_WIDTHS = sorted({numerics.acc_bits(k) - 16 for k in (64, 128, 1024, 2048, 4096)})
#: (a_signed, b_signed, reg_in, reg_out): every sign combination with both registers, and
#: every register combination signed x signed
INT8_MODES = {
    "ss_rr": (True, True, True, True), "ss_r0": (True, True, True, False),
    "ss_0r": (True, True, False, True), "ss_00": (True, True, False, False),
    "su_rr": (True, False, True, True), "us_rr": (False, True, True, True),
    "uu_rr": (False, False, True, True),
}


class DynSignDSP(wiring.Component):
    """One MULT18X18D with input and output registers whose sign inputs are ports."""

    LATENCY = 2

    def __init__(self):
        super().__init__({"a": In(18), "b": In(18), "sa": In(1), "sb": In(1), "p": Out(36)})

    def elaborate(self, platform):
        m = Module()
        ports = {f"i_A{i}": self.a[i] for i in range(18)}
        ports.update({f"i_B{i}": self.b[i] for i in range(18)})
        ports.update({f"i_C{i}": Const(0, 1) for i in range(18)})
        ports.update({f"o_P{i}": self.p[i] for i in range(36)})
        for i in range(4):
            ports[f"i_CLK{i}"] = ClockSignal("sync") if i == 0 else Const(0, 1)
            ports[f"i_CE{i}"] = Const(1, 1)
            ports[f"i_RST{i}"] = Const(0, 1)
        m.submodules.dsp = Instance(
            "MULT18X18D", **ports, i_SIGNEDA=self.sa, i_SIGNEDB=self.sb,
            i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
            p_RESETMODE="SYNC", p_GSR="DISABLED")
        return m


class BadModeDSP(wiring.Component):
    """A MULT18X18D in a mode the model does not implement (MULT_BYPASS)."""

    def __init__(self):
        super().__init__({"a": In(18), "p": Out(36)})

    def elaborate(self, platform):
        m = Module()
        ports = {f"i_A{i}": self.a[i] for i in range(18)}
        ports.update({f"o_P{i}": self.p[i] for i in range(36)})
        m.submodules.dsp = Instance("MULT18X18D", **ports, i_CLK0=ClockSignal("sync"),
                                    p_REG_OUTPUT_CLK="CLK0", p_MULT_BYPASS="ENABLED")
        # a register keeps the sync domain (and the harness's clk port) alive
        r = Signal()
        m.d.sync += r.eq(self.a[0])
        return m


def configs():
    from hw.arith import IntMul
    c = {name: ((lambda sa=sa, sb=sb, ri=ri, ro=ro: IntMul(
        a_signed=sa, b_signed=sb, reg_in=ri, reg_out=ro, impl="ecp5")), LANES)
        for name, (sa, sb, ri, ro) in INT8_MODES.items()}
    # unsigned 16-bit x multiplier: the low partial products of the edge unit's
    # requantization (hw/core/edge.py)
    c["epi_lo"] = (lambda: IntMul(a_width=16, b_width=numerics.REQUANT_MULT_BITS,
                                  a_signed=False, b_signed=False, impl="ecp5"), LANES)
    for w in HI_WIDTHS:
        c[f"epi_hi{w}"] = ((lambda w=w: IntMul(a_width=w, b_width=numerics.REQUANT_MULT_BITS,
                                               b_signed=False, impl="ecp5")), LANES)
    c["dynsign"] = (DynSignDSP, LANES)
    return c


def test_dsp_model():
    h = Lanes(configs())
    for d in h.desc.values():
        # arith_harness samples the outputs in the same step as it writes that cycle's
        # inputs, so a combinational product (LATENCY 0) is seen one sample later; a model
        # with an extra register would still show up one sample later than that
        d["latency"] = max(d["latency"], 1)
    vlt, args = vpi_top_only("dsp_model")
    # the default -Os: each configuration is one module instantiated per lane, so the DSP
    # model's C++ is no longer repeated per lane (~0.25 MB of C++, not 1.9 MB), and the
    # runtime library's objects come from the shared cache (hw.objcache)
    run_cocotb(h.verilog("dsp_model"), name="dsp_model", test_module="test_dsp_model",
               params=h.desc, testcase="int8_all_pairs,epilogue_shapes,signs_follow_operands",
               extra_sources={**mult18x18d_model(), **ecp5_fabric_model(), **vlt}, build_args=args)


def test_dsp_model_refuses_unmodelled_mode(capfd):
    """MULT_BYPASS="ENABLED" must stop the simulation with the model's message."""
    vlt, args = vpi_top_only("dsp_model_bad")
    # the simulator exits non-zero at $fatal (RuntimeError from the runner); had it run,
    # bad_mode_runs would fail (AssertionError)
    with pytest.raises((AssertionError, RuntimeError)):
        run_cocotb(BadModeDSP(), name="dsp_model_bad", test_module="test_dsp_model",
                   testcase="bad_mode_runs", extra_sources={**mult18x18d_model(), **vlt},
                   build_args=args)
    out = capfd.readouterr()
    assert 'MULT_BYPASS = "ENABLED" is not modelled' in out.out + out.err


def _values(bits: int, signed: bool, n: int, rng) -> np.ndarray:
    """All ``bits``-wide values if there are at most ``n``, else ``n`` of them: the range's
    edges, +-powers of two and their neighbours, the rest random."""
    lo, hi = numerics.int_range(bits, signed=signed)
    if hi - lo + 1 <= n:
        return np.arange(lo, hi + 1, dtype=np.int64)
    edge = {lo, lo + 1, hi, hi - 1, 0, 1, -1}
    for k in range(bits):
        edge |= {(1 << k) - 1, 1 << k, (1 << k) + 1, -(1 << k), -(1 << k) - 1, -(1 << k) + 1}
    vals = sorted(v for v in edge if lo <= v <= hi)
    rest = rng.integers(lo, hi + 1, size=4 * n)
    seen = set(vals)
    for v in rest:
        if len(vals) == n:
            break
        if int(v) not in seen:
            seen.add(int(v))
            vals.append(int(v))
    assert len(vals) == n
    return np.array(vals, dtype=np.int64)


def _grid(a_vals, b_vals):
    aa, bb = np.meshgrid(a_vals, b_vals, indexing="ij")
    return aa.ravel(), bb.ravel()


@cocotb.test()
async def int8_all_pairs(dut):
    """Every INT8 / UINT8 operand pair in every sign combination and register mode."""
    desc = tb_params()
    await start_clock(dut)
    for name, (sa, sb, _, _) in INT8_MODES.items():
        a, b = _grid(np.arange(*np.add(numerics.int_range(8, signed=sa), (0, 1))),
                     np.arange(*np.add(numerics.int_range(8, signed=sb), (0, 1))))
        assert len(a) == 65536
        got = await sweep(dut, name, desc[name], {"a": a, "b": b})
        want = numerics.int_mul(a, b, a_bits=8, b_bits=8, a_signed=sa, b_signed=sb)
        np.testing.assert_array_equal(got["p"], want, strict=True, err_msg=name)


@cocotb.test()
async def epilogue_shapes(dut):
    """The requant epilogue's partial products: 65,536 pairs each, edges plus random."""
    desc = tb_params()
    await start_clock(dut)
    rng = np.random.default_rng(7)
    mb = numerics.REQUANT_MULT_BITS
    shapes = [("epi_lo", 16, False)] + [(f"epi_hi{w}", w, True) for w in HI_WIDTHS]
    for name, aw, asg in shapes:
        a_vals = _values(aw, asg, min(256, 1 << aw), rng)
        b_vals = _values(mb, False, 65536 // len(a_vals), rng)
        a, b = _grid(a_vals, b_vals)
        assert len(a) == 65536
        got = await sweep(dut, name, desc[name], {"a": a, "b": b})
        want = numerics.int_mul(a, b, a_bits=aw, b_bits=mb, a_signed=asg, b_signed=False)
        np.testing.assert_array_equal(got["p"], want, strict=True, err_msg=name)


@cocotb.test()
async def signs_follow_operands(dut):
    """SIGNEDA / SIGNEDB change every cycle with their operands (18-bit, random)."""
    desc = tb_params()["dynsign"]
    await start_clock(dut)
    rng = np.random.default_rng(8)
    n = 1 << 15
    raw_a = rng.integers(0, 1 << 18, size=n)
    raw_b = rng.integers(0, 1 << 18, size=n)
    raw_a[:64] = [0, 1, (1 << 17) - 1, 1 << 17, (1 << 18) - 1] * 12 + [0] * 4  # edges
    sa = rng.integers(0, 2, size=n)
    sb = rng.integers(0, 2, size=n)
    got = await sweep(dut, "dynsign", desc, {"a": raw_a, "b": raw_b, "sa": sa, "sb": sb})
    for s_a in (0, 1):
        for s_b in (0, 1):
            sel = (sa == s_a) & (sb == s_b)
            a = numerics.wrap_int(raw_a[sel], 18, signed=bool(s_a))
            b = numerics.wrap_int(raw_b[sel], 18, signed=bool(s_b))
            want = numerics.int_mul(a, b, a_bits=18, b_bits=18, a_signed=bool(s_a),
                                    b_signed=bool(s_b))
            # P is 36 bits; read it back in the signedness of the product
            p = numerics.wrap_int(got["p"][sel], 36, signed=bool(s_a or s_b))
            np.testing.assert_array_equal(p, want, strict=True, err_msg=f"sa={s_a} sb={s_b}")


@cocotb.test()
async def bad_mode_runs(dut):
    """Only reached if the model failed to stop an unmodelled mode: fail then."""
    await start_clock(dut)
    raise AssertionError("MULT18X18D model simulated MULT_BYPASS='ENABLED' instead of stopping")
