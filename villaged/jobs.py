"""Jobs on one node: what it knows of each job, who joined, what it contributes, and when rounds run.

`JobBook` is the node's view (backed by the store) and answers the round driver's questions
(`RoundDirectory`). `run_job` is the per-job loop. Members join until the job's start; then the
job's creator freezes the **roster** (the members that joined) and announces it, and every
election of every round ranks that roster, so all nodes name the same coordinator however
unevenly the join announcements reached them. The creator matters only at that moment: a job
whose creator is gone before the start never gets a roster and fails with that reason.

Every round opens at the same wall-clock time on every node (start + roster grace +
r * round_interval, or when the previous round ends); the elected coordinator of attempt 0
invites, and when an attempt fails (coordinator silent, aborted, or no invite within one phase
timeout) every node moves to the next attempt, whose coordinator is the next roster member in
the election ranking.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
import trio

from protocol.attempts import ROUND_WINDOWS, AttemptBegun, AttemptFailed, FetchResult, RoundAttempts, WakeAt
from protocol.dp import add_noise, clip_l2, sample_discrete_gaussian
from protocol.election import capped_roster
from protocol.errors import ParameterError, ProtocolError
from protocol.invites import InviteTerms
from protocol.masking import member_set_digest
from protocol.jobs import JobSpec
from protocol.kinds import KINDS, InputError, quantize_input
from protocol.policy import DEFAULT_PARTICIPANT_FLOOR, InputPolicy
from protocol.schedule import CATCH_UP, round_opens_at
from protocol.schedule import arrives_late as late_by_schedule
from protocol.wire import RoundContext
from villaged.metrics import Metrics
from villaged.rounds import RoundDriver
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
        self._encoded: dict[str, tuple[float, np.ndarray]] = {}  # active job id -> (input version, encoded input)
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
        return self.jobs.forget_ended(now)

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

    def check_input(self, job: Job) -> np.ndarray:
        """This node's float input for `job` (read-only); raises InputError saying what is wrong with it.

        Encoded once per version of the local input: parsing and checking 100,000 JSON numbers
        takes about 0.1 s, and every invite and every coordinator's headcount asks for it."""
        version = self._store.local_input_version(job.spec.data)
        cached = self._encoded.get(job.id)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        local = self._store.get_local_input(job.spec.data)
        if local is None:
            raise InputError(job.spec.data, "no local input by that name (put it with `villagectl data put`)")
        vector = KINDS[job.spec.kind].encode(job.spec, local.payload)
        vector.setflags(write=False)
        self._encoded[job.id] = (local.updated_at, vector)
        return vector

    def policy_refusal(self, job: Job) -> str | None:
        """Why this node's input policy forbids `job` to use its input (None: it may)."""
        policy = self._store.get_input_policy(job.spec.data)
        return policy.refusal(job.id, job.spec, job.creator, self.participant_floor)

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

    def record_spent(self, context: RoundContext) -> None:
        """Commit that this node's masked input goes into this attempt (before it leaves)."""
        self._store.record_spent(context.job_id, context.round, context.attempt, time.time())

    def _unchanged_input(self, job: Job) -> tuple[str, float] | None:
        """(name, version) of the job's input when it may be summed only over one survivor set per version:
        always, unless the job adds DP noise (fresh per release) or the input's policy allows repeats."""
        if job.spec.privacy is not None or self.input_policy(job).repeat == "allow":
            return None
        version = self._store.local_input_version(job.spec.data)
        return None if version is None else (job.spec.data, version)

    def same_survivors_as(self, job_id: str) -> bytes | None:
        """The survivor set this node's unchanged input was signed over before, if it must be again."""
        job = self.jobs.get(job_id)
        used = None if job is None else self._unchanged_input(job)
        return None if used is None else self._store.input_survivors(*used)

    def record_signed_survivors(self, context: RoundContext, survivors: frozenset[bytes]) -> None:
        """Commit the survivor set this node's input is signed over (before the signature leaves)."""
        job = self.jobs.get(context.job_id)
        used = None if job is None else self._unchanged_input(job)
        if used is not None:
            self._store.record_input_use(*used, member_set_digest(survivors))

    def _joined_and_active(self, job: Job) -> bool:
        return self.me in job.members and job.state not in ("cancelled", "failed", "completed")

    def contributes(self, job: Job) -> bool:
        """Whether this node would put an input into the job's rounds (without computing it)."""
        if not self._joined_and_active(job) or self.policy_refusal(job) is not None or not self.budget_allows_round(job):
            return False
        try:
            self.check_input(job)
        except InputError:
            return False
        return True

    def client_input(self, job_id: str) -> np.ndarray | None:
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



