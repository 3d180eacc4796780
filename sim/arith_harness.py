"""Test harness for hw.arith: many multiplier configurations, each replicated in lanes, in ONE
Verilog module, so a whole test file costs one Verilator build and an exhaustive sweep of
65,536 operand pairs takes 65,536 / lanes clock cycles (one new batch per clock).

Port ``<name>_<port>`` of the harness is the concatenation (lane 0 in the low bits) of that
port over the configuration's lanes; ports listed as ``shared`` (start, en, clr) are driven
once for all lanes. The cocotb side (``run_cycles``, ``sweep``) drives and samples at the
falling clock edge, so values written there are stable at the next rising edge.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

SHARED = ("start", "en", "clr")


class Lanes(wiring.Component):
    """``configs``: name -> (factory returning a fresh component, number of lanes)."""

    def __init__(self, configs: dict):
        self._configs = {}
        ports = {}
        self.desc = {}
        for name, (factory, lanes) in configs.items():
            insts = [factory() for _ in range(lanes)]
            self._configs[name] = insts
            d = {"lanes": lanes, "latency": insts[0].LATENCY, "in": {}, "out": {}}
            for port, member in insts[0].signature.members.items():
                shape = Shape.cast(member.shape)
                if member.flow == wiring.In:
                    n = 1 if port in SHARED else lanes
                    ports[f"{name}_{port}"] = In(shape.width * n)
                    d["in"][port] = [shape.width, port in SHARED]
                else:
                    ports[f"{name}_{port}"] = Out(shape.width * lanes)
                    d["out"][port] = [shape.width, shape.signed]
            for attr in ("CYCLES", "FRAC_BITS"):
                if hasattr(insts[0], attr):
                    d[attr.lower()] = getattr(insts[0], attr)
            self.desc[name] = d
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for name, insts in self._configs.items():
            for i, inst in enumerate(insts):
                m.submodules[f"{name}_{i}"] = inst
                for port, member in inst.signature.members.items():
                    w = Shape.cast(member.shape).width
                    outer = getattr(self, f"{name}_{port}")
                    if member.flow == wiring.In:
                        src = outer if port in SHARED else outer[i * w:(i + 1) * w]
                        m.d.comb += getattr(inst, port).eq(src)
                    else:
                        m.d.comb += outer[i * w:(i + 1) * w].eq(getattr(inst, port))
        return m


# -- packing (pure Python/NumPy; also used by the cocotb coroutines) --------------------------

def pack(values, width: int) -> int:
    """Lane values (any sign) -> one integer, lane 0 in the low bits."""
    out = 0
    mask = (1 << width) - 1
    for v in reversed([int(x) for x in values]):
        out = (out << width) | (v & mask)
    return out


def unpack(word: int, width: int, lanes: int, signed: bool) -> list[int]:
    mask = (1 << width) - 1
    vals = [(word >> (i * width)) & mask for i in range(lanes)]
    if signed:
        vals = [v - (1 << width) if v >> (width - 1) else v for v in vals]
    return vals


# -- cocotb side ------------------------------------------------------------------------------

async def start_clock(dut):
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import FallingEdge, RisingEdge
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await FallingEdge(dut.clk)


async def run_cycles(dut, name: str, desc: dict, drive: list[dict], extra: int) -> list[dict]:
    """Drive ``drive[t]`` (port -> packed int) at cycle t, run ``extra`` more idle cycles;
    return, per cycle, every output port's packed value sampled before that cycle's inputs
    take effect at the next rising edge (so ``out[t + LATENCY]`` answers ``drive[t]``)."""
    from cocotb.triggers import FallingEdge
    ports = {p: getattr(dut, f"{name}_{p}") for p in list(desc["in"]) + list(desc["out"])}
    got = []
    for t in range(len(drive) + extra):
        vals = drive[t] if t < len(drive) else {}
        for p in desc["in"]:
            ports[p].value = int(vals.get(p, 0))
        got.append({p: ports[p].value.to_unsigned() for p in desc["out"]})
        await FallingEdge(dut.clk)
    return got


async def sweep(dut, name: str, desc: dict, inputs: dict, shared: dict | None = None) -> dict:
    """Stream per-pair ``inputs`` (port -> 1-D int array, equal lengths) through a pipelined
    configuration, one batch of ``lanes`` pairs per clock; return port -> int64 array of the
    outputs (object array when wider than 63 bits) in input order."""
    lanes, lat = desc["lanes"], desc["latency"]
    n = len(next(iter(inputs.values())))
    nb = -(-n // lanes)
    drive = []
    for t in range(nb):
        d = {}
        for p, arr in inputs.items():
            chunk = list(arr[t * lanes:(t + 1) * lanes])
            chunk += [0] * (lanes - len(chunk))
            d[p] = pack(chunk, desc["in"][p][0])
        for p, arr in (shared or {}).items():
            d[p] = int(arr[t])
        drive.append(d)
    got = await run_cycles(dut, name, desc, drive, lat + 1)
    out = {}
    for p, (w, sgn) in desc["out"].items():
        vals = []
        for t in range(nb):
            vals += unpack(got[t + lat][p], w, lanes, sgn)
        out[p] = np.array(vals[:n], dtype=np.int64 if w <= 63 else object)
    return out


def run_lanes(h, *, name: str, test_module: str, extra_sources=None, **kw):
    """``run_cocotb`` for a :class:`Lanes` harness: the tests touch only its top-level ports,
    so only those are made visible to cocotb (``--public-flat-rw`` on every signal of every
    lane made the C++, and its compile, several times larger)."""
    from hw.netlist import vpi_top_only
    from hw.simulate import run_cocotb
    vlt, args = vpi_top_only(name)
    return run_cocotb(h, name=name, test_module=test_module, params=h.desc,
                      extra_sources={**(extra_sources or {}), **vlt}, build_args=args, **kw)
