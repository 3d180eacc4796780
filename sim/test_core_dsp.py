"""The core regression (the cocotb tests of ``test_core.py``) on the DSP primitive: every PE's
and the epilogue's multiplier is a MULT18X18D (``impl="ecp5"``) simulated with the
behavioural model ``hw/arith/models/MULT18X18D.v``, where ``test_core.py`` itself runs the
portable ``impl="generic"`` multipliers. Same tests, same parameters, same golden models."""

import pytest

from hw.arith.models import mult18x18d_model
from hw.netlist import vpi_top_only
from hw.simulate import run_cocotb
from test_core import CONFIGS, core_and_params

#: the smallest configuration (every test_core test; 1 PE + the epilogue, 3 DSPs): the
#: DSP model itself is checked exhaustively in test_dsp_model.py, so this checks the wiring
#: at the lowest build cost (2x8 with 18 DSPs: 42 s vs 30 s wall, cold)
DSP_CONFIGS = ["1x1"]


@pytest.mark.parametrize("name", DSP_CONFIGS)
def test_core_dsp(name):
    from hw.systolic.core import MpGemmCore
    _, params = core_and_params(name)
    core = MpGemmCore(**CONFIGS[name], impl="ecp5")
    vlt, args = vpi_top_only("core_dsp")
    run_cocotb(core, name="core_dsp", test_module="test_core", params=params,
               extra_sources={**mult18x18d_model(), **vlt}, build_args=args)