def wall_deadline(wall_time: float) -> float:
    """A trio deadline for a wall-clock time (trio's clock is monotonic, jobs are scheduled in wall time)."""
    return trio.current_time() + max(0.0, wall_time - time.time())


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
    """Run every remaining round of `job` on this node until done or cancelled."""
    if job.state == "pending":
        await trio.sleep_until(wall_deadline(job.start_at))
        if job.creator == book.me and job.roster is None:
            book.set_roster(job.id, capped_roster(job.id, (m for m in job.members if book.is_member(m)),
                                                  job.spec.max_participants))
            await hooks.announce_roster(job)
        with trio.move_on_at(wall_deadline(job.start_at + job.spec.attempt_window)):
            await job.roster_known.wait()
        if job.state != "pending":
            return
        if job.roster is None:
            book.finish(job.id, "no roster from the job's creator by the start (is the creator down?)", "failed")
            return
        if len(job.roster) < job.spec.min_participants:
            book.finish(job.id, f"only {len(job.roster)} members joined before the start, "
                                f"the job needs {job.spec.min_participants}", "failed")
            return
        book.set_state(job.id, "running")
        resumed = False
    else:
        resumed = job.state == "running"  # this node was restarted while the job ran
    previous_end: float | None = None  # when the last round this node took part in or observed ended here
    for round_number in range(job.spec.rounds):
        if job.state != "running":
            return
        if hooks.has_result(job.id, round_number):
            continue
        late = arrives_late(job, round_number, time.time(), resumed=resumed, previous_end=previous_end)
        if late:  # said, so that a wait for a result shows in the log (issue 18's 14 s waits did not)
            log.info("round_catch_up", job=job.id, round=round_number, restarted=resumed)
        if late and await catch_up(job, round_number, hooks, keep_asking=resumed):
            continue  # this node was away when the round ran (a restart): the others have its result
        resumed = False
        if not book.budget_allows_round(job):
            log.info("privacy_budget_used", job=job.id, round=round_number)
            view = book.privacy_view(job) or {}
            book.finish(job.id, f"privacy budget used: epsilon {view.get('epsilon_spent')} of {view.get('budget_epsilon')} "
                                f"spent, round {round_number} of {job.spec.rounds} not started")
            return
        if round_number > 0:  # the previous round is over here: its handshakes no longer slow it down
            hooks.connect_ahead(job, round_number)
        await trio.sleep_until(wall_deadline(job.round_opens_at(round_number)))
        if not job.spec.round_interval:  # back to back, the next round has no gap to dial in: dial during this one
            hooks.connect_ahead(job, round_number + 1)
        if book.me in (job.roster or ()):
            outcome = await _run_round(job, round_number, book, driver, store, hooks)
        else:
            outcome = await observe_round(job, round_number, hooks)
        if outcome != "completed" and await hooks.fetch_result(job, round_number):
            outcome = "completed"  # the round ended without this node, and its result is here now
        previous_end = time.time()
        await hooks.on_round_end(job, round_number, outcome)
        # Keep this round's machines until the next one ends: stragglers' late frames get an answer.
        driver.forget_round(job.id, round_number - 1)
    if job.state == "running":
        book.set_state(job.id, "completed")
    await trio.sleep(job.spec.phase_timeout)
    driver.forget_round(job.id, job.spec.rounds - 1)


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
            store.record_round(RoundRecord(job.id, round_number, out.context.attempt, out.coordinator, "aborted", started,
                                           ended_at=time.time(), abort_reason=out.reason))
        else:
            return "completed" if out.completed else out.reason
    return f"gave up in attempt {machine.attempt}: the job is {job.state}"


