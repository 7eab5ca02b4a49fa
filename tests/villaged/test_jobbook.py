"""JobBook's view of this node's own input (encoded once per version of the stored data), and the job
schedule's catching up on rounds a restarted node missed (through the job runner and on the machine), an
observer's asking for results, and the timing of the next coordinator's dial."""

from __future__ import annotations

import time
from pathlib import Path

import nacl.signing
import numpy as np
import pytest
import trio
import trio.testing

from protocol.election import capped_roster, coordinator_for
from protocol.errors import InviteRefused
from protocol.invites import check_invite
from protocol.jobs import JobSpec
from protocol.kinds import InputError
from protocol.messages import Invite
from protocol.wire import RoundContext
from protocol.schedule import CATCH_UP, FetchRoundResult, JobOutput, JobSchedule, RoundEnded, RunRound, WakeAt, arrives_late
from villaged.jobs import Job, JobBook, JobHooks, run_job
from villaged.rounds import RoundDriver
from villaged.store import Store
from tests.villaged.test_rounds import no_event

SPEC = JobSpec.from_dict({
    "kind": "vector", "data": "stats", "dimension": 4, "rounds": 1, "min_participants": 3, "neighbours": 2,
    "quantization": {"clip": 100.0, "scale": 10.0, "rounding": "nearest"},
})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "village.db")


@pytest.fixture
def book(store: Store) -> JobBook:
    book = JobBook(store, b"\x01" * 32, lambda member: True)
    book.add_job("job-1", SPEC, b"\x01" * 32, 1000.0)
    return book


def test_the_input_is_encoded_once_per_version_and_again_after_a_new_put(book: JobBook, store: Store) -> None:
    job = book.jobs["job-1"]
    store.put_local_input("stats", [1, 2, 3, 4], 10.0)
    first = book.check_input(job)
    assert first is book.check_input(job)  # no second parse
    assert not first.flags.writeable  # shared: nobody may change it in place
    store.put_local_input("stats", [5, 6, 7, 8], 11.0)
    assert np.array_equal(book.check_input(job), [5, 6, 7, 8])


def test_a_broken_new_version_is_refused_rather_than_served_from_the_cache(book: JobBook, store: Store) -> None:
    job = book.jobs["job-1"]
    store.put_local_input("stats", [1, 2, 3, 4], 10.0)
    book.check_input(job)
    store.put_local_input("stats", [1, 2, 3], 11.0)
    with pytest.raises(InputError, match="has 3 values"):
        book.check_input(job)
    assert trio.run(book.client_input, "job-1", 0) is None  # not joined: takes no part either way


ME = b"\x01" * 32
ROSTER = (ME, b"\x02" * 32, b"\x03" * 32)


async def test_a_restarted_node_asks_again_for_a_round_it_missed(book: JobBook, store: Store,
                                                                  autojump_clock: trio.testing.MockClock) -> None:
    """The first fetches fail while the node is still connecting; later ones, spaced by CATCH_UP.delays,
    succeed (the job runner carrying out the schedule machine's fetches and waits)."""
    book.set_roster("job-1", ROSTER)
    book.set_state("job-1", "running")  # it ran when this node stopped; its only round opened long ago
    asked_at: list[float] = []

    async def fetch(job: Job, round_number: int) -> bool:
        asked_at.append(trio.current_time())
        return len(asked_at) == 3

    async def unused(*_args: object) -> None:
        raise AssertionError("not needed to fetch a result")

    hooks = JobHooks(reachable=unused, has_result=lambda job_id, round_number: False, fetch_result=fetch,  # type: ignore[arg-type]
                     on_round_end=unused, announce_roster=unused, connect_ahead=unused)  # type: ignore[arg-type]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        driver = RoundDriver(None, nacl.signing.SigningKey.generate(), book, nursery, unused, no_event)  # type: ignore[arg-type]
        await run_job(book.jobs["job-1"], book, driver, store, hooks)
    assert [round(t - start, 6) for t in asked_at] == [0.0, CATCH_UP.delays[0], CATCH_UP.delays[0] + CATCH_UP.delays[1]]
    assert book.jobs["job-1"].state == "completed"  # a round caught up on is not ended again here


