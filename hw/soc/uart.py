"""8N1 UART: receiver with oversampling and majority vote, transmitter; byte streams.

Both sides run from a tick at ``oversample`` x the baud rate made by a phase accumulator (a
fractional divider), so any ``clk_freq >= 8 * baud`` works with a negligible average baud
error (reported as ``baud_error``); the price is up to one clock cycle of jitter on each
tick, i.e. on each TX edge and each RX sample. At 50 MHz / 3 Mbaud a bit lasts 16.7 cycles;
an integer divider there would be off by 2-4 %, the accumulator by < 1e-6.

The oversampling is 16 where the clock allows it and 8 below ``16 * baud`` (e.g. the 85F's
40 MHz core clock at the host link's 3 Mbaud: 13.3 cycles per bit). With 8 the start edge is
found within 1/8 bit instead of 1/16 and the majority vote spans 3/8 of a bit around the
middle; the receiver still tolerates about +-3 % of baud mismatch (``sim/test_uart.py`` runs
every test at both).
"""


from numbers import Real

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "baud_divider", "oversample_for"]

#: Ticks per bit, preferred first: the largest the clock allows is used.
OVERSAMPLES = (16, 8)
#: Width of the phase accumulator: the relative rate error is below
#: 2**-ACC_BITS * clk / (oversample * baud).
ACC_BITS = 24


def oversample_for(*, clk_freq, baud) -> int:
    """The ticks per bit used at ``clk_freq`` and ``baud`` (16, or 8 below ``16 * baud``)."""
    for n in OVERSAMPLES:
        if clk_freq >= n * baud:
            return n
    raise ValueError(f"clk_freq={clk_freq!r} is below {OVERSAMPLES[-1]} x baud={baud!r}: "
                     f"the UART needs at least {OVERSAMPLES[-1] * baud} Hz "
                     f"({OVERSAMPLES[-1]}x oversampling); lower the baud rate")


def baud_divider(*, clk_freq, baud):
    """Validate the pair and return ``(increment, divider, actual_baud, baud_error)``.

    ``divider`` is the (fractional) number of clock cycles per tick (``1 / oversample`` of
    a bit, :func:`oversample_for`), ``baud_error`` the relative error
    ``actual_baud / baud - 1`` of the accumulator.
    """
    if isinstance(clk_freq, bool) or not isinstance(clk_freq, Real) or not clk_freq > 0:
        raise ValueError(f"clk_freq must be a positive number (Hz), not {clk_freq!r}")
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    os_ = oversample_for(clk_freq=clk_freq, baud=baud)
    inc = round(os_ * baud * (1 << ACC_BITS) / clk_freq)
    inc = min(inc, (1 << ACC_BITS) - 1) if clk_freq > os_ * baud else inc
    divider = (1 << ACC_BITS) / inc
    actual = clk_freq / divider / os_
    return inc, divider, actual, actual / baud - 1


class _Timing:
    def _setup_timing(self, clk_freq, baud):
        self.clk_freq = clk_freq
        self.baud = baud
        self.increment, self.divider, self.actual_baud, self.baud_error = \
            baud_divider(clk_freq=clk_freq, baud=baud)
        #: ticks per bit (16, or 8 when the clock is below 16 x baud)
        self.oversample = oversample_for(clk_freq=clk_freq, baud=baud)

    def _tick(self, m):
        """A one-cycle pulse at ``oversample`` x the baud rate (average)."""
        acc = Signal(ACC_BITS)
        tick = Signal()
        if self.increment >= (1 << ACC_BITS):        # clk_freq == oversample * baud exactly
            m.d.comb += tick.eq(1)
        else:
            m.d.sync += Cat(acc, tick).eq(acc + self.increment)
        return tick


