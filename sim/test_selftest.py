"""The board self-test system (core with preloaded buffers + checker) passes in simulation."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, ReadOnly, ClockCycles


def test_selftest():
    from hw.simulate import run_cocotb
    from hw.soc.selftest import SelfTestSystem
    run_cocotb(SelfTestSystem(rows=4, cols=4, a_depth=256, w_depth=256, out_words=256),
               name="selftest", test_module="test_selftest")


@cocotb.test()
async def passes(dut):
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
    assert int(dut.passed.value), "self-test reports a mismatch"
