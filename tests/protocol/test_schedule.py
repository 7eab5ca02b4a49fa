"""The job machine on hundreds of nodes in one process with a fake clock (plain floats).

`Village` drives one `JobSchedule` per node and carries out its outputs: the creator's frozen
roster reaches every node, a round run by the roster members ends `ROUND_TIME` after the last
live member came to it and its result then reaches every live node, and a fetch finds a result
when any live node stores it. Asserted: back-to-back rounds keep their pace (issue 18's 14 s
stalls), a restarted node catches up on the rounds it missed and takes part again, an observer
collects every result, and a job without a roster or with too few members fails naming why.
"""

from __future__ import annotations

import pytest

from protocol import crypto
from protocol.election import capped_roster
from protocol.jobs import JobSpec
from protocol.schedule import (
    CATCH_UP, BudgetSpent, CatchingUp, ConnectAhead, FetchRoundResult, FinishJob, ForgetRound, FreezeRoster, JobOutput,
    JobRunning, JobSchedule, RoundEnded, RunRound, WakeAt, arrives_late, round_opens_at,
)

JOB = "job-schedule"
CREATED = 1_000_000.0
ROUND_TIME = 0.03


def member(i: int) -> bytes:
    return crypto.sha256(b"member", i.to_bytes(4, "big"))


def spec(rounds: int = 100, round_interval: float = 0.0, **more: object) -> JobSpec:
    return JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": rounds, "min_participants": 5,
                              "max_participants": 400, "phase_timeout": 10.0, "start_delay": 5.0,
                              "round_interval": round_interval, **more})


class Village:
    def __init__(self, n: int, job: JobSpec, observers: int = 0, creator_down: bool = False) -> None:
        self.spec = job
        self.members = [member(i) for i in range(n)]
        self.creator = self.members[0]
        self.nodes = {m: self.machine(m, "pending") for m in self.members + [member(10_000 + i) for i in range(observers)]}
        for machine in self.nodes.values():
            machine.joined(self.members)
        self.alive = set(self.nodes) - ({self.creator} if creator_down else set())
        self.results: dict[bytes, set[int]] = {m: set() for m in self.nodes}
        self.started: dict[int, list[float]] = {}  # round -> when each member began it
        self.waiting: dict[int, set[bytes]] = {}  # round -> members in it
        self.ends: dict[int, float] = {}  # round -> when its result is in
        self.finished: dict[bytes, FinishJob] = {}
        self.catch_ups: list[tuple[bytes, int]] = []
        self.fetches: dict[bytes, list[float]] = {m: [] for m in self.nodes}
        self.connect_ahead: dict[bytes, list[int]] = {m: [] for m in self.nodes}
        self.wakes: dict[bytes, float] = {m: CREATED for m in self.nodes}
        self.now = CREATED

    def machine(self, node: bytes, state: str, roster: tuple[bytes, ...] | None = None) -> JobSchedule:
        return JobSchedule(JOB, self.spec, self.members[0], CREATED + self.spec.start_delay, node, state, roster)

    def run(self, until: float) -> None:
        while self.now < until:
            due = [self.wakes[n] for n in self.alive if n in self.wakes] + list(self.ends.values())
            if not due:
                return
            self.now = max(self.now, min(due))
            for round_number, end in sorted(self.ends.items()):
                if end <= self.now:
                    del self.ends[round_number]
                    self.round_finished(round_number)
            for node in sorted(self.alive):
                if self.wakes.get(node, float("inf")) <= self.now:
                    del self.wakes[node]
                    self.pump(node, self.nodes[node].poll(self.now))

    def pump(self, node: bytes, outputs: list[JobOutput]) -> None:
        machine = self.nodes[node]
        for out in outputs:
            if isinstance(out, WakeAt):
                self.wakes[node] = out.at
            elif isinstance(out, FreezeRoster):
                for other in self.alive:
                    self.nodes[other].roster_learned(out.members)
                    self.wakes[other] = self.now
            elif isinstance(out, FetchRoundResult):
                self.fetches[node].append(self.now)
                found = any(out.round in self.results[n] for n in self.alive if n != node)
                if found:
                    self.results[node].add(out.round)
                self.pump(node, machine.fetched(out.round, found, self.now))
            elif isinstance(out, RunRound):
                self.started.setdefault(out.round, []).append(self.now)
                self.waiting.setdefault(out.round, set()).add(node)
                live_members = self.alive & set(machine.roster or ())
                if self.waiting[out.round] >= live_members:
                    self.ends[out.round] = self.now + ROUND_TIME
            elif isinstance(out, CatchingUp):
                self.catch_ups.append((node, out.round))
            elif isinstance(out, ConnectAhead):
                self.connect_ahead[node].append(out.round)
            elif isinstance(out, (FinishJob, BudgetSpent)):
                self.finished[node] = out if isinstance(out, FinishJob) else FinishJob("completed", "budget")
            else:
                assert isinstance(out, (JobRunning, RoundEnded, ForgetRound))

    def round_finished(self, round_number: int) -> None:
        for node in sorted(self.alive):
            self.results[node].add(round_number)
            self.nodes[node].result_stored(round_number)
        for node in sorted(self.waiting.pop(round_number, set()) & self.alive):
            self.pump(node, self.nodes[node].round_done(round_number, True, "completed", self.now))
        for node in self.alive:
            self.wakes[node] = self.now


def gaps(starts: dict[int, list[float]]) -> list[float]:
    first = [min(starts[r]) for r in sorted(starts)]
    return [b - a for a, b in zip(first, first[1:])]


