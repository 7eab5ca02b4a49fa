"""Which results this node keeps: its own rounds' (signed, stored, then announced) and others' (verified).

A result is stored only if it proves its round ran (protocol/evidence.py) and its round has opened
by this node's clock; the lowest completed attempt's result is the round's (`Store.put_result`).
villaged/results.py moves results between nodes; this worker decides and records (it is the
exchange's `ResultRules` and `ResultShelf`).
"""

from __future__ import annotations

import time

import nacl.signing
import structlog

from protocol.announcements import ResultAnnouncement, SignedAnnouncement, open_announcement, sign_announcement
from protocol.errors import AuthenticationError, RemoteProtocolError
from protocol.events import RoundResult
from protocol.evidence import VerifiedResult, announcement_of, check_claim, verify_result
from protocol.wire import RoundContext
from villaged import election
from villaged.bulletin import Bulletin
from villaged.jobs import Job, JobBook
from villaged.logs import log_round
from villaged.membership import Membership
from villaged.metrics import Metrics
from villaged.node_control import prior_validation
from villaged.results import ResultExchange
from villaged.rounds import RoundDriver
from villaged.store import ResultRecord, RoundRecord, Store, StoreError

log = structlog.get_logger("villaged")


class ResultKeeper:
    """Verifies, stores and records results and round outcomes; announces this node's own."""

    def __init__(self, key: nacl.signing.SigningKey, membership: Membership, book: JobBook, store: Store,
                 metrics: Metrics) -> None:
        self._key, self._membership, self._book, self._store, self._metrics = key, membership, book, store, metrics
        self.me = membership.me
        self._driver: RoundDriver | None = None
        self._exchange: ResultExchange | None = None
        self._bulletin: Bulletin | None = None

    def attach(self, driver: RoundDriver, exchange: ResultExchange, bulletin: Bulletin) -> None:
        """The workers results go to: round trackers, the tree push, and gossip."""
        self._driver, self._exchange, self._bulletin = driver, exchange, bulletin

    # --- this node's rounds -----------------------------------------------------------------------

    async def on_attempt_event(self, context: RoundContext, event: str, fields: dict[str, object]) -> None:
        log.info(event, job=context.job_id, round=context.round, attempt=context.attempt, **fields)
        if event == "client_done" and self._exchange is not None:  # unmasked: the result is due, make sure it comes
            coordinator = election.coordinator(self._book, context.job_id, context.round, context.attempt)
            if coordinator is not None:
                self._exchange.expect(context.job_id, context.round, coordinator)
        if event == "coordinator_aborted":
            self._metrics.rounds_aborted.labels(reason=str(fields.get("phase", "unknown"))).inc()
            await self._store.write(self._store.record_round, RoundRecord(
                context.job_id, context.round, context.attempt, self.me, "aborted", time.time(), ended_at=time.time(),
                abort_reason=str(fields.get("reason"))))

    async def on_coordinated_result(self, result: RoundResult) -> None:
        """This node coordinated a round to the end: store (before announcing), then publish."""
        assert self._exchange is not None and self._bulletin is not None
        context = result.context
        announcement, words = announcement_of(result, self._model_digest(result))
        record = sign_announcement(announcement, self._key, self._membership.certificate)
        try:  # the check every other node makes: a result that fails it would be refused everywhere
            verified = self.verify(open_announcement(record), words, result.votes)
        except RemoteProtocolError as exc:
            log.error("own_result_unverifiable", job=context.job_id, round=context.round, attempt=context.attempt,
                      reason=exc.reason)
            return
        superseded = await self._store_result(verified, record) == "superseded"
        participants = len(result.survivors) + len(result.dropped)
        self._metrics.rounds_completed.inc()
        self._metrics.participation_rate.set(len(result.survivors) / participants)
        self._metrics.round_duration_seconds.observe(sum(result.phase_seconds.values()))
        await self._store.write(self._store.record_round, RoundRecord(
            context.job_id, context.round, context.attempt, self.me, "completed", time.time() - sum(result.phase_seconds.values()),
            participants=result.survivors, dropped=result.dropped, phase_timings=dict(result.phase_seconds), ended_at=time.time()))
        log_round(log, "round_completed", job=context.job_id, round=context.round, attempt=context.attempt,
                  coordinator=self.me, participants=result.survivors, phase_timings=result.phase_seconds,
                  dropped=len(result.dropped))
        if superseded:  # an earlier attempt of this round completed too, and its result is the round's
            log.info("result_superseded", job=context.job_id, round=context.round, attempt=context.attempt)
            return
        self._exchange.push(verified, record)
        await self._bulletin.publish(record, "result")

    def _model_digest(self, result: RoundResult) -> bytes:
        """A training round's coordinator signs the digest of the model its sum produces."""
        job = self._book.jobs.get(result.context.job_id)
        training = self._book.training
        if job is None or job.spec.training is None or training is None:
            return b""
        return training.digest_after(job, result.context.round, result.aggregate, len(result.survivors))

    # --- others' results --------------------------------------------------------------------------

    def _result_job(self, body: ResultAnnouncement, author: bytes) -> tuple[Job, list[bytes]]:
        """The job and roster a result claims a round of, if that round has opened by this node's clock
        (less one phase timeout for clock skew); raises RemoteProtocolError naming the reason."""
        job = self._book.jobs.get(body.job_id)
        roster = self._book.round_members(body.job_id)
        if job is None or roster is None:
            raise RemoteProtocolError(author, "result", f"job {body.job_id!r} or its roster is not known here")
        opens_in = job.round_opens_at(body.round) - job.spec.phase_timeout - time.time()
        if opens_in > 0:
            raise RemoteProtocolError(author, "result", f"round {body.round} has not opened (it opens in {opens_in:.0f} s)")
        return job, roster

    def plausible(self, body: ResultAnnouncement, author: bytes) -> bool:
        """A gossiped result claim worth fetching the aggregate for: its round has opened and its author
        is the attempt's elected coordinator, with a participant list the job allows. Refusals are logged
        and counted (a wrong author as a failed authentication)."""
        try:
            job, roster = self._result_job(body, author)
            check_claim(job.spec, roster, body, author)
            return True
        except RemoteProtocolError as exc:
            if isinstance(exc, AuthenticationError):
                self._metrics.failed_authentications.inc()
            else:
                self._metrics.malformed_messages.labels(kind="result").inc()
            log.warning("result_claim_rejected", job=body.job_id, round=body.round, attempt=body.attempt,
                        author=author.hex()[:16], reason=exc.reason)
            return False

    def verify(self, signed: SignedAnnouncement, words: bytes, votes: tuple[bytes, ...]) -> VerifiedResult:
        """A result (this node's own or another's) that proves its round ran: see protocol/evidence.py.
        Raises RemoteProtocolError naming the reason; the result exchange logs and counts it."""
        body = signed.body
        assert isinstance(body, ResultAnnouncement)
        job, roster = self._result_job(body, signed.author)
        return verify_result(job.spec, roster, body, signed.author, words, votes)

    def roster(self, job_id: str) -> list[bytes] | None:
        return self._book.round_members(job_id)

    def held_attempt(self, job_id: str, round_number: int) -> int | None:
        return self._store.result_attempt(job_id, round_number)

    def attempt_window(self, job_id: str) -> float:
        job = self._book.jobs.get(job_id)
        return job.spec.attempt_window if job is not None else 0.0

    def stored(self, job_id: str, round_number: int) -> tuple[bytes, bytes, tuple[bytes, ...]] | None:
        """The coordinator's signed announcement, the aggregate and the votes, as this node stored them."""
        found = self._store.get_result(job_id, round_number)
        return None if found is None else (found.signed_announcement, found.aggregate, found.votes)

    async def keep(self, result: VerifiedResult, record: bytes) -> None:
        """A result from another node that the exchange verified (`verify`)."""
        body, author = result.announcement, result.coordinator
        try:
            if await self._store_result(result, record) != "stored":
                return
        except StoreError as exc:  # the coordinator signed two different results for one attempt
            self._metrics.failed_authentications.inc()
            raise RemoteProtocolError(author, "result", str(exc)) from None
        # The coordinator's round history, so `villagectl rounds` shows every round on every node
        # (timings are the coordinator's word: keep only plausible ones).
        timings = {phase: seconds for phase, seconds in body.phase_seconds.items() if 0.0 <= seconds <= 86_400.0}
        ended = time.time()
        await self._store.write(self._store.record_round, RoundRecord(
            body.job_id, body.round, body.attempt, author, "completed", ended - sum(timings.values()),
            participants=body.survivors, dropped=body.dropped, phase_timings=timings, ended_at=ended))
        log_round(log, "result_stored", job=body.job_id, round=body.round, attempt=body.attempt, coordinator=author,
                  participants=body.survivors, phase_timings=body.phase_seconds, dropped=len(body.dropped))

    async def _store_result(self, result: VerifiedResult, record: bytes) -> str:
        """Store a result that passed `verify` (the type says so): kept if it is the round's first, or
        of a lower attempt than the one stored (`Store.put_result`)."""
        announcement = result.announcement
        stored = await self._store.write(self._store.put_result, ResultRecord(
            job_id=announcement.job_id, round=announcement.round, attempt=announcement.attempt,
            coordinator=result.coordinator, aggregate=result.aggregate, participants=announcement.survivors,
            dropped=announcement.dropped, signed_announcement=record, received_at=time.time(), votes=result.votes,
        ))
        if stored == "stored":
            self._export_prior_metrics(announcement.job_id)
            job = self._book.jobs.get(announcement.job_id)
            if job is not None and job.spec.training is not None and self._book.training is not None:
                self._book.training.check_announced(job, announcement.round, announcement.model_digest)
        if self._driver is not None:
            tracker = self._driver.tracker(announcement.job_id, announcement.round)
            tracker.result = True
            tracker.changed()
        return stored

    def _export_prior_metrics(self, job_id: str) -> None:
        """After a routing-priors round: the spec's validation metrics as gauges."""
        job = self._book.jobs.get(job_id)
        if job is None or job.spec.kind != "routing-priors":
            return
        validation = prior_validation(job, self._store)
        if validation is not None:
            self._metrics.prior_stability.set(validation["stability_score"])
            self._metrics.model_diversity.set(validation["diversity_score"])
            self._metrics.convergence_rate.set(validation["convergence_rate"])