def asked_until(machine: JobSchedule, now: float, succeed_on: int) -> tuple[list[float], JobOutput]:
    """Pump a schedule machine whose `succeed_on`-th fetch finds the round's result; returns when it
    asked, and the output that ended the asking (the round taken part in, or ended)."""
    asked: list[float] = []
    outputs = machine.poll(now)
    while True:
        out = outputs.pop(0)
        if isinstance(out, WakeAt):
            now = out.at
            outputs += machine.poll(now)
        elif isinstance(out, FetchRoundResult):
            asked.append(now)
            outputs += machine.fetched(out.round, len(asked) == succeed_on, now)
        elif isinstance(out, (RunRound, RoundEnded)):
            return asked, out


def test_a_restarted_node_keeps_asking_for_an_attempt_window(book: JobBook) -> None:
    """Its process may take half a minute to get working connections: it does not give up after a few
    tries. A node late only because it learned of the job late does give up, and runs the round."""
    job = book.jobs["job-1"]
    restarted = JobSchedule(job.id, SPEC, ME, job.start_at, ME, "running", ROSTER)
    opened = restarted.opens_at(0)
    asked_at, then = asked_until(restarted, opened + 1.0, succeed_on=0)
    gaps = [round(b - a, 6) for a, b in zip(asked_at, asked_at[1:])]
    assert gaps[:3] == list(CATCH_UP.delays) and set(gaps[3:]) == {CATCH_UP.delays[-1]}
    assert SPEC.attempt_window <= asked_at[-1] - asked_at[0] < SPEC.attempt_window + CATCH_UP.delays[-1]
    assert then == RunRound(0)
    newcomer = JobSchedule(job.id, SPEC, ME, job.start_at, ME, "pending", ROSTER)
    asked_at, then = asked_until(newcomer, opened + SPEC.phase_timeout + 1.0, succeed_on=0)
    assert len(asked_at) == 1 + len(CATCH_UP.delays) and then == RunRound(0)


def test_an_observer_asks_for_the_result_it_was_not_told_of(book: JobBook) -> None:
    """Outside the roster, with no announcement arriving: asks half a phase timeout in, then at doubling gaps."""
    job = book.jobs["job-1"]
    observer = JobSchedule(job.id, SPEC, ROSTER[1], job.start_at, b"\x09" * 32, "running", ROSTER)
    opened = observer.opens_at(0)
    asked_at, then = asked_until(observer, opened - 1.0, succeed_on=3)
    half = SPEC.phase_timeout / 2
    assert [round(t - opened, 6) for t in asked_at] == [half, 3 * half, 7 * half]
    assert then == RoundEnded(0, "completed")


def test_a_node_back_from_a_restart_fetches_a_round_that_opened_without_it(book: JobBook) -> None:
    """Its invitation went out before it started: waiting a phase timeout for one only delays the fetch."""
    job = book.jobs["job-1"]
    opened = job.round_opens_at(0)
    assert arrives_late(opened, SPEC.phase_timeout, opened + 1.0, resumed=True)
    assert not arrives_late(opened, SPEC.phase_timeout, opened - 1.0, resumed=True)  # back before the round: it takes part
    # A node that ran all along is late only a phase timeout in (it learned of the job after the start).
    assert not arrives_late(opened, SPEC.phase_timeout, opened + 1.0, resumed=False)
    assert arrives_late(opened, SPEC.phase_timeout, opened + job.spec.phase_timeout + 1.0, resumed=False)


