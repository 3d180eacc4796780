"""BoothMul: exhaustive multiplier sweeps and the carry-save MAC against sw.numerics.mac_wrap.

The MAC check is the TPE paper's: the accumulator stays redundant, and
``(acc_sum + acc_carry) mod 2**acc_width`` must equal the exact running sum (wrapped).
"""

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from arith_harness import run_shared, start_clock, sweep

LANES = 8
ACC = 20      # small on purpose: 256 x 16384 overflows it, so the wrap is exercised


def configs():
    from hw.arith import BoothMul
    return {
        "b8": (lambda: BoothMul(b_width=8), LANES),
        "b4": (lambda: BoothMul(b_width=4, reg_in=False), LANES),
        "b3": (lambda: BoothMul(b_width=3, reg_out=False), LANES),
        "mac": (lambda: BoothMul(b_width=8, mac=True, acc_width=ACC), 4),
    }


def test_arith_booth():
    run_shared("test_arith_booth")


@cocotb.test()
async def booth_exhaustive(dut):
    desc = tb_params()
    await start_clock(dut)
    for name, b_bits in (("b8", 8), ("b4", 4), ("b3", 3)):
        lo, hi = numerics.int_range(b_bits)
        aa, bb = np.meshgrid(np.arange(-128, 128), np.arange(lo, hi + 1), indexing="ij")
        a, b = aa.ravel().astype(np.int64), bb.ravel().astype(np.int64)
        got = await sweep(dut, name, desc[name], {"a": a, "b": b})
        np.testing.assert_array_equal(got["p"], numerics.int_mul(a, b, b_bits=b_bits),
                                      strict=True, err_msg=name)


@cocotb.test()
async def booth_mac_carry_save(dut):
    """Random and extreme operand streams, clear at random points, en gaps, wraparound."""
    desc = tb_params()["mac"]
    lanes = desc["lanes"]
    await start_clock(dut)
    rng = np.random.default_rng(4)
    steps = 3000
    a = rng.integers(-128, 128, (steps, lanes))
    b = rng.integers(-128, 128, (steps, lanes))
    a[:300], b[:300] = -128, -128                 # 300 x 16384 > 2**19: wraps
    a[300:400], b[300:400] = 127, -128
    en = (rng.random(steps) < 0.8).astype(np.int64)
    clr = (rng.random(steps) < 0.02).astype(np.int64)
    clr[0] = en[0] = 1
    from arith_harness import pack, run_cycles, unpack
    drive = [{"a": pack(a[t], 8), "b": pack(b[t], 8), "en": en[t], "clr": clr[t]}
             for t in range(steps)]
    got = await run_cycles(dut, "mac", desc, drive, desc["latency"] + 1)
    lat = desc["latency"]
    act = en.astype(bool)
    for lane in range(lanes):
        want = numerics.mac_wrap(numerics.int_mul(a[act, lane], b[act, lane]), clr[act], ACC)
        rows = [g for g, e in zip(got[lat:lat + steps], act) if e]
        acc = np.array([unpack(r["acc"], ACC, lanes, True)[lane] for r in rows], dtype=np.int64)
        s = np.array([unpack(r["acc_sum"], ACC, lanes, False)[lane] for r in rows], dtype=np.int64)
        c = np.array([unpack(r["acc_carry"], ACC, lanes, False)[lane] for r in rows], dtype=np.int64)
        np.testing.assert_array_equal(acc, want, strict=True)
        np.testing.assert_array_equal(numerics.wrap_int(s + c, ACC), want, strict=True)
