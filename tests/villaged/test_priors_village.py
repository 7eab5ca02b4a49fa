"""Routing priors and distributed DP on real daemons: a 4-node, 2-round routing-priors job checked
against the spec's formulas in plaintext (success rates exactly); a DP job that stops when its budget is used."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio.testing

from protocol.jobs import JobSpec
from tests.protocol.test_priors import SECTION, check_against_plaintext, node_payload, plaintext
from tests.villaged.village import running_village, village_configs, wait_for
from villaged.control import NotFound
from villaged.daemon import Daemon
from villaged.jobs import Job, JobBook, JobHooks, run_job
from villaged.store import Store

TIMING = {"round_interval": 0.5, "start_delay": 4.0, "min_participants": 3, "neighbours": 4, "phase_timeout": 3.0}


async def result_count(daemon: Daemon, job_id: str) -> int:
    try:
        return len(await daemon.results(job_id))
    except NotFound:
        return 0


async def meshed_village(daemons: list[Daemon]) -> None:
    async def meshed() -> bool:
        return (min([len(await d.peers()) for d in daemons]) >= 2
                and min([len(await d.members()) for d in daemons]) == len(daemons))

    await wait_for(meshed, timeout=30)


@pytest.mark.slow
async def test_four_nodes_two_rounds_of_routing_priors(tmp_path: Path) -> None:
    async with running_village(village_configs(tmp_path, 4)) as nodes:
        daemons = [d for d, _, _ in nodes]
        rng = random.Random(3)
        payloads = [node_payload(rng) for _ in daemons]
        for daemon, payload in zip(daemons, payloads, strict=True):
            await daemon.put_data("stats", payload)
        await meshed_village(daemons)
        job = await daemons[0].create_job({"kind": "routing-priors", "data": "stats", "priors": SECTION, "rounds": 2,
                                           "max_participants": 10, **TIMING})

        async def all_done() -> bool:
            return min([await result_count(d, job["id"]) for d in daemons]) == 2

        await wait_for(all_done, timeout=60)
        for daemon in daemons:
            view = await daemon.priors(job["id"])
            assert view["round"] == 1 and view["participants"] == 4
            check_against_plaintext(view["priors"], payloads, tol=1e-3, job=daemon.book.jobs[job["id"]].spec)
            cells = {(c["model_id"], c["region"], c["quality_tier"]): c for c in view["priors"]["models"]}
            counted = {key: c for key, c in plaintext(payloads)["cells"].items() if c["t"] > 0}
            for key, c in counted.items():  # counts are summed as integers: the spec's formula, exactly
                assert (cells[key]["success_count"], cells[key]["total_count"]) == (c["s"], c["t"])
                assert cells[key]["success_rate"] == c["s"] / c["t"]
            # same statistics both rounds: no routing decision changed
            assert view["validation"]["stability_score"] == 1.0
            assert 0.0 <= view["validation"]["diversity_score"] <= 1.0
            registry = daemon.metrics.registry
            assert registry.get_sample_value("federation_prior_stability") == 1.0
            assert registry.get_sample_value("federation_model_diversity") == view["validation"]["diversity_score"]


@pytest.mark.slow
async def test_dp_job_stops_when_its_budget_is_used(tmp_path: Path) -> None:
    async with running_village(village_configs(tmp_path, 3)) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("grads", [0.01 * i] * 16)
        await meshed_village(daemons)
        privacy = {"epsilon": 1.0, "delta": 1e-5, "budget_epsilon": 1.2}  # one release fits, two do not
        job = await daemons[0].create_job({"kind": "vector", "data": "grads", "dimension": 16, "rounds": 3,
                                           "max_participants": 10, "privacy": privacy, **TIMING})
        assert job["privacy"]["rounds_affordable"] == 1

        async def all_ended() -> bool:
            try:
                return {(await d.get_job(job["id"]))["state"] for d in daemons} == {"completed"}
            except NotFound:
                return False

        await wait_for(all_ended, timeout=60)
        for daemon in daemons:
            view = await daemon.get_job(job["id"])
            assert view["results"] == 1
            assert view["end_reason"].startswith("privacy budget used")
            assert view["privacy"]["releases"] == 1 and view["privacy"]["epsilon_spent"] <= 1.0
            result = (await daemon.results(job["id"]))[0]
            assert result["noise_std"] > 0


async def test_round_over_budget_is_not_started_and_the_count_survives_a_restart(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    me = bytes(32)
    spec = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": 5,
                              "privacy": {"epsilon": 1.0, "delta": 1e-5, "budget_epsilon": 2.0}})
    with Store.open(tmp_path / "village.db") as store:
        book = JobBook(store, me, lambda member: True)
        job = book.add_job("j1", spec, me, time.time() - 100)
        assert job is not None
        book.set_state("j1", "running")
        affordable = spec.noise_plan().affordable_releases()  # type: ignore[union-attr]
        for round_number in range(affordable):  # each round whose masked input left is a release
            assert book.budget_allows_round(job)
            store.record_spent("j1", round_number, 0, time.time())
    with Store.open(tmp_path / "village.db") as store:
        book = JobBook(store, me, lambda member: True)
        job2: Job = book.jobs["j1"]
        assert book.privacy_releases("j1") == affordable and not book.budget_allows_round(job2)

        async def never(*args: object) -> None:
            raise AssertionError("no round may start")

        async def nobody_has_it(*args: object) -> bool:
            return False

        hooks = JobHooks(reachable=never, has_result=lambda j, r: False, fetch_result=nobody_has_it, on_round_end=never,  # type: ignore[arg-type]
                         announce_roster=never, connect_ahead=lambda job, r: None)
        await run_job(job2, book, None, store, hooks)  # type: ignore[arg-type]
        assert job2.state == "completed" and store.get_job("j1").state == "completed"  # type: ignore[union-attr]
        assert (book.end_reason("j1") or "").startswith("privacy budget used")
