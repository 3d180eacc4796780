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

from .numerics import NMPattern, OutMode, WeightFormat, check_int, nm_pattern

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


# -- the sparse DSP engine (protocol 5): A in the DSP layout, the DSPW records ---------------

__all__ += ["dsp_window", "dsp_engine_pattern", "dsp_steps", "dsp_act_words", "dsp_act_image", "dsp_chains",
            "dsp_chain_stride", "dsp_records", "dsp_index_group", "dsp_check_indices",
            "dsp_weight_image", "DSP_MAX_BLOCK", "DSP_INDEX_BITS", "DSP_RECORD_BYTES"]

#: largest block size M the DSP engine takes (its stage indices have 3 bits)
DSP_MAX_BLOCK = 8
#: bits of one stage's index in a DSPW record
DSP_INDEX_BITS = 3
#: bytes of one DSPW record (``sw.protocol.DSPW_RECORD``): stage values in bytes 0..L-1, the
#: stage indices in bytes 8..10
DSP_RECORD_BYTES = 16
#: first byte of the 24-bit little-endian index field of a record
_DSP_INDEX_BYTE = 8
#: the DSP engine's chain lengths
_DSP_STAGES = (4, 8)


def _check_pos(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, not {v!r}")
    return int(v)


def _check_nonneg(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {v!r}")
    return int(v)


def _dsp_pattern(stages, pattern) -> tuple[int, int, int]:
    """Validated ``(L, n, m)`` of a DSP layer with ``stages`` stages and N:M ``pattern``."""
    from .numerics import NMPattern
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) \
            or int(stages) not in _DSP_STAGES:
        raise ValueError(f"stages (the DSP chain length L) must be one of {_DSP_STAGES}, "
                         f"not {stages!r}")
    if isinstance(pattern, bool) or not isinstance(pattern, (int, np.integer)) \
            or int(pattern) not in NMPattern._value2member_map_:
        raise ValueError(f"pattern must be a sw.numerics.NMPattern (one of "
                         f"{[p.name for p in NMPattern]}), not {pattern!r}")
    p = NMPattern(int(pattern))
    L = int(stages)
    if L % p.n:
        raise ValueError(f"pattern {p.name} ({p.n}:{p.m}) does not run on a DSP chain of "
                         f"L = {L} stages: n = {p.n} must divide L")
    return L, p.n, p.m


def dsp_window(*, stages: int, pattern) -> int:
    """Activations one step of a DSP layer covers along K: ``Wp = L // n * m``.

    Parameters
    ----------
    stages : int
        ``L``, the DSP chain length (``DeviceInfo.dsp_stages``: 4 or 8).
    pattern : sw.numerics.NMPattern
        The layer's N:M pattern; ``n`` must divide ``L``.

    Returns
    -------
    int
        ``Wp`` (a multiple of 4: ``Wp // 4`` row banks of A are used).
    """
    L, n, m = _dsp_pattern(stages, pattern)
    return L // n * m


def dsp_engine_pattern(dev, n: int, m: int, fmt) -> NMPattern:
    """The pattern of ``n:m`` sparse weights of ``fmt`` on ``dev``'s DSP engine, or the reason
    it cannot run them, the cases the device answers BAD_PARAM to.

    Parameters
    ----------
    dev : sw.protocol.DeviceInfo or sw.program.DeviceGeometry
        Anything with the IDENTIFY fields ``dsp_stages``, ``dsp_packed``, ``dsp_patterns``
        (the mask) and ``rows``.
    n, m : int
    fmt : sw.numerics.WeightFormat

    Raises
    ------
    ValueError
        No DSP engine, an ``n:m`` that is no hardware pattern or one the engine lacks, POW2
        weights, INT8 weights on a packed engine, or a window wider than the A row banks. The
        message says what the device has; the driver raises it as is, ``sw.program`` with
        the layer's name.
    """
    if not dev.dsp_stages:
        raise ValueError("the device has no sparse DSP engine (IDENTIFY dsp_stages = 0): run "
                         "the layer dense, or use a bitstream built with the DSP engine")
    try:
        pattern = nm_pattern(n, m)
    except ValueError as e:
        raise ValueError(f"{n}:{m} weights cannot run on the DSP engine: {e}") from None
    have = [p for p in NMPattern if dev.dsp_patterns >> int(p) & 1]
    if pattern not in have:
        runs = ", ".join(f"{p.name} ({p.n}:{p.m})" for p in have) or "none"
        raise ValueError(f"the device's DSP engine (L = {dev.dsp_stages} stages) does not run "
                         f"pattern {pattern.name} ({n}:{m}); it runs {runs}")
    if fmt == WeightFormat.POW2:
        raise ValueError("POW2 weights cannot be N:M sparse (the format has no zero)")
    if dev.dsp_packed and fmt == WeightFormat.INT8:
        raise ValueError("the device's DSP engine is packed (two 4-bit weights per "
                         "multiplier) and does not take INT8 weights; quantize the layer to "
                         "INT4, INT2 or TERNARY (with pair_columns=True)")
    wp = dsp_window(stages=dev.dsp_stages, pattern=pattern)
    if wp > 4 * dev.rows:
        raise ValueError(f"pattern {pattern.name} on the device's {dev.dsp_stages}-stage DSP "
                         f"chains reads {wp} activations per step, more than its {dev.rows} "
                         f"A row banks hold ({4 * dev.rows})")
    return pattern


def dsp_steps(k: int, *, stages: int, pattern) -> int:
    """Steps per output row of a DSP layer: ``S = ceil(K / Wp)`` (:func:`dsp_window`)."""
    k = _check_pos("k", k)
    return _tiles(k, dsp_window(stages=stages, pattern=pattern))


def dsp_act_words(m: int, k: int, *, stages: int, pattern) -> int:
    """32-bit words of each A row bank an ``m x k`` DSP layer uses: ``M * S``; the core
    answers BAD_SHAPE when this exceeds the bank depth (``a_bytes / (4 * rows)``)."""
    m = _check_pos("m", m)
    return m * dsp_steps(k, stages=stages, pattern=pattern)


def dsp_act_image(a, *, rows: int, stages: int, pattern) -> bytes:
    """Bytes of the A space for the activations ``a`` (M x K, int8) of a DSP layer.

    With ``Wp`` = :func:`dsp_window`, ``Bp = Wp // 4`` banks and ``S = ceil(K / Wp)`` steps,
    ``A[r, k]`` is byte ``k % 4`` of word ``r * S + k // Wp`` of row bank ``(k // 4) % Bp``,
    at host address ``((word * rows + bank) << 2) | byte``. Bytes past K in the last window
    and the banks ``Bp .. rows - 1`` are zeros. The image is ``M * S * rows * 4`` bytes, to
    be written from address 0.

    Parameters
    ----------
    a : array_like of int, shape (M, K)
        int8 activations (any integer dtype).
    rows : int
        Array rows (row banks of A, ``DeviceInfo.rows``); ``Wp <= 4 * rows`` is required.
    stages : int
        DSP chain length ``L`` (4 or 8).
    pattern : sw.numerics.NMPattern
        The layer's N:M pattern (``n`` must divide ``L``).

    Raises
    ------
    ValueError
        On values outside int8, a shape that is not 2-D or is empty, a bad ``rows``,
        ``stages`` or ``pattern``, or a window wider than the row banks (``Wp > 4 * rows``).
    """
    rows = _check_pos("rows", rows)
    wp = dsp_window(stages=stages, pattern=pattern)
    if wp > 4 * rows:
        from .numerics import NMPattern
        raise ValueError(f"pattern {NMPattern(int(pattern)).name} on L = {stages} stages "
                         f"reads Wp = {wp} "
                         f"activations per step, more than the {rows} row banks hold "
                         f"(4 * rows = {4 * rows})")
    a = check_int(a, 8, name="a")
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"a must be a non-empty 2-D (M, K) matrix, got shape {a.shape}")
    M, K = a.shape
    S, bp = _tiles(K, wp), wp // 4
    pad = np.zeros((M, S * wp), dtype=np.int64)
    pad[:, :K] = a
    img = np.zeros((M * S, rows, 4), dtype=np.int64)      # (word, bank, byte)
    img[:, :bp, :] = pad.reshape(M * S, bp, 4)
    return (img.reshape(-1) & 0xFF).astype(np.uint8).tobytes()


