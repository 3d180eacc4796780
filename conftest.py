"""Test ordering for ``pytest -n 2``: the modules that build big models run first.

xdist (``--dist loadfile``, pyproject.toml) hands whole test files to its two workers in
collection order; a multi-minute build collected last (the 12F bitstream, a gate-level
netlist) would run alone while the other worker idles.
Modules keep their own test order (module fixtures such as the simulated SoC stay shared).
"""

#: approximate cold-cache cost in CPU seconds (measured on the development machine)
MODULE_COST = {
    "tests/test_build.py": 150,
    "sim/test_netlist.py": 170,
    "sim/test_soc.py": 160,
    "sim/test_mixcore.py": 160,
    "sim/test_mixcore_dsp.py": 70,    # shares a model with test_mixcore.py
    "sim/test_dsp_soc.py": 90,
    "sim/test_dsp_soc_shared.py": 40,   # its own 25F SoC model (dsp4s)
    "sim/test_dsp_model.py": 30,
    "sim/test_dsp_chain.py": 100,
    "sim/test_link.py": 70,
    "sim/test_uart_soc.py": 60,
    "sim/test_programcore.py": 45,
    # the arith modules share one build (sim/arith_harness.py): the first to run pays it, the
    # rest only simulate; scheduled last, they find it built (not waiting on its lock)
    "sim/test_arith_int.py": 50,
    "sim/test_selftest.py": 40,
    "sim/test_arith_bitserial.py": 10,
    "sim/test_arith_fp.py": 8,
    "sim/test_arith_booth.py": 5,
    "sim/test_arith_ecp5.py": 5,
}


def pytest_collection_modifyitems(config, items):
    def cost(item):
        path = item.nodeid.split("::", 1)[0]
        return -MODULE_COST.get(path, 0)
    items.sort(key=cost)          # stable: each module's own order is kept
