"""Host link (hw.soc.link, protocol 5): every opcode, every error path, resync and a
random-frame fuzz, on two cores: one without layer programs or DSP engine (RUN_PROGRAM is an
unknown opcode, ACT / PROG / LCNT / DSPW have no address space) and one with both (IDENTIFY
reports the DSP engine's fields, DSPW is an address space like the others).

The core is a small Amaranth stub with the ports of ``hw.core.core.core_signature`` (or, with
``programs=True``, ``hw.core.program.program_signature``) and the attributes
``Link.for_core`` reads: byte memories (read latency 1) of small odd sizes, whose host
writes land :data:`WRITE_DELAY` cycles late (``bus_wbusy`` set meanwhile; the program
core's own ACT, PROG and LCNT at once), five (A, W, OUT,
CHAN, GROUP) or all nine, a subset of the weight formats (INT8, INT4) and group sizes (32,
128) so the link's refusals can be tested, a run that stays busy for ``(k % 32) * 16 + 2``
cycles, BAD_SHAPE for a zero or too large dimension, ``abort`` ending a run at once with
ABORTED, and counters that show the configuration the link holds:

* ``cycles``: the held bases ``cfg.w_base``, ``cfg.chan_base``, ``cfg.group_base`` (16 bits
  each, :data:`BASE_FIELDS`); ``busy``: busy cycles; ``macs``: adds ``m * k * n`` per run;
* ``stall``: runs started (16 bits), then the held ``cfg.m`` and ``cfg.n`` (16 bits each);
* ``dq_stall``: the held ``cfg`` fields :data:`DQ_FIELDS` (LSB first, widths of
  ``LAYER_LAYOUT``), then the low bits of ``cfg.k`` up to bit 47.

A program (``prog_start``) keeps the stub busy for ``prog_count * LAYER_CYCLES + 2`` cycles
(long enough for a burst of requests to arrive while it runs), writes
``prog_count`` and the number of programs started so far into LCNT bytes 0 and 1, and ends
with the status in the low 4 bits of PROG byte 0 (so the host chooses it).
"""

import dataclasses
import random

import cocotb
import pytest
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.core.core import core_signature
from hw.core.desc import GROUP_CODES, LAYER_LAYOUT
from hw.core.program import program_signature
from hw.simulate import run_cocotb, tb_params
from sw import protocol as P
from sw.numerics import NMPattern, OutMode, WeightFormat
from sw.protocol import Buffer, ErrorCode, Opcode

TIMEOUT = 200
CLOCK_HZ = 50_000_000
#: layers a program of the stub may have (PROG and LCNT hold that many records)
MAX_LAYERS = 5
#: busy cycles of the stub per program layer
LAYER_CYCLES = 128
#: host address space of each buffer (bytes); not powers of two, so the checks are exact
BUF_BYTES = {Buffer.A: 300, Buffer.W: 200, Buffer.OUT: 400, Buffer.CHAN: 56, Buffer.GROUP: 100,
             Buffer.ACT: 333, Buffer.PROG: MAX_LAYERS * P.PROGRAM_RECORD,
             Buffer.LCNT: MAX_LAYERS * P.LCNT_RECORD, Buffer.DSPW: 13 * P.DSPW_RECORD}
#: the buffers of a core without layer programs (and without DSP engine)
CORE_BUFFERS = (Buffer.A, Buffer.W, Buffer.OUT, Buffer.CHAN, Buffer.GROUP)
#: the program core's own memories (``hw.core.program``), written without the ring
LOCAL_BUFFERS = (Buffer.ACT, Buffer.PROG, Buffer.LCNT)
#: the DSP engine of the stub with programs: 8 stages, 4 chains, three patterns
DSP_PATTERNS = (NMPattern.DENSE4, NMPattern.NM2_4, NMPattern.NM2_8)
SIZE_NAMES = {Buffer.A: "a_bytes", Buffer.W: "w_bytes", Buffer.OUT: "out_bytes",
              Buffer.CHAN: "chan_bytes", Buffer.GROUP: "group_bytes", Buffer.ACT: "act_bytes",
              Buffer.DSPW: "dsp_bytes"}
FORMATS = (WeightFormat.INT8, WeightFormat.INT4)
GROUP_SIZES = (32, 128)
ADDR_BITS = 9
#: cycles a host write takes to land in the stub's memories (``bus_wbusy`` set meanwhile), as
#: through the core's host-write ring: longer than a reply header and a READ frame, so a
#: link that read without waiting for ``bus_wbusy`` would read old bytes
WRITE_DELAY = 64
#: descriptor fields the stub shows in ``cnt_dq_stall`` (LSB first)
DQ_FIELDS = ("out_mode", "fmt", "group", "chan", "mult", "shift", "zp", "relu", "sparse")
#: low bits of ``cfg.k`` that follow them in ``cnt_dq_stall``
K_BITS = 48 - sum(LAYER_LAYOUT[f].width for f in DQ_FIELDS)
#: descriptor fields the stub shows in ``cnt_cycles`` (LSB first)
BASE_FIELDS = ("w_base", "chan_base", "group_base")
#: group size -> the descriptor's 2-bit code the core sees
GROUP_CODE = {size: code for code, size in GROUP_CODES.items()}
assert K_BITS >= 6 and GROUP_CODE == {0: 0, 32: 1, 64: 2, 128: 3}


def buffer_sizes(programs: bool) -> dict:
    """Host address space of every buffer of the stub (0: the core has no such buffer)."""
    return {b: BUF_BYTES[b] if programs or b in CORE_BUFFERS else 0 for b in Buffer}


