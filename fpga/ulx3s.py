"""ULX3S (Lattice ECP5) board integration: platform, PLL, pins, top level.

The per-device core sizes live in :mod:`hw.sizes` (the build, the simulation models and the
benchmarks share them); they are re-exported here.
"""

from __future__ import annotations

from amaranth import Elaboratable, Module, Signal, ClockDomain, Instance, ClockSignal, ResetSignal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from hw.sizes import CoreSize, DEFAULT_FREQ_MHZ, DEVICE_RESOURCES
from hw.sizes import DEVICES as SIZES

__all__ = ["DEVICES", "PLATFORMS", "SIZES", "DEFAULT_FREQ_MHZ", "DEVICE_RESOURCES", "CoreSize",
           "pll_params", "sync_domain", "PLL", "SelfTestTop", "SoCTop", "platform_for"]


#: device -> amaranth-boards platform class name
PLATFORMS = {
    "12F": "ULX3S_12F_Platform",
    "25F": "ULX3S_25F_Platform",
    "45F": "ULX3S_45F_Platform",
    "85F": "ULX3S_85F_Platform",
}

#: device -> (amaranth-boards platform class name, core size); the sizes alone are
#: :data:`hw.sizes.DEVICES` (re-exported here as ``SIZES``)
DEVICES = {device: (PLATFORMS[device], SIZES[device]) for device in PLATFORMS}


def platform_for(device: str):
    """The amaranth-boards platform instance for a ULX3S ``device`` (12F/25F/45F/85F)."""
    if device not in PLATFORMS:
        raise ValueError(f"unknown ULX3S device {device!r}; expected one of {sorted(PLATFORMS)}")
    import amaranth_boards.ulx3s as boards
    return getattr(boards, PLATFORMS[device])()


def pll_params(f_in: float, f_out: float) -> dict:
    """EHXPLLL dividers for ``f_out`` from ``f_in`` (Hz), as ecppll computes them.

    Searches CLKI_DIV, CLKFB_DIV, CLKOP_DIV (1..128) with the PFD in [3.125, 400] MHz and
    the VCO in [400, 800] MHz, and returns the closest output frequency.
    """
    if not 10e6 <= f_out <= 400e6:
        raise ValueError(f"PLL output frequency must be in [10, 400] MHz, not {f_out / 1e6!r} MHz")
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb in range(1, 81):
            fout = pfd * clkfb
            for clkop in range(1, 129):
                vco = fout * clkop
                if 400e6 <= vco <= 800e6:
                    err = abs(fout - f_out)
                    if best is None or err < best[0]:
                        best = (err, clki, clkfb, clkop, fout, vco)
                    break
    if best is None:
        raise ValueError(f"no EHXPLLL setting reaches {f_out / 1e6} MHz from {f_in / 1e6} MHz")
    _, clki, clkfb, clkop, fout, vco = best
    return {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
            "CLKOP_CPHASE": clkop - 1, "f_out": fout, "f_vco": vco}


def sync_domain() -> ClockDomain:
    """The ``sync`` domain of a board top, driven by :class:`PLL`.

    Asynchronous assertion, synchronous release (the PLL's ResetSynchronizer): the reset net
    is then not a timed path (Amaranth's LPF says BLOCK RESETPATHS), which matters with
    thousands of flip-flops spread over the 85F; the PLL puts it on a global network. The
    domain is defined in the top module that uses it (Amaranth 0.6 no longer propagates
    domains up from a submodule).
    """
    return ClockDomain("sync", async_reset=True)


class PLL(Elaboratable):
    """EHXPLLL from the 25 MHz oscillator to the ``domain`` clock, reset held until lock.

    Drives the clock and reset of ``domain``, which a parent module defines (see
    :func:`sync_domain`).
    """

    def __init__(self, *, f_in: float, f_out: float, clk_in, domain: str = "sync"):
        self.params = pll_params(f_in, f_out)
        self.f_in, self.clk_in, self.domain = f_in, clk_in, domain
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        p = self.params
        clk = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(round(self.f_in / 1e6, 6)),
            a_FREQUENCY_PIN_CLKOP=str(round(p["f_out"] / 1e6, 6)),
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
            p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p["CLKFB_DIV"],
            i_RST=0, i_STDBY=0, i_CLKI=self.clk_in, o_CLKOP=clk, i_CLKFB=clk,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=self.locked,
        )
        m.d.comb += ClockSignal(self.domain).eq(clk)
        # the reset reaches every flip-flop with one (over 12000 on the 85F builds): on a
        # global network (a DCCA, as nextpnr does for clocks) it takes no fabric routing,
        # where router2 had to build that tree across the whole die
        m.domains.rst_pre = ClockDomain("rst_pre", async_reset=True, local=True)
        m.d.comb += ClockSignal("rst_pre").eq(clk)
        m.submodules.rst_sync = ResetSynchronizer(~self.locked, domain="rst_pre")
        m.submodules.rst_global = Instance("DCCA", i_CLKI=ResetSignal("rst_pre"), i_CE=1,
                                           o_CLKO=ResetSignal(self.domain))
        if platform is not None:
            platform.add_clock_constraint(clk, p["f_out"])
        return m


