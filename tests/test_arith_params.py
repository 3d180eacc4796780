"""hw.arith parameter validation, LATENCY bookkeeping and the fused-adder INIT checks
(elaboration only, no simulator)."""

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal

from hw.arith import (BitSerialMul, BoothMul, FpMul, IntMul, LMul, Pow2Mul, ShiftAddMul,
                      TernaryMul)
from hw.arith._common import fused_add
from sw.numerics import FpFormat


@pytest.mark.parametrize("cls,kw,msg", [
    (IntMul, {"a_width": 19}, "a_width must be an integer in [1, 18], not 19"),
    (IntMul, {"impl": "xilinx"}, "impl must be one of ('auto', 'generic', 'ecp5'), not 'xilinx'"),
    (ShiftAddMul, {"b_width": 3}, "b_width must be an integer in one of (2, 4, 6, 8), not 3"),
    (Pow2Mul, {"e_bits": 4}, "e_bits must be an integer in [1, 3], not 4"),
    (BoothMul, {"acc_width": 10}, "acc_width must be an integer in [16, 64], not 10"),
    (BitSerialMul, {"bits": 3}, "bits must be an integer in one of (1, 2), not 3"),
    (BitSerialMul, {"bits": 2, "b_width": 1}, "b_width must be an integer in [2, 8], not 1"),
    (FpMul, {"output": "float"}, "output must be one of ('fields', 'fixed'), not 'float'"),
    (FpMul, {"pipeline": True}, "pipeline applies to output='fixed' only, not 'fields'"),
])
def test_bad_params_show_the_value(cls, kw, msg):
    with pytest.raises(ValueError) as e:
        cls(**kw)
    assert msg in str(e.value)


def test_type_errors():
    with pytest.raises(TypeError, match="reg_in must be a bool, not 1"):
        TernaryMul(reg_in=1)
    with pytest.raises(TypeError, match="fmt must be an sw.numerics.FpFormat or Minifloat"):
        LMul(fmt="E4M3")
    with pytest.raises(TypeError):
        IntMul(8, 8)                                  # keyword-only


def test_latency():
    assert IntMul().LATENCY == 2 and IntMul(reg_in=False).LATENCY == 1
    assert ShiftAddMul(b_width=8).LATENCY == 3 and ShiftAddMul(b_width=4).LATENCY == 2
    assert BoothMul(mac=True).LATENCY == 3 and BoothMul(pipeline=False, reg_out=False).LATENCY == 1
    assert FpMul(output="fixed").LATENCY == 4
    b = BitSerialMul(b_width=7, bits=2)
    assert (b.CYCLES, b.LATENCY) == (4, 5)


@pytest.mark.parametrize("dut", [ShiftAddMul(b_width=8, impl="ecp5"), Pow2Mul(impl="ecp5"),
                                 Pow2Mul(e_bits=1, impl="ecp5"), TernaryMul(impl="ecp5"),
                                 IntMul(impl="ecp5"), LMul(fmt=FpFormat.BF16)],
                         ids=lambda d: type(d).__name__)
def test_ecp5_mapping_elaborates(dut):
    text = verilog.convert(dut, emit_src=False)
    if getattr(dut, "impl", None) == "ecp5":
        assert ("CCU2C" in text) or ("MULT18X18D" in text)


def test_fused_add_rejects_an_unmappable_generate():
    # x = y = C: the propagate is always 0 and the generate is C, which the CCU2C's LUT2
    # (inputs A and B) cannot produce
    m = Module()
    a, b, c = Signal(), Signal(), Signal()
    with pytest.raises(ValueError, match="not a function of inputs A and B"):
        fused_add(m, [([a, b, c], lambda A, B, C: C, lambda A, B, C: C)], ecp5=True, name="bad")


@pytest.mark.parametrize("a_width,b_width,a_signed,b_signed",
                         [(8, 8, True, True), (8, 17, True, True), (18, 18, True, True),
                          (8, 16, False, False), (5, 16, True, False)])
def test_mult18x18d_pins_stay_off_the_router(tmp_path, a_width, b_width, a_signed, b_signed):
    """The synthesized MULT18X18D (hw.arith._common.mult18x18d): the operand in the port's
    top bits (low pins constant 0, which nextpnr ties in the DSP's tile), no connection on the
    pins no register uses, and CE0 / RST0 / SIGNED* / SOURCE* from LUT4 constants of its own
    (a constant there would join one chip-wide net)."""
    import json
    import subprocess
    from hw.netlist import _yosys
    dut = IntMul(a_width=a_width, b_width=b_width, a_signed=a_signed, b_signed=b_signed,
                 impl="ecp5")
    (tmp_path / "top.v").write_text(verilog.convert(dut, name="top", emit_src=False))
    subprocess.run([_yosys(), "-q", "-p", "read_verilog top.v; synth_ecp5 -top top -json top.json"],
                   cwd=tmp_path, check=True)
    cells = json.loads((tmp_path / "top.json").read_text())["modules"]["top"]["cells"].values()
    luts = {c["connections"]["Z"][0]: int(c["parameters"]["INIT"], 2) for c in cells
            if c["type"] == "LUT4" and all(c["connections"][p] == ["0"] for p in "ABCD")}
    (dsp,) = [c for c in cells if c["type"] == "MULT18X18D"]
    pins = dsp["connections"]
    for port, w in (("A", a_width), ("B", b_width)):
        assert [pins[f"{port}{i}"] for i in range(18 - w)] == [["0"]] * (18 - w)
        assert all(pins[f"{port}{i}"] != ["0"] for i in range(18 - w, 18))
    for i in (1, 2, 3):
        for sig in ("CLK", "CE", "RST"):
            assert f"{sig}{i}" not in pins or pins[f"{sig}{i}"] == ["x"]
    want = {"CE0": 1, "RST0": 0, "SIGNEDA": a_signed, "SIGNEDB": b_signed, "SOURCEA": 0,
            "SOURCEB": 0}
    for pin, value in want.items():
        (bit,) = pins[pin]
        assert luts.get(bit) == (0xFFFF if value else 0), pin
    assert len(luts) == 2
