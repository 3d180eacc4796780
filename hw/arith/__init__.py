"""Multiplier library: one ``wiring.Component`` per multiplier, each exact to a golden model
in ``sw.numerics`` (``int_mul``, ``pow2_decode``, ``ternary_decode``, ``fp_mul_exact``,
``fp_mul_fixed``, ``lmul``, ``mac_wrap``) and measured by ``python -m hw.build --target report
--blocks arith`` (``hw.report``). See docs/arith.md."""

from .intmul import IntMul, ShiftAddMul, Pow2Mul, TernaryMul
from .booth import BoothMul
from .fp import FpMul, LMul
from .bitserial import BitSerialMul

__all__ = ["IntMul", "ShiftAddMul", "Pow2Mul", "TernaryMul", "BoothMul", "FpMul", "LMul",
           "BitSerialMul"]
