"""The coordinator of an attempt as this node knows the job's roster: one ranking per round, cached.

Every node ranks the frozen roster alike (protocol/election.py); the daemon's workers ask here
rather than ranking the roster again at each place that needs a round's coordinator.
"""

from __future__ import annotations

import functools

from protocol.election import ranking
from villaged.jobs import JobBook

#: Rankings kept: a few rounds of a few jobs (a roster of 300 members is ~10 KB).
_CACHED_RANKINGS = 64


@functools.lru_cache(maxsize=_CACHED_RANKINGS)
def _ranked(job_id: str, round_number: int, roster: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(ranking(job_id, round_number, roster))


def coordinator(book: JobBook, job_id: str, round_number: int, attempt: int) -> bytes | None:
    """The member that coordinates this attempt; None until the job's roster is known here."""
    roster = book.round_members(job_id)
    if not roster:
        return None
    ranked = _ranked(job_id, round_number, tuple(roster))
    return ranked[attempt % len(ranked)]
