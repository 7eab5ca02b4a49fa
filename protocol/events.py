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
    # Evidence that the attempt ran (protocol/evidence.py checks it): the invited participants and
    # the ConsistencySignature frames collected, each a survivor's signature over this U3.
    participants: tuple[bytes, ...]
    votes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RoundFinished:
    result: RoundResult


@dataclass(frozen=True, slots=True)
class SendingMaskedInput:
    """The next `Send` carries this client's masked input. The driver records durably, before it
    leaves, that the round is spent in this attempt: an input goes into at most one attempt of a
    round, so no two attempts' sums (over sets that may differ by one member) both hold it."""

    context: RoundContext


@dataclass(frozen=True, slots=True)
class SigningSurvivors:
    """The next `Send` signs this survivor set. The driver records it durably first for an input
    that must not be summed again over another set (`ClientRound(same_survivors_as=...)`)."""

    context: RoundContext
    survivors: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class ClientFinished:
    """The client sent its unmasking shares; the sum is the coordinator's to publish."""

    context: RoundContext


@dataclass(frozen=True, slots=True)
class RoundAborted:
    context: RoundContext
    phase: str
    reason: str


Output = Send | StartTimer | RoundFinished | SendingMaskedInput | SigningSurvivors | ClientFinished | RoundAborted
