"""Rounds back to back (`round_interval` 0) keep their pace however long the job has run (issue 18).

Four real job loops (`run_job`) with real RoundDrivers, JobBooks and SQLite stores in one trio
run under a MockClock; frames pass through the loopback network of test_rounds.py, and a
coordinator's result is handed to every node as the daemon's result push would. Every round of
such a job is scheduled at the first one's time, so once the job had run a phase timeout every
node took itself to be late for every round and waited out `catch_up` (14 s) for a result that
nobody was computing: in a 300-round job every round from the 14th second on took 14.1 s.
Once that stall was gone, each round's 25 phase timers outlived their finished machines for a
phase timeout (5,572 trio tasks after 500 rounds of `netsim bench soak`).
"""

from __future__ import annotations

import time
from pathlib import Path

import nacl.signing
import pytest
import trio
import trio.testing

from protocol import crypto
from protocol.events import RoundResult
from protocol.jobs import JobSpec
from protocol.schedule import CATCH_UP, ROSTER_GRACE, ROSTER_GRACE_PER_MEMBER, arrives_late
from villaged.jobs import Job, JobBook, JobHooks, run_job
from villaged.rounds import RoundDriver
from villaged.store import ResultRecord, Store
from tests.villaged.test_rounds import Loopback, no_event

JOB = "job-back-to-back"
KEYS = [nacl.signing.SigningKey(crypto.sha256(b"back-to-back", bytes([i]))) for i in range(4)]
IDS = [bytes(k.verify_key) for k in KEYS]
SPEC = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": 6, "round_interval": 0.0,
                          "start_delay": 10.0, "min_participants": 3, "neighbours": 2, "phase_timeout": 5.0,
                          "quantization": {"rounding": "nearest"}})
#: Real seconds a commit on a worker thread may take before the mock clock jumps past it (an fsync
#: takes milliseconds; this leaves room for a loaded machine and costs that much per timer that fires).
COMMIT_AT_MOST = 0.5
#: The job was created this long ago: its rounds' common scheduled opening is over a phase timeout past.
AGE = SPEC.start_delay + ROSTER_GRACE + ROSTER_GRACE_PER_MEMBER * len(IDS) + SPEC.phase_timeout + 5.0


def test_a_node_that_saw_the_previous_round_end_is_not_late_for_the_next() -> None:
    job = Job(JOB, SPEC, IDS[0], time.time() - AGE, "running", roster=tuple(IDS))
    now, opens, phase = time.time(), job.round_opens_at(7), SPEC.phase_timeout
    assert arrives_late(opens, phase, now, resumed=False)  # by the schedule alone: a phase timeout past
    assert not arrives_late(opens, phase, now, resumed=False, previous_end=now - 0.05)
    assert arrives_late(opens, phase, now, resumed=False, previous_end=now - SPEC.phase_timeout - 1.0)
    assert arrives_late(opens, phase, now, resumed=True)  # back from a restart: it asks for the result first


async def test_a_back_to_back_job_keeps_its_pace_after_a_phase_timeout(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    # The stores commit on worker threads (villaged/store_writer.py): while one does, every task waits
    # and an immediate autojump would skip to the next timer (a phase timeout) although nothing is late.
    # Jump only after the loop has been idle longer than any commit takes.
    autojump_clock.autojump_threshold = COMMIT_AT_MOST
    stores = [Store.open(tmp_path / f"node{i}.db") for i in range(4)]
    books = [JobBook(store, me, lambda member: member in IDS, participant_floor=3) for store, me in zip(stores, IDS)]
    for i, (store, book) in enumerate(zip(stores, books)):
        store.put_local_input("x", [float(i + 1)] * 4, 1000.0)
        book.add_job(JOB, SPEC, IDS[0], time.time() - AGE)
        for member in IDS:
            book.add_member(JOB, member)
        book.set_roster(JOB, tuple(sorted(IDS)))
    drivers: dict[bytes, RoundDriver] = {}
    ended: list[tuple[int, int, str, float]] = []  # node, round, outcome, trio time
    timers_at_end: list[int] = []  # phase timers alive as a node ends a round

    def deliver(node: int, record: ResultRecord) -> None:
        """What the daemon does with a checked result: store it and wake the round's waiters."""
        stores[node].put_result(record)
        tracker = drivers[IDS[node]].tracker(record.job_id, record.round)
        tracker.result = True
        tracker.changed()

    async def pushed(result: RoundResult) -> None:  # the coordinator's result goes down the tree to everyone
        record = ResultRecord(result.context.job_id, result.context.round, result.context.attempt, result.coordinator,
                              result.aggregate.tobytes(), result.survivors, result.dropped, b"", time.time(), result.votes)
        for node in range(4):
            deliver(node, record)

    def hooks_for(node: int) -> JobHooks:
        async def reachable(members: list[bytes]) -> set[bytes]:
            return {m for m in members if m in drivers}

        async def fetch_result(job: Job, round_number: int) -> bool:
            for other in stores:
                found = other.get_result(job.id, round_number)
                if found is not None:
                    deliver(node, found)
                    return True
            return False

        async def round_end(job: Job, round_number: int, outcome: str) -> None:
            ended.append((node, round_number, outcome, trio.current_time()))
            await trio.testing.wait_all_tasks_blocked()  # a closed machine's timers have had their turn
            timers_at_end.append(sum(1 for task in nursery.child_tasks if task.name.endswith("MachineRunner._timer")))

        async def unused(*_args: object) -> None:
            raise AssertionError("the roster is already known everywhere")

        return JobHooks(reachable=reachable, has_result=lambda job_id, r: r in stores[node].result_rounds(job_id),
                        fetch_result=fetch_result, on_round_end=round_end, announce_roster=unused,  # type: ignore[arg-type]
                        connect_ahead=lambda job, round_number: None)

    sent: list[tuple[bytes, bytes, bytes]] = []
    async with trio.open_nursery() as nursery:
        for node, key in enumerate(KEYS):
            drivers[IDS[node]] = RoundDriver(Loopback(IDS[node], drivers, sent), key, books[node], nursery, pushed,
                                             no_event)
        with trio.fail_after(SPEC.rounds * sum(CATCH_UP.delays) + 60):
            async with trio.open_nursery() as loops:
                for node in range(4):
                    loops.start_soon(run_job, books[node].jobs[JOB], books[node], drivers[IDS[node]], stores[node],
                                     hooks_for(node))
        nursery.cancel_scope.cancel()

    assert all(book.jobs[JOB].state == "completed" for book in books)
    assert all(store.result_rounds(JOB) == list(range(SPEC.rounds)) for store in stores)
    assert {outcome for _, _, outcome, _ in ended} == {"completed"}
    # Round 0: the loops started long after its opening (nobody had seen a round end yet), so they asked
    # for its result first. Every later round opened as the one before ended, with no wait in between.
    last_end = [max(t for n, r, _, t in ended if r == round_number) for round_number in range(SPEC.rounds)]
    gaps = [later - earlier for earlier, later in zip(last_end[1:], last_end[2:])]
    assert gaps and max(gaps) < CATCH_UP.delays[0], f"rounds waited between them: {gaps}"
    # A finished attempt's phase timers end with its machine: they do not pile up round after round.
    first, last = timers_at_end[:len(IDS)], timers_at_end[-len(IDS):]
    assert max(last) <= max(first), f"phase timers alive as each node ended each round: {timers_at_end}"
