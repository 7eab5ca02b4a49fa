"""The rules of one round across its attempts, on one node: a sans-IO machine per (job, round).

A round runs as attempts 0, 1, ...; attempt a is coordinated by the a-th member of the round's
election ranking, computed once here. Rules, in the order they apply:

1. **Election.** Every node ranks the frozen roster alike (`protocol/election.py`); attempt a's
   coordinator is ranking[a]; a round has at most one attempt per roster member.
2. **Attempt deadlines.** This node waits one phase timeout for the elected coordinator's invite
   (a whole attempt window when it coordinates), a whole attempt window once invited, and a whole
   attempt window for the result once it unmasked. An attempt that ends without a result makes
   the node ask its peers for the round's result (`FetchResult`) before it moves on.
3. **Invites.** A client answers an invite only if `protocol/invites.py` accepts it against the
   job, and only for a later attempt than the one it is in; an invite for a later attempt
   replaces the earlier attempt (its keys go with it) and moves this node on to it.
4. **One attempt per round (unmask-once).** Before this node's masked input leaves, the machine
   asks for a durable record (`RecordSpent`) and from then on refuses every other attempt of the
   round; a machine built after a restart is given the durable record (`spent_in`).
5. **Lowest completed attempt.** When two attempts of a round complete, every node keeps the
   lower one's result (`keeps_offered_result`), so all converge on one result.

The driver owns the clock: it calls `poll(now)` after every input and whenever a `WakeAt` is due.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

from protocol.election import ranking
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.invites import InviteTerms, attempt_limit, check_invite
from protocol.jobs import JobSpec
from protocol.messages import Invite
from protocol.wire import RoundContext

#: A round is given up after this many attempt windows without a result. Attempts that fail fast
#: (no invite, a coordinator that aborts) cost less than a window, so more of them fit.
ROUND_WINDOWS = 5
#: Why an attempt ended when this node heard nothing of it.
NO_INVITE = "no invite from the elected coordinator"


@dataclass(frozen=True, slots=True)
class AttemptBegun:
    """This node moved on to an attempt; when it is the coordinator it starts coordinating it."""

    context: RoundContext
    coordinator: bytes
    coordinating: bool


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Call `poll` again at `at` (or sooner, on any input): the machine's only timer."""

    at: float


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The attempt ended here without a result: ask peers for the round's; answer with `fetched`."""

    context: RoundContext


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An attempt this node did not coordinate ended without a result (the driver records why)."""

    context: RoundContext
    coordinator: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class RecordSpent:
    """Commit to the store that this node's masked input goes into this attempt, before it leaves."""

    context: RoundContext


@dataclass(frozen=True, slots=True)
class RoundOver:
    """The round is over on this node: with its result stored, or given up (`reason` says why)."""

    completed: bool
    reason: str


AttemptOutput = AttemptBegun | WakeAt | FetchResult | AttemptFailed | RoundOver


class Outcome(Enum):
    """How an attempt ended as this node saw it (its reason, when aborted, is kept beside it)."""

    CLIENT_DONE = "client_done"  # this node unmasked: it waits for the result and takes no other attempt
    FINISHED = "finished"  # this node coordinated it to a result
    ABORTED = "aborted"


class _State(Enum):
    IDLE = "idle"  # the job loop has not begun the round (invites may arrive already)
    WAITING = "waiting"  # in an attempt, until its deadline or an outcome
    FETCHING = "fetching"  # the attempt ended; asking peers for the result
    OVER = "over"


def keeps_offered_result(held_attempt: int | None, offered_attempt: int) -> bool:
    """Whether a node holding `held_attempt`'s result of a round takes another attempt's instead:
    only a lower attempt's, so that every node converges on the lowest completed attempt."""
    return held_attempt is None or offered_attempt < held_attempt


