"""The coordinator of an attempt as this node knows the job's roster.

Every node ranks the frozen roster alike (`protocol/election.py`, which computes each round's
ranking once and caches it); the daemon's workers ask here for the job book's roster.
"""

from __future__ import annotations

from protocol.election import coordinator_for
from villaged.jobs import JobBook


def coordinator(book: JobBook, job_id: str, round_number: int, attempt: int) -> bytes | None:
    """The member that coordinates this attempt; None until the job's roster is known here."""
    roster = book.round_members(job_id)
    return coordinator_for(job_id, round_number, attempt, roster) if roster else None