@pytest.mark.parametrize(("interval", "expected"), [
    (10.0, [("end", 0), ("connect", 1), ("end", 1)]),
    (0.0, [("connect", 1), ("end", 0), ("connect", 1), ("connect", 2), ("end", 1)]),
])
async def test_the_next_coordinator_is_dialed_after_the_round_unless_rounds_run_back_to_back(
    book: JobBook, store: Store, interval: float, expected: list[tuple[str, int]], autojump_clock: trio.testing.MockClock
) -> None:
    """With a gap between rounds, the dial waits for the gap: in net-300, 300 handshakes with the next
    coordinator during a round slowed that round down. Back to back there is no gap, so it overlaps."""
    spec = JobSpec.from_dict({**SPEC.to_dict(), "rounds": 2, "round_interval": interval})
    others = tuple(bytes([i]) * 32 for i in (2, 3, 4))  # this node (0x01) only observes: no round traffic
    job = book.add_job("job-2", spec, others[0], time.time() - spec.start_delay)
    assert job is not None and book.set_roster("job-2", others)
    events: list[tuple[str, int]] = []

    async def fetched(job: Job, round_number: int) -> bool:
        return True

    async def ended(job: Job, round_number: int, outcome: str) -> None:
        assert outcome == "completed"
        events.append(("end", round_number))

    async def unused(*_args: object) -> None:
        raise AssertionError("an observer neither probes nor announces")

    hooks = JobHooks(reachable=unused, has_result=lambda job_id, round_number: False, fetch_result=fetched,  # type: ignore[arg-type]
                     on_round_end=ended, announce_roster=unused,  # type: ignore[arg-type]
                     connect_ahead=lambda job, round_number: events.append(("connect", round_number)))
    async with trio.open_nursery() as nursery:
        driver = RoundDriver(None, nacl.signing.SigningKey.generate(), book, nursery, unused, no_event)  # type: ignore[arg-type]
        await run_job(job, book, driver, store, hooks)
    assert job.state == "completed"
    assert events == expected


async def test_once_the_budget_is_spent_no_invite_is_answered_and_no_noisy_vector_is_made(store: Store) -> None:
    """Issue 16: the budget gate ran only in the job loop; the invite handler and client_input made fresh
    noisy vectors without it. Releases are the rounds whose masked input left, recorded before it left."""
    me = b"\x01" * 32
    roster = tuple(sorted([me, b"\x02" * 32, b"\x03" * 32]))
    spec = JobSpec.from_dict({"kind": "vector", "data": "stats", "dimension": 4, "rounds": 50, "min_participants": 3,
                              "privacy": {"epsilon": 1.0, "delta": 1e-5, "budget_epsilon": 2.0}})
    book = JobBook(store, me, lambda member: True, participant_floor=3)
    store.put_local_input("stats", [0.1, 0.2, 0.3, 0.4], 1000.0)
    book.add_job("dp", spec, me, time.time() - 100)
    book.add_member("dp", me)
    book.set_roster("dp", roster)
    book.set_state("dp", "running")
    affordable = spec.noise_plan().affordable_releases()  # type: ignore[union-attr]
    for round_number in range(affordable):
        assert await book.client_input("dp", 0) is not None
        await book.record_spent(RoundContext("dp", round_number, 0))
    assert await book.client_input("dp", 0) is None and not book.contributes(book.jobs["dp"])
    context = RoundContext("dp", affordable, 0)
    inviter = coordinator_for("dp", affordable, 0, list(roster))
    terms = book.invite_terms("dp", affordable, 0)
    assert terms is not None
    with pytest.raises(InviteRefused) as refused:
        check_invite(terms, context, inviter, Invite(roster, spec.round_params(3)), time.time())
    assert refused.value.code == "privacy_budget_spent"
    assert book.privacy_releases("dp") == affordable  # from the store: it survives a restart


def test_a_roster_over_max_participants_is_cut_alike_everywhere_and_a_longer_one_refused(store: Store) -> None:
    spec = JobSpec.from_dict({"kind": "vector", "data": "stats", "dimension": 4, "min_participants": 3,
                              "max_participants": 5})
    joined = [bytes([i]) * 32 for i in range(1, 9)]
    cut = capped_roster("cap", joined, 5)
    assert len(cut) == 5 and cut == capped_roster("cap", list(reversed(joined)), 5) and set(cut) <= set(joined)
    assert capped_roster("cap", joined[:4], 5) == tuple(sorted(joined[:4]))
    book = JobBook(store, joined[0], lambda member: True)
    book.add_job("cap", spec, joined[0], 1000.0)
    assert not book.set_roster("cap", tuple(sorted(joined)))  # eight members: more than the job allows
    assert book.set_roster("cap", cut) and book.round_members("cap") == sorted(cut)
