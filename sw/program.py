"""Compile integer models into device programs: layer records plus memory images (pure).

A compiled program is everything the device needs to run a model with its weights resident
and its activations on chip (``hw.core.program.ProgramCore``):

* one :class:`sw.protocol.ProgramLayer` per device layer (PROG buffer);
* the packed weights of every GEMM layer side by side in the W banks (each layer's
  descriptor carries its ``w_base``), its per-channel table in CHAN (``chan_base``) and its
  per-group table in GROUP (``group_base``);
* the DSPW records of every N:M sparse Dense or Conv2d layer side by side in DSPW (its
  descriptor's ``w_base`` counts DSPW records, ``sparse = 1 + pattern``): such a layer runs
  on the sparse DSP engine, whose gather writes A in the DSP layout
  (``sw.layout.dsp_act_image``);
* where in ACT the input goes and the output comes from. Activations ping-pong between the
  two ends of ACT: layer ``i`` reads the region layer ``i - 1`` wrote.

Lowering (``NHWC`` activations, ``B`` samples per run stacked along M):

* Dense ``(B, K) -> (B, N)``: a GEMM whose A rows are the samples; with N:M sparse weights
  (``lin.sparse``) on the DSP engine, its weights ``sw.layout.dsp_weight_image`` at the
  layer's first DSPW record, its A ``M * S`` words per row bank (``S = ceil(K / Wp)``,
  ``sw.layout.dsp_steps``) and the array's CHAN table and OUT layout.
* Conv2d: a GEMM over the im2col matrix ``(B * Ho * Wo, k * k * C)`` which the device's
  address generator gathers from ACT (``sw.numerics.im2col`` order), padding filled with the
  input zero point; with N:M sparse weights it runs on the DSP engine as Dense does (the
  gather writes the im2col rows in the DSP layout; ``K = k * k * C`` must be a multiple of
  the pattern's M).
* GlobalAvgPool: a GEMM with ``M = B * C`` (A gathered transposed), ``K = H * W``, ``N = 1``,
  weights all 1 and the layer's one-channel requantization.
* MaxPool2d: a MAXPOOL layer. Flatten: nothing (NHWC rows are already what Dense reads).

Everything here is a pure function of the model and the device's IDENTIFY reply, testable
without a device; :meth:`sw.driver.Accelerator.load_model` sends and runs the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import layout, numerics
from .numerics import OutMode, WeightFormat, WEIGHT_LANES, ChannelRequant, NMPattern
from .protocol import Buffer, DeviceInfo, LayerDescriptor, LayerKind, ProgramLayer

__all__ = ["ModelTooLarge", "DeviceLacks", "Placement", "CompiledProgram", "DeviceGeometry", "gemm_layer",
           "dsp_layer", "compile_model", "max_batch", "use_sparse_engine"]

_U16 = 1 << 16


class ModelTooLarge(ValueError):
    """The model (at this batch size) does not fit the device: names the layer and by how much."""


class DeviceLacks(ModelTooLarge):
    """The device cannot run the model at all: no layer programs, or a layer needs a weight
    format, group size or layer kind its bitstream does not have (IDENTIFY), or N:M sparse
    weights the device's sparse DSP engine cannot run (no engine, a pattern it lacks, INT8
    weights on a packed engine)."""


@dataclass(frozen=True)
class Placement:
    """``data`` goes to ``buffer`` at byte ``address``."""
    buffer: Buffer
    address: int
    data: bytes


@dataclass(frozen=True)
class DeviceGeometry:
    """The sizes a program must fit, from IDENTIFY.

    The sparse DSP engine (all 0 without one): ``dsp_stages`` its chain length L,
    ``dsp_chains`` its chains, ``dsp_packed`` two 4-bit columns per chain, ``dsp_patterns``
    the mask of ``NMPattern`` s it runs, ``dsp_depth`` DSPW records per chain,
    ``dsp_stride`` the chain stride CH of the DSPW address map and ``dsp_share`` its chains
    per index group (IDENTIFY ``dsp_share``; 1 when IDENTIFY reports 0 next to an engine:
    every chain its own indices).
    """
    rows: int
    cols: int
    a_depth: int
    w_depth: int
    out_depth: int
    chan_depth: int
    group_depth: int
    act_bytes: int
    max_layers: int
    max_k: int
    formats: int
    group_sizes: int
    layer_kinds: int
    dsp_stages: int = 0
    dsp_chains: int = 0
    dsp_packed: bool = False
    dsp_patterns: int = 0
    dsp_depth: int = 0
    dsp_stride: int = 0
    dsp_share: int = 0

    @property
    def dsp_index_group(self) -> int:
        """Output columns per index group (``sw.protocol.DeviceInfo.dsp_index_group``):
        ``dsp_share`` (two per chain packed); 0 without a DSP engine."""
        if not self.dsp_stages:
            return 0
        return max(1, self.dsp_share) * (2 if self.dsp_packed else 1)

    @classmethod
    def of(cls, info: DeviceInfo) -> "DeviceGeometry":
        if not info.act_bytes or not info.max_layers:
            raise DeviceLacks("the device has no layer programs (IDENTIFY reports no ACT "
                                "memory); its bitstream predates them: rebuild it")
        dsp = {}
        if info.dsp_stages:
            dsp = dict(dsp_stages=info.dsp_stages, dsp_chains=info.dsp_chains,
                       dsp_packed=bool(info.dsp_packed), dsp_patterns=info.dsp_patterns,
                       dsp_depth=info.dsp_depth, dsp_stride=info.dsp_chain_stride,
                       dsp_share=max(1, info.dsp_share))
        return cls(info.rows, info.cols, info.a_bytes // (4 * info.rows),
                   info.w_bytes // info.cols, info.out_words,
                   info.chan_bytes // layout.CHAN_ENTRY_BYTES,
                   info.group_bytes // layout.GROUP_ENTRY_BYTES, info.act_bytes,
                   info.max_layers, info.max_k, info.formats, info.group_sizes,
                   info.layer_kinds, **dsp)


@dataclass
class CompiledProgram:
    """A model compiled for one device geometry and batch size.

    Attributes
    ----------
    layers : list of ProgramLayer
    names : list of str
        The model layer each device layer comes from.
    macs : list of int
        Real multiply-accumulates per device layer and run (all ``batch`` samples).
    placements : list of Placement
        Weights, tables and the program itself: written once, resident afterwards.
    batch : int
        Samples per run.
    input_base, input_bytes, output_base, output_bytes : int
        ACT regions of the input (``batch`` samples, NHWC / row-major int8) and the output.
    output_shape : tuple
        Per-sample output shape.
    weight_bytes : dict
        Bytes used of W, CHAN, GROUP, DSPW and PROG (for the summary).
    """
    layers: list
    names: list
    macs: list
    placements: list
    batch: int
    input_base: int
    input_bytes: int
    output_base: int
    output_bytes: int
    output_shape: tuple
    act_peak: int = 0
    weight_bytes: dict = field(default_factory=dict)
    #: ACT region (base, bytes) each device layer writes
    regions: list = field(default_factory=list)

    @property
    def program_bytes(self) -> bytes:
        return b"".join(r.pack() for r in self.layers)

    def resident_bytes(self) -> int:
        """Bytes written once when the model is loaded (weights, tables, program)."""
        return sum(len(p.data) for p in self.placements)


def _fmt_names(mask: int) -> str:
    return ", ".join(f.name for f in WeightFormat if mask >> int(f) & 1) or "none"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_out(name: str, M: int, N: int, geo) -> None:
    """ModelTooLarge when layer ``name``'s INT8 output (M x N) does not fit OUT."""
    R = geo.rows
    o_elems = _cdiv(M, R) * N
    if o_elems > 4 * geo.out_depth:
        raise ModelTooLarge(f"layer {name!r}: its output (M={M} x N={N}) needs "
                            f"{o_elems * R} bytes of the OUT buffer, "
                            f"{(o_elems - 4 * geo.out_depth) * R} more than its "
                            f"{4 * geo.out_depth * R}: use a smaller batch")


