"""Tests for villaged/store_writer.py: a node's commits run off the trio thread, on a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
import trio.testing

from villaged.store import JobRecord, ResultRecord, Store, StoreError

CREATOR = b"c" * 32
#: An aggregate this big makes one commit (with its fsync) take a while on any disk: a slow commit,
#: made by the real code path rather than a mock.
BIG_AGGREGATE = 48 * 1024 * 1024


async def test_a_slow_commit_leaves_the_trio_loop_running_and_reads_going(tmp_path: Path) -> None:
    with Store.open(tmp_path / "village.db") as store:
        store.put_job(JobRecord("job", {}, CREATOR, "running", 0.0, 0.0))  # before serving: on this thread
        big = ResultRecord("job", 0, 0, CREATOR, bytes(BIG_AGGREGATE), (CREATOR,), (), b"s" * 64, 1.0)
        ticks: list[float] = []  # when the loop ran another task while the commit was in flight
        committed = trio.Event()

        async def keep_ticking() -> None:
            while not committed.is_set():
                assert store.get_job("job") is not None  # the trio thread's reads go on meanwhile (WAL)
                ticks.append(time.perf_counter())
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_ticking)
            began = time.perf_counter()
            assert await store.write(store.put_result, big) == "stored"
            took = time.perf_counter() - began
            committed.set()
        assert store.get_result("job", 0) is not None  # seen by the reader once `write` returned
    assert took > 0.05, f"the commit took {took:.3f} s: too fast to show anything"
    gaps = [later - earlier for earlier, later in zip([began, *ticks], [*ticks, began + took])]
    assert len(ticks) >= 10 and max(gaps) < took / 2, f"{len(ticks)} ticks in a {took:.3f} s commit, longest gap {max(gaps):.3f} s"


async def test_a_refused_write_raises_in_the_task_that_asked(tmp_path: Path) -> None:
    """record-before-send: a StoreError from the worker thread reaches the caller, who then must not send."""
    with Store.open(tmp_path / "village.db") as store:
        await store.write(store.put_job, JobRecord("job", {}, CREATOR, "running", 0.0, 0.0))
        await store.write(store.record_spent, "job", 3, 0, 1.0)
        with pytest.raises(StoreError, match="already has this node's input in attempt 0"):
            await store.write(store.record_spent, "job", 3, 1, 2.0)
        assert store.spent_attempt("job", 3) == 0


async def test_writes_asked_for_together_commit_one_at_a_time(tmp_path: Path) -> None:
    """Many tasks writing at once: no "transaction within a transaction", every row committed."""
    with Store.open(tmp_path / "village.db") as store:
        store.put_job(JobRecord("job", {}, CREATOR, "running", 0.0, 0.0))
        async with trio.open_nursery() as nursery:
            for round_number in range(50):
                nursery.start_soon(store.write, store.record_spent, "job", round_number, 0, float(round_number))
            await trio.testing.wait_all_tasks_blocked()  # the writes are on their way to the worker thread
            store.put_members([(bytes([i]) * 32, b"cert", 1) for i in range(50)])  # a synchronous one waits its turn
        assert store.spent_count("job") == 50 and len(store.members()) == 50
        assert store.integrity_check() == "ok"
