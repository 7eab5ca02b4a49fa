"""Tests for villaged/transport/stream_pool.py: which idle stream a request gets, and what must be closed."""

from __future__ import annotations

from villaged.transport.stream_pool import StreamPool

A, B = b"\x01" * 32, b"\x02" * 32


def test_take_gives_the_most_recent_fresh_stream_and_hands_back_the_stale_ones() -> None:
    pool: StreamPool[str] = StreamPool(max_idle=10.0)
    assert pool.take(A, "p", 0.0) == (None, [])
    assert pool.give(A, "p", "old", 0.0) is None
    assert pool.give(A, "p", "mid", 5.0) is None
    assert pool.give(A, "p", "new", 6.0) is None
    assert pool.take(A, "p", 12.0) == ("new", ["old"])  # "old" idled 12 s, past the 10 s limit
    assert pool.take(A, "p", 12.0) == ("mid", [])
    assert pool.take(A, "p", 12.0) == (None, [])
    assert len(pool) == 0


def test_streams_are_kept_per_peer_and_protocol_and_capped() -> None:
    pool: StreamPool[str] = StreamPool(max_idle=10.0, max_per_key=2)
    pool.give(A, "p", "a1", 0.0)
    pool.give(A, "q", "aq", 0.0)
    pool.give(B, "p", "b1", 0.0)
    assert pool.give(A, "p", "a2", 1.0) is None
    assert pool.give(A, "p", "a3", 2.0) == "a1"  # the oldest goes when the key is full
    assert pool.take(B, "p", 3.0) == ("b1", [])
    assert pool.take(A, "q", 3.0) == ("aq", [])
    assert len(pool) == 2


def test_forget_drops_every_stream_to_a_peer() -> None:
    pool: StreamPool[str] = StreamPool(max_idle=10.0)
    pool.give(A, "p", "a", 0.0)
    pool.give(A, "q", "b", 0.0)
    pool.give(B, "p", "c", 0.0)
    pool.forget(A)
    assert pool.take(A, "p", 1.0) == (None, []) and pool.take(A, "q", 1.0) == (None, [])
    assert pool.take(B, "p", 1.0) == ("c", [])