class UARTRx(_Timing, wiring.Component):
    """UART receiver, 8 data bits, no parity, 1 stop bit, LSB first.

    The line is synchronised (2 flip-flops) and sampled on every tick (16 or 8 per bit). A
    falling edge starts a frame; each bit is decided by majority over the samples
    ``os/2 - 2``, ``os/2 - 1`` and ``os/2`` ticks after the detected edge (6, 7, 8 at 16x;
    the detection lags the edge by 0-1 tick, so these straddle the middle), which rejects
    single-sample glitches. A start bit that is high at its
    middle is ignored (glitch). A stop bit that is low is a framing error: the byte is
    dropped, ``frame_error`` pulses, and the receiver waits for the line to go high again
    (so a break produces one error, not a stream of zero bytes). The receiver re-arms in the
    middle of the stop bit, which tolerates a few percent of baud mismatch either way.

    Parameters
    ----------
    clk_freq : number
        Clock frequency in Hz (>= 8 * baud; 16x oversampling from 16 * baud).
    baud : int
        Bit rate.

    Members
    -------
    rx : In(1)
        Serial line (idle high); asynchronous.
    o_stream : Out(stream.Signature(8))
        Received bytes. A byte not taken before the next one completes is kept; the newer
        one is dropped and ``overrun`` pulses.
    frame_error : Out(1)
        One-cycle pulse per framing error.
    overrun : Out(1)
        One-cycle pulse per dropped byte.

    Attributes ``divider``, ``increment``, ``actual_baud`` and ``baud_error`` describe the
    generated tick (see :func:`baud_divider`).
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, clk_freq, baud):
        self._setup_timing(clk_freq, baud)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        tick = self._tick(m)
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        half = self.oversample // 2
        # ticks into the current bit; wraps at ``oversample``, which spaces the samples
        phase = Signal(range(self.oversample))
        bit = Signal(range(10))    # 0 start, 1..8 data, 9 stop
        samples = Signal(2)
        shreg = Signal(8)
        vote = Signal()
        a, b = samples[0], samples[1]
        m.d.comb += vote.eq((a & b) | (a & line) | (b & line))

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(tick & ~line):
                    m.d.sync += [phase.eq(1), bit.eq(0)]
                    m.next = "BIT"
            with m.State("BIT"):
                with m.If(tick):
                    m.d.sync += phase.eq(phase + 1)
                    with m.If(phase == half - 2):
                        m.d.sync += samples[0].eq(line)
                    with m.If(phase == half - 1):
                        m.d.sync += samples[1].eq(line)
                    with m.If(phase == half):
                        m.d.sync += bit.eq(bit + 1)
                        with m.If(bit == 0):
                            with m.If(vote):
                                m.next = "IDLE"              # glitch, not a start bit
                        with m.Elif(bit == 9):
                            with m.If(~vote):
                                m.d.comb += self.frame_error.eq(1)
                                m.next = "BREAK"
                            with m.Else():
                                m.next = "IDLE"              # re-arm mid stop bit
                                with m.If(self.o_stream.valid & ~self.o_stream.ready):
                                    m.d.comb += self.overrun.eq(1)
                                with m.Else():
                                    m.d.sync += [self.o_stream.payload.eq(shreg),
                                                 self.o_stream.valid.eq(1)]
                        with m.Else():
                            m.d.sync += shreg.eq(Cat(shreg[1:], vote))
            with m.State("BREAK"):
                with m.If(tick & line):
                    m.next = "IDLE"
        return m


class UARTTx(_Timing, wiring.Component):
    """UART transmitter, 8N1, LSB first; each bit lasts ``oversample`` ticks (16 or 8).

    Members
    -------
    i_stream : In(stream.Signature(8))
        Bytes to send; ``ready`` pulses on a tick while the transmitter is idle or
        finishing a stop bit.
    tx : Out(1)
        Serial line, idle high; driven straight from a register bit (glitch-free).
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, *, clk_freq, baud):
        self._setup_timing(clk_freq, baud)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        tick = self._tick(m)
        shreg = Signal(10, init=0x3FF)
        phase = Signal(range(self.oversample))      # wraps at the end of each bit
        left = Signal(range(11))
        m.d.comb += self.tx.eq(shreg[0])
        # A byte is taken only on a tick: from idle, so that the start bit lasts exactly
        # ``oversample`` ticks; or at the tick that ends the stop bit, so back-to-back bytes run at exactly
        # the baud rate (no extra idle cycle per byte).
        last = self.oversample - 1
        can_load = tick & ((left == 0) | ((left == 1) & (phase == last)))
        m.d.comb += self.i_stream.ready.eq(can_load)
        with m.If(can_load & self.i_stream.valid):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.i_stream.payload, Const(1, 1))),
                         left.eq(10), phase.eq(0)]
        with m.Elif(tick & (left != 0)):
            m.d.sync += phase.eq(phase + 1)
            with m.If(phase == last):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1)]
        return m
