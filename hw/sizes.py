"""Per-device core sizes for the ULX3S's ECP5 parts (12F/25F/45F/85F).

Used by the board build, the Verilator models and the benchmarks; ``fpga/ulx3s.py`` only adds
the board's platform, pins and PLL. Nothing here imports Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CoreSize", "DEVICES", "PE_SIZES", "DSP_ENGINES", "DSP_DEPTH", "core_size",
           "SELFTEST_GEOMETRY", "DEFAULT_FREQ_MHZ", "DEFAULT_PLACER", "DEVICE_RESOURCES"]


@dataclass(frozen=True)
class CoreSize:
    """Core (``hw.core.MixCore``) parameters chosen per ECP5 device.

    ``a_depth`` / ``out_depth``: 32-bit words per row bank of activations / results;
    ``w_depth``: bytes per column bank of packed weights; ``chan_depth`` / ``group_depth``:
    entries of the per-channel / per-group tables; ``pe``: processing-element kind;
    ``dsp_stages`` / ``dsp_packed`` / ``dsp_depth`` / ``dsp_shared``: the sparse DSP engine (0
    stages: none; :data:`DSP_ENGINES`; ``dsp_shared``: all chains share their indices).
    """
    rows: int
    cols: int
    a_depth: int
    w_depth: int
    out_depth: int
    chan_depth: int
    group_depth: int
    pe: str = "mixpe"
    act_bytes: int = 8192
    max_layers: int = 32
    dsp_stages: int = 0
    dsp_packed: bool = False
    dsp_depth: int = 256
    dsp_shared: bool = False

    def geometry(self) -> dict:
        """Keyword arguments of ``hw.core.ProgramCore`` / ``hw.soc.top.SoC``."""
        g = dict(rows=self.rows, cols=self.cols, a_depth=self.a_depth, w_depth=self.w_depth,
                 out_depth=self.out_depth, chan_depth=self.chan_depth,
                 group_depth=self.group_depth, pe=self.pe, act_bytes=self.act_bytes,
                 max_layers=self.max_layers)
        if self.dsp_stages:
            from sw.layout import dsp_chains
            chains = dsp_chains(cols=self.cols, packed=self.dsp_packed)
            g.update(dsp_stages=self.dsp_stages, dsp_packed=self.dsp_packed,
                     dsp_depth=self.dsp_depth, dsp_share=chains if self.dsp_shared else 1)
        return g

    def core_geometry(self) -> dict:
        """Keyword arguments of ``hw.core.MixCore`` (the core without layer programs)."""
        g = self.geometry()
        del g["act_bytes"], g["max_layers"]
        return g


#: device -> core size. MixPE costs about 335 LUT4 slots and 170 FF per PE plus about
#: 1000 LUT4 / 1750 FF / 6 MULT18X18D per array row (the edge unit); INT8-DSP one MULT18X18D
#: per PE plus 3 per row. The 85F default is the kind with the most MACs per second
#: (MixPE: 1 / 2 / 4 MACs per PE and cycle at INT8 / INT4 / INT2); the small parts cannot hold
#: a useful MixPE array and use the DSP kind.
PE_SIZES = {
    "mixpe": {
        "12F": CoreSize(2, 4, 256, 1024, 256, 256, 1024, "mixpe"),
        "25F": CoreSize(2, 8, 512, 2048, 512, 512, 2048, "mixpe", 16384, 64),
        "45F": CoreSize(4, 8, 1024, 2048, 1024, 512, 2048, "mixpe", 32768, 64),
        "85F": CoreSize(8, 16, 2048, 4096, 2048, 1024, 8192, "mixpe", 65536, 64),
    },
    "int8-dsp": {
        "12F": CoreSize(2, 4, 512, 1024, 512, 256, 16, "int8-dsp"),
        "25F": CoreSize(4, 4, 512, 2048, 512, 512, 16, "int8-dsp", 16384, 64),
        "45F": CoreSize(8, 4, 512, 2048, 512, 512, 16, "int8-dsp", 32768, 64),
        "85F": CoreSize(16, 8, 1024, 4096, 1024, 1024, 16, "int8-dsp", 65536, 64),
    },
}

#: device -> default core size
DEVICES = {
    "12F": PE_SIZES["int8-dsp"]["12F"],
    "25F": PE_SIZES["int8-dsp"]["25F"],
    "45F": PE_SIZES["mixpe"]["45F"],
    "85F": PE_SIZES["mixpe"]["85F"],
}


#: ``--dsp`` choices: the sparse DSP engine next to the array (``hw.core.MixCore``). Chains
#: give ``cols`` output columns: ``dsp4`` has ``cols`` chains of 4 MULT18X18D (INT8 / INT4 /
#: ternary weights as bytes; windows of up to 16 activations: rows >= 4), ``dsp8`` ``cols``
#: chains of 8 (twice the DSPs), ``dsp8p`` ``cols / 2`` chains of 8 carrying two 4-bit weights
#: per MULT18X18D. An engine runs the patterns whose window fits the ``4 * rows`` bytes the A
#: banks give per cycle: 8 stages on 4 rows run dense, 2:4 and 4:8 (1:4 and 2:8 need 8 rows).
#: ``dsp4s`` / ``dsp8s``: ``dsp4`` / ``dsp8`` whose chains all share one index per stage (the
#: ``cols`` columns of a tile keep their weights at the same positions, VENOM's V:N:M): one
#: index mux per stage instead of one per stage and chain, at a cost in accuracy
#: (``docs/accuracy.md``).
DSP_ENGINES = {
    "none": dict(dsp_stages=0, dsp_packed=False, dsp_shared=False),
    "dsp4": dict(dsp_stages=4, dsp_packed=False, dsp_shared=False),
    "dsp8": dict(dsp_stages=8, dsp_packed=False, dsp_shared=False),
    "dsp8p": dict(dsp_stages=8, dsp_packed=True, dsp_shared=False),
    "dsp4s": dict(dsp_stages=4, dsp_packed=False, dsp_shared=True),
    "dsp8s": dict(dsp_stages=8, dsp_packed=False, dsp_shared=True),
}

#: DSP weight records per chain, by device (each record is one step of L weights + indices)
DSP_DEPTH = {"12F": 64, "25F": 128, "45F": 256, "85F": 512}


def core_size(device: str, pe: str | None = None, dsp: str | None = None, *,
              rows: int | None = None, cols: int | None = None) -> CoreSize:
    """The core size of ``device`` for PE kind ``pe`` (default: the device's default kind),
    with the DSP engine ``dsp`` (a key of :data:`DSP_ENGINES`; default: none).

    ``rows`` / ``cols`` replace the array's shape; the buffers keep their depth per bank.
    ``hw.core.MixCore`` validates the shape (powers of two in [1, 64]) when it is built. A
    smaller array beside the DSP engine keeps the 85F's LUT fill where nextpnr still routes it
    (``docs/results.md``); ``dsp4`` has one chain per column.
    """
    import dataclasses
    if rows is not None or cols is not None:
        base = core_size(device, pe, dsp)
        return dataclasses.replace(base, rows=base.rows if rows is None else rows,
                                   cols=base.cols if cols is None else cols)
    if dsp is not None and dsp != "none":
        if dsp not in DSP_ENGINES:
            raise ValueError(f"unknown DSP engine {dsp!r}; expected one of {sorted(DSP_ENGINES)}")
        base = core_size(device, pe)
        return dataclasses.replace(base, **DSP_ENGINES[dsp], dsp_depth=DSP_DEPTH[device])
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(DEVICES)}")
    if pe is None:
        return DEVICES[device]
    if pe not in PE_SIZES:
        raise ValueError(f"unknown PE kind {pe!r}; expected one of {sorted(PE_SIZES)}")
    if device not in PE_SIZES[pe]:
        raise ValueError(f"no {pe} core size for the {device}; it has "
                         f"{sorted(k for k, v in PE_SIZES.items() if device in v)}")
    return PE_SIZES[pe][device]


#: the LED self-test top (``--top selftest``) loads and runs a stored INT8 GEMM on this
#: ``hw.core.MixCore`` (keyword arguments): the 12F's 2x4 INT8-DSP array (8 + 3 x 2
#: MULT18X18D, so it fits every ULX3S; 4x4 would take all 28 of the 12F's), small buffers
SELFTEST_GEOMETRY = dict(rows=2, cols=4, a_depth=256, w_depth=256, out_depth=256,
                         chan_depth=16, group_depth=16, pe="int8-dsp")

#: Default core clock per device (MHz), ``--freq`` overrides. The 85F SoC with layer
#: programs reached 67.15 / 74.01 / 65.17 MHz at this 40 MHz default with the static placer
#: (three nextpnr seeds, docs/results.md "85F default build with the static placer"); the
#: 12F reached 85.1 MHz at 50 MHz; the 25F and 45F values are not measured.
DEFAULT_FREQ_MHZ = {"12F": 50.0, "25F": 60.0, "45F": 60.0, "85F": 40.0}

#: nextpnr placer per device (``hw.build --placer``), each the one its default build was
#: measured with. On the 85F the static placer routes the dense ``dsp8s`` build that HeAP
#: does not, and the default build's three seeds reached a median of 67.15 MHz with it
#: (HeAP, at an earlier commit: 54.29; docs/results.md). On the 12F HeAP was faster
#: (76.52 against 70.20 MHz); the 25F and 45F are not measured.
DEFAULT_PLACER = {"12F": "heap", "25F": "heap", "45F": "heap", "85F": "static"}

#: LUT4, EBR blocks and MULT18X18D per device (Lattice ECP5 family data sheet)
DEVICE_RESOURCES = {
    "12F": {"LUT4": 12288, "EBR": 32, "MULT18X18D": 28},
    "25F": {"LUT4": 24288, "EBR": 56, "MULT18X18D": 28},
    "45F": {"LUT4": 43848, "EBR": 108, "MULT18X18D": 72},
    "85F": {"LUT4": 83640, "EBR": 208, "MULT18X18D": 156},
}
