"""netsim's training workload without processes: seeded partitions of a bundled data set, the
replayed aggregate is the daemon's exact quantized sum, the replayed model chain follows the
accepted results (a round without one changes nothing), and the checks catch a wrong participant
set, a result computed from another model, and a node reporting another model digest."""

from __future__ import annotations

import numpy as np
import pytest

from netsim.report import accuracy_curve, render_html, training_summary
from netsim.run import RunConfig, Scenario
from netsim.training_workload import TrainingOptions, TrainingWorkload, options_from
from protocol.announcements import aggregate_digest
from protocol.jobs import JobSpec
from protocol.kinds import quantize_input
from protocol.training import rounds, update
from protocol.training.data import parse_local_data

MEMBERS = [f"{i:02x}" * 8 for i in range(1, 6)]


def _workload(training_rounds: int = 3, seed: int = 3, **options: object) -> TrainingWorkload:
    scenario = Scenario(RunConfig(n=len(MEMBERS), rounds=training_rounds, workload="training", seed=seed,
                                  training=TrainingOptions(**{"dataset": "wine", **options})))  # type: ignore[arg-type]
    scenario.spec(start_delay=1.0, round_interval=0.0)
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload)
    workload.make_inputs(MEMBERS, seed)
    return workload


def _daemon_result(workload: TrainingWorkload, r: int, participants: list[str], weights: np.ndarray) -> dict:
    """What a node stores for round r, computed the daemon's way from the JSON it was given
    (villaged/jobs.py client_input: the prepared contribution quantized with nearest rounding)."""
    spec = workload.spec
    assert spec is not None and spec.training is not None
    words = np.zeros(spec.dimension, dtype=np.uint64)
    for m in participants:
        data = parse_local_data(workload.payloads[m], spec.training.architecture, spec.data)
        vector = rounds.contribution(spec, r, bytes.fromhex(m), weights, data)
        words += quantize_input(spec, vector, rounding_seed=b"\x00" * 32)
    aggregate = (words % (1 << 32)).astype("<u4")
    return {"round": r, "participants": participants, "dropped": [], "digest": aggregate_digest(aggregate.tobytes()).hex(),
            "_words": aggregate.astype(np.uint32)}


def test_spec_and_inputs() -> None:
    workload = _workload(training_rounds=4)
    spec = workload.spec
    assert spec is not None and spec.kind == "training" and spec.rounds == 5  # 4 training rounds, 1 evaluation
    assert spec.quantization.rounding == "nearest" and spec.privacy is None
    assert spec.dimension == update.dimension(13 * 3 + 3)  # wine: 13 features, 3 classes, logistic
    assert workload.split is not None
    union = np.sort(np.concatenate(workload.parts))
    assert np.array_equal(union, np.arange(len(workload.split.y_train)))  # every training row, once
    test_rows = {tuple(row) for row in workload.split.X_test.tolist()}
    for payload in workload.payloads.values():
        assert not test_rows & {tuple(row) for row in payload["features"]}  # the test split stays with netsim
    again = _workload(training_rounds=4)
    assert again.payloads == workload.payloads
    assert _workload(training_rounds=4, seed=4).payloads != workload.payloads


def test_dirichlet_partition_skews_labels() -> None:
    iid = _workload(partition="iid")
    skewed = _workload(partition="dirichlet", alpha=0.1)

    def classes_per_peer(w: TrainingWorkload) -> float:
        return float(np.mean([len(set(p["labels"])) for p in w.payloads.values()]))

    assert classes_per_peer(skewed) < classes_per_peer(iid) == 3.0


