"""Core v2: buffers and address generators -> engine -> drain -> epilogue -> output sink."""

from .desc import LAYER_LAYOUT, GROUP_CODES, TOKEN_LAYOUT, TABLE_LAYOUT
from .core import MixCore

__all__ = ["MixCore", "LAYER_LAYOUT", "GROUP_CODES", "TOKEN_LAYOUT", "TABLE_LAYOUT"]