class StubCore(wiring.Component):
    """Same ports/attributes as ``hw.core.MixCore`` (for the link), trivial behaviour; with
    ``programs`` those of ``hw.core.program.ProgramCore``."""

    READ_LATENCY = 1
    WATCHDOG = 123456
    MIN_PERIOD = 29
    PE_KIND = P.PeKind.MIXPE

    def __init__(self, programs: bool = False):
        self.rows, self.cols, self.max_k, self.addr_bits = 4, 4, 64, ADDR_BITS
        self.programs = programs
        for buf, name in SIZE_NAMES.items():
            if programs or buf in CORE_BUFFERS:
                setattr(self, name, BUF_BYTES[buf])
        self.out_depth = self.out_bytes // (4 * self.rows)
        self.formats = FORMATS
        self.group_sizes = GROUP_SIZES
        if programs:
            self.max_layers = MAX_LAYERS
            self.layer_kinds = (P.LayerKind.GEMM, P.LayerKind.MAXPOOL)
            self.dsp_stages, self.dsp_chains, self.dsp_packed, self.dsp_share = 8, 4, False, 2
            self.dsp_patterns = DSP_PATTERNS
            sig = program_signature(addr_bits=self.addr_bits)
        else:
            sig = core_signature(addr_bits=self.addr_bits)
        super().__init__(sig)

    def config_hash(self):
        return 0x1234ABCD

    def elaborate(self, platform):
        m = Module()
        rsel = Signal(Buffer)
        m.d.sync += rsel.eq(self.bus_sel)
        rdata = []
        # the stub's own LCNT writes (programs), and PROG byte 0 (a program's status)
        l_we, l_addr, l_data = Signal(), Signal(1), Signal(8)
        prog0 = None
        # host writes through a delay line of WRITE_DELAY cycles
        line = [(self.bus_sel, self.bus_addr, self.bus_wdata, self.bus_we & ~self.busy)]
        for i in range(WRITE_DELAY):
            regs = (Signal(Buffer, name=f"wd_sel{i}"), Signal(ADDR_BITS, name=f"wd_addr{i}"),
                    Signal(8, name=f"wd_data{i}"), Signal(name=f"wd_we{i}"))
            m.d.sync += [r.eq(v) for r, v in zip(regs, line[-1])]
            line.append(regs)
        m.d.comb += self.bus_wbusy.eq(Cat(we for *_, we in line).any())
        w_sel, w_addr, w_data, w_we = line[-1]
        for buf in (Buffer if self.programs else CORE_BUFFERS):
            depth = BUF_BYTES[buf]
            mem = memory.Memory(shape=8, depth=depth, init=[])
            m.submodules[f"mem_{buf.name}"] = mem
            wp, rp = mem.write_port(), mem.read_port()
            if buf in LOCAL_BUFFERS:        # written at once, as ProgramCore's own memories
                host_we = (self.bus_we & ~self.busy & (self.bus_sel == buf)
                           & (self.bus_addr < depth))
                own = l_we if buf == Buffer.LCNT else 0
                m.d.comb += [wp.addr.eq(Mux(own, l_addr, self.bus_addr)),
                             wp.data.eq(Mux(own, l_data, self.bus_wdata)),
                             wp.en.eq(host_we | own)]
            else:
                host_we = w_we & (w_sel == buf) & (w_addr < depth)
                m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(host_we)]
            m.d.comb += [rp.addr.eq(self.bus_addr), rp.en.eq(self.bus_re)]
            rdata.append(rp.data)
            if buf == Buffer.PROG:
                prog0 = mem.read_port()
                m.d.comb += [prog0.addr.eq(0), prog0.en.eq(1)]
        m.d.comb += self.bus_rdata.eq(Array(rdata)[rsel])

        cfg = self.cfg
        raw = cfg.as_value()

        def field(name):
            f = LAYER_LAYOUT[name]
            return raw[f.offset:f.offset + f.width]

        runs = Signal(16)
        m.d.comb += [
            self.cnt_cycles.eq(Cat(*(field(f) for f in BASE_FIELDS))),
            self.cnt_stall.eq(Cat(runs, field("m"), field("n"))),
            self.cnt_dq_stall.eq(Cat(*(field(f) for f in DQ_FIELDS), field("k")[:K_BITS])),
        ]
        left = Signal(16)
        m.d.sync += self.done.eq(0)
        with m.If(self.busy):
            m.d.sync += [self.cnt_busy.eq(self.cnt_busy + 1), left.eq(left - 1)]
            with m.If(self.abort):
                m.d.sync += [self.busy.eq(0), self.done.eq(1), self.error.eq(ErrorCode.ABORTED)]
            with m.Elif(left == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.If(self.start):
            bad = ((cfg.m == 0) | (cfg.k == 0) | (cfg.n == 0) | (cfg.k > self.max_k))
            with m.If(bad):
                m.d.sync += [self.error.eq(ErrorCode.BAD_SHAPE), self.done.eq(1)]
            with m.Else():
                m.d.sync += [self.error.eq(ErrorCode.OK), self.busy.eq(1),
                             left.eq(cfg.k[:5] * 16 + 2), runs.eq(runs + 1),
                             self.cnt_macs.eq(self.cnt_macs + cfg.m * cfg.k * cfg.n)]
        if self.programs:
            programs = Signal(8)            # programs started
            count = Signal(8)
            pending = Signal(2)             # LCNT bytes 0 (count), 1 (programs) to write
            with m.If(self.prog_start):
                m.d.sync += [self.busy.eq(1), left.eq(self.prog_count * LAYER_CYCLES + 2),
                             self.error.eq(prog0.data[:4]), count.eq(self.prog_count),
                             programs.eq(programs + 1), pending.eq(0b11)]
            with m.If(pending[0]):
                m.d.comb += [l_we.eq(1), l_addr.eq(0), l_data.eq(count)]
                m.d.sync += pending[0].eq(0)
            with m.Elif(pending[1]):
                m.d.comb += [l_we.eq(1), l_addr.eq(1), l_data.eq(programs)]
                m.d.sync += pending[1].eq(0)
        return m


class LinkTop(wiring.Component):
    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))
    uart_frame_error: In(1)
    uart_overrun: In(1)

    def __init__(self, programs: bool = False):
        self.programs = programs
        super().__init__()

    def elaborate(self, platform):
        from hw.soc.link import Link
        m = Module()
        m.submodules.core = core = StubCore(self.programs)
        m.submodules.link = link = Link.for_core(core, timeout=TIMEOUT, clock_hz=CLOCK_HZ)
        link.connect_core(m, core)
        m.d.comb += [link.uart_frame_error.eq(self.uart_frame_error),
                     link.uart_overrun.eq(self.uart_overrun)]
        wiring.connect(m, wiring.flipped(self.i_stream), link.i_stream)
        wiring.connect(m, link.o_stream, wiring.flipped(self.o_stream))
        return m


def expected_info(programs: bool = False):
    # written out, not derived from the stub: formats INT8, INT4 -> bits 0, 1; group sizes
    # 32, 128 -> bits 0, 2; layer kinds GEMM, MAXPOOL -> bits 0, 1; DSP patterns DENSE4,
    # NM2_4, NM2_8 -> bits 0, 3, 5
    return P.DeviceInfo(P.PROTOCOL_VERSION, 0x1234ABCD, 4, 4, 300, 200, 400, 25, 64, 0b11,
                        P.MAX_DATA, CLOCK_HZ, TIMEOUT, StubCore.WATCHDOG, StubCore.MIN_PERIOD,
                        P.PeKind.MIXPE, 0b011, 0b101, 56, 100,
                        *((333, 5, 0b11, 8, 4, 0, 0b101001, 208, 2) if programs
                          else (0, 0, 0, 0, 0, 0, 0, 0, 0)))


def seen(d: P.LayerDescriptor) -> dict:
    """What the core must see after LOAD_LAYER ``d`` (as the stub's counters show it)."""
    return dict(m=d.m, n=d.n, k=d.k & ((1 << K_BITS) - 1), out_mode=int(d.out_mode),
                fmt=int(d.fmt), group=GROUP_CODE[d.group], chan=d.chan, mult=d.mult,
                shift=d.shift, zp=d.zp, relu=d.relu, w_base=d.w_base, chan_base=d.chan_base,
                group_base=d.group_base, sparse=d.sparse)


def runs(c: P.Counters) -> int:
    return c.stall & 0xFFFF


def held(c: P.Counters) -> dict:
    """The descriptor fields the core holds, decoded from the stub's counters."""
    out = {"m": c.stall >> 16 & 0xFFFF, "n": c.stall >> 32}
    v = c.dq_stall
    for name in DQ_FIELDS:
        w = LAYER_LAYOUT[name].width
        x, v = v & ((1 << w) - 1), v >> w
        if name == "zp" and x >> (w - 1):
            x -= 1 << w
        out[name] = x
    out["k"] = v
    for i, name in enumerate(BASE_FIELDS):
        out[name] = c.cycles >> 16 * i & 0xFFFF
    return out


