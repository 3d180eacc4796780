"""Wire protocol between the host driver and the device (the one definition of it).

The gateware reads the enums below directly (a plain ``enum.Enum`` is an Amaranth shape).
"""

from __future__ import annotations

import enum

__all__ = ["Buffer", "ErrorCode"]


class Buffer(enum.IntEnum):
    """On-chip buffers addressable by the host."""

    A = 0     #: activations, INT8, bank-interleaved (see sw.layout)
    W = 1     #: weights, INT8, bank-interleaved (see sw.layout)
    OUT = 2   #: results: INT8 row-major, or RAW32 little-endian words


class ErrorCode(enum.IntEnum):
    """Error codes reported by the device (core status and link errors)."""

    OK = 0
    BAD_SHAPE = 1          #: M, K or N is zero or exceeds the buffers
    NOT_LOADED = 2         #: RUN before LOAD_LAYER
    BUSY = 3               #: command refused while the core runs
