"""netsim workloads: seeded inputs the daemon accepts, the expected digest is exactly what the
daemon's quantize-and-sum gives, and the routing-priors checker catches wrong sums, wrong
participant sets and decoded figures outside the error bound."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from netsim.run import RunConfig, Scenario
from protocol.announcements import aggregate_digest
from protocol.kinds import KINDS, dequantize_total, quantize_input

MEMBERS = [f"{i:02x}" * 8 for i in range(6)]


def _scenario(workload: str, n: int = 6, seed: int = 3) -> Scenario:
    scenario = Scenario(RunConfig(n=n, d=40, workload=workload, seed=seed))
    scenario.spec(start_delay=1.0, round_interval=0.0)
    scenario.workload.make_inputs(MEMBERS[:n], seed)
    return scenario


def _daemon_view(scenario: Scenario, participants: list[str]) -> dict:
    """What villaged's `GET /v1/jobs/{id}/results` shows for a round of `participants`
    (`villaged/jobs.py` client_input + `villaged/daemon.py` _result_view), from the JSON inputs."""
    spec, quantizer = scenario.workload.spec, scenario.workload.quantizer
    assert spec is not None and quantizer is not None
    kind = KINDS[spec.kind]
    words = np.zeros(spec.dimension, dtype=np.uint64)
    for m in participants:
        payload = json.loads(json.dumps(scenario.inputs[m]))  # as stored by the daemon
        words += quantize_input(spec, kind.encode(spec, payload), rounding_seed=b"\x00" * 32)
    aggregate = (words % (1 << 32)).astype("<u4")
    view = kind.decode(spec, dequantize_total(spec, aggregate.astype(np.uint32)), len(participants))
    view.update({"participants": participants, "dropped": [], "error_bound": quantizer.error_bound(len(participants)),
                 "digest": aggregate_digest(aggregate.tobytes()).hex()})
    return view


@pytest.mark.parametrize("workload", ["vector", "routing-priors"])
def test_expected_digest_is_the_daemons(workload: str) -> None:
    scenario = _scenario(workload)
    for participants in (MEMBERS, MEMBERS[1:4]):
        view = _daemon_view(scenario, participants)
        assert scenario.workload.expected(participants)[1] == view["digest"]
        assert scenario.workload.check_result(view) == []
        assert scenario.workload.check_result({**view, "participants": participants[:-1]})  # one participant too few


def test_routing_priors_inputs_are_seeded_and_plausible() -> None:
    a, b = _scenario("routing-priors", seed=5), _scenario("routing-priors", seed=5)
    assert a.inputs == b.inputs
    assert a.inputs != _scenario("routing-priors", seed=6).inputs
    assert a.workload.dimension == 6 * 4 * 2 * 2 + 20 * 4 + 3 * 3
    for payload in a.inputs.values():
        assert payload["models"] and all(c.get("success_count", 0) <= c.get("total_count", 0) for c in payload["models"])
        vector = KINDS["routing-priors"].encode(a.workload.spec, payload)
        scaled = np.delete(vector, KINDS["routing-priors"].exact_slots(a.workload.spec))  # counts are whole numbers
        assert np.all((scaled >= 0) & (scaled <= 1))
    spec_form = [payload for payload in a.inputs.values() if "total_count" not in payload["models"][0]]
    assert 0 < len(spec_form) < len(a.inputs)  # some nodes send the spec's record (success_rate, sample_count)
    view = _daemon_view(a, MEMBERS)
    assert len(view["models"]) == 16 and len(view["request_patterns"]) == 20 and len(view["carbon"]) == 3


def test_routing_priors_checker_catches_wrong_figures() -> None:
    scenario = _scenario("routing-priors")
    view = _daemon_view(scenario, MEMBERS)
    assert scenario.workload.check_result(view) == []
    bad = copy.deepcopy(view)
    bad["models"][3]["latency_percentile"]["p95"] += 0.01  # 10 microseconds
    assert any("p95" in p for p in scenario.workload.check_result(bad))
    bad = copy.deepcopy(view)
    bad["models"][0]["success_rate"] -= 1e-6
    assert any("success_rate" in p for p in scenario.workload.check_result(bad))
    bad = copy.deepcopy(view)
    name = next(iter(bad["request_patterns"]))
    others = [m for m in scenario.workload.section["models"] if m != bad["request_patterns"][name]["optimal_model"]]
    bad["request_patterns"][name]["optimal_model"] = others[0]
    assert any("optimal model" in p for p in scenario.workload.check_result(bad))
    bad = copy.deepcopy(view)
    bad["carbon"]["eu-north"]["reports"] += 1
    assert any("reports" in p for p in scenario.workload.check_result(bad))
    bad = copy.deepcopy(view)
    del bad["models"][5]
    assert any("one side only" in p for p in scenario.workload.check_result(bad))
    assert scenario.workload.check_result({**view, "digest": "00" * 32})