def _led_buffers(m, platform):
    """Output buffers on the eight user LEDs (their ``o`` drives the LED)."""
    leds = []
    for i in range(8):
        m.submodules[f"led{i}"] = buf = io.Buffer("o", platform.request("led", i, dir="-"))
        leds.append(buf)
    return leds


class SelfTestTop(Elaboratable):
    """Board top: PLL -> core + self-test. LEDs: 0 pass, 1 fail, 2 done, 7 heartbeat."""

    def __init__(self, *, size: CoreSize, freq: float):
        from hw.soc.selftest import SelfTestSystem
        from hw.sizes import SELFTEST_GEOMETRY
        self.system = SelfTestSystem(**SELFTEST_GEOMETRY)
        self.freq = freq

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync_domain()
        m.submodules.clk25 = clk25 = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        m.submodules.pll = pll = PLL(f_in=25e6, f_out=self.freq, clk_in=clk25.i)
        m.submodules.system = st = self.system
        leds = _led_buffers(m, platform)
        beat = Signal(range(int(pll.params["f_out"]) // 2 + 1))
        blink = Signal()
        m.d.sync += beat.eq(beat + 1)
        with m.If(beat == int(pll.params["f_out"]) // 2):
            m.d.sync += [beat.eq(0), blink.eq(~blink)]
        m.d.comb += [leds[0].o.eq(st.passed), leds[1].o.eq(st.done & ~st.passed),
                     leds[2].o.eq(st.done), leds[7].o.eq(blink)]
        return m


class SoCTop(Elaboratable):
    """Board top: PLL -> :class:`~hw.soc.top.UARTSoC` on the FT231X USB-serial pins.

    LEDs: 0 a request byte arrived (stretched), 1 a reply byte left (stretched),
    7 heartbeat.
    """

    def __init__(self, *, size: CoreSize, freq: float, baud: int):
        from hw.soc.top import UARTSoC
        self.pll_params = pll_params(25e6, freq)
        self.soc = UARTSoC(clk_freq=self.pll_params["f_out"], baud=baud, **size.geometry())
        self.freq, self.baud = freq, baud

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync_domain()
        m.submodules.clk25 = clk25 = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        m.submodules.pll = pll = PLL(f_in=25e6, f_out=self.freq, clk_in=clk25.i)
        m.submodules.soc = soc = self.soc
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        # RTS/DTR stay inputs (unused), as they were when the whole resource was requested
        m.submodules.uart_rts = io.Buffer("i", uart.rts)
        m.submodules.uart_dtr = io.Buffer("i", uart.dtr)
        m.d.comb += [soc.rx.eq(uart_rx.i), uart_tx.o.eq(soc.tx)]
        # the FT231X's TX line is only driven when enabled (ULX3S schematic)
        m.submodules.uart_tx_en = tx_en = io.Buffer("o", platform.request("uart_tx_enable", 0, dir="-"))
        m.d.comb += tx_en.o.eq(1)
        leds = _led_buffers(m, platform)
        f = int(pll.params["f_out"])
        beat = Signal(range(f // 2 + 1))
        blink = Signal()
        m.d.sync += beat.eq(beat + 1)
        with m.If(beat == f // 2):
            m.d.sync += [beat.eq(0), blink.eq(~blink)]
        for led, line in ((leds[0], soc.rx), (leds[1], soc.tx)):
            stretch = Signal(range(f // 20 + 1))
            with m.If(~line):
                m.d.sync += stretch.eq(f // 20)
            with m.Elif(stretch != 0):
                m.d.sync += stretch.eq(stretch - 1)
            m.d.comb += led.o.eq(stretch != 0)
        m.d.comb += leds[7].o.eq(blink)
        return m
