"""Testbench driver for :class:`hw.systolic.core.MpGemmCore` (used by tests and benchmarks)."""

import numpy as np
import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, FallingEdge, ReadOnly, ClockCycles, First

from sw import layout
from sw.numerics import OutMode, Requant
from sw.protocol import Buffer, ErrorCode


class CoreTB:
    """Drives the core's host bus and command interface; monitors the output writes."""

    def __init__(self, dut, cfg):
        self.dut = dut
        self.rows, self.cols = cfg["rows"], cfg["cols"]
        self.cfg = cfg
        self.writes = []          # (word address, byte-enable) of every output-buffer write
        self._mon = None

    async def reset(self):
        d = self.dut
        cocotb.start_soon(Clock(d.clk, 10, unit="ns").start())
        for s in ("bus_sel", "bus_addr", "bus_wdata", "bus_we", "bus_re", "start", "cfg_m",
                  "cfg_k", "cfg_n", "cfg_out_mode", "cfg_mult", "cfg_shift", "cfg_zp", "cfg_relu",
                  "abort"):
            getattr(d, s).value = 0
        d.rst.value = 1
        await ClockCycles(d.clk, 2)
        d.rst.value = 0
        await RisingEdge(d.clk)
        if self.cfg.get("monitor", True):
            self._mon = cocotb.start_soon(self._monitor())

    async def _monitor(self):
        d = self.dut
        while True:
            await RisingEdge(d.clk)
            await ReadOnly()
            if int(d.e4_v.value):
                self.writes.append(int(d.e4_idx.value))

    async def write(self, buf: Buffer, data: bytes, base: int = 0):
        """One byte per cycle, driven on the falling edge."""
        d = self.dut
        for i, b in enumerate(data):
            await FallingEdge(d.clk)
            d.bus_sel.value = int(buf)
            d.bus_we.value = 1
            d.bus_addr.value = base + i
            d.bus_wdata.value = b
        await FallingEdge(d.clk)
        d.bus_we.value = 0

    async def read(self, buf: Buffer, n: int, base: int = 0) -> bytes:
        """Pipelined reads, one address per cycle; data arrives READ_LATENCY cycles later."""
        d = self.dut
        lat = self.cfg["read_latency"]
        out = bytearray()
        for i in range(n + lat - 1):
            await FallingEdge(d.clk)
            d.bus_sel.value = int(buf)
            d.bus_re.value = int(i < n)
            d.bus_addr.value = base + min(i, n - 1)
            await RisingEdge(d.clk)
            await ReadOnly()
            if i >= lat - 1:
                out.append(int(d.bus_rdata.value))
        await FallingEdge(d.clk)
        d.bus_re.value = 0
        return bytes(out)

    async def run(self, M, K, N, rq: Requant | None, *, timeout=None):
        """Configure, start, wait for done. Returns (error code, counters dict)."""
        d = self.dut
        await FallingEdge(d.clk)
        d.cfg_m.value, d.cfg_k.value, d.cfg_n.value = M, K, N
        if rq is None:
            d.cfg_out_mode.value = int(OutMode.RAW32)
        else:
            d.cfg_out_mode.value = int(OutMode.INT8)
            d.cfg_mult.value = rq.multiplier
            d.cfg_shift.value = rq.shift
            d.cfg_zp.value = rq.zero_point & 0xFF
            d.cfg_relu.value = int(rq.relu)
        self.writes.clear()
        await FallingEdge(d.clk)
        d.start.value = 1
        await FallingEdge(d.clk)
        d.start.value = 0
        tiles = -(-M // self.rows) * -(-N // self.cols)
        period = max(K + 1, self.cfg["tile_period_min"])
        limit = timeout or (tiles * period + 200 + 4 * (self.rows + self.cols) + self.rows * self.cols)
        # let the simulator run free until done (no Python work per cycle)
        await First(RisingEdge(d.done), ClockCycles(d.clk, limit))
        await ReadOnly()
        if not int(d.done.value):
            raise AssertionError(f"core did not finish {M}x{K}x{N} within {limit} cycles")
        err = ErrorCode(int(d.error.value))
        cnt = {n: int(getattr(d, "cnt_" + n).value) for n in ("cycles", "busy", "stall", "macs")}
        await RisingEdge(d.clk)
        await ReadOnly()
        assert not int(d.busy.value), "busy still high after done"
        return err, cnt

    async def load(self, a, w):
        """Write ``a`` (M x K) and ``w`` (K x N) into the A and W buffers."""
        await self.write(Buffer.A, layout.a_image(a, self.rows))
        await self.write(Buffer.W, layout.w_image(w, self.cols))

    async def gemm(self, a, w, rq: Requant | None = None):
        """Load a and w, run, read back the result matrix; checks each output written once."""
        await self.load(a, w)
        return await self.compute(a.shape[0], a.shape[1], w.shape[1], rq)

    async def compute(self, M, K, N, rq: Requant | None = None):
        """Run on the operands already loaded, read back the result matrix; checks each
        output written once. Returns (result, counters)."""
        err, cnt = await self.run(M, K, N, rq)
        assert err == ErrorCode.OK, f"core refused {M}x{K}x{N}: {err!r}"
        mode = OutMode.RAW32 if rq is None else OutMode.INT8
        # exactly-once delivery: every element index written once, nothing else
        if self._mon is not None:
            got_idx = np.sort(np.array(self.writes, dtype=np.int64))
            np.testing.assert_array_equal(got_idx, np.arange(M * N, dtype=np.int64), strict=True)
        data = await self.read(Buffer.OUT, layout.out_size(M, N, mode))
        return layout.decode_out(data, M, N, mode), cnt
