"""Host-side images of the core's buffers (the order the gateware reads them in).

The mpGEMM core keeps one 8-bit bank per array row (activations) and per array column
(weights), so the host address space interleaves banks: byte ``L`` is bank ``L % banks``,
word ``L // banks``. Within that space a GEMM's operands are stored tile by tile:

* ``A[m, k]`` at ``((m // rows) * K + k) * rows + m % rows``
* ``W[k, n]`` at ``((n // cols) * K + k) * cols + n % cols``

Padding rows/columns (beyond M or N) are stored as zeros.
"""

from __future__ import annotations

import numpy as np

from .numerics import OutMode, check_int

__all__ = ["a_image", "w_image", "out_size", "decode_out"]


def _tiles(x: int, t: int) -> int:
    return -(-x // t)


def a_image(a, rows: int) -> bytes:
    """Bytes of the A address space for activations ``a`` (M x K, int8)."""
    a = check_int(a, 8, name="a")
    if a.ndim != 2:
        raise ValueError(f"a must be 2-D (M, K), got shape {a.shape}")
    M, K = a.shape
    pad = np.zeros((_tiles(M, rows) * rows, K), dtype=np.int64)
    pad[:M] = a
    img = pad.reshape(-1, rows, K).transpose(0, 2, 1).reshape(-1)
    return (img & 0xFF).astype(np.uint8).tobytes()


def w_image(w, cols: int) -> bytes:
    """Bytes of the W address space for weights ``w`` (K x N, int8)."""
    w = check_int(w, 8, name="w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (K, N), got shape {w.shape}")
    K, N = w.shape
    pad = np.zeros((K, _tiles(N, cols) * cols), dtype=np.int64)
    pad[:, :N] = w
    img = pad.reshape(K, -1, cols).transpose(1, 0, 2).reshape(-1)
    return (img & 0xFF).astype(np.uint8).tobytes()


def out_size(M: int, N: int, mode: OutMode) -> int:
    """Bytes of the OUT address space holding an M x N result."""
    return M * N * (4 if OutMode(mode) == OutMode.RAW32 else 1)


def decode_out(data: bytes, M: int, N: int, mode: OutMode) -> np.ndarray:
    """Result matrix from the first :func:`out_size` bytes of the OUT buffer."""
    mode = OutMode(mode)
    need = out_size(M, N, mode)
    if len(data) < need:
        raise ValueError(f"need {need} bytes for a {M}x{N} {mode.name} result, got {len(data)}")
    if mode == OutMode.RAW32:
        return np.frombuffer(bytes(data[:need]), dtype="<i4").reshape(M, N).astype(np.int32)
    return np.frombuffer(bytes(data[:need]), dtype=np.int8).reshape(M, N).copy()
