"""What a node's own input may be used for: the per-input policy its owner sets.

Any member can announce a job naming any input; without a policy a victim with the default
auto-join would join a job of two and hand its input to the only other participant. So the node
that holds an input decides: which jobs or which creators may use it, how many participants a round
must have at least (never fewer than the node's own floor), whether distributed DP noise is
required, and whether an unchanged input may be contributed again to a different set of survivors
(`repeat`, enforced by the round code: two sums over sets that differ by one member reveal that
member's input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.errors import ParameterError
from protocol.params import MAX_PARTICIPANTS

if TYPE_CHECKING:
    from protocol.jobs import JobSpec

#: The fewest participants a node lets a round have with its input, unless its owner sets more
#: (villaged's `participant_floor`). Well above 2: a round of two hands each its peer's input.
DEFAULT_PARTICIPANT_FLOOR = 5
REPEAT_MODES = ("same-survivors", "allow")
MAX_LISTED = 1000  # jobs or creators per policy; keeps a stored policy small
MEMBER_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class InputPolicy:
    jobs: tuple[str, ...] = ()  # job ids this input may be used by; empty: any job
    creators: tuple[bytes, ...] = ()  # member ids whose jobs may use it; empty: any member
    min_participants: int | None = None  # at least this many participants; None: the node's floor
    require_dp: bool = False  # only jobs with a `privacy` section (distributed DP noise)
    repeat: str = "same-survivors"  # "same-survivors" | "allow"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.jobs, tuple) or len(self.jobs) > MAX_LISTED:
            raise ParameterError("policy.jobs", f"must be a list of at most {MAX_LISTED} job ids")
        for i, job_id in enumerate(self.jobs):
            if not isinstance(job_id, str) or not 0 < len(job_id) <= 128:
                raise ParameterError(f"policy.jobs[{i}]", f"must be a job id of 1 to 128 characters, got {job_id!r}")
        if not isinstance(self.creators, tuple) or len(self.creators) > MAX_LISTED:
            raise ParameterError("policy.creators", f"must be a list of at most {MAX_LISTED} member ids")
        for i, creator in enumerate(self.creators):
            if not isinstance(creator, bytes) or len(creator) != MEMBER_ID_BYTES:
                raise ParameterError(f"policy.creators[{i}]", f"must be a {MEMBER_ID_BYTES}-byte member id")
        if self.min_participants is not None and (
                type(self.min_participants) is not int or not 2 <= self.min_participants <= MAX_PARTICIPANTS):
            raise ParameterError("policy.min_participants",
                                 f"must be an integer in [2, {MAX_PARTICIPANTS}], got {self.min_participants!r}")
        if type(self.require_dp) is not bool:
            raise ParameterError("policy.require_dp", f"must be true or false, got {self.require_dp!r}")
        if self.repeat not in REPEAT_MODES:
            raise ParameterError("policy.repeat", f"must be one of {', '.join(REPEAT_MODES)}, got {self.repeat!r}")

    def min_for(self, floor: int) -> int:
        """The fewest participants a round using this input may have on a node whose floor is `floor`."""
        return max(floor, self.min_participants or floor)

    def refusal(self, job_id: str, spec: JobSpec, creator: bytes, floor: int) -> str | None:
        """None when the job may use this input, else one line saying why not."""
        if self.jobs and job_id not in self.jobs:
            return f"job {job_id} is not in this input's allowed jobs"
        if self.creators and creator not in self.creators:
            return f"job creator {creator.hex()} is not in this input's allowed creators"
        needed = self.min_for(floor)
        if spec.min_participants < needed:
            return (f"job allows rounds of {spec.min_participants} participants, "
                    f"this input needs at least {needed}")
        if self.require_dp and spec.privacy is None:
            return "this input requires differential privacy and the job has no privacy section"
        return None

    @classmethod
    def from_dict(cls, raw: Any) -> InputPolicy:
        """A policy from JSON; ParameterError names the field (`policy.creators[1]`)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ParameterError("policy", "must be an object {jobs, creators, min_participants, require_dp, repeat}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(f"policy.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        jobs = _listed(raw, "jobs")
        creators = []
        for i, text in enumerate(_listed(raw, "creators")):
            try:
                creators.append(bytes.fromhex(text) if isinstance(text, str) else text)
            except ValueError:
                raise ParameterError(f"policy.creators[{i}]", f"must be a hex member id, got {text!r}") from None
        return cls(jobs=tuple(jobs), creators=tuple(creators),
                   min_participants=raw.get("min_participants"), require_dp=raw.get("require_dp", False),
                   repeat=raw.get("repeat", "same-survivors"))

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": list(self.jobs), "creators": [c.hex() for c in self.creators],
                "min_participants": self.min_participants, "require_dp": self.require_dp, "repeat": self.repeat}


def _listed(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ParameterError(f"policy.{key}", "must be a list")
    return value
