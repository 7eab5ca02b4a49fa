"""Training jobs on real daemons (issue 19): a village trains a model over the secure sum, every node
derives the same model, and a node that does not meet the requirements is refused with the reason."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from pathlib import Path

import nacl.signing
import numpy as np
import pytest
import trio

from protocol.announcements import ResultAnnouncement, aggregate_digest, sign_announcement
from protocol.kinds import quantize_input
from protocol.training import rounds
from protocol.training.data import parse_local_data
from netsim.datasets import load, partition
from protocol.training.model import Architecture, initial_weights, to_safetensors
from protocol.training.request import job_from_request
from tests.villaged.village import running_village, village_configs, wait_for
from villaged.capabilities import measure
from villaged.daemon import Daemon
from villaged.jobs import Job
from villaged.metrics import Metrics
from villaged.store import JobRecord, ResultRecord, Store
from villaged.training import TrainingWorker
from villaged.training_control import Forbidden

ARCH = {"architecture": "logistic", "features": 13, "classes": 3}


def body(**training: object) -> dict[str, object]:
    return {
        "job_name": "wine", "model_config": dict(ARCH),
        "training_config": {"rounds": 3, "min_participants": 3, "local_epochs": 2, "learning_rate": 0.05,
                            "batch_size": 16, "start_delay": 5.0, "round_interval": 0.0, "phase_timeout": 5.0,
                            **training},
    }


def wine_shards(n: int) -> list[dict[str, object]]:
    x, y = load("wine")
    return [{"features": x[rows].tolist(), "labels": y[rows].tolist()} for rows in partition(y, n, "iid", seed=3)]


async def hold_shards_and_mesh(daemons: list[Daemon]) -> None:
    """Each daemon holds a shard of wine as its input "training", and knows every other member."""
    for daemon, shard in zip(daemons, wine_shards(len(daemons)), strict=True):
        await daemon.put_data("training", shard)

    async def meshed() -> bool:
        return all([(await d.status())["members_known"] >= len(daemons) for d in daemons])

    await wait_for(meshed, timeout=30)


@pytest.mark.slow
async def test_a_village_trains_and_every_node_derives_the_same_model(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 4)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        await hold_shards_and_mesh(daemons)
        # The creator's own initial weights: the others hold only their digest (in the spec) and fetch them.
        start = to_safetensors(Architecture.from_dict(ARCH), np.full(3 * 13 + 3, 0.01))
        created = await daemons[0].create_training_job(
            {**body(), "model_config": {**ARCH, "initial_weights": base64.b64encode(start).decode()}})
        job_id = created["job_id"]

        async def done() -> bool:
            return all(d.book.jobs.get(job_id) is not None and d.book.jobs[job_id].state == "completed" for d in daemons)

        await wait_for(done, timeout=90)
        statuses = [await d.training_status(job_id) for d in daemons]
        curves = [s["curve"] for s in statuses]
        assert all(len(c) == 4 for c in curves), [len(c) for c in curves]
        assert all(p["agrees"] for c in curves for p in c)
        digests = {tuple(p["model_digest"] for p in c) for c in curves}
        assert len(digests) == 1, "nodes derived different models"
        assert curves[0][0]["model_digest"] == hashlib.sha256(start).hexdigest()
        assert all(d.store.get_blob(hashlib.sha256(start).hexdigest()) == start for d in daemons)
        timings = statuses[1]["timings"]
        assert set(timings["train_seconds"]) == {"0", "1", "2", "3"} and timings["initial_model_fetch_seconds"] > 0
        accuracy = [p["accuracy"] for p in curves[0]]
        assert accuracy[-1] > accuracy[0] + 0.2, accuracy  # the model learned (wine is easy)
        assert curves[0][-1]["final_evaluation"] and curves[0][-1]["participants"] == 4
        blob, digest, version = await daemons[2].training_model(job_id, None)
        assert version == 3 and hashlib.sha256(blob).hexdigest() == digest == curves[0][-1]["model_digest"]


@pytest.mark.slow
async def test_a_node_below_the_requirements_is_refused_naming_the_requirement(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 3)
    configs[2] = replace(configs[2], device_type="mobile", battery_percent=15)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        await hold_shards_and_mesh(daemons)
        job = await daemons[0].create_training_job({
            **body(), "participant_requirements": {"min_battery_percent": 30, "allowed_node_types": ["server", "mobile"]}})

        async def known() -> bool:
            return all(job["job_id"] in d.book.jobs for d in daemons)

        await wait_for(known, timeout=20)
        low = daemons[2]
        assert low.me not in low.book.jobs[job["job_id"]].members  # auto-join checked it too
        with pytest.raises(Forbidden, match="min_battery_percent: battery at 15 % and not charging"):
            await low.join_training(job["job_id"], {"node_id": low.me.hex(), "capabilities": {}})
        joined = await low.join_training(job["job_id"], {"node_id": low.me.hex(), "capabilities": {"charging": True}})
        assert joined["joined"] and joined["capabilities"]["charging"]
        with pytest.raises(Forbidden, match="allowed_node_types: this node is a laptop"):
            await low.join_training(job["job_id"], {"capabilities": {"device_type": "laptop"}})


def test_the_seed_body_becomes_a_training_spec_with_fields_named() -> None:
    spec, blob = job_from_request(body())
    assert spec.kind == "training" and spec.rounds == 4 and blob is None
    assert spec.dimension == rounds.default_initial(spec).size + 4
    arch = Architecture.from_dict(ARCH)
    weights = initial_weights(arch, 5) + 0.5
    encoded = base64.b64encode(to_safetensors(arch, weights)).decode()
    spec, blob = job_from_request({**body(), "model_config": {**ARCH, "initial_weights": encoded}})
    assert blob is not None and spec.training is not None
    assert spec.training.initial_model == hashlib.sha256(blob).hexdigest()
    for bad, field in (
        ({**body(), "model_config": {**ARCH, "features": 0}}, "model_config.features"),
        ({**body(), "model_config": {**ARCH, "initial_weights": "http://example.org/w"}}, "model_config.initial_weights"),
        ({**body(), "training_config": {"rounds": 0}}, "training_config.rounds"),
        ({**body(learning_rate=-1)}, "training_config.learning_rate"),
        ({**body(), "privacy_config": {"differential_privacy": True}}, "privacy_config.epsilon"),
        ({**body(), "participant_requirements": {"min_battery_percent": 101}}, "participant_requirements.min_battery_percent"),
        ({**body(), "surprise": 1}, "surprise"),
        ({**body(), "privacy_config": {"secure_aggregation": "no"}}, "privacy_config.secure_aggregation"),
    ):
        with pytest.raises(Exception) as caught:
            job_from_request(bad)
        assert getattr(caught.value, "field", None) == field, (field, caught.value)


def test_a_dp_job_fits_its_whole_epsilon_over_every_round() -> None:
    spec, _ = job_from_request({**body(), "privacy_config": {"differential_privacy": True, "epsilon": 1.0, "delta": 1e-5}})
    plan = spec.noise_plan()
    assert plan is not None and plan.budget_epsilon == 1.0
    assert plan.spent(spec.rounds) <= 1.0 < plan.spent(spec.rounds + 3)
    assert np.isclose(plan.spent(spec.rounds), 1.0, rtol=0.05)


def test_a_node_that_derives_another_model_than_the_coordinator_signed_says_so_and_sits_out(tmp_path: Path) -> None:
    """The coordinator signs the digest of the model its round produced; a node whose own derivation
    differs (another result, a different optimizer) counts it, logs it, and trains no further round."""
    spec, _ = job_from_request(body())
    assert spec.training is not None
    store = Store.open(tmp_path / "village.db")
    metrics = Metrics()
    worker = TrainingWorker(store, b"\x01" * 32, metrics, measure(village_configs(tmp_path, 1)[0]))
    members = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    start = rounds.default_initial(spec)
    total = sum(quantize_input(spec, rounds.contribution(spec, 0, m, start, parse_local_data(s, spec.training.architecture)),
                               b"r" * 32).astype(np.uint64) for m, s in zip(members, wine_shards(3), strict=True))
    aggregate = (total % (1 << 32)).astype("<u4").tobytes()
    words = np.frombuffer(aggregate, "<u4")
    honest = rounds.digest(spec, rounds.advance(spec, 0, start, {}, words, 3)[0])
    key = nacl.signing.SigningKey(b"\x07" * 32)
    for job_id, announced, agrees in (("honest", honest, True), ("lying", b"\x0e" * 32, False)):
        job = Job(job_id, spec, members[1], 0.0, "running", roster=members)
        store.put_job(JobRecord(job_id, spec.to_dict(), members[1], "running", 0.0, 0.0))
        assert worker.digest_after(job, 0, words, 3) == honest
        signed = sign_announcement(ResultAnnouncement(job_id, 0, 0, members, (), aggregate_digest(aggregate), b"\x0b" * 32,
                                                      {}, announced), key, b"certificate")
        store.put_result(ResultRecord(job_id, 0, 0, bytes(key.verify_key), aggregate, members, (), signed, 1.0))
        assert worker.check_announced(job, 0, announced) is agrees
        refusal = worker.agrees(job, 1)
        assert (refusal is None) is agrees, refusal
    assert refusal == "model 1 here differs from the one round 0's coordinator signed"
    assert metrics.training_model_mismatches._value.get() == 1
    store.close()


@pytest.mark.slow
async def test_a_plain_sum_job_is_joined_only_explicitly_and_marked_in_every_result(tmp_path: Path) -> None:
    """secure_aggregation false shows the coordinator every update: no node joins it on its own, and
    every result and curve point says the round was a plain sum."""
    configs = village_configs(tmp_path, 3)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        await hold_shards_and_mesh(daemons)
        job = await daemons[0].create_training_job({
            **body(rounds=1, start_delay=6.0), "privacy_config": {"secure_aggregation": False}})
        job_id = job["job_id"]

        async def known() -> bool:
            return all(job_id in d.book.jobs for d in daemons)

        await wait_for(known, timeout=20)
        assert not any(d.me in d.book.jobs[job_id].members for d in daemons)  # nobody auto-joined
        for daemon in daemons:
            await daemon.join_training(job_id, {"capabilities": {}})

        async def done() -> bool:
            return all(d.book.jobs[job_id].state == "completed" for d in daemons)

        await wait_for(done, timeout=60)
        status = await daemons[1].training_status(job_id)
        assert not status["secure_aggregation"] and len(status["curve"]) == 2
        assert all(point["secure_aggregation"] is False and point["agrees"] for point in status["curve"])
        assert all(r["secure_aggregation"] is False for r in await daemons[2].results(job_id))


async def test_an_invite_that_comes_before_this_node_began_training_waits_for_it(tmp_path: Path) -> None:
    """Back-to-back rounds: the next round's coordinator invites as soon as it holds the last result,
    before other nodes' job runners have begun training. Their inputs wait for the training instead
    of refusing the invitation (which left 1 to 18 nodes out of such rounds in netsim bench train)."""
    spec, _ = job_from_request(body())
    assert spec.training is not None
    store = Store.open(tmp_path / "village.db")
    worker = TrainingWorker(store, b"\x01" * 32, Metrics(), measure(village_configs(tmp_path, 1)[0]))
    job = Job("job-1", spec, b"\x02" * 32, 0.0, "running", roster=(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32))
    data = parse_local_data(wine_shards(3)[0], spec.training.architecture)
    got: list[np.ndarray | None] = []

    async def invited() -> None:
        got.append(await worker.contribution(job, 0, timeout=30.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(invited)
        await trio.sleep(0.2)
        assert not got  # still waiting: nothing prepared yet
        await worker.prepare(job, 0, data)
    expected = rounds.contribution(spec, 0, b"\x01" * 32, rounds.default_initial(spec), data)
    assert got[0] is not None and np.array_equal(got[0], expected)
    store.close()