class _Alloc:
    """Bump allocators for the W banks, CHAN and GROUP tables and the DSPW chain memories,
    with fit checks."""

    def __init__(self, geo: DeviceGeometry):
        self.geo = geo
        self.w = self.chan = self.group = self.dsp = 0

    def take(self, what: str, name: str, need: int, unit: str):
        geo = self.geo
        cap = {"w": geo.w_depth, "chan": geo.chan_depth, "group": geo.group_depth,
               "dsp": geo.dsp_depth}[what]
        base = getattr(self, what)
        if base + need > cap:
            label = {"w": "W bank", "chan": "CHAN table", "group": "GROUP table",
                     "dsp": "DSPW chain memory"}[what]
            raise ModelTooLarge(
                f"layer {name!r}: its weights need {need} {unit} of each {label} after the "
                f"{base} used by earlier layers, {base + need - cap} more than the device's "
                f"{cap}: the model's weights do not all fit on chip")
        setattr(self, what, base + need)
        return base


def gemm_layer(*, name: str, geo: DeviceGeometry, alloc: _Alloc, q, fmt, group, requant,
               M: int, gather_n, gather_s, in_base: int, out_base: int, stride: int = 0,
               pad: int = 0, pad_value: int = 0, h: int = 1, w: int = 1, sparse=None):
    """One GEMM layer: its record and the placements of its weights and tables.

    ``q`` (K, N) weight values of ``fmt``; ``group`` a ``GroupQuant`` or None; ``requant`` a
    ``ChannelRequant`` (always per channel: the bias is folded into it). ``sparse``: None
    for the systolic array, or the layer's ``sw.numerics.NMSparse`` (the compressed ``q``)
    for the sparse DSP engine (:func:`dsp_layer`).
    """
    if sparse is not None:
        return dsp_layer(name=name, geo=geo, alloc=alloc, sparse=sparse, group=group,
                         requant=requant, M=M, gather_n=gather_n, gather_s=gather_s,
                         in_base=in_base, out_base=out_base, stride=stride, pad=pad,
                         pad_value=pad_value, h=h, w=w)
    fmt = WeightFormat(fmt)
    K, N = q.shape
    R, C = geo.rows, geo.cols
    if not geo.formats >> int(fmt) & 1:
        raise DeviceLacks(f"layer {name!r}: the device does not compute {fmt.name} weights "
                          f"(its PE kind computes {_fmt_names(geo.formats)})")
    size = group.size if group is not None else 0
    from .protocol import GROUP_SIZE_BITS
    if size and not geo.group_sizes >> GROUP_SIZE_BITS[size] & 1:
        raise DeviceLacks(f"layer {name!r}: the device has no groups of {size} along K")
    lanes = WEIGHT_LANES[fmt]
    for dim, v in (("M", M), ("K", K), ("N", N)):
        if v >= _U16:
            raise ModelTooLarge(f"layer {name!r}: {dim}={v} exceeds the descriptor's 16 bits")
    if K > geo.max_k or K > lanes * geo.w_depth:
        raise ModelTooLarge(f"layer {name!r}: K={K} exceeds the device's largest K "
                            f"({min(geo.max_k, lanes * geo.w_depth)} for {fmt.name})")
    kw, kb = _cdiv(K, 4), _cdiv(K, lanes)
    a_words = _cdiv(M, R) * kw
    if a_words > geo.a_depth:
        raise ModelTooLarge(f"layer {name!r}: its A operand (M={M} x K={K}) needs "
                            f"{a_words * 4 * R} bytes of the A buffer, "
                            f"{(a_words - geo.a_depth) * 4 * R} more than its "
                            f"{geo.a_depth * 4 * R}: use a smaller batch")
    _check_out(name, M, N, geo)
    w_base = alloc.take("w", name, _cdiv(N, C) * kb, "bytes")
    chan_base = alloc.take("chan", name, N, "entries")
    group_base = alloc.take("group", name, group.groups(K) * N, "entries") if size else 0
    desc = LayerDescriptor.from_requant(M, K, N, OutMode.INT8, requant, fmt=fmt, group=size,
                                        w_base=w_base, chan_base=chan_base,
                                        group_base=group_base)
    rec = ProgramLayer(desc, LayerKind.GEMM, stride, pad, pad_value, h, w, in_base % _U16,
                       out_base, tuple(gather_n), tuple(s % _U16 for s in gather_s))
    places = [Placement(Buffer.W, w_base * C,
                        layout.weight_image(numerics.pack_weights(q, fmt), C)),
              Placement(Buffer.CHAN, chan_base * layout.CHAN_ENTRY_BYTES,
                        layout.chan_table_image(requant))]
    if size:
        places.append(Placement(Buffer.GROUP, group_base * layout.GROUP_ENTRY_BYTES,
                                layout.group_table_image(group)))
    return rec, places, M * K * N


