"""sw.transport: SerialTransport on pyserial's loop:// fake and on a pty; clear open errors."""

import os
import threading
import time

import pytest

from sw import protocol as P
from sw.transport import SerialTransport, Transport, TransportError, TransportTimeout


def test_loop_write_read():
    with SerialTransport("loop://", baud=115200, timeout=0.5) as t:
        t.write(b"hello")
        assert t.read(5, 0.5) == b"hello"
        t0 = time.monotonic()
        assert t.read(3, 0.05) == b""
        assert time.monotonic() - t0 < 0.5


def test_exchange_skips_echo_and_noise():
    with SerialTransport("loop://", timeout=0.5) as t:
        reply = P.pack_reply(P.Opcode.READ, P.ErrorCode.OK, b"\x01\x02\x03")
        # the fake echoes the request back; noise and the reply are already queued
        t.write(b"\x00\x13noise" + reply)
        fr = t.exchange(P.read(P.Buffer.A, 0, 3))
        assert P.parse_reply(fr, P.Opcode.READ) == b"\x01\x02\x03"
        # device error codes surface as DeviceError
        t.drain(0.01)
        t.write(P.pack_reply(P.Opcode.RUN, P.ErrorCode.NOT_LOADED))
        with pytest.raises(P.DeviceError, match="NOT_LOADED"):
            P.parse_reply(t.exchange(P.run()), P.Opcode.RUN)


def test_exchange_timeout_and_partial_reply():
    with SerialTransport("loop://", timeout=0.5) as t:
        t0 = time.monotonic()
        with pytest.raises(TransportTimeout, match="no reply"):
            t.exchange(P.status(), timeout=0.1)
        assert time.monotonic() - t0 < 1.0
        t.drain(0.01)
        t.write(P.pack_reply(P.Opcode.STATUS, 0, b"\x00\x00")[:-2])     # truncated reply
        with pytest.raises(TransportTimeout, match="partial"):
            t.exchange(P.status(), timeout=0.1)


def test_drain():
    with SerialTransport("loop://") as t:
        t.write(b"stale bytes")
        assert t.drain(0.01) == len(b"stale bytes")
        assert t.read(1, 0.01) == b""


def test_missing_port():
    with pytest.raises(TransportError, match="does not exist"):
        SerialTransport("/dev/ttyDOES_NOT_EXIST_42")


def test_busy_port_pty():
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        with SerialTransport(name, baud=115200, timeout=0.5) as t:
            with pytest.raises(TransportError, match="busy"):
                SerialTransport(name, baud=115200)
            # bytes flow through the pty both ways
            t.write(b"ping")
            assert os.read(master, 4) == b"ping"
            reply = P.pack_reply(P.Opcode.IDENTIFY, 0, b"x")
            threading.Timer(0.05, os.write, (master, reply)).start()
            fr = t.exchange(P.identify(), timeout=1.0)
            assert fr.is_reply and fr.data == b"x"
    finally:
        os.close(master)
        os.close(slave)


def test_closed_and_bad_args():
    t = SerialTransport("loop://")
    t.close()
    t.close()
    with pytest.raises(TransportError, match="closed"):
        t.write(b"x")
    with pytest.raises(ValueError, match="baud"):
        SerialTransport("loop://", baud=0)
    with pytest.raises(ValueError, match="timeout"):
        SerialTransport("loop://", timeout=0)
    with pytest.raises(TypeError):
        Transport()
