"""Tests for villaged/transport/framing.py and villaged/transport/limits.py, over an in-memory stream."""

from __future__ import annotations

import pytest
from libp2p.network.stream.exceptions import StreamEOF

from villaged.errors import TransportError
from villaged.transport.framing import (
    HEADER,
    FrameTooLarge,
    error_reply,
    ok_reply,
    open_reply,
    read_exact,
    read_length,
    write_frame,
)
from villaged.transport.limits import PeerLimits

PEER = b"\x07" * 32


class ChunkedStream:
    """Hands out at most `chunk` bytes per read, like yamux (≤64 KiB) does; EOF at the end."""

    def __init__(self, data: bytes = b"", chunk: int = 3) -> None:
        self.data = bytearray(data)
        self.chunk = chunk
        self.written = bytearray()
        self.reads = 0

    async def read(self, n: int | None = None) -> bytes:
        assert n is not None and n > 0, "framing must always pass a size"
        self.reads += 1
        if not self.data:
            raise StreamEOF()
        take = min(n, self.chunk, len(self.data))
        out = bytes(self.data[:take])
        del self.data[:take]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_frame_round_trip_survives_small_chunks() -> None:
    out = ChunkedStream()
    await write_frame(out, b"x" * 1000)
    back = ChunkedStream(bytes(out.written), chunk=7)
    assert await read_exact(back, await read_length(back, 1000, PEER), PEER) == b"x" * 1000
    assert back.reads > 101  # libp2p's read_exactly would have given up here


async def test_oversize_header_is_refused_before_reading_the_body() -> None:
    stream = ChunkedStream(HEADER.pack(2_000_000) + b"y" * 10, chunk=100)
    with pytest.raises(FrameTooLarge) as info:
        await read_length(stream, 1_000_000, PEER)
    assert (info.value.length, info.value.limit, info.value.peer) == (2_000_000, 1_000_000, PEER)
    assert len(stream.data) == 10  # body untouched


async def test_eof_mid_frame_is_a_transport_error() -> None:
    stream = ChunkedStream(HEADER.pack(10) + b"abc")
    with pytest.raises(TransportError, match="3 of 10 bytes"):
        await read_exact(stream, await read_length(stream, 100, PEER), PEER)


def test_reply_envelope() -> None:
    assert open_reply(ok_reply(b"body"), PEER) == b"body"
    with pytest.raises(TransportError, match="remote error: no such round"):
        open_reply(error_reply("no such round"), PEER)
    with pytest.raises(TransportError, match="unknown reply status 9"):
        open_reply(b"\x09", PEER)
    with pytest.raises(TransportError, match="empty"):
        open_reply(b"", PEER)
    assert len(error_reply("e" * 10_000)) == 1 + 512


def test_token_bucket_refuses_above_burst_and_refills() -> None:
    limits = PeerLimits(max_active=100, rate=10.0, burst=3.0)
    for _ in range(3):
        assert limits.admit(PEER, now=0.0) is None
        limits.release(PEER)
    assert limits.admit(PEER, now=0.0) == "rate limited"
    assert limits.admit(PEER, now=0.1) is None  # one token back after 0.1 s at 10/s
    assert limits.admit(b"\x08" * 32, now=0.1) is None  # other peers have their own bucket


def test_concurrency_cap_counts_active_streams() -> None:
    limits = PeerLimits(max_active=2, rate=1000.0, burst=1000.0)
    assert limits.admit(PEER, 0.0) is None
    assert limits.admit(PEER, 0.0) is None
    assert limits.admit(PEER, 0.0) == "too many concurrent streams"
    limits.release(PEER)
    assert limits.admit(PEER, 0.0) is None


def test_idle_buckets_are_forgotten_beyond_max_peers() -> None:
    limits = PeerLimits(max_active=1, rate=1.0, burst=1.0, max_peers=2)
    for i in range(2):
        assert limits.admit(bytes([i]) * 32, 0.0) is None
        limits.release(bytes([i]) * 32)
    assert limits.admit(b"\x09" * 32, 5.0) is None
    assert len(limits._buckets) == 1
