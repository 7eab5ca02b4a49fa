"""Tests for villaged/store.py on a real SQLite file, including a real SIGKILL of a writer."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from villaged.store import (
    DB_FILENAME,
    SCHEMA_VERSION,
    JobRecord,
    ResultRecord,
    RoundRecord,
    Store,
    StoreError,
)

ALICE = b"\xa1" * 32
BOB = b"\xb0" * 32
COORD = b"\xc0" * 32


def job(job_id: str = "job-1", state: str = "pending") -> JobRecord:
    return JobRecord(job_id, {"kind": "latency", "rounds": 3}, ALICE, state, 100.0, 100.0)  # type: ignore[arg-type]


def result(round_: int = 0, aggregate: bytes = b"\x01\x02", job_id: str = "job-1", attempt: int = 1) -> ResultRecord:
    return ResultRecord(job_id, round_, attempt, COORD, aggregate, (ALICE, BOB), (), b"s" * 64, 200.0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / DB_FILENAME


def test_reopen_keeps_everything(db_path: Path) -> None:
    rnd = RoundRecord(
        "job-1", 0, 1, COORD, "aborted", 150.0, (ALICE, BOB), (BOB,), {"share_keys": 0.5}, 160.0, "2 < threshold 3"
    )
    with Store.open(db_path) as store:
        store.put_revocation_list(b"signed list")
        store.put_member(ALICE, b"cert-a", 10_000)
        assert store.put_job(job())
        store.record_round(rnd)
        assert store.put_result(result()) == "stored"
        store.put_local_input("latency", {"gpt": [1.5, 2.0]}, 50.0)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.revocation_list() == b"signed list"
        assert [(m.member_id, m.certificate, m.expires_at) for m in store.members()] == [(ALICE, b"cert-a", 10_000)]
        assert store.get_job("job-1") == job()
        assert store.list_jobs() == [job()]
        assert store.rounds("job-1") == [rnd]
        assert store.get_results("job-1") == [result()]
        local = store.get_local_input("latency")
        assert local is not None and local.payload == {"gpt": [1.5, 2.0]} and local.updated_at == 50.0
        assert store.integrity_check() == "ok"


def test_peer_addresses_keep_the_latest_word_across_a_reopen(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_addresses([(ALICE, ["/ip4/10.0.0.1/tcp/4001"]), (BOB, [])], 1.0)
        store.put_addresses([(ALICE, ["/ip4/10.0.0.2/tcp/4001", "/ip4/10.0.0.3/tcp/4001"])], 2.0)
        with pytest.raises(StoreError, match="32 bytes"):
            store.put_addresses([(b"short", ["/ip4/10.0.0.9/tcp/1"])], 3.0)
    with Store.open(db_path) as store:
        assert store.peer_addresses() == {ALICE: ["/ip4/10.0.0.2/tcp/4001", "/ip4/10.0.0.3/tcp/4001"]}


def test_job_state_and_listing(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.put_job(job("a"))
        assert not store.put_job(job("a", state="running")), "second insert of the same id is a no-op"
        store.put_job(job("b"))
        store.set_job_state("b", "running", 101.0)
        assert [j.id for j in store.list_jobs(state="running")] == ["b"]
        assert store.get_job("a").state == "pending"  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="no job 'zzz'"):
            store.set_job_state("zzz", "running", 1.0)
        with pytest.raises(StoreError, match="job state 'bogus'"):
            store.set_job_state("a", "bogus", 1.0)  # type: ignore[arg-type]
        assert store.get_job("nope") is None


def test_a_jobs_roster_and_end_reason_are_columns_that_survive_a_reopen(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_job(job("a"))
        store.put_job(job("b"))
        store.set_roster("a", [BOB, ALICE])  # the creator's order is kept
        store.end_job("b", "failed", "no roster from the job's creator by the start", 102.0)
        with pytest.raises(StoreError, match="no job 'zzz'"):
            store.set_roster("zzz", [ALICE])
        with pytest.raises(StoreError, match="32 bytes"):
            store.set_roster("a", [b"short"])
        assert store.revocation_list() is None
    with Store.open(db_path) as store:
        a, b = store.get_job("a"), store.get_job("b")
        assert a is not None and a.roster == (BOB, ALICE) and a.end_reason is None
        assert b is not None and b.roster is None and (b.state, b.end_reason, b.updated_at) == (
            "failed", "no roster from the job's creator by the start", 102.0)


def test_an_old_village_db_with_meta_rows_keeps_them_in_columns(db_path: Path) -> None:
    """A village.db of schema 6 keeps its roster, end reason, revocation list and (pre-spent_rounds)
    release count; the `meta` table goes."""
    from villaged.store import MIGRATIONS

    raw = sqlite3.connect(db_path)
    for migration in MIGRATIONS[:6]:
        for statement in migration:
            assert isinstance(statement, str)
            raw.execute(statement)
    raw.execute("INSERT INTO jobs VALUES ('j1', '{}', ?, 'running', 1.0, 1.0)", (ALICE,))
    raw.execute("INSERT INTO jobs VALUES ('j2', '{}', ?, 'failed', 1.0, 2.0)", (ALICE,))
    raw.execute("INSERT INTO results VALUES ('j1', 0, 0, ?, x'0102', '[]', '[]', x'5151', 3.0)", (COORD,))
    raw.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("roster/j1", f"{BOB.hex()},{ALICE.hex()}"),
        ("roster/j2", ""),  # a roster of nobody is still a roster
        ("job_end_reason/j2", "only 1 members joined before the start"),
        ("privacy_releases/j1", "4"),
        ("revocations", b"signed list".hex()),
        ("roster/gone", ALICE.hex()),  # a job this node no longer stores
    ])
    raw.execute("INSERT INTO spent_rounds VALUES ('j1', 5, 0, 9.0)")
    raw.execute("PRAGMA user_version = 6")
    raw.commit()
    raw.close()
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        j1, j2 = store.get_job("j1"), store.get_job("j2")
        assert j1 is not None and j1.roster == (BOB, ALICE) and j1.end_reason is None and j1.state == "running"
        assert j2 is not None and j2.roster == () and j2.end_reason == "only 1 members joined before the start"
        assert store.revocation_list() == b"signed list"
        assert store.spent_count("j1") == 4 + 1 and store.spent_count("j2") == 0
        kept = store.get_result("j1", 0)
        assert kept is not None and kept.signed_announcement == b"QQ" and kept.aggregate == b"\x01\x02"
        assert [t for (t,) in store._db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'")] == []
        assert store.integrity_check() == "ok"


def test_round_is_updated_in_place(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_job(job())
        store.record_round(RoundRecord("job-1", 0, 0, COORD, "running", 1.0, (ALICE,)))
        done = RoundRecord("job-1", 0, 0, COORD, "completed", 1.0, (ALICE,), (), {"unmask": 0.25}, 3.0)
        store.record_round(done)
        assert store.rounds("job-1") == [done]
        with pytest.raises(StoreError, match="unknown job"):
            store.record_round(RoundRecord("ghost", 0, 0, COORD, "running", 1.0))


def test_put_result_is_idempotent_and_detects_conflicts(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_job(job())
        assert store.put_result(result()) == "stored"
        assert store.put_result(result()) == "duplicate"
        with pytest.raises(StoreError, match="different result for round 0"):
            store.put_result(result(aggregate=b"\xff"))
        with pytest.raises(StoreError, match="unknown job"):
            store.put_result(result(job_id="ghost"))
        assert store.get_results("job-1") == [result()]


def test_the_lowest_completed_attempt_is_the_rounds_result(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_job(job())
        assert store.put_result(result(attempt=1)) == "stored"
        assert store.put_result(result(attempt=2, aggregate=b"\x09")) == "superseded"
        assert store.result_attempt("job-1", 0) == 1
        assert store.put_result(result(attempt=0, aggregate=b"\x07")) == "stored"
        assert store.get_results("job-1") == [result(attempt=0, aggregate=b"\x07")]
        assert store.result_attempt("job-1", 0) == 0 and store.result_attempt("job-1", 5) is None
        assert store.put_result(result(attempt=1)) == "superseded"


def test_result_rounds_lists_stored_rounds_in_order(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_job(job())
        assert store.result_rounds("job-1") == []
        for r in (2, 0):
            store.put_result(result(round_=r))
        assert store.result_rounds("job-1") == [0, 2]
        assert store.result_rounds("ghost") == []


def test_local_input_replace_and_reject(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.put_local_input("x", [1], 1.0)
        store.put_local_input("x", {"y": 2}, 2.0)
        local = store.get_local_input("x")
        assert local is not None and (local.payload, local.updated_at) == ({"y": 2}, 2.0)
        with pytest.raises(StoreError, match="not JSON-serializable"):
            store.put_local_input("bad", float("nan"), 3.0)


def test_newer_schema_and_garbage_file_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    Store.open(newer).close()
    with sqlite3.connect(newer) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this villaged"):
        Store.open(newer)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="garbage.db"):
        Store.open(garbage)


_CHILD = textwrap.dedent(
    """
    import sys
    from villaged.store import JobRecord, ResultRecord, Store
    store = Store.open(sys.argv[1])
    store.put_job(JobRecord("job", {}, b"a" * 32, "running", 0.0, 0.0))
    print("ready", flush=True)
    r = 0
    while True:
        store.put_result(ResultRecord("job", r, 0, b"c" * 32, bytes(4096), (b"a" * 32,), (), b"s" * 64, float(r)))
        print(r, flush=True)
        r += 1
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_loses_no_committed_result(tmp_path: Path, seed: int) -> None:
    db_path = tmp_path / DB_FILENAME
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(random.Random(seed).uniform(0.05, 0.4))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    committed = [int(line) for line in child.stdout.read().splitlines()]
    child.stdout.close()
    assert committed, "the child committed nothing before the kill; the test proves nothing"
    with Store.open(db_path) as store:
        assert store.integrity_check() == "ok"
        stored = {r.round for r in store.get_results("job")}
    # Every reported round is there; at most the one in flight beyond it.
    assert set(committed) <= stored
    assert stored <= set(range(max(committed) + 2))


