"""FpMul (exact) and LMul, every pair of codes (256 x 256 for the FP8 formats, all pairs for
E3M2 / E2M1 / E2M1 x E4M3), random pairs for BF16; bit-exact against sw.numerics."""

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from sw.numerics import FpFormat as F
from arith_harness import run_shared, start_clock, sweep

LANES = 8

FPMUL = {"fp_e4m3": (F.E4M3, F.E4M3, "fields"), "fp_e5m2": (F.E5M2, F.E5M2, "fields"),
         "fp_e2m1_e4m3": (F.E2M1, F.E4M3, "fields"), "fpx_e4m3": (F.E4M3, F.E4M3, "fixed"),
         "fpx_e5m2": (F.E5M2, F.E5M2, "fixed")}
LMUL = {"lm_e4m3": F.E4M3, "lm_e5m2": F.E5M2, "lm_e3m2": F.E3M2, "lm_e2m1": F.E2M1,
        "lm_bf16": F.BF16}


def configs():
    from hw.arith import FpMul, LMul
    c = {n: ((lambda fa=fa, fb=fb, o=o: FpMul(fmt_a=fa, fmt_b=fb, output=o)), LANES)
         for n, (fa, fb, o) in FPMUL.items()}
    c.update({n: ((lambda f=f: LMul(fmt=f)), LANES) for n, f in LMUL.items()})
    return c


def test_arith_fp():
    run_shared("test_arith_fp")


def _pairs(fa, fb):
    aa, bb = np.meshgrid(np.arange(1 << fa.value.width), np.arange(1 << fb.value.width),
                         indexing="ij")
    return aa.ravel().astype(np.int64), bb.ravel().astype(np.int64)


@cocotb.test()
async def fpmul_exhaustive(dut):
    desc = tb_params()
    await start_clock(dut)
    for name, (fa, fb, out) in FPMUL.items():
        a, b = _pairs(fa, fb)
        got = await sweep(dut, name, desc[name], {"a": a, "b": b})
        want = numerics.fp_mul_exact(a, b, fa, fb)
        np.testing.assert_array_equal(got["nan"], want.nan.astype(np.int64), strict=True, err_msg=name)
        np.testing.assert_array_equal(got["inf"], want.inf.astype(np.int64), strict=True, err_msg=name)
        if out == "fields":
            for f in ("sign", "exp", "mant"):
                np.testing.assert_array_equal(got[f], getattr(want, f), strict=True,
                                              err_msg=f"{name}.{f}")
        else:
            fixed = numerics.fp_mul_fixed(a, b, fa, fb)
            np.testing.assert_array_equal(got["p"], fixed, strict=True, err_msg=name)


@cocotb.test()
async def lmul_exhaustive(dut):
    desc = tb_params()
    await start_clock(dut)
    for name, f in LMUL.items():
        if f is F.BF16:
            rng = np.random.default_rng(16)
            a = rng.integers(0, 1 << 16, 1 << 16)
            b = rng.integers(0, 1 << 16, 1 << 16)
            edge = np.array([0, 0x8000, 0x0001, 0x3F80, 0xBF80, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0,
                             0x0080, 0x0100, 0x3FFF, 0x3F81])      # zero, subnormal, 1, max, inf, NaN
            ea, eb = np.meshgrid(edge, edge, indexing="ij")
            a = np.concatenate([a, ea.ravel()]).astype(np.int64)
            b = np.concatenate([b, eb.ravel()]).astype(np.int64)
        else:
            a, b = _pairs(f, f)
        got = await sweep(dut, name, desc[name], {"a": a, "b": b})
        np.testing.assert_array_equal(got["p"], numerics.lmul(a, b, f), strict=True, err_msg=name)
