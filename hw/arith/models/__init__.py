"""Behavioural Verilog models of ECP5 primitives that Yosys ships only as black boxes.

The ``.v`` files next to this module are package data; the accessors return them as
``{file name: Verilog text}`` for :func:`hw.simulate.run_cocotb`'s ``extra_sources``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["mult18x18d_model", "dp16kd_model"]

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
