"""Shared pieces of the multiplier library: parameter checks, I/O registers, and the ECP5
primitives (fused LUT4 + carry-chain adders on CCU2C, MULT18X18D) with portable fallbacks.

The fused adder is the reason the LUT-based multipliers here beat Yosys' own mapping: an ECP5
CCU2C half is a LUT4 whose output is the carry-propagate signal, plus a LUT2 (the INIT[3:0]
slice, inputs A and B) that supplies the carry-generate. Yosys only ever places ``x ^ y`` of
two plain bits there, so every partial-product AND or conditional inversion costs a separate
LUT in front of the chain. With input D tied high, the propagate slice (INIT[15:8]) is a free
function of A, B, C and the generate slice (INIT[3:0]) a free function of A, B, so one half
adds ``x(A,B,C) + y(A,B,C)`` for any bit functions whose carry-generate (``x`` wherever
``x == y``) depends on A and B only. :func:`fused_add` checks that condition when it builds
the INIT values, and builds the same sum from plain Amaranth operators everywhere else, so
simulation and the ECP5 netlist compute one function.
"""

from __future__ import annotations

import itertools

from amaranth.hdl import Cat, Const, Instance, Signal, Value, ClockSignal

__all__ = ["IMPLS", "check_bool", "check_int_param", "check_impl", "use_ecp5", "stage",
           "fused_add", "lut4", "mult18x18d"]

#: ``impl`` values: "auto" maps to ECP5 primitives when elaborated for an ECP5 platform.
IMPLS = ("auto", "generic", "ecp5")


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {value!r}")
    return value


def check_int_param(name: str, value, allowed) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        shown = (f"[{allowed.start}, {allowed.stop - 1}]" if isinstance(allowed, range)
                 else f"one of {tuple(allowed)!r}")
        raise ValueError(f"{name} must be an integer in {shown}, not {value!r}")
    return value


def check_impl(value) -> str:
    if value not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS!r}, not {value!r}")
    return value


def use_ecp5(impl: str, platform) -> bool:
    """Whether to instantiate ECP5 primitives (they do not simulate in plain Verilator)."""
    if impl == "auto":
        return getattr(platform, "family", None) == "ecp5"
    return impl == "ecp5"


