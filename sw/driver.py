"""Host driver for the mpGEMM accelerator (board over UART, or the Verilator model).

:class:`Accelerator` speaks :mod:`sw.protocol` over any :class:`sw.transport.Transport`:
it identifies the device (and refuses one that does not match), validates operands before
anything is sent, tiles GEMMs of any size onto the on-chip buffers, and returns results that
are bit-identical to :func:`sw.numerics.mpgemm`. NumPy only; never imports Amaranth.

Example::

    from sw.driver import Accelerator
    from sw.transport import SerialTransport

    with Accelerator(SerialTransport("/dev/ttyUSB0"), expect={"rows": 4, "cols": 4}) as acc:
        y = acc.gemm(a, w)                        # int32, == sw.numerics.mpgemm(a, w)
        print(acc.last.efficiency, acc.last.utilization(acc.info.rows, acc.info.cols))
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from . import layout
from . import protocol as P
from .numerics import OutMode, Requant, check_int, int_range, requantize
from .protocol import Buffer, DeviceError, DeviceInfo, ErrorCode, LayerDescriptor, Opcode
from .transport import ReplyDamaged, Transport, TransportError, TransportTimeout

__all__ = ["Accelerator", "DeviceMismatch", "DeviceTimeout", "GemmPlan", "Stats",
           "DeviceError", "TransportError"]

_U16 = 0xFFFF
log = logging.getLogger(__name__)


class DeviceMismatch(Exception):
    """IDENTIFY does not match what the driver (or the caller's ``expect``) requires."""


class DeviceTimeout(TransportTimeout, TimeoutError):
    """The device did not answer a request in time (after the retries)."""


@dataclass
class Stats:
    """Bookkeeping of one :meth:`Accelerator.gemm` call (``acc.last``) or of the session
    (``acc.total``).

    ``wire_*`` count whole frames (both directions; bytes dropped as garbage are not
    counted), ``payload_*`` only matrix bytes (WRITE data sent, READ data received).
    ``cycles``/``busy``/``stall``/``macs`` sum the device counters read after each RUN.
    """

    requests: int = 0
    wire_sent: int = 0
    wire_received: int = 0
    payload_sent: int = 0
    payload_received: int = 0
    runs: int = 0
    cycles: int = 0
    busy: int = 0
    stall: int = 0
    macs: int = 0
    seconds: float = 0.0
    retries: int = 0

    @property
    def wire_bytes(self) -> int:
        return self.wire_sent + self.wire_received

    @property
    def payload_bytes(self) -> int:
        return self.payload_sent + self.payload_received

    @property
    def efficiency(self) -> float:
        """Payload bytes / wire bytes (both directions); 0 when nothing was sent."""
        return self.payload_bytes / self.wire_bytes if self.wire_bytes else 0.0

    def utilization(self, rows: int, cols: int) -> float:
        """MACs done / (array PEs x cycles of the runs): how busy the array was."""
        return self.macs / (self.cycles * rows * cols) if self.cycles else 0.0

    def add(self, other: "Stats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class GemmPlan:
    """How :meth:`Accelerator.gemm` maps an ``M x K x N`` GEMM onto the device.

    The GEMM is cut into ``k_chunks`` chunks of at most ``kc`` along K, blocks of at most
    ``mb`` rows of A and ``nb`` columns of W; each (K chunk, N block, M block) is one RUN.
    ``mode`` is the device's output mode; ``host_requant`` is True when the requantization
    runs on the host (K split, or the device lacks INT8 output). ``m_outer`` says which
    operand stays resident: with N blocks outer (False) each W block is sent once and A
    blocks are re-sent per N block; with M blocks outer (True) the other way round.
    """

    m: int
    k: int
    n: int
    mb: int
    kc: int
    nb: int
    mode: OutMode
    host_requant: bool
    m_outer: bool = False

    @property
    def k_chunks(self) -> int:
        return -(-self.k // self.kc)

    @property
    def m_blocks(self) -> int:
        return -(-self.m // self.mb)

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.nb)

    @property
    def runs(self) -> int:
        return self.k_chunks * self.m_blocks * self.n_blocks


_EXPECT_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceInfo))


class Accelerator:
    """The mpGEMM device behind ``transport``.

    Opening sends IDENTIFY, checks the protocol version and, when ``expect`` is given, the
    configuration: a mismatched bitstream is refused with :class:`DeviceMismatch` listing
    every differing field.

    Parameters
    ----------
    transport : sw.transport.Transport
        Owned by the accelerator from now on (closed by :meth:`close`).
    expect : dict or DeviceInfo, optional
        Required IDENTIFY fields, e.g. ``{"rows": 4, "cols": 4, "config_hash": 0x1234abcd}``
        (any :class:`~sw.protocol.DeviceInfo` field name), or a whole ``DeviceInfo``.
    timeout : float, optional
        Seconds to wait for the reply to the first IDENTIFY (default: the transport's
        ``timeout``). Later timeouts follow from what IDENTIFY reports: the wire time of
        request and reply, the device's inter-byte timeout and, for RUN, the estimated run
        time (all converted to seconds by the transport).
    retries : int
        How often a request is sent again after a reply timeout or a reply saying the frame
        was damaged (BAD_CRC, BAD_LENGTH, TIMEOUT). Before a retry the driver waits until
        the device's inter-byte timeout has passed since its last byte (so the device is
        hunting again) and drains the input (see docs/protocol.md). A BUSY reply is not a
        failure: the driver polls STATUS until the core is idle and sends the request again.
    counters_per_run : bool
        Read COUNTERS after each RUN (one small exchange) so ``last``/``total`` report
        device cycles, MACs and utilization.

    Attributes
    ----------
    info : DeviceInfo
    last : Stats
        Bookkeeping of the latest :meth:`gemm`.
    total : Stats
        Bookkeeping since opening.
    """

    def __init__(self, transport: Transport, *, expect=None, timeout: float | None = None,
                 retries: int = 3, counters_per_run: bool = True):
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a sw.transport.Transport, not {transport!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        self.transport = transport
        self.timeout = float(timeout if timeout is not None else transport.timeout)
        self.retries = retries
        self.counters_per_run = bool(counters_per_run)
        self.info: DeviceInfo | None = None
        self._seq = 0
        self.last = Stats()
        self.total = Stats()
        self._stats = [self.total]
        self._resident: dict[Buffer, bytes] = {}   # what the A / W buffers hold
        self._layer: LayerDescriptor | None = None
        self._closed = False
        self._expect = self._normalize_expect(expect)
        try:
            self.info = self.identify()
        except BaseException:
            self.close()
            raise

    # -- session ---------------------------------------------------------------------------

    @staticmethod
    def _normalize_expect(expect) -> dict:
        if expect is None:
            return {}
        if isinstance(expect, DeviceInfo):
            return dataclasses.asdict(expect)
        if not isinstance(expect, dict):
            raise TypeError(f"expect must be a dict or a DeviceInfo, not {expect!r}")
        unknown = sorted(set(expect) - set(_EXPECT_FIELDS))
        if unknown:
            raise ValueError(f"unknown expect field(s) {unknown}; DeviceInfo fields are "
                             f"{list(_EXPECT_FIELDS)}")
        return dict(expect)

    def identify(self) -> DeviceInfo:
        """Send IDENTIFY, check the reply (protocol version, ``expect``) and return it."""
        data = self._call(P.identify, Opcode.IDENTIFY)
        if data and data[0] != P.PROTOCOL_VERSION:
            raise DeviceMismatch(f"device speaks protocol version {data[0]}, this driver "
                                 f"version {P.PROTOCOL_VERSION}: rebuild the bitstream or "
                                 f"update the host software")
        try:
            info = DeviceInfo.unpack(data)
        except (P.ProtocolError, ValueError) as e:
            raise DeviceMismatch(f"IDENTIFY reply is not a DeviceInfo ({e}): is this an "
                                 f"mpGEMM device speaking protocol {P.PROTOCOL_VERSION}?") from e
        if info.version != P.PROTOCOL_VERSION:
            raise DeviceMismatch(f"device speaks protocol version {info.version}, this driver "
                                 f"version {P.PROTOCOL_VERSION}: rebuild the bitstream or "
                                 f"update the host software")
        bad = [f"{name}: expected {self._fmt(name, want)}, device has "
               f"{self._fmt(name, getattr(info, name))}"
               for name, want in self._expect.items() if getattr(info, name) != want]
        if bad:
            raise DeviceMismatch("device does not match the expected configuration ("
                                 + "; ".join(bad) + "): wrong bitstream?")
        problems = [f"{n}={getattr(info, n)}" for n in ("rows", "cols", "a_bytes", "w_bytes",
                                                        "out_bytes", "out_words", "max_k",
                                                        "max_data", "timeout_cycles",
                                                        "watchdog_cycles", "tile_period")
                    if getattr(info, n) < 1]
        if info.a_bytes < info.rows or info.w_bytes < info.cols:
            problems.append("A/W buffers smaller than one array row/column")
        if not info.out_modes & 3:
            problems.append(f"out_modes=0x{info.out_modes:02x} (neither RAW32 nor INT8)")
        if problems:
            raise DeviceMismatch(f"device reports an unusable configuration: "
                                 f"{', '.join(problems)}")
        self.info = info
        return info

    @staticmethod
    def _fmt(name, value):
        return f"0x{value:08x}" if name == "config_hash" and isinstance(value, int) else repr(value)

    def close(self) -> None:
        """Close the transport (idempotent)."""
        if not self._closed:
            self._closed = True
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        info = getattr(self, "info", None)
        shape = f"{info.rows}x{info.cols}" if info else "?"
        return f"<Accelerator {shape} on {self.transport!r}>"

    # -- one request -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        # tags 1..255; 0 is what the device answers when a frame's tag never arrived
        self._seq = self._seq % 255 + 1
        return self._seq

    def _device_seconds(self, cycles: int) -> float:
        info = self.info
        return self.transport.seconds(cycles, info.clock_hz if info else 0)

    @property
    def _link_timeout(self) -> float:
        """Wall time after which the device drops a frame it stopped receiving."""
        if self.info is None:
            return 0.1
        return self._device_seconds(self.info.timeout_cycles)

    def _reply_timeout(self, sent: int, expect: int, cycles: int = 0) -> float:
        """Reply timeout for a request of ``sent`` bytes answered by ``expect`` bytes after
        ``cycles`` device cycles of work, plus a quarter of the device's inter-byte timeout
        as margin. (A request damaged so that the device waits for more bytes is answered
        TIMEOUT only after the full inter-byte timeout; :meth:`_resync` waits for that.)"""
        if self.info is None:
            return self.timeout
        return (self.transport.wire_seconds(sent + expect) + self._device_seconds(cycles + 64)
                + 0.25 * self._link_timeout)

    def _call(self, build, opcode: Opcode, *, expect: int = 0, cycles: int = 0,
              context: str = "") -> bytes:
        """One request/reply with retries; returns the reply data or raises.

        ``build(seq=...)`` makes the request frame (a ``sw.protocol`` builder); every
        attempt gets a new tag, so a late reply to an earlier attempt is never taken for
        this one's. ``expect`` is the reply's data size, ``cycles`` the device work.
        """
        if self._closed:
            raise TransportError("accelerator is closed")
        what = opcode.name + (f" ({context})" if context else "")
        failures = 0
        while True:
            seq = self._next_seq()
            request = build(seq=seq)
            timeout = self._reply_timeout(len(request), P.FRAME_OVERHEAD + 1 + expect, cycles)
            sent_at = time.monotonic()
            in_sync = False          # the device is known to be hunting again
            try:
                frame = self.transport.exchange(request, seq=seq, timeout=timeout)
            except TransportTimeout as e:
                self._count(len(request), 0)
                why = f"no reply within {timeout:.3g} s [{e}]"
                # a damaged reply: the device has finished this request and hunts again
                in_sync = isinstance(e, ReplyDamaged)
            else:
                self._count(len(request), P.FRAME_OVERHEAD + len(frame.payload))
                if frame.is_v1_reply:
                    raise DeviceMismatch(
                        f"the device answered {what} in protocol version 1 (a reply without "
                        f"a status byte): its bitstream predates this driver (protocol "
                        f"{P.PROTOCOL_VERSION}); rebuild and load it (python -m hw.build "
                        f"--target ulx3s --program)")
                if frame.seq == seq and frame.request == int(opcode):
                    if frame.status == ErrorCode.BUSY:
                        self._wait_idle(what)
                        continue
                    # BAD_LENGTH with this request's tag passed the CRC: a malformed request
                    if frame.status not in (ErrorCode.BAD_CRC, ErrorCode.TIMEOUT):
                        try:
                            return P.parse_reply(frame, opcode)
                        except DeviceError as e:
                            self._forget()
                            if context:
                                e.args = (f"{e.args[0]} ({context})",)
                            raise
                name = (ErrorCode(frame.status).name
                        if frame.payload and frame.status in ErrorCode._value2member_map_
                        else f"status {frame.payload[:1].hex()}")
                why = (f"reply {name} to opcode 0x{frame.request:02x} tag {frame.seq} "
                       f"(sent tag {seq})")
                # BAD_CRC or TIMEOUT for this very request: the device took this frame as
                # one frame and is hunting again (bytes it did not take, after a LENGTH
                # made shorter, are a rare exception that costs one more retry)
                in_sync = frame.seq == seq
            # the request (or its reply) was damaged: the device did all of it (a reply was
            # lost) or none of it (WRITE data is staged and committed only after the CRC),
            # so sending it again is safe; what the buffers hold is no longer vouched for
            # until a request succeeds, so forget the resident operands and the layer
            self._forget()
            failures += 1
            for s in self._stats:
                s.retries += 1
            if failures > self.retries:
                raise DeviceTimeout(
                    f"{what} failed {failures} times, last: {why}: is the device powered, "
                    f"programmed with the mpGEMM bitstream, and the baud rate right?")
            log.info("%s: %s; resynchronising and sending it again", what, why)
            self._resync(None if in_sync else
                         sent_at + self.transport.wire_seconds(len(request)))

    def _resync(self, last_byte_at: float | None) -> None:
        """Throw away what arrives until the line is quiet. With ``last_byte_at`` (the device
        may still be inside a frame: no reply, or a reply to something else), first wait
        until it has dropped that frame: its inter-byte timeout after our last byte, plus
        the TIMEOUT reply that follows."""
        quiet = min(0.02, self._link_timeout, self.transport.wire_seconds(16))
        until = None
        if last_byte_at is not None:
            until = last_byte_at + 1.1 * self._link_timeout
        self.transport.drain(max(quiet, 0.002), until=until)

    def _wait_idle(self, what: str) -> None:
        """Poll STATUS until the core is idle (a GEMM started earlier is still running)."""
        info = self.info
        limit = self._device_seconds(info.watchdog_cycles if info else 1 << 24) + 1.0
        deadline = time.monotonic() + limit
        while True:
            st = P.Status.unpack(self._call(P.status, Opcode.STATUS, expect=P.Status.SIZE))
            if not st.busy:
                return
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"{what}: the device stayed busy for {limit:.3g} s, longer "
                                    f"than its watchdog allows: send RESET (acc.reset())")
            time.sleep(0.001)

    def _forget(self):
        """After an error the buffers/layer may be in any state: send everything again."""
        self._resident.clear()
        self._layer = None

    def _count(self, sent: int, received: int, *, payload_sent: int = 0,
               payload_received: int = 0):
        for s in self._stats:
            s.requests += 1
            s.wire_sent += sent
            s.wire_received += received
            s.payload_sent += payload_sent
            s.payload_received += payload_received

    # -- low-level commands ----------------------------------------------------------------

    @property
    def _chunk(self) -> int:
        return max(1, min(P.MAX_DATA, self.info.max_data))

    def write_buffer(self, buffer, address: int, data: bytes) -> None:
        """WRITE ``data`` to ``buffer`` at ``address`` in MAX_DATA chunks."""
        buffer, data = Buffer(buffer), bytes(data)
        self._check_range(buffer, address, len(data))
        self._resident.pop(buffer, None)
        for off in range(0, len(data), self._chunk):
            part = data[off:off + self._chunk]
            self._call(lambda seq, a=address + off, d=part: P.write(buffer, a, d, seq=seq),
                       Opcode.WRITE, cycles=len(part),
                       context=f"{buffer.name} @{address + off}+{len(part)}")
            for s in self._stats:
                s.payload_sent += len(part)

    def read_buffer(self, buffer, address: int, count: int) -> bytes:
        """READ ``count`` bytes of ``buffer`` from ``address`` in MAX_DATA chunks."""
        buffer = Buffer(buffer)
        self._check_range(buffer, address, count)
        out = bytearray()
        for off in range(0, count, self._chunk):
            n = min(self._chunk, count - off)
            data = self._call(lambda seq, a=address + off, n=n: P.read(buffer, a, n, seq=seq),
                              Opcode.READ, expect=n, cycles=8 * n,
                              context=f"{buffer.name} @{address + off}+{n}")
            if len(data) != n:
                self._forget()
                raise P.ProtocolError(f"READ of {n} bytes returned {len(data)}")
            out += data
            for s in self._stats:
                s.payload_received += n
        return bytes(out)

    def _check_range(self, buffer: Buffer, address: int, count: int):
        size = self.info.buffer_size(buffer)
        if isinstance(address, bool) or not isinstance(address, int) or address < 0:
            raise ValueError(f"address must be a non-negative integer, not {address!r}")
        if count < 1 or address + count > size:
            raise ValueError(f"{buffer.name} access of {count} bytes at {address} outside the "
                             f"buffer ({size} bytes)")

    def load_layer(self, desc: LayerDescriptor) -> None:
        """LOAD_LAYER (skipped when this descriptor is already loaded)."""
        if desc == self._layer:
            return
        self._call(lambda seq: P.load_layer(desc, seq=seq), Opcode.LOAD_LAYER,
                   context=f"M={desc.m} K={desc.k} N={desc.n}")
        self._layer = desc

    def run(self) -> P.Counters | None:
        """RUN the loaded layer, wait for the result; returns the counters when
        ``counters_per_run`` (else None)."""
        d = self._layer
        ctx = f"M={d.m} K={d.k} N={d.n}" if d else ""
        cycles = self._estimate_cycles(d) if d else self.info.watchdog_cycles
        self._call(P.run, Opcode.RUN, cycles=cycles, context=ctx)
        for s in self._stats:
            s.runs += 1
        if not self.counters_per_run:
            return None
        c = self.counters()
        for s in self._stats:
            s.cycles += c.cycles
            s.busy += c.busy
            s.stall += c.stall
            s.macs += c.macs
        return c

    def _estimate_cycles(self, d: LayerDescriptor) -> int:
        """Busy cycles of a GEMM (an upper bound: each tile takes ``max(K, tile_period)``
        cycles, plus the shape check and the last tile's drain)."""
        info = self.info
        tiles = -(-d.m // info.rows) * -(-d.n // info.cols)
        return tiles * max(d.k, info.tile_period) + 2 * info.tile_period + 64

    def counters(self) -> P.Counters:
        """The device's counters of the latest RUN (cycles, busy, stall, MACs)."""
        return P.Counters.unpack(self._call(P.counters, Opcode.COUNTERS,
                                            expect=P.Counters.SIZE))

    def status(self) -> P.Status:
        """STATUS: busy / loaded flags, the last error and the link's error counters."""
        return P.Status.unpack(self._call(P.status, Opcode.STATUS, expect=P.Status.SIZE))

    def reset(self) -> None:
        """RESET the device: stops a running GEMM, unloads the layer, clears its last error."""
        self._call(P.reset, Opcode.RESET, cycles=self.info.tile_period * 2 if self.info else 0)
        self._layer = None

    # -- GEMM ------------------------------------------------------------------------------

    def plan(self, m: int, k: int, n: int, requant: Requant | None = None) -> GemmPlan:
        """The tiling :meth:`gemm` uses for an ``m x k x n`` GEMM on this device."""
        info = self.info
        for name, v in (("M", m), ("K", k), ("N", n)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        m, k, n = int(m), int(k), int(n)
        R, C = info.rows, info.cols
        raw, int8 = info.supports(OutMode.RAW32), info.supports(OutMode.INT8)
        kmax = min(info.max_k, info.a_bytes // R, info.w_bytes // C, _U16)
        if k <= kmax:
            kc = k
        else:
            chunks = -(-k // kmax)
            kc = -(-k // chunks)       # balanced chunks
        if requant is not None and kc == k and int8:
            mode, host_requant = OutMode.INT8, False
        else:
            mode, host_requant = OutMode.RAW32, requant is not None
            if not raw:
                why = f"K={k} > {kmax} is split" if kc < k else "requant=None"
                raise ValueError(f"this GEMM needs RAW32 output ({why}) but the device "
                                 f"supports only INT8 output; pass a Requant and keep "
                                 f"K <= {kmax}")
        esize = 4 if mode == OutMode.RAW32 else 1
        cap = info.out_bytes // esize
        cap = min(cap, info.out_words * (4 // esize))
        if cap < 1:
            raise DeviceMismatch(f"OUT buffer too small for one {mode.name} result")
        mt_max = info.a_bytes // (kc * R)
        nt_max = info.w_bytes // (kc * C)
        best = None
        for nt in range(1, min(nt_max, -(-n // C)) + 1):
            nb = min(n, nt * C, cap, _U16)
            mb = min(m, mt_max * R, cap // nb, _U16)
            if mb < 1:
                break
            nN, nM, nK = -(-n // nb), -(-m // mb), -(-k // kc)
            # wire bytes: the outer loop's operand once, the inner one once per outer block
            # (unless a single block stays resident), results, and a per-RUN cost for the
            # command round trips
            fixed = m * n * esize * nK + 200 * nN * nM * nK
            for m_outer, ops in ((False, k * n + m * k * (nN if nM > 1 else 1)),
                                 (True, m * k + k * n * (nM if nN > 1 else 1))):
                if best is None or fixed + ops < best[0]:
                    best = (fixed + ops, mb, nb, m_outer)
        if best is None:   # output buffer holds less than a row of one column tile
            best = (0, 1, min(n, cap, _U16), False)
        return GemmPlan(m, k, n, best[1], kc, best[2], mode, host_requant, best[3])

    def gemm(self, a, w, requant: Requant | None = None) -> np.ndarray:
        """``sw.numerics.mpgemm(a, w, requant)`` computed on the device, bit-exactly.

        Parameters
        ----------
        a : array_like, shape (M, K), integer dtype, values in [-128, 127]
        w : array_like, shape (K, N), integer dtype, values in [-128, 127]
        requant : sw.numerics.Requant, optional
            None returns the raw accumulators.

        Returns
        -------
        numpy.ndarray, shape (M, N)
            int32 when ``requant`` is None, else int8.

        Notes
        -----
        Everything is checked before a byte is sent (dtype: any integer dtype, floats are
        refused; values: INT8 range; shapes: 2-D, matching K, nothing empty). The GEMM is
        tiled onto the buffers (see :meth:`plan`): M and N are cut into blocks whose operands
        and result fit the A, W and OUT buffers. When K exceeds ``max_k`` or what one array
        row/column of the buffers holds, K is cut into chunks that run in RAW32 mode; the
        int32 partial sums are added on the host (exact in int64), and with ``requant``
        :func:`sw.numerics.requantize` is applied on the host. When K fits, the
        requantization runs on the device (INT8 output mode). Operand images already in
        a buffer (same bytes) are not sent again, so repeated calls with the same weights
        only move activations and results.

        Raises
        ------
        TypeError, ValueError
            Invalid operands (nothing was sent).
        sw.protocol.DeviceError
            The device answered with an error code (``.code``).
        DeviceTimeout
            No reply in time.
        """
        t0 = time.perf_counter()
        self.last = Stats()
        self._stats = [self.total, self.last]
        try:
            return self._gemm(a, w, requant)
        finally:
            dt = time.perf_counter() - t0
            self.last.seconds = dt
            self.total.seconds += dt
            self._stats = [self.total]

    @staticmethod
    def _operands(a, w, requant):
        if requant is not None and not isinstance(requant, Requant):
            raise TypeError(f"requant must be a sw.numerics.Requant or None, not {requant!r}")
        for name, x, dims in (("a", a, "(M, K)"), ("w", w, "(K, N)")):
            arr = np.asarray(x)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name} must be an integer array (INT8 values), got dtype "
                                f"{arr.dtype}; quantize it first (floats are never truncated)")
            if arr.ndim != 2:
                raise ValueError(f"{name} must be 2-D {dims}, got shape {arr.shape}")
            if 0 in arr.shape:
                raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
        a = check_int(a, 8, name="a")
        w = check_int(w, 8, name="w")
        if a.shape[1] != w.shape[0]:
            raise ValueError(f"inner dimensions differ: a is {a.shape} (M, K) but w is "
                             f"{w.shape} (K, N); need a.shape[1] == w.shape[0]")
        return a, w

    def _gemm(self, a, w, requant):
        a, w = self._operands(a, w, requant)
        M, K = a.shape
        N = w.shape[1]
        pl = self.plan(M, K, N, requant)
        R, C = self.info.rows, self.info.cols
        raw = pl.mode == OutMode.RAW32
        acc = np.zeros((M, N), dtype=np.int64) if raw else None
        out8 = None if raw else np.zeros((M, N), dtype=np.int8)
        m_blocks = [(m0, min(M, m0 + pl.mb)) for m0 in range(0, M, pl.mb)]
        n_blocks = [(n0, min(N, n0 + pl.nb)) for n0 in range(0, N, pl.nb)]
        if pl.m_outer:
            order = [(mm, nn) for mm in m_blocks for nn in n_blocks]
        else:
            order = [(mm, nn) for nn in n_blocks for mm in m_blocks]
        for k0 in range(0, K, pl.kc):
            k1 = min(K, k0 + pl.kc)
            for (m0, m1), (n0, n1) in order:
                # _put skips an image the buffer already holds (the outer operand)
                self._put(Buffer.W, layout.w_image(w[k0:k1, n0:n1], C))
                self._put(Buffer.A, layout.a_image(a[m0:m1, k0:k1], R))
                desc = LayerDescriptor.from_requant(
                    m1 - m0, k1 - k0, n1 - n0, pl.mode, None if raw else requant)
                self.load_layer(desc)
                self.run()
                data = self.read_buffer(Buffer.OUT, 0,
                                        layout.out_size(m1 - m0, n1 - n0, pl.mode))
                block = layout.decode_out(data, m1 - m0, n1 - n0, pl.mode)
                if raw:
                    acc[m0:m1, n0:n1] += block
                else:
                    out8[m0:m1, n0:n1] = block
        if not raw:
            return out8
        if requant is not None:
            return requantize(acc, requant)
        lo, hi = int_range(32)
        if acc.min() < lo or acc.max() > hi:
            raise ValueError("accumulators exceed int32 (K too large for raw output); "
                             "pass a Requant to get INT8 results")
        return acc.astype(np.int32)

    def _put(self, buffer: Buffer, image: bytes) -> None:
        """Write an operand image unless the buffer already holds exactly these bytes."""
        if self._resident.get(buffer) == image:
            return
        self.write_buffer(buffer, 0, image)
        self._resident[buffer] = image

    def linear(self, x, w, requant: Requant | None = None) -> np.ndarray:
        """A fully connected layer ``x @ w``: ``x`` is (batch, in) or (in,), ``w`` (in, out).

        Same checks, tiling and result as :meth:`gemm`; a 1-D ``x`` gives a 1-D result.
        """
        xa = np.asarray(x)
        if xa.ndim == 1:
            return self.gemm(xa[None, :], w, requant)[0]
        return self.gemm(xa, w, requant)
