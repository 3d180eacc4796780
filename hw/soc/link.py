"""Host link: decoder/encoder of the framed byte protocol of :mod:`sw.protocol` (version 6).

The link consumes the host's byte stream (UART RX, or the simulation harness), checks each
frame, executes it against the mpGEMM core's command interface and emits the reply frame.
It is half duplex: while a reply is being sent, ``i_stream.ready`` is low (the host waits for
each reply before sending the next request, which the driver does anyway).

Robustness rules (see ``docs/protocol.md``):

- bytes other than SYNC are skipped while hunting;
- ``LENGTH`` of 0 or above ``MAX_PAYLOAD`` is answered with BAD_LENGTH at once and the hunt
  restarts;
- a frame that stays incomplete for ``timeout`` cycles without a new byte is answered with
  TIMEOUT and dropped, so a truncated frame never hangs the decoder;
- a frame with a bad CRC is answered with BAD_CRC and has no effect at all: a WRITE's data is
  staged in a buffer of its own and copied to the core's buffer only after the CRC (which
  covers the buffer index and address too) and the range checks passed, so no corrupted
  byte, and no good byte at a corrupted address, ever reaches the operands;
- every reply carries the request's sequence tag (``UNKNOWN_SEQ`` when the frame was refused
  before its tag arrived);
- RUN replies when the GEMM is done, but the link keeps hunting meanwhile: a host that sends
  a new frame has given up on that reply (e.g. after a reply timeout), which is then dropped,
  so STATUS and RESET (which stops the GEMM) still work while the core runs.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw.numerics import OutMode
from sw.protocol import (
    LAYER_PAYLOAD, MAX_DATA, MAX_PAYLOAD, PROTOCOL_VERSION, READ_PAYLOAD,
    REPLY_FLAG, RUN_NOWAIT, SYNC, UNKNOWN_SEQ, WRITE_HEADER, GROUP_SIZE_BITS, Buffer, Counters,
    DeviceInfo, PROGRAM_RECORD, LCNT_RECORD,
    ErrorCode, Opcode, Status,
)
from hw.core.desc import decode_descriptor, assign_descriptor

__all__ = ["Link", "CRC_PARAMETERS"]

#: CRC-16/CCITT-FALSE (alias CRC-16/IBM-3740) over bytes: the frame check of sw.protocol
CRC_PARAMETERS = crc.catalog.CRC16_IBM_3740(data_width=8)


class Link(wiring.Component):
    """Frame decoder / command executor / reply encoder.

    Parameters
    ----------
    info : sw.protocol.DeviceInfo
        What IDENTIFY returns; also gives the buffer sizes used for address checks and the
        inter-byte timeout (``info.timeout_cycles``: cycles without a byte after which a
        partial frame is dropped and answered TIMEOUT).
    addr_bits : int
        Width of the core's ``bus_addr``.
    core_signature : wiring.Signature
        The core's ports (:func:`hw.core.core.core_signature`); the link has them flipped.
    read_latency : int
        Cycles from ``bus_re`` to valid ``bus_rdata`` (the core's ``READ_LATENCY``).
    dim_bits : int
        Width of the core's ``cfg.m/k/n``; LOAD_LAYER with a larger M, K or N is answered
        BAD_SHAPE (instead of letting the core see a truncated value).

    Members
    -------
    i_stream : In(stream.Signature(8))
        Bytes from the host.
    o_stream : Out(stream.Signature(8))
        Reply bytes to the host.
    idle : Out(1)
        Between frames (hunting for SYNC), nothing half-received, no RUN reply owed.
    uart_frame_error, uart_overrun : In(1)
        Pulses from the UART (a byte with a low stop bit; a byte lost to a full FIFO),
        counted for STATUS.
    bus_*, cfg, start, abort, busy, done, error, cnt_* :
        The core's ports, directions flipped (see :meth:`connect_core`).
    """

    DEFAULT_TIMEOUT = 1 << 22

    def __init__(self, *, info: DeviceInfo, addr_bits: int, core_signature: wiring.Signature,
                 read_latency: int = 1, dim_bits: int = 16):
        if not isinstance(info, DeviceInfo):
            raise TypeError(f"info must be a sw.protocol.DeviceInfo, not {info!r}")
        if not isinstance(addr_bits, int) or not 1 <= addr_bits <= 32:
            raise ValueError(f"addr_bits must be an int in [1, 32], not {addr_bits!r}")
        for name in ("a_bytes", "w_bytes", "out_bytes", "chan_bytes", "group_bytes", "act_bytes",
                     "dsp_bytes"):
            if getattr(info, name) > (1 << addr_bits):
                raise ValueError(f"info.{name}={getattr(info, name)!r} exceeds the "
                                 f"{addr_bits}-bit bus address space")
        if info.max_data != MAX_DATA:
            raise ValueError(f"info.max_data must be MAX_DATA={MAX_DATA}, not {info.max_data!r}")
        if info.version != PROTOCOL_VERSION:
            raise ValueError(f"info.version must be PROTOCOL_VERSION={PROTOCOL_VERSION}, "
                             f"not {info.version!r}")
        if info.timeout_cycles < 4:
            raise ValueError(f"info.timeout_cycles must be >= 4 (cycles), not "
                             f"{info.timeout_cycles!r}")
        if not isinstance(read_latency, int) or not 1 <= read_latency <= 16:
            raise ValueError(f"read_latency must be an int in [1, 16], not {read_latency!r}")
        if not isinstance(dim_bits, int) or not 1 <= dim_bits <= 16:
            raise ValueError(f"dim_bits must be an int in [1, 16], not {dim_bits!r}")
        self.dim_bits = dim_bits
        self.info = info
        self.addr_bits = addr_bits
        self.read_latency = read_latency
        self.timeout = info.timeout_cycles
        self.core_signature = core_signature
        #: the core runs layer programs (RUN_PROGRAM; otherwise UNKNOWN_OPCODE)
        self.programs = "prog_start" in core_signature.members
        members = {
            "i_stream": In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "idle": Out(1),
            "uart_frame_error": In(1), "uart_overrun": In(1),
        }
        members.update(core_signature.flip().members)
        super().__init__(members)

    @classmethod
    def for_core(cls, core, *, timeout: int = DEFAULT_TIMEOUT, clock_hz: int = 0,
                 out_modes: int | None = None):
        """A link for ``core`` (a :class:`hw.core.MixCore` or an object with its IDENTIFY
        attributes: buffer sizes, ``config_hash()``, ``READ_LATENCY``, ``WATCHDOG``,
        ``MIN_PERIOD``, ``PE_KIND``, ``formats``, ``group_sizes``, ``signature``; optional:
        the layer-program fields ``act_bytes``, ``max_layers``, ``layer_kinds`` and the DSP
        engine's ``dsp_stages``, ``dsp_chains``, ``dsp_packed``, ``dsp_patterns`` (a tuple
        of ``sw.numerics.NMPattern``), ``dsp_bytes``, ``dsp_share``: 0 / empty when
        absent)."""
        if out_modes is None:
            out_modes = getattr(core, "out_modes", None)
            if out_modes is None:
                out_modes = sum(1 << int(m) for m in OutMode)
        info = DeviceInfo(PROTOCOL_VERSION, core.config_hash() & 0xFFFFFFFF, core.rows,
                          core.cols, core.a_bytes, core.w_bytes, core.out_bytes,
                          core.out_depth, core.max_k, out_modes, MAX_DATA, int(round(clock_hz)),
                          timeout, core.WATCHDOG, core.MIN_PERIOD, int(core.PE_KIND),
                          sum(1 << int(f) for f in core.formats),
                          sum(1 << GROUP_SIZE_BITS[g] for g in core.group_sizes),
                          core.chan_bytes, core.group_bytes, getattr(core, "act_bytes", 0),
                          getattr(core, "max_layers", 0),
                          sum(1 << int(k) for k in getattr(core, "layer_kinds", ())),
                          dsp_stages=int(getattr(core, "dsp_stages", 0)),
                          dsp_chains=int(getattr(core, "dsp_chains", 0)),
                          dsp_packed=int(bool(getattr(core, "dsp_packed", False))),
                          dsp_patterns=sum(1 << int(p) for p in getattr(core, "dsp_patterns", ())),
                          dsp_bytes=int(getattr(core, "dsp_bytes", 0)),
                          dsp_share=int(getattr(core, "dsp_share", 0)))
        return cls(info=info, addr_bits=core.addr_bits, core_signature=core.signature,
                   read_latency=core.READ_LATENCY, dim_bits=len(core.cfg.m))

    def connect_core(self, m: Module, core) -> None:
        """Join this link to ``core``: its signature is the flip of the link's core ports."""
        for name, member in self.core_signature.members.items():
            mine, theirs = getattr(self, name), getattr(core, name)
            if member.flow == In:
                m.d.comb += theirs.eq(mine)
            else:
                m.d.comb += mine.eq(theirs)

    def elaborate(self, platform):
        m = Module()
        info = self.info

        rx = self.i_stream
        tx = self.o_stream
        take = Signal()                       # a host byte is consumed this cycle
        m.d.comb += take.eq(rx.valid & rx.ready)
        byte = rx.payload

        m.submodules.rx_crc = rx_crc = CRC_PARAMETERS.create()
        m.submodules.tx_crc = tx_crc = CRC_PARAMETERS.create()
        m.d.comb += [rx_crc.data.eq(byte)]

        # WRITE data is staged here and committed only after the whole frame checked out
        m.submodules.stage = stage = Memory(shape=8, depth=MAX_DATA, init=[])
        s_wp = stage.write_port()
        s_rp = stage.read_port()

        # -- receive-side registers ------------------------------------------------------
        opcode = Signal(8)
        length = Signal(16)                   # tag + body bytes
        seq = Signal(8)
        idx = Signal(16)                      # body byte index
        hdr = [Signal(8, name=f"hdr{i}") for i in range(LAYER_PAYLOAD)]
        tmo = Signal(range(self.timeout + 1))
        baddr = Signal(33)                    # bus address counter (read and write)
        cidx = Signal(16)                     # commit: next staged byte to read
        c_v = Signal()                        # commit: staged byte on s_rp.data is valid
        c_we = Signal()                       # commit: c_data goes to the bus this cycle
        c_data = Signal(8)

        p_buf = hdr[0]
        p_addr = Cat(*hdr[1:5])
        p_count = Cat(hdr[5], hdr[6])
        body_len = length - 1
        w_count = Signal(16)
        m.d.comb += w_count.eq(body_len - WRITE_HEADER)

        # the address range checks, pipelined over the two CRC bytes (the header and the
        # length are final from CRC0 on; EXEC comes at least two cycles later): the 33-bit
        # end and the buffer's size registered, then their compare. In EXEC, one cycle, they
        # were the slowest path of the 12F SoC (15.9 ns, two carry chains and the reply mux)
        size_q = Signal(33); buf_q = Signal()
        end_w = Signal(33); end_r = Signal(33)
        ok_w = Signal(); ok_r = Signal()
        size = Const(0, 33)
        for b in reversed(Buffer):
            size = Mux(p_buf == b, info.buffer_size(b), size)
        m.d.sync += [size_q.eq(size), buf_q.eq(p_buf <= max(Buffer)),
                     end_w.eq(p_addr + w_count), end_r.eq(p_addr + p_count),
                     ok_w.eq(buf_q & (end_w <= size_q)), ok_r.eq(buf_q & (end_r <= size_q))]

        # -- core-side state -------------------------------------------------------------
        loaded = Signal()
        running = Signal()
        run_pending = Signal()                # a RUN waits for its reply
        run_seq = Signal(8)
        run_op = Signal(8)                    # reply opcode of the pending RUN / RUN_PROGRAM
        last_error = Signal(ErrorCode)
        core_busy = Signal()
        m.d.comb += core_busy.eq(self.busy | running)
        with m.If(self.done):
            m.d.sync += [last_error.eq(self.error), running.eq(0)]

        # -- link health counters (STATUS) -----------------------------------------------
        n_frame_err = Signal(16); n_overrun = Signal(16); n_link_err = Signal(16)
        with m.If(self.uart_frame_error):
            m.d.sync += n_frame_err.eq(n_frame_err + 1)
        with m.If(self.uart_overrun):
            m.d.sync += n_overrun.eq(n_overrun + 1)

        # -- reply registers -------------------------------------------------------------
        SNAP_BYTES = max(DeviceInfo.SIZE, Counters.SIZE, Status.SIZE)
        SNAP_IDX = (SNAP_BYTES - 1).bit_length()  # bits of tidx that select a snapshot byte
        SEL_BITS = max(Buffer).bit_length()       # bits of the buffer index the core sees
        r_op = Signal(8)
        r_seq = Signal(8)
        r_status = Signal(8)
        r_count = Signal(16)                  # data bytes after the status byte
        r_bus = Signal()                      # data comes from the bus (READ)
        snap = Signal(8 * SNAP_BYTES)
        tidx = Signal(16)
        rbyte = Signal(8)
        rlat = Signal(range(self.read_latency + 1))
        ident = Const(int.from_bytes(info.pack(), "little"), 8 * DeviceInfo.SIZE)
        err_w = len(last_error)

        m.d.comb += [
            self.bus_sel.eq(p_buf[:SEL_BITS]),     # Buffer: A..DSPW = 0..8
            self.bus_addr.eq(baddr[:self.addr_bits]),
            # the staging EBR's output is registered before it travels to the core's
            # buffers (on the 85F they are far apart, and EBR clock-to-out is slow)
            self.bus_wdata.eq(c_data),
            self.bus_we.eq(c_we),
        ]
        m.d.sync += [c_data.eq(s_rp.data), c_we.eq(0)]

        def reply(status, count=0, bus=False):
            return [r_op.eq(opcode | REPLY_FLAG), r_seq.eq(seq), r_status.eq(status),
                    r_count.eq(count), r_bus.eq(bus), tidx.eq(0)]

        def send(value):
            """Present ``value`` on o_stream; returns the handshake condition."""
            m.d.comb += [tx.valid.eq(1), tx.payload.eq(value)]
            return tx.ready

        rx_states = ("OPC", "LEN0", "LEN1", "SEQ", "BODY", "CRC0", "CRC1")

        with m.FSM(name="link"):
            with m.State("HUNT"):
                m.d.comb += [rx.ready.eq(1), self.idle.eq(~run_pending), rx_crc.start.eq(1)]
                m.d.sync += [opcode.eq(0), seq.eq(UNKNOWN_SEQ), tmo.eq(0), idx.eq(0)]
                with m.If(take & (byte == SYNC)):
                    # a new request: the host no longer waits for a RUN reply
                    m.d.sync += run_pending.eq(0)
                    m.next = "OPC"
                with m.Elif(run_pending & ~core_busy):
                    m.d.sync += [run_pending.eq(0), r_op.eq(run_op),
                                 r_seq.eq(run_seq), r_status.eq(last_error), r_count.eq(0),
                                 r_bus.eq(0), tidx.eq(0)]
                    m.next = "TX_SYNC"

            for name in rx_states:
                with m.State(name):
                    m.d.comb += [rx.ready.eq(1), rx_crc.valid.eq(take)]
                    with m.If(take):
                        m.d.sync += tmo.eq(0)
                    with m.Elif(tmo == self.timeout - 1):
                        m.d.sync += [reply(ErrorCode.TIMEOUT), n_link_err.eq(n_link_err + 1)]
                        m.next = "TX_SYNC"
                    with m.Else():
                        m.d.sync += tmo.eq(tmo + 1)
                    with m.If(take):
                        if name == "OPC":
                            m.d.sync += opcode.eq(byte)
                            m.next = "LEN0"
                        elif name == "LEN0":
                            m.d.sync += length[:8].eq(byte)
                            m.next = "LEN1"
                        elif name == "LEN1":
                            m.d.sync += length[8:].eq(byte)
                            full = Cat(length[:8], byte)
                            with m.If((full > MAX_PAYLOAD) | (full == 0)):
                                m.d.sync += [reply(ErrorCode.BAD_LENGTH),
                                             n_link_err.eq(n_link_err + 1)]
                                m.next = "TX_SYNC"
                            with m.Else():
                                m.next = "SEQ"
                        elif name == "SEQ":
                            m.d.sync += seq.eq(byte)
                            with m.If(length == 1):
                                m.next = "CRC0"
                            with m.Else():
                                m.next = "BODY"
                        elif name == "BODY":
                            for i, h in enumerate(hdr):
                                with m.If(idx == i):
                                    m.d.sync += h.eq(byte)
                            m.d.sync += idx.eq(idx + 1)
                            m.d.comb += [s_wp.addr.eq(idx - WRITE_HEADER), s_wp.data.eq(byte),
                                         s_wp.en.eq((opcode == Opcode.WRITE)
                                                    & (idx >= WRITE_HEADER))]
                            with m.If(idx == length - 2):
                                m.next = "CRC0"
                        elif name == "CRC0":
                            m.next = "CRC1"
                        else:
                            m.next = "EXEC"

            with m.State("EXEC"):
                m.next = "TX_SYNC"
                with m.If(~rx_crc.match_detected):
                    m.d.sync += [reply(ErrorCode.BAD_CRC), n_link_err.eq(n_link_err + 1)]
                with m.Else():
                    with m.Switch(opcode):
                        with m.Case(Opcode.IDENTIFY):
                            with m.If(length != 1):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK, DeviceInfo.SIZE), snap.eq(ident)]
                        with m.Case(Opcode.WRITE):
                            with m.If(body_len <= WRITE_HEADER):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Elif(~ok_w):
                                m.d.sync += reply(ErrorCode.BAD_ADDRESS)
                            with m.Elif(core_busy):
                                m.d.sync += reply(ErrorCode.BUSY)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK), baddr.eq(p_addr - 1),
                                             cidx.eq(0), c_v.eq(0)]
                                m.next = "COMMIT"
                        with m.Case(Opcode.READ):
                            with m.If((length != 1 + READ_PAYLOAD) | (p_count == 0) |
                                      (p_count > MAX_DATA)):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Elif(~ok_r):
                                m.d.sync += reply(ErrorCode.BAD_ADDRESS)
                            with m.Elif(core_busy):
                                m.d.sync += reply(ErrorCode.BUSY)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK, p_count, bus=True),
                                             baddr.eq(p_addr)]
                        with m.Case(Opcode.LOAD_LAYER):
                            fields, bad_param, bad_shape = decode_descriptor(
                                hdr, formats=[f for f in range(8) if info.formats >> f & 1],
                                group_sizes=[g for g, bit in GROUP_SIZE_BITS.items()
                                             if info.group_sizes >> bit & 1],
                                dim_bits=self.dim_bits,
                                dsp_patterns=[p for p in range(8) if info.dsp_patterns >> p & 1],
                                dsp_packed=bool(info.dsp_packed))
                            with m.If(length != 1 + LAYER_PAYLOAD):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Elif(core_busy):
                                m.d.sync += reply(ErrorCode.BUSY)
                            with m.Elif(bad_param):
                                m.d.sync += reply(ErrorCode.BAD_PARAM)
                            with m.Elif(bad_shape):
                                m.d.sync += reply(ErrorCode.BAD_SHAPE)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK), loaded.eq(1),
                                             *assign_descriptor(self.cfg, fields)]
                        with m.Case(Opcode.RUN):
                            nowait = (length == 2) & (hdr[0] == RUN_NOWAIT)
                            with m.If(length > 2):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Elif((length == 2) & (hdr[0] & ~RUN_NOWAIT & 0xFF).any()):
                                m.d.sync += reply(ErrorCode.BAD_PARAM)
                            with m.Elif(core_busy):
                                m.d.sync += reply(ErrorCode.BUSY)
                            with m.Elif(~loaded):
                                m.d.sync += reply(ErrorCode.NOT_LOADED)
                            with m.Else():
                                m.d.comb += self.start.eq(1)
                                m.d.sync += [running.eq(1), reply(ErrorCode.OK)]
                                with m.If(~nowait):
                                    # reply when done; hunt meanwhile (see module docstring)
                                    m.d.sync += [run_pending.eq(1), run_seq.eq(seq),
                                                 run_op.eq(Opcode.RUN | REPLY_FLAG)]
                                    m.next = "HUNT"
                        with m.Case(Opcode.RUN_PROGRAM):
                            nowait = (length == 3) & (hdr[1] == RUN_NOWAIT)
                            with m.If((length < 2) | (length > 3) | (not self.programs)):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH if self.programs
                                                  else ErrorCode.UNKNOWN_OPCODE)
                            with m.Elif(((length == 3) & (hdr[1] & ~RUN_NOWAIT & 0xFF).any()) |
                                        (hdr[0] == 0) | (hdr[0] > info.max_layers)):
                                m.d.sync += reply(ErrorCode.BAD_PARAM)
                            with m.Elif(core_busy):
                                m.d.sync += reply(ErrorCode.BUSY)
                            with m.Else():
                                if self.programs:
                                    m.d.comb += [self.prog_start.eq(1),
                                                 self.prog_count.eq(hdr[0])]
                                m.d.sync += [running.eq(1), reply(ErrorCode.OK)]
                                with m.If(~nowait):
                                    m.d.sync += [run_pending.eq(1), run_seq.eq(seq),
                                                 run_op.eq(Opcode.RUN_PROGRAM | REPLY_FLAG)]
                                    m.next = "HUNT"
                        with m.Case(Opcode.STATUS):
                            with m.If(length != 1):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK, Status.SIZE),
                                             snap.eq(Cat(core_busy, loaded, Const(0, 6),
                                                         last_error, Const(0, 8 - err_w),
                                                         n_frame_err, n_overrun, n_link_err))]
                        with m.Case(Opcode.COUNTERS):
                            with m.If(length != 1):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK, Counters.SIZE),
                                             snap.eq(Cat(self.cnt_cycles, self.cnt_busy,
                                                         self.cnt_stall, self.cnt_macs,
                                                         self.cnt_dq_stall))]
                        with m.Case(Opcode.RESET):
                            with m.If(length != 1):
                                m.d.sync += reply(ErrorCode.BAD_LENGTH)
                            with m.Else():
                                m.d.sync += [reply(ErrorCode.OK), loaded.eq(0)]
                                m.next = "RESETWAIT"
                        with m.Default():
                            m.d.sync += reply(ErrorCode.UNKNOWN_OPCODE)

            with m.State("COMMIT"):
                # staged WRITE data -> the core's buffer, one byte per cycle: s_rp has one
                # cycle of latency (c_v marks the cycle its data is there), then c_data /
                # c_we / baddr hold it for the bus for one more
                m.d.comb += s_rp.addr.eq(cidx)
                m.d.sync += c_v.eq(cidx < w_count)
                with m.If(cidx < w_count):
                    m.d.sync += cidx.eq(cidx + 1)
                with m.If(c_v):
                    m.d.sync += [c_we.eq(1), baddr.eq(baddr + 1)]
                with m.Elif((cidx == w_count) & ~c_we):
                    m.next = "TX_SYNC"

            with m.State("RESETWAIT"):
                # stop a running GEMM; reply once the core is idle, with its error cleared
                m.d.comb += self.abort.eq(1)
                with m.If(~core_busy):
                    m.d.sync += last_error.eq(ErrorCode.OK)
                    m.next = "TX_SYNC"

            # -- reply encoder --------------------------------------------------------------
            with m.State("TX_SYNC"):
                m.d.comb += tx_crc.start.eq(1)
                with m.If(send(SYNC)):
                    m.next = "TX_OP"
            for name, value, nxt in (("TX_OP", r_op, "TX_LEN0"),
                                     ("TX_LEN0", (r_count + 2)[:8], "TX_LEN1"),
                                     ("TX_LEN1", (r_count + 2)[8:16], "TX_SEQ"),
                                     ("TX_SEQ", r_seq, "TX_STATUS"),
                                     ("TX_STATUS", r_status, None)):
                with m.State(name):
                    with m.If(send(value)):
                        m.d.comb += [tx_crc.valid.eq(1), tx_crc.data.eq(value)]
                        if nxt is not None:
                            m.next = nxt
                        else:
                            with m.If((r_status != ErrorCode.OK) | (r_count == 0)):
                                m.next = "TX_CRC0"
                            with m.Elif(r_bus):
                                m.next = "TX_RDREQ"
                            with m.Else():
                                m.next = "TX_DATA"
            with m.State("TX_RDREQ"):
                # host writes still on their way to the buffers land first (a few dozen
                # cycles at most, see MixCore's host-write ring)
                with m.If(~self.bus_wbusy):
                    m.d.comb += self.bus_re.eq(1)
                    m.d.sync += rlat.eq(0)
                    m.next = "TX_RDWAIT"
            with m.State("TX_RDWAIT"):
                m.d.sync += rlat.eq(rlat + 1)
                with m.If(rlat == self.read_latency - 1):
                    m.d.sync += [rbyte.eq(self.bus_rdata), baddr.eq(baddr + 1)]
                    m.next = "TX_DATA"
            with m.State("TX_DATA"):
                value = Mux(r_bus, rbyte, snap.word_select(tidx[:SNAP_IDX], 8))
                with m.If(send(value)):
                    m.d.comb += [tx_crc.valid.eq(1), tx_crc.data.eq(value)]
                    m.d.sync += tidx.eq(tidx + 1)
                    with m.If(tidx == r_count - 1):
                        m.next = "TX_CRC0"
                    with m.Elif(r_bus):
                        m.next = "TX_RDREQ"
            with m.State("TX_CRC0"):
                with m.If(send(tx_crc.crc[8:])):
                    m.next = "TX_CRC1"
            with m.State("TX_CRC1"):
                with m.If(send(tx_crc.crc[:8])):
                    m.next = "HUNT"

        return m
