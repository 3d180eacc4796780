"""sw.transport: SerialTransport on pyserial's loop:// fake and on a pseudo-terminal; reply
matching by sequence tag (protocol 2); drain; clear open errors."""

import os
import struct
import threading
import time

import pytest

from sw import protocol as P
from sw.transport import (FaultInjector, ReplyDamaged, SerialTransport, Transport,
                          TransportError, TransportTimeout)


def v1_reply(opcode: int, status: int) -> bytes:
    """A protocol-1 device's refusal: LENGTH 1, the status byte where v2 has the tag."""
    body = bytes([opcode | 0x80, 0x01, 0x00, status])
    return bytes([P.SYNC]) + body + struct.pack(">H", P.crc16(body))


def test_loop_write_read():
    with SerialTransport("loop://", baud=115200, timeout=0.5) as t:
        t.write(b"hello")
        assert t.read(5, 0.5) == b"hello"
        t0 = time.monotonic()
        assert t.read(3, 0.05) == b""
        assert time.monotonic() - t0 < 0.5


def test_exchange_skips_echo_and_noise():
    with SerialTransport("loop://", timeout=0.5) as t:
        reply = P.pack_reply(P.Opcode.READ, P.ErrorCode.OK, b"\x01\x02\x03", seq=9)
        # the fake echoes the request back; noise and the reply are already queued
        t.write(b"\x00\x13noise" + reply)
        fr = t.exchange(P.read(P.Buffer.A, 0, 3, seq=9), seq=9)
        assert fr.seq == 9 and P.parse_reply(fr, P.Opcode.READ) == b"\x01\x02\x03"
        # device error codes surface as DeviceError
        t.drain(0.01)
        t.write(P.pack_reply(P.Opcode.RUN, P.ErrorCode.NOT_LOADED, seq=10))
        with pytest.raises(P.DeviceError, match="NOT_LOADED"):
            P.parse_reply(t.exchange(P.run(seq=10), seq=10), P.Opcode.RUN)
        assert t.stale_replies == 0


def test_exchange_drops_replies_with_another_tag():
    with SerialTransport("loop://", timeout=0.5) as t:
        late = P.pack_reply(P.Opcode.READ, P.ErrorCode.OK, b"old", seq=6)
        late_err = P.pack_reply(P.Opcode.RUN, P.ErrorCode.NOT_LOADED, seq=5)
        mine = P.pack_reply(P.Opcode.READ, P.ErrorCode.OK, b"new", seq=7)
        t.write(late + late_err + mine)
        fr = t.exchange(P.read(P.Buffer.A, 0, 3, seq=7), seq=7)
        assert (fr.seq, fr.data) == (7, b"new")
        assert t.stale_replies == 2
        # only stale replies: they are dropped and the exchange times out
        t.drain(0.01)
        t.write(late)
        with pytest.raises(TransportTimeout):
            t.exchange(P.read(P.Buffer.A, 0, 3, seq=8), seq=8, timeout=0.1)
        assert t.stale_replies == 3
        # without seq (no tag to match), the first reply is taken: what protocol 1 did
        t.drain(0.01)
        t.write(late + mine)
        assert t.exchange(P.read(P.Buffer.A, 0, 3)).data == b"old"


@pytest.mark.parametrize("code, tag", [(P.ErrorCode.BAD_CRC, 3),        # tag damaged, or old
                                       (P.ErrorCode.TIMEOUT, 200),
                                       (P.ErrorCode.BAD_LENGTH, P.UNKNOWN_SEQ)])
def test_exchange_returns_link_errors_whatever_their_tag(code, tag):
    with SerialTransport("loop://", timeout=0.5) as t:
        t.write(P.pack_reply(P.Opcode.WRITE, code, seq=tag)
                + P.pack_reply(P.Opcode.WRITE, P.ErrorCode.OK, seq=42))
        fr = t.exchange(P.write(P.Buffer.A, 0, b"x", seq=42), seq=42)
        assert (fr.status, fr.seq) == (code, tag) and t.stale_replies == 0


def test_exchange_returns_bare_v1_reply():
    with SerialTransport("loop://", timeout=0.5) as t:
        t.write(v1_reply(P.Opcode.IDENTIFY, P.ErrorCode.BAD_LENGTH))
        fr = t.exchange(P.identify(seq=1), seq=1)
        assert fr.is_v1_reply and fr.request == P.Opcode.IDENTIFY and fr.payload == b""


