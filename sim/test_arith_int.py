"""hw.arith integer multipliers, exhaustive over every operand pair, bit-exact vs sw.numerics.

IntMul (portable path; the MULT18X18D path is exercised by synthesis in hw.report),
ShiftAddMul b = 2, 4, 8, Pow2Mul, TernaryMul, in the Verilator build that all the
multiplier-library tests share (sim/arith_harness.py).
"""

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from arith_harness import run_shared, start_clock, sweep

LANES = 8


def configs():
    from hw.arith import IntMul, ShiftAddMul, Pow2Mul, TernaryMul
    return {
        "int8x8": (lambda: IntMul(impl="generic"), LANES),
        "int8x4u": (lambda: IntMul(b_width=4, b_signed=False, reg_in=False, impl="generic"), LANES),
        "sa2": (lambda: ShiftAddMul(b_width=2, impl="generic"), LANES),
        "sa4": (lambda: ShiftAddMul(b_width=4, impl="generic"), LANES),
        "sa8": (lambda: ShiftAddMul(b_width=8, impl="generic"), LANES),
        "sa8np": (lambda: ShiftAddMul(b_width=8, pipeline=False, reg_in=False, impl="generic"), LANES),
        "pow2": (lambda: Pow2Mul(e_bits=3, impl="generic"), LANES),
        "pow2e2": (lambda: Pow2Mul(e_bits=2, reg_out=False, impl="generic"), LANES),
        "tern": (lambda: TernaryMul(impl="generic"), LANES),
    }


def test_arith_int():
    run_shared("test_arith_int")


def _all_pairs(b_bits, b_signed=True):
    a = np.arange(-128, 128, dtype=np.int64)
    lo, hi = numerics.int_range(b_bits, signed=b_signed)
    b = np.arange(lo, hi + 1, dtype=np.int64)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    return aa.ravel(), bb.ravel()


@cocotb.test()
async def int_products_exhaustive(dut):
    """Every INT8 x INTb pair through IntMul and ShiftAddMul (65,536 pairs for b = 8)."""
    desc = tb_params()
    await start_clock(dut)
    for name, b_bits, b_signed in (("int8x8", 8, True), ("int8x4u", 4, False), ("sa2", 2, True),
                                   ("sa4", 4, True), ("sa8", 8, True), ("sa8np", 8, True)):
        a, b = _all_pairs(b_bits, b_signed)
        got = await sweep(dut, name, desc[name], {"a": a, "b": b})
        want = numerics.int_mul(a, b, b_bits=b_bits, b_signed=b_signed)
        np.testing.assert_array_equal(got["p"], want, strict=True, err_msg=name)


@cocotb.test()
async def pow2_exhaustive(dut):
    """Every INT8 activation x every +-2**e code."""
    desc = tb_params()
    await start_clock(dut)
    for name, e_bits in (("pow2", 3), ("pow2e2", 2)):
        a = np.repeat(np.arange(-128, 128, dtype=np.int64), 1 << (e_bits + 1))
        codes = np.tile(np.arange(1 << (e_bits + 1), dtype=np.int64), 256)
        got = await sweep(dut, name, desc[name], {"a": a, "b": codes})
        want = numerics.pow2_mul(a, codes, e_bits)
        np.testing.assert_array_equal(got["p"], want, strict=True, err_msg=name)


@cocotb.test()
async def ternary_exhaustive(dut):
    """Every INT8 activation x every 2-bit code (including the unused 0b10 = 0)."""
    desc = tb_params()
    await start_clock(dut)
    a = np.repeat(np.arange(-128, 128, dtype=np.int64), 4)
    codes = np.tile(np.arange(4, dtype=np.int64), 256)
    got = await sweep(dut, "tern", desc["tern"], {"a": a, "b": codes})
    want = numerics.ternary_mul(a, codes)
    np.testing.assert_array_equal(got["p"], want, strict=True)
