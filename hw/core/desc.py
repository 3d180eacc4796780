"""Layouts shared by the core's parts: the layer descriptor, drain tokens, table records."""

from __future__ import annotations

from amaranth import Cat, Const, Mux, signed, unsigned
from amaranth.lib import data

from sw.numerics import (OutMode, WeightFormat, REQUANT_MULT_BITS, REQUANT_SHIFT_BITS,
                         REQUANT_ZP_BITS, GSCALE_BITS, GZERO_BITS, BIAS_BITS)

__all__ = ["LAYER_LAYOUT", "GROUP_CODES", "TOKEN_LAYOUT", "TABLE_LAYOUT", "DIM_BITS",
           "DSP_FORMATS", "decode_descriptor", "assign_descriptor"]

DIM_BITS = 16

#: descriptor ``group`` code -> group size along K (0: no groups, one scale per channel)
GROUP_CODES = {0: 0, 1: 32, 2: 64, 3: 128}

#: One layer as the core reads it (the wire form is ``sw.protocol.LayerDescriptor``):
#: shape, output mode, weight format, group code, per-channel tables on/off, the scalar
#: requantization used when the tables are off (the one-channel case), and where the layer's
#: weights and tables start in their buffers (resident weights of a program).
LAYER_LAYOUT = data.StructLayout({
    "m": unsigned(DIM_BITS), "k": unsigned(DIM_BITS), "n": unsigned(DIM_BITS),
    "out_mode": OutMode, "fmt": WeightFormat, "group": unsigned(2), "chan": unsigned(1),
    "mult": unsigned(REQUANT_MULT_BITS), "shift": unsigned(REQUANT_SHIFT_BITS),
    "zp": signed(REQUANT_ZP_BITS), "relu": unsigned(1),
    "w_base": unsigned(DIM_BITS), "chan_base": unsigned(DIM_BITS), "group_base": unsigned(DIM_BITS),
    # 0: the array engine; 1 + p: the sparse DSP engine with pattern sw.numerics.NMPattern(p)
    "sparse": unsigned(3),
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


#: weight formats the DSP engine multiplies (plain integer values); packed: 4-bit values only
DSP_FORMATS = {False: (WeightFormat.INT8, WeightFormat.INT4, WeightFormat.INT2,
                       WeightFormat.TERNARY),
               True: (WeightFormat.INT4, WeightFormat.INT2, WeightFormat.TERNARY)}


def decode_descriptor(b, *, formats, group_sizes, dim_bits=DIM_BITS, dsp_patterns=(),
                      dsp_packed=False):
    """The wire descriptor (``sw.protocol.LayerDescriptor``, ``b``: its bytes as 8-bit
    values) as the core reads it: one decoder for LOAD_LAYER and for program layers.

    Returns ``(fields, bad_param, bad_shape)``: ``fields`` a dict of ``LAYER_LAYOUT`` field
    values (assign them to a ``LAYER_LAYOUT`` signal), ``bad_param`` true for an output mode,
    shift, ReLU, format, group size or ``chan`` flag the core does not take (BAD_PARAM),
    ``bad_shape`` for an M, K or N wider than ``dim_bits`` (BAD_SHAPE).

    ``dsp_patterns`` (``sw.numerics.NMPattern`` s) and ``dsp_packed`` describe the DSP
    engine (none: every layer with ``sparse != 0`` is BAD_PARAM). A DSP layer is BAD_PARAM
    for a pattern the engine lacks, a group size, or a format it does not multiply
    (:data:`DSP_FORMATS`); its format need not be one of the array's ``formats``.
    """
    from sw.numerics import OutMode
    from sw.protocol import GROUP_SIZE_BITS
    u16 = lambda i: Cat(b[i], b[i + 1])
    mode_ok = 0
    for mode in OutMode:
        mode_ok = mode_ok | (b[6] == mode)
    fmt_ok = 0
    for f in formats:
        fmt_ok = fmt_ok | (b[12] == int(f))
    grp_ok = b[13] == 0
    for g in group_sizes:
        assert g in GROUP_SIZE_BITS
        grp_ok = grp_ok | (b[13] == g)
    dsp_ok = Const(0, 1)
    for p in dsp_patterns:
        dsp_ok = dsp_ok | (b[21] == 1 + int(p))
    dsp_fmt_ok = Const(0, 1)
    for f in DSP_FORMATS[bool(dsp_packed)]:
        dsp_fmt_ok = dsp_fmt_ok | (b[12] == int(f))
    dsp_bad = (b[21] != 0) & (~dsp_ok | ~dsp_fmt_ok | (b[13] != 0))
    array_bad = (b[21] == 0) & ~fmt_ok
    bad_param = (~mode_ok | (b[9] >= 64) | (b[11] > 1) | array_bad | dsp_bad | ~grp_ok |
                 (b[14] > 1))
    bad_shape = ((u16(0) >> dim_bits).any() | (u16(2) >> dim_bits).any() |
                 (u16(4) >> dim_bits).any())
    fields = {
        "m": u16(0), "k": u16(2), "n": u16(4), "out_mode": b[6], "mult": u16(7),
        "shift": b[9], "zp": b[10], "relu": b[11][0], "fmt": b[12],
        # group size -> the descriptor's 2-bit code (32 -> 1, ...)
        "group": Mux(b[13] == 0, 0, Mux(b[13] == 32, 1, Mux(b[13] == 64, 2, 3))),
        "chan": b[14][0], "w_base": u16(15), "chan_base": u16(17), "group_base": u16(19),
        "sparse": b[21][:3],
    }
    return fields, bad_param, bad_shape


def assign_descriptor(target, fields):
    """Statements that set the ``LAYER_LAYOUT`` signal ``target`` from ``fields``."""
    return [getattr(target, name).eq(value) for name, value in fields.items()]