def test_stub_observes_every_field():
    """The stub's counters show every descriptor field but nothing else (the decoding the
    cocotb tests rely on), and its signature is the core's (MixCore's, or ProgramCore's)."""
    from hw.core.core import MixCore
    from hw.core.program import ProgramCore
    assert set(DQ_FIELDS) | {"m", "k", "n"} | set(BASE_FIELDS) == \
        {name for name, _ in LAYER_LAYOUT}
    assert sum(LAYER_LAYOUT[f].width for f in DQ_FIELDS) + K_BITS == 48
    assert sum(LAYER_LAYOUT[f].width for f in BASE_FIELDS) == 48
    stub = StubCore()
    assert stub.signature == core_signature(addr_bits=ADDR_BITS)
    mix = MixCore().signature.members
    assert set(stub.signature.members) == set(mix)
    for name, member in stub.signature.members.items():
        if name != "bus_addr":                         # its width is the core's address space
            assert member == mix[name], name
    pstub = StubCore(programs=True)
    assert pstub.signature == program_signature(addr_bits=ADDR_BITS)
    prog = ProgramCore().signature.members
    assert set(pstub.signature.members) == set(prog) == set(mix) | {"prog_start", "prog_count"}
    for name, member in pstub.signature.members.items():
        if name != "bus_addr":
            assert member == prog[name], name
    d = P.LayerDescriptor(0xFFFF, 0xFFFF, 0x1234, OutMode.INT8, 0xBEEF, 63, -128, 1,
                          WeightFormat.INT4, 128, 1, 0x8001, 0x0203, 0xFEDC,
                          sparse=1 + NMPattern.NM2_8)
    f = seen(d)
    c = P.Counters(0x8001 | 0x0203 << 16 | 0xFEDC << 32, 0, 7 | f["m"] << 16 | f["n"] << 32, 0, 0)
    v, off = 0, 0
    for name in DQ_FIELDS:
        w = LAYER_LAYOUT[name].width
        v |= (f[name] & ((1 << w) - 1)) << off
        off += w
    c = dataclasses.replace(c, dq_stall=v | f["k"] << off)
    assert held(c) == f and runs(c) == 7 and c.dq_stall < 1 << 48


#: cocotb tests of this module; all run on both cores (they check ``tb_params()["programs"]``)
COCOTB_TESTS = ("identify_status_counters", "write_read", "layer_run", "run_reply_and_reset_abort",
                "corrupt_frames", "run_program", "fuzz")


@pytest.mark.parametrize("programs", [False, True], ids=["core", "programs"])
def test_link(programs):
    from hw.netlist import vpi_top_only
    name = "link_prog" if programs else "link"
    vlt, args = vpi_top_only(name)             # the tests touch only the top-level ports
    run_cocotb(LinkTop(programs), name=name, test_module="test_link",
               params={"programs": programs}, testcase=",".join(COCOTB_TESTS),
               extra_sources=vlt, build_args=args)


def test_link_params():
    from hw.soc.link import Link
    info = expected_info()
    sig = core_signature(addr_bits=9)
    with pytest.raises(ValueError, match="addr_bits"):
        Link(info=info, addr_bits=0, core_signature=sig)
    with pytest.raises(ValueError, match="exceeds"):
        Link(info=info, addr_bits=8, core_signature=sig)
    # the table buffers are checked against the address space too
    small = dataclasses.replace(info, a_bytes=256, w_bytes=200, out_bytes=256)
    Link(info=small, addr_bits=8, core_signature=sig)._MustUse__silence = True
    for name in ("chan_bytes", "group_bytes", "act_bytes", "dsp_bytes"):
        with pytest.raises(ValueError, match=name):
            Link(info=dataclasses.replace(small, **{name: 257}), addr_bits=8,
                 core_signature=sig)
    with pytest.raises(ValueError, match="timeout"):
        Link(info=dataclasses.replace(info, timeout_cycles=1), addr_bits=9, core_signature=sig)
    with pytest.raises(ValueError, match="version"):
        Link(info=dataclasses.replace(info, version=2), addr_bits=9, core_signature=sig)
    with pytest.raises(TypeError):
        Link(info=None, addr_bits=9, core_signature=sig)
    link = Link(info=info, addr_bits=9, core_signature=sig)
    link._MustUse__silence = True             # constructs; nothing to elaborate
    # the link's core-facing members are the core's, flipped
    for name, member in sig.members.items():
        assert link.signature.members[name] == member.flip(), name
    link = Link.for_core(StubCore(), timeout=TIMEOUT, clock_hz=CLOCK_HZ)
    link._MustUse__silence = True
    assert link.info == expected_info(), link.info
    assert link.read_latency == StubCore.READ_LATENCY and link.dim_bits == 16
    assert not link.programs and "prog_start" not in link.signature.members
    # a core with layer programs: IDENTIFY reports ACT, the program length and the kinds,
    # and the link drives prog_start / prog_count
    psig = program_signature(addr_bits=9)
    link = Link.for_core(StubCore(programs=True), timeout=TIMEOUT, clock_hz=CLOCK_HZ)
    link._MustUse__silence = True
    assert link.info == expected_info(programs=True), link.info
    assert link.programs
    for name in ("prog_start", "prog_count"):
        assert link.signature.members[name] == psig.members[name].flip(), name


def test_crc_processor_matches_host_crc():
    """amaranth.lib.crc with the link's parameters computes the host's CRC (binascii),
    and its match flag fires exactly on a frame body followed by its CRC (MSB first)."""
    from amaranth.sim import Simulator
    from hw.soc.link import CRC_PARAMETERS
    m = Module()
    m.submodules.crc = crc = CRC_PARAMETERS.create()
    rng = random.Random(1)
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(50)]
    cases += [b"123456789"]

    async def bench(ctx):
        for data in cases:
            ctx.set(crc.start, 1)
            await ctx.tick()
            ctx.set(crc.start, 0)
            for b in data:
                ctx.set(crc.data, b)
                ctx.set(crc.valid, 1)
                await ctx.tick()
            ctx.set(crc.valid, 0)
            assert ctx.get(crc.crc) == P.crc16(data), data
            for b in P.crc16(data).to_bytes(2, "big"):
                ctx.set(crc.data, b)
                ctx.set(crc.valid, 1)
                await ctx.tick()
            ctx.set(crc.valid, 0)
            assert ctx.get(crc.match_detected), data

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# -- cocotb side -----------------------------------------------------------------------------

class Host:
    """Cycle loop: pushes queued bytes into i_stream, collects o_stream (optional backpressure)."""

    def __init__(self, dut, seed=0):
        self.dut = dut
        self.txq = bytearray()
        self.rx = bytearray()
        self.parser = P.FrameParser()
        self.frames = []
        self.ready_prob = 1.0
        self.valid_prob = 1.0
        self.cycle = 0
        self.rng = random.Random(seed)
        cocotb.start_soon(self._loop())

    async def _loop(self):
        dut = self.dut
        while True:
            await FallingEdge(dut.clk)
            offer = bool(self.txq) and self.rng.random() < self.valid_prob
            dut.i_stream__valid.value = int(offer)
            if offer:
                dut.i_stream__payload.value = self.txq[0]
            dut.o_stream__ready.value = int(self.rng.random() < self.ready_prob)
            await ReadOnly()
            self.cycle += 1
            if offer and int(dut.i_stream__ready.value):
                del self.txq[0]
            if int(dut.o_stream__valid.value) and int(dut.o_stream__ready.value):
                b = int(dut.o_stream__payload.value)
                self.rx.append(b)
                self.frames += self.parser.feed(bytes([b]))

    async def wait(self, cycles):
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)

    async def idle(self, cycles):
        """Wait until everything is sent and ``cycles`` pass without a reply byte."""
        quiet = 0
        while quiet < cycles:
            n = len(self.rx)
            await RisingEdge(self.dut.clk)
            quiet = quiet + 1 if (len(self.rx) == n and not self.txq) else 0

    async def cmd(self, frame: bytes, max_cycles=20000):
        """Send one request, return its reply frame."""
        start = len(self.frames)
        self.txq += frame
        for _ in range(max_cycles):
            await RisingEdge(self.dut.clk)
            if len(self.frames) > start:
                assert len(self.frames) == start + 1
                return self.frames[start]
        raise AssertionError(f"no reply to {frame[:8].hex()}... within {max_cycles} cycles")

    async def ok(self, frame: bytes, opcode) -> bytes:
        rep = await self.cmd(frame)
        return P.parse_reply(rep, opcode)

    async def err(self, frame: bytes, code, opcode=None):
        rep = await self.cmd(frame)
        assert rep.is_reply, rep
        if opcode is not None:
            assert rep.request == opcode, rep
        assert rep.status == code, (ErrorCode(rep.status).name if rep.status in ErrorCode._value2member_map_
                                    else rep.status, code.name)
        assert rep.data == b"", rep
        return rep


