"""The board self-test system (MixCore + the checker that loads, runs and reads back a stored
GEMM) passes in simulation at the geometry of the board's self-test top, and reports a
mismatch when its golden ROM is wrong in its last byte."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, ReadOnly, ClockCycles

from hw.simulate import tb_params


def _run(corrupt=None):
    from hw.netlist import vpi_top_only
    from hw.simulate import run_cocotb
    from hw.sizes import SELFTEST_GEOMETRY
    from hw.soc.selftest import SelfTestSystem
    system = SelfTestSystem(**SELFTEST_GEOMETRY)
    if corrupt is not None:
        system.selftest.expected[corrupt] ^= 1
    vlt, args = vpi_top_only("selftest")       # only done / passed are watched
    run_cocotb(system, name="selftest", test_module="test_selftest",
               params={"expect_pass": corrupt is None}, extra_sources=vlt, build_args=args)


def test_selftest():
    _run()


def test_selftest_detects_mismatch():
    _run(corrupt=(-1, -1))       # the last byte read back: every compare happens


@cocotb.test()
async def selftest(dut):
    expect_pass = tb_params()["expect_pass"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    for _ in range(20000):
        await RisingEdge(dut.clk)
        await ReadOnly()
        if int(dut.done.value):
            break
    assert int(dut.done.value), "self-test never finished"
    if expect_pass:
        assert int(dut.passed.value), "self-test reports a mismatch"
    else:
        assert not int(dut.passed.value), "self-test missed a wrong golden byte"
