"""Jobs on one node: what it knows of each job, who joined, what it contributes, and when rounds run.

`JobBook` is the node's view (backed by the store) and answers the round driver's questions
(`RoundDirectory`). `run_job` is the per-job runner: it pumps the job's schedule machine
(protocol/schedule.py: roster freeze, round schedule, catch-up, privacy-budget gate, observing)
and, for each round this node takes part in, the round's attempts machine (protocol/attempts.py),
and carries out what they ask for: sleeping, fetching results, coordinating, recording.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
import trio

from protocol.attempts import AttemptBegun, AttemptFailed, FetchResult, RoundAttempts
from protocol.dp import add_noise, clip_l2, sample_discrete_gaussian
from protocol.election import capped_roster
from protocol.errors import ParameterError, ProtocolError
from protocol.invites import InviteTerms
from protocol.masking import member_set_digest
from protocol.jobs import JobSpec
from protocol.kinds import KINDS, InputError, quantize_input
from protocol.policy import DEFAULT_PARTICIPANT_FLOOR, InputPolicy
from protocol.schedule import (
    BudgetSpent, CatchingUp, ConnectAhead, FetchRoundResult, FinishJob, FreezeRoster, JobOutput, JobRunning, JobSchedule,
    RoundEnded, RunRound, WakeAt, round_opens_at,
)
from protocol.wire import RoundContext
from villaged.metrics import Metrics
from villaged.rounds import RoundDriver
from villaged.training import TrainingWorker, check_trainer
from villaged.job_table import RETENTION, JobTable
from villaged.store import JobRecord, JobState, RoundRecord, Store

log = structlog.get_logger("villaged.jobs")



@dataclass
class Job:
    id: str
    spec: JobSpec
    creator: bytes
    created_at: float
    state: JobState
    members: set[bytes] = field(default_factory=set)  # who joined
    roster: tuple[bytes, ...] | None = None  # the creator's frozen member list, once known
    roster_known: trio.Event = field(default_factory=trio.Event)

    @property
    def start_at(self) -> float:
        return self.created_at + self.spec.start_delay

    def round_opens_at(self, round_number: int) -> float:
        return round_opens_at(self.start_at, self.spec, len(self.roster or ()), round_number)


class JobBook:
    """The jobs this node knows, their members, and its own inputs (the round driver's directory)."""

    def __init__(self, store: Store, me: bytes, is_member: Callable[[bytes], bool],
                 participant_floor: int = DEFAULT_PARTICIPANT_FLOOR, metrics: Metrics | None = None,
                 retention: float = RETENTION) -> None:
        self._store = store
        self.metrics = metrics or Metrics()
        self.me = me
        self._is_member = is_member
        self.participant_floor = participant_floor  # fewest participants a round with this node's input may have
        self.jobs = JobTable(store, self._load, retention)
        self._encoded: dict[str, tuple[float, Any]] = {}  # active job id -> (input version, encoded input)
        self.training: TrainingWorker | None = None  # set by the node when it wires its workers
        now = time.time()
        for record in store.list_jobs():
            ended = record.state not in ("pending", "running")
            if not ended or now - record.updated_at <= retention:
                self.jobs.hold(self._load(record), record.updated_at if ended else None)

    def _load(self, record: JobRecord) -> Job:
        job = Job(record.id, JobSpec.from_dict(record.spec), record.creator, record.created_at, record.state)
        job.members = set(self._store.job_members(record.id))
        if record.roster is not None:
            job.roster = record.roster
            job.roster_known.set()
        return job

    def add_job(self, job_id: str, spec: JobSpec, creator: bytes, created_at: float) -> Job | None:
        """Remember a job; returns it if it was new (not held, nor in the store)."""
        if job_id in self.jobs:
            return None
        record = JobRecord(job_id, spec.to_dict(), creator, "pending", created_at, time.time())
        self._store.put_job(record)
        job = self._load(record)
        self.jobs.hold(job)
        return job

    def active_jobs(self) -> list[Job]:
        """The jobs that are pending or running (what the periodic scans look at)."""
        return self.jobs.active()

    def forget_ended(self, now: float) -> list[str]:
        """Let go of the jobs that ended more than the retention window ago (they stay in the store);
        returns their ids, for the caches keyed by job elsewhere."""
        forgotten = self.jobs.forget_ended(now)
        if self.training is not None:
            for job_id in forgotten:
                self.training.timings.pop(job_id, None)
        return forgotten

    def add_member(self, job_id: str, member: bytes) -> bool:
        job = self.jobs.get(job_id)
        if job is None or member in job.members:
            return False
        job.members.add(member)
        self._store.add_job_member(job_id, member, time.time())
        return True

    def set_roster(self, job_id: str, members: tuple[bytes, ...]) -> bool:
        """Fix a job's roster (first announcement wins; it is signed by the creator). True if new."""
        job = self.jobs.get(job_id)
        if job is None or job.roster is not None:
            return False
        if len(members) > job.spec.max_participants:
            log.warning("roster_refused", job=job_id, members=len(members), max_participants=job.spec.max_participants)
            return False
        self._store.set_roster(job_id, members)
        job.roster = members
        job.roster_known.set()
        return True

    def set_state(self, job_id: str, state: JobState) -> None:
        job = self.jobs[job_id]
        job.state = state
        now = time.time()
        self._store.set_job_state(job_id, state, now)
        self._ended(job_id, state, now)

    def _ended(self, job_id: str, state: JobState, now: float) -> None:
        if state not in ("pending", "running"):
            self.jobs.ended(job_id, now)
            self._encoded.pop(job_id, None)  # an ended job takes no input
            if self.training is not None:
                self.training.forget(job_id)

    def check_input(self, job: Job) -> Any:
        """This node's input for `job` as its kind reads it (protocol/kinds.py: the float vector, read-only,
        or a training job's local data set); raises InputError saying what is wrong with it.

        Encoded once per version of the local input: parsing and checking 100,000 JSON numbers
        takes about 0.1 s, and every invite and every coordinator's headcount asks for it."""
        version = self._store.local_input_version(job.spec.data)
        cached = self._encoded.get(job.id)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        local = self._store.get_local_input(job.spec.data)
        if local is None:
            raise InputError(job.spec.data, "no local input by that name (put it with `villagectl data put`)")
        kind = KINDS[job.spec.kind]
        encoded = kind.encode(job.spec, local.payload)
        if kind.per_round:
            try:
                check_trainer(job)
            except ParameterError as exc:
                raise InputError(exc.field, exc.reason) from None
        else:
            encoded.setflags(write=False)
        self._encoded[job.id] = (local.updated_at, encoded)
        return encoded

    def policy_refusal(self, job: Job) -> str | None:
        """Why this node's input policy forbids `job` to use its input (None: it may)."""
        policy = self._store.get_input_policy(job.spec.data)
        return policy.refusal(job.id, job.spec, job.creator, self.participant_floor)

    def requirement_refusal(self, job: Job) -> str | None:
        """Why this node does not meet a training job's participant requirements (None: it does)."""
        if job.spec.training is None or self.training is None:
            return None
        return job.spec.training.requirements.unmet(self.training.capabilities)

    def contribution_floor(self, job: Job) -> int:
        """The fewest participants a round of `job` may have for this node to put its input in:
        the node's floor, raised by the input's own policy."""
        return self._store.get_input_policy(job.spec.data).min_for(self.participant_floor)

    def input_policy(self, job: Job) -> InputPolicy:
        return self._store.get_input_policy(job.spec.data)

    # --- RoundDirectory ---------------------------------------------------------------------------

    def is_member(self, member: bytes) -> bool:
        return self._is_member(member)

    def round_members(self, job_id: str) -> list[bytes] | None:
        """The job's roster, the electorate of every round; None until the roster is known.

        Every node ranks exactly this list, whatever certificates it has learned so far, so all name
        the same coordinator. Who is *invited* is decided by reachability and valid certificates."""
        job = self.jobs.get(job_id)
        if job is None or job.roster is None:
            return None
        return sorted(job.roster)

    async def wait_for_roster(self, job_id: str, timeout: float) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        with trio.move_on_after(timeout):
            await job.roster_known.wait()
        return job.roster is not None

    def invite_terms(self, job_id: str, round_number: int, local_attempt: int) -> InviteTerms | None:
        """What an invitation to the round must match (protocol/invites.py); None until the roster is known."""
        job = self.jobs.get(job_id)
        if job is None or job.roster is None:
            return None
        return InviteTerms(job.spec, sorted(job.roster), job.round_opens_at(round_number), self.contribution_floor(job),
                           local_attempt, self._store.spent_attempt(job_id, round_number), self.budget_allows_round(job))

    def spent_attempt(self, job_id: str, round_number: int) -> int | None:
        return self._store.spent_attempt(job_id, round_number)

    async def record_spent(self, context: RoundContext) -> None:
        """Commit that this node's masked input goes into this attempt (before it leaves)."""
        await self._store.write(self._store.record_spent, context.job_id, context.round, context.attempt, time.time())

    def _unchanged_input(self, job: Job) -> tuple[str, float] | None:
        """(name, version) of the job's input when it may be summed only over one survivor set per version:
        always, unless the job adds DP noise (fresh per release) or the input's policy allows repeats."""
        if job.spec.privacy is not None or KINDS[job.spec.kind].per_round or self.input_policy(job).repeat == "allow":
            return None  # (a training job's vector is an update of each round's new model, never the same)
        version = self._store.local_input_version(job.spec.data)
        return None if version is None else (job.spec.data, version)

    def same_survivors_as(self, job_id: str) -> bytes | None:
        """The survivor set this node's unchanged input was signed over before, if it must be again."""
        job = self.jobs.get(job_id)
        used = None if job is None else self._unchanged_input(job)
        return None if used is None else self._store.input_survivors(*used)

    async def record_signed_survivors(self, context: RoundContext, survivors: frozenset[bytes]) -> None:
        """Commit the survivor set this node's input is signed over (before the signature leaves)."""
        job = self.jobs.get(context.job_id)
        used = None if job is None else self._unchanged_input(job)
        if used is not None:
            await self._store.write(self._store.record_input_use, *used, member_set_digest(survivors))

    def _joined_and_active(self, job: Job) -> bool:
        return self.me in job.members and job.state not in ("cancelled", "failed", "completed")

    def contributes(self, job: Job, round_number: int | None = None) -> bool:
        """Whether this node would put an input into the job's rounds (into `round_number`'s, if given:
        a training job's input must have been prepared for it), without computing it."""
        if not self._joined_and_active(job) or self.policy_refusal(job) is not None or not self.budget_allows_round(job):
            return False
        try:
            self.check_input(job)
        except InputError:
            return False
        if KINDS[job.spec.kind].per_round and round_number is not None:
            return self.training is not None and self.training.prepared(job, round_number)
        return True

    async def try_out_training(self, job: Job) -> None:
        """A training job this node takes part in: try its trainer on the local data before round 0."""
        if not KINDS[job.spec.kind].per_round or self.training is None or not self._joined_and_active(job):
            return
        try:
            data = self.check_input(job)
        except InputError:
            return
        await self.training.try_out(job, data)

    async def prepare_round(self, job: Job, round_number: int) -> None:
        """A training job's contribution to the round, trained before its invite (no-op for other kinds)."""
        if not KINDS[job.spec.kind].per_round or self.training is None or not self._joined_and_active(job):
            return
        try:
            data = self.check_input(job)
        except InputError as exc:
            log.warning("input_unusable", job=job.id, reason=str(exc))
            return
        await self.training.prepare(job, round_number, data)

    async def client_input(self, job_id: str, round_number: int) -> np.ndarray | None:
        job = self.jobs.get(job_id)
        if job is None or not self._joined_and_active(job):
            return None
        refusal = self.policy_refusal(job)
        if refusal is not None:
            log.warning("input_refused", job=job_id, input=job.spec.data, reason=refusal)
            self.metrics.input_refusals.labels(stage="round").inc()
            return None
        if not self.budget_allows_round(job):  # no noisy vector is made, let alone sent
            log.warning("input_refused", job=job_id, input=job.spec.data, reason="privacy budget spent")
            self.metrics.input_refusals.labels(stage="budget").inc()
            return None
        try:
            values = self.check_input(job)
        except InputError as exc:
            log.warning("input_unusable", job=job_id, reason=str(exc))
            return None
        if KINDS[job.spec.kind].per_round:
            if self.training is None:
                return None
            values = await self.training.contribution(job, round_number, PREPARED_WAIT_SHARE * job.spec.phase_timeout)
            if values is None:
                return None
        plan = job.spec.noise_plan()
        if plan is not None:
            values = clip_l2(values, plan.l2_clip)
        words = quantize_input(job.spec, values, rounding_seed=os.urandom(32))
        if plan is not None:  # this client's share of the distributed DP noise, fresh per attempt
            noise = sample_discrete_gaussian(plan.sigma, len(words), os.urandom)
            words = add_noise(words, noise, job.spec.quantization.bits)
        return words

    # --- privacy budget (jobs with a `privacy` section) --------------------------------------------
    # A release is a round whose sum may hold this node's noisy input: every round its masked input
    # left in, counted from the store's record made before it left (`record_spent`).

    def privacy_releases(self, job_id: str) -> int:
        return self._store.spent_count(job_id)

    def privacy_view(self, job: Job) -> dict[str, object] | None:
        plan = job.spec.noise_plan()
        return None if plan is None else plan.view(self.privacy_releases(job.id))

    def budget_allows_round(self, job: Job) -> bool:
        """False when one more release would spend more than the job's privacy budget."""
        plan = job.spec.noise_plan()
        return plan is None or plan.spent(self.privacy_releases(job.id) + 1) <= plan.budget_epsilon

    def end_reason(self, job_id: str) -> str | None:
        record = self._store.get_job(job_id)
        return None if record is None else record.end_reason

    def finish(self, job_id: str, reason: str, state: JobState = "completed") -> None:
        """End a job, remembering why it ended before its last round."""
        job = self.jobs[job_id]
        job.state = state
        now = time.time()
        self._store.end_job(job_id, state, reason, now)
        self._ended(job_id, state, now)



#: Of an invite's phase timeout, how long an invited node waits for its training to finish.
PREPARED_WAIT_SHARE = 0.6

#: How often a node waiting for a round's result (catching up, observing) looks at its store: the
#: result's announcement or push stores it without waking the job's task.
RESULT_LOOK_INTERVAL = 1.0


@dataclass(frozen=True)
class JobHooks:
    """What the job loop needs from the daemon (network and storage), as plain callables."""

    reachable: Callable[[list[bytes]], Awaitable[set[bytes]]]  # which of these members answer now
    has_result: Callable[[str, int], bool]
    fetch_result: Callable[[Job, int], Awaitable[bool]]  # ask peers for a result this node missed
    on_round_end: Callable[[Job, int, str], Awaitable[None]]
    announce_roster: Callable[[Job], Awaitable[None]]
    connect_ahead: Callable[[Job, int], None]  # members connect early to a round's elected coordinator


async def run_job(job: Job, book: JobBook, driver: RoundDriver, store: Store, hooks: JobHooks) -> None:
    """Run every remaining round of `job` on this node until done or cancelled: pump the job's
    schedule machine (protocol/schedule.py) and carry out its outputs.

    The machine is given wall time read from trio's clock (the wall time when the runner started plus
    trio time since), so that jobs scheduled in wall time also run under a test's MockClock."""
    wall0, trio0 = time.time(), trio.current_time()

    def now() -> float:
        return wall0 + trio.current_time() - trio0

    machine = JobSchedule(job.id, job.spec, job.creator, job.start_at, book.me, job.state, job.roster)

    def synced() -> JobSchedule:
        """The machine, told what changed outside it: the roster, who joined, stored results, the budget."""
        if job.roster is not None:
            machine.roster_learned(job.roster)
        elif job.creator == book.me:
            machine.joined(m for m in job.members if book.is_member(m))
        next_round = machine.round
        while next_round < job.spec.rounds and hooks.has_result(job.id, next_round):
            machine.result_stored(next_round)
            next_round += 1
        machine.budget_left = book.budget_allows_round(job)
        return machine

    await book.try_out_training(job)
    outputs: deque[JobOutput] = deque()
    finished = False  # this node ended the job: it lingers for stragglers, whatever its state
    while outputs or not machine.done:
        if not finished and job.state not in ("pending", "running"):
            return  # cancelled, or ended by another part of the node
        if not outputs:
            outputs.extend(synced().poll(now()))
            if not outputs and not machine.done:
                raise RuntimeError(f"job {job.id}: the schedule has nothing to do and is not done (a bug)")
            continue
        out = outputs.popleft()
        if isinstance(out, WakeAt):
            await _wait(job, machine, hooks, trio0 + out.at - wall0)
        elif isinstance(out, FreezeRoster):
            book.set_roster(job.id, out.members)
            await hooks.announce_roster(job)
        elif isinstance(out, JobRunning):
            book.set_state(job.id, "running")
        elif isinstance(out, FinishJob):
            finished = True
            if out.reason is not None:
                book.finish(job.id, out.reason, out.state)
            elif job.state == "running":
                book.set_state(job.id, out.state)
        elif isinstance(out, BudgetSpent):
            finished = True
            log.info("privacy_budget_used", job=job.id, round=out.round)
            view = book.privacy_view(job) or {}
            book.finish(job.id, f"privacy budget used: epsilon {view.get('epsilon_spent')} of {view.get('budget_epsilon')} "
                                f"spent, round {out.round} of {job.spec.rounds} not started")
        elif isinstance(out, ConnectAhead):
            hooks.connect_ahead(job, out.round)
        elif isinstance(out, CatchingUp):  # said, so that a wait for a result shows in the log (issue 18's 14 s waits did not)
            log.info("round_catch_up", job=job.id, round=out.round, restarted=out.restarted)
        elif isinstance(out, FetchRoundResult):
            found = await hooks.fetch_result(job, out.round)
            outputs.extend(synced().fetched(out.round, found, now()))
        elif isinstance(out, RunRound):
            if KINDS[job.spec.kind].per_round and out.round > 0 and not hooks.has_result(job.id, out.round - 1):
                await hooks.fetch_result(job, out.round - 1)  # the round's model follows from the last result
            await book.prepare_round(job, out.round)
            outcome = await _run_round(job, out.round, book, driver, store, hooks)
            outputs.extend(synced().round_done(out.round, outcome == "completed", outcome, now()))
        elif isinstance(out, RoundEnded):
            await hooks.on_round_end(job, out.round, out.outcome)
        else:  # ForgetRound: this round's machines answered stragglers' late frames until the next one ended
            driver.forget_round(job.id, out.round)


async def _wait(job: Job, machine: JobSchedule, hooks: JobHooks, deadline: float) -> None:
    """Sleep until the trio `deadline`, or until what the machine waits for may have come: the
    roster, or the result of the round it catches up on or observes."""
    with trio.move_on_at(deadline):
        if job.roster is None:
            await job.roster_known.wait()
        elif machine.awaits_result:
            while not hooks.has_result(job.id, machine.round):
                await trio.sleep(RESULT_LOOK_INTERVAL)
        else:
            await trio.sleep_forever()


async def _run_round(job: Job, round_number: int, book: JobBook, driver: RoundDriver, store: Store, hooks: JobHooks) -> str:
    """Pump the round's attempts machine (protocol/attempts.py) until the round is over here;
    returns "completed" or the reason it was given up."""
    tracker = driver.tracker(job.id, round_number)
    machine = tracker.machine
    outputs = deque(machine.start(trio.current_time()))
    started = time.time()
    while job.state == "running":
        if not outputs:
            if hooks.has_result(job.id, round_number):
                machine.result_stored()
            outputs.extend(machine.poll(trio.current_time()))
            continue
        out = outputs.popleft()
        if isinstance(out, WakeAt):
            await tracker.wait_until(out.at)
        elif isinstance(out, AttemptBegun):
            started = time.time()
            if out.coordinating:
                refusal = await _start_coordinating(job, out.context, machine, book, driver, store, hooks)
                if refusal is not None:
                    machine.coordination_refused(refusal)
        elif isinstance(out, FetchResult):  # the round may have finished without this node
            found = await hooks.fetch_result(job, round_number)
            outputs.extend(machine.fetched(found, trio.current_time()))
        elif isinstance(out, AttemptFailed):
            await store.write(store.record_round, RoundRecord(job.id, round_number, out.context.attempt, out.coordinator,
                                                              "aborted", started, ended_at=time.time(), abort_reason=out.reason))
        else:
            return "completed" if out.completed else out.reason
    return f"gave up in attempt {machine.attempt}: the job is {job.state}"


async def _start_coordinating(
    job: Job, context: RoundContext, machine: RoundAttempts, book: JobBook, driver: RoundDriver, store: Store,
    hooks: JobHooks,
) -> str | None:
    members = book.round_members(job.id) or []
    live = await hooks.reachable([m for m in members if m != book.me])
    participants = machine.participants(live, book.contributes(job, context.round))
    if isinstance(participants, str):
        return participants
    try:
        await driver.coordinate(context, participants, job.spec.round_params(len(participants)))
    except (ParameterError, ProtocolError) as exc:
        return f"cannot coordinate: {exc}"
    await store.write(store.record_round, RoundRecord(job.id, context.round, context.attempt, book.me, "running", time.time(),
                                                      participants=tuple(participants)))
    return None