def test_upgrade_from_schema_1_keeps_data(db_path: Path) -> None:
    # Build a version-1 database by hand, exactly as the first release left it.
    from villaged.store import MIGRATIONS

    raw = sqlite3.connect(db_path)
    for statement in MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("INSERT INTO jobs VALUES ('old', '{}', ?, 'running', 1.0, 1.0)", (ALICE,))
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 2
        assert store.get_job("old") is not None
        store.add_job_member("old", BOB, 2.0)
        store.add_job_member("old", ALICE, 3.0)
        store.add_job_member("old", BOB, 4.0)  # idempotent
        assert store.job_members("old") == [ALICE, BOB]
        with pytest.raises(StoreError, match="unknown job"):
            store.add_job_member("ghost", BOB, 1.0)
        assert store.integrity_check() == "ok"


def test_a_results_votes_survive_a_restart_and_go_with_the_attempt_that_replaces_it(db_path: Path) -> None:
    """The votes are the evidence a node serves with the aggregate (protocol/evidence.py)."""
    with Store.open(db_path) as store:
        store.put_job(job())
        assert store.put_result(replace(result(attempt=1), votes=(b"vote-1a", b"vote-1b"))) == "stored"
        assert store.put_result(replace(result(attempt=2), votes=(b"vote-2",))) == "superseded"
    with Store.open(db_path) as store:
        assert store.get_result("job-1", 0).votes == (b"vote-1a", b"vote-1b")  # type: ignore[union-attr]
        assert store.put_result(replace(result(attempt=0), votes=(b"vote-0",))) == "stored"
        assert store.get_results("job-1")[0].votes == (b"vote-0",)
