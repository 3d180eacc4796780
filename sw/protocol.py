"""Wire protocol between the host driver and the device (the one definition of it).

The gateware (``hw.soc.link``) reads the enums and constants below directly (a plain
``enum.Enum`` is an Amaranth shape), so host and device cannot disagree. ``docs/protocol.md``
describes the format byte by byte; this module is its executable form. No Amaranth here.

Frame (protocol versions 2 to 6; version 3 changed the descriptor, IDENTIFY and COUNTERS
bodies and added the CHAN and GROUP buffers, version 4 the descriptor bases, the IDENTIFY
fields of layer programs, the ACT, PROG and LCNT buffers and RUN_PROGRAM, version 5 the
descriptor's ``sparse`` byte, the IDENTIFY fields of the sparse DSP engine and the DSPW
buffer, version 6 IDENTIFY's ``dsp_share``), requests and replies alike::

    SYNC(0xA5) | OPCODE u8 | LENGTH u16 LE | SEQ u8 | BODY (LENGTH - 1 bytes) | CRC u16 BE

``LENGTH`` counts the sequence tag and the body (so it is at least 1). A reply echoes the
request's ``SEQ``, so a late reply is never taken for the answer to a later request. The CRC
is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, no final xor; check value
0x29B1 over ``b"123456789"``; the standard library's ``binascii.crc_hqx(data, 0xFFFF)``)
over OPCODE, LENGTH, SEQ and BODY, sent most significant byte first, so the CRC register run
over OPCODE..CRC ends at zero (what the gateware checks). Replies carry
``opcode | REPLY_FLAG`` and start their body with a status byte (an :class:`ErrorCode`); an
error reply has no further body.

A protocol-1 device answers a protocol-2 request with a frame of LENGTH 1 (its status byte
where version 2 has the tag, and no body): :class:`Frame` ``.is_v1_reply`` recognises it, so
the driver refuses an old bitstream with a clear message instead of timing out.
"""

from __future__ import annotations

import binascii
import enum
import operator
import struct
from dataclasses import dataclass

__all__ = [
    "Buffer", "ErrorCode", "Opcode", "PeKind", "SYNC", "LINK_ERRORS", "UNKNOWN_SEQ", "REPLY_FLAG", "PROTOCOL_VERSION", "MAX_DATA",
    "WRITE_HEADER", "MAX_PAYLOAD", "FRAME_OVERHEAD", "READ_PAYLOAD", "LAYER_PAYLOAD",
    "RUN_NOWAIT", "GROUP_SIZE_BITS", "DSPW_RECORD", "LayerKind", "PROGRAM_RECORD", "LCNT_RECORD",
    "GATHER_LOOPS", "ProgramLayer", "LayerCounters", "run_program", "crc16", "crc16_update", "ProtocolError", "DeviceError", "Frame",
    "pack_frame", "unpack_frame", "pack_reply", "FrameParser", "DeviceInfo",
    "LayerDescriptor", "Status", "Counters", "identify", "write", "read", "load_layer",
    "run", "status", "counters", "reset", "efficiency", "parse_reply",
]


class Buffer(enum.IntEnum):
    """On-chip buffers addressable by the host."""

    A = 0       #: activations, INT8, 4 per 32-bit word, row banks (``sw.layout.act_image``)
    W = 1       #: packed weight bytes, column banks (``sw.layout.weight_image``)
    OUT = 2     #: results, INT8 or RAW32, row banks (``sw.layout.decode_result``)
    CHAN = 3    #: per-channel table, 8 bytes per channel (``sw.layout.chan_table_image``)
    GROUP = 4   #: per-group table, 4 bytes per (group, channel) (``sw.layout.group_table_image``)
    ACT = 5     #: activation memory of layer programs, INT8 bytes (``sw.program``)
    PROG = 6    #: layer program, :data:`PROGRAM_RECORD` bytes per layer (:class:`ProgramLayer`)
    LCNT = 7    #: per-layer counters of the last program run (:class:`LayerCounters`)
    DSPW = 8    #: the sparse DSP engine's weights, 16-byte records (``sw.layout.dsp_weight_image``)


class ErrorCode(enum.IntEnum):
    """Status byte of every reply: core status and link errors (fits 4 bits)."""

    OK = 0
    BAD_SHAPE = 1          #: M, K or N is zero or exceeds the buffers (reported by the core)
    NOT_LOADED = 2         #: RUN before LOAD_LAYER (or after RESET)
    BUSY = 3               #: command refused while the core runs
    BAD_CRC = 4            #: CRC mismatch; the command was not executed (nothing was written)
    UNKNOWN_OPCODE = 5     #: opcode not in :class:`Opcode` (CRC was good)
    BAD_LENGTH = 6         #: LENGTH > MAX_PAYLOAD, or wrong for the opcode
    BAD_ADDRESS = 7        #: buffer index invalid or address range outside the buffer
    TIMEOUT = 8            #: a frame stayed incomplete for longer than the inter-byte timeout
    BAD_PARAM = 9          #: descriptor field refused, bad RUN flags, RUN_PROGRAM count or layer kind
    WATCHDOG = 10          #: the GEMM ran longer than the watchdog allows and was stopped
    ABORTED = 11           #: the GEMM was stopped by RESET (the core's result; RESET clears it)