def arrives_late(job: Job, round_number: int, now: float, *, resumed: bool, previous_end: float | None = None) -> bool:
    """Whether this node comes to a round after its invitations went out: a phase timeout after the
    round opened, or at all after it opened for a node back from a restart (in net-100 a node
    restarted 16 s into a round waited the rest of a 30 s phase timeout for an invite that had
    gone out before it started, and only then fetched the result).

    A round opens by the schedule, but no earlier than the previous round ended, when its
    coordinator moves on to it: `previous_end`, when this node saw that round end. Counted from the
    schedule alone, a job with `round_interval` 0 (every round scheduled at the first one's time)
    had every node come "late" to every round from a phase timeout in, and each waited out
    `catch_up`'s 14 s for a result nobody was computing (issue 18)."""
    return late_by_schedule(job.round_opens_at(round_number), job.spec.phase_timeout, now, resumed=resumed,
                            previous_end=previous_end)


async def catch_up(job: Job, round_number: int, hooks: JobHooks, keep_asking: bool = False) -> bool:
    """Fetch the result of a round that ran while this node was away. Its first requests go out while
    a restarted node is still connecting (and its peers are busy admitting it), so it tries again
    after `CATCH_UP_DELAYS` instead of waiting a whole attempt for a round that is long over.

    A node back from a restart (`keep_asking`) then asks every last delay for one attempt window:
    in net-100 the five nodes of a restarted process had every stream time out for 30-40 s. A node
    that learned of the job after its rounds began does not: when nobody has the result, the
    round may not have run yet, and this node may be needed to run it."""
    if await hooks.fetch_result(job, round_number):
        return True
    backoff = CATCH_UP.for_at_least(job.spec.attempt_window) if keep_asking else CATCH_UP
    asking_since, retries = trio.current_time(), 0
    while (delay := backoff.next_delay(retries, trio.current_time() - asking_since)) is not None:
        await trio.sleep(delay)
        retries += 1
        if hooks.has_result(job.id, round_number) or await hooks.fetch_result(job, round_number):
            return True
    return False


async def observe_round(job: Job, round_number: int, hooks: JobHooks) -> str:
    """A node outside the roster takes no part in the rounds; it only collects their results. The
    result's announcement may never reach it (gossip left it out), so it also asks for the result,
    half a phase timeout after the round opens and then at doubling gaps up to an attempt window."""
    deadline = trio.current_time() + ROUND_WINDOWS * job.spec.attempt_window
    gap = job.spec.phase_timeout / 2
    while trio.current_time() < deadline and job.state == "running":
        with trio.move_on_after(gap):
            while not hooks.has_result(job.id, round_number):
                await trio.sleep(1.0)
        if hooks.has_result(job.id, round_number) or await hooks.fetch_result(job, round_number):
            return "completed"
        gap = min(2 * gap, job.spec.attempt_window)
    return "no result seen (this node is not in the job's roster)"


async def _start_coordinating(
    job: Job, context: RoundContext, machine: RoundAttempts, book: JobBook, driver: RoundDriver, store: Store,
    hooks: JobHooks,
) -> str | None:
    members = book.round_members(job.id) or []
    live = await hooks.reachable([m for m in members if m != book.me])
    participants = machine.participants(live, book.contributes(job))
    if isinstance(participants, str):
        return participants
    try:
        driver.coordinate(context, participants, job.spec.round_params(len(participants)))
    except (ParameterError, ProtocolError) as exc:
        return f"cannot coordinate: {exc}"
    store.record_round(RoundRecord(job.id, context.round, context.attempt, book.me, "running", time.time(),
                                   participants=tuple(participants)))
    return None