async def _start(dut, seed=0):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.i_stream__valid.value = 0
    dut.i_stream__payload.value = 0
    dut.o_stream__ready.value = 1
    dut.uart_frame_error.value = 0
    dut.uart_overrun.value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    return Host(dut, seed)


async def held_cfg(h) -> dict:
    return held(P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS)))


def programs() -> bool:
    """Inside a cocotb test: whether the core under test runs layer programs."""
    return bool(tb_params().get("programs", False))


def sizes() -> dict:
    """Inside a cocotb test: the host address space of each buffer of the core under test."""
    return buffer_sizes(programs())


def present() -> list:
    """Inside a cocotb test: the buffers the core under test has."""
    return [b for b, n in sizes().items() if n]


@cocotb.test()
async def identify_status_counters(dut):
    h = await _start(dut)
    raw = await h.ok(P.identify(), Opcode.IDENTIFY)
    assert len(raw) == 71, len(raw)
    info = P.DeviceInfo.unpack(raw)
    assert info == expected_info(programs()), info
    assert [f for f in WeightFormat if info.supports_format(f)] == list(FORMATS), info
    assert [g for g in (0, 32, 64, 128) if info.supports_group(g)] == [0, 32, 128], info
    assert [info.buffer_size(b) for b in Buffer] == [sizes()[b] for b in Buffer], info
    # the layer-program fields at the end: ACT size u32, program length u16, kinds u8
    assert raw[55:62] == ((333).to_bytes(4, "little") + bytes([5, 0, 0b11]) if programs()
                          else bytes(7)), raw[55:62].hex()
    # the DSP engine's fields (protocol 5): stages, chains, packed, patterns u8, DSPW size u32;
    # protocol 6: chains per index group u8
    assert raw[62:] == (bytes([8, 4, 0, 0b101001]) + (208).to_bytes(4, "little") + bytes([2])
                        if programs() else bytes(9)), raw[62:].hex()
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert st == P.Status(False, False, ErrorCode.OK, 0, 0, 0), st
    # UART error pulses are counted (16-bit counters)
    for sig, n in ((dut.uart_frame_error, 3), (dut.uart_overrun, 5)):
        for _ in range(n):
            await FallingEdge(dut.clk)
            sig.value = 1
            await FallingEdge(dut.clk)
            sig.value = 0
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.frame_errors, st.overruns, st.link_errors) == (3, 5, 0), st
    # every reply carries its request's tag
    for tag in (1, 77, 255, 0):
        for frame in (P.identify(seq=tag), P.status(seq=tag), P.counters(seq=tag),
                      P.read(Buffer.A, 0, 1, seq=tag), P.read(Buffer.GROUP, 0, 1, seq=tag),
                      P.read(Buffer.LCNT, 0, 1, seq=tag), P.run_program(0, seq=tag),
                      P.pack_frame(0x33, b"", seq=tag)):
            rep = await h.cmd(frame)
            assert rep.seq == tag, (frame.hex(), rep)
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert c == P.Counters(0, 0, 0, 0, 0), c            # nothing loaded or run
    # COUNTERS layout: five u48 LE in the order cycles, busy, stall, macs, dq_stall; a
    # descriptor with the top bits of m, n, k and group_base set shows in bit 47 of cycles,
    # stall and dq_stall
    k = 1 << (K_BITS - 1) | 5
    d = P.LayerDescriptor(0xFFFF, k, 0x8001, OutMode.RAW32, 0x8421, 33, -77, 0,
                          WeightFormat.INT4, 32, 1, 0x0102, 0x7F03, 0x8004)
    await h.ok(P.load_layer(d), Opcode.LOAD_LAYER)
    raw = await h.ok(P.counters(), Opcode.COUNTERS)
    assert len(raw) == 30, len(raw)
    u48 = [int.from_bytes(raw[i:i + 6], "little") for i in range(0, 30, 6)]
    assert u48[0] == 0x0102 | 0x7F03 << 16 | 0x8004 << 32, hex(u48[0])   # bases: bytes 15..20
    assert u48[1] == u48[3] == 0, u48
    assert u48[2] == 0xFFFF << 16 | 0x8001 << 32, hex(u48[2])
    assert u48[4] >> 47 == 1 and held(P.Counters(*u48)) == seen(d), (hex(u48[4]), seen(d))
    await h.ok(P.reset(), Opcode.RESET)
    assert not h.parser.bad_frames and not h.parser.skipped


@cocotb.test()
async def write_read(dut):
    h = await _start(dut, 1)
    h.ready_prob = 0.6            # backpressure on the reply stream
    h.valid_prob = 0.7            # gaps in the request stream
    rng = random.Random(2)
    model = {b: bytearray(sizes()[b]) for b in present()}
    for b in present():           # fill every byte so reads compare against known contents
        size = len(model[b])
        data = bytes(rng.randrange(256) for _ in range(size))
        await h.ok(P.write(b, 0, data), Opcode.WRITE)
        model[b][:] = data
    # every buffer is its own: each reads back what was written to it
    for b in present():
        assert await h.ok(P.read(b, 0, len(model[b])), Opcode.READ) == bytes(model[b]), b
    for _ in range(60):
        b = rng.choice(present())
        size = len(model[b])
        addr = rng.randrange(size)
        n = rng.randrange(1, size - addr + 1)
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(n))
            await h.ok(P.write(b, addr, data), Opcode.WRITE)
            model[b][addr:addr + n] = data
        else:
            got = await h.ok(P.read(b, addr, n), Opcode.READ)
            assert got == bytes(model[b][addr:addr + n]), (b, addr, n)
    # boundaries: last byte is fine, one past the end is refused and writes nothing
    for b in present():
        size = len(model[b])
        await h.ok(P.write(b, size - 1, b"\x5a"), Opcode.WRITE)
        model[b][size - 1] = 0x5A
        await h.ok(P.write(b, size - 3, b"\x01\x02\x03"), Opcode.WRITE)      # ends at the end
        model[b][size - 3:] = b"\x01\x02\x03"
        await h.err(P.write(b, size - 2, b"\x04\x05\x06"), ErrorCode.BAD_ADDRESS, Opcode.WRITE)
        await h.err(P.write(b, size, b"\x07"), ErrorCode.BAD_ADDRESS, Opcode.WRITE)
        await h.err(P.write(b, 0xFFFFFFFF, b"\x01"), ErrorCode.BAD_ADDRESS)
        await h.err(P.write(b, 1 << ADDR_BITS, b"\x01"), ErrorCode.BAD_ADDRESS)
        await h.err(P.read(b, size - 1, 2), ErrorCode.BAD_ADDRESS, Opcode.READ)
        await h.err(P.read(b, size, 1), ErrorCode.BAD_ADDRESS, Opcode.READ)
        await h.err(P.read(b, 0xFFFFFFFF, 1), ErrorCode.BAD_ADDRESS, Opcode.READ)
        assert await h.ok(P.read(b, size - 1, 1), Opcode.READ) == b"\x03"
        assert await h.ok(P.read(b, 0, size), Opcode.READ) == bytes(model[b])
    # a range one buffer holds is refused for a smaller one (the tables are the smallest)
    await h.ok(P.write(Buffer.W, 56, b"\x99"), Opcode.WRITE)
    model[Buffer.W][56] = 0x99
    await h.err(P.write(Buffer.CHAN, 56, b"\x99"), ErrorCode.BAD_ADDRESS)
    await h.err(P.read(Buffer.GROUP, 99, 2), ErrorCode.BAD_ADDRESS)
    assert await h.ok(P.read(Buffer.CHAN, 50, 6), Opcode.READ) == bytes(model[Buffer.CHAN][50:])
    # a core without layer programs has no ACT, PROG or LCNT: no address is in range
    for b in set(Buffer) - set(present()):
        for addr in (0, 1, 300):
            await h.err(P.write(b, addr, b"\x01"), ErrorCode.BAD_ADDRESS, Opcode.WRITE)
            await h.err(P.read(b, addr, 1), ErrorCode.BAD_ADDRESS, Opcode.READ)
    # bad buffer index (also ones whose low bits name a real buffer), bad READ counts,
    # WRITE without data, READ of the wrong length
    for idx in (9, 11, 12, 13, 15, 0x80, 0x84, 0x85, 0x87, 0x88, 0xFF):
        await h.err(P.pack_frame(Opcode.WRITE, bytes([idx]) + b"\0\0\0\0\x11"),
                    ErrorCode.BAD_ADDRESS, Opcode.WRITE)
        await h.err(P.pack_frame(Opcode.READ, bytes([idx]) + b"\0\0\0\0\x01\x00"),
                    ErrorCode.BAD_ADDRESS, Opcode.READ)
    await h.err(P.pack_frame(Opcode.READ, b"\x00\0\0\0\0\x00\x00"), ErrorCode.BAD_LENGTH)
    await h.err(P.pack_frame(Opcode.READ, b"\x03\0\0\0\0\x00\x00"), ErrorCode.BAD_LENGTH)
    await h.err(P.pack_frame(Opcode.READ, b"\x00\0\0\0\0\x01\x10"), ErrorCode.BAD_LENGTH)
    await h.err(P.pack_frame(Opcode.READ, b"\x00\0\0\0\0\x01"), ErrorCode.BAD_LENGTH)
    await h.err(P.pack_frame(Opcode.WRITE, b"\x00\0\0\0\0"), ErrorCode.BAD_LENGTH)
    await h.err(P.pack_frame(Opcode.WRITE, b"\x04\0\0\0\0"), ErrorCode.BAD_LENGTH)
    await h.err(P.pack_frame(Opcode.WRITE, b"\x00\0"), ErrorCode.BAD_LENGTH)
    for b in present():
        assert await h.ok(P.read(b, 0, len(model[b])), Opcode.READ) == bytes(model[b]), b
    assert not h.parser.bad_frames and not h.parser.skipped