class RoundAttempts:
    """The attempts of one round of one job on this node. `roster` is the job's frozen roster."""

    def __init__(self, job_id: str, round_number: int, roster: Iterable[bytes], me: bytes, spec: JobSpec,
                 spent_in: int | None = None) -> None:
        self.job_id, self.round, self.me, self.spec = job_id, round_number, me, spec
        self.ranking: tuple[bytes, ...] = tuple(ranking(job_id, round_number, roster))  # the round's one election
        self.attempt = 0  # the attempt this node is on
        self.client_attempt: int | None = None  # the attempt this node's client machine is in
        self.spent_in = spent_in  # the attempt this node's masked input went into (durable)
        self.invited: set[int] = set()
        self.outcomes: dict[int, tuple[Outcome, str]] = {}
        self.result = False
        self._state = _State.IDLE
        self._deadline = self._round_deadline = 0.0
        self._extended = False
        self._next_attempt = 0
        self._last_reason = "no attempt made"

    # --- the election ------------------------------------------------------------------------------

    def coordinator(self, attempt: int) -> bytes:
        """The member that coordinates `attempt` of this round."""
        if not 0 <= attempt < len(self.ranking):
            raise LocalProtocolError(f"attempt {attempt} of a round of {len(self.ranking)} roster members")
        return self.ranking[attempt]

    def participants(self, live: Iterable[bytes], me_contributes: bool) -> list[bytes] | str:
        """Whom this node invites when it coordinates: the live roster members (itself if it
        contributes), the best-ranked `max_participants` of them as every node would pick; or why
        it cannot coordinate (too few)."""
        alive = set(live) | {self.me}
        eligible = [m for m in self.ranking if m in alive and (m != self.me or me_contributes)]
        chosen = sorted(eligible[: self.spec.max_participants])
        if len(chosen) < self.spec.min_participants:
            return f"only {len(chosen)} roster members reachable, the job needs {self.spec.min_participants}"
        return chosen

    # --- the client's side -------------------------------------------------------------------------

    def check_invite(self, terms: InviteTerms, context: RoundContext, inviter: bytes, invite: Invite, now: float) -> None:
        """Raise `InviteRefused` naming the first rule a (signature-checked) invitation breaks,
        judged with this node's own attempt and spent record."""
        check_invite(replace(terms, local_attempt=self.attempt, spent_in=self.spent_in), context, inviter, invite, now)

    def take_invite(self, inviter: bytes, attempt: int) -> int | None:
        """Enter `attempt` as a client (its invite passed `check_invite`); returns the earlier
        attempt it replaces, whose machine the driver closes. Refuses a stale or repeated invite."""
        current = self.client_attempt
        if current is not None and current >= attempt:
            raise RemoteProtocolError(inviter, "invite", f"stale or repeated invite (attempt {current} is active)")
        self.client_attempt = attempt
        self.invited.add(attempt)
        return current

    def masked_input_leaving(self, attempt: int) -> list[RecordSpent]:
        """This node's masked input is about to leave in `attempt`: from now on it takes no other
        attempt of the round, and the driver must commit the record before the frame leaves."""
        if self.spent_in is not None and self.spent_in != attempt:
            raise LocalProtocolError(f"input of round {self.round} already went into attempt {self.spent_in}")
        self.spent_in = attempt
        return [RecordSpent(RoundContext(self.job_id, self.round, attempt))]

    # --- outcomes (inputs) -------------------------------------------------------------------------

    def client_finished(self, attempt: int) -> None:
        self.outcomes[attempt] = (Outcome.CLIENT_DONE, "")

    def coordinator_finished(self, attempt: int) -> None:
        self.outcomes[attempt] = (Outcome.FINISHED, "")
        self.result = True

    def aborted(self, attempt: int, reason: str) -> bool:
        """An attempt's machine on this node aborted; False if that attempt had ended already."""
        if attempt in self.outcomes:
            return False
        self.outcomes[attempt] = (Outcome.ABORTED, f"aborted: {reason}")
        return True

    def result_stored(self) -> None:
        self.result = True

    # --- the job loop's side -----------------------------------------------------------------------

    def start(self, now: float) -> list[AttemptOutput]:
        """The job loop begins the round (it opened): attempt 0, or the round's result if it is here."""
        if self._state is not _State.IDLE:
            raise LocalProtocolError(f"round {self.round} of {self.job_id} already started")
        self._round_deadline = now + ROUND_WINDOWS * self.spec.attempt_window
        return self._begin(0, now)

    def poll(self, now: float) -> list[AttemptOutput]:
        """What to do now, given every input so far."""
        if self._state is not _State.WAITING:
            return []
        if self.result:
            return self._over(True, "completed")
        attempt = self.attempt
        outcome = self.outcomes.get(attempt)
        if outcome is not None and outcome[0] is Outcome.CLIENT_DONE:
            self._extend(now)  # unmasked: wait for the result for an attempt window, take no other attempt
        elif outcome is not None:
            return self._ended(attempt + 1)
        later = [a for a in self.invited if a > attempt]
        if later and self.spent_in is None:
            return self._ended(min(later))
        if attempt in self.invited:
            self._extend(now)
        if now >= self._deadline:
            return self._ended(attempt + 1)
        return [WakeAt(self._deadline)]

    def fetched(self, found: bool, now: float) -> list[AttemptOutput]:
        """The answer to `FetchResult`: the result is here now, or the round moves to the next attempt."""
        if self._state is not _State.FETCHING:
            raise LocalProtocolError("no result fetch is outstanding")
        if found or self.result:
            return self._over(True, "completed")
        attempt = self.attempt
        reason = self._reason(attempt)
        failed: list[AttemptOutput] = []
        if self.coordinator(attempt) != self.me:
            failed.append(AttemptFailed(self.context(attempt), self.coordinator(attempt), reason))
        self._last_reason = reason
        return failed + self._begin(self._next_attempt, now)

    def coordination_refused(self, reason: str) -> None:
        """This node could not start coordinating its attempt (too few reachable, bad parameters)."""
        self._last_reason = reason

    def context(self, attempt: int | None = None) -> RoundContext:
        return RoundContext(self.job_id, self.round, self.attempt if attempt is None else attempt)

    @property
    def over(self) -> bool:
        return self._state is _State.OVER

    # --- internals ---------------------------------------------------------------------------------

    def _begin(self, attempt: int, now: float) -> list[AttemptOutput]:
        if now >= self._round_deadline:
            return self._over(False, f"gave up after {attempt} attempts: {self._last_reason}")
        if self.result:
            return self._over(True, "completed")
        if attempt >= attempt_limit(len(self.ranking)):  # every member coordinated one: clients refuse more
            return self._over(False, f"gave up after {attempt} attempts, one per roster member: {self._last_reason}")
        if len(self.ranking) < self.spec.min_participants:
            return self._over(False, f"the roster has only {len(self.ranking)} members, "
                                     f"the job needs {self.spec.min_participants}")
        self.attempt, self._state, self._extended = attempt, _State.WAITING, False
        coordinating = self.coordinator(attempt) == self.me
        self._deadline = now + (self.spec.attempt_window if coordinating else self.spec.phase_timeout)
        return [AttemptBegun(self.context(attempt), self.coordinator(attempt), coordinating)]

    def _extend(self, now: float) -> None:
        if not self._extended:
            self._deadline, self._extended = now + self.spec.attempt_window, True

    def _ended(self, next_attempt: int) -> list[AttemptOutput]:
        if self.outcomes.get(self.attempt, (None, ""))[0] is Outcome.CLIENT_DONE:
            return self._over(False, "gave up: sent unmasking shares but no result arrived; "
                                     "this node takes no other attempt of the round")
        self._state, self._next_attempt = _State.FETCHING, next_attempt
        return [FetchResult(self.context())]

    def _reason(self, attempt: int) -> str:
        outcome = self.outcomes.get(attempt)
        return NO_INVITE if outcome is None else outcome[1] or outcome[0].value

    def _over(self, completed: bool, reason: str) -> list[AttemptOutput]:
        self._state = _State.OVER
        return [RoundOver(completed, reason)]