#: Statuses by which the device says a frame was damaged on the way and not executed: BAD_CRC,
#: TIMEOUT (cut off), and BAD_LENGTH when the tag is ``UNKNOWN_SEQ`` (the LENGTH field itself
#: was impossible). The request may be sent again as it is. (A BAD_LENGTH that carries the
#: request's tag passed the CRC: the request itself is malformed.)
LINK_ERRORS = (ErrorCode.BAD_CRC, ErrorCode.BAD_LENGTH, ErrorCode.TIMEOUT)


class PeKind(enum.IntEnum):
    """Processing element of the systolic array (IDENTIFY ``pe_kind``)."""

    INT8_DSP = 0           #: INT8 x INT8 on one MULT18X18D per PE
    MIXPE = 1              #: MixPE: INT8 x INT8/INT4/INT2/ternary/pow2 by shift-add, 1/2/4 MACs


class Opcode(enum.IntEnum):
    """Request opcodes. A reply carries ``opcode | REPLY_FLAG``."""

    IDENTIFY = 0x01     #: -> DeviceInfo
    WRITE = 0x02        #: buffer u8, address u32, data[1..MAX_DATA]
    READ = 0x03         #: buffer u8, address u32, count u16 -> data[count]
    LOAD_LAYER = 0x04   #: LayerDescriptor (22 bytes)
    RUN = 0x05          #: [] = run and reply when done; [RUN_NOWAIT] = reply once started
    STATUS = 0x06       #: -> flags u8 (bit0 busy, bit1 loaded), last_error u8
    COUNTERS = 0x07     #: -> cycles, busy, stall, macs, dq_stall: u48 LE each
    RESET = 0x08        #: stop a running GEMM, forget the loaded layer and the last error
    RUN_PROGRAM = 0x09  #: count u8 [, RUN_NOWAIT]: run layers 0..count-1 of the PROG buffer


class LayerKind(enum.IntEnum):
    """What one layer of a program does (:class:`ProgramLayer` ``kind``)."""

    GEMM = 0      #: gather ACT -> A (im2col / strided), run the core, scatter OUT -> ACT
    MAXPOOL = 1   #: ACT -> ACT: max over the two innermost gather loops


#: First byte of every frame; the decoders hunt for it after garbage or an error.
SYNC = 0xA5
#: Set in the opcode byte of replies (never in a valid request).
REPLY_FLAG = 0x80
#: Bumped on any incompatible change of this module (4: layer programs, descriptor bases;
#: 5: the sparse DSP engine: descriptor ``sparse`` byte, DSPW buffer, IDENTIFY DSP fields;
#: 6: IDENTIFY ``dsp_share``, DSP engines whose chains share indices).
PROTOCOL_VERSION = 6
#: Sequence tag the device puts in a reply to a frame whose tag it never received (a frame
#: refused at its LENGTH, or cut off before the tag); the driver tags requests 1..255.
UNKNOWN_SEQ = 0
#: Largest data block of one WRITE or READ.
MAX_DATA = 4096
#: WRITE body before the data: buffer u8 + address u32.
WRITE_HEADER = 5
#: Largest LENGTH the device accepts (tag + a WRITE of MAX_DATA bytes); larger -> BAD_LENGTH.
MAX_PAYLOAD = 1 + WRITE_HEADER + MAX_DATA
#: Bytes of a frame besides its body: SYNC, OPCODE, LENGTH(2), SEQ, CRC(2).
FRAME_OVERHEAD = 7
#: READ request body: buffer u8, address u32, count u16.
READ_PAYLOAD = 7
#: group size -> bit of ``DeviceInfo.group_sizes``
GROUP_SIZE_BITS = {32: 0, 64: 1, 128: 2}
#: LOAD_LAYER body length (see :class:`LayerDescriptor`).
LAYER_PAYLOAD = 22
#: bytes per record of the DSPW buffer (one step of one DSP chain, ``sw.layout.dsp_weight_image``)
DSPW_RECORD = 16
#: bytes per layer in the PROG buffer (:class:`ProgramLayer`)
PROGRAM_RECORD = 64
#: bytes per layer in the LCNT buffer (:class:`LayerCounters`)
LCNT_RECORD = 32
#: loops of the ACT address generator (:class:`ProgramLayer`)
GATHER_LOOPS = 6
#: RUN flag: reply as soon as the core started (poll STATUS for the result).
RUN_NOWAIT = 0x01


# -- CRC -------------------------------------------------------------------------------------

CRC_INIT = 0xFFFF
CRC_POLY = 0x1021


def crc16_update(crc: int, data: bytes) -> int:
    """Continue a CRC-16/CCITT-FALSE computation over ``data`` (``binascii.crc_hqx``)."""
    return binascii.crc_hqx(bytes(data), crc)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    return binascii.crc_hqx(bytes(data), CRC_INIT)


# -- frames ----------------------------------------------------------------------------------

class ProtocolError(Exception):
    """A byte string is not a well-formed frame (or reply) of this protocol."""


