"""A node owns the use of its input (issue #15 item 3): a member that announces a job naming a victim's
input with rounds of two must not get it. Real daemons, real SQLite files."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from protocol.jobs import JobSpec
from protocol.policy import InputPolicy
from tests.villaged.village import running_village, village_configs, wait_for
from villaged.control import Conflict
from villaged.daemon import Daemon
from villaged.jobs import JobBook
from villaged.store import MIGRATIONS, Store

# The attack: rounds small enough that members the attacker controls (or one coordinator) learn the
# victim's input from the sum. Two would be the extreme; the spec validation refuses rounds of two
# now (no consistency quorum without the coordinator's vote), so three: the attacker and a sybil.
PAIR_SPEC = {
    "kind": "vector", "data": "stats", "dimension": 4, "rounds": 1, "start_delay": 6.0, "min_participants": 3,
    "neighbours": 2, "phase_timeout": 3.0, "quantization": {"clip": 100.0, "scale": 10.0, "rounding": "nearest"},
}
ATTACKER, VICTIM = b"\xaa" * 32, b"\x01" * 32


def refusals(daemon: Daemon, stage: str) -> float:
    return daemon.metrics.input_refusals.labels(stage=stage)._value.get()


@pytest.mark.slow
async def test_a_member_cannot_pair_up_with_a_victim_to_read_its_input(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 3)
    # node 1 keeps the default floor (5); node 2 accepts rounds of two but only from a creator it names.
    configs[1] = replace(configs[1], participant_floor=5)
    async with running_village(configs) as nodes:
        attacker, by_floor, by_creator = (d for d, _, _ in nodes)
        for daemon in (attacker, by_floor, by_creator):
            await daemon.put_data("stats", [1.0, 2.0, 3.0, 4.0])
        await by_creator.put_data_policy("stats", {"creators": [by_creator.me.hex()]})

        async def meshed() -> bool:
            return min([len(await d.members()) for d in (attacker, by_floor, by_creator)]) == 3

        await wait_for(meshed, timeout=30)
        job = await attacker.create_job(PAIR_SPEC)

        async def refused_everywhere() -> bool:
            return refusals(by_floor, "join") >= 1 and refusals(by_creator, "join") >= 1

        await wait_for(refused_everywhere, timeout=20)
        for victim in (by_floor, by_creator):
            assert victim.me not in victim.book.jobs[job["id"]].members
            assert await victim.book.client_input(job["id"], 0) is None  # nothing to mask, even if invited
            assert not victim.book.contributes(victim.book.jobs[job["id"]])
        assert attacker.me in attacker.book.jobs[job["id"]].members  # the attacker joined its own job, alone

        with pytest.raises(Conflict, match="job allows rounds of 3 participants, this input needs at least 5"):
            await by_floor.join_job(job["id"])
        with pytest.raises(Conflict, match=f"job creator {attacker.me.hex()} is not in this input's allowed creators"):
            await by_creator.join_job(job["id"])
        assert refusals(by_floor, "join") >= 2  # the auto-join, then the manual join
        assert 'federation_input_refusals_total{stage="join"}' in by_floor.metrics.render().decode()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "village.db")


def victim_book(store: Store, spec: dict[str, object], creator: bytes = ATTACKER) -> JobBook:
    book = JobBook(store, VICTIM, lambda member: True)
    book.add_job("job-1", JobSpec.from_dict(spec), creator, 1000.0)
    book.add_member("job-1", VICTIM)  # even a node that joined (by hand, or before a policy change) gives nothing
    store.put_local_input("stats", [1, 2, 3, 4], 10.0)
    return book


def test_the_default_floor_refuses_rounds_of_two_and_counts_it(store: Store) -> None:
    book = victim_book(store, PAIR_SPEC)
    job = book.jobs["job-1"]
    assert book.participant_floor == 5 and book.contribution_floor(job) == 5
    assert book.policy_refusal(job) == "job allows rounds of 3 participants, this input needs at least 5"
    assert not book.contributes(job)
    assert trio.run(book.client_input, "job-1", 0) is None
    assert book.metrics.input_refusals.labels(stage="round")._value.get() == 1


def test_a_job_at_the_floor_is_allowed(store: Store) -> None:
    book = victim_book(store, {**PAIR_SPEC, "min_participants": 5, "neighbours": 4})
    assert book.policy_refusal(book.jobs["job-1"]) is None
    assert book.contributes(book.jobs["job-1"])
    assert trio.run(book.client_input, "job-1", 0) is not None


def test_an_input_can_raise_the_floor_never_lower_it(store: Store) -> None:
    book = victim_book(store, {**PAIR_SPEC, "min_participants": 6, "neighbours": 4})
    store.set_input_policy("stats", InputPolicy(min_participants=3))
    assert book.contribution_floor(book.jobs["job-1"]) == 5
    store.set_input_policy("stats", InputPolicy(min_participants=8))
    assert book.contribution_floor(book.jobs["job-1"]) == 8
    assert book.policy_refusal(book.jobs["job-1"]) == "job allows rounds of 6 participants, this input needs at least 8"


def test_allowed_creators_and_jobs(store: Store) -> None:
    book = victim_book(store, {**PAIR_SPEC, "min_participants": 5, "neighbours": 4})
    store.set_input_policy("stats", InputPolicy(creators=(b"\x02" * 32,)))
    assert book.policy_refusal(book.jobs["job-1"]) == f"job creator {ATTACKER.hex()} is not in this input's allowed creators"
    store.set_input_policy("stats", InputPolicy(creators=(b"\x02" * 32, ATTACKER), jobs=("job-2",)))
    assert book.policy_refusal(book.jobs["job-1"]) == "job job-1 is not in this input's allowed jobs"
    store.set_input_policy("stats", InputPolicy(jobs=("job-1",)))
    assert book.policy_refusal(book.jobs["job-1"]) is None


def test_require_dp_refuses_a_job_without_privacy(store: Store) -> None:
    spec = {**PAIR_SPEC, "min_participants": 5, "neighbours": 4}
    book = victim_book(store, spec)
    store.set_input_policy("stats", InputPolicy(require_dp=True))
    assert book.policy_refusal(book.jobs["job-1"]) == (
        "this input requires differential privacy and the job has no privacy section")
    assert trio.run(book.client_input, "job-1", 0) is None
    private = {**spec, "privacy": {"epsilon": 1.0, "delta": 1e-6, "budget_epsilon": 4.0}}
    book.add_job("job-dp", JobSpec.from_dict(private), ATTACKER, 1000.0)
    assert book.policy_refusal(book.jobs["job-dp"]) is None


def test_the_policy_survives_a_restart_and_a_new_put_of_the_data(tmp_path: Path) -> None:
    with Store.open(tmp_path / "village.db") as store:
        store.set_input_policy("stats", InputPolicy(min_participants=9, repeat="allow"))  # before the data exists
        store.put_local_input("stats", [1, 2], 1.0)
        store.put_local_input("stats", [3, 4], 2.0)
    with Store.open(tmp_path / "village.db") as store:
        assert store.get_input_policy("stats") == InputPolicy(min_participants=9, repeat="allow")


def test_an_old_village_db_opens_and_its_inputs_get_the_default_policy(tmp_path: Path) -> None:
    path = tmp_path / "village.db"
    old_version = next(i for i, statements in enumerate(MIGRATIONS) if "input_policies" in " ".join(statements))
    db = sqlite3.connect(path, isolation_level=None)
    for statements in MIGRATIONS[:old_version]:  # the schema before input policies existed
        for statement in statements:
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {old_version}")
    db.execute("INSERT INTO local_inputs (name, payload, updated_at) VALUES (?, ?, ?)", ("stats", json.dumps([1, 2]), 5.0))
    db.close()
    with Store.open(path) as store:
        assert store.get_local_input("stats").payload == [1, 2]  # type: ignore[union-attr]
        assert store.get_input_policy("stats") == InputPolicy()
        store.set_input_policy("stats", InputPolicy(require_dp=True))
        assert store.get_input_policy("stats").require_dp
