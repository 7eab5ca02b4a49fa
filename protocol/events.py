"""What the round machines ask their driver to do, and the outcomes they report.

Machines never touch the network or a clock: they return a list of these. "Nothing to do yet"
is an empty list. Normal endings (finished, aborted) are events, not exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.wire import RoundContext


@dataclass(frozen=True, slots=True)
class Send:
    to: bytes  # member id
    frame: bytes


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call `timer_fired(name)` after `seconds` unless the machine has moved on (stale timers are ignored)."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class RoundResult:
    context: RoundContext
    coordinator: bytes
    aggregate: np.ndarray  # uint32 words, the exact sum mod 2^m of the survivors' inputs
    survivors: tuple[bytes, ...]  # U3: whose inputs are in the sum
    dropped: tuple[bytes, ...]  # invited, not in the sum
    phase_seconds: dict[str, float]  # from the `now` values the driver passed in


@dataclass(frozen=True, slots=True)
class RoundFinished:
    result: RoundResult


@dataclass(frozen=True, slots=True)
class Revealing:
    """The next `Send` reveals unmasking shares of this round. The driver records it durably before
    that frame leaves, so that no restart lets this node take part in another attempt of the round."""

    context: RoundContext
    survivors: frozenset[bytes]  # the signed U3 the shares are revealed for


@dataclass(frozen=True, slots=True)
class ClientFinished:
    """The client sent its unmasking shares; the sum is the coordinator's to publish."""

    context: RoundContext


@dataclass(frozen=True, slots=True)
class RoundAborted:
    context: RoundContext
    phase: str
    reason: str


Output = Send | StartTimer | RoundFinished | Revealing | ClientFinished | RoundAborted
