"""netsim/verify.py: a round's one-word verdict and the final check, from what the peers stored."""

from __future__ import annotations

from typing import Any

from netsim.verify import check_round, final_check, rounds_missing


def _check(result: dict[str, Any]) -> list[str]:
    """A stand-in workload check: a result is exact when its digest is "good"."""
    return [] if result["digest"] == "good" else [f"digest {result['digest']}"]


def _result(r: int, digest: str = "good") -> dict[str, Any]:
    return {"round": r, "digest": digest}


def test_a_round_a_live_peer_never_fetched_is_named_with_the_peer() -> None:
    # The final check once counted only the results peers held: 10 restarted peers that never fetched
    # round 1 left a net-100 run "ok" with 190 of 200 results checked.
    assert rounds_missing({0: {0, 1}, 1: {0}, 2: set()}) == {1: [1], 2: [0, 1]}
    assert rounds_missing({0: {0, 1}, 1: {0, 1}}) == {}
    assert rounds_missing({}) == {}


def test_each_verdict_of_a_round() -> None:
    assert check_round(_check, {0: _result(0), 1: _result(0)}, missing=[])["verdict"] == "exact"
    assert check_round(_check, {}, missing=[2])["verdict"] == "aborted"
    assert check_round(_check, {0: _result(0)}, missing=[2]) == {
        "verdict": "missing", "peers_with_result": 1, "missing": [2], "mismatches": {}, "digests": 1}
    split = check_round(lambda result: [], {0: _result(0), 1: _result(0, "other")}, missing=[])
    assert (split["verdict"], split["digests"]) == ("split", 2)
    wrong = check_round(_check, {0: _result(0), 1: _result(0, "bad")}, missing=[2])
    assert (wrong["verdict"], wrong["mismatches"]) == ("mismatch", {"1": ["digest bad"]})  # a wrong sum outranks all


def test_final_check_counts_wrong_and_never_fetched_results() -> None:
    views = {0: [_result(0), _result(1, "bad")], 1: [_result(0)], 2: None}
    assert final_check(_check, views) == {
        "results_checked": 3, "mismatches": 1, "missing": 3,
        "offending": [{"peer": 0, "round": 1, "problems": ["digest bad"]},
                      {"peer": 1, "round": 1, "problems": ["missing: never fetched"]},
                      {"peer": 2, "round": 0, "problems": ["missing: never fetched"]},
                      {"peer": 2, "round": 1, "problems": ["missing: never fetched"]}],
    }
    assert final_check(_check, {0: [_result(0)], 1: [_result(0)]})["offending"] == []
