"""SoC: host link + mpGEMM core, with a byte-stream host side (UART on the board)."""

from amaranth import Module
from amaranth.lib import wiring, stream, fifo
from amaranth.lib.wiring import In, Out

from hw.core.program import ProgramCore
from .link import Link

__all__ = ["SoC", "UARTSoC"]


class SoC(wiring.Component):
    """The device as the host sees it: frames in, replies out (see docs/protocol.md).

    Parameters
    ----------
    **size :
        Core size, PE kind, activation memory and program length (see
        :class:`~hw.core.program.ProgramCore`, ``hw.sizes.CoreSize``).
    timeout : int
        Link inter-byte timeout in cycles.
    clk_freq : float
        Core clock in Hz, reported by IDENTIFY (the driver turns cycle counts into seconds
        with it); 0 when unknown.
    watchdog : int, optional
        Core watchdog in cycles (see :class:`~hw.core.MixCore`).
    uart_frame_error, uart_overrun : In(1)
        Error pulses of the UART in front of the SoC (0 when there is none), counted in STATUS.

    Members
    -------
    i_stream : In(stream.Signature(8))
        Request bytes from the host.
    o_stream : Out(stream.Signature(8))
        Reply bytes to the host.
    idle : Out(1)
        Between frames with nothing to say and the core stopped: a simulation harness may
        stop the clock until the host writes.
    waiting : Out(1)
        The link waits for host bytes (between frames or inside one) and has nothing to say.
    """

    def __init__(self, *, timeout=Link.DEFAULT_TIMEOUT, clk_freq: float = 0,
                 watchdog: int | None = None, impl: str = "auto", **size):
        self.core = ProgramCore(**size, watchdog=watchdog, impl=impl)
        self.link = Link.for_core(self.core, timeout=timeout, clock_hz=clk_freq)
        super().__init__({"i_stream": In(stream.Signature(8)), "o_stream": Out(stream.Signature(8)),
                          "idle": Out(1), "waiting": Out(1),
                          "uart_frame_error": In(1), "uart_overrun": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.link = link = self.link
        link.connect_core(m, core)
        m.d.comb += [link.uart_frame_error.eq(self.uart_frame_error),
                     link.uart_overrun.eq(self.uart_overrun)]
        wiring.connect(m, wiring.flipped(self.i_stream), link.i_stream)
        wiring.connect(m, link.o_stream, wiring.flipped(self.o_stream))
        waiting = link.i_stream.ready & ~link.o_stream.valid & ~core.busy
        m.d.comb += [self.waiting.eq(waiting), self.idle.eq(waiting & link.idle)]
        return m


class UARTSoC(wiring.Component):
    """:class:`SoC` behind a UART (8N1) with a small receive FIFO.

    Members
    -------
    rx : In(1)
    tx : Out(1)
    """

    RX_FIFO_DEPTH = 64

    def __init__(self, *, clk_freq: float, baud: int, **size):
        from .uart import UARTRx, UARTTx
        self.soc = SoC(clk_freq=clk_freq, **size)
        self.uart_rx = UARTRx(clk_freq=clk_freq, baud=baud)
        self.uart_tx = UARTTx(clk_freq=clk_freq, baud=baud)
        self.baud_error = self.uart_rx.baud_error
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.soc = soc = self.soc
        m.submodules.uart_rx = urx = self.uart_rx
        m.submodules.uart_tx = utx = self.uart_tx
        # the link stops reading while it replies; the FIFO keeps bytes that arrive meanwhile
        m.submodules.rx_fifo = rxf = fifo.SyncFIFOBuffered(width=8, depth=self.RX_FIFO_DEPTH)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        wiring.connect(m, urx.o_stream, rxf.w_stream)
        wiring.connect(m, rxf.r_stream, soc.i_stream)
        wiring.connect(m, soc.o_stream, utx.i_stream)
        # the receiver holds one byte while the FIFO is full; the next one is lost (overrun)
        m.d.comb += [soc.uart_frame_error.eq(urx.frame_error),
                     soc.uart_overrun.eq(urx.overrun)]
        return m
