"""netsim/report.py: the page says in words whether the run passed, draws phases on the rounds' own
scale in protocol order, bytes per node as a distribution, and charts across runs only for several."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from netsim.report import nice_ticks, render_html, verdict

PHASES = {"advertise": 0.03, "consistency": 0.005, "masked": 0.036, "share": 0.01, "unmask": 0.007}  # as stored: sorted


def run(n: int = 8, ok: bool = True) -> dict[str, Any]:
    rounds = [{
        "round": r, "wall_seconds": 0.087, "result_spread_seconds": 0.03, "coordinator": 7, "coordinator_cpu_seconds": 0.1,
        "participants": list(range(6)), "dropped": [2, 4], "phase_seconds": PHASES, "check": {"verdict": "exact"},
        "attempts": [{"attempt": 0, "state": "completed", "abort_reason": None, "phase_timings": PHASES,
                      "started_at": 100.0 + 30 * r, "ended_at": 100.087 + 30 * r}],
        "bytes": {str(i): {"sent": 7000 + 100 * i, "received": 14000} for i in (0, 1, 3, 5, 6)} | {"7": {"sent": 51000, "received": 41000}},
    } for r in range(2)]
    events = [{"at": 1.0, "round": 0, "event": "armed client:masked", "process": 2, "peers": [2], "coordinator": False},
              {"at": 2.0, "round": 0, "event": "died", "process": 2, "peers": [2], "failpoint": "client:masked", "signal": "SIGKILL"},
              {"at": 2.0, "round": 0, "event": "died", "process": 4, "peers": [4], "failpoint": "client:masked", "signal": "SIGKILL"},
              {"at": 3.0, "round": 0, "event": "restarted", "process": 2, "peers": [2]}]
    return {"netsim": "run", "ok": ok, "seed": 1, "config": {"n": n, "d": 1000, "rounds": 2, "processes": n},
            "workload": "vector", "job_id": "j", "startup_seconds": 4.6, "rounds": rounds, "events": events,
            "final_check": {"results_checked": 16, "mismatches": 0, "missing": 0, "offending": []}}


@pytest.mark.parametrize(("top", "ticks"), [(0.087, [0, 0.02, 0.04, 0.06, 0.08, 0.1]), (33.0, [0, 10, 20, 30, 40]),
                                            (51_000, [0, 20_000, 40_000, 60_000]), (1.0, [0, 0.2, 0.4, 0.6, 0.8, 1.0])])
def test_ticks_are_round_numbers_covering_the_data(top: float, ticks: list[float]) -> None:
    assert nice_ticks(top) == pytest.approx(ticks)


def test_a_passing_run_reads_as_sentences() -> None:
    lines = verdict(run())
    assert lines[0].startswith("Passed. 2 of 2 rounds produced the exact sum")
    assert "Faults injected: 2 peers killed mid-round in all, 1 restarted." in lines[0]
    assert lines[1] == ("Round 0: exact sum, 6 participants, 2 dropped, 87 ms, 1 attempt. Peers 2, 4 killed (SIGKILL) "
                        "in the masked phase as client; peer 2 restarted after the round.")
    assert lines[2] == "Round 1: exact sum, 6 participants, 2 dropped, 87 ms, 1 attempt."


def test_a_failing_run_names_what_went_wrong() -> None:
    bad = run(ok=False)
    bad["rounds"][1]["check"]["verdict"] = "mismatch"
    bad["final_check"].update(mismatches=1, offending=[{"peer": 3, "round": 1, "problems": ["values[0]: 2 vs 1"]}])
    lines = verdict(bad)
    assert lines[0] == ("FAILED. round 1: WRONG result. Final check: 1 wrong and 0 missing of 16 results held by live "
                        "nodes. Faults injected: 2 peers killed mid-round in all, 1 restarted.")
    assert lines[1] == "Peer 3, round 1: values[0]: 2 vs 1."
    page = render_html([bad])
    assert 'class="badge FAILED"' in page and "WRONG result" in page


def test_page_draws_phases_in_protocol_order_on_the_rounds_scale_and_no_python_reprs() -> None:
    page = render_html([run()])
    assert page.count("<svg") == 2  # phases and bytes: one run, so no charts across runs
    titles = re.findall(r"<title>round 0 (\w+):", page)
    assert titles == ["advertise", "share", "masked", "consistency", "unmask"]
    assert ">100 ms</text>" in page and ">60 KB</text>" in page  # the rounds' own scale, round tick labels
    assert page.count("fill=\"#e15759\" ") + page.count("(coordinator)") >= 2  # the coordinator's dots apart
    assert "{'" not in page and "armed" not in page


def test_charts_across_runs_only_with_several_runs() -> None:
    small, large = run(n=8), copy.deepcopy(run(n=16))
    page = render_html([small, large])
    assert "Across 2 runs" in page and page.count("<svg") == 2 * 2 + 2
    assert "Round time vs N" in page and "Across" not in render_html([small])
