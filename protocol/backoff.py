"""One retry schedule for every retry in village: a `Backoff` value says how long to wait before
each retry and when to give up; the caller owns the clock and the sleeping.

A schedule lists its delays; after the last one it either gives up or, with `keep_going_for`,
keeps retrying at the last delay until that many seconds have passed since the first try. `cap`
bounds every delay (a round frame's retries are capped at a tenth of its phase timeout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from protocol.errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between tries: `delays[i]` before retry i+1, at most `cap` each; then give up, or keep
    trying at the last delay until `keep_going_for` seconds after the first try."""

    delays: tuple[float, ...]
    cap: float = math.inf
    keep_going_for: float = 0.0

    def __post_init__(self) -> None:
        if not self.delays or any(d < 0 for d in self.delays):
            raise LocalProtocolError(f"a backoff needs one or more non-negative delays, got {self.delays}")
        if self.cap <= 0 or self.keep_going_for < 0:
            raise LocalProtocolError(f"bad backoff cap {self.cap} or duration {self.keep_going_for}")

    def next_delay(self, retries: int, elapsed: float = 0.0) -> float | None:
        """Seconds to wait before the next try, after `retries` retries and `elapsed` seconds since
        the first try; None: give up."""
        if retries < len(self.delays) or elapsed < self.keep_going_for:
            return min(self.delays[min(retries, len(self.delays) - 1)], self.cap)
        return None

    @classmethod
    def doubling(cls, first: float, up_to: float) -> Backoff:
        """`first`, then twice the last delay, at most `up_to`: (1, 2, 4, 8) for doubling(1, 8).
        The first delay is not capped (`cap` would cap it); the doubled ones stop at `up_to`."""
        if not (first > 0 and 0 < up_to < math.inf):
            raise LocalProtocolError(f"a doubling backoff needs a positive first delay and a finite positive limit, "
                                     f"got {first} and {up_to}")
        delays = [first]
        while delays[-1] != up_to:
            delays.append(min(2 * delays[-1], up_to))
        return cls(tuple(delays))

    def forever(self) -> Backoff:
        """The same schedule that never gives up: the caller's own deadline or success ends it."""
        return self.for_at_least(math.inf)

    def capped(self, cap: float) -> Backoff:
        """The same schedule with every delay at most `cap`."""
        return replace(self, cap=min(self.cap, cap))

    def for_at_least(self, seconds: float) -> Backoff:
        """The same schedule that keeps trying at its last delay until `seconds` after the first try."""
        return replace(self, keep_going_for=seconds)

    @property
    def tries(self) -> int:
        """Tries a schedule without `keep_going_for` makes: the first and one per delay."""
        return len(self.delays) + 1