def _dsp_pattern(name: str, geo: DeviceGeometry, sp) -> NMPattern:
    """The pattern of layer ``name``'s N:M weights ``sp``; :class:`DeviceLacks` when the
    device's DSP engine cannot run them (:func:`sw.layout.dsp_engine_pattern`)."""
    try:
        return layout.dsp_engine_pattern(geo, sp.n, sp.m, sp.fmt)
    except ValueError as e:
        raise DeviceLacks(f"layer {name!r}: its weights are N:M sparse ({sp.n}:{sp.m}, "
                          f"{sp.fmt.name}): {e}") from None


def dsp_layer(*, name: str, geo: DeviceGeometry, alloc: _Alloc, sparse, group, requant,
              M: int, gather_n, gather_s, in_base: int, out_base: int, stride: int = 0,
              pad: int = 0, pad_value: int = 0, h: int = 1, w: int = 1):
    """One GEMM layer on the sparse DSP engine: its record and placements.

    The descriptor has ``sparse = 1 + pattern``, ``fmt = sparse.fmt`` and ``w_base`` = the
    layer's first DSPW record (bump-allocated after the earlier sparse layers'); its
    ``ceil(N / cols) * S`` records per chain (``S = ceil(K / Wp)``) are
    ``sw.layout.dsp_weight_image`` placed at DSPW byte ``w_base * CH * 16``. The CHAN table
    and the OUT / ACT handling are the array's. The runner's gather writes A in the DSP
    layout, ``M * S`` words of each row bank.

    Raises
    ------
    DeviceLacks
        No DSP engine, a pattern it does not run, INT8 weights on a packed engine, column
        pairs that do not share their indices on a packed engine, index groups (``dsp_share``
        chains) whose columns do not share their indices, or group tables.
    ModelTooLarge
        A dimension beyond the descriptor, K beyond ``max_k``, the A words ``M * S`` beyond
        a row bank, the result beyond OUT, the DSPW records or CHAN entries beyond what the
        earlier layers left.
    """
    sp = sparse
    K, N = sp.k, sp.ncols
    R, C = geo.rows, geo.cols
    pattern = _dsp_pattern(name, geo, sp)
    if group is not None:
        raise DeviceLacks(f"layer {name!r}: its N:M sparse weights come with group tables, but "
                          f"the DSP engine requantizes per output channel only")
    for dim, v in (("M", M), ("K", K), ("N", N)):
        if v >= _U16:
            raise ModelTooLarge(f"layer {name!r}: {dim}={v} exceeds the descriptor's 16 bits")
    if K > geo.max_k:
        raise ModelTooLarge(f"layer {name!r}: K={K} exceeds the device's largest K "
                            f"({geo.max_k})")
    wp = layout.dsp_window(stages=geo.dsp_stages, pattern=pattern)
    S = layout.dsp_steps(K, stages=geo.dsp_stages, pattern=pattern)
    a_words = M * S
    if a_words > geo.a_depth:
        hint = ("use a smaller batch" if S <= geo.a_depth else
                f"K is too large for the DSP engine's A banks (at most {geo.a_depth} steps "
                f"of {wp} activations: K <= {geo.a_depth * wp})")
        raise ModelTooLarge(f"layer {name!r}: its A operand (M={M} x K={K}) in the DSP "
                            f"layout of {pattern.name} needs M x S = {M} x {S} = {a_words} "
                            f"words of each A row bank ({a_words * 4 * R} bytes of the A "
                            f"buffer), {(a_words - geo.a_depth) * 4 * R} bytes more than its "
                            f"{geo.a_depth * 4 * R}: {hint}")
    _check_out(name, M, N, geo)
    try:
        image = layout.dsp_weight_image(sp, cols=C, stages=geo.dsp_stages,
                                        packed=geo.dsp_packed, pattern=pattern,
                                        share=max(1, geo.dsp_share))
    except ValueError as e:                 # a packed pair's or an index group's indices differ
        raise DeviceLacks(f"layer {name!r}: {e}") from None
    records = layout.dsp_records(K, N, cols=C, stages=geo.dsp_stages, pattern=pattern)
    w_base = alloc.take("dsp", name, records, "records")
    chan_base = alloc.take("chan", name, N, "entries")
    desc = LayerDescriptor.from_requant(M, K, N, OutMode.INT8, requant, fmt=sp.fmt,
                                        w_base=w_base, chan_base=chan_base, sparse=pattern)
    rec = ProgramLayer(desc, LayerKind.GEMM, stride, pad, pad_value, h, w, in_base % _U16,
                       out_base, tuple(gather_n), tuple(s % _U16 for s in gather_s))
    places = [Placement(Buffer.DSPW, w_base * geo.dsp_stride * layout.DSP_RECORD_BYTES, image),
              Placement(Buffer.CHAN, chan_base * layout.CHAN_ENTRY_BYTES,
                        layout.chan_table_image(requant))]
    return rec, places, M * K * N