def dsp_chains(*, cols: int, packed: bool) -> int:
    """DSP chains of an engine that produces ``cols`` output columns per activation row:
    ``cols`` unpacked, ``cols // 2`` packed (two 4-bit columns per chain; ``cols`` even)."""
    cols = _check_pos("cols", cols)
    if not isinstance(packed, (bool, np.bool_)):
        raise ValueError(f"packed must be a bool, not {packed!r}")
    if packed and cols % 2:
        raise ValueError(f"a packed DSP engine computes two columns per chain: cols must be "
                         f"even, not {cols}")
    return cols // 2 if packed else cols


def dsp_chain_stride(chains: int) -> int:
    """``CH``: ``chains`` rounded up to a power of two; record ``r`` of chain ``c`` is at DSPW
    byte ``(r * CH + c) * 16``."""
    chains = _check_pos("chains", chains)
    return 1 << (chains - 1).bit_length()


def dsp_records(k: int, n: int, *, cols: int, stages: int, pattern) -> int:
    """DSPW records per chain a ``k x n`` DSP layer uses: ``ceil(N / cols) * S``; the core
    answers BAD_SHAPE when this exceeds ``dsp_depth - w_base``."""
    n = _check_pos("n", n)
    cols = _check_pos("cols", cols)
    return _tiles(n, cols) * dsp_steps(k, stages=stages, pattern=pattern)


