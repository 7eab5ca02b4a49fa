"""The jobs a node knows, held in memory only while they matter, so that a daemon that runs for
months does not grow with every job it ever saw.

A job is held from the moment it is learned (or, after a restart, loaded) until `RETENTION`
seconds after it ended; then it is let go, and a question about it (a view, a late announcement
or result) loads it from the store again, without keeping it. Iterating the table lists every
stored job; the periodic scans use `active` (held jobs that are pending or running) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from villaged.store import JobRecord, Store

if TYPE_CHECKING:
    from villaged.jobs import Job

__all__ = ["RETENTION", "JobTable"]

#: Seconds a node keeps what it holds in memory about a job (or a round) after it ended. An hour is
#: far beyond the latest anything about a job's last round arrives on a live node: a result is
#: pushed or fetched within `ROUND_WINDOWS` attempt windows (5 x 6 x phase_timeout: 5 minutes at
#: the default 10 s), and job sync hands on records only for active jobs. After it, the store answers.
RETENTION: Final = 3600.0

ENDED_STATES: Final = frozenset({"completed", "cancelled", "failed"})


class JobTable(Mapping[str, "Job"]):
    """Job id -> `Job`: the held jobs, and every other stored job loaded on demand (not kept)."""

    def __init__(self, store: Store, load: Callable[[JobRecord], Job], retention: float = RETENTION) -> None:
        self._store = store
        self._load = load
        self.retention = retention
        self._held: dict[str, Job] = {}
        self._ended_at: dict[str, float] = {}  # held jobs that ended -> when (wall time)

    def hold(self, job: Job, ended_at: float | None = None) -> None:
        self._held[job.id] = job
        if ended_at is not None:
            self._ended_at[job.id] = ended_at

    def ended(self, job_id: str, at: float) -> None:
        """The job reached a final state at `at`: it is let go `retention` seconds later."""
        if job_id in self._held:
            self._ended_at.setdefault(job_id, at)

    def forget_ended(self, now: float) -> list[str]:
        """Let go of the jobs that ended more than `retention` seconds before `now`; their ids."""
        gone = [job_id for job_id, at in self._ended_at.items() if now - at > self.retention]
        for job_id in gone:
            del self._ended_at[job_id], self._held[job_id]
        return gone

    def holds(self, job_id: str) -> bool:
        return job_id in self._held

    def active(self) -> list[Job]:
        """Held jobs that are pending or running (every such job is held)."""
        return [job for job in self._held.values() if job.state not in ENDED_STATES]

    def __getitem__(self, job_id: str) -> Job:
        job = self._held.get(job_id)
        if job is not None:
            return job
        record = self._store.get_job(job_id)
        if record is None:
            raise KeyError(job_id)
        return self._load(record)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held or (isinstance(job_id, str) and self._store.get_job(job_id) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter([record.id for record in self._store.list_jobs()])

    def __len__(self) -> int:
        return len(self._store.list_jobs())