def _layer_name(i: int, layer) -> str:
    """How programs, counters and errors name layer ``i``: its name, else type and index."""
    return getattr(layer, "name", None) or f"{type(layer).__name__.lower()}{i}"


def _requant(lin) -> ChannelRequant:
    rq = lin.requant
    if isinstance(rq, numerics.Requant):
        rq = ChannelRequant.from_requant(rq, lin.q.shape[1])
    return rq


def compile_model(model, info: DeviceInfo, *, batch: int = 1) -> CompiledProgram:
    """Compile ``model`` (:class:`sw.model.Model`) for the device ``info`` describes, running
    ``batch`` samples per program run. Raises :class:`ModelTooLarge` naming the layer that
    does not fit (weights, A / OUT buffers, ACT, program length) and by how many bytes."""
    from . import model as mdl
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, not {batch!r}")
    geo = DeviceGeometry.of(info)
    alloc = _Alloc(geo)
    B = batch
    shape = tuple(model.input_shape)
    cur_size = B * int(np.prod(shape))
    cur_base, cur_low = 0, True
    if cur_size > geo.act_bytes:
        raise ModelTooLarge(f"the input ({B} x {shape}) needs {cur_size} bytes of ACT, "
                            f"{cur_size - geo.act_bytes} more than its {geo.act_bytes}")
    input_base, input_bytes = cur_base, cur_size
    records, names, macs, places, regions = [], [], [], [], []
    peak = cur_size

    def place_out(name, size):
        nonlocal peak
        base = geo.act_bytes - size if cur_low else 0
        lo_end = cur_base + cur_size if cur_low else size
        hi_start = base if cur_low else cur_base
        if size > geo.act_bytes or lo_end > hi_start:
            need = cur_size + size
            raise ModelTooLarge(f"layer {name!r}: its input and output activations need "
                                f"{need} bytes of ACT together, {need - geo.act_bytes} more "
                                f"than its {geo.act_bytes}: use a smaller batch")
        peak = max(peak, cur_size + size)
        return base

    for i, layer in enumerate(model.layers):
        name = _layer_name(i, layer)
        if isinstance(layer, mdl.Flatten):
            shape = (int(np.prod(shape)),)
            continue
        if isinstance(layer, mdl.Dense):
            lin = layer.lin
            K, N = lin.q.shape
            if int(np.prod(shape)) != K:
                raise ValueError(f"layer {name!r}: takes {K} inputs, gets shape {shape}")
            out_shape = (N,)
            size = B * N
            base = place_out(name, size)
            rec, pl, mac = gemm_layer(
                name=name, geo=geo, alloc=alloc, q=lin.q, fmt=lin.fmt, group=lin.group,
                requant=_requant(lin), M=B, gather_n=(B, 1, 1, 1, 1, K),
                gather_s=(K, 0, 0, 0, 0, 1), in_base=cur_base, out_base=base,
                sparse=getattr(lin, "sparse", None))
        elif isinstance(layer, mdl.Conv2d):
            lin = layer.lin
            H, W, Cin = shape
            k, st, pd = layer.kernel, layer.stride, layer.pad
            Ho = numerics.conv_out_size(H, k, st, pd)
            Wo = numerics.conv_out_size(W, k, st, pd)
            K, N = lin.q.shape
            if K != k * k * Cin:
                raise ValueError(f"layer {name!r}: weights for K={K}, input {shape} with a "
                                 f"{k}x{k} kernel gives K={k * k * Cin}")
            out_shape = (Ho, Wo, N)
            size = B * Ho * Wo * N
            base = place_out(name, size)
            rec, pl, mac = gemm_layer(
                name=name, geo=geo, alloc=alloc, q=lin.q, fmt=lin.fmt, group=lin.group,
                requant=_requant(lin), M=B * Ho * Wo, gather_n=(B, Ho, Wo, k, k, Cin),
                gather_s=(H * W * Cin, st * W * Cin, st * Cin, W * Cin, Cin, 1),
                in_base=cur_base - pd * W * Cin - pd * Cin, out_base=base, stride=st, pad=pd,
                pad_value=int(lin.x_zero), h=H, w=W, sparse=getattr(lin, "sparse", None))
        elif isinstance(layer, mdl.GlobalAvgPool):
            H, W, Cin = shape
            out_shape = (Cin,)
            size = B * Cin
            base = place_out(name, size)
            ones = np.ones((H * W, 1), dtype=np.int64)
            rec, pl, mac = gemm_layer(
                name=name, geo=geo, alloc=alloc, q=ones, fmt=WeightFormat.INT8, group=None,
                requant=layer.requant, M=B * Cin, gather_n=(B, Cin, 1, H, W, 1),
                gather_s=(H * W * Cin, 1, 0, W * Cin, Cin, 0), in_base=cur_base,
                out_base=base, h=H, w=W)
        elif isinstance(layer, mdl.MaxPool2d):
            H, W, Cin = shape
            k, st = layer.size, layer.stride
            Ho, Wo = numerics.conv_out_size(H, k, st, 0), numerics.conv_out_size(W, k, st, 0)
            if not geo.layer_kinds >> int(LayerKind.MAXPOOL) & 1:
                raise DeviceLacks(f"layer {name!r}: the device has no MAXPOOL layers")
            out_shape = (Ho, Wo, Cin)
            size = B * Ho * Wo * Cin
            base = place_out(name, size)
            desc = LayerDescriptor(0, 0, 0)
            rec = ProgramLayer(desc, LayerKind.MAXPOOL, 0, 0, 0, 0xFFFF, 0xFFFF, cur_base, base,
                               (B, Ho, Wo, Cin, k, k),
                               (H * W * Cin, st * W * Cin, st * Cin, 1, W * Cin, Cin))
            pl, mac = [], 0
        else:
            raise ValueError(f"layer {name!r}: {type(layer).__name__} has no device lowering")
        records.append(rec)
        regions.append((base, size))
        names.append(name)
        macs.append(mac)
        places.extend(pl)
        shape, cur_base, cur_size, cur_low = out_shape, base, size, not cur_low
    if not records:
        raise ValueError("the model has no layer that runs on the device")
    if len(records) > geo.max_layers:
        raise ModelTooLarge(f"the model lowers to {len(records)} device layers; a program "
                            f"holds at most {geo.max_layers}")
    prog = b"".join(r.pack() for r in records)
    places.append(Placement(Buffer.PROG, 0, prog))
    used = {"W": alloc.w * geo.cols, "CHAN": alloc.chan * layout.CHAN_ENTRY_BYTES,
            "GROUP": alloc.group * layout.GROUP_ENTRY_BYTES,
            "DSPW": alloc.dsp * geo.dsp_stride * layout.DSP_RECORD_BYTES, "PROG": len(prog)}
    return CompiledProgram(records, names, macs, places, B, input_base, input_bytes, cur_base,
                           cur_size, tuple(shape), peak, used, regions)