def test_replayed_aggregate_and_chain_match_the_daemons() -> None:
    workload = _workload(training_rounds=3)
    spec = workload.spec
    assert spec is not None
    weights, state = rounds.default_initial(spec), {}
    # Round 1 has no result: the model passes through it unchanged.
    plan = {0: MEMBERS, 1: None, 2: MEMBERS[1:4], 3: MEMBERS[:4]}
    digests = []
    for r, participants in plan.items():
        assert workload.model_digest(r) == rounds.digest(spec, weights).hex()
        digests.append(workload.model_digest(r))
        if participants is None:
            continue
        result = _daemon_result(workload, r, participants, weights)
        assert workload.check_result(result) == []
        assert workload.check_result({**result, "participants": participants[:-1]})  # one participant too few
        assert workload.check_result({**result, "participants": participants + ["ff" * 8]})  # a stranger
        weights, state = rounds.advance(spec, r, weights, state, result["_words"], len(participants))
    assert digests[1] == digests[2] and digests[0] != digests[1]  # round 1 changed nothing
    assert workload.model_digest(3) == digests[3]
    assert sorted(workload.held) == [0, 2, 3]
    assert workload.train_seconds  # netsim timed its replay of the members' training


def test_a_result_from_another_model_is_caught() -> None:
    workload = _workload(training_rounds=2)
    spec = workload.spec
    assert spec is not None
    first = _daemon_result(workload, 0, MEMBERS, rounds.default_initial(spec))
    assert workload.check_result(first) == []
    # A node that skipped round 0's result trains round 1 from the initial model: another aggregate.
    stale = _daemon_result(workload, 1, MEMBERS, rounds.default_initial(spec))
    problems = workload.check_result(stale)
    assert problems and "replayed" in problems[0]
    assert 1 not in workload.held  # the chain does not follow a wrong result


def test_status_checks() -> None:
    workload = _workload(training_rounds=2)
    spec = workload.spec
    assert spec is not None
    assert workload.check_result(_daemon_result(workload, 0, MEMBERS, rounds.default_initial(spec))) == []
    good = {"round": 0, "accuracy": 0.5, "loss": 1.0, "participants": 5, "agrees": True,
            "model_digest": workload.model_digest(0), "next_model_digest": workload.model_digest(1)}
    statuses = {0: {"curve": [good]}, 1: {"curve": [good]}, 2: None}
    problems, point = workload.check_statuses(0, statuses)
    assert problems == [] and point["accuracy"] == 0.5
    wrong = {**good, "next_model_digest": "ab" * 32}
    problems, _ = workload.check_statuses(0, {0: {"curve": [good]}, 1: {"curve": [wrong]}})
    assert any("different next_model_digests" in p for p in problems)
    assert any("peers [1] report next_model_digest" in p for p in problems)
    problems, _ = workload.check_statuses(0, {0: {"curve": [{**good, "agrees": False}]}})
    assert any("derived another model" in p for p in problems)
    assert workload.check_statuses(1, statuses) == ([], {})  # nobody holds round 1 yet


def test_accuracy_and_baseline() -> None:
    workload = _workload(training_rounds=3)
    spec = workload.spec
    assert spec is not None
    weights, state = rounds.default_initial(spec), {}
    for r in range(3):
        result = _daemon_result(workload, r, MEMBERS, weights)
        assert workload.check_result(result) == []
        weights, state = rounds.advance(spec, r, weights, state, result["_words"], len(MEMBERS))
    initial = workload.test_accuracy(workload.model(0)[0])
    final = workload.test_accuracy(workload.model(3)[0])
    assert final > initial and final > 0.8  # wine is easy
    assert 0.8 < workload.centralized_accuracy() <= 1.0


def test_privacy_section_fits_the_job() -> None:
    """With epsilon the spec gets the per-round epsilon whose composition over the job's rounds fits
    it (as the training API computes it); the distributed noise needs enough participants per round."""
    members = [f"{i:02x}" * 8 for i in range(1, 21)]
    scenario = Scenario(RunConfig(n=20, rounds=30, workload="training", seed=3, min_participants=15,
                                  training=TrainingOptions(dataset="wine", epsilon=1.0, delta=1e-5)))
    spec_dict = scenario.spec(start_delay=1.0, round_interval=0.0)
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload)
    workload.make_inputs(members, 3)
    spec = workload.spec
    assert spec is not None and spec.privacy is not None and workload.private and not workload.replayable
    assert spec.privacy.budget_epsilon == 1.0 and spec.privacy.epsilon < 1.0 / 5
    plan = spec.noise_plan()
    assert plan is not None and plan.spent(spec.rounds) <= 1.0
    assert JobSpec.from_dict(spec_dict) == spec  # the daemon reads the same spec
    # Noise netsim cannot know: participants are checked, the aggregate is not replayed.
    assert workload.check_result({"round": 0, "participants": members[:15], "digest": "00" * 32}) == []
    assert workload.check_result({"round": 0, "participants": ["ff" * 8], "digest": "00" * 32})


