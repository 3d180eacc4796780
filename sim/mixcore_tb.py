"""Testbench driver for :class:`hw.core.MixCore`: host bus, layer descriptor, runs, and a
host-side image of the OUT space that checks every run writes its result and nothing else."""

import numpy as np
import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, FallingEdge, ReadOnly, ClockCycles

from sw import layout, numerics
from sw.numerics import OutMode, WeightFormat
from sw.protocol import ErrorCode

#: LAYER_LAYOUT field -> (offset, width), passed in by the test (the testbench has no Amaranth)
GROUP_CODE = {None: 0, 32: 1, 64: 2, 128: 3}


class MixCoreTB:
    def __init__(self, dut, params):
        self.dut = dut
        self.p = params
        self.rows, self.cols = params["rows"], params["cols"]
        self.out_image = bytearray(params["out_bytes"])    # what OUT must hold

    async def reset(self):
        d = self.dut
        cocotb.start_soon(Clock(d.clk, 10, unit="ns").start())
        for s in ("bus_sel", "bus_addr", "bus_wdata", "bus_we", "bus_re", "start", "cfg", "abort"):
            getattr(d, s).value = 0
        d.rst.value = 1
        await ClockCycles(d.clk, 2)
        d.rst.value = 0
        await RisingEdge(d.clk)
        # OUT keeps what earlier tests in this simulation wrote: start the image from it
        self.out_image = bytearray(await self.read(2, self.p["checked_out_bytes"]))

    async def write(self, buf, data: bytes, base: int = 0):
        d = self.dut
        for i, b in enumerate(data):
            await FallingEdge(d.clk)
            d.bus_sel.value = int(buf)
            d.bus_we.value = 1
            d.bus_addr.value = base + i
            d.bus_wdata.value = int(b)
        await FallingEdge(d.clk)
        d.bus_we.value = 0

    async def read(self, buf, n: int, base: int = 0) -> bytes:
        return bytes(v for _, v in await self._reads(buf, [base + i for i in range(n)]))

    async def write_then_read(self, buf, addr: int, value: int, cycles: int):
        """Write ``value`` at ``addr``, then read ``addr`` in each of the next ``cycles``
        cycles; returns per read (``bus_wbusy`` in the cycle it was issued, the byte read)."""
        return await self._reads(buf, [addr] * cycles, write=value)

    async def _reads(self, buf, addrs, write=None):
        """Read ``addrs`` one per cycle (``write``: first write that byte at ``addrs[0]``, in
        the cycle before); returns per read (``bus_wbusy`` when issued, the byte read)."""
        d = self.dut
        lat = self.p["read_latency"]
        n = len(addrs)
        if n == 0:
            return []
        if write is not None:
            await FallingEdge(d.clk)
            d.bus_sel.value = int(buf)
            d.bus_addr.value = addrs[0]
            d.bus_wdata.value = write
            d.bus_we.value = 1
        busy, data = [], []
        for i in range(n + lat - 1):
            await FallingEdge(d.clk)
            d.bus_we.value = 0
            d.bus_sel.value = int(buf)
            d.bus_re.value = int(i < n)
            d.bus_addr.value = addrs[min(i, n - 1)]
            if i < n:
                busy.append(bool(int(d.bus_wbusy.value)))
            await RisingEdge(d.clk)
            await ReadOnly()
            if i >= lat - 1:
                data.append(int(d.bus_rdata.value))
        await FallingEdge(d.clk)
        d.bus_re.value = 0
        return list(zip(busy, data))

    async def write_late(self, buf, image: bytes, first: int, base: int = 0):
        """Write ``image`` with its first ``first`` bytes inverted; :meth:`write_last` puts
        them right after the other loads, so the run starts the cycle after they are on the
        bus (the rows a run reads first, written last)."""
        await self.write(buf, bytes(b ^ 0xFF for b in image[:first]) + image[first:], base)
        self._late = (buf, image[:first], base)

    async def write_last(self):
        if getattr(self, "_late", None):
            buf, data, base = self._late
            self._late = None
            await self.write(buf, data, base)

    def pack_cfg(self, **fields) -> int:
        word = 0
        for name, (off, width) in self.p["cfg_fields"].items():
            v = int(fields.get(name, 0))
            word |= (v & ((1 << width) - 1)) << off
        return word

    async def start(self, **fields):
        d = self.dut
        await FallingEdge(d.clk)
        d.cfg.value = self.pack_cfg(**fields)
        d.start.value = 1
        await FallingEdge(d.clk)
        d.start.value = 0

    async def wait_done(self, timeout: int):
        d = self.dut
        for _ in range(timeout):
            await RisingEdge(d.clk)
            await ReadOnly()
            if int(d.done.value):
                err = ErrorCode(int(d.error.value))
                cnt = {k: int(getattr(d, f"cnt_{k}").value)
                       for k in ("cycles", "busy", "stall", "macs", "dq_stall")}
                await FallingEdge(d.clk)
                return err, cnt
        raise AssertionError(f"core not done after {timeout} cycles")

    async def run_layer(self, a, q, *, fmt, group=None, requant=None, out_mode=None,
                        timeout=None, w_last=False):
        """Load operands and tables, run, read back; returns (result, counters).

        ``group``: a ``numerics.GroupQuant`` or None; ``requant``: a ``ChannelRequant``
        (per-channel tables), a ``Requant`` (the descriptor's scalar form) or None (RAW32).
        ``w_last``: the first row of every W bank is written wrong first and right last,
        the cycle before the start (see :meth:`write_late`).
        """
        R, C = self.rows, self.cols
        M, K = a.shape
        N = q.shape[1]
        fmt = WeightFormat(fmt)
        w_img = layout.weight_image(numerics.pack_weights(q, fmt), C)
        if w_last:
            await self.write_late(1, w_img, C)
        await self.write(0, layout.act_image(a, R))
        if not w_last:
            await self.write(1, w_img)
        fields = dict(m=M, k=K, n=N, fmt=int(fmt), group=GROUP_CODE[group.size if group else None])
        if group is not None:
            await self.write(4, layout.group_table_image(group))
        return await self._run(fields, requant, out_mode, timeout,
                               f"run {M}x{K}x{N} {fmt.name} G={group and group.size}")

    async def _run(self, fields, requant, out_mode, timeout, what):
        """Load the requantization (CHAN table or the descriptor's scalar form), start the
        layer ``fields``, wait, read OUT back and check that nothing outside the result was
        written; returns (result, counters)."""
        M, N, R = fields["m"], fields["n"], self.rows
        mode = OutMode.RAW32 if requant is None else OutMode.INT8
        if out_mode is not None:
            mode = out_mode
        fields["out_mode"] = int(mode)
        if isinstance(requant, numerics.ChannelRequant):
            await self.write(3, layout.chan_table_image(requant))
            fields.update(chan=1, zp=requant.zero_point, relu=int(requant.relu))
        elif isinstance(requant, numerics.Requant):
            fields.update(chan=0, mult=requant.multiplier, shift=requant.shift,
                          zp=requant.zero_point, relu=int(requant.relu))
        await self.write_last()
        await self.start(**fields)
        err, cnt = await self.wait_done(timeout or self.p["watchdog"] + 1000)
        assert err == ErrorCode.OK, f"{what}: {err!r}"
        pos = layout.result_positions(M, N, R, mode)
        used = max(self.p["checked_out_bytes"], int(pos.max()) + 1)
        data = await self.read(2, used)
        res = layout.decode_result(data, M, N, R, mode)
        # every byte outside the result keeps what it held before
        new = bytearray(self.out_image)
        for p in np.ravel(pos):
            new[p] = data[p]
        assert bytes(new[:used]) == bytes(data[:used]), "the run wrote outside its result"
        self.out_image = new
        return res, cnt

    async def run_dsp_layer(self, a, sparse, *, fmt, requant=None, w_base=0, timeout=None,
                            w_last=False):
        """A layer on the sparse DSP engine: A striped for the pattern, DSPW records at
        ``w_base``, tables as :meth:`run_layer`; returns (result, counters, DSPW image).
        ``w_last``: every chain's first record written wrong first and right last."""
        R, C = self.rows, self.cols
        L, packed = self.p["dsp_stages"], self.p["dsp_packed"]
        M, K = a.shape
        N = sparse.ncols
        pat = sparse.pattern
        await self.write(0, layout.dsp_act_image(a, rows=R, stages=L, pattern=pat))
        share = self.p.get("dsp_share", 1)
        w_img = layout.dsp_weight_image(sparse, cols=C, stages=L, packed=packed, share=share)
        chains = layout.dsp_chains(cols=C, packed=packed)
        ch = layout.dsp_chain_stride(chains)
        if share > 1:
            # the device reads only each index group's first chain's indices: garbage in the
            # others' index bytes (8..10) must change nothing
            img = np.frombuffer(w_img, dtype=np.uint8).reshape(-1, ch, 16).copy()
            rng = np.random.default_rng(len(w_img))
            for c in range(chains):
                if c % share:
                    img[:, c, 8:11] = rng.integers(0, 256, (img.shape[0], 3))
            w_img = img.tobytes()
        if w_last:
            await self.write_late(8, w_img, ch * 16, base=w_base * ch * 16)
        else:
            await self.write(8, w_img, base=w_base * ch * 16)
        fields = dict(m=M, k=K, n=N, fmt=int(fmt), sparse=1 + int(pat), w_base=w_base)
        res, cnt = await self._run(fields, requant, None, timeout,
                                   f"DSP run {M}x{K}x{N} {pat.name} {fmt!r}")
        return res, cnt, w_img

    async def run_expect_error(self, code, **fields):
        await self.start(**fields)
        err, _ = await self.wait_done(4000)
        assert err == code, f"{fields}: expected {code!r}, got {err!r}"


async def check_write_ring(tb, targets):
    """Each ``(buffer, address)`` written once, then read every cycle after: ``bus_wbusy``
    is set for exactly ``HOST_WRITE_LATENCY`` cycles after the write, and every read issued
    once it is clear returns the new byte (the host's contract: the link reads only then).
    Targets at the ring's far end (the last bank of each kind) land last."""
    hwl = tb.p["host_write_latency"]
    for buf, addr in targets:
        old = (await tb.read(buf, 1, addr))[0]
        new = old ^ 0xA5
        got = await tb.write_then_read(buf, addr, new, hwl + 4)
        busy = [b for b, _ in got]
        assert busy == [True] * hwl + [False] * 4, (buf, addr, busy)
        late = [v for b, v in got if not b]
        assert late == [new] * len(late), (buf, addr, old, new, got)

