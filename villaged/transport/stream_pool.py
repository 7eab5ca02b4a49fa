"""Idle request streams kept for the next request to the same peer and protocol (keep-alive).

Opening a libp2p stream costs a yamux open and a multistream-select exchange in Python on both
ends: 3.4 ms of CPU per request against 0.5 ms on a stream already open (two nodes in one
process, 200-byte echo), and 10 % of a net-100 coordinator process's CPU, which opens one stream
per client per phase. A stream that carried a complete exchange goes back here instead of being
closed; the server keeps serving it until it has been idle for its `stream_idle_timeout`.

The pool hands out a stream only while it has been idle for less than a third of the server's
idle limit (`TransportConfig.stream_idle_timeout`), so it rarely offers one the server is closing;
when it does, the request sees the stream end before any reply byte and goes out again on a fresh
stream (`asking.Requester._request_remote`). Pure bookkeeping: the caller closes what `take` and `give` hand back.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

#: Idle streams kept per (peer, protocol); more are closed (a burst of concurrent requests).
MAX_IDLE_PER_KEY = 4

S = TypeVar("S")


class StreamPool(Generic[S]):
    """Idle streams by (peer, protocol), most recently used first."""

    def __init__(self, max_idle: float, max_per_key: int = MAX_IDLE_PER_KEY) -> None:
        self._max_idle = max_idle
        self._max_per_key = max_per_key
        self._idle: dict[tuple[bytes, Hashable], list[tuple[S, float]]] = {}

    def take(self, peer: bytes, protocol: Hashable, now: float) -> tuple[S | None, list[S]]:
        """A fresh enough idle stream (or None), and the stale ones to close."""
        entries = self._idle.pop((peer, protocol), [])
        stale = [stream for stream, since in entries if now - since >= self._max_idle]
        fresh = [(stream, since) for stream, since in entries if now - since < self._max_idle]
        if not fresh:
            return None, stale
        stream, _ = fresh.pop()
        if fresh:
            self._idle[(peer, protocol)] = fresh
        return stream, stale

    def give(self, peer: bytes, protocol: Hashable, stream: S, now: float) -> S | None:
        """Keep `stream` for reuse; returns a stream to close if the key already holds enough."""
        entries = self._idle.setdefault((peer, protocol), [])
        entries.append((stream, now))
        if len(entries) > self._max_per_key:
            return entries.pop(0)[0]
        return None

    def forget(self, peer: bytes) -> None:
        """Drop every idle stream to `peer`: its connection went away, and they with it."""
        for key in [key for key in self._idle if key[0] == peer]:
            del self._idle[key]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._idle.values())
