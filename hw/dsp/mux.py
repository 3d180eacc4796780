"""Word multiplexers hand-mapped onto the ECP5 slice: LUT4s, PFUMX and L6MUX21.

Left to itself, Yosys' ABC maps an 8:1 mux per bit as two 6-input functions (4 LUT4 each in
the ECP5 library) and a 2:1, about 9 LUT4; the slice does it with 4 LUT4 (each a 2:1 mux), a
PFUMX per pair and an L6MUX21 (the slice's wide-function muxes, no LUTs of their own). The
sparse chain has one such mux per stage and column, so this halves its logic.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Instance, Mux, Signal, Value

from hw.arith._common import lut4

__all__ = ["table_mux"]


def _fill(table: list) -> list:
    """Don't-care entries (None) take a neighbour's key, so select bits can drop out."""
    table = list(table)
    keys = [k for k in table if k is not None]
    common = max(set(keys), key=keys.count)
    nbits = (len(table) - 1).bit_length()
    for c, k in enumerate(table):
        if k is None:
            for b in range(nbits):
                n = table[c ^ (1 << b)]
                if n is not None:
                    table[c] = n
                    break
            else:
                table[c] = common
    return table


def _reduce(sel: list, table: list) -> tuple[list, list]:
    """Drop select bits the table does not depend on."""
    b = 0
    while b < len(sel):
        if all(table[c] == table[c ^ (1 << b)] for c in range(len(table))):
            table = [table[c] for c in range(len(table)) if not (c >> b) & 1]
            sel = sel[:b] + sel[b + 1:]
        else:
            b += 1
    return sel, table


def _leaf(m, sel, table, bit, name):
    """One LUT4: the data bits of the distinct keys plus the select bits (<= 4 inputs)."""
    keys = list(dict.fromkeys(table))
    ins = [bit(k) for k in keys] + list(sel)
    nd = len(keys)

    def fn(*v):
        code = sum(int(s) << i for i, s in enumerate(v[nd:]))
        return v[keys.index(table[code])]
    return lut4(m, ins, fn, ecp5=True, name=name)


def _bit_mux(m, sel, table, bit, name) -> Value | None:
    """LUT4 / LUT4+PFUMX / 4 LUT4+2 PFUMX+L6MUX21 for one bit, or None if it does not fit."""
    sel, table = _reduce(sel, table)
    ndist = len(set(table))
    if ndist == 1:
        return bit(table[0])
    if ndist + len(sel) <= 4:
        return _leaf(m, sel, table, bit, name)
    for levels in (1, 2):
        if len(sel) < levels:
            return None
        parts = len(table) >> levels
        subs = [table[i * parts:(i + 1) * parts] for i in range(1 << levels)]
        lsel = sel[:len(sel) - levels]
        if all(len(set(_reduce(lsel, s)[1])) + len(_reduce(lsel, s)[0]) <= 4 for s in subs):
            # every part one LUT4 (PFUMX / L6MUX21 inputs must come from LUT4s in the slice)
            luts = [_leaf(m, *_reduce(lsel, s), bit, f"{name}_l{i}") for i, s in enumerate(subs)]
            top = sel[len(sel) - levels:]
            f5 = []
            for i in range(0, len(luts), 2):
                z = Signal(name=f"{name}_f5_{i // 2}")
                m.submodules[f"{name}_pfumx{i // 2}"] = Instance(
                    "PFUMX", i_ALUT=luts[i + 1], i_BLUT=luts[i], i_C0=top[0], o_Z=z)
                f5.append(z)
            if levels == 1:
                return f5[0]
            z = Signal(name=f"{name}_f6")
            m.submodules[f"{name}_l6mux"] = Instance("L6MUX21", i_D0=f5[0], i_D1=f5[1],
                                                     i_SD=top[1], o_Z=z)
            return z
    return None


def table_mux(m, sel: list, table: list, value, *, width: int, ecp5: bool, name: str) -> Value:
    """``value(table[code])`` where ``code`` is the unsigned number on the bits ``sel``.

    Parameters
    ----------
    sel : list of 1-bit Values
        Select bits, LSB first.
    table : list of 2**len(sel) hashable keys or None
        None: the result does not matter for that code (it takes a neighbour's key).
    value : callable
        key -> Value of ``width`` bits.
    ecp5 : bool
        Map to LUT4 / PFUMX / L6MUX21 cells (falls back to operators where a bit's function
        does not fit that structure); plain ``Mux`` trees otherwise.

    Returns
    -------
    Value of ``width`` bits (combinational).
    """
    if len(table) != 1 << len(sel):
        raise ValueError(f"{name}: {len(table)} table entries for {len(sel)} select bits")
    if all(k is None for k in table):
        return Const(0, width)
    table = _fill(table)
    sel, table = _reduce(list(sel), table)

    def generic(sel, table):
        if len(set(table)) == 1:
            return value(table[0])
        h = len(table) // 2
        return Mux(sel[-1], generic(sel[:-1], table[h:]), generic(sel[:-1], table[:h]))

    if not ecp5 or len(set(table)) == 1:
        return generic(sel, table)
    bits = []
    for b in range(width):
        v = _bit_mux(m, sel, table, lambda k, b=b: value(k)[b], f"{name}_b{b}")
        bits.append(v if v is not None else generic(sel, table)[b])
    out = Signal(width, name=name)
    m.d.comb += out.eq(Cat(*bits))
    return out