@cocotb.test()
async def layer_run(dut):
    h = await _start(dut, 3)
    await h.err(P.run(), ErrorCode.NOT_LOADED, Opcode.RUN)
    await h.err(P.run(wait=False), ErrorCode.NOT_LOADED, Opcode.RUN)
    # every field's refusal; a refused descriptor loads nothing and changes nothing
    base = P.LayerDescriptor(2, 3, 4)
    refused = [dict(out_mode=2), dict(out_mode=5), dict(out_mode=255),
               dict(shift=64), dict(shift=65), dict(shift=255),
               dict(relu=2), dict(relu=255),
               dict(fmt=WeightFormat.INT2), dict(fmt=WeightFormat.TERNARY),
               dict(fmt=WeightFormat.POW2), dict(fmt=5), dict(fmt=7), dict(fmt=8),
               dict(fmt=129), dict(fmt=255),
               dict(group=64),                                    # valid, not supported
               dict(group=1), dict(group=16), dict(group=31), dict(group=33), dict(group=96),
               dict(group=160), dict(group=192), dict(group=255),  # no group size at all
               dict(chan=2), dict(chan=3), dict(chan=255),
               dict(fmt=WeightFormat.INT4, group=32, chan=2),      # one bad field among good
               dict(fmt=WeightFormat.INT2, group=128, chan=1),
               dict(fmt=WeightFormat.INT8, group=64, chan=0)]
    for kw in refused:
        await h.err(P.load_layer(dataclasses.replace(base, **kw)), ErrorCode.BAD_PARAM,
                    Opcode.LOAD_LAYER)
    good = P.load_layer(base)[5:-2]
    assert len(good) == 22
    for body in (good[:15], good[:21], good[:12], good[:20], good + b"\x00", bytes(11),
                 bytes(23), good[:1]):      # good[:15], good[:21]: protocol-3, -4 descriptors
        await h.err(P.pack_frame(Opcode.LOAD_LAYER, body), ErrorCode.BAD_LENGTH)
    await h.err(P.run(), ErrorCode.NOT_LOADED)          # a rejected descriptor loads nothing
    assert await held_cfg(h) == seen(P.LayerDescriptor(0, 0, 0)), await held_cfg(h)
    # the core sees exactly the descriptor's fields (the group size as its 2-bit code, the
    # bases as they are: the link does not check them, the core does at RUN)
    accepted = [
        P.LayerDescriptor(3, 5, 7, OutMode.INT8, 1234, 12, -5, 1, WeightFormat.INT4, 128, 1,
                          1, 2, 3),
        P.LayerDescriptor(0xFFFF, 0xFFFF, 0xFFFF, OutMode.INT8, 0xFFFF, 63, -128, 1,
                          WeightFormat.INT4, 32, 1, 0xFFFF, 0xFFFF, 0xFFFF),
        P.LayerDescriptor(0x8001, 0x0180, 0x7FFE, OutMode.RAW32, 0x8000, 0, 127, 0,
                          WeightFormat.INT8, 0, 0, 0x8000, 0x0001, 0x0100),
        P.LayerDescriptor(1, 2, 3, OutMode.INT8, 1, 1, 1, 0, WeightFormat.INT8, 128, 0),
        P.LayerDescriptor(9, 8, 7, OutMode.RAW32, 0x5A5A, 42, -1, 1, WeightFormat.INT4, 0, 1,
                          0x00FF, 0xFF00, 0x1234),
    ]
    for d in accepted:
        await h.ok(P.load_layer(d), Opcode.LOAD_LAYER)
        assert await held_cfg(h) == seen(d), (d, await held_cfg(h))
        for kw in refused[::3]:                          # a refused one keeps the last good
            await h.err(P.load_layer(dataclasses.replace(d, **kw)), ErrorCode.BAD_PARAM)
        assert await held_cfg(h) == seen(d), (d, await held_cfg(h))
    # DSP layers (protocol 5): the core sees the engine byte for a pattern its DSP engine
    # runs, with any format that engine multiplies (TERNARY is not one of the array's);
    # refused without a DSP engine, for another pattern or an unknown one, with groups, with
    # POW2 weights
    dsp = P.LayerDescriptor(3, 16, 4, OutMode.INT8, 7, 3, 2, 0, WeightFormat.INT4, 0, 1,
                            sparse=1 + NMPattern.NM2_4)
    dsp_ok = [dsp,
              dataclasses.replace(dsp, fmt=WeightFormat.TERNARY, sparse=1 + NMPattern.NM2_8),
              dataclasses.replace(dsp, fmt=WeightFormat.INT8, chan=0,
                                  sparse=1 + NMPattern.DENSE4)]
    dsp_bad = [dict(sparse=1 + NMPattern.NM1_4), dict(sparse=1 + NMPattern.DENSE8),
               dict(sparse=7), dict(sparse=9), dict(sparse=0x84), dict(sparse=255),
               dict(group=32), dict(group=128), dict(fmt=WeightFormat.POW2), dict(fmt=5)]
    for d in dsp_ok:
        if programs():
            await h.ok(P.load_layer(d), Opcode.LOAD_LAYER)
            assert await held_cfg(h) == seen(d), (d, await held_cfg(h))
            for kw in dsp_bad:
                await h.err(P.load_layer(dataclasses.replace(d, **kw)), ErrorCode.BAD_PARAM,
                            Opcode.LOAD_LAYER)
            assert await held_cfg(h) == seen(d), (d, await held_cfg(h))
        else:
            await h.err(P.load_layer(d), ErrorCode.BAD_PARAM, Opcode.LOAD_LAYER)
    d = accepted[0]
    await h.ok(P.load_layer(d), Opcode.LOAD_LAYER)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, True, ErrorCode.OK), st
    t0 = h.cycle
    await h.ok(P.run(), Opcode.RUN)
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert (c.macs, runs(c), c.busy) == (3 * 5 * 7, 1, 5 * 16 + 2), c
    assert held(c) == seen(d), held(c)
    await h.ok(P.run(), Opcode.RUN)                     # the layer stays loaded
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert (c.macs, runs(c)) == (2 * 3 * 5 * 7, 2), c
    assert held(c) == seen(d), held(c)
    assert h.cycle > t0
    # BAD_SHAPE comes from the core through RUN and STATUS
    await h.ok(P.load_layer(P.LayerDescriptor(3, 0, 7)), Opcode.LOAD_LAYER)
    await h.err(P.run(), ErrorCode.BAD_SHAPE, Opcode.RUN)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, True, ErrorCode.BAD_SHAPE), st
    # RUN without waiting: everything touching the core is refused while it runs
    long = P.LayerDescriptor(1, 31, 1, OutMode.INT8, 7, 3, 2, 1, WeightFormat.INT4, 32, 1)
    await h.ok(P.load_layer(long), Opcode.LOAD_LAYER)   # 498 busy cycles
    h.txq += P.run(wait=False) + P.status() + P.write(Buffer.A, 0, b"\x01")
    await h.idle(3)
    rep = [f for f in h.frames[-3:]]
    assert rep[0].request == Opcode.RUN and rep[0].status == ErrorCode.OK, rep
    assert P.Status.unpack(P.parse_reply(rep[1], Opcode.STATUS)).busy, rep
    assert rep[2].status == ErrorCode.BUSY, rep
    h.txq += (P.read(Buffer.A, 0, 1) + P.run() + P.load_layer(P.LayerDescriptor(1, 1, 1))
              + P.write(Buffer.CHAN, 0, b"\x01") + P.read(Buffer.GROUP, 0, 1)
              + P.load_layer(dataclasses.replace(long, fmt=WeightFormat.INT2)))
    await h.idle(3)
    assert [f.status for f in h.frames[-6:]] == [ErrorCode.BUSY] * 6, h.frames[-6:]
    assert await held_cfg(h) == seen(long)              # LOAD_LAYER while busy changed nothing
    await h.wait(500)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, True, ErrorCode.OK), st
    await h.err(P.pack_frame(Opcode.RUN, b"\x02"), ErrorCode.BAD_PARAM)
    await h.err(P.pack_frame(Opcode.RUN, b"\x01\x00"), ErrorCode.BAD_LENGTH)
    # RESET forgets the layer and the last error
    await h.ok(P.load_layer(P.LayerDescriptor(3, 0, 7)), Opcode.LOAD_LAYER)
    await h.err(P.run(), ErrorCode.BAD_SHAPE)
    await h.ok(P.reset(), Opcode.RESET)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, False, ErrorCode.OK), st
    await h.err(P.run(), ErrorCode.NOT_LOADED)
    for op in (Opcode.IDENTIFY, Opcode.STATUS, Opcode.COUNTERS, Opcode.RESET):
        await h.err(P.pack_frame(op, b"\x00"), ErrorCode.BAD_LENGTH, op)
    # bases beyond the buffers are the core's to refuse (BAD_SHAPE at RUN, not BAD_PARAM)
    far = P.LayerDescriptor(2, 3, 4, w_base=0xFFFF, chan_base=0xFFFF, group_base=0xFFFF)
    await h.ok(P.load_layer(far), Opcode.LOAD_LAYER)
    assert await held_cfg(h) == seen(far)
    # malformed requests are not line damage: no link error counted
    assert P.Status.unpack(await h.ok(P.status(), Opcode.STATUS)).link_errors == 0
    assert not h.parser.bad_frames and not h.parser.skipped


