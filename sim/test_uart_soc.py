"""The SoC behind its UART (``UARTSoC``, what the board runs, at the 12F size), driven by an
independent UART model (cocotbext-uart): IDENTIFY and a WRITE/READ round trip over the serial
line; a break on the line and bytes sent while the device replies (more than its receive FIFO
holds) are counted in STATUS (``frame_errors``, ``overruns``), and the device keeps working:
the CHAN and GROUP tables round-trip, COUNTERS answers, LOAD_LAYER refuses what the core
does not compute."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer
from cocotbext.uart import UartSink, UartSource

from hw.simulate import run_cocotb, tb_params
from sw import protocol as P
from sw.numerics import WeightFormat
from sw.protocol import Buffer, ErrorCode, Opcode

CLK_NS = 50                    # 20 MHz
BAUD = 1_250_000               # 16 clock cycles per bit, 800 ns (the model counts whole ns)
DEVICE = "12F"


def test_uart_soc():
    from hw.sizes import core_size
    from hw.soc.top import UARTSoC
    soc = UARTSoC(clk_freq=1e9 / CLK_NS, baud=BAUD, timeout=1 << 14,
                  **core_size(DEVICE).geometry())
    from hw.netlist import vpi_top_only
    vlt, args = vpi_top_only("uart_soc")       # the test touches only the top-level ports
    run_cocotb(soc, name="uart_soc", test_module="test_uart_soc",
               params={"fifo": soc.RX_FIFO_DEPTH, "info": soc.soc.link.info.pack().hex()},
               extra_sources=vlt, build_args=args)


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
    from hw.sizes import core_size
    size = core_size(DEVICE)
    info = P.DeviceInfo.unpack(await h.ok(P.identify(seq=1), Opcode.IDENTIFY))
    assert info == P.DeviceInfo.unpack(bytes.fromhex(tb_params()["info"])), info
    assert info.version == P.PROTOCOL_VERSION == 6, info
    assert info.clock_hz == round(1e9 / CLK_NS), info
    assert (info.rows, info.cols) == (size.rows, size.cols), info
    assert (info.chan_bytes, info.group_bytes) == (8 * size.chan_depth, 4 * size.group_depth)
    assert (info.act_bytes, info.max_layers, info.layer_kinds) == \
        (size.act_bytes, size.max_layers, 0b11), info
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

    # the per-channel and per-group tables round-trip through the core (last bytes too)
    for buf, seq in ((Buffer.CHAN, 8), (Buffer.GROUP, 10)):
        size_b = info.buffer_size(buf)
        tab = bytes(rng.randrange(256) for _ in range(24))
        await h.ok(P.write(buf, size_b - 24, tab, seq=seq), Opcode.WRITE)
        assert await h.ok(P.read(buf, size_b - 24, 24, seq=seq + 1), Opcode.READ) == tab, buf
    # ... in buffers of their own (a table write landing in A would show here)
    n = min(len(data), info.group_bytes)
    assert await h.ok(P.read(Buffer.A, 0, n, seq=12), Opcode.READ) == data[:n]
    rep = await h.cmd(P.read(Buffer.GROUP, info.group_bytes, 1, seq=13))
    assert rep.status == ErrorCode.BAD_ADDRESS, rep
    # COUNTERS (five u48, per run: nothing ran yet); LOAD_LAYER takes the core's formats and
    # group sizes only
    c = P.Counters.unpack(await h.ok(P.counters(seq=14), Opcode.COUNTERS))
    assert c == P.Counters(0, 0, 0, 0, 0), c
    unsupported = [f for f in WeightFormat if not info.supports_format(f)]
    bad_group = [g for g in (32, 64, 128) if not info.supports_group(g)]
    for kw in [dict(fmt=f) for f in unsupported[:1]] + [dict(group=g) for g in bad_group[:1]]:
        rep = await h.cmd(P.load_layer(P.LayerDescriptor(4, 8, 4, **kw), seq=15))
        assert rep.status == ErrorCode.BAD_PARAM, (kw, rep)
    await h.ok(P.load_layer(P.LayerDescriptor(4, 8, 4), seq=16), Opcode.LOAD_LAYER)
    st = P.Status.unpack(await h.ok(P.status(seq=17), Opcode.STATUS))
    assert st.loaded and (st.frame_errors, st.link_errors) == (1, 0), st
    # a run (raw output): the counters count it
    await h.ok(P.run(seq=18), Opcode.RUN)
    c = P.Counters.unpack(await h.ok(P.counters(seq=19), Opcode.COUNTERS))
    assert c.cycles >= c.busy > 0 and c.macs == 4 * 8 * 4, c