def test_options_from_a_report() -> None:
    options = options_from({"dataset": "digits", "hidden": [16, 8], "architecture": "mlp", "unknown": 1})
    assert options.hidden == (16, 8) and options.architecture == "mlp"
    with pytest.raises(ValueError, match="data set"):
        TrainingWorkload(RunConfig(workload="training", training=TrainingOptions(dataset="mnist")))


def test_report_draws_the_accuracy_curve() -> None:
    rounds_ = [{"round": r, "check": {"verdict": "exact"}, "participants": [0, 1, 2], "dropped": [], "attempts": [],
                "wall_seconds": 0.5, "first_result_at": 100.0 + 2 * r,
                "training": {"problems": [], "accuracy": 0.3 + 0.2 * r, "loss": 1.0, "test_accuracy": 0.25 + 0.2 * r,
                             "participants": 3}} for r in range(4)]
    run = {"ok": True, "config": {"n": 3, "d": 1000, "rounds": 3, "processes": 3}, "dimension": 46, "workload": "training",
           "rounds": rounds_, "events": [], "final_check": {"results_checked": 12, "mismatches": 0, "missing": 0},
           "training": {"ok": True, "problems": [], "dataset": "wine", "partition": "iid", "architecture": "logistic",
                        "parameters": 42, "optimizer": "fedavg", "privacy": None, "training_rounds": 3,
                        "rounds_with_result": 3, "federated_accuracy": 0.86, "centralized_accuracy": 0.9,
                        "gap_points": 4.0}}
    summary = training_summary(run)
    assert [p["test_accuracy"] for p in summary["curve"]] == pytest.approx([0.25, 0.45, 0.65, 0.85])
    assert summary["round_period_s_median"] == 2.0 and summary["outside_attempts_s_median"] == 1.5
    svg = accuracy_curve(run)
    assert svg.count("<polyline") == 2 and "centralized 90.0 %" in svg and "federated final 86.0 %" in svg
    page = render_html([run])
    assert "Accuracy per round" in page and "final federated test accuracy 86.0 %" in page and "d=46" in page


def test_replayed_sum_reads_back() -> None:
    """The replayed aggregate reads back as the daemon reads it: the members' held-out rows behind
    the evaluation (protocol/training/data.py split_heldout holds out a fifth of each member's rows)."""
    workload = _workload(training_rounds=2)
    spec = workload.spec
    assert spec is not None
    read = rounds.read_sum(spec, workload.aggregate(0, MEMBERS), len(MEMBERS))
    held_out = sum(round(len(p["labels"]) * 0.2) for p in workload.payloads.values())
    assert read.accuracy is not None and abs(read.evaluated - held_out) < 0.01
    assert abs(read.examples - (sum(len(p["labels"]) for p in workload.payloads.values()) - held_out)) < 0.01


def test_daemon_timings_summarised() -> None:
    from netsim.training_workload import daemon_timings

    statuses = [{"timings": {"train_seconds": {"0": 0.02, "1": 0.04}, "derive_seconds": {"1": 0.001},
                             "initial_model_fetch_seconds": None}},
                {"timings": {"train_seconds": {"0": 0.03}, "derive_seconds": {}, "initial_model_fetch_seconds": 0.5}},
                {"curve": []}]  # a daemon that does not say
    timings = daemon_timings(statuses)
    assert timings == {"train_s": {"median": 0.03, "max": 0.04, "count": 3},
                       "derive_model_s": {"median": 0.001, "max": 0.001, "count": 1},
                       "initial_model_fetch_s": {"median": 0.5, "max": 0.5, "count": 1}}
    assert daemon_timings([{"curve": []}]) is None
