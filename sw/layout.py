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


# -- core v2 (MixCore): 32-bit activation / output banks, packed weights, tables --------------

__all__ += ["act_image", "weight_image", "result_size", "decode_result", "chan_table_image",
            "group_table_image", "result_positions", "CHAN_ENTRY_BYTES", "GROUP_ENTRY_BYTES"]

#: bytes per entry of the per-channel table (bias i32, multiplier u16, shift u8, pad)
CHAN_ENTRY_BYTES = 8
#: bytes per entry of the per-group table (scale u16, zero point i8, pad)
GROUP_ENTRY_BYTES = 4


def act_image(a, rows: int) -> bytes:
    """Bytes of MixCore's A space for activations ``a`` (M x K, int8).

    Each row bank holds 32-bit words of four consecutive K elements of one row; the host
    space interleaves the banks word by word: ``A[m, k]`` is byte
    ``(((m // rows) * ceil(K / 4) + k // 4) * rows + m % rows) * 4 + k % 4``.
    """
    a = check_int(a, 8, name="a")
    if a.ndim != 2:
        raise ValueError(f"a must be 2-D (M, K), got shape {a.shape}")
    M, K = a.shape
    kw = _tiles(K, 4)
    pad = np.zeros((_tiles(M, rows) * rows, kw * 4), dtype=np.int64)
    pad[:M, :K] = a
    # (tile, row, word, byte) -> (tile, word, row, byte)
    img = pad.reshape(-1, rows, kw, 4).transpose(0, 2, 1, 3).reshape(-1)
    return (img & 0xFF).astype(np.uint8).tobytes()


def weight_image(packed, cols: int) -> bytes:
    """Bytes of MixCore's W space for packed weights (``sw.numerics.pack_weights``, KB x N)."""
    p = check_int(packed, 8, signed=False, name="packed weights")
    if p.ndim != 2:
        raise ValueError(f"packed weights must be 2-D (KB, N), got shape {p.shape}")
    KB, N = p.shape
    pad = np.zeros((KB, _tiles(N, cols) * cols), dtype=np.int64)
    pad[:, :N] = p
    return pad.reshape(KB, -1, cols).transpose(1, 0, 2).reshape(-1).astype(np.uint8).tobytes()


def _result_index(M: int, N: int, rows: int):
    m = np.arange(M)[:, None]
    n = np.arange(N)[None, :]
    return (m // rows) * N + n, m % rows


def result_positions(M: int, N: int, rows: int, mode: OutMode) -> np.ndarray:
    """Byte addresses in MixCore's OUT space of an M x N result: shape (M, N) for INT8,
    (M, N, 4) (little-endian bytes) for RAW32."""
    e, bank = _result_index(M, N, rows)
    if OutMode(mode) == OutMode.RAW32:
        return ((e * rows + bank) * 4)[..., None] + np.arange(4)
    return ((e >> 2) * rows + bank) * 4 + (e & 3)


def result_size(M: int, N: int, rows: int, mode: OutMode) -> int:
    """Bytes of MixCore's OUT space that hold an M x N result (a prefix of the space)."""
    return int(result_positions(M, N, rows, mode).max()) + 1


def decode_result(data: bytes, M: int, N: int, rows: int, mode: OutMode) -> np.ndarray:
    """The M x N result from MixCore's OUT space: element ``(m, n)`` has index
    ``e = (m // rows) * N + n`` in bank ``m % rows``, as byte ``e`` (INT8) or word ``e``
    (RAW32) of the bank; the space interleaves the banks word by word."""
    mode = OutMode(mode)
    need = result_size(M, N, rows, mode)
    if len(data) < need:
        raise ValueError(f"need {need} bytes for a {M}x{N} {mode.name} result, got {len(data)}")
    b = np.frombuffer(bytes(data), dtype=np.uint8)
    pos = result_positions(M, N, rows, mode)
    if mode == OutMode.RAW32:
        words = sum(b[pos[..., i]].astype(np.int64) << (8 * i) for i in range(4))
        return np.where(words >= 1 << 31, words - (1 << 32), words).astype(np.int32)
    return b[pos].astype(np.int8)


def chan_table_image(crq) -> bytes:
    """Per-channel table bytes for a ``sw.numerics.ChannelRequant``."""
    n = crq.channels
    out = np.zeros((n, CHAN_ENTRY_BYTES), dtype=np.uint8)
    bias = crq.bias & 0xFFFFFFFF
    for i in range(4):
        out[:, i] = (bias >> (8 * i)) & 0xFF
    out[:, 4] = crq.multiplier & 0xFF
    out[:, 5] = crq.multiplier >> 8
    out[:, 6] = crq.shift
    return out.tobytes()


def group_table_image(gq) -> bytes:
    """Per-group table bytes for a ``sw.numerics.GroupQuant``: entry ``g * N + n``."""
    sc, zp = gq.scale.reshape(-1), gq.zero.reshape(-1)
    out = np.zeros((sc.size, GROUP_ENTRY_BYTES), dtype=np.uint8)
    out[:, 0] = sc & 0xFF
    out[:, 1] = sc >> 8
    out[:, 2] = zp & 0xFF
    return out.tobytes()
