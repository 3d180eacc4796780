"""Small gateware helpers shared by the systolic engine and the core."""

from __future__ import annotations

from amaranth import Mux, Signal

__all__ = ["is_pow2", "serial_mul_step", "delay"]


def is_pow2(v) -> bool:
    """``v`` is an int power of two (1, 2, 4, ...)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (v & (v - 1)) == 0


def serial_mul_step(m, acc, x, y, bit):
    """One step of a bit-serial ``x * y`` (LSB first): shape-checks need no DSP block."""
    m.d.sync += acc.eq(acc + Mux(y.bit_select(bit, 1), x << bit, 0))


def delay(m, sig, n, name, reset_less=False):
    """``sig`` through ``n`` sync registers (named ``{name}_d0`` ...)."""
    for k in range(n):
        r = Signal.like(sig, name=f"{name}_d{k}", reset_less=reset_less)
        m.d.sync += r.eq(sig)
        sig = r
    return sig
