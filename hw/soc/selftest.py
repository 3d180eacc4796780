"""On-board self-test: run a GEMM stored in the buffers at reset and compare with a ROM."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw import layout, numerics
from sw.numerics import OutMode, Requant
from sw.protocol import Buffer, ErrorCode

__all__ = ["SelfTest", "selftest_operands"]


def selftest_operands(rows: int, cols: int, seed: int = 7):
    """The stored test GEMM: a few tiles in each direction, K not a multiple of anything,
    extremes in the first row/column, requantized to INT8."""
    import numpy as np
    rng = np.random.default_rng(seed)
    M, K, N = 2 * rows + 1, 37, 2 * cols + 1
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    a[0, :] = -128
    w[:, 0] = -128
    rq = Requant(multiplier=40503, shift=22, zero_point=-3, relu=False)
    return a, w, rq


class SelfTest(wiring.Component):
    """Drives an :class:`~hw.systolic.core.MpGemmCore` whose buffers were initialised with
    :func:`selftest_operands`, then reads back every result byte and compares it with the
    golden model's output held in a ROM.

    Members
    -------
    core : Out(...)
        Connect to the core's command and bus ports (flipped core signature subset).
    done, passed : Out(1)
        Test finished / every byte matched.
    """

    def __init__(self, core, *, seed: int = 7):
        self._a, self._w, self._rq = selftest_operands(core.rows, core.cols, seed)
        M, K = self._a.shape
        N = self._w.shape[1]
        self.shape = (M, K, N)
        self.expected = numerics.mpgemm(self._a, self._w, self._rq)
        self.addr_bits = core.addr_bits
        self.read_latency = core.READ_LATENCY
        super().__init__({
            "bus_sel": Out(Buffer), "bus_addr": Out(core.addr_bits), "bus_re": Out(1),
            "bus_rdata": In(8),
            "cfg_m": Out(16), "cfg_k": Out(16), "cfg_n": Out(16), "cfg_out_mode": Out(OutMode),
            "cfg_mult": Out(16), "cfg_shift": Out(6), "cfg_zp": Out(8), "cfg_relu": Out(1),
            "start": Out(1), "core_done": In(1), "core_error": In(ErrorCode),
            "done": Out(1), "passed": Out(1),
        })

    def images(self, rows, cols):
        """(A image, W image) to initialise the core's buffers with."""
        return layout.a_image(self._a, rows), layout.w_image(self._w, cols)

    def elaborate(self, platform):
        m = Module()
        M, K, N = self.shape
        exp = [int(x) & 0xFF for x in self.expected.ravel()]
        m.submodules.rom = rom = Memory(shape=8, depth=len(exp), init=exp)
        rp = rom.read_port()
        rq = self._rq
        m.d.comb += [self.cfg_m.eq(M), self.cfg_k.eq(K), self.cfg_n.eq(N),
                     self.cfg_out_mode.eq(OutMode.INT8), self.cfg_mult.eq(rq.multiplier),
                     self.cfg_shift.eq(rq.shift), self.cfg_zp.eq(rq.zero_point & 0xFF),
                     self.cfg_relu.eq(int(rq.relu)), self.bus_sel.eq(Buffer.OUT)]
        idx = Signal(range(len(exp) + 1))
        wait = Signal(range(self.read_latency + 1))
        ok = Signal(init=1)
        m.d.comb += [rp.addr.eq(idx), self.bus_addr.eq(idx)]
        with m.FSM():
            with m.State("START"):
                m.d.comb += self.start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(self.core_done):
                    with m.If(self.core_error != ErrorCode.OK):
                        m.d.sync += ok.eq(0)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "READ"
            with m.State("READ"):
                m.d.comb += self.bus_re.eq(1)
                m.d.sync += wait.eq(self.read_latency - 1)
                m.next = "WAIT_DATA"
            with m.State("WAIT_DATA"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 1):
                    m.next = "CMP"
            with m.State("CMP"):
                with m.If(self.bus_rdata != rp.data):
                    m.d.sync += ok.eq(0)
                m.d.sync += idx.eq(idx + 1)
                with m.If(idx == len(exp) - 1):
                    m.next = "DONE"
                with m.Else():
                    m.next = "READ"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
        m.d.comb += self.passed.eq(self.done & ok)
        return m


class SelfTestSystem(wiring.Component):
    """A core whose buffers hold the self-test operands, driven by :class:`SelfTest`.

    Members
    -------
    done, passed : Out(1)
    """

    def __init__(self, *, rows, cols, a_depth, w_depth, out_words, seed: int = 7):
        from hw.systolic.core import MpGemmCore
        size = dict(rows=rows, cols=cols, a_depth=a_depth, w_depth=w_depth, out_words=out_words)
        a, w, _ = selftest_operands(rows, cols, seed)
        self.core = MpGemmCore(**size, a_init=layout.a_image(a, rows),
                               w_init=layout.w_image(w, cols))
        self.selftest = SelfTest(self.core, seed=seed)
        super().__init__({"done": Out(1), "passed": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.selftest = st = self.selftest
        for name in ("bus_sel", "bus_addr", "bus_re", "cfg_m", "cfg_k", "cfg_n", "cfg_out_mode",
                     "cfg_mult", "cfg_shift", "cfg_zp", "cfg_relu", "start"):
            m.d.comb += getattr(core, name).eq(getattr(st, name))
        m.d.comb += [st.bus_rdata.eq(core.bus_rdata), st.core_done.eq(core.done),
                     st.core_error.eq(core.error), self.done.eq(st.done), self.passed.eq(st.passed)]
        return m