@cocotb.test()
async def run_reply_and_reset_abort(dut):
    """RUN replies when the core is done, with its tag; a host that speaks first gives up on
    that reply (STATUS works while the core runs); RESET stops a running core."""
    h = await _start(dut, 8)
    await h.ok(P.load_layer(P.LayerDescriptor(1, 31, 1)), Opcode.LOAD_LAYER)   # 498 busy cycles
    t0 = h.cycle
    rep = await h.cmd(P.run(seq=42))
    assert (rep.request, rep.seq, rep.status) == (Opcode.RUN, 42, ErrorCode.OK), rep
    assert h.cycle - t0 >= 31 * 16, h.cycle - t0       # the reply came after the run
    # a new request while the RUN reply is owed: STATUS answers at once, the RUN reply is
    # dropped (the host gave up on it), nothing else arrives
    n = len(h.frames)
    h.txq += P.run(seq=43)
    await h.wait(60)
    assert len(h.frames) == n, h.frames[n:]
    st = P.Status.unpack(await h.ok(P.status(seq=44), Opcode.STATUS))
    assert st.busy, st
    await h.wait(600)
    assert [f.seq for f in h.frames[n:]] == [44], h.frames[n:]
    # RESET aborts a running core; the reply comes once the core is idle
    busy0 = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS)).busy
    h.txq += P.run(wait=False, seq=45)
    await h.idle(3)
    assert (h.frames[-1].seq, h.frames[-1].status) == (45, ErrorCode.OK)
    rep = await h.cmd(P.reset(seq=46))
    assert (rep.seq, rep.status) == (46, ErrorCode.OK), rep
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, False, ErrorCode.OK), st
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert c.busy - busy0 < 31 * 16, (busy0, c)         # stopped early (stub counts on)
    await h.err(P.run(), ErrorCode.NOT_LOADED)
    assert not h.parser.bad_frames and not h.parser.skipped


