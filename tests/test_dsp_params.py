"""hw.dsp.SparseDSPChain parameter validation and derived attributes, and hw.dsp.mux's
table multiplexer (elaboration only, no simulator)."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hw.dsp import SparseDSPChain
from hw.dsp.mux import table_mux
from hw.simulate import to_verilog
from sw.numerics import NMPattern as P


@pytest.mark.parametrize("kw, exc, msg", [
    ({}, TypeError, "stages"),
    ({"stages": 0}, ValueError, "stages must be an integer in [1, 64], not 0"),
    ({"stages": 8, "chains": 0}, ValueError, "chains must be an integer in [1, 256], not 0"),
    ({"stages": 8, "m_max": 6}, ValueError, "m_max must be an integer in one of (4, 8), not 6"),
    ({"stages": 8, "packed": 1}, TypeError, "packed must be a bool, not 1"),
    ({"stages": 8, "sparse": "yes"}, TypeError, "sparse must be a bool, not 'yes'"),
    ({"stages": 8, "acc_width": 18}, ValueError, "acc_width must be an integer in [19, 64], not 18"),
    ({"stages": 8, "packed": True, "acc_width": 14}, ValueError, "[15, 64], not 14"),
    ({"stages": 8, "tag_width": 0}, ValueError, "tag_width must be an integer in [1, 32], not 0"),
    ({"stages": 8, "impl": "xilinx"}, ValueError, "impl must be one of"),
    ({"stages": 8, "max_window": 0}, ValueError, "max_window must be an integer in [1, 65535], not 0"),
    ({"stages": 8, "max_window": 4}, ValueError,
     "no N:M pattern fits a chain of 8 stages with m_max 8 in a window of 4 activations"),
    ({"stages": 8, "chains": 4, "share": 0}, ValueError, "share must be an integer in [1, 4], not 0"),
    ({"stages": 8, "chains": 4, "share": 8}, ValueError, "share must be an integer in [1, 4], not 8"),
    ({"stages": 8, "chains": 6, "share": 4}, ValueError, "share must divide chains (6), not 4"),
])
def test_bad_params(kw, exc, msg):
    with pytest.raises(exc) as e:
        SparseDSPChain(**kw)
    assert msg in str(e.value)
    with pytest.raises(TypeError):
        SparseDSPChain(8)                                  # keyword-only


def test_derived_attributes():
    c = SparseDSPChain(stages=8)
    assert c.PATTERNS == tuple(P) and c.WINDOW == 32 and c.LATENCY == 13
    assert c.STAGE_WIDTHS == [16, 17, 17, 18, 18, 18, 18, 19] and c.COLUMNS == 1
    c = SparseDSPChain(stages=4, chains=3, packed=True)
    # dense 8:8 needs 8 stages per step
    assert c.PATTERNS == (P.DENSE4, P.NM4_8, P.NM2_4, P.NM1_4, P.NM2_8)
    assert c.WINDOW == 16 and c.COLUMNS == 6 and c.W_WIDTH == 4 and c.STAGE_WIDTHS[0] == 12
    c = SparseDSPChain(stages=6, m_max=4)
    assert c.PATTERNS == (P.NM2_4, P.NM1_4) and c.WINDOW == 24
    # a window limit leaves out the wider patterns (8 stages on 4 A banks of 4 bytes)
    c = SparseDSPChain(stages=8, max_window=16)
    assert c.PATTERNS == (P.DENSE4, P.DENSE8, P.NM4_8, P.NM2_4) and c.WINDOW == 16
    assert SparseDSPChain(stages=8, max_window=8).PATTERNS == (P.DENSE4, P.DENSE8)
    assert SparseDSPChain(stages=8, m_max=4, max_window=16).PATTERNS == (P.DENSE4, P.NM2_4)
    # shared indices: one index per group of chains on the port
    c = SparseDSPChain(stages=8, chains=6, share=3)
    assert c.GROUPS == 2 and c.signature.members["idx"].dimensions == (2, 8)
    assert SparseDSPChain(stages=8, chains=6).signature.members["idx"].dimensions == (6, 8)
    c = SparseDSPChain(stages=4, sparse=False)
    assert c.PATTERNS == () and c.WINDOW == 4
    assert "pattern" not in c.signature.members and "idx" not in c.signature.members


@pytest.mark.parametrize("kw", [dict(stages=3, m_max=4, impl="ecp5"),
                                dict(stages=4, chains=4, share=4, impl="ecp5"),
                                dict(stages=2, packed=True, chains=2, impl="ecp5"),
                                dict(stages=4, sparse=False, impl="generic")])
def test_elaborates(kw):
    text = to_verilog(SparseDSPChain(**kw), "top")
    assert ("MULT18X18D" in text) == (kw["impl"] == "ecp5")


@pytest.mark.parametrize("table", [[0, 1, 2, 3, 4, 5, 6, 7], [3, None, 1, 1], [None, 2, 2, None],
                                   [5, 5, 5, 5], [0, 1, 0, 1, 2, 2, None, 3]])
def test_table_mux_generic(table):
    """The generic path selects ``value(table[code])``; don't-cares take any entry."""
    nsel = (len(table) - 1).bit_length()
    data = [Signal(4, name=f"d{i}") for i in range(8)]
    sel = Signal(nsel)
    m = Module()
    out = Signal(4)
    m.d.comb += out.eq(table_mux(m, [sel[i] for i in range(nsel)], table, lambda k: data[k],
                                 width=4, ecp5=False, name="t"))

    async def tb(ctx):
        for i, d in enumerate(data):
            ctx.set(d, (3 * i + 1) % 16)
        for code, key in enumerate(table):
            ctx.set(sel, code)
            got = ctx.get(out)
            if key is not None:
                assert got == (3 * key + 1) % 16
            else:
                assert got in [(3 * k + 1) % 16 for k in table if k is not None]

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    # the ECP5 mapping builds (its function is checked by sim/test_dsp_chain.py)
    m2 = Module()
    table_mux(m2, [Signal(name=f"s{i}") for i in range(nsel)], table, lambda k: data[k],
              width=4, ecp5=True, name="t")


