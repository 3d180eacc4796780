"""8N1 UART: receiver with 16x oversampling and majority vote, transmitter; byte streams.

Both sides run from a 16x-baud tick made by a phase accumulator (a fractional divider), so
any ``clk_freq >= 16 * baud`` works with a negligible average baud error (reported as
``baud_error``); the price is up to one clock cycle of jitter on each tick, i.e. on each TX
edge and each RX sample. At 50 MHz / 3 Mbaud a bit lasts 16.7 cycles; an integer divider
there would be off by 2-4 %, the accumulator by < 1e-6.
"""


from numbers import Real

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "baud_divider"]

OVERSAMPLE = 16
#: Width of the phase accumulator: the relative rate error is below 2**-ACC_BITS * clk/(16*baud).
ACC_BITS = 24


def baud_divider(*, clk_freq, baud):
    """Validate the pair and return ``(increment, divider, actual_baud, baud_error)``.

    ``divider`` is the (fractional) number of clock cycles per 1/16 bit tick, ``baud_error``
    the relative error ``actual_baud / baud - 1`` of the accumulator.
    """
    if isinstance(clk_freq, bool) or not isinstance(clk_freq, Real) or not clk_freq > 0:
        raise ValueError(f"clk_freq must be a positive number (Hz), not {clk_freq!r}")
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    if clk_freq < OVERSAMPLE * baud:
        raise ValueError(f"clk_freq={clk_freq!r} is below {OVERSAMPLE} x baud={baud!r}: "
                         f"16x oversampling needs at least {OVERSAMPLE * baud} Hz")
    inc = round(OVERSAMPLE * baud * (1 << ACC_BITS) / clk_freq)
    inc = min(inc, (1 << ACC_BITS) - 1) if clk_freq > OVERSAMPLE * baud else inc
    divider = (1 << ACC_BITS) / inc
    actual = clk_freq / divider / OVERSAMPLE
    return inc, divider, actual, actual / baud - 1


class _Timing:
    def _setup_timing(self, clk_freq, baud):
        self.clk_freq = clk_freq
        self.baud = baud
        self.increment, self.divider, self.actual_baud, self.baud_error = \
            baud_divider(clk_freq=clk_freq, baud=baud)

    def _tick(self, m):
        """A one-cycle pulse at 16x the baud rate (average)."""
        acc = Signal(ACC_BITS)
        tick = Signal()
        if self.increment >= (1 << ACC_BITS):        # clk_freq == 16 * baud exactly
            m.d.comb += tick.eq(1)
        else:
            m.d.sync += Cat(acc, tick).eq(acc + self.increment)
        return tick


class UARTRx(_Timing, wiring.Component):
    """UART receiver, 8 data bits, no parity, 1 stop bit, LSB first.

    The line is synchronised (2 flip-flops) and sampled on every 16x tick. A falling edge
    starts a frame; each bit is decided by majority over the samples 6, 7 and 8 ticks after
    the detected edge (the detection lags the edge by 0-1 tick, so these straddle the middle), which rejects single-sample glitches. A start bit that is high at its
    middle is ignored (glitch). A stop bit that is low is a framing error: the byte is
    dropped, ``frame_error`` pulses, and the receiver waits for the line to go high again
    (so a break produces one error, not a stream of zero bytes). The receiver re-arms in the
    middle of the stop bit, which tolerates a few percent of baud mismatch either way.

    Parameters
    ----------
    clk_freq : number
        Clock frequency in Hz (>= 16 * baud).
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

        phase = Signal(4)          # ticks into the current bit
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
                    with m.If(phase == 6):
                        m.d.sync += samples[0].eq(line)
                    with m.If(phase == 7):
                        m.d.sync += samples[1].eq(line)
                    with m.If(phase == 8):
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
    """UART transmitter, 8N1, LSB first; each bit lasts 16 ticks of the 16x-baud tick.

    Members
    -------
    i_stream : In(stream.Signature(8))
        Bytes to send; ``ready`` pulses on a 16x tick while the transmitter is idle or
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
        phase = Signal(4)
        left = Signal(range(11))
        m.d.comb += self.tx.eq(shreg[0])
        # A byte is taken only on a tick: from idle, so that the start bit lasts exactly 16
        # ticks; or at the tick that ends the stop bit, so back-to-back bytes run at exactly
        # the baud rate (no extra idle cycle per byte).
        can_load = tick & ((left == 0) | ((left == 1) & (phase == OVERSAMPLE - 1)))
        m.d.comb += self.i_stream.ready.eq(can_load)
        with m.If(can_load & self.i_stream.valid):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.i_stream.payload, Const(1, 1))),
                         left.eq(10), phase.eq(0)]
        with m.Elif(tick & (left != 0)):
            m.d.sync += phase.eq(phase + 1)
            with m.If(phase == OVERSAMPLE - 1):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1)]
        return m