def max_batch(model, info: DeviceInfo, *, limit: int = 256) -> int:
    """The largest batch (<= ``limit``) the device runs ``model`` with; raises
    :class:`ModelTooLarge` (the batch-1 reason) when not even one sample fits.

    Every bound :func:`compile_model` checks counts: A, OUT and ACT for array layers and, for
    sparse layers on the DSP engine, ``M * S <= a_depth`` (``M`` = the batch, ``S`` the
    layer's steps per row)."""
    compile_model(model, info, batch=1)          # raises with the reason
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            compile_model(model, info, batch=mid)
            lo = mid
        except ModelTooLarge:
            hi = mid - 1
    return lo


def use_sparse_engine(model, info: DeviceInfo):
    """``model`` with every Dense / Conv2d layer whose integer weights are already N:M sparse
    (pruned before quantization, e.g. in an imported ONNX model) set to run on the device's
    sparse DSP engine.

    A layer qualifies when it has no group tables and its codes fit one of the device's
    patterns with ``n < m`` (``sw.quant.find_nm``; the sparsest pattern first, then the
    narrower window; a packed engine needs non-INT8 weights whose column pairs share their
    non-zero rows, an engine whose chains share their indices every group of
    ``dsp_index_group`` columns from column 0: the union of the group's non-zero rows must
    fit the pattern), and the engine can run that pattern and format
    (:func:`sw.layout.dsp_engine_pattern`). Other layers stay on the array. The numbers do not
    change: the compressed weights are the same codes, so ``golden`` is the same function.

    Returns
    -------
    (sw.model.Model, dict)
        The model (``model`` itself when nothing changes) and ``{layer name: "n:m"}`` of the
        layers that moved to the DSP engine.
    """
    import dataclasses
    from . import model as mdl, quant
    geo = DeviceGeometry.of(info)
    if not geo.dsp_stages:
        return model, {}
    cands = sorted((p for p in NMPattern if p.n < p.m and geo.dsp_patterns >> int(p) & 1),
                   key=lambda p: (p.n / p.m, p.m))
    layers, picked = [], {}
    for i, layer in enumerate(model.layers):
        lin = getattr(layer, "lin", None)
        # a packed engine pairs columns 2c, 2c + 1: an odd N has no partner for its last one
        if (isinstance(layer, (mdl.Dense, mdl.Conv2d)) and lin.sparse is None
                and lin.group is None and not (geo.dsp_packed and lin.q.shape[1] % 2)):
            ok = []
            for p in cands:
                try:
                    layout.dsp_engine_pattern(geo, p.n, p.m, lin.fmt)
                    ok.append((p.n, p.m))
                except ValueError:
                    pass
            sp = quant.find_nm(lin.q, ok, pair_columns=bool(geo.dsp_packed),
                               share=geo.dsp_index_group, fmt=lin.fmt) if ok else None
            if sp is not None:
                layer = dataclasses.replace(layer, lin=dataclasses.replace(lin, sparse=sp))
                picked[_layer_name(i, layer)] = f"{sp.n}:{sp.m}"
        layers.append(layer)
    if not picked:
        return model, {}
    return mdl.Model(layers, input_shape=model.input_shape, in_scale=model.in_scale,
                     in_zero=model.in_zero, out_scale=model.out_scale,
                     out_zero=model.out_zero, name=model.name), picked
