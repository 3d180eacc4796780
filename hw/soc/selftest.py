"""On-board self-test: load a stored GEMM into the core, run it and compare with a ROM."""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw import layout, numerics
from sw.numerics import OutMode, Requant, WeightFormat
from sw.protocol import Buffer, ErrorCode

__all__ = ["SelfTest", "SelfTestSystem", "selftest_operands"]


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
    """Drives a :class:`~hw.core.MixCore` through its host bus: writes the A and W images of
    :func:`selftest_operands` from a ROM (one byte per cycle), runs the GEMM (INT8 weights,
    INT8 output with the descriptor's scalar requantization), then reads back every result
    byte and compares it with the golden model's output (``sw.numerics.mixgemm``) held in a
    second ROM.

    Members
    -------
    bus_sel, bus_addr, bus_wdata, bus_we, bus_re, cfg, start : Out(...)
        To the core's ports of the same names.
    bus_rdata, core_done, core_error : In(...)
        From the core's ``bus_rdata``, ``done`` and ``error``.
    done, passed : Out(1)
        Test finished / the core reported no error and every byte matched.
    """

    def __init__(self, core, *, seed: int = 7):
        from hw.core import LAYER_LAYOUT
        self._a, self._w, self._rq = selftest_operands(core.rows, core.cols, seed)
        M, K = self._a.shape
        N = self._w.shape[1]
        self.shape = (M, K, N)
        self.expected = numerics.mixgemm(self._a, self._w, fmt=WeightFormat.INT8,
                                         requant=self._rq)
        self.a_image = layout.act_image(self._a, core.rows)
        self.w_image = layout.weight_image(
            numerics.pack_weights(self._w, WeightFormat.INT8), core.cols)
        #: OUT byte address of every result element (row-major)
        self.positions = layout.result_positions(M, N, core.rows, OutMode.INT8)
        assert len(self.a_image) <= core.a_bytes and len(self.w_image) <= core.w_bytes
        assert int(self.positions.max()) < core.out_bytes and K <= core.max_k
        self.addr_bits = core.addr_bits
        self.read_latency = core.READ_LATENCY
        super().__init__({
            "bus_sel": Out(Buffer), "bus_addr": Out(core.addr_bits), "bus_wdata": Out(8),
            "bus_we": Out(1), "bus_re": Out(1), "bus_rdata": In(8),
            "cfg": Out(LAYER_LAYOUT), "start": Out(1),
            "core_done": In(1), "core_error": In(ErrorCode),
            "done": Out(1), "passed": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        M, K, N = self.shape
        rq = self._rq
        ab = self.addr_bits
        m.d.comb += [self.cfg.m.eq(M), self.cfg.k.eq(K), self.cfg.n.eq(N),
                     self.cfg.out_mode.eq(OutMode.INT8), self.cfg.fmt.eq(WeightFormat.INT8),
                     self.cfg.group.eq(0), self.cfg.chan.eq(0),
                     self.cfg.mult.eq(rq.multiplier), self.cfg.shift.eq(rq.shift),
                     self.cfg.zp.eq(rq.zero_point), self.cfg.relu.eq(int(rq.relu)),
                     self.cfg.w_base.eq(0), self.cfg.chan_base.eq(0),
                     self.cfg.group_base.eq(0)]

        # load ROM: the A image, then the W image
        la = len(self.a_image)
        load = list(self.a_image) + list(self.w_image)
        m.submodules.load_rom = load_rom = Memory(shape=8, depth=len(load), init=load)
        lrp = load_rom.read_port()
        # check ROM: (OUT address, expected byte) per result element
        chk_layout = data.StructLayout({"addr": ab, "byte": 8})
        chk = [{"addr": int(p), "byte": int(e) & 0xFF}
               for p, e in zip(self.positions.ravel(), self.expected.ravel())]
        m.submodules.check_rom = check_rom = Memory(shape=chk_layout, depth=len(chk), init=chk)
        crp = check_rom.read_port()

        lidx = Signal(range(len(load)))         # next load byte to fetch
        w_pend = Signal()                       # the byte fetched last cycle goes out now
        w_idx = Signal(range(len(load)))
        cidx = Signal(range(len(chk) + 1))
        last = Signal()
        cur = Signal(chk_layout)
        wait = Signal(range(self.read_latency + 1))
        ok = Signal(init=1)
        reading = Signal()
        m.d.comb += [lrp.addr.eq(lidx), crp.addr.eq(cidx)]
        m.d.sync += w_pend.eq(0)
        with m.If(w_pend):
            in_a = w_idx < la
            m.d.comb += [self.bus_we.eq(1), self.bus_wdata.eq(lrp.data),
                         self.bus_sel.eq(Mux(in_a, Buffer.A, Buffer.W)),
                         self.bus_addr.eq(Mux(in_a, w_idx, w_idx - la))]
        with m.Elif(reading):
            m.d.comb += [self.bus_sel.eq(Buffer.OUT), self.bus_addr.eq(cur.addr),
                         self.bus_re.eq(1)]
        with m.FSM():
            with m.State("LOAD"):
                m.d.sync += [w_pend.eq(1), w_idx.eq(lidx), lidx.eq(lidx + 1)]
                with m.If(lidx == len(load) - 1):
                    m.next = "SETTLE"
            with m.State("SETTLE"):         # the last byte is on the bus this cycle
                m.next = "START"
            with m.State("START"):
                m.d.comb += self.start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(self.core_done):
                    with m.If(self.core_error != ErrorCode.OK):
                        m.d.sync += ok.eq(0)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("FETCH"):
                # the check ROM's port shows entry cidx (cidx has not changed since the
                # previous cycle); the next entry is addressed from now on
                m.d.sync += [cur.eq(crp.data), wait.eq(self.read_latency), cidx.eq(cidx + 1),
                             last.eq(cidx == len(chk) - 1)]
                m.next = "READ"
            with m.State("READ"):           # cur.addr on the bus; its byte READ_LATENCY later
                m.d.comb += reading.eq(1)
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    with m.If(self.bus_rdata != cur.byte):
                        m.d.sync += ok.eq(0)
                    with m.If(last):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
        m.d.comb += self.passed.eq(self.done & ok)
        return m


class SelfTestSystem(wiring.Component):
    """A :class:`~hw.core.MixCore` (keyword geometry, as ``hw.sizes.SELFTEST_GEOMETRY``)
    driven by :class:`SelfTest`.

    Members
    -------
    done, passed : Out(1)
    """

    def __init__(self, *, seed: int = 7, **geometry):
        from hw.core import MixCore
        self.core = MixCore(**geometry)
        self.selftest = SelfTest(self.core, seed=seed)
        super().__init__({"done": Out(1), "passed": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.selftest = st = self.selftest
        for name in ("bus_sel", "bus_addr", "bus_wdata", "bus_we", "bus_re", "cfg", "start"):
            m.d.comb += getattr(core, name).eq(getattr(st, name))
        m.d.comb += [st.bus_rdata.eq(core.bus_rdata), st.core_done.eq(core.done),
                     st.core_error.eq(core.error), core.abort.eq(0),
                     self.done.eq(st.done), self.passed.eq(st.passed)]
        return m