@cocotb.test()
async def corrupt_frames(dut):
    h = await _start(dut, 4)
    good = P.write(Buffer.W, 10, b"\xAA\xBB")
    # bad CRC: every single-bit flip after SYNC in the CRC or a non-length field is caught
    for i in range(1, len(good)):
        if i in (2, 3):
            continue                       # length flips are covered below
        for bit in (0, 7):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            rep = await h.cmd(bytes(bad))
            assert rep.status in (ErrorCode.BAD_CRC,), (i, bit, rep)
    await h.ok(P.read(Buffer.W, 0, 1), Opcode.READ)
    # nothing of a damaged WRITE reaches a buffer: not its data, not at its address, not at
    # a corrupted address (every bit of the body flipped in turn)
    before = {b: await h.ok(P.read(b, 0, sizes()[b]), Opcode.READ) for b in present()}
    flips = 0
    for good in (P.write(Buffer.A, 3, b"\x11\x22\x33"), P.write(Buffer.GROUP, 3, b"\x44\x55"),
                 *([P.write(Buffer.PROG, 3, b"\x66")] if programs() else [])):
        for i in range(5, len(good)):
            for bit in range(8):
                bad = bytearray(good)
                bad[i] ^= 1 << bit
                await h.err(bytes(bad), ErrorCode.BAD_CRC, Opcode.WRITE)
                flips += 1
    for b in present():
        assert await h.ok(P.read(b, 0, sizes()[b]), Opcode.READ) == before[b], b
    # a damaged LOAD_LAYER loads nothing either
    good = P.load_layer(P.LayerDescriptor(1, 2, 3, OutMode.INT8, 5, 6, 7, 1, WeightFormat.INT4,
                                          128, 1))
    for i in range(5, len(good)):
        bad = bytearray(good)
        bad[i] ^= 1 << (i % 8)
        await h.err(bytes(bad), ErrorCode.BAD_CRC, Opcode.LOAD_LAYER)
        flips += 1
    assert await held_cfg(h) == seen(P.LayerDescriptor(0, 0, 0))
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert not st.loaded, st
    assert st.link_errors == 2 * (len(P.write(Buffer.W, 10, b"\xAA\xBB")) - 3) + flips, st
    # unknown opcodes (including a reply opcode echoed back; 0x09 is RUN_PROGRAM, tested in
    # run_program)
    for op in (0x00, 0x0A, 0x7F, 0x81, 0x89, 0xFF):
        await h.err(P.pack_frame(op, b"xyz"), ErrorCode.UNKNOWN_OPCODE, op & 0x7F)
    # a length beyond MAX_PAYLOAD is refused at once, the rest is skipped as garbage
    junk = bytes([P.SYNC, Opcode.WRITE]) + (P.MAX_PAYLOAD + 1).to_bytes(2, "little")
    rep = await h.err(junk, ErrorCode.BAD_LENGTH, Opcode.WRITE)
    assert rep.seq == P.UNKNOWN_SEQ, rep
    await h.err(junk + b"\x00\x01\x02", ErrorCode.BAD_LENGTH)
    # LENGTH 0 (no room for the tag) likewise
    await h.err(bytes([P.SYNC, Opcode.IDENTIFY, 0, 0]), ErrorCode.BAD_LENGTH, Opcode.IDENTIFY)
    await h.idle(5)
    # truncated frame: TIMEOUT after `timeout` quiet cycles, then the next frame is fine
    for cut in (1, 2, 3, 4, 5, 7, 13):
        t0 = h.cycle
        rep = await h.cmd(P.write(Buffer.A, 0, b"\x01\x02\x03", seq=9)[:cut])
        assert rep.status == ErrorCode.TIMEOUT and TIMEOUT <= h.cycle - t0 <= TIMEOUT + 40, \
            (cut, rep, h.cycle - t0)
        assert rep.seq == (9 if cut >= 5 else P.UNKNOWN_SEQ), (cut, rep)
        assert P.DeviceInfo.unpack(await h.ok(P.identify(), Opcode.IDENTIFY)) == \
            expected_info(programs())
    # garbage between frames (no SYNC in it) is skipped without a reply
    rng = random.Random(5)
    await h.ok(P.write(Buffer.OUT, 0, b"\x10\x20\x30"), Opcode.WRITE)
    for _ in range(20):
        garbage = bytes(rng.choice([b for b in range(256) if b != P.SYNC])
                        for _ in range(rng.randrange(1, 30)))
        n = len(h.frames)
        h.txq += garbage
        assert await h.ok(P.read(Buffer.OUT, 0, 3), Opcode.READ) == b"\x10\x20\x30"
        assert len(h.frames) == n + 1
    assert not h.parser.bad_frames and not h.parser.skipped


async def lcnt(h) -> tuple:
    """The stub's LCNT bytes 0, 1: the last program's count, the programs started."""
    return tuple(await h.ok(P.read(Buffer.LCNT, 0, 2), Opcode.READ))


@cocotb.test()
async def run_program(dut):
    """RUN_PROGRAM: refused as an unknown opcode by a link whose core has no programs;
    otherwise count 1..max_layers and the NOWAIT flag are checked, the count reaches the
    core, the reply comes when the program ends and carries its status (or at once with
    RUN_NOWAIT), everything else that touches the core is BUSY meanwhile, and RESET stops it."""
    h = await _start(dut, 9)
    if not programs():
        for body in (b"", b"\x01", b"\x01\x00", b"\x01\x01", b"\x00", b"\x05\x02", b"xyz"):
            rep = await h.err(P.pack_frame(Opcode.RUN_PROGRAM, body, seq=66),
                              ErrorCode.UNKNOWN_OPCODE, Opcode.RUN_PROGRAM)
            assert rep.seq == 66, rep
        st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
        assert st == P.Status(False, False, ErrorCode.OK), st
        assert not h.parser.bad_frames and not h.parser.skipped
        return
    # memories keep what earlier tests left: start from a known LCNT and PROG byte 0 (OK)
    await h.ok(P.write(Buffer.LCNT, 0, b"\x00\x00"), Opcode.WRITE)
    await h.ok(P.write(Buffer.PROG, 0, b"\x00"), Opcode.WRITE)
    # malformed: BAD_LENGTH without a count or with more than count and flags
    for body in (b"", b"\x01\x00\x00", b"\x01\x01\x01"):
        await h.err(P.pack_frame(Opcode.RUN_PROGRAM, body), ErrorCode.BAD_LENGTH,
                    Opcode.RUN_PROGRAM)
    # out of range: count 0 or beyond max_layers, flags other than RUN_NOWAIT
    for frame in (P.run_program(0), P.run_program(0, wait=False), P.run_program(MAX_LAYERS + 1),
                  P.run_program(255), P.pack_frame(Opcode.RUN_PROGRAM, b"\x01\x02"),
                  P.pack_frame(Opcode.RUN_PROGRAM, b"\x01\x80"),
                  P.pack_frame(Opcode.RUN_PROGRAM, b"\x01\xff"),
                  P.pack_frame(Opcode.RUN_PROGRAM, b"\x00\x02")):
        await h.err(frame, ErrorCode.BAD_PARAM, Opcode.RUN_PROGRAM)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert st == P.Status(False, False, ErrorCode.OK), st
    assert await lcnt(h) == (0, 0)                      # nothing started
    # a program needs no loaded layer; the reply comes when it ends, with its tag
    c0 = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    t0 = h.cycle
    rep = await h.cmd(P.run_program(3, seq=77))
    assert (rep.opcode, rep.seq, rep.status, rep.data) == (0x89, 77, ErrorCode.OK, b""), rep
    assert h.cycle - t0 >= 3 * LAYER_CYCLES, h.cycle - t0
    assert await lcnt(h) == (3, 1)
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert c.busy - c0.busy == 3 * LAYER_CYCLES + 2 and runs(c) == runs(c0) == 0, (c0, c)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert st == P.Status(False, False, ErrorCode.OK), st
    await h.ok(P.run_program(MAX_LAYERS), Opcode.RUN_PROGRAM)       # the longest
    assert await lcnt(h) == (MAX_LAYERS, 2)
    # the program's status is the reply's and STATUS's last_error (the stub takes it from
    # PROG byte 0)
    for code in (ErrorCode.BAD_SHAPE, ErrorCode.WATCHDOG, ErrorCode.BAD_PARAM):
        await h.ok(P.write(Buffer.PROG, 0, bytes([code])), Opcode.WRITE)
        await h.err(P.run_program(1), code, Opcode.RUN_PROGRAM)
        st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
        assert (st.busy, st.last_error) == (False, code), st
    await h.ok(P.write(Buffer.PROG, 0, b"\x00"), Opcode.WRITE)
    await h.ok(P.run_program(2), Opcode.RUN_PROGRAM)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.last_error) == (False, ErrorCode.OK), st
    assert await lcnt(h) == (2, 6)
    # RUN_NOWAIT: OK at once; while the program runs everything touching the core is BUSY
    await h.ok(P.load_layer(P.LayerDescriptor(1, 3, 1)), Opcode.LOAD_LAYER)
    await h.ok(P.write(Buffer.PROG, 0, bytes([ErrorCode.BAD_SHAPE])), Opcode.WRITE)
    n = len(h.frames)
    h.txq += (P.run_program(4, wait=False, seq=80) + P.status(seq=81)
              + P.write(Buffer.ACT, 0, b"\x01", seq=82) + P.read(Buffer.LCNT, 0, 1, seq=83)
              + P.write(Buffer.PROG, 0, b"\x00", seq=84) + P.run_program(1, seq=85)
              + P.run(seq=86) + P.load_layer(P.LayerDescriptor(2, 2, 2), seq=87)
              + P.read(Buffer.A, 0, 1, seq=88))
    await h.idle(3)
    rep = h.frames[n:]
    assert [(f.request, f.seq) for f in rep] == [
        (Opcode.RUN_PROGRAM, 80), (Opcode.STATUS, 81), (Opcode.WRITE, 82), (Opcode.READ, 83),
        (Opcode.WRITE, 84), (Opcode.RUN_PROGRAM, 85), (Opcode.RUN, 86),
        (Opcode.LOAD_LAYER, 87), (Opcode.READ, 88)], rep
    assert rep[0].status == ErrorCode.OK and rep[0].data == b"", rep[0]
    st = P.Status.unpack(P.parse_reply(rep[1], Opcode.STATUS))
    assert st.busy and st.loaded and st.last_error == ErrorCode.OK, st
    assert [f.status for f in rep[2:]] == [ErrorCode.BUSY] * 7, rep[2:]
    assert await held_cfg(h) == seen(P.LayerDescriptor(1, 3, 1))   # LOAD_LAYER changed nothing
    await h.wait(4 * LAYER_CYCLES + 10)
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, True, ErrorCode.BAD_SHAPE), st
    assert await lcnt(h) == (4, 7)
    assert (await h.ok(P.read(Buffer.PROG, 0, 1), Opcode.READ)) == bytes([ErrorCode.BAD_SHAPE])
    await h.ok(P.write(Buffer.PROG, 0, b"\x00"), Opcode.WRITE)
    # a RUN after a program replies as RUN, a program after a RUN as RUN_PROGRAM
    rep = await h.cmd(P.run(seq=90))
    assert (rep.opcode, rep.seq, rep.status) == (0x85, 90, ErrorCode.OK), rep
    rep = await h.cmd(P.run_program(1, seq=91))
    assert (rep.opcode, rep.seq, rep.status) == (0x89, 91, ErrorCode.OK), rep
    # a host that speaks before the program ends has given up on its reply
    n = len(h.frames)
    h.txq += P.run_program(MAX_LAYERS, seq=92)
    await h.wait(30)
    assert len(h.frames) == n, h.frames[n:]
    st = P.Status.unpack(await h.ok(P.status(seq=93), Opcode.STATUS))
    assert st.busy, st
    await h.wait(MAX_LAYERS * LAYER_CYCLES + 10)
    assert [f.seq for f in h.frames[n:]] == [93], h.frames[n:]
    assert await lcnt(h) == (MAX_LAYERS, 9)
    # RESET stops a running program; the reply comes once the core is idle
    busy0 = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS)).busy
    await h.ok(P.run_program(MAX_LAYERS, wait=False, seq=94), Opcode.RUN_PROGRAM)
    t0 = h.cycle
    rep = await h.cmd(P.reset(seq=95))
    assert (rep.seq, rep.status) == (95, ErrorCode.OK), rep
    assert h.cycle - t0 < LAYER_CYCLES, h.cycle - t0
    st = P.Status.unpack(await h.ok(P.status(), Opcode.STATUS))
    assert (st.busy, st.loaded, st.last_error) == (False, False, ErrorCode.OK), st
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert c.busy - busy0 < LAYER_CYCLES, (busy0, c)
    await h.ok(P.run_program(1), Opcode.RUN_PROGRAM)    # and the next one runs
    assert await lcnt(h) == (1, 11)
    # malformed or refused requests are not line damage
    assert P.Status.unpack(await h.ok(P.status(), Opcode.STATUS)).link_errors == 0
    assert not h.parser.bad_frames and not h.parser.skipped