class DeviceError(Exception):
    """The device answered with an error status; ``.code`` is the :class:`ErrorCode`."""

    def __init__(self, code: int, opcode: int | None = None):
        try:
            self.code = ErrorCode(code)
            name = self.code.name
        except ValueError:
            self.code = code
            name = f"unknown error {code}"
        self.opcode = opcode
        what = Opcode(opcode).name if opcode in Opcode._value2member_map_ else opcode
        super().__init__(f"device error {name} in reply to {what}")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: the opcode byte as sent, the body and the sequence tag."""

    opcode: int
    payload: bytes = b""
    seq: int = 0
    #: the frame had LENGTH 1 and no body: a protocol-1 reply (see the module docstring)
    bare: bool = False

    @property
    def is_reply(self) -> bool:
        return bool(self.opcode & REPLY_FLAG)

    @property
    def is_v1_reply(self) -> bool:
        """A reply without a status byte: what a protocol-1 device sends back."""
        return self.is_reply and self.bare

    @property
    def request(self) -> int:
        """Opcode of the request this reply answers."""
        return self.opcode & ~REPLY_FLAG & 0xFF

    @property
    def status(self) -> int:
        """Status byte of a reply."""
        if not self.payload:
            raise ProtocolError("reply frame without a status byte")
        return self.payload[0]

    @property
    def data(self) -> bytes:
        """Reply body after the status byte."""
        return self.payload[1:]

    def to_bytes(self) -> bytes:
        return pack_frame(self.opcode, self.payload, seq=self.seq)


def _check_seq(seq) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= 0xFF:
        raise ValueError(f"seq must be an integer in [0, 255], not {seq!r}")
    return seq


def pack_frame(opcode: int, payload: bytes = b"", *, seq: int = 0) -> bytes:
    """SYNC, opcode, LE length, tag, body, BE CRC-16 over opcode..body."""
    if not 0 <= int(opcode) <= 0xFF:
        raise ValueError(f"opcode must be a byte, not {opcode!r}")
    payload = bytes(payload)
    if len(payload) + 1 > 0xFFFF:
        raise ValueError(f"body of {len(payload)} bytes does not fit a 16-bit length")
    body = (bytes([int(opcode)]) + struct.pack("<H", len(payload) + 1)
            + bytes([_check_seq(seq)]) + payload)
    return bytes([SYNC]) + body + struct.pack(">H", crc16(body))


def pack_reply(opcode: int, status: int, data: bytes = b"", *, seq: int = 0) -> bytes:
    """A reply to request ``opcode``: what the device sends (used by tests and fakes)."""
    return pack_frame((int(opcode) | REPLY_FLAG) & 0xFF, bytes([int(status)]) + bytes(data),
                      seq=seq)


def unpack_frame(data: bytes) -> Frame:
    """Decode exactly one complete frame; raises :class:`ProtocolError` on any defect."""
    data = bytes(data)
    if len(data) < FRAME_OVERHEAD:
        raise ProtocolError(f"frame too short ({len(data)} bytes)")
    if data[0] != SYNC:
        raise ProtocolError(f"frame starts with 0x{data[0]:02x}, not SYNC 0x{SYNC:02x}")
    (length,) = struct.unpack_from("<H", data, 2)
    if length < 1:
        raise ProtocolError("length field 0: a frame carries at least its sequence tag")
    if len(data) != FRAME_OVERHEAD - 1 + length:
        raise ProtocolError(f"length field says {length} bytes after it, frame has "
                            f"{len(data) - FRAME_OVERHEAD + 1}")
    if crc16(data[1:]) != 0:
        raise ProtocolError("CRC mismatch")
    return Frame(data[1], data[5:4 + length], data[4], bare=length == 1)


class FrameParser:
    """Streaming decoder: :meth:`feed` bytes in any pieces, get complete frames out.

    Bytes before a SYNC are skipped. A candidate frame whose length is 0 or exceeds
    ``max_payload`` or whose CRC is wrong is rejected and the hunt restarts at the byte after
    its SYNC, so a SYNC value inside garbage or a body never costs more than that candidate.

    Attributes ``skipped`` (bytes dropped while hunting) and ``bad_frames`` (rejected
    candidates) count what was thrown away.
    """

    def __init__(self, *, max_payload: int = MAX_PAYLOAD):
        if not isinstance(max_payload, int) or not 1 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload must be an int in [1, 65535], not {max_payload!r}")
        self.max_payload = max_payload
        self._buf = bytearray()
        self.skipped = 0
        self.bad_frames = 0

    def reset(self) -> None:
        """Drop any partial frame."""
        self._buf.clear()

    @property
    def pending(self) -> int:
        """Bytes held back (part of a frame not complete yet)."""
        return len(self._buf)

    def needed(self) -> int:
        """Lower bound of the bytes still missing for the frame in progress (1 when idle)."""
        buf = self._buf
        if len(buf) < 4:
            return max(1, 4 - len(buf)) if buf else 1
        length = buf[2] | buf[3] << 8
        return max(1, FRAME_OVERHEAD - 1 + length - len(buf))

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        buf = self._buf
        while True:
            i = buf.find(SYNC)
            if i < 0:
                self.skipped += len(buf)
                buf.clear()
                break
            if i:
                self.skipped += i
                del buf[:i]
            if len(buf) < 4:
                break
            length = buf[2] | buf[3] << 8
            if not 1 <= length <= self.max_payload:
                self.bad_frames += 1
                self.skipped += 1
                del buf[:1]
                continue
            end = FRAME_OVERHEAD - 1 + length
            if len(buf) < end:
                break
            if crc16(bytes(buf[1:end])) != 0:
                self.bad_frames += 1
                self.skipped += 1
                del buf[:1]
                continue
            frames.append(Frame(buf[1], bytes(buf[5:end - 2]), buf[4], bare=length == 1))
            del buf[:end]
        return frames


# -- payloads --------------------------------------------------------------------------------

def _check_uint(name: str, value, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be an integer in [0, {(1 << bits) - 1}], not {value!r}")
    return value


@dataclass(frozen=True)
class DeviceInfo:
    """IDENTIFY reply data (71 bytes, little-endian).

    ``out_modes`` is a bit mask: bit ``i`` set when ``OutMode(i)`` is supported.
    ``a_bytes``/``w_bytes``/``out_bytes``/``chan_bytes``/``group_bytes`` are the sizes of the
    host address spaces of the buffers; ``out_words`` the 32-bit words of one output bank;
    ``max_data`` is MAX_DATA. ``clock_hz`` is the core clock the bitstream was built for;
    ``timeout_cycles`` how long the link waits for the next byte of a started frame before it
    answers TIMEOUT; ``watchdog_cycles`` how long a run may take before it is stopped
    (WATCHDOG); ``tile_period`` the minimum cycles between two group (or tile) ends: a tile or
    group with fewer feed steps still takes this long; ``pe_kind`` a :class:`PeKind`;
    ``formats`` a bit mask of the ``sw.numerics.WeightFormat`` s the array computes;
    ``group_sizes`` a bit mask of the supported group sizes (bit 0: 32, 1: 64, 2: 128);
    ``act_bytes`` the size of the ACT memory of layer programs, ``max_layers`` the layers a
    program may have (PROG holds ``max_layers * PROGRAM_RECORD`` bytes, LCNT
    ``max_layers * LCNT_RECORD``), ``layer_kinds`` a bit mask of :class:`LayerKind`.

    The sparse DSP engine (protocol 5; all 0 when the core has none): ``dsp_stages`` the
    stages ``L`` of each chain (0: no DSP engine), ``dsp_chains`` the chains (``cols``
    unpacked, ``cols // 2`` packed), ``dsp_packed`` 1 when each chain computes two output
    columns of 4-bit weights, ``dsp_patterns`` a bit mask of the ``sw.numerics.NMPattern`` s
    it runs (bit ``p`` for ``NMPattern(p)``), ``dsp_bytes`` the size of the DSPW address
    space (``dsp_depth * CH * DSPW_RECORD``, ``CH`` = chains rounded up to a power of two).
    ``dsp_share`` (protocol 6): chains per index group. 1: every chain has its own indices;
    ``k > 1``: chains ``g * k .. g * k + k - 1`` (``k`` output columns, ``2k`` packed) use the
    indices of chain ``g * k``'s records (the device ignores the others' index bytes), so their
    kept weights must sit at the same positions (:attr:`dsp_index_group`,
    ``sw.quant.prune_nm(..., share=...)``); 0 without a DSP engine.
    """

    version: int
    config_hash: int
    rows: int
    cols: int
    a_bytes: int
    w_bytes: int
    out_bytes: int
    out_words: int
    max_k: int
    out_modes: int
    max_data: int = MAX_DATA
    clock_hz: int = 0
    timeout_cycles: int = 0
    watchdog_cycles: int = 0
    tile_period: int = 0
    pe_kind: int = PeKind.INT8_DSP
    formats: int = 1
    group_sizes: int = 0
    chan_bytes: int = 0
    group_bytes: int = 0
    act_bytes: int = 0
    max_layers: int = 0
    layer_kinds: int = 0
    dsp_stages: int = 0
    dsp_chains: int = 0
    dsp_packed: int = 0
    dsp_patterns: int = 0
    dsp_bytes: int = 0
    dsp_share: int = 0

    FORMAT = "<BIHHIIIIHBHIIIHBBBIIIHBBBBBIB"
    SIZE = struct.calcsize(FORMAT)
    _BITS = (("version", 8), ("config_hash", 32), ("rows", 16), ("cols", 16),
             ("a_bytes", 32), ("w_bytes", 32), ("out_bytes", 32), ("out_words", 32),
             ("max_k", 16), ("out_modes", 8), ("max_data", 16), ("clock_hz", 32),
             ("timeout_cycles", 32), ("watchdog_cycles", 32), ("tile_period", 16),
             ("pe_kind", 8), ("formats", 8), ("group_sizes", 8), ("chan_bytes", 32),
             ("group_bytes", 32), ("act_bytes", 32), ("max_layers", 16), ("layer_kinds", 8),
             ("dsp_stages", 8), ("dsp_chains", 8), ("dsp_packed", 8), ("dsp_patterns", 8),
             ("dsp_bytes", 32), ("dsp_share", 8))

    def __post_init__(self):
        for name, bits in self._BITS:
            v = getattr(self, name)
            try:
                v = operator.index(v)          # ints, bools, IntEnums; not floats or None
            except TypeError:
                pass                           # _check_uint names the field and the value
            _check_uint(f"DeviceInfo.{name}", v, bits)

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, *(int(getattr(self, n)) for n, _ in self._BITS))

    @classmethod
    def unpack(cls, data: bytes) -> "DeviceInfo":
        if len(data) != cls.SIZE:
            raise ProtocolError(f"DeviceInfo needs {cls.SIZE} bytes, got {len(data)}")
        return cls(*struct.unpack(cls.FORMAT, data))

    @property
    def pe(self):
        """``pe_kind`` as a :class:`PeKind` (the raw number when this host does not know it)."""
        return PeKind(self.pe_kind) if self.pe_kind in PeKind._value2member_map_ else self.pe_kind

    def supports_format(self, fmt) -> bool:
        """Whether the array computes weight format ``fmt`` (a ``WeightFormat`` or its number)."""
        return bool(self.formats >> int(fmt) & 1)

    def supports_group(self, size: int) -> bool:
        """Whether group size ``size`` (0: no groups) is supported."""
        if size == 0:
            return True
        return size in GROUP_SIZE_BITS and bool(self.group_sizes >> GROUP_SIZE_BITS[size] & 1)

    def supports_pattern(self, pattern) -> bool:
        """Whether the DSP engine runs N:M pattern ``pattern`` (an ``NMPattern`` or its
        number); False without a DSP engine."""
        return bool(self.dsp_stages) and bool(self.dsp_patterns >> int(pattern) & 1)

    @property
    def dsp_chain_stride(self) -> int:
        """``CH``: the DSP chains rounded up to a power of two (record ``r`` of chain ``c``
        starts at DSPW byte ``(r * CH + c) * DSPW_RECORD``); 0 without a DSP engine."""
        if not self.dsp_chains:
            return 0
        return 1 << (self.dsp_chains - 1).bit_length()

    @property
    def dsp_index_group(self) -> int:
        """Output columns that share one index per kept weight: ``dsp_share`` chains of one
        column (two packed); 0 without a DSP engine. Groups start at every tile's first
        column (tiles of ``cols`` columns)."""
        if not self.dsp_stages:
            return 0
        return max(1, self.dsp_share) * (2 if self.dsp_packed else 1)

    @property
    def dsp_depth(self) -> int:
        """DSPW records per chain (``dsp_bytes / (CH * DSPW_RECORD)``); 0 without a DSP engine."""
        ch = self.dsp_chain_stride
        return self.dsp_bytes // (ch * DSPW_RECORD) if ch else 0

    def buffer_size(self, buffer: Buffer) -> int:
        """Host address space size of ``buffer`` in bytes."""
        return {Buffer.A: self.a_bytes, Buffer.W: self.w_bytes, Buffer.OUT: self.out_bytes,
                Buffer.CHAN: self.chan_bytes, Buffer.GROUP: self.group_bytes,
                Buffer.ACT: self.act_bytes, Buffer.PROG: self.max_layers * PROGRAM_RECORD,
                Buffer.LCNT: self.max_layers * LCNT_RECORD,
                Buffer.DSPW: self.dsp_bytes}[Buffer(buffer)]

    def supports(self, out_mode) -> bool:
        return bool(self.out_modes >> int(out_mode) & 1)


@dataclass(frozen=True)
class LayerDescriptor:
    """LOAD_LAYER payload (22 bytes, little-endian).

    ``m, k, n`` u16, ``out_mode`` u8 (``sw.numerics.OutMode``), ``mult`` u16, ``shift`` u8
    (0..63), ``zp`` i8, ``relu`` u8 (0/1) -- the scalar requantization, used when ``chan`` is 0
    (bias 0) -- then ``fmt`` u8 (``sw.numerics.WeightFormat``), ``group`` u8 (group size along
    K: 0 = none, 32, 64 or 128) and ``chan`` u8 (1: requantize per output channel with the
    CHAN table's bias, multiplier and shift). The device answers BAD_PARAM for an
    out-of-range field, a format or group size the bitstream does not support (see
    IDENTIFY); the shape is checked by the core at RUN (BAD_SHAPE). Last, the u16 bases
    ``w_base`` (bytes of each W column bank), ``chan_base`` (CHAN entries) and ``group_base``
    (GROUP entries) where the layer's weights and tables start: a program's layers keep
    their weights resident side by side. A layer whose weights or tables would end past
    their buffer is BAD_SHAPE.

    Last (protocol 5), ``sparse`` u8 picks the engine: 0 the systolic array, ``1 + p`` the
    sparse DSP engine with N:M pattern ``sw.numerics.NMPattern(p)``. A DSP layer reads its
    activations from A in the DSP layout (``sw.layout.dsp_act_image``) and its weights from
    DSPW (``sw.layout.dsp_weight_image``), with ``w_base`` counting DSPW records; the
    epilogue (CHAN table or scalar requantization) and OUT are the array's. The device
    answers BAD_PARAM for a DSP layer without a DSP engine, with a pattern it does not run,
    with groups, with POW2 weights, or with INT8 weights on a packed engine.
    """

    m: int
    k: int
    n: int
    out_mode: int = 0
    mult: int = 0
    shift: int = 0
    zp: int = 0
    relu: int = 0
    fmt: int = 0
    group: int = 0
    chan: int = 0
    w_base: int = 0
    chan_base: int = 0
    group_base: int = 0
    sparse: int = 0

    FORMAT = "<HHHBHBbBBBBHHHB"
    SIZE = struct.calcsize(FORMAT)

    def __post_init__(self):
        for name, bits in (("m", 16), ("k", 16), ("n", 16), ("out_mode", 8), ("mult", 16),
                           ("shift", 8), ("relu", 8), ("fmt", 8), ("group", 8), ("chan", 8),
                           ("w_base", 16), ("chan_base", 16), ("group_base", 16),
                           ("sparse", 8)):
            v = getattr(self, name)
            _check_uint(f"LayerDescriptor.{name}", int(v) if isinstance(v, enum.Enum) else v, bits)
        if isinstance(self.zp, bool) or not isinstance(self.zp, int) or not -128 <= self.zp <= 127:
            raise ValueError(f"LayerDescriptor.zp must be an integer in [-128, 127], not {self.zp!r}")

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.m, self.k, self.n, int(self.out_mode), self.mult,
                           self.shift, self.zp, int(self.relu), int(self.fmt), self.group,
                           int(self.chan), self.w_base, self.chan_base, self.group_base,
                           int(self.sparse))

    @classmethod
    def unpack(cls, data: bytes) -> "LayerDescriptor":
        if len(data) != cls.SIZE:
            raise ProtocolError(f"LayerDescriptor needs {cls.SIZE} bytes, got {len(data)}")
        return cls(*struct.unpack(cls.FORMAT, data))

    @property
    def pattern(self):
        """The ``sw.numerics.NMPattern`` of a DSP layer; None for an array layer (``sparse``
        0). ValueError for a ``sparse`` value that names no pattern this host knows."""
        if not self.sparse:
            return None
        from .numerics import NMPattern
        try:
            return NMPattern(self.sparse - 1)
        except ValueError:
            raise ValueError(f"LayerDescriptor.sparse = {self.sparse} names no N:M pattern "
                             f"(1 + NMPattern: 1..{len(NMPattern)})") from None

    @classmethod
    def from_requant(cls, m: int, k: int, n: int, out_mode, requant=None, *, fmt=0,
                     group: int = 0, w_base: int = 0, chan_base: int = 0,
                     group_base: int = 0, sparse=None) -> "LayerDescriptor":
        """Build from a ``sw.numerics.Requant`` (scalar), a ``ChannelRequant`` (per-channel
        tables: ``chan = 1``, zero point and ReLU from it) or None (raw output).

        ``sparse``: None for the systolic array, or a ``sw.numerics.NMPattern`` for the
        sparse DSP engine (the descriptor's ``sparse`` byte becomes ``1 + pattern``; then
        ``w_base`` counts DSPW records). TypeError for anything else (a plain integer would
        be ambiguous between the byte and the pattern number).
        """
        from .numerics import NMPattern
        if sparse is None:
            code = 0
        elif isinstance(sparse, NMPattern):
            code = 1 + int(sparse)
        else:
            raise TypeError(f"sparse must be None (the systolic array) or a "
                            f"sw.numerics.NMPattern (the DSP engine), not {sparse!r}")
        bases = dict(w_base=w_base, chan_base=chan_base, group_base=group_base, sparse=code)
        if requant is None:
            return cls(m, k, n, int(out_mode), fmt=int(fmt), group=group, **bases)
        if hasattr(requant, "channels"):
            return cls(m, k, n, int(out_mode), 0, 0, int(requant.zero_point),
                       int(bool(requant.relu)), int(fmt), group, 1, **bases)
        return cls(m, k, n, int(out_mode), int(requant.multiplier), int(requant.shift),
                   int(requant.zero_point), int(bool(requant.relu)), int(fmt), group, 0, **bases)


@dataclass(frozen=True)
class Status:
    """STATUS reply data (8 bytes): flags u8 (bit0 busy, bit1 loaded), last_error u8, then
    u16 LE counters since power-up (they wrap): ``frame_errors`` (UART bytes with a low stop
    bit), ``overruns`` (UART bytes lost because the receive FIFO was full) and
    ``link_errors`` (frames answered BAD_CRC or TIMEOUT, or refused for an impossible
    LENGTH: damage on the line, not malformed requests)."""

    busy: bool
    loaded: bool
    last_error: int
    frame_errors: int = 0
    overruns: int = 0
    link_errors: int = 0

    FORMAT = "<BBHHH"
    SIZE = struct.calcsize(FORMAT)

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, int(self.busy) | int(self.loaded) << 1,
                           int(self.last_error), self.frame_errors, self.overruns,
                           self.link_errors)

    @classmethod
    def unpack(cls, data: bytes) -> "Status":
        if len(data) != cls.SIZE:
            raise ProtocolError(f"Status needs {cls.SIZE} bytes, got {len(data)}")
        flags, err, fe, ov, le = struct.unpack(cls.FORMAT, data)
        return cls(bool(flags & 1), bool(flags & 2),
                   ErrorCode(err) if err in ErrorCode._value2member_map_ else err, fe, ov, le)


@dataclass(frozen=True)
class Counters:
    """COUNTERS reply data: five u48 LE (30 bytes): cycles from start to done, cycles feeding
    the array, stall cycles, MACs on real operands, and the stall cycles group ends cost
    inside a tile (groups shorter than the drain period)."""

    cycles: int
    busy: int
    stall: int
    macs: int
    dq_stall: int = 0

    SIZE = 30

    def pack(self) -> bytes:
        return b"".join(v.to_bytes(6, "little") for v in
                        (self.cycles, self.busy, self.stall, self.macs, self.dq_stall))

    @classmethod
    def unpack(cls, data: bytes) -> "Counters":
        if len(data) != cls.SIZE:
            raise ProtocolError(f"Counters needs {cls.SIZE} bytes, got {len(data)}")
        return cls(*(int.from_bytes(data[i:i + 6], "little") for i in range(0, cls.SIZE, 6)))


@dataclass(frozen=True)
class ProgramLayer:
    """One layer of a program: a :data:`PROGRAM_RECORD`-byte record of the PROG buffer.

    Layout (little-endian): the :class:`LayerDescriptor` (22 bytes: the core's part, used by
    GEMM layers; with ``sparse = 1 + pattern`` the layer runs on the sparse DSP engine: the
    gather writes A in the DSP layout of ``sw.layout.dsp_act_image`` and ``w_base`` counts
    DSPW records), ``kind`` u8 (:class:`LayerKind`), ``stride`` u8, ``pad``
    u8, ``pad_value`` i8, one reserved byte, ``h`` u16, ``w`` u16, ``in_base`` u16,
    ``out_base`` u16, the :data:`GATHER_LOOPS` loop counts ``n`` u16 and strides ``s`` u16
    (59 bytes so far), zeros to the end.

    The ACT address generator walks six nested loops ``i0`` (outermost) .. ``i5`` with
    ``0 <= ij < n[j]`` and reads ``ACT[(in_base + sum_j ij * s[j]) mod 2**16]``. An element
    lies in the padding when ``iy = i1 * stride + i3 - pad`` is outside ``[0, h)`` or
    ``ix = i2 * stride + i4 - pad`` outside ``[0, w)``; it is then ``pad_value`` instead.

    * GEMM: loops 0..2 count the rows ``m`` of A, loops 3..5 its columns ``k`` (both
      row-major); the element goes to ``A[m, k]`` (``n0 n1 n2 = M``, ``n3 n4 n5 = K``). The
      core then runs ``desc``; its INT8 result ``OUT[m, n]`` is written to
      ``ACT[out_base + m * N + n]``. conv2d (NHWC, im2col order ``k = (ky * kw + kx) * C + c``),
      linear layers and global average pooling are all this kind.
    * MAXPOOL: the maximum over each run of the two innermost loops (``n4 * n5`` elements) is
      written to ``ACT[out_base + t]``, ``t = 0, 1, ...``.
    """

    desc: LayerDescriptor
    kind: int = LayerKind.GEMM
    stride: int = 0
    pad: int = 0
    pad_value: int = 0
    h: int = 1
    w: int = 1
    in_base: int = 0
    out_base: int = 0
    n: tuple = (1, 1, 1, 1, 1, 1)
    s: tuple = (0, 0, 0, 0, 0, 0)

    _TAIL = "<BBBbBHHHH6H6H"

    def __post_init__(self):
        if not isinstance(self.desc, LayerDescriptor):
            raise TypeError(f"ProgramLayer.desc must be a LayerDescriptor, not {self.desc!r}")
        _check_uint("ProgramLayer.kind", int(self.kind), 8)
        for name in ("stride", "pad"):
            _check_uint(f"ProgramLayer.{name}", getattr(self, name), 8)
        for name in ("h", "w", "in_base", "out_base"):
            _check_uint(f"ProgramLayer.{name}", getattr(self, name), 16)
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, int) or \
                not -128 <= self.pad_value <= 127:
            raise ValueError(f"ProgramLayer.pad_value must be in [-128, 127], not {self.pad_value!r}")
        for name in ("n", "s"):
            v = tuple(getattr(self, name))
            if len(v) != GATHER_LOOPS:
                raise ValueError(f"ProgramLayer.{name} needs {GATHER_LOOPS} entries, not {len(v)}")
            for x in v:
                _check_uint(f"ProgramLayer.{name}[]", int(x), 16)
            object.__setattr__(self, name, tuple(int(x) for x in v))
        if any(x == 0 for x in self.n):
            raise ValueError(f"ProgramLayer.n must be >= 1 in every loop, not {self.n}")

    def pack(self) -> bytes:
        body = self.desc.pack() + struct.pack(
            self._TAIL, int(self.kind), self.stride, self.pad, self.pad_value, 0, self.h,
            self.w, self.in_base, self.out_base, *self.n, *self.s)
        assert len(body) <= PROGRAM_RECORD
        return body + bytes(PROGRAM_RECORD - len(body))

    @classmethod
    def unpack(cls, data: bytes) -> "ProgramLayer":
        if len(data) != PROGRAM_RECORD:
            raise ProtocolError(f"ProgramLayer needs {PROGRAM_RECORD} bytes, got {len(data)}")
        desc = LayerDescriptor.unpack(data[:LayerDescriptor.SIZE])
        f = struct.unpack_from(cls._TAIL, data, LayerDescriptor.SIZE)
        return cls(desc, f[0], f[1], f[2], f[3], f[5], f[6], f[7], f[8], tuple(f[9:15]),
                   tuple(f[15:21]))


# the LOAD_LAYER body is the descriptor, and a PROG record holds it and the layer's tail
assert LAYER_PAYLOAD == LayerDescriptor.SIZE
assert LayerDescriptor.SIZE + struct.calcsize(ProgramLayer._TAIL) <= PROGRAM_RECORD


@dataclass(frozen=True)
class LayerCounters:
    """One :data:`LCNT_RECORD`-byte record of the LCNT buffer, written when a program layer
    ends: ``status`` u8 (:class:`ErrorCode`; the first record that is not OK names the layer
    that stopped the program), ``kind`` u8, two reserved bytes, then u48 LE: ``cycles`` of
    the whole layer (fetch, gather, core, scatter), and the core's ``core_cycles``,
    ``busy`` (cycles feeding the array) and ``macs`` (0 for MAXPOOL)."""

    status: int
    kind: int
    cycles: int
    core_cycles: int
    busy: int
    macs: int

    def pack(self) -> bytes:
        body = bytes([int(self.status), int(self.kind), 0, 0]) + b"".join(
            v.to_bytes(6, "little") for v in (self.cycles, self.core_cycles, self.busy, self.macs))
        return body + bytes(LCNT_RECORD - len(body))

    @classmethod
    def unpack(cls, data: bytes) -> "LayerCounters":
        if len(data) != LCNT_RECORD:
            raise ProtocolError(f"LayerCounters needs {LCNT_RECORD} bytes, got {len(data)}")
        st = data[0]
        vals = [int.from_bytes(data[i:i + 6], "little") for i in range(4, 28, 6)]
        return cls(ErrorCode(st) if st in ErrorCode._value2member_map_ else st, data[1], *vals)


# -- request builders ------------------------------------------------------------------------
# Each takes the sequence tag as ``seq`` (the driver numbers its requests 1..255).

def identify(*, seq: int = 0) -> bytes:
    return pack_frame(Opcode.IDENTIFY, seq=seq)


def write(buffer, address: int, data: bytes, *, seq: int = 0) -> bytes:
    """WRITE request; ``1 <= len(data) <= MAX_DATA``."""
    data = bytes(data)
    if not 1 <= len(data) <= MAX_DATA:
        raise ValueError(f"WRITE carries 1..{MAX_DATA} bytes, not {len(data)}")
    _check_uint("address", address, 32)
    return pack_frame(Opcode.WRITE, struct.pack("<BI", int(Buffer(buffer)), address) + data,
                      seq=seq)


def read(buffer, address: int, count: int, *, seq: int = 0) -> bytes:
    """READ request for ``1 <= count <= MAX_DATA`` bytes."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DATA:
        raise ValueError(f"READ count must be in [1, {MAX_DATA}], not {count!r}")
    _check_uint("address", address, 32)
    return pack_frame(Opcode.READ, struct.pack("<BIH", int(Buffer(buffer)), address, count),
                      seq=seq)


def load_layer(desc: LayerDescriptor, *, seq: int = 0) -> bytes:
    return pack_frame(Opcode.LOAD_LAYER, desc.pack(), seq=seq)


def run(*, wait: bool = True, seq: int = 0) -> bytes:
    return pack_frame(Opcode.RUN, b"" if wait else bytes([RUN_NOWAIT]), seq=seq)


def run_program(count: int, *, wait: bool = True, seq: int = 0) -> bytes:
    """RUN_PROGRAM request: run layers ``0 .. count - 1`` of the PROG buffer."""
    _check_uint("count", count, 8)
    return pack_frame(Opcode.RUN_PROGRAM, bytes([count]) + (b"" if wait else bytes([RUN_NOWAIT])),
                      seq=seq)


def status(*, seq: int = 0) -> bytes:
    return pack_frame(Opcode.STATUS, seq=seq)


def counters(*, seq: int = 0) -> bytes:
    return pack_frame(Opcode.COUNTERS, seq=seq)


def reset(*, seq: int = 0) -> bytes:
    return pack_frame(Opcode.RESET, seq=seq)


def parse_reply(frame: Frame, opcode: int) -> bytes:
    """Check that ``frame`` answers ``opcode`` with OK; return its data.

    Raises :class:`DeviceError` for an error status, :class:`ProtocolError` for a frame that
    is not a reply to ``opcode``.
    """
    if not frame.is_reply or frame.request != int(opcode):
        raise ProtocolError(f"expected a reply to {Opcode(opcode).name}, got opcode "
                            f"0x{frame.opcode:02x}")
    if frame.bare:
        raise ProtocolError(f"reply to {Opcode(opcode).name} has no status byte: the device "
                            f"speaks protocol version 1, this host version {PROTOCOL_VERSION}")
    if frame.status != ErrorCode.OK:
        raise DeviceError(frame.status, int(opcode))
    return frame.data


def efficiency(write_bytes: int, read_bytes: int, *, commands: int = 0) -> float:
    """Payload / wire bytes (both directions) to WRITE ``write_bytes`` and READ ``read_bytes``
    in MAX_DATA chunks, plus ``commands`` small request/reply pairs (LOAD_LAYER, RUN, ...).

    Each WRITE chunk costs a request of FRAME_OVERHEAD + WRITE_HEADER + data and a reply of
    FRAME_OVERHEAD + 1 bytes; each READ chunk a request of FRAME_OVERHEAD + READ_PAYLOAD and
    a reply of FRAME_OVERHEAD + 1 + data.
    """
    def chunks(n):
        full, rest = divmod(n, MAX_DATA)
        return [MAX_DATA] * full + ([rest] if rest else [])

    wire = 0
    for c in chunks(write_bytes):
        wire += FRAME_OVERHEAD + WRITE_HEADER + c + FRAME_OVERHEAD + 1
    for c in chunks(read_bytes):
        wire += FRAME_OVERHEAD + READ_PAYLOAD + FRAME_OVERHEAD + 1 + c
    wire += commands * (FRAME_OVERHEAD + LAYER_PAYLOAD + FRAME_OVERHEAD + 1)
    payload = write_bytes + read_bytes
    return payload / wire if wire else 0.0