def dsp_index_group(*, cols: int, packed: bool, share: int = 1) -> int:
    """Output columns per index group of a DSP engine: ``share * (2 if packed else 1)``.

    Chains ``g * share .. g * share + share - 1`` use chain ``g * share``'s indices
    (IDENTIFY ``dsp_share``), so in every tile of ``cols`` columns the columns
    ``g * G .. g * G + G - 1`` (``G`` = this group) keep their weights at the same indices.

    Parameters
    ----------
    cols : int
        Output columns per tile (``DeviceInfo.cols``).
    packed : bool
        Two 4-bit columns per chain.
    share : int
        Chains per index group; must divide the chains (:func:`dsp_chains`).

    Raises
    ------
    ValueError
        On a bad ``cols`` / ``packed``, or a ``share`` that is not a positive integer
        dividing the chains.
    """
    chains = dsp_chains(cols=cols, packed=packed)
    if isinstance(share, bool) or not isinstance(share, (int, np.integer)) or share < 1 \
            or chains % share:
        raise ValueError(f"share (DSP chains per index group) must be a positive integer "
                         f"dividing the engine's {chains} chains "
                         f"({'packed, ' if packed else ''}cols = {cols}), not {share!r}")
    return int(share) * (2 if packed else 1)


def dsp_check_indices(sparse, *, cols: int, packed: bool, share: int = 1) -> None:
    """Refuse N:M weights whose index groups do not share their indices.

    A DSP engine reads one index per stage for each group of ``share`` chains
    (:func:`dsp_index_group`: ``G = share`` columns, ``2 * share`` packed, from every tile's
    first column; a packed chain's two columns always share one). Since ``G`` divides
    ``cols``, those groups are the groups of ``G`` consecutive columns from column 0 of
    ``sparse``: within each, the real columns (the last group may be partial) must hold the
    same indices, in the same order, in every block. Nothing to check for ``G = 1``.

    Parameters
    ----------
    sparse : sw.numerics.NMSparse
    cols, packed, share
        As in :func:`dsp_index_group`.

    Raises
    ------
    TypeError
        If ``sparse`` is not an ``NMSparse``.
    ValueError
        On a bad ``cols`` / ``packed`` / ``share``, or a group whose indices differ: the
        message names the block and the columns and says how to prune
        (``sw.quant.prune_nm(..., pair_columns=True)`` for a packed pair,
        ``sw.quant.prune_nm(..., share=G)`` for a group).
    """
    from .numerics import NMSparse
    if not isinstance(sparse, NMSparse):
        raise TypeError(f"sparse must be a sw.numerics.NMSparse, not {type(sparse).__name__}")
    G = dsp_index_group(cols=cols, packed=packed, share=share)
    if G == 1:
        return
    idx, n, N = sparse.idx, sparse.n, sparse.ncols
    lead = np.repeat(idx[:, ::G], G, axis=1)[:, :N]     # each column's group leader
    bad = np.argwhere(idx != lead)
    if not bad.size:
        return
    r, c = (int(t) for t in bad[0])                     # first by block, then by column
    b, g0 = r // n, c // G * G
    blk = slice(b * n, (b + 1) * n)
    got, want = [int(t) for t in idx[blk, c]], [int(t) for t in idx[blk, g0]]
    if packed and share == 1:
        raise ValueError(
            f"packed columns {g0} and {g0 + 1} share a DSP chain, so their kept "
            f"weights of block {b} must sit at the same indices in the same order; "
            f"found {want} and {got}: prune with "
            f"sw.quant.prune_nm(..., pair_columns=True)")
    how = f"pair_columns=True, share={G}" if packed else f"share={G}"
    raise ValueError(
        f"columns {g0}..{min(g0 + G, N) - 1} share one index per stage on this DSP engine "
        f"({share} chains per index group"
        f"{', two columns per chain' if packed else ''}: {G} columns), so their kept weights "
        f"of block {b} must sit at the same indices in the same order; column {g0} has "
        f"{want} but column {c} has {got}: prune with sw.quant.prune_nm(..., {how})")