def test_three_hundred_nodes_run_a_hundred_rounds_back_to_back_at_a_steady_pace() -> None:
    village = Village(300, spec(rounds=100))
    village.run(until=CREATED + 3_600)
    assert len(village.finished) == 300 and all(f == FinishJob("completed", None) for f in village.finished.values())
    assert all(village.results[m] == set(range(100)) for m in village.members)
    assert not village.catch_ups  # nobody took itself to be late for a round and waited for a result
    between = gaps(village.started)
    assert len(between) == 99 and max(between) < 2 * ROUND_TIME
    first_50, last_50 = sum(between[:49]) / 49, sum(between[-49:]) / 49
    assert last_50 == pytest.approx(first_50)
    assert village.connect_ahead[village.members[1]][:3] == [1, 1, 2]  # during round 0, then as each round comes


def test_the_creator_freezes_the_roster_of_the_members_that_joined_capped() -> None:
    job = spec(rounds=1, max_participants=8)
    machine = JobSchedule(JOB, job, member(0), CREATED, member(0), "pending")
    machine.joined(member(i) for i in range(20))
    assert machine.poll(CREATED - 1) == [WakeAt(CREATED)]
    frozen = machine.poll(CREATED)
    roster = capped_roster(JOB, (member(i) for i in range(20)), 8)
    assert frozen == [FreezeRoster(roster), JobRunning(), WakeAt(round_opens_at(CREATED, job, 8, 0))]
    assert machine.roster == roster


def test_a_job_whose_creator_is_down_at_the_start_fails_naming_why() -> None:
    village = Village(20, spec(rounds=3), creator_down=True)
    village.run(until=CREATED + 600)
    assert {f.state for f in village.finished.values()} == {"failed"}
    assert {f.reason for f in village.finished.values()} == {"no roster from the job's creator by the start (is the creator down?)"}


def test_a_job_with_too_few_members_fails_naming_the_count() -> None:
    village = Village(4, spec(rounds=3))
    village.run(until=CREATED + 600)
    assert {f.reason for f in village.finished.values()} == {"only 4 members joined before the start, the job needs 5"}


def test_an_observer_collects_every_result() -> None:
    village = Village(50, spec(rounds=5, round_interval=60.0), observers=3)
    village.run(until=CREATED + 3_600)
    observers = [n for n in village.nodes if n not in village.members]
    assert all(village.results[o] == set(range(5)) for o in observers)
    assert all(village.finished[o] == FinishJob("completed", None) for o in observers)


def test_a_restarted_node_catches_up_on_the_round_it_missed_then_takes_part() -> None:
    job = spec(rounds=4, round_interval=60.0)
    village = Village(200, job)
    node = village.members[17]
    village.run(until=round_opens_at(CREATED + 5.0, job, 200, 1) + 1.0)  # round 1 has run
    assert village.results[node] == {0, 1}
    held, roster = set(village.results[node]), village.nodes[node].roster
    village.alive.discard(node)
    village.run(until=round_opens_at(CREATED + 5.0, job, 200, 2) + 20.0)  # round 2 ran without it
    assert 2 not in village.results[node]
    village.alive.add(node)
    village.nodes[node] = restarted = village.machine(node, "running", roster)
    for round_number in held:
        restarted.result_stored(round_number)
    village.wakes[node] = village.now
    village.run(until=CREATED + 3_600)
    assert village.catch_ups == [(node, 2)]  # it asked for round 2's result first, and got it
    assert village.results[node] == set(range(4)) and village.finished[node] == FinishJob("completed", None)
    assert len(village.started[3]) == 200  # and took part in round 3


def test_a_restarted_node_that_nobody_can_answer_keeps_asking_at_the_catch_up_backoff() -> None:
    job = spec(rounds=2)
    machine = JobSchedule(JOB, job, member(0), CREATED, member(1), "running", [member(i) for i in range(10)])
    now = round_opens_at(CREATED, job, 10, 0) + 1.0
    out = machine.poll(now)
    assert out == [CatchingUp(0, True), FetchRoundResult(0)]
    asked = [now]
    while True:
        out = machine.fetched(0, False, now)
        if out and isinstance(out[0], WakeAt):
            now = out[0].at
            fetch = machine.poll(now)
            assert fetch == [FetchRoundResult(0)]
            asked.append(now)
            continue
        break
    steps = [round(b - a, 6) for a, b in zip(asked, asked[1:])]
    assert steps[:3] == list(CATCH_UP.delays) and set(steps[3:]) == {CATCH_UP.delays[-1]}
    assert job.attempt_window <= asked[-1] - asked[0] < job.attempt_window + CATCH_UP.delays[-1]
    assert out == [ConnectAhead(1), RunRound(0)]  # nobody has it: the round may not have run, and this node takes part


def test_the_privacy_budget_gate_ends_the_job_before_the_round() -> None:
    job = spec(rounds=3)
    machine = JobSchedule(JOB, job, member(0), CREATED, member(1), "running", [member(i) for i in range(10)])
    machine.result_stored(0)
    machine.budget_left = False
    assert machine.poll(round_opens_at(CREATED, job, 10, 1) - 1.0) == [BudgetSpent(1)]
    assert machine.done


def test_a_round_opens_no_earlier_than_the_previous_one_ended_here() -> None:
    job = spec()
    opens = round_opens_at(CREATED, job, 10, 7)
    now = opens + job.phase_timeout + 5.0
    assert arrives_late(opens, job.phase_timeout, now, resumed=False)
    assert not arrives_late(opens, job.phase_timeout, now, resumed=False, previous_end=now - 0.05)
    assert arrives_late(opens, job.phase_timeout, now, resumed=True)
