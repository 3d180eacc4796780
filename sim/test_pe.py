"""PE: exhaustive over a slice of operand pairs, random tiles, tile restart and drain shift."""

import numpy as np
import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, ReadOnly

from hw.simulate import run_cocotb, tb_params
from sw import numerics

ACC = 24


def test_pe():
    from hw.systolic.pe import PE
    run_cocotb(PE(acc_width=ACC), name="pe", test_module="test_pe", params={"acc": ACC})


async def _reset(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for s in ("a", "w", "valid", "first", "last", "shift_in", "shift_en"):
        getattr(dut, s).value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def _run_tiles(dut, tiles):
    """Stream tiles (lists of (a, w)) back to back; return every captured shadow value."""
    got = []

    async def monitor():
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if int(dut.captured.value):
                got.append(dut.shadow.value.to_signed())

    mon = cocotb.start_soon(monitor())
    for tile in tiles:
        for idx, (a, w) in enumerate(tile):
            dut.a.value = int(a) & 0xFF
            dut.w.value = int(w) & 0xFF
            dut.valid.value = 1
            dut.first.value = int(idx == 0)
            dut.last.value = int(idx == len(tile) - 1)
            await RisingEdge(dut.clk)
    dut.valid.value = 0
    for _ in range(4):
        await RisingEdge(dut.clk)
    mon.cancel()
    return got


@cocotb.test()
async def exhaustive_slice(dut):
    """Every activation against a slice of weights (incl. -128, -1, 0, 1, 127): single-MAC tiles."""
    await _reset(dut)
    ws = np.array([-128, -127, -64, -1, 0, 1, 2, 63, 127], dtype=np.int64)
    a_all = np.arange(-128, 128, dtype=np.int64)
    pairs = [(a, w) for w in ws for a in a_all]
    got = await _run_tiles(dut, [[p] for p in pairs])
    want = np.array([numerics.gemm([[a]], [[w]])[0, 0] for a, w in pairs], dtype=np.int64)
    np.testing.assert_array_equal(np.array(got, dtype=np.int64), want, strict=True)


@cocotb.test()
async def random_tiles(dut):
    """Random tiles of random length, back to back; extremes included (K x -128 x -128)."""
    await _reset(dut)
    rng = np.random.default_rng(1)
    tiles = [[(-128, -128)] * 64, [(127, -128)] * 64, [(5, 7)]]
    tiles += [list(zip(rng.integers(-128, 128, n), rng.integers(-128, 128, n)))
              for n in rng.integers(1, 40, 60)]
    got = await _run_tiles(dut, tiles)
    want = np.array([numerics.gemm(np.array([[a for a, _ in t]]), np.array([[w] for _, w in t]))[0, 0]
                     for t in tiles], dtype=np.int64)
    np.testing.assert_array_equal(np.array(got, dtype=np.int64), want, strict=True)


@cocotb.test()
async def drain_shift(dut):
    """shift_en moves shift_in into shadow; a capture wins over a shift."""
    await _reset(dut)
    dut.shift_in.value = 12345
    dut.shift_en.value = 1
    await RisingEdge(dut.clk)
    dut.shift_en.value = 0
    await ReadOnly()
    assert dut.shadow.value.to_signed() == 12345
    await RisingEdge(dut.clk)
    dut.shift_in.value = (-77) & ((1 << ACC) - 1)
    dut.shift_en.value = 1
    await RisingEdge(dut.clk)
    dut.shift_en.value = 0
    await ReadOnly()
    assert dut.shadow.value.to_signed() == -77