def dsp_weight_image(sparse, *, cols: int, stages: int, packed: bool, pattern=None,
                     share: int = 1) -> bytes:
    """Bytes of the DSPW space for N:M compressed weights (a layer at ``w_base`` 0).

    Output columns go in tiles of ``cols``, tile ``t`` covering columns ``n0 = t * cols``
    onwards; step ``s`` of tile ``t`` is record ``r = t * S + s`` (``S = ceil(K / Wp)``,
    :func:`dsp_steps`). Chain ``c``'s record ``r`` starts at byte ``(r * CH + c) * 16``
    (``CH`` = :func:`dsp_chain_stride` of :func:`dsp_chains`; the bytes of chains
    ``chains .. CH - 1`` are zeros). Stage ``j`` of step ``s`` serves block
    ``b = s * (L // n) + j // n`` (blocks of ``m`` along K) and holds that block's kept weight
    number ``j % n`` (row ``b * n + j % n`` of the ``NMSparse``) of the chain's column: its
    value in record byte ``j`` and its index in bits ``3j .. 3j + 2`` of the 24-bit
    little-endian value of bytes 8..10; the other bytes are 0. Blocks past ``K / m`` and
    columns past N are value 0, index 0.

    * Unpacked: chain ``c`` is column ``n0 + c``; byte ``j`` is the int8 value.
    * Packed: chain ``c`` is columns ``n0 + 2c`` (lo) and ``n0 + 2c + 1`` (hi); byte ``j``
      is ``(hi & 0xF) << 4 | (lo & 0xF)``; both columns use one index (prune with
      ``sw.quant.prune_nm(..., pair_columns=True)``). A missing hi column (N odd) is 0.
    * Shared indices (``share`` > 1, IDENTIFY ``dsp_share``): chains ``g * share ..
      g * share + share - 1`` use the indices of chain ``g * share``'s record, the device
      ignores the others' index bytes. The real columns of each group of
      ``G = share * (1 or 2 packed)`` columns from each tile's first column must therefore
      have identical indices (:func:`dsp_check_indices`; prune with
      ``sw.quant.prune_nm(..., share=G)``). The image is the same as with ``share = 1``:
      every chain's record still carries its (equal) indices.

    The image is ``ceil(N / cols) * S * CH * 16`` bytes. A layer at ``w_base`` records goes
    ``w_base * CH * 16`` bytes further.

    Parameters
    ----------
    sparse : sw.numerics.NMSparse
        The weights, ``K x N`` (K a multiple of ``m``).
    cols : int
        Output columns per tile (``DeviceInfo.cols``).
    stages : int
        DSP chain length ``L`` (4 or 8); the pattern's ``n`` must divide it.
    packed : bool
        Packed engine (``DeviceInfo.dsp_packed``): two 4-bit columns per chain.
    pattern : sw.numerics.NMPattern, optional
        The pattern the layer's descriptor names; checked against ``sparse``'s ``n:m``.
    share : int
        Chains per index group (``DeviceInfo.dsp_share``, 1: every chain its own indices);
        must divide the chains (:func:`dsp_chains`).

    Raises
    ------
    TypeError
        If ``sparse`` is not an ``NMSparse``.
    ValueError
        On an ``n:m`` that is no hardware pattern, differs from ``pattern`` or does not run
        on ``L`` stages, a bad ``cols`` (odd when packed), ``stages`` or ``share``, packed
        values outside ``[-8, 7]``, or a packed column pair or an index group whose indices
        differ (the message names block and columns, :func:`dsp_check_indices`).
    """
    from .numerics import NMPattern, NMSparse, nm_pattern
    if not isinstance(sparse, NMSparse):
        raise TypeError(f"sparse must be a sw.numerics.NMSparse, not {type(sparse).__name__}")
    own = nm_pattern(sparse.n, sparse.m)               # ValueError: not a hardware pattern
    if pattern is not None:
        L, n, m = _dsp_pattern(stages, pattern)         # validates pattern itself
        if (n, m) != (sparse.n, sparse.m):
            raise ValueError(f"the weights are {sparse.n}:{sparse.m} ({own.name}), not "
                             f"{n}:{m} as pattern {NMPattern(int(pattern)).name} says")
    L, n, m = _dsp_pattern(stages, own)
    chains = dsp_chains(cols=cols, packed=packed)
    dsp_index_group(cols=cols, packed=packed, share=share)     # validates share
    ch = dsp_chain_stride(chains)
    N, blocks = sparse.ncols, sparse.blocks
    per_step = L // n                                   # blocks per step
    S = _tiles(blocks, per_step)                        # = ceil(K / Wp)
    T = _tiles(N, cols)
    vals, idx = sparse.values, sparse.idx
    if packed:
        lo, hi = int(vals.min()), int(vals.max())
        if lo < -8 or hi > 7:
            raise ValueError(f"a packed DSP engine takes 4-bit weights in [-8, 7] (INT4, INT2, "
                             f"TERNARY); found [{lo}, {hi}] ({sparse.fmt.name})")
    dsp_check_indices(sparse, cols=cols, packed=packed, share=share)
    # stage j of step s: block b, kept row b * n + j % n (rows past the last block are zeros)
    s_, j_ = np.arange(S)[:, None], np.arange(L)[None, :]
    b = s_ * per_step + j_ // n                          # (S, L)
    row = b * n + j_ % n
    rows_pad = S * per_step * n
    ncol = T * cols
    v = np.zeros((rows_pad, ncol), dtype=np.int64)
    x = np.zeros((rows_pad, ncol), dtype=np.int64)
    v[:blocks * n, :N] = vals
    x[:blocks * n, :N] = idx
    if packed:
        vlo, vhi = v[:, 0::2], v[:, 1::2]                # (rows_pad, T * chains)
        byte = ((vhi & 0xF) << 4) | (vlo & 0xF)
        index = x[:, 0::2]                               # the pair's shared (lo) indices
    else:
        byte = v & 0xFF
        index = x
    # (rows_pad, T * chains) -> per (tile, step, chain, stage)
    byte = byte.reshape(rows_pad, T, chains)[row]        # (S, L, T, chains)
    index = index.reshape(rows_pad, T, chains)[row]
    byte = byte.transpose(2, 0, 3, 1)                    # (T, S, chains, L)
    index = index.transpose(2, 0, 3, 1)
    packed_idx = (index << (DSP_INDEX_BITS * np.arange(L))).sum(axis=-1)   # (T, S, chains)
    img = np.zeros((T * S, ch, DSP_RECORD_BYTES), dtype=np.int64)
    img[:, :chains, :L] = byte.reshape(T * S, chains, L)
    for i in range(3):
        img[:, :chains, _DSP_INDEX_BYTE + i] = (packed_idx.reshape(T * S, chains) >> (8 * i)) & 0xFF
    return img.reshape(-1).astype(np.uint8).tobytes()
