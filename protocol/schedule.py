"""The rules of one job on one node: a sans-IO machine per job that says when each round runs.

1. **Roster freeze.** Members join until the job's start; then the creator freezes the roster
   (`protocol.election.capped_roster`) and announces it. Every node waits one attempt window
   past the start for it; a job without a roster, or with fewer members than `min_participants`,
   fails naming why.
2. **Schedule.** Round r opens at start + roster grace + r x round_interval, and never earlier on
   this node than the previous round ended here: back to back (`round_interval` 0) every round is
   "scheduled" at round 0's time, and counting from the schedule alone made every node take itself
   to be late for every round from a phase timeout in (issue 18's 14 s stalls).
3. **Catch-up.** A node that comes to a round after its invitations went out (a phase timeout
   after it opened, or at all after it opened for a node back from a restart) asks its peers for
   the result first, at the `CATCH_UP` backoff; a restarted node keeps asking for an attempt window.
4. **Privacy budget.** A round that would spend more than the job's budget is not started: the
   job ends, naming the round.
5. **Members and observers.** A roster member takes part in the round (the round's attempts
   machine, `protocol/attempts.py`); any other node observes it, asking for its result at gaps
   doubling from half a phase timeout up to an attempt window.

The machine is given wall-clock readings (`now`) and answers with outputs the runner carries out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from protocol.attempts import ROUND_WINDOWS, WakeAt
from protocol.backoff import Backoff
from protocol.election import capped_roster
from protocol.errors import LocalProtocolError
from protocol.jobs import JobSpec

#: Rounds open this long (plus this much per roster member) after the roster is announced, so
#: that it reaches every member first and the members can connect to round 0's coordinator. With
#: 300 members (15 processes on 2 cores) handing the 83 KB roster down the tree, admitting its
#: certificates and dialing round 0's coordinator kept both cores busy for about 40 s.
ROSTER_GRACE = 2.0
ROSTER_GRACE_PER_MEMBER = 0.15
#: A restarted node's requests for a round it missed: its first ones go out while it is still
#: connecting (and its peers are busy admitting it), so it tries again soon.
CATCH_UP = Backoff((2.0, 4.0, 8.0))


def round_opens_at(start_at: float, spec: JobSpec, roster_size: int, round_number: int) -> float:
    """Wall time round `round_number` opens by the job's schedule."""
    grace = ROSTER_GRACE + ROSTER_GRACE_PER_MEMBER * roster_size
    return start_at + grace + round_number * spec.round_interval


def arrives_late(opens_at: float, phase_timeout: float, now: float, *, resumed: bool,
                 previous_end: float | None = None) -> bool:
    """Whether this node comes to a round after its invitations went out: a phase timeout after the
    round opened (no earlier than `previous_end`, when the previous round ended here), or at all
    after it opened for a node back from a restart (in net-100 a node restarted 16 s into a round
    waited the rest of a 30 s phase timeout for an invite that had gone out before it started)."""
    opened = max(opens_at, previous_end or 0.0)
    return now > opened + (0.0 if resumed else phase_timeout)


def observe_backoff(spec: JobSpec) -> Backoff:
    """An observer's fetches: half a phase timeout after the round opens, then doubling gaps up to
    an attempt window, for `ROUND_WINDOWS` attempt windows."""
    gaps, gap = [], spec.phase_timeout / 2
    while gap < spec.attempt_window:
        gaps.append(gap)
        gap *= 2
    gaps.append(spec.attempt_window)
    return Backoff(tuple(gaps), keep_going_for=ROUND_WINDOWS * spec.attempt_window)


@dataclass(frozen=True, slots=True)
class FreezeRoster:
    """This node created the job: fix the roster to `members` and announce it."""

    members: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class JobRunning:
    """The roster is known and large enough: the job's state becomes running."""


@dataclass(frozen=True, slots=True)
class FinishJob:
    """The job is over on this node: `state` completed or failed, `reason` when it ended early."""

    state: Literal["completed", "failed"]
    reason: str | None


@dataclass(frozen=True, slots=True)
class BudgetSpent:
    """One more release would exceed the job's privacy budget: end the job before `round`."""

    round: int


@dataclass(frozen=True, slots=True)
class ConnectAhead:
    """Connect early to the elected coordinator of `round` (its handshakes then cost no round time)."""

    round: int


@dataclass(frozen=True, slots=True)
class CatchingUp:
    """This node came late to `round` and asks for its result first (logged, so a wait shows)."""

    round: int
    restarted: bool


@dataclass(frozen=True, slots=True)
class FetchRoundResult:
    """Ask peers for `round`'s result; answer with `fetched`."""

    round: int