def test_cli_engine_choices_match_the_engines():
    """``python -m sw``'s commands offer exactly the engines the gateware builds
    (``hw.sizes.DSP_ENGINES``; ``hw.build`` takes its choices from there)."""
    from hw.sizes import DSP_ENGINES
    from sw.__main__ import build_parser
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        dsp = [a for a in parser._actions if a.dest == "dsp"]
        if dsp:
            assert list(dsp[0].choices) == list(DSP_ENGINES), name
    assert sum(1 for a in sub.choices.values() for x in a._actions if x.dest == "dsp") >= 2


def test_shared_engines():
    """``dsp4s`` / ``dsp8s``: the core's chains all share one index group (IDENTIFY
    ``dsp_share`` = chains); ``dsp_share`` is validated by the core."""
    from hw.core import MixCore
    from hw.sizes import DSP_ENGINES, core_size
    for dsp, base in (("dsp4s", "dsp4"), ("dsp8s", "dsp8")):
        shared, plain = core_size("85F", None, dsp, rows=4), core_size("85F", None, base, rows=4)
        assert shared.geometry() == dict(plain.geometry(), dsp_share=16)
        assert plain.geometry()["dsp_share"] == 1
        assert DSP_ENGINES[dsp] == dict(DSP_ENGINES[base], dsp_shared=True)
    core = MixCore(rows=4, cols=4, pe="int8-dsp", dsp_stages=4, dsp_share=2)
    assert (core.dsp_chains, core.dsp_share) == (4, 2)
    assert core.config()["dsp_share"] == 2
    assert "dsp_share" not in MixCore(rows=4, cols=4, pe="int8-dsp", dsp_stages=4).config()
    assert MixCore(rows=4, cols=4, pe="int8-dsp").dsp_share == 0        # no engine
    with pytest.raises(ValueError, match="dsp_share must divide the DSP engine's 4 chains, not 3"):
        MixCore(rows=4, cols=4, pe="int8-dsp", dsp_stages=4, dsp_share=3)
    with pytest.raises(ValueError, match=r"dsp_share must be an integer in \[1, 2\], not 4"):
        MixCore(rows=4, cols=4, pe="int8-dsp", dsp_stages=4, dsp_packed=True, dsp_share=4)
    with pytest.raises(ValueError, match="dsp_share applies to a DSP engine"):
        MixCore(rows=4, cols=4, pe="int8-dsp", dsp_share=2)
