"""A daemon that runs for months must not grow: what a node keeps per job and per round goes when the
job has ended (plus the retention window), and stays in the store (villaged/job_table.py, results.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from protocol.announcements import ResultAnnouncement
from protocol.evidence import VerifiedResult
from protocol.jobs import JobSpec
from tests.villaged.test_results import FakeVillage
from villaged.errors import TransportError
from villaged.job_table import RETENTION
from villaged.jobs import JobBook
from villaged.metrics import Metrics
from villaged.results import ResultExchange
from villaged.store import Store

ME, OTHER = b"\x01" * 32, b"\x02" * 32
SPEC = JobSpec.from_dict({
    "kind": "vector", "data": "stats", "dimension": 4, "rounds": 1, "min_participants": 3, "neighbours": 2,
    "quantization": {"clip": 100.0, "scale": 10.0, "rounding": "nearest"},
})
WINDOW = 30.0  # a short retention window, for the test


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "village.db")


def test_an_ended_job_is_let_go_after_the_retention_window_and_still_answered_from_the_store(store: Store) -> None:
    book = JobBook(store, ME, lambda member: True, retention=WINDOW)
    for job_id in ("done", "live"):
        book.add_job(job_id, SPEC, ME, 1000.0)
        book.add_member(job_id, ME)
        assert book.set_roster(job_id, (OTHER, ME))
    store.put_local_input("stats", [1, 2, 3, 4], 10.0)
    book.check_input(book.jobs["done"])
    book.check_input(book.jobs["live"])
    book.finish("done", "privacy budget used", "completed")

    assert [j.id for j in book.active_jobs()] == ["live"]
    assert list(book._encoded) == ["live"]  # an ended job takes no input: its encoded vector goes at once
    assert book.forget_ended(time.time()) == []  # within the window: still held
    assert book.forget_ended(time.time() + WINDOW + 1) == ["done"]
    assert not book.jobs.holds("done") and book.jobs.holds("live")

    # Gone from memory, not from the node: a view or a late announcement loads it from the store.
    done = book.jobs["done"]
    assert (done.state, done.roster, done.members, book.end_reason("done")) == (
        "completed", (OTHER, ME), {ME}, "privacy budget used")
    assert done.roster_known.is_set()
    assert "done" in book.jobs and sorted(book.jobs) == ["done", "live"]
    assert book.add_job("done", SPEC, ME, 1000.0) is None  # a re-announcement does not bring it back to life
    assert not book.jobs.holds("done")
    assert book.round_members("done") == sorted([OTHER, ME])

    # A restarted node holds the active job and the recently ended ones only.
    assert JobBook(store, ME, lambda member: True, retention=WINDOW).jobs.holds("done")
    assert not JobBook(store, ME, lambda member: True, retention=0.0).jobs.holds("done")
    assert JobBook(store, ME, lambda member: True, retention=0.0).jobs.holds("live")


def test_the_default_retention_window_is_an_hour() -> None:
    assert RETENTION == 3600.0


class SilentNode:
    """A transport whose every request fails: nothing arrives, every push and fetch fails."""

    member_id = ME

    def serve(self, *args: Any, **kwargs: Any) -> None:
        pass

    def connected_peers(self) -> list[bytes]:
        return [OTHER]

    async def request(self, peer: bytes, protocol: str, payload: bytes, **kwargs: Any) -> bytes:
        raise TransportError(peer, "unreachable")


def exchange(nursery: trio.Nursery, held: dict[tuple[str, int], int] | None = None) -> ResultExchange:
    """An exchange over `SilentNode`; `held` (round -> attempt) stands in for the store's results."""
    held = {} if held is None else held

    def never(*args: Any) -> Any:
        raise AssertionError("not called in this test")

    village = FakeVillage(member=lambda m: True, admit=never, claim=never, check=never, job_roster=lambda job: [ME, OTHER],
                          attempt_held=lambda job, r: held.get((job, r)), found=never, store=never)
    return ResultExchange(SilentNode(), nursery, village, village, village, Metrics(), ME)  # type: ignore[arg-type]


def result(round_number: int) -> VerifiedResult:
    body = ResultAnnouncement("job", round_number, 0, (ME, OTHER), (), b"d" * 32, b"v" * 32, {})
    return VerifiedResult(body, OTHER, b"", ())


async def test_a_rounds_push_and_wait_state_is_gone_after_the_wait_and_the_retention_window(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        results = exchange(nursery)
        for round_number in range(3):
            results.push(result(round_number), b"record")
        await trio.sleep(RETENTION / 2)
        results.push(result(3), b"record")
        results.push(result(0), b"record")  # the same attempt again: pushed on once only
        assert list(results._forwarded) == [("job", r, 0) for r in range(4)]
        await trio.sleep(RETENTION / 2 + 1)
        results.push(result(4), b"record")
        assert list(results._forwarded) == [("job", 3, 0), ("job", 4, 0)]  # rounds 0-2 aged out

        results.expect("job", 7, OTHER)  # the push never comes and every fetch fails
        await trio.sleep(1)
        assert results._awaiting == {("job", 7)} and ("job", 7) in results._arrivals
        await trio.sleep(60 + 30)  # the attempt window (and the gap it was in) is over: the waiter gives up
        assert results._awaiting == set() and results._arrivals == {}
        nursery.cancel_scope.cancel()


async def test_a_coordinators_own_wait_ends_when_it_pushes_the_result_it_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    """A coordinator that is also a client of its round waits for the push like the others; it stores
    the result itself and pushes it: the wait ends then, not a push-wait gap later (in a back-to-back
    soak, some 70 such waits were alive at any time)."""
    held: dict[tuple[str, int], int] = {}
    async with trio.open_nursery() as nursery:
        results = exchange(nursery, held)
        results.expect("job", 0, ME)
        await trio.sleep(0.5)
        assert results._awaiting == {("job", 0)}
        began = trio.current_time()
        held[("job", 0)] = 0
        results.push(result(0), b"record")
        await trio.sleep(0)
        await trio.testing.wait_all_tasks_blocked()
        assert results._awaiting == set() and results._arrivals == {}
        assert trio.current_time() - began < 0.01
        nursery.cancel_scope.cancel()
