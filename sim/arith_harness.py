"""Test harness for hw.arith: many multiplier configurations, each replicated in lanes, in ONE
Verilog module, so an exhaustive sweep of 65,536 operand pairs takes 65,536 / lanes clock
cycles (one new batch per clock).

Port ``<name>_<port>`` of the harness is the concatenation (lane 0 in the low bits) of that
port over the configuration's lanes; ports listed as ``shared`` (start, en, clr) are driven
once for all lanes. The cocotb side (``run_cycles``, ``sweep``) drives and samples at the
falling clock edge, so values written there are stable at the next rising edge.

Each configuration is converted once, as a Verilog module of its own (``<top>__<name>``, the
component's ports exactly), and instantiated once per lane: converting every lane separately
made Amaranth elaborate the same design ``lanes`` times.

The multiplier-library tests (:data:`SHARED_MODULES`) share ONE harness holding all their
configurations, hence one Verilator build (C++ compile dominates their cost); each module
still runs its own cocotb tests on it, through :func:`run_shared`.
"""

from __future__ import annotations

import functools
import importlib
import re

import numpy as np
from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

SHARED = ("start", "en", "clr")

#: test modules whose configurations live in the shared harness (:func:`run_shared`); each
#: defines ``configs()`` and may define ``extra_sources()`` (file name -> Verilog text, e.g.
#: cell models). Their configurations appear as ``<tag>_<name>`` (tag: the module name
#: without ``test_arith_``); each module's cocotb tests see only their own, by ``<name>``.
SHARED_MODULES = ("test_arith_int", "test_arith_booth", "test_arith_fp", "test_arith_bitserial",
                  "test_arith_ecp5")
SHARED_TOP = "arith"


class Lanes(wiring.Component):
    """``configs``: name -> (factory returning a fresh component, number of lanes).

    ``desc[name]`` (JSON, for the testbench): lanes, latency, input ports (width, shared),
    output ports (width, signed), ``port`` (the harness port prefix) and CYCLES / FRAC_BITS
    if the component has them. Convert with :meth:`verilog` (the lanes instantiate modules
    that only it defines).
    """

    def __init__(self, configs: dict):
        self._configs = {}
        ports = {}
        self.desc = {}
        for name, (factory, lanes) in configs.items():
            inst = factory()
            self._configs[name] = inst
            d = {"lanes": lanes, "latency": inst.LATENCY, "in": {}, "out": {}, "port": name}
            for port, member in inst.signature.members.items():
                shape = Shape.cast(member.shape)
                if member.flow == wiring.In:
                    n = 1 if port in SHARED else lanes
                    ports[f"{name}_{port}"] = In(shape.width * n)
                    d["in"][port] = [shape.width, port in SHARED]
                else:
                    ports[f"{name}_{port}"] = Out(shape.width * lanes)
                    d["out"][port] = [shape.width, shape.signed]
            for attr in ("CYCLES", "FRAC_BITS"):
                if hasattr(inst, attr):
                    d[attr.lower()] = getattr(inst, attr)
            self.desc[name] = d
        self._modules = None            # name -> (Verilog module name, has clk/rst ports)
        super().__init__(ports)

    def verilog(self, top: str) -> str:
        """The harness as Verilog, top module ``top``, plus one module per configuration."""
        from amaranth.back import rtlil
        from hw.simulate import rtlil_to_verilog
        texts, self._modules = [], {}
        for name, inst in self._configs.items():
            mod = f"{top}__{name}"
            text = rtlil.convert(inst, name=mod, emit_src=False)
            body = re.search(rf"^module \\{re.escape(mod)}\n(.*?)^end$", text, re.M | re.S)
            ports = set(re.findall(r"^ *wire .*\b(?:input|output) \d+ .*\\(\S+)$",
                                   body.group(1), re.M))
            want = set(inst.signature.members)
            if not want <= ports <= want | {"clk", "rst"}:
                raise RuntimeError(f"{name}: module ports {sorted(ports)}, expected "
                                   f"{sorted(want)} (+ clk, rst)")
            self._modules[name] = (mod, "clk" in ports)
            texts.append(text)
        texts.append(rtlil.convert(self, name=top, emit_src=False))
        return rtlil_to_verilog("\n".join(texts))

    def elaborate(self, platform):
        if self._modules is None:
            raise RuntimeError("convert a Lanes harness with its verilog() method")
        m = Module()
        for name, inst in self._configs.items():
            mod, clocked = self._modules[name]
            for i in range(self.desc[name]["lanes"]):
                conns = {"i_clk": ClockSignal(), "i_rst": ResetSignal()} if clocked else {}
                for port, member in inst.signature.members.items():
                    w = Shape.cast(member.shape).width
                    outer = getattr(self, f"{name}_{port}")
                    if member.flow == wiring.In:
                        conns[f"i_{port}"] = outer if port in SHARED else outer[i * w:(i + 1) * w]
                    else:
                        conns[f"o_{port}"] = outer[i * w:(i + 1) * w]
                m.submodules[f"{name}_{i}"] = Instance(mod, **conns)
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
    prefix = desc.get("port", name)
    ports = {p: getattr(dut, f"{prefix}_{p}") for p in list(desc["in"]) + list(desc["out"])}
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


@functools.cache
def shared_harness() -> tuple[str, dict, dict, list]:
    """The harness of all :data:`SHARED_MODULES` (built once per process): Verilog text,
    module -> its configurations' ``desc`` (by their own names), extra sources, build args."""
    from hw.netlist import vpi_top_only
    configs, owner, extra = {}, {}, {}
    for module in SHARED_MODULES:
        mod = importlib.import_module(module)
        tag = module.removeprefix("test_arith_")
        for name, spec in mod.configs().items():
            configs[f"{tag}_{name}"] = spec
            owner[f"{tag}_{name}"] = (module, name)
        if hasattr(mod, "extra_sources"):
            extra.update(mod.extra_sources())
    h = Lanes(configs)
    params = {module: {} for module in SHARED_MODULES}
    for full, (module, name) in owner.items():
        params[module][name] = h.desc[full]
    # the tests touch only the harness's top-level ports, so only those are made visible to
    # cocotb (``--public-flat-rw`` on every signal of every lane made the C++, and its
    # compile, several times larger)
    vlt, args = vpi_top_only(SHARED_TOP)
    return h.verilog(SHARED_TOP), params, {**extra, **vlt}, args


def run_shared(test_module: str, **kw):
    """Run ``test_module``'s cocotb tests on the shared harness (``run_cocotb``'s cache and
    lock: the first caller builds it, every other test, in any pytest worker, reuses it)."""
    from hw.simulate import run_cocotb
    if test_module not in SHARED_MODULES:
        raise ValueError(f"{test_module} is not in arith_harness.SHARED_MODULES")
    text, params, sources, args = shared_harness()
    return run_cocotb(text, name=SHARED_TOP, test_module=test_module,
                      params=params[test_module], extra_sources=sources, build_args=args, **kw)
