"""End to end: the real driver through SimTransport (Verilator model of the SoC), and a fuzz
of random / corrupted frames after which a correct GEMM still comes back bit-exact."""

import numpy as np
import pytest

from sw import numerics, protocol as P
from sw.numerics import Requant

DEVICE = "12F"     # the smallest core: quickest to build; the gateware is the same generator


@pytest.fixture(scope="module")
def transport():
    from sw.transport import SimTransport
    t = SimTransport(DEVICE)
    yield t
    t.close()


@pytest.fixture(scope="module")
def acc(transport):
    from sw.driver import Accelerator
    return Accelerator(transport)


def _rand(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def test_identify_matches_core(acc):
    from fpga.ulx3s import DEVICES
    from hw.systolic.core import MpGemmCore
    from dataclasses import asdict
    core = MpGemmCore(**asdict(DEVICES[DEVICE][1]))
    info = acc.identify()
    assert (info.rows, info.cols, info.max_k) == (core.rows, core.cols, core.max_k)
    assert info.config_hash == core.config_hash()


def test_random_shapes_bit_exact(acc):
    rng = np.random.default_rng(11)
    shapes = [(1, 1, 1), (5, 3, 7), (17, 64, 9), (33, 200, 40), (70, 1500, 5)]  # last: K chunks
    for i, (M, K, N) in enumerate(shapes):
        a, w = _rand(rng, (M, K)), _rand(rng, (K, N))
        rq = None if i % 2 else Requant(*numerics.to_dyadic(1 / (K * 300)), zero_point=int(rng.integers(-5, 5)))
        got = acc.gemm(a, w, requant=rq)
        np.testing.assert_array_equal(got, numerics.mpgemm(a, w, rq), strict=True)


def test_extremes(acc):
    K = acc.identify().max_k
    a = np.full((4, K), -128, dtype=np.int8)
    w = np.full((K, 4), -128, dtype=np.int8)
    np.testing.assert_array_equal(acc.gemm(a, w), numerics.mpgemm(a, w), strict=True)


def test_fuzz_then_gemm(transport, acc):
    """10,000 random or corrupted frames; every reply is a well-formed frame; then a GEMM."""
    rng = np.random.default_rng(12)
    good = [P.identify(), P.status(), P.counters(), P.read(P.Buffer.A, 0, 16),
            P.write(P.Buffer.W, 8, bytes(range(32))), P.reset(), P.run()]
    sent = 0
    replies = 0
    parser = P.FrameParser()
    while sent < 10_000:
        batch = bytearray()
        for _ in range(250):
            kind = rng.integers(0, 5)
            frame = bytearray(good[rng.integers(0, len(good))])
            if kind == 0:      # flip a random bit
                i = int(rng.integers(0, len(frame)))
                frame[i] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:    # random bytes, often starting with SYNC
                frame = bytearray(rng.integers(0, 256, int(rng.integers(1, 24))).astype(np.uint8).tobytes())
                if rng.integers(0, 2):
                    frame[0] = P.SYNC
            elif kind == 2:    # unknown opcode with a correct CRC
                frame = bytearray(P.pack_frame(int(rng.integers(0x09, 0x80)), b"\x00" * int(rng.integers(0, 8))))
            elif kind == 3:    # garbage in front of a good frame
                frame = bytearray(rng.integers(0, 256, 5).astype(np.uint8).tobytes()) + frame
            batch += frame
            sent += 1
        transport.write(bytes(batch))
        # let the device work through the batch (and time out on a truncated tail)
        while True:
            data = transport.read(1 << 16, 0.15)
            if not data:
                break
            frames = parser.feed(data)
            replies += len(frames)
            for f in frames:
                assert f.is_reply, f
        assert parser.pending == 0, "device sent a partial frame"
        assert parser.skipped == 0 and parser.bad_frames == 0, "device sent malformed bytes"
    assert replies > 1000
    transport.drain()
    rng = np.random.default_rng(13)
    a, w = _rand(rng, (9, 50)), _rand(rng, (50, 11))
    rq = Requant(40000, 20, 3, True)
    acc.reset()
    np.testing.assert_array_equal(acc.gemm(a, w, requant=rq), numerics.mpgemm(a, w, rq), strict=True)
