"""netsim end to end: real villaged processes, exact results, a client and a coordinator SIGKILLed
at a phase, and nothing left behind. Slow (real processes): about a minute on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from netsim.faults import FaultPlan, parse_kill
from netsim.netns import LinkShape, NetnsUnavailable, check_available
from netsim.run import RunConfig, Scenario, run_scenario

pytestmark = pytest.mark.slow


def _children() -> list[int]:
    """Live descendants of this test process (netsim's villaged children would show up here)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,stat=,comm=", "-e"], capture_output=True, text=True).stdout
    parents: dict[int, int] = {}
    for line in out.splitlines():
        pid, ppid, stat, comm = line.split()[:4]
        if not stat.startswith("Z") and comm != "ps":
            parents[int(pid)] = int(ppid)
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - mine
        mine |= frontier
    return sorted(mine)


def test_four_peers_two_rounds_exact_and_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _children()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    report = run_scenario(RunConfig(n=4, d=1000, rounds=2, seed=7, phase_timeout=3.0, report_dir=tmp_path / "r"))
    assert report["ok"], report["rounds"]
    assert [r["check"]["verdict"] for r in report["rounds"]] == ["exact", "exact"]
    assert report["final_check"] == {"results_checked": 8, "mismatches": 0, "missing": 0, "offending": []}
    assert all(len(r["participants"]) == 4 for r in report["rounds"])
    assert (tmp_path / "r" / "report.html").read_text().count("<svg") == 2  # phases and bytes; one run: no across-runs charts
    assert _children() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # the village's temp dir is gone


def test_check_catches_a_wrong_sum() -> None:
    """The checker itself: a result whose digest or values are off by one step is a mismatch."""
    scenario = Scenario(RunConfig(n=3, d=3))  # rounds of two are refused: no quorum without the coordinator's vote
    scenario.spec(start_delay=1.0, round_interval=0.0)
    scenario.workload.payloads = {"aa": [1, -2, 3], "bb": {"values": [4, 5, -6]}, "dd": [1, 1, 1]}
    total, digest = scenario.workload.expected(["aa", "bb", "dd"])
    assert total.tolist() == [6.0, 4.0, -2.0]
    good = {"participants": ["aa", "bb", "dd"], "digest": digest, "values": total.tolist(), "error_bound": 0.001}
    assert scenario.workload.check_result(good) == []
    assert scenario.workload.check_result({**good, "participants": ["aa", "bb"]})  # wrong participant set
    assert scenario.workload.check_result({**good, "values": [6.0, 4.0, -1.0]})  # off by one
    assert scenario.workload.check_result({**good, "participants": ["aa", "bb", "cc"]})  # a stranger


def test_client_killed_at_masked_round_completes_exactly() -> None:
    report = run_scenario(RunConfig(n=5, d=500, rounds=1, seed=11, phase_timeout=3.0,
                                    plan=FaultPlan(kills=[parse_kill("1:masked@0")], restart=False)))
    round0 = report["rounds"][0]
    died = [e for e in report["events"] if e["event"] == "died"]
    skipped = [e for e in report["events"] if e["event"] == "kill_skipped"]
    assert died or skipped, report["events"]
    assert round0["check"]["verdict"] in ("exact", "aborted"), round0
    if died:
        assert 1 not in round0["participants"] or 1 in round0["dropped"]
    assert report["final_check"]["mismatches"] == 0


def test_coordinator_killed_at_masked_next_attempt_completes() -> None:
    report = run_scenario(RunConfig(n=5, d=500, rounds=1, seed=5, phase_timeout=3.0,
                                    plan=FaultPlan(kills=[parse_kill("coordinator:masked@0")], restart=False)))
    round0 = report["rounds"][0]
    assert [e["event"] for e in report["events"] if e["event"] == "died"] == ["died"], report["events"]
    assert round0["check"]["verdict"] == "exact", round0
    assert round0["attempts"][0]["state"] == "aborted" and round0["attempts"][-1]["state"] == "completed"
    assert round0["attempts"][-1]["attempt"] >= 1
    assert report["ok"]


def test_interrupt_stops_everything(tmp_path: Path) -> None:
    """SIGTERM to `netsim run` mid-run: exit 130, no processes, no temp dirs."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    netsim = Path(sys.executable).with_name("netsim")
    with subprocess.Popen([str(netsim), "run", "--n", "3", "--d", "100", "--rounds", "50", "--round-interval", "5"],
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serve their API" in line:
                break
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 130
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == []
    assert list(tmp_path.iterdir()) == []


def _netns_or_skip(netem: bool) -> None:
    try:
        check_available(netem)
    except NetnsUnavailable as exc:
        pytest.skip(f"network faults unavailable here: {exc}")


def test_partition_heals_and_rounds_check() -> None:
    _netns_or_skip(netem=False)
    report = run_scenario(RunConfig(n=4, d=200, rounds=1, seed=3, phase_timeout=3.0, round_interval=0.0,
                                    shape=LinkShape(), plan=FaultPlan(partition_round=0, partition_seconds=4.0)))
    assert report["final_check"]["mismatches"] == 0
    assert report["rounds"][0]["check"]["verdict"] in ("exact", "aborted", "missing")
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(f"vs{os.getpid() % 100000:05d}") == 0


def test_netem_latency_round_exact() -> None:
    _netns_or_skip(netem=True)
    report = run_scenario(RunConfig(n=4, d=200, rounds=1, seed=3, phase_timeout=5.0, shape=LinkShape(delay_ms=20, jitter_ms=5)))
    assert report["ok"]


def test_routing_priors_workload_exact(tmp_path: Path) -> None:
    """`netsim run --workload routing-priors`: every node's result of every round has the digest of
    the exact quantized sum of the nodes' encoded statistics and decodes to the plaintext priors."""
    import json

    netsim = Path(sys.executable).with_name("netsim")
    done = subprocess.run([str(netsim), "run", "--workload", "routing-priors", "--n", "4", "--rounds", "2",
                           "--phase-timeout", "3", "--seed", "7", "--report", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["ok"] and line["workload"] == "routing-priors" and line["d"] == 6 * 16 + 20 * 4 + 3 * 3
    assert line["verdicts"] == ["exact", "exact"]
    assert line["final_check"] == {"results_checked": 8, "mismatches": 0, "missing": 0}
    report = json.loads((tmp_path / "r" / "report.json").read_text())[0]
    assert report["spec"]["kind"] == "routing-priors" and report["spec"]["quantization"]["rounding"] == "nearest"
    assert all(len(r["participants"]) == 4 for r in report["rounds"])
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # the village's temp dir is gone
