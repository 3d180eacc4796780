"""hw.core.ProgramCore parameter validation and the banked ACT memory's derived latencies
(elaboration only; the banks' behaviour is simulated in sim/test_programcore.py)."""

import pytest

from hw.core.program import ProgramCore
from hw.sizes import PE_SIZES

SMALL = dict(rows=2, cols=4, a_depth=128, w_depth=256, out_depth=128, chan_depth=64,
             group_depth=128, pe="mixpe")


@pytest.mark.parametrize("kw, msg", [
    ({"act_bytes": 3000}, "act_bytes must be a power of two in [256, 65536], not 3000"),
    ({"act_bytes": 128}, "act_bytes must be a power of two in [256, 65536], not 128"),
    ({"act_bytes": 1 << 17}, "act_bytes must be a power of two in [256, 65536], not 131072"),
    ({"act_bytes": True}, "act_bytes must be a power of two in [256, 65536], not True"),
    ({"act_bank_bytes": 100}, "act_bank_bytes must be a power of two in [256, 65536], not 100"),
    ({"act_bank_bytes": "2k"}, "act_bank_bytes must be a power of two in [256, 65536], not '2k'"),
    ({"max_layers": 0}, "max_layers must be an int in [1, 255], not 0"),
    ({"act_bytes": 65536, "act_bank_bytes": 256},
     "act_bank_bytes 256: 256 ACT banks take 10 cycles to read, more than the core's 8; "
     "use larger banks"),
])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError) as e:
        ProgramCore(**SMALL, **kw)
    assert msg in str(e.value)


@pytest.mark.parametrize("act_bytes, bank, banks, act_latency", [
    (2048, 2048, 1, 2),         # one bank: the decode register and the memory's own cycle
    (2048, 4096, 1, 2),         # a bank larger than ACT: one bank
    (2048, 1024, 2, 4),         # decode register, one level each way (copy, data mux)
    (8192, 2048, 4, 4),
    (8192, 1024, 8, 6),
    (65536, 2048, 32, 8),       # the 85F: 32 EBRs, three levels each way
])
def test_act_banks_and_latency(act_bytes, bank, banks, act_latency):
    core = ProgramCore(**SMALL, act_bytes=act_bytes, act_bank_bytes=bank)
    assert (core.act_banks, core.ACT_LATENCY) == (banks, act_latency)
    # host reads of ACT are delayed to the core's latency
    assert core.READ_LATENCY == core.core.READ_LATENCY + 1


def test_85f_read_latency():
    core = ProgramCore(**PE_SIZES["mixpe"]["85F"].geometry())
    assert (core.act_banks, core.ACT_LATENCY) == (32, 8)
    assert core.READ_LATENCY == core.core.READ_LATENCY + 1 == 10
