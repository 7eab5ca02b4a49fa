"""Runs each pending or running job (villaged/jobs.py `run_job`) in the node's nursery, one task a job.

It also connects to a round's coordinator before the round opens, so that the round does not start
with its coordinator dialing hundreds of members.
"""

from __future__ import annotations

import random
import time

import structlog
import trio

from villaged import election
from villaged.bulletin import Bulletin
from villaged.jobs import Job, JobBook, JobHooks, run_job
from villaged.membership import Membership
from villaged.metrics import Metrics
from villaged.results import ResultExchange
from villaged.rounds import RoundDriver
from villaged.store import Store
from villaged.transport import Node

log = structlog.get_logger("villaged")

#: Members connect to an upcoming coordinator at a random moment within this much per roster member,
#: and give that dial this long: nobody waits for it, and one cut off mid-handshake wasted both ends'
#: CPU (with the probe's 2 s, a loaded net-300 coordinator still had to dial half the roster itself).
_CONNECT_AHEAD_SPREAD = 0.02
_CONNECT_AHEAD_TIMEOUT = 15.0


class JobRunner:
    """Starts a task per job and gives `run_job` what it needs from the other workers."""

    def __init__(self, node: Node, nursery: trio.Nursery, book: JobBook, store: Store, metrics: Metrics,
                 membership: Membership, driver: RoundDriver, results: ResultExchange, bulletin: Bulletin) -> None:
        self._node, self._nursery, self._book, self._store, self._metrics = node, nursery, book, store, metrics
        self._membership, self._driver, self._results = membership, driver, results
        self.me = membership.me
        self._running: set[str] = set()
        self._dialing_ahead: set[bytes] = set()  # coordinators this node will dial before their round
        self._jitter = random.Random()  # spreads dials in time (not for secrets)
        self._hooks = JobHooks(reachable=membership.reachable, has_result=self._has_result,
                               fetch_result=self._fetch_result, on_round_end=self._on_round_end,
                               announce_roster=bulletin.announce_roster, connect_ahead=self.connect_ahead)

    def start(self, job: Job) -> None:
        """Run `job` unless it runs already."""
        if job.id not in self._running:
            self._running.add(job.id)
            self._nursery.start_soon(self._run, job)

    async def _run(self, job: Job) -> None:
        try:
            await run_job(job, self._book, self._driver, self._store, self._hooks)
        except Exception as exc:  # a bug in one job must not stop the daemon and its other jobs
            log.exception("job_crashed", job=job.id)
            self._book.finish(job.id, f"internal error on this node: {type(exc).__name__}: {exc}", "failed")
        finally:
            self._running.discard(job.id)

    def connect_ahead(self, job: Job, round_number: int) -> None:
        """Connect to the coordinator the election names first for `round_number` before it opens, so
        that the round does not start with its coordinator dialing hundreds of members (with 300
        members on 2 cores, its probe reached only 31 to 87 of them in time). Each member dials once,
        at a random moment in the first three quarters of the time left before the round (at least a
        spread of a few ms per member), so that one process is not handed every handshake at once.
        Called when the roster arrives (round 0) and when the previous round is over on this node (a
        restarted node too): 300 handshakes with the next coordinator while a round ran slowed that
        round down. Rounds that run back to back leave no gap, so there it is called as the previous
        round opens."""
        if job.roster is None or round_number >= job.spec.rounds or self.me not in job.roster:
            return
        coordinator = election.coordinator(self._book, job.id, round_number, 0)
        if (coordinator is None or coordinator == self.me or coordinator in self._dialing_ahead
                or coordinator in self._node.connected_peers()):
            return
        spread = max(_CONNECT_AHEAD_SPREAD * len(job.roster), 0.75 * (job.round_opens_at(round_number) - time.time()))
        self._dialing_ahead.add(coordinator)
        self._nursery.start_soon(self._dial_later, coordinator, spread)

    async def _dial_later(self, member: bytes, delay_limit: float) -> None:
        try:
            await trio.sleep(self._jitter.uniform(0, delay_limit))
            await self._membership.reachable([member], timeout=_CONNECT_AHEAD_TIMEOUT)
        finally:
            self._dialing_ahead.discard(member)

    def _has_result(self, job_id: str, round_number: int) -> bool:
        return round_number in self._store.result_rounds(job_id)

    async def _fetch_result(self, job: Job, round_number: int) -> bool:
        return await self._results.fetch_missed(list(job.roster or ()), job.id, round_number)

    async def _on_round_end(self, job: Job, round_number: int, outcome: str) -> None:
        if outcome != "completed":
            self._metrics.rounds_aborted.labels(reason="gave_up").inc()
            log.warning("round_given_up", job=job.id, round=round_number, reason=outcome)