@cocotb.test()
async def fuzz(dut):
    """Thousands of random / corrupted / truncated frames; every reply is a well-formed frame;
    afterwards the link answers correctly."""
    h = await _start(dut, 6)
    h.ready_prob = 0.9
    rng = random.Random(tb_params().get("seed", 7))
    nframes = tb_params().get("nframes", 5000)
    builders = [
        lambda: P.identify(), lambda: P.status(), lambda: P.counters(), lambda: P.reset(),
        lambda: P.write(rng.choice(list(Buffer)), rng.randrange(450),
                        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))),
        lambda: P.read(rng.choice(list(Buffer)), rng.randrange(450), rng.randrange(1, 12)),
        lambda: P.load_layer(P.LayerDescriptor(
            rng.randrange(4), rng.randrange(40), rng.randrange(4), rng.randrange(3),
            rng.randrange(1 << 16), shift=rng.randrange(70), zp=rng.randrange(-128, 128),
            relu=rng.randrange(3), fmt=rng.choice([0, 0, 1, 1, 2, 3, 4, 9]),
            group=rng.choice([0, 0, 32, 32, 64, 128, 128, 48]), chan=rng.randrange(3),
            w_base=rng.randrange(1 << 16), chan_base=rng.randrange(1 << 16),
            group_base=rng.randrange(1 << 16),
            sparse=rng.choice([0, 0, 0, 1, 4, 5, 6, 7, 200]))),
        lambda: P.run(wait=rng.random() < 0.5),
        lambda: P.run_program(rng.randrange(MAX_LAYERS + 2), wait=rng.random() < 0.5),
        lambda: P.pack_frame(Opcode.RUN_PROGRAM, bytes(rng.randrange(256)
                                                       for _ in range(rng.randrange(4)))),
        lambda: P.pack_frame(rng.randrange(256), bytes(rng.randrange(256)
                                                       for _ in range(rng.randrange(24)))),
        lambda: P.pack_frame(Opcode.LOAD_LAYER, bytes(rng.randrange(256)
                                                      for _ in range(rng.choice([21, 22, 23])))),
    ]
    sent = 0
    for _ in range(nframes):
        f = bytearray(rng.choice(builders)())
        kind = rng.random()
        if kind < 0.25:
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        elif kind < 0.30:
            f = f[:rng.randrange(len(f))]
        elif kind < 0.40:
            f = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 20))) + f
        h.txq += f
        sent += len(f)
        while len(h.txq) > 64:
            await RisingEdge(dut.clk)
    await h.idle(TIMEOUT + 50)
    replies = len(h.frames)
    dut._log.info(f"fuzz: {nframes} frames, {sent} bytes in, {len(h.rx)} bytes / {replies} "
                  f"reply frames out, {h.cycle} cycles")
    assert not h.parser.bad_frames and not h.parser.skipped, "malformed reply bytes"
    assert all(f.is_reply for f in h.frames)
    # a corrupted length legitimately swallows the frames behind it (up to MAX_PAYLOAD bytes)
    assert replies > nframes // 5
    # the device is healthy: identify, write/read round trip, a layer run
    assert P.DeviceInfo.unpack(await h.ok(P.identify(), Opcode.IDENTIFY)) == \
        expected_info(programs())
    await h.ok(P.reset(), Opcode.RESET)                 # stops a run the fuzz left going
    for b in present():
        await h.ok(P.write(b, sizes()[b] - 4, b"\xde\xad\xbe" + bytes([b])), Opcode.WRITE)
    for b in present():
        got = await h.ok(P.read(b, sizes()[b] - 4, 4), Opcode.READ)
        assert got == b"\xde\xad\xbe" + bytes([b]), (b, got)
    c0 = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    d = P.LayerDescriptor(2, 3, 2, OutMode.INT8, 300, 9, -9, 1, WeightFormat.INT4, 128, 1)
    await h.ok(P.load_layer(d), Opcode.LOAD_LAYER)
    await h.ok(P.run(), Opcode.RUN)
    c = P.Counters.unpack(await h.ok(P.counters(), Opcode.COUNTERS))
    assert held(c) == seen(d) and c.macs - c0.macs == 12 and runs(c) == runs(c0) + 1, c