@dataclass(frozen=True, slots=True)
class RunRound:
    """Take part in `round` (this node is on the roster): run its attempts; answer with `round_done`."""

    round: int


@dataclass(frozen=True, slots=True)
class RoundEnded:
    """`round` is over on this node (`outcome` "completed" or why not); the round before it may be forgotten."""

    round: int
    outcome: str


@dataclass(frozen=True, slots=True)
class ForgetRound:
    """Drop what this node keeps for `round` (its machines answered stragglers until now)."""

    round: int


JobOutput = (FreezeRoster | JobRunning | FinishJob | BudgetSpent | ConnectAhead | CatchingUp | FetchRoundResult
             | RunRound | RoundEnded | ForgetRound | WakeAt)


class _Step(Enum):
    START = "waiting for the start"
    ROSTER = "waiting for the roster"
    NEXT_ROUND = "choosing the next round"
    CATCH_UP = "asking for a missed round's result"
    OPENING = "waiting for the round to open"
    IN_ROUND = "taking part in the round"
    OBSERVING = "observing the round"
    AFTER_ROUND = "asking for the round's result after it ended without one"
    LINGER = "answering stragglers of the last round"
    DONE = "done"


class JobSchedule:
    """One job on one node. `state` is the job's stored state when the machine is built (a node
    restarted while the job ran resumes it: it catches up on the rounds it missed first)."""

    def __init__(self, job_id: str, spec: JobSpec, creator: bytes, start_at: float, me: bytes, state: str,
                 roster: Iterable[bytes] | None = None) -> None:
        self.job_id, self.spec, self.creator, self.start_at, self.me = job_id, spec, creator, start_at, me
        self.roster: tuple[bytes, ...] | None = None if roster is None else tuple(sorted(roster))
        self.results: set[int] = set()  # rounds whose result this node stores
        self.budget_left = True  # False: one more release would exceed the privacy budget
        self.round = 0
        self._resumed = state == "running"
        self._previous_end: float | None = None
        self._retries = 0
        self._asking_since = 0.0
        self._fetching = False
        self._backoff = CATCH_UP
        self._wake = 0.0
        self._joined: tuple[bytes, ...] = ()
        self._outcome = ""
        if state == "pending":
            self._step = _Step.START
        elif state == "running":
            self._step = _Step.NEXT_ROUND
        else:
            self._step = _Step.DONE

    # --- inputs ------------------------------------------------------------------------------------

    def roster_learned(self, members: Iterable[bytes]) -> None:
        if self.roster is None:
            self.roster = tuple(sorted(members))

    def joined(self, members: Iterable[bytes]) -> None:
        """The members that joined (and whose certificates this node accepts), for the creator's freeze."""
        self._joined = tuple(members)

    def result_stored(self, round_number: int) -> None:
        self.results.add(round_number)

    def fetched(self, round_number: int, found: bool, now: float) -> list[JobOutput]:
        """The answer to `FetchRoundResult`."""
        if not self._fetching or round_number != self.round:
            raise LocalProtocolError(f"no fetch of round {round_number} is outstanding")
        self._fetching = False
        if found:
            self.results.add(round_number)
            return self.poll(now)
        out = self._fetch_failed(now) if self._step in (_Step.CATCH_UP, _Step.OBSERVING) else []
        return out + self.poll(now)

    def round_done(self, round_number: int, completed: bool, reason: str, now: float) -> list[JobOutput]:
        """The answer to `RunRound`: how this node's attempts of the round ended."""
        if self._step is not _Step.IN_ROUND or round_number != self.round:
            raise LocalProtocolError(f"round {round_number} is not running")
        if completed:
            self.results.add(round_number)
            return self._round_ended("completed", now)
        self._step, self._outcome = _Step.AFTER_ROUND, reason
        return self._fetch()

    # --- the clock ---------------------------------------------------------------------------------

    def poll(self, now: float) -> list[JobOutput]:
        """What to do now, given every input so far."""
        out: list[JobOutput] = []
        while True:
            step = self._step
            more = self._advance(now)
            out.extend(more)
            if self._step is step:
                return out

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    @property
    def awaits_result(self) -> bool:
        """Whether the machine waits for the current round's result (catching up or observing): a
        stored result is news to poll for before its `WakeAt`."""
        return self._step in (_Step.CATCH_UP, _Step.OBSERVING)

    @property
    def is_member(self) -> bool:
        return self.me in (self.roster or ())

    def opens_at(self, round_number: int) -> float:
        return round_opens_at(self.start_at, self.spec, len(self.roster or ()), round_number)

    # --- internals ---------------------------------------------------------------------------------

    def _advance(self, now: float) -> list[JobOutput]:
        step, spec = self._step, self.spec
        if step is _Step.START:
            if now < self.start_at:
                return [WakeAt(self.start_at)]
            self._step = _Step.ROSTER
            if self.creator == self.me and self.roster is None:
                self.roster = capped_roster(self.job_id, self._joined, spec.max_participants)
                return [FreezeRoster(self.roster)]
            return []
        if step is _Step.ROSTER:
            if self.roster is None:
                if now < self.start_at + spec.attempt_window:
                    return [WakeAt(self.start_at + spec.attempt_window)]
                return self._finish("failed", "no roster from the job's creator by the start (is the creator down?)")
            if len(self.roster) < spec.min_participants:
                return self._finish("failed", f"only {len(self.roster)} members joined before the start, "
                                              f"the job needs {spec.min_participants}")
            self._step = _Step.NEXT_ROUND
            return [JobRunning()]
        if step is _Step.NEXT_ROUND:
            return self._next_round(now)
        if step is _Step.CATCH_UP:
            return self._catch_up(now)
        if step is _Step.OPENING:
            opens = self.opens_at(self.round)
            if now < opens:
                return [WakeAt(opens)]
            self._step = _Step.IN_ROUND if self.is_member else _Step.OBSERVING
            out: list[JobOutput] = [ConnectAhead(self.round + 1)] if not spec.round_interval else []
            if self.is_member:
                return [*out, RunRound(self.round)]
            self._backoff, self._retries, self._asking_since = observe_backoff(spec), 1, now
            self._wake = now + self._backoff.delays[0]
            return out
        if step is _Step.OBSERVING:
            return self._observe(now)
        if step is _Step.AFTER_ROUND:
            if self._fetching:
                return []
            return self._round_ended("completed" if self.round in self.results else self._outcome, now)
        if step is _Step.LINGER:
            if now < self._wake:
                return [WakeAt(self._wake)]
            self._step = _Step.DONE
            return [ForgetRound(spec.rounds - 1)]
        return []  # IN_ROUND: the attempts machine has the round; DONE

    def _next_round(self, now: float) -> list[JobOutput]:
        spec = self.spec
        while self.round < spec.rounds and self.round in self.results:
            self.round += 1
        if self.round >= spec.rounds:
            self._step, self._wake = _Step.LINGER, now + spec.phase_timeout
            return [FinishJob("completed", None)]
        if arrives_late(self.opens_at(self.round), spec.phase_timeout, now, resumed=self._resumed,
                        previous_end=self._previous_end):
            self._step, self._retries, self._asking_since, self._wake = _Step.CATCH_UP, 0, now, now
            self._backoff = CATCH_UP.for_at_least(spec.attempt_window) if self._resumed else CATCH_UP
            return [CatchingUp(self.round, self._resumed), *self._fetch()]
        return self._open()

    def _open(self) -> list[JobOutput]:
        self._resumed = False
        if not self.budget_left:
            self._step = _Step.DONE
            return [BudgetSpent(self.round)]
        self._step = _Step.OPENING
        return [ConnectAhead(self.round)] if self.round > 0 else []

    def _catch_up(self, now: float) -> list[JobOutput]:
        if self._fetching:
            return []
        if self.round in self.results:
            self._step = _Step.NEXT_ROUND
            return []
        return [WakeAt(self._wake)] if now < self._wake else self._fetch()

    def _observe(self, now: float) -> list[JobOutput]:
        if self._fetching:
            return []
        if self.round in self.results:
            return self._round_ended("completed", now)
        return [WakeAt(self._wake)] if now < self._wake else self._fetch()

    def _fetch_failed(self, now: float) -> list[JobOutput]:
        """A catch-up or observer fetch found nothing: wait out the backoff's next delay, or give up."""
        if self._retries == 0 and self._step is _Step.CATCH_UP:  # the backoff counts from the first answer
            self._asking_since = now
        delay = self._backoff.next_delay(self._retries, now - self._asking_since)
        self._retries += 1
        if delay is not None:
            self._wake = now + delay
            return []
        if self._step is _Step.CATCH_UP:  # nobody has it: the round may not have run yet, and this node may be needed
            return self._open()
        return self._round_ended("no result seen (this node is not in the job's roster)", now)

    def _fetch(self) -> list[JobOutput]:
        self._fetching = True
        return [FetchRoundResult(self.round)]

    def _round_ended(self, outcome: str, now: float) -> list[JobOutput]:
        self._previous_end = now
        ended = self.round
        self.round += 1
        self._step = _Step.NEXT_ROUND
        return [RoundEnded(ended, outcome), ForgetRound(ended - 1)] if ended > 0 else [RoundEnded(ended, outcome)]

    def _finish(self, state: Literal["completed", "failed"], reason: str) -> list[JobOutput]:
        self._step = _Step.DONE
        return [FinishJob(state, reason)]
