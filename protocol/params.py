"""Round parameters and the rules that make a round safe, checked before any key is made.

Threshold rule: a secret of client w has k+1 holders (w and its k neighbours). The consistency
check lets a holder reveal a share of w only after t holders of w signed the same survivor set,
and the vote of the attempt's coordinator never counts (it is a participant and could sign both
of two survivor lists it shows to different halves of w's holders). With c other corrupt
holders, who may sign both lists, two conflicting lists both reach quorum only if
2t - c <= k+1; an honest holder signs one. Hence t > (k+1+c)/2, and t <= k+1 so that the secret
is recoverable at all. `protocol/threat-model.md` has the whole argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.errors import ParameterError

#: 15 Mi coordinates = a 60 MiB masked vector, so a frame stays under the daemon's 64 MiB stream cap.
MAX_DIMENSION = 15 * (1 << 20)
#: A round larger than this does not fit the survivor list in one frame (32 B per member).
MAX_PARTICIPANTS = 100_000


@dataclass(frozen=True, slots=True)
class RoundParams:
    """What every participant of one attempt agrees on, carried in the signed invitation."""

    dimension: int  # d: coordinates per vector
    bits: int  # m: arithmetic is in Z_(2^m), 1 <= m <= 32
    neighbours: int  # k: SecAgg+ graph degree (even); >= n-1 means the complete graph
    threshold: int  # t: shares needed to rebuild a secret
    min_survivors: int  # fewer inputs than this and the sum is not released
    phase_timeout: float  # seconds a machine waits in one phase
    # False: a plain sum, the inputs go to the coordinator unmasked (a training job with
    # secure_aggregation false). The rest of the protocol runs unchanged, so survivors, consistency
    # votes and evidence work alike; only the masks are left out, and every result says so.
    masked: bool = True

    def __post_init__(self) -> None:
        _int_in("dimension", self.dimension, 1, MAX_DIMENSION)
        _int_in("bits", self.bits, 1, 32)
        _int_in("neighbours", self.neighbours, 2, MAX_PARTICIPANTS)
        if self.neighbours % 2:
            raise ParameterError("neighbours", f"must be even (k/2 on each side of the ring), got {self.neighbours}")
        _int_in("threshold", self.threshold, 2, self.neighbours + 1)
        _int_in("min_survivors", self.min_survivors, 2, MAX_PARTICIPANTS)
        if not (isinstance(self.phase_timeout, (int, float)) and 0 < self.phase_timeout <= 3600):
            raise ParameterError("phase_timeout", f"must be in (0, 3600] seconds, got {self.phase_timeout!r}")

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    def effective_neighbours(self, participants: int) -> int:
        """k for a round of n participants: the complete graph when k >= n - 1."""
        return min(self.neighbours, participants - 1)

    def check_for(self, participants: int, colluders: int = 0) -> None:
        """Reject a participant count the thresholds cannot serve safely against a lying coordinator
        and `colluders` corrupt participants besides it."""
        _int_in("participants", participants, 2, MAX_PARTICIPANTS)
        holders = self.effective_neighbours(participants) + 1
        if 2 * self.threshold <= holders + colluders:
            raise ParameterError(
                "threshold",
                f"t={self.threshold} must exceed (holders + colluders)/2 = ({holders} + {colluders})/2 "
                f"so that a lying coordinator and {colluders} colluding participants cannot collect both shares of a client",
            )
        if self.threshold > holders:
            raise ParameterError(
                "threshold", f"t={self.threshold} exceeds the {holders} holders of each secret with {participants} participants"
            )
        if self.min_survivors > participants:
            raise ParameterError(
                "min_survivors", f"{self.min_survivors} exceeds the {participants} participants invited"
            )

    def to_wire(self) -> list[Any]:
        values = [self.dimension, self.bits, self.neighbours, self.threshold, self.min_survivors, float(self.phase_timeout)]
        return values if self.masked else [*values, False]  # masked rounds keep the six-value form

    @classmethod
    def from_wire(cls, value: Any) -> RoundParams:
        if not (isinstance(value, list) and len(value) in (6, 7)):
            raise ParameterError("params", "expected a list of 6 values (7 for a plain sum)")
        d, bits, k, t, min_survivors, timeout, *plain = value
        if not all(type(v) is int for v in (d, bits, k, t, min_survivors)) or type(timeout) is not float:
            raise ParameterError("params", "wrong value types")
        if plain and plain[0] is not False:
            raise ParameterError("params", "the seventh value may only be false (a plain sum)")
        return cls(d, bits, k, t, min_survivors, timeout, masked=not plain)


def _int_in(field: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ParameterError(field, f"must be an integer in [{low}, {high}], got {value!r}")