def test_exchange_noise_with_sync_before_the_reply():
    """Noise that holds a SYNC (a candidate frame with a bad CRC, one with an impossible
    LENGTH) right before the reply costs that candidate only (sw.protocol.FrameParser): the
    reply behind it, already on the line, is returned. The bytes are read in pieces
    (``FrameParser.needed()``), so when the bad candidates have been rejected the reply may
    not have been read yet: "nothing pending in the parser" does not mean "nothing more is
    coming" and is no ground for :class:`ReplyDamaged`."""
    noise = bytes([P.SYNC, 0x13, 0x02, 0x00, 0x11, 0x22, 0x33, 0x44, P.SYNC, 0x01, 0x00, 0x42])
    with SerialTransport("loop://", timeout=0.5) as t:
        t.write(noise + P.pack_reply(P.Opcode.STATUS, 0, bytes(8), seq=4))
        fr = t.exchange(P.status(seq=4), seq=4, timeout=0.5)
        assert fr.seq == 4 and fr.data == bytes(8)


def test_exchange_damaged_reply_fails_fast():
    # a reply with a flipped bit and nothing behind it: ReplyDamaged (a TransportTimeout)
    # well before the reply timeout
    bad = bytearray(P.pack_reply(P.Opcode.STATUS, 0, bytes(8), seq=5))
    bad[7] ^= 0x04
    with SerialTransport("loop://", timeout=0.5) as t:
        t.write(bytes(bad))
        t0 = time.monotonic()
        with pytest.raises(ReplyDamaged, match="damaged"):
            t.exchange(P.status(seq=5), seq=5, timeout=2.0)
        assert time.monotonic() - t0 < 1.0
        assert issubclass(ReplyDamaged, TransportTimeout)


def test_exchange_timeout_and_partial_reply():
    with SerialTransport("loop://", timeout=0.5) as t:
        t0 = time.monotonic()
        with pytest.raises(TransportTimeout, match="no reply"):
            t.exchange(P.status(seq=1), seq=1, timeout=0.1)
        assert time.monotonic() - t0 < 1.0
        t.drain(0.01)
        t.write(P.pack_reply(P.Opcode.STATUS, 0, bytes(8), seq=2)[:-2])     # truncated reply
        # never a hang: a timeout (the loop:// echo of the request may complete the
        # truncated candidate, which then fails its CRC)
        with pytest.raises(TransportTimeout, match="partial|damaged"):
            t.exchange(P.status(seq=2), seq=2, timeout=0.1)


def test_drain():
    with SerialTransport("loop://") as t:
        t.write(b"stale bytes")
        assert t.drain(0.01) == len(b"stale bytes")
        assert t.read(1, 0.01) == b""
        # drain also forgets a partial frame held by the parser
        t.write(P.pack_reply(P.Opcode.STATUS, 0, bytes(8), seq=1)[:6])
        with pytest.raises(TransportTimeout):
            t.exchange(P.status(seq=1), seq=1, timeout=0.05)
        t.drain(0.01)
        t.write(P.pack_reply(P.Opcode.STATUS, 0, bytes(8), seq=2))
        assert t.exchange(P.status(seq=2), seq=2, timeout=0.5).seq == 2


def test_drain_until_over_a_pty():
    master, slave = os.openpty()
    try:
        with SerialTransport(os.ttyname(slave), baud=115200, timeout=0.5) as t:
            # bytes that arrive late (0.08 s) but before `until` (0.2 s) are thrown away, even
            # though the line was quiet for longer than `quiet` before them
            timer = threading.Timer(0.08, os.write, (master, b"late reply"))
            timer.start()
            t0 = time.monotonic()
            dropped = t.drain(0.01, until=t0 + 0.2)
            dt = time.monotonic() - t0
            timer.join()
            assert dropped == len(b"late reply")
            assert 0.2 <= dt < 1.0
            # without `until`, a quiet line ends the drain at once
            t0 = time.monotonic()
            assert t.drain(0.01) == 0 and time.monotonic() - t0 < 0.2
            # an `until` in the past costs nothing
            assert t.drain(0.01, until=time.monotonic() - 1) == 0
    finally:
        os.close(master)
        os.close(slave)


