"""Layouts shared by the core's parts: the layer descriptor, drain tokens, table records."""

from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data

from sw.numerics import (OutMode, WeightFormat, REQUANT_MULT_BITS, REQUANT_SHIFT_BITS,
                         REQUANT_ZP_BITS, GSCALE_BITS, GZERO_BITS, BIAS_BITS)

__all__ = ["LAYER_LAYOUT", "GROUP_CODES", "TOKEN_LAYOUT", "TABLE_LAYOUT", "DIM_BITS"]

DIM_BITS = 16

#: descriptor ``group`` code -> group size along K (0: no groups, one scale per channel)
GROUP_CODES = {0: 0, 1: 32, 2: 64, 3: 128}

#: One layer as the core reads it (the wire form is ``sw.protocol.LayerDescriptor``):
#: shape, output mode, weight format, group code, per-channel tables on/off, and the
#: scalar requantization used when the tables are off (the one-channel case).
LAYER_LAYOUT = data.StructLayout({
    "m": unsigned(DIM_BITS), "k": unsigned(DIM_BITS), "n": unsigned(DIM_BITS),
    "out_mode": OutMode, "fmt": WeightFormat, "group": unsigned(2), "chan": unsigned(1),
    "mult": unsigned(REQUANT_MULT_BITS), "shift": unsigned(REQUANT_SHIFT_BITS),
    "zp": signed(REQUANT_ZP_BITS), "relu": unsigned(1),
})


def TOKEN_LAYOUT(*, tg_bits: int, out_bits: int, rows: int, cols: int):
    """What the edge needs to know about one drained group: where its tables and output go.

    ``rows_left`` / ``cols_left``: valid rows / columns of the tile (padding is not written).
    """
    return data.StructLayout({
        "gbase": unsigned(tg_bits), "col0": unsigned(DIM_BITS), "out_row": unsigned(out_bits),
        "rows_left": range(rows + 1), "cols_left": range(cols + 1),
        "first_g": unsigned(1), "last_g": unsigned(1), "final": unsigned(1),
    })


#: One output column's epilogue parameters, streamed down the edge next to the sums.
TABLE_LAYOUT = data.StructLayout({
    "gscale": unsigned(GSCALE_BITS), "gzero": signed(GZERO_BITS), "bias": signed(BIAS_BITS),
    "mult": unsigned(REQUANT_MULT_BITS), "shift": unsigned(REQUANT_SHIFT_BITS),
})
