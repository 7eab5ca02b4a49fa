"""The records `villaged.store.Store` hands out, and how they map to and from its rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack

JobState = Literal["pending", "running", "completed", "cancelled", "failed"]
JOB_STATES: Final[frozenset[str]] = frozenset({"pending", "running", "completed", "cancelled", "failed"})
RoundState = Literal["running", "completed", "aborted"]
ROUND_STATES: Final[frozenset[str]] = frozenset({"running", "completed", "aborted"})


@dataclass(frozen=True, slots=True)
class MemberRecord:
    member_id: bytes
    certificate: bytes
    expires_at: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    spec: dict[str, Any]
    creator: bytes
    state: JobState
    created_at: float
    updated_at: float
    roster: tuple[bytes, ...] | None = None  # the creator's frozen member list, once known
    end_reason: str | None = None  # why the job ended before its last round


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One attempt at one round. ``phase_timings`` maps phase name -> seconds spent in it."""

    job_id: str
    round: int
    attempt: int
    coordinator: bytes
    state: RoundState
    started_at: float
    participants: tuple[bytes, ...] = ()
    dropped: tuple[bytes, ...] = ()
    phase_timings: dict[str, float] = field(default_factory=dict)
    ended_at: float | None = None
    abort_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """The signed outcome of a round; at most one per (job, round)."""

    job_id: str
    round: int
    attempt: int
    coordinator: bytes
    aggregate: bytes
    participants: tuple[bytes, ...]
    dropped: tuple[bytes, ...]
    signed_announcement: bytes  # the coordinator's signed ResultAnnouncement record, served with the aggregate
    received_at: float
    votes: tuple[bytes, ...] = ()  # the consistency votes that show the attempt ran (none before issue #15)


@dataclass(frozen=True, slots=True)
class LocalInput:
    name: str
    payload: Any
    updated_at: float


def ids_to_json(ids: Sequence[bytes]) -> str:
    return json.dumps([i.hex() for i in ids])


def ids_from_json(text: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(i) for i in json.loads(text))


RESULT_SELECT: Final = (
    "SELECT job_id, round, attempt, coordinator, aggregate, participants, dropped, signed_announcement, received_at, "
    "(SELECT votes FROM result_votes AS v WHERE v.job_id = results.job_id AND v.round = results.round) FROM results"
)


def result_from_row(row: tuple[Any, ...]) -> ResultRecord:
    j, r, a, c, agg, p, d, sig, at, votes = row
    return ResultRecord(j, r, a, bytes(c), bytes(agg), ids_from_json(p), ids_from_json(d), bytes(sig), at,
                        () if votes is None else tuple(msgpack.unpackb(votes)))


def same_result(a: ResultRecord, b: ResultRecord) -> bool:
    # received_at is when *we* got it, not part of the result.
    return (a.attempt, a.coordinator, a.aggregate, a.participants, a.dropped, a.signed_announcement) == (
        b.attempt,
        b.coordinator,
        b.aggregate,
        tuple(b.participants),
        tuple(b.dropped),
        b.signed_announcement,
    )


JOB_SELECT: Final = "SELECT id, spec, creator, state, created_at, updated_at, roster, end_reason FROM jobs"


def job_from_row(row: tuple[Any, ...]) -> JobRecord:
    i, spec, creator, state, created, updated, roster, end_reason = row
    members = None if roster is None else tuple(bytes(roster[at:at + 32]) for at in range(0, len(roster), 32))
    return JobRecord(i, json.loads(spec), bytes(creator), state, created, updated, members, end_reason)


ROUND_SELECT: Final = (
    "SELECT job_id, round, attempt, coordinator, state, participants, dropped, phase_timings, "
    "started_at, ended_at, abort_reason FROM rounds"
)


def round_to_row(record: RoundRecord) -> tuple[Any, ...]:
    """The values of a rounds row, in `ROUND_SELECT`'s order."""
    return (
        record.job_id,
        record.round,
        record.attempt,
        record.coordinator,
        record.state,
        ids_to_json(record.participants),
        ids_to_json(record.dropped),
        json.dumps(record.phase_timings, sort_keys=True, allow_nan=False),
        record.started_at,
        record.ended_at,
        record.abort_reason,
    )


def round_from_row(row: tuple[Any, ...]) -> RoundRecord:
    j, r, a, c, s, p, d, t, st, en, why = row
    return RoundRecord(job_id=j, round=r, attempt=a, coordinator=bytes(c), state=s, participants=ids_from_json(p),
                       dropped=ids_from_json(d), phase_timings=json.loads(t), started_at=st, ended_at=en,
                       abort_reason=why)