def test_time_conversions():
    class Null(Transport):
        def write(self, data):
            pass

        def read(self, n, timeout):
            return b""

        def close(self):
            pass

    t = Null()
    assert t.seconds(50_000_000, 50_000_000) == 1.0
    assert t.seconds(3000, 0) == 3000 / 1e6               # no clock reported: 1 MHz assumed
    assert t.wire_seconds(1000) == 0.0
    with SerialTransport("loop://", baud=3_000_000) as s:
        # 8N1: 10 bit times a byte, plus 20 ms of USB latency
        assert s.wire_seconds(3000) == pytest.approx(0.01 + 0.02)
        assert s.seconds(1 << 22, 50_000_000) == (1 << 22) / 50_000_000


def test_fault_injector():
    inner = SerialTransport("loop://", baud=3_000_000, timeout=0.3)
    with pytest.raises(ValueError, match="tx_rate"):
        FaultInjector(inner, tx_rate=1.5)
    with pytest.raises(ValueError, match="max_bits"):
        FaultInjector(inner, max_bits=0)
    with pytest.raises(TypeError):
        FaultInjector(object())
    f = FaultInjector(inner, tx_rate=1.0, rx_rate=0.0, max_bits=3, seed=7)
    assert f.timeout == 0.3
    assert f.wire_seconds(300) == inner.wire_seconds(300)
    assert f.seconds(1000, 50_000_000) == inner.seconds(1000, 50_000_000)
    frame = P.write(P.Buffer.A, 0, bytes(range(64)), seq=3)
    for _ in range(50):
        f.write(frame)
        got = inner.read(len(frame), 0.3)
        flipped = sum(bin(x ^ y).count("1") for x, y in zip(got, frame))
        assert len(got) == len(frame) and 1 <= flipped <= 3
    assert f.tx_faults == 50
    # received bytes: damaged at rx_rate, counted; the same seed gives the same damage
    runs = []
    for _ in range(2):
        g = FaultInjector(SerialTransport("loop://", timeout=0.3), tx_rate=0.0, rx_rate=1.0,
                          seed=11)
        g.write(frame)
        runs.append(g.read(len(frame), 0.3))
        assert g.rx_faults == 1 and runs[-1] != frame
        g.close()
    assert runs[0] == runs[1]
    f.close()
    with pytest.raises(TransportError, match="closed"):
        inner.write(b"x")                         # the inner link is owned and closed


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
            # a late reply with an old tag, then the reply to this request, sent in pieces
            late = P.pack_reply(P.Opcode.IDENTIFY, 0, b"old", seq=1)
            reply = P.pack_reply(P.Opcode.IDENTIFY, 0, b"x", seq=2)
            threading.Timer(0.05, os.write, (master, late + reply[:5])).start()
            threading.Timer(0.1, os.write, (master, reply[5:])).start()
            fr = t.exchange(P.identify(seq=2), seq=2, timeout=1.0)
            assert fr.is_reply and fr.seq == 2 and fr.data == b"x"
            assert t.stale_replies == 1
            assert os.read(master, 64) == P.identify(seq=2)
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


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1e5"])
def test_sim_transport_rate_min_validated_before_building(bad):
    """A bad rate_min is refused before anything is built or started."""
    from sw.transport import SimTransport
    with pytest.raises(ValueError, match="rate_min must be a positive number"):
        SimTransport("12F", executable="/nonexistent", rate_min=bad)


def test_sim_transport_rate_min_sets_the_timeouts(tmp_path):
    """rate_min replaces the per-device default in the driver's time bounds."""
    from sw.transport import SimTransport
    exe = tmp_path / "model"
    exe.write_text("#!/bin/sh\ncat > /dev/null\n")
    exe.chmod(0o755)
    default, slow = SimTransport("45F", executable=exe), SimTransport("45F", executable=exe,
                                                                      rate_min=1e3)
    try:
        assert default.rate_min == SimTransport.RATE_MIN_BY_DEVICE["45F"]
        assert slow.rate_min == 1e3
        assert slow.seconds(10_000, 40_000_000) == pytest.approx(SimTransport.GRACE + 10.0)
        assert slow.wire_seconds(1000) > default.wire_seconds(1000)
    finally:
        default.close()
        slow.close()
