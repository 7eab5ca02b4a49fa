"""Per-peer admission for inbound streams: a concurrency cap and a token bucket.

Any peer that can connect can open streams, and every stream costs a handler task and up to
one frame of memory. These limits keep one noisy or hostile peer from starving the others;
the transport counts every refusal. Time is passed in, so the rules are testable without a
clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float
    active: int = 0


@dataclass
class PeerLimits:
    """Admit or refuse one inbound stream per call to `admit`; `release` when it ends.

    max_active: streams one peer may have open at once.
    rate, burst: token bucket, in streams per second and streams.
    max_peers: buckets kept; idle full buckets are forgotten beyond that, so a peer id
    flood cannot grow the table without bound.
    """

    max_active: int
    rate: float
    burst: float
    max_peers: int = 10_000
    _buckets: dict[bytes, _Bucket] = field(default_factory=dict)

    def admit(self, peer: bytes, now: float) -> str | None:
        """None if the stream may proceed (then call release), else the reason it may not."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[peer] = _Bucket(tokens=self.burst, updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.active >= self.max_active:
            return "too many concurrent streams"
        if bucket.tokens < 1.0:
            return "rate limited"
        bucket.tokens -= 1.0
        bucket.active += 1
        return None

    def release(self, peer: bytes) -> None:
        bucket = self._buckets.get(peer)
        if bucket is not None and bucket.active > 0:
            bucket.active -= 1

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < self.max_peers:
            return
        refill_time = self.burst / self.rate if self.rate > 0 else float("inf")
        for peer in [p for p, b in self._buckets.items() if b.active == 0 and now - b.updated >= refill_time]:
            del self._buckets[peer]
