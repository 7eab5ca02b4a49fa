"""The attempts of one round, on hundreds of nodes in one process with a fake clock.

`Village` drives one `RoundAttempts` per node: it carries out their outputs (an elected coordinator
invites the live roster, each client checks the invite and records its spent attempt before its
masked input "leaves", a completed attempt's result reaches every live node) and fires their
timers in order. The SecAgg+ phases themselves are the business of netsim/harness.py's `RoundHarness`; here
an attempt either completes at once or its coordinator dies at a chosen moment. Asserted: every
node elects the same coordinator, no input goes into two attempts of a round (restarts
included), and every node keeps the lowest completed attempt's result.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import pytest

from protocol import crypto
from protocol.attempts import (
    NO_INVITE, AttemptBegun, AttemptFailed, AttemptOutput, FetchResult, RecordSpent, RoundAttempts, RoundOver, WakeAt,
    keeps_offered_result,
)
from protocol.errors import InviteRefused, RemoteProtocolError
from protocol.invites import InviteTerms
from protocol.jobs import JobSpec
from protocol.messages import Invite
from protocol.wire import RoundContext

JOB = "job-attempts"
OPENS = 1_000_000.0
SPEC = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": 3, "min_participants": 5,
                          "max_participants": 400, "phase_timeout": 10.0})


def member(i: int) -> bytes:
    return crypto.sha256(b"member", i.to_bytes(4, "big"))


class Village:
    """`n` nodes running round 0's attempts; `silent` never answer; `crash_after_masked` coordinators
    die once their participants' masked inputs left."""

    def __init__(self, n: int, silent: set[bytes] = frozenset(), crash_after_masked: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
        self.roster = sorted(member(i) for i in range(n))
        self.alive = set(self.roster) - set(silent)
        self.crash_after_masked = set(crash_after_masked)
        self.spent: dict[bytes, int] = {}  # the durable records
        self.machines = {m: RoundAttempts(JOB, 0, self.roster, m, SPEC) for m in self.alive}
        self.held: dict[bytes, int] = {}  # the attempt whose result each node stores
        self.summed: dict[int, set[bytes]] = {}  # attempt -> whose inputs its sum holds
        self.refusals: list[tuple[bytes, str]] = []
        self.failed: list[AttemptFailed] = []
        self.over: dict[bytes, RoundOver] = {}
        self.now = OPENS
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wakes: dict[bytes, float] = {}

    def terms(self) -> InviteTerms:
        return InviteTerms(SPEC, self.roster, OPENS, floor=5, local_attempt=0, spent_in=None)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    def restart(self, node: bytes) -> None:
        """The node's process dies and comes back: a new machine, given only the durable record."""
        self.machines[node] = RoundAttempts(JOB, 0, self.roster, node, SPEC, spent_in=self.spent.get(node))
        self.pump(node, self.machines[node].start(self.now))

    def run(self, until: float = OPENS + 1_000.0) -> None:
        for node in sorted(self.machines):
            self.pump(node, self.machines[node].start(self.now))
        while self.now < until:
            pending = [w for w in self._wakes.values()] + [e[0] for e in self._events[:1]]
            if not pending:
                return
            self.now = max(self.now, min(pending))
            while self._events and self._events[0][0] <= self.now:
                heapq.heappop(self._events)[2]()
            for node, when in sorted(self._wakes.items()):
                if when <= self.now:
                    del self._wakes[node]
                    self.pump(node, self.machines[node].poll(self.now))

    def pump(self, node: bytes, outputs: list[AttemptOutput]) -> None:
        for out in outputs:
            if isinstance(out, WakeAt):
                self._wakes[node] = out.at
            elif isinstance(out, AttemptBegun):
                if out.coordinating and node in self.alive:
                    self.coordinate(node, out.context)
                self.pump(node, self.machines[node].poll(self.now))
            elif isinstance(out, FetchResult):
                found = any(n in self.held for n in self.alive if n != node)
                if found:
                    self.deliver(node, min(self.held[n] for n in self.alive if n in self.held))
                self.pump(node, self.machines[node].fetched(found, self.now))
            elif isinstance(out, AttemptFailed):
                self.failed.append(out)
            else:
                assert isinstance(out, RoundOver)
                self.over[node] = out
                self._wakes.pop(node, None)

    def coordinate(self, coordinator: bytes, context: RoundContext) -> None:
        machine = self.machines[coordinator]
        participants = machine.participants(self.alive, me_contributes=True)
        assert not isinstance(participants, str)
        invite = Invite(tuple(participants), SPEC.round_params(len(participants)))
        joined = []
        for node in participants:
            client = self.machines[node]
            try:
                client.check_invite(self.terms(), context, coordinator, invite, self.now)
                client.take_invite(coordinator, context.attempt)
            except InviteRefused as refusal:
                self.refusals.append((node, refusal.code))
                continue
            for record in client.masked_input_leaving(context.attempt):
                assert isinstance(record, RecordSpent)
                self.spent[node] = record.context.attempt  # committed before the masked input leaves
            joined.append(node)
        if coordinator in self.crash_after_masked:
            self.alive.discard(coordinator)
            self._wakes.pop(coordinator, None)
            for node in joined:  # each client machine times out waiting for the survivor set
                self.at(self.now + SPEC.phase_timeout, lambda n=node: self.abort(n, context.attempt))
            return
        if len(joined) < SPEC.min_participants:
            machine.aborted(context.attempt, f"{len(joined)} accepted")
            return
        self.summed[context.attempt] = set(joined)
        for node in joined:
            self.machines[node].client_finished(context.attempt)
        machine.coordinator_finished(context.attempt)
        self.held[coordinator] = context.attempt
        for node in sorted(self.alive):
            self.deliver(node, context.attempt)

    def abort(self, node: bytes, attempt: int) -> None:
        if node in self.alive:
            self.machines[node].aborted(attempt, "the coordinator fell silent")
            self.pump(node, self.machines[node].poll(self.now))

    def deliver(self, node: bytes, attempt: int) -> None:
        if keeps_offered_result(self.held.get(node), attempt):
            self.held[node] = attempt
        self.machines[node].result_stored()
        self._wakes[node] = self.now  # the result wakes the node's job loop

    def inputs_in_two_attempts(self) -> set[bytes]:
        seen: set[bytes] = set()
        twice: set[bytes] = set()
        for inputs in self.summed.values():
            twice |= seen & inputs
            seen |= inputs
        return twice


def test_every_node_elects_the_same_coordinator_for_every_attempt() -> None:
    village = Village(300)
    rankings = {machine.ranking for machine in village.machines.values()}
    assert len(rankings) == 1 and len(next(iter(rankings))) == 300
    shuffled = RoundAttempts(JOB, 0, reversed(village.roster), member(0), SPEC)
    assert shuffled.ranking == next(iter(rankings))


def test_three_hundred_nodes_complete_attempt_zero() -> None:
    village = Village(300)
    village.run()
    assert village.summed.keys() == {0} and len(village.summed[0]) == 300
    assert all(over.completed for over in village.over.values()) and len(village.over) == 300
    assert set(village.held.values()) == {0}


def test_silent_coordinators_are_replaced_in_ranking_order() -> None:
    roster = sorted(member(i) for i in range(200))
    ranked = RoundAttempts(JOB, 0, roster, roster[0], SPEC).ranking
    village = Village(200, silent={ranked[0], ranked[1]})
    village.run()
    assert village.summed.keys() == {2} and len(village.summed[2]) == 198
    assert len(village.over) == 198 and all(over.completed for over in village.over.values())
    assert {f.context.attempt for f in village.failed} == {0, 1} and {f.reason for f in village.failed} == {NO_INVITE}
    # each silent attempt cost a phase timeout and a fetch, no more
    assert village.now == pytest.approx(OPENS + 2 * SPEC.phase_timeout)


def test_a_coordinator_that_dies_after_the_masked_inputs_gets_no_input_into_a_second_attempt() -> None:
    roster = sorted(member(i) for i in range(200))
    first = RoundAttempts(JOB, 0, roster, roster[0], SPEC).ranking[0]
    village = Village(200, crash_after_masked={first})
    village.run()
    assert not village.inputs_in_two_attempts()
    assert village.spent and set(village.spent.values()) == {0}
    # attempt 1's coordinator found every input spent: each refusal names the rule
    assert village.refusals and {code for _, code in village.refusals} == {"round_spent"}
    assert not any(over.completed for over in village.over.values())
    # the spent clients' machines aborted when the coordinator fell silent; they sat out every later attempt
    assert all(over.reason.startswith("gave up after") for over in village.over.values())


def test_a_node_restarted_after_its_input_left_refuses_every_other_attempt() -> None:
    village = Village(50)
    node = village.roster[7]
    village.spent[node] = 0  # what the store holds after the node's masked input went into attempt 0
    village.restart(node)
    machine = village.machines[node]
    coordinator = machine.coordinator(1)
    invite = Invite(tuple(village.roster), SPEC.round_params(50))
    with pytest.raises(InviteRefused) as refused:
        machine.check_invite(village.terms(), RoundContext(JOB, 0, 1), coordinator, invite, OPENS + 2 * SPEC.phase_timeout)
    assert refused.value.code == "round_spent" and "attempt 0" in refused.value.reason


def test_a_later_invite_replaces_the_earlier_attempt_and_an_earlier_one_is_refused() -> None:
    roster = sorted(member(i) for i in range(20))
    machine = RoundAttempts(JOB, 0, roster, roster[3], SPEC)
    assert machine.take_invite(machine.coordinator(0), 0) is None
    assert machine.take_invite(machine.coordinator(2), 2) == 0
    with pytest.raises(RemoteProtocolError, match="stale or repeated invite"):
        machine.take_invite(machine.coordinator(1), 1)
    machine.start(OPENS)
    assert machine.poll(OPENS) == [FetchResult(RoundContext(JOB, 0, 0))]  # invited to a later attempt: move on
    assert machine.fetched(False, OPENS)[0] == AttemptFailed(RoundContext(JOB, 0, 0), machine.coordinator(0), NO_INVITE)
    assert machine.attempt == 2


def test_every_node_keeps_the_lowest_completed_attempt() -> None:
    assert keeps_offered_result(None, 3)
    assert keeps_offered_result(3, 1)
    assert not keeps_offered_result(1, 3)
    assert not keeps_offered_result(1, 1)


def test_a_coordinator_invites_the_best_ranked_live_members_up_to_the_cap() -> None:
    spec = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": 1, "min_participants": 5,
                              "max_participants": 10, "phase_timeout": 10.0})
    roster = sorted(member(i) for i in range(30))
    machines = [RoundAttempts(JOB, 4, roster, m, spec) for m in roster[:3]]
    picks = {tuple(m.participants(roster, me_contributes=True)) for m in machines}
    assert len(picks) == 1 and len(next(iter(picks))) == 10
    assert machines[0].participants(roster[:4], me_contributes=True) == \
        "only 4 roster members reachable, the job needs 5"
