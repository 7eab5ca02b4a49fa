"""netsim's training workload end to end: real villaged processes train a logistic model on wine
together; every aggregate matches netsim's replay of the members' local training, every node
derives netsim's model chain, the final model each node serves is netsim's, and a coordinator
SIGKILLed mid-round is replaced without any node deriving another model. Slow (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from netsim.faults import FaultPlan, parse_kill
from netsim.run import RunConfig, run_scenario
from netsim.training_workload import TrainingOptions

pytestmark = pytest.mark.slow


def test_training_cli_every_round_replayed(tmp_path: Path) -> None:
    """`netsim run --workload training`: exact rounds, the nodes' curve and models are netsim's."""
    netsim = Path(sys.executable).with_name("netsim")
    done = subprocess.run([str(netsim), "run", "--workload", "training", "--dataset", "wine", "--n", "4", "--rounds", "2",
                           "--phase-timeout", "3", "--seed", "7", "--report", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=150, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["ok"] and line["workload"] == "training" and line["d"] == 13 * 3 + 3 + 4
    assert line["verdicts"] == ["exact", "exact", "exact"]  # 2 training rounds and the final evaluation
    training = line["training"]
    assert training["ok"] and training["problems"] == [] and training["rounds_with_result"] == 2
    assert training["federated_accuracy"] > 0.8 and training["centralized_accuracy"] > 0.8
    assert [p["round"] for p in training["curve"]] == [0, 1, 2]
    report = json.loads((tmp_path / "r" / "report.json").read_text())[0]
    assert report["spec"]["kind"] == "training" and report["spec"]["rounds"] == 3
    assert report["training"]["nodes_serving_final_model"] == 4
    for r in report["rounds"]:
        assert r["training"]["problems"] == [] and r["training"]["statuses"] == 4
        assert r["training"]["model_digest"] and r["training"]["next_model_digest"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count("<svg") == 3 and "Accuracy per round" in html  # phases, bytes, accuracy
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # the village's temp dir is gone


def test_coordinator_killed_in_a_training_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 1's coordinator dies in the masked phase and comes back after the round: the next
    attempt completes exactly, and the restarted node catches up to netsim's final model."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    report = run_scenario(RunConfig(n=4, rounds=2, seed=5, phase_timeout=3.0, workload="training",
                                    training=TrainingOptions(dataset="wine"),
                                    plan=FaultPlan(kills=[parse_kill("coordinator:masked@1")], restart=True)))
    died = [e for e in report["events"] if e["event"] == "died"]
    assert len(died) == 1 and any(e["event"] == "restarted" for e in report["events"]), report["events"]
    round1 = report["rounds"][1]
    assert round1["check"]["verdict"] == "exact", round1["check"]
    assert round1["attempts"][0]["state"] == "aborted" and round1["attempts"][-1]["state"] == "completed"
    assert report["ok"], (report["training"], [r["check"] for r in report["rounds"]])
    assert report["training"]["nodes_serving_final_model"] == 4  # the restarted node too
