"""Small gateware helpers shared by the systolic engine and the core."""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Instance, Mux, ResetSignal, Signal, Value

__all__ = ["is_pow2", "serial_mul_step", "register", "delay", "fanout_delay", "tree_levels", "select_tree"]


def is_pow2(v) -> bool:
    """``v`` is an int power of two (1, 2, 4, ...)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (v & (v - 1)) == 0


def serial_mul_step(m, acc, x, y, bit, *, name):
    """One step of a bit-serial ``acc = x * y`` (LSB first): shape checks need no DSP block.

    Call it in the cycles ``bit`` = 0, 1, ..., ``len(y)`` (``acc`` cleared before step 0;
    ``x`` and ``y`` held). Step 0 adds ``y[0] ? x : 0`` and keeps ``x << 1`` and ``y >> 1``
    in registers (``{name}_xs``, ``{name}_ys``); each later step adds the kept ``x`` if the
    kept ``y``'s low bit is set and shifts both by one. So a step is one mux and one adder:
    picking bit ``bit`` of ``y`` and shifting ``x`` by ``bit`` was a barrel shifter in
    front of the adder (the 85F ``dsp8s`` build's slowest path on one seed).
    """
    xs = Signal(len(acc), name=f"{name}_xs")
    ys = Signal(len(y), name=f"{name}_ys")
    first = bit == 0
    cur_x = Mux(first, x, xs)
    cur_y = Mux(first, y, ys)
    m.d.sync += [acc.eq(acc + Mux(cur_y[0], cur_x, 0)),
                 xs.eq(cur_x << 1), ys.eq(cur_y >> 1)]


def register(m, value, name, *, reset_less=False, apart=False, en=None):
    """``value`` one cycle later, in a sync register named ``name`` (reset to 0 unless
    ``reset_less``), loaded in the cycles ``en`` is set (default: every cycle).

    ``apart=True`` builds each bit as an ECP5 ``TRELLIS_FF`` instance marked ``keep`` (use
    it only when building ECP5 primitives, see :func:`hw.arith._common.use_ecp5`). Yosys
    merges registers with the same input into one (``opt_merge``), and a systolic array is
    full of them: every PE on an anti-diagonal holds the same delayed ``mode`` and ``valid``,
    so the array's hop registers collapsed into one register per diagonal, driving PEs far
    apart (the 85F ``dsp8s`` build's slowest path: 8.3 ns on one such net). An instance is
    a cell Yosys does not merge, so each PE keeps its own register beside it. Such a
    register resets asynchronously, as the board's ``sync`` domain does, and to 0 only.
    """
    r = Signal.like(value, name=name, reset_less=reset_less)
    if apart and r.init != 0:
        raise ValueError(f"register {name!r}: a register kept apart resets to 0, not "
                         f"{r.init!r}")
    if not apart:
        if en is None:
            m.d.sync += r.eq(value)
        else:
            with m.If(en):
                m.d.sync += r.eq(value)
        return r
    # the reset as the board's sync domain has it (fpga.ulx3s.sync_domain: asynchronous
    # assertion, synchronous release), so these pack into slices with Yosys' own registers
    rst = Const(0, 1) if reset_less else ResetSignal("sync", allow_reset_less=True)
    srmode = {} if reset_less else {"p_SRMODE": "ASYNC"}
    value = Value.cast(value)
    for b in range(len(r)):
        m.submodules[f"{name}_ff{b}"] = Instance(
            "TRELLIS_FF", a_keep=1, p_GSR="DISABLED", p_CEMUX="1" if en is None else "CE",
            p_CLKMUX="CLK", p_LSRMUX="LSR", p_REGSET="RESET", **srmode,
            i_CLK=ClockSignal("sync"), i_LSR=rst, i_CE=Const(1, 1) if en is None else en,
            i_DI=value[b], o_Q=r[b])
    return r


def delay(m, sig, n, name, reset_less=False, *, apart=False):
    """``sig`` through ``n`` sync registers (named ``{name}_d0`` ...); ``apart``: see
    :func:`register`."""
    for k in range(n):
        sig = register(m, sig, f"{name}_d{k}", reset_less=reset_less, apart=apart)
    return sig


def fanout_delay(m, sig, n, copies, name, *, radix=4, apart=False):
    """``sig`` through ``n`` sync registers for each of ``copies`` sinks far apart.

    Returns ``copies`` signals, each ``sig`` ``n`` cycles later (reset-less registers). The
    last registers of the line branch into a tree of ``radix`` (the copies of one level
    load from their parent in the level before), so no register drives more than ``radix``
    copies or sinks across the die. With fewer than :func:`tree_levels` registers the top
    levels of the tree are built, and the last level's registers drive several sinks. One
    register at the end of a shared line, driving all 16 multipliers of a shared-index
    group, was the 85F ``dsp8s`` build's slowest path on one seed (15.56 ns of routing).
    ``apart``: see :func:`register` (or Yosys merges the copies back into one).
    """
    levels = tree_levels(copies, radix)
    tree = min(n, levels)
    sig = delay(m, sig, n - tree, f"{name}_s", reset_less=True)
    outs = [sig]
    # level sizes from the root: ceil(copies / radix ** k), the top ``tree`` of them
    sizes = [-(-copies // radix ** (levels - 1 - k)) for k in range(levels)][:tree]
    for lvl, size in enumerate(sizes):
        outs = [register(m, outs[i * len(outs) // size], f"{name}_t{lvl}_{i}", reset_less=True,
                         apart=apart) for i in range(size)]
    return [outs[i * len(outs) // copies] for i in range(copies)]


def tree_levels(n: int, radix: int = 4) -> int:
    """Register levels of :func:`select_tree` over ``n`` inputs."""
    levels = 0
    while n > 1:
        n = -(-n // radix)
        levels += 1
    return levels


def select_tree(m, inputs, sel, *, name, radix=4):
    """``inputs[sel]`` through a ``radix``-way mux tree with a register after every level.

    The result comes ``tree_levels(len(inputs), radix)`` cycles after ``sel`` and the
    inputs (0 where ``sel`` points past the end; one input is passed through unregistered).
    Wide selections on a big device gather bytes from all over the die: one register per
    level keeps each cycle to one small mux (a radix-4 byte mux is a LUT4 pair and a PFUMX
    per bit) and one hop of routing, where an unregistered tree took several die-crossing
    nets in one cycle.

    ``sel`` may also be a list of registers holding the same value every cycle (copies
    kept apart, see :func:`register`): the first level's muxes are shared out among them in
    contiguous blocks, so that no one select net reaches all of them. The first level is
    the widest (``len(inputs) / radix`` muxes of ``width`` bits), and its inputs may lie
    all over the die; the later levels take their select from the first copy.
    """
    if not is_pow2(radix) or radix < 2:
        raise ValueError(f"radix must be a power of two >= 2, not {radix!r}")
    items = list(inputs)
    if not items:
        raise ValueError("select_tree needs at least one input")
    copies = list(sel) if isinstance(sel, (list, tuple)) else [sel]
    if not copies:
        raise ValueError("select_tree needs a select")
    sel = copies[0]
    if any(len(c) != len(sel) for c in copies):
        raise ValueError(f"the select's copies differ in width: {[len(c) for c in copies]}")
    rb = radix.bit_length() - 1
    levels = tree_levels(len(items), radix)
    width = max(len(v) for v in items)
    # select bits above the tree's point past the end: their flag follows the tree
    high = sel[rb * levels:] if len(sel) > rb * levels else None
    high_d = delay(m, high.any(), levels, f"{name}_hi") if high is not None else None
    pad = max(0, rb * levels - len(sel))
    sel = Cat(sel, Const(0, pad))
    copies = [Cat(c, Const(0, pad)) for c in copies]
    for lev in range(levels):
        nxt = []
        groups = -(-len(items) // radix)
        for g in range(0, len(items), radix):
            # the first level's groups in contiguous blocks, one block per copy
            low = copies[(g // radix) * len(copies) // groups][:rb] if lev == 0 else sel[:rb]
            r = Signal(width, name=f"{name}_l{lev}_{g // radix}", reset_less=True)
            with m.Switch(low):
                for k, v in enumerate(items[g:g + radix]):
                    with m.Case(k):
                        m.d.sync += r.eq(v)
                with m.Default():
                    m.d.sync += r.eq(0)
            nxt.append(r)
        items = nxt
        rest = sel[rb:rb * (levels - lev)]
        if len(rest):
            sel = delay(m, rest, 1, f"{name}_s{lev}", reset_less=True)
    return items[0] if high_d is None else Mux(high_d, 0, items[0])