def stage(m, value: Value, registered: bool, name: str) -> Value:
    """``value`` through one register (sync domain) when ``registered``, else unchanged."""
    if not registered:
        return value
    reg = Signal.like(value, name=name) if isinstance(value, Signal) else Signal(value.shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


def _bit(v) -> int:
    return int(v) & 1


def fused_add(m, bits, *, cin=0, ecp5: bool, name: str) -> Signal:
    """Sum of two bit vectors whose bits are small functions of up to 3 input bits each.

    Parameters
    ----------
    bits : list of (inputs, x_fn, y_fn)
        One entry per result bit, LSB first: ``inputs`` a list of 0-3 one-bit values,
        ``x_fn(*inputs)`` / ``y_fn(*inputs)`` the two addend bits, written with ``& | ^`` and
        ``1 ^ v`` for NOT so they work on both Amaranth values and Python ints.
    cin : 0, 1 or a 1-bit Value
        Carry into bit 0. On ECP5 a signal carry-in costs one extra CCU2C half (it is
        injected as ``x = y = cin``, whose generate is ``cin``).

    Returns
    -------
    Signal of ``len(bits)`` bits: ``(X + Y + cin) mod 2**len(bits)``.
    """
    n = len(bits)
    out = Signal(n, name=name)
    if not ecp5:
        def val(fn, ins):
            v = fn(*ins)
            return Const(_bit(v), 1) if isinstance(v, int) else v
        xs = Cat(*[val(x, ins) for ins, x, _ in bits])
        ys = Cat(*[val(y, ins) for ins, _, y in bits])
        m.d.comb += out.eq(xs + ys + cin)
        return out

    halves = list(bits)
    carry_in = Const(0, 1)
    if isinstance(cin, int):
        if cin not in (0, 1):
            raise ValueError(f"cin must be 0, 1 or a 1-bit value, not {cin!r}")
        if cin:
            halves.insert(0, ([], lambda: 1, lambda: 1))
    else:
        halves.insert(0, ([cin], lambda c: c, lambda c: c))
    skip = len(halves) - n                       # leading injection half, its sum is unused
    if len(halves) % 2:
        halves.append(([], lambda: 0, lambda: 0))

    sums = []
    for k in range(0, len(halves), 2):
        ports = {}
        params = {}
        for h, (ins, x, y) in enumerate(halves[k:k + 2]):
            if len(ins) > 4:
                raise ValueError(f"a fused adder bit takes at most 4 inputs, not {len(ins)}")
            if len(ins) == 4:
                # No input left to tie high: the generate is the propagate slice at C = D = 0,
                # which is right only if it equals x wherever the propagate is 0.
                init = 0
                for idx in range(16):
                    v = [(idx >> j) & 1 for j in range(4)]
                    init |= (_bit(x(*v)) ^ _bit(y(*v))) << idx
                for idx in range(16):
                    v = [(idx >> j) & 1 for j in range(4)]
                    if not (init >> idx) & 1 and (init >> (idx & 3)) & 1 != _bit(x(*v)):
                        raise ValueError(f"{name}: bit {k + h - skip}: 4-input carry-generate "
                                         f"does not match the propagate slice at C = D = 0")
                sig = Signal(name=f"{name}_s{k + h}")
                sums.append(sig)
                for port, v in zip("ABCD", ins):
                    ports[f"i_{port}{h}"] = v
                ports[f"o_S{h}"] = sig
                params[f"p_INIT{h}"] = Const(init, 16)
                params[f"p_INJECT1_{h}"] = "NO"
                continue
            init = 0
            gen = {}
            for idx in range(8):                  # (A, B, C) with D = 1
                v = [(idx >> j) & 1 for j in range(len(ins))]
                xv, yv = _bit(x(*v)), _bit(y(*v))
                if xv ^ yv:
                    init |= 1 << (8 + idx)
                else:
                    ab = idx & 3 if len(ins) >= 2 else idx & (1 if ins else 0)
                    if gen.setdefault(ab, xv) != xv:
                        raise ValueError(f"{name}: bit {k + h - skip}: carry-generate is not a "
                                         f"function of inputs A and B")
            for ab, g in gen.items():
                for idx in range(4):
                    if (idx & 3 if len(ins) >= 2 else idx & (1 if ins else 0)) == ab and g:
                        init |= 1 << idx
            sig = Signal(name=f"{name}_s{k + h}")
            sums.append(sig)
            padded = list(ins) + [Const(0, 1)] * (3 - len(ins))
            for port, v in zip("ABC", padded):
                ports[f"i_{port}{h}"] = v
            ports[f"i_D{h}"] = Const(1, 1)
            ports[f"o_S{h}"] = sig
            params[f"p_INIT{h}"] = Const(init, 16)
            params[f"p_INJECT1_{h}"] = "NO"
        cout = Signal(name=f"{name}_c{k}")
        m.submodules[f"{name}_ccu{k // 2}"] = Instance(
            "CCU2C", i_CIN=carry_in, o_COUT=cout, **ports, **params)
        carry_in = cout
    m.d.comb += out.eq(Cat(*sums[skip:skip + n]))
    return out


def lut4(m, ins, fn, *, ecp5: bool, name: str, keep: bool = False) -> Signal:
    """One LUT4 computing ``fn(*ins)`` (up to 4 one-bit inputs; none: a constant).

    Instantiated as an ECP5 LUT4 so ABC keeps the structure we chose (left to itself it
    re-maps small mux trees into wider PFUMX/L6MUX trees that cost more LUTs). ``keep``
    marks it for Yosys to keep even when it computes a constant.
    """
    out = Signal(name=name)
    if not ecp5:
        v = fn(*ins)
        m.d.comb += out.eq(Const(_bit(v), 1) if isinstance(v, int) else v)
        return out
    init = 0
    for idx in range(1 << len(ins)):
        init |= _bit(fn(*[(idx >> j) & 1 for j in range(len(ins))])) << idx
    if len(ins) < 4:                                  # replicate over the unused inputs
        init = sum(((init >> (idx % (1 << len(ins)))) & 1) << idx for idx in range(16))
    padded = list(ins) + [Const(0, 1)] * (4 - len(ins))
    attrs = {"a_keep": 1} if keep else {}
    m.submodules[name] = Instance("LUT4", p_INIT=Const(init, 16), o_Z=out, **attrs,
                                  **{f"i_{p}": v for p, v in zip("ABCD", padded)})
    return out


def mult18x18d(m, a: Value, b: Value, *, a_signed: bool, b_signed: bool, reg_in: bool,
               reg_out: bool, name: str) -> Value:
    """One ECP5 MULT18X18D: ``a * b`` (each up to 18 bits), exact in ``len(a) + len(b)`` bits.

    The input and output registers are the DSP's own (REG_INPUTA/B, REG_OUTPUT): that is what
    lets a lone multiplier close at >= 250 MHz instead of ~140 MHz with fabric registers.

    Two things keep the DSP's pins off the router, which the 85F builds with 150 DSPs need
    (there router2 stalled on congestion around the DSP rows):

    - An operand narrower than 18 bits sits in the port's top bits, ``A = a << (18 - len(a))``,
      and the product is read from the top of P. The low pins are then constant zeros, which
      nextpnr ties inside the DSP's interconnect tile. Sign-extended, the operand's sign bit
      would drive every upper pin: ``18 - len(a)`` more routed sinks per operand.
    - nextpnr routes constant CLK / CE / RST / SIGNED / SOURCE pins from one GND and one VCC
      LUT for the whole chip: with 15 such pins per DSP, two nets with over 2000 sinks. The
      pins no register uses (CLK1-3, CE1-3, RST1-3) stay unconnected, and the six that matter
      (CE0, RST0, SIGNEDA/B, SOURCEA/B) come from two LUT4 constants of this DSP's own (kept
      through synthesis), which the placer puts beside it.
    """
    wa, wb = len(Value.cast(a)), len(Value.cast(b))
    shift = (18 - wa) + (18 - wb)
    p = Signal(36, name=f"{name}_p")
    ports = {}
    # kept: a constant signal would become one chip-wide net in nextpnr
    one = lut4(m, [], lambda: 1, ecp5=True, name=f"{name}_one", keep=True)
    zero = lut4(m, [], lambda: 0, ecp5=True, name=f"{name}_zero", keep=True)
    for port, v, sgn, w in (("A", a, a_signed, wa), ("B", b, b_signed, wb)):
        for i in range(18 - w, 18):
            ports[f"i_{port}{i}"] = Value.cast(v)[i - (18 - w)]
        for i in range(18 - w):
            ports[f"i_{port}{i}"] = Const(0, 1)
        ports[f"i_SIGNED{port}"] = one if sgn else zero
    for i in range(18):
        ports[f"i_C{i}"] = Const(0, 1)
    for i in range(36):
        ports[f"o_P{i}"] = p[i]
    ports["i_CLK0"] = ClockSignal("sync")
    ports["i_CE0"] = one
    # no reset: the DSP's registers hold data only, and 100+ DSPs on the reset net
    # made it the slowest route of the 85F build
    ports["i_RST0"] = zero
    ports["i_SOURCEA"] = zero
    ports["i_SOURCEB"] = zero
    clk_in = "CLK0" if reg_in else "NONE"
    m.submodules[f"{name}_dsp"] = Instance(
        "MULT18X18D", **ports,
        p_REG_INPUTA_CLK=clk_in, p_REG_INPUTB_CLK=clk_in, p_REG_INPUTC_CLK="NONE",
        p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="CLK0" if reg_out else "NONE",
        p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED", p_CLK3_DIV="ENABLED",
        p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
        p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC")
    # the exact product a * b, as a signed (or unsigned) value of wa + wb bits
    return p[shift:]

