"""BitSerialMul: 1 and 2 weight bits per cycle, weight widths 1..8, every operand pair,
back-to-back operations (one start every CYCLES clocks) and an abandoned operation."""

import numpy as np
import cocotb

from hw.simulate import tb_params
from sw import numerics
from arith_harness import pack, run_cycles, run_shared, start_clock, unpack

LANES = 8
CASES = [(1, 8), (1, 3), (1, 1), (2, 8), (2, 5), (2, 2)]   # (bits per cycle, weight width)


def configs():
    from hw.arith import BitSerialMul
    return {f"bs{n}w{w}": ((lambda n=n, w=w: BitSerialMul(b_width=w, bits=n)), LANES)
            for n, w in CASES}


def test_arith_bitserial():
    run_shared("test_arith_bitserial")


async def _ops(dut, name, desc, a, b):
    """Issue the pairs back to back; return products (from valid cycles) in order."""
    lanes, cyc, lat = desc["lanes"], desc["cycles"], desc["latency"]
    nb = -(-len(a) // lanes)
    drive = []
    for t in range(nb):
        op = {"a": pack(a[t * lanes:(t + 1) * lanes], 8),
              "b": pack(b[t * lanes:(t + 1) * lanes], desc["in"]["b"][0]), "start": 1}
        drive += [op] + [dict(op, start=0)] * (cyc - 1)
    got = await run_cycles(dut, name, desc, drive, lat + 1)
    valid = [g for g in got if g["valid"] & 1]
    assert len(valid) == nb, f"{name}: {len(valid)} valid cycles for {nb} operations"
    assert [i for i, g in enumerate(got) if g["valid"] & 1] == [t * cyc + lat for t in range(nb)]
    vals = []
    for g in valid:
        vals += unpack(g["p"], desc["out"]["p"][0], lanes, True)
    return np.array(vals[:len(a)], dtype=np.int64)


@cocotb.test()
async def bitserial_exhaustive(dut):
    desc = tb_params()
    await start_clock(dut)
    for n, w in CASES:
        name = f"bs{n}w{w}"
        lo, hi = numerics.int_range(w)
        aa, bb = np.meshgrid(np.arange(-128, 128), np.arange(lo, hi + 1), indexing="ij")
        a, b = aa.ravel().astype(np.int64), bb.ravel().astype(np.int64)
        got = await _ops(dut, name, desc[name], a, b)
        np.testing.assert_array_equal(got, numerics.int_mul(a, b, b_bits=w), strict=True,
                                      err_msg=name)


@cocotb.test()
async def bitserial_restart(dut):
    """A start in the middle of an operation abandons it: only the new product appears."""
    desc = tb_params()["bs2w8"]
    await start_clock(dut)
    lanes = desc["lanes"]
    a = np.full(lanes, -128)
    b1, b2 = np.full(lanes, 77), np.full(lanes, -128)
    drive = [{"a": pack(a, 8), "b": pack(b1, 8), "start": 1}, {},
             {"a": pack(a, 8), "b": pack(b2, 8), "start": 1}]
    got = await run_cycles(dut, "bs2w8", desc, drive, desc["latency"] + 3)
    idx = [i for i, g in enumerate(got) if g["valid"] & 1]
    assert idx == [2 + desc["latency"]], idx
    p = np.array(unpack(got[idx[0]]["p"], 16, lanes, True), dtype=np.int64)
    np.testing.assert_array_equal(p, numerics.int_mul(a, b2), strict=True)
