"""Per-device core sizes for the ULX3S's ECP5 parts (12F/25F/45F/85F).

Used by the board build, the Verilator models and the benchmarks; ``fpga/ulx3s.py`` only adds
the board's platform, pins and PLL. Nothing here imports Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CoreSize", "DEVICES", "DEFAULT_FREQ_MHZ", "DEVICE_RESOURCES"]


@dataclass(frozen=True)
class CoreSize:
    """Core parameters chosen per ECP5 device (MULT18X18D and EBR budgets)."""
    rows: int
    cols: int
    a_depth: int
    w_depth: int
    out_words: int
    #: processing-element kind of the array (only ``"int8-dsp"``, one MULT18X18D per PE, so far)
    pe: str = "int8-dsp"

    def geometry(self) -> dict:
        """The array and buffer sizes as keyword arguments of ``MpGemmCore`` / ``SoC``."""
        return dict(rows=self.rows, cols=self.cols, a_depth=self.a_depth,
                    w_depth=self.w_depth, out_words=self.out_words)


#: device -> core size. Sizes use <= ~85% of the device's MULT18X18D (one per PE, plus the
#: epilogue's) and well under half its EBR.
DEVICES = {
    "12F": CoreSize(4, 4, 1024, 1024, 1024),
    "25F": CoreSize(4, 4, 2048, 2048, 2048),
    "45F": CoreSize(8, 8, 2048, 2048, 4096),
    "85F": CoreSize(16, 8, 4096, 8192, 16384),
}

#: Default core clock per device (MHz): the highest round PLL frequency that closed timing
#: with nextpnr's default seed in our measurements (docs/results.md); ``--freq`` overrides.
DEFAULT_FREQ_MHZ = {"12F": 65.0, "25F": 65.0, "45F": 65.0, "85F": 65.0}

#: LUT4, EBR blocks and MULT18X18D per device (Lattice ECP5 family data sheet)
DEVICE_RESOURCES = {
    "12F": {"LUT4": 12288, "EBR": 32, "MULT18X18D": 28},
    "25F": {"LUT4": 24288, "EBR": 56, "MULT18X18D": 28},
    "45F": {"LUT4": 43848, "EBR": 108, "MULT18X18D": 72},
    "85F": {"LUT4": 83640, "EBR": 208, "MULT18X18D": 156},
}
