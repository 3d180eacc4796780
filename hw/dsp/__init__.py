"""The sparse DSP engine: N:M sparse DSP chains (FlightLLM) on the ECP5 MULT18X18D, with two
low-bit products per DSP for INT4 / INT2 / ternary weights. Golden models:
``sw.numerics.sparse_gemm`` and ``sw.numerics.dsp_unpack2``; cost: ``hw.dsp.report``."""

from .chain import SparseDSPChain

__all__ = ["SparseDSPChain"]
