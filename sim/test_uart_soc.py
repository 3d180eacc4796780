"""The SoC behind its UART (``UARTSoC``, what the board runs), driven by an independent UART
model (cocotbext-uart): IDENTIFY and a WRITE/READ round trip over the serial line; a break
on the line and bytes sent while the device replies (more than its receive FIFO holds) are
counted in STATUS (``frame_errors``, ``overruns``), and the device keeps working."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer
from cocotbext.uart import UartSink, UartSource

from hw.simulate import run_cocotb, tb_params
from sw import protocol as P
from sw.protocol import Buffer, Opcode

CLK_NS = 50                    # 20 MHz
BAUD = 1_250_000               # 16 clock cycles per bit, 800 ns (the model counts whole ns)
SIZE = dict(rows=2, cols=2, a_depth=128, w_depth=128, out_words=64)


def test_uart_soc():
    from hw.soc.top import UARTSoC
    soc = UARTSoC(clk_freq=1e9 / CLK_NS, baud=BAUD, timeout=1 << 14, **SIZE)
    from hw.netlist import vpi_top_only
    vlt, args = vpi_top_only("uart_soc")       # the test touches only the top-level ports
    run_cocotb(soc, name="uart_soc", test_module="test_uart_soc",
               params={"fifo": soc.RX_FIFO_DEPTH}, extra_sources=vlt, build_args=args)


class Host:
    def __init__(self, dut):
        self.dut = dut
        self.source = UartSource(dut.rx, baud=BAUD)
        self.sink = UartSink(dut.tx, baud=BAUD)
        self.parser = P.FrameParser()

    async def cmd(self, frame: bytes, *, after: bytes = b"", bit_times: int = 20000):
        """Send ``frame`` (and ``after`` right behind it), return the one reply frame."""
        await self.source.write(frame + after)
        frames = []
        for _ in range(bit_times // 10):
            await Timer(10 * 1e9 / BAUD, unit="ns")
            frames += self.parser.feed(bytes(self.sink.read_nowait()))
            if frames and self.source.empty() and not self.sink.active:
                await Timer(40 * 1e9 / BAUD, unit="ns")      # nothing more may come
                frames += self.parser.feed(bytes(self.sink.read_nowait()))
                assert len(frames) == 1, frames
                return frames[0]
        raise AssertionError(f"no reply to {frame[:6].hex()}")

    async def ok(self, frame: bytes, opcode) -> bytes:
        return P.parse_reply(await self.cmd(frame), opcode)


@cocotb.test()
async def counters_and_recovery(dut):
    fifo = tb_params()["fifo"]
    dut.rx.value = 1
    cocotb.start_soon(Clock(dut.clk, CLK_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 40)
    h = Host(dut)
    info = P.DeviceInfo.unpack(await h.ok(P.identify(seq=1), Opcode.IDENTIFY))
    assert info.clock_hz == round(1e9 / CLK_NS) and (info.rows, info.cols) == (2, 2), info
    st = P.Status.unpack(await h.ok(P.status(seq=2), Opcode.STATUS))
    assert (st.frame_errors, st.overruns, st.link_errors) == (0, 0, 0), st

    # a break: the line held low for 30 bit times is one framing error, then nothing
    dut.rx.value = 0
    await Timer(30 * 1e9 / BAUD, unit="ns")
    dut.rx.value = 1
    await Timer(12 * 1e9 / BAUD, unit="ns")
    st = P.Status.unpack(await h.ok(P.status(seq=3), Opcode.STATUS))
    assert (st.frame_errors, st.overruns) == (1, 0), st

    # a READ reply of 200 bytes takes 2000 bit times; 150 bytes sent right behind the
    # request meanwhile: the FIFO and the receiver hold fifo + 1, the rest is lost and counted
    rng = random.Random(1)
    data = bytes(rng.randrange(256) for _ in range(200))
    await h.ok(P.write(Buffer.A, 0, data, seq=4), Opcode.WRITE)
    extra = 150
    rep = await h.cmd(P.read(Buffer.A, 0, 200, seq=5), after=bytes(extra))   # zeros: hunted
    assert P.parse_reply(rep, Opcode.READ) == data
    st = P.Status.unpack(await h.ok(P.status(seq=6), Opcode.STATUS))
    lost = st.overruns
    assert extra - (fifo + 2) <= lost <= extra - fifo, (st, fifo)
    assert (st.frame_errors, st.link_errors) == (1, 0), st
    # and the device still answers correctly
    assert await h.ok(P.read(Buffer.A, 50, 10, seq=7), Opcode.READ) == data[50:60]
