"""Benchmarks that print one JSON line each. Figures, never assertions: the machines are noisy."""

from __future__ import annotations

import random
import time

import numpy as np

from netsim.harness import DROPOUT_PHASES, simulate_round, summarize
from protocol import crypto, masking
from protocol.params import RoundParams


def prg_throughput(dimension: int, repeats: int = 50) -> dict[str, float]:
    """Raw AES-CTR keystream speed against mask expansion into an accumulator (GB/s of mask)."""
    seed = crypto.sha256(b"bench")
    nbytes = 4 * dimension
    started = time.perf_counter()
    for _ in range(repeats):
        crypto.keystream(seed, nbytes)
    raw = nbytes * repeats / (time.perf_counter() - started) / 1e9
    accumulator = np.zeros(dimension, dtype=np.uint32)
    started = time.perf_counter()
    for _ in range(repeats):
        masking.add_mask(accumulator, seed, positive=True)
    expansion = nbytes * repeats / (time.perf_counter() - started) / 1e9
    return {"raw_gbps": round(raw, 2), "mask_expansion_gbps": round(expansion, 2), "ratio": round(raw / expansion, 2)}


def bench_core(n: int, dimension: int, neighbours: int, threshold: int | None, dropout: float, drop_phase: str, seed: int) -> dict[str, object]:
    if drop_phase not in DROPOUT_PHASES:
        raise ValueError(f"drop phase must be one of {', '.join(DROPOUT_PHASES)}")
    k = min(neighbours, n - 1)
    t = threshold if threshold is not None else (k + 1) // 2 + 1
    params = RoundParams(dimension, 32, neighbours, t, max(2, t), phase_timeout=30.0)
    rng = random.Random(seed)
    dropped = {i: drop_phase for i in rng.sample(range(n), round(dropout * n))}
    started = time.perf_counter()
    outcome = simulate_round(params, n, dropped, seed=seed.to_bytes(8, "big"))
    wall = time.perf_counter() - started
    line: dict[str, object] = {
        "bench": "core",
        "n": n, "d": dimension, "k": k, "t": t, "dropout": dropout, "drop_phase": drop_phase,
        "survivors": len(outcome.result.survivors) if outcome.result else 0,
        "aborted": outcome.abort.reason if outcome.abort else None,
        "exact_sum": outcome.exact,
        "wall_s": round(wall, 3),
    }
    line.update(summarize(outcome))
    vector_bytes = 4 * dimension
    line["client_overhead_bytes_per_neighbour"] = round((line["client_bytes_sent"]["median"] - vector_bytes) / k, 1)  # type: ignore[index]
    line["prg"] = prg_throughput(dimension)
    return line


#: The standard networked workloads: real villaged processes on loopback (netsim/run.py).
#: Rounds open `round_interval` apart, as a deployed job's would, so each round's bytes and CPU are
#: measured alone (back to back, a round also carried the previous result's distribution). net-300
#: needs 60 s: its result takes 12-14 s to reach all 300 nodes, and with 30 s round 1 opened while
#: the members were still fetching round 0's result and dialing round 1's coordinator.
NET_WORKLOADS: dict[str, dict[str, object]] = {
    "net-16": {"n": 16, "d": 100_000, "rounds": 3, "per_process": 1, "phase_timeout": 30.0, "round_interval": 10.0},
    "net-100": {"n": 100, "d": 100_000, "rounds": 2, "per_process": 5, "dropout": 0.1, "drop_phase": "masked",
                "phase_timeout": 30.0},
    "net-300": {"n": 300, "d": 10_000, "rounds": 2, "per_process": 20, "phase_timeout": 60.0, "round_interval": 60.0},
}


def bench_net(name: str, seed: int = 1, report_dir: object = None, **overrides: object) -> dict[str, object]:
    """Run one networked workload; one JSON-able line of figures (see netsim/report.py round_summary)."""
    from pathlib import Path

    from netsim.report import round_summary, write_report
    from netsim.run import RunConfig, run_scenario

    settings = {**NET_WORKLOADS[name], **{k: v for k, v in overrides.items() if v is not None}}
    started = time.perf_counter()
    report = run_scenario(RunConfig(seed=seed, **settings))  # type: ignore[arg-type]
    report["bench"] = name
    if report_dir is not None:
        write_report(Path(str(report_dir)) / name, [report])
    rounds = report["rounds"]
    return {
        "bench": name, "ok": report["ok"], "n": settings["n"], "d": settings["d"], "per_process": settings["per_process"],
        "processes": report["config"]["processes"], "rounds": settings["rounds"], "dropout": settings.get("dropout", 0.0),
        "startup_s": report["startup_seconds"], "mesh": report["mesh"],
        "participants": [len(r["participants"]) for r in rounds], "dropped": [len(r["dropped"]) for r in rounds],
        "attempts": [len(r["attempts"]) for r in rounds],
        **round_summary(report),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "final_check": {k: v for k, v in report["final_check"].items() if k != "offending"},
    }


def bench_train(n: int = 20, rounds: int = 30, seed: int = 1, report_dir: object = None, per_process: int = 1,
                dropout: float = 0.0, phase_timeout: float = 10.0, round_interval: float | None = None,
                min_participants: int | None = None, keep: bool = False, **options: object) -> dict[str, object]:
    """A federated training job on real villaged processes (netsim/training_workload.py): the
    accuracy curve per round, final federated against centralized accuracy, round time split into
    local training (and the round's start) and the aggregation's attempts, and bytes per node."""
    from pathlib import Path

    from netsim.report import round_summary, training_summary, write_report
    from netsim.run import RunConfig, run_scenario
    from netsim.training_workload import TrainingOptions

    training = TrainingOptions(**options)  # type: ignore[arg-type]
    started = time.perf_counter()
    report = run_scenario(RunConfig(n=n, rounds=rounds, seed=seed, workload="training", per_process=per_process,
                                    dropout=dropout, drop_phase="masked", phase_timeout=phase_timeout,
                                    round_interval=round_interval, min_participants=min_participants, keep=keep,
                                    training=training))
    report["bench"] = "train"
    if report_dir is not None:
        write_report(Path(str(report_dir)) / "train", [report])
    summary = round_summary(report)
    trained = training_summary(report)
    end = report.get("training") or {}
    return {
        "bench": "train", "ok": report["ok"], "n": n, "per_process": per_process,
        "processes": report["config"]["processes"], "dataset": training.dataset,
        "partition": end.get("partition"), "architecture": training.architecture, "parameters": end.get("parameters"),
        "optimizer": training.optimizer, "training_rounds": rounds, "dropout": dropout,
        "round_interval_s": report["spec"]["round_interval"], "min_participants": report["spec"]["min_participants"],
        "privacy": end.get("privacy"), "seed": report["seed"],
        "federated_accuracy": trained["federated_accuracy"], "centralized_accuracy": trained["centralized_accuracy"],
        "gap_points": trained["gap_points"], "rounds_with_result": trained["rounds_with_result"],
        "accuracy_curve": [p["test_accuracy"] for p in trained["curve"]],
        "federated_evaluation_curve": [None if p["accuracy"] is None else round(p["accuracy"], 4) for p in trained["curve"]],
        "participants": [len(r["participants"]) for r in report["rounds"]],
        "round_period_s_median": trained["round_period_s_median"],
        "outside_attempts_s_median": trained["outside_attempts_s_median"],
        "aggregation_s_median": summary["round_wall_s_median"], "phase_s_median": summary["phase_s_median"],
        "result_spread_s_median": summary["result_spread_s_median"],
        "bytes_sent_per_node_median": summary["bytes_sent_per_node_median"],
        "bytes_received_per_node_median": summary["bytes_received_per_node_median"],
        "replay_train_s_per_member": end.get("replay_train_seconds_per_member"),
        "daemon_timings": end.get("daemon_timings"),  # the nodes' own: local training, deriving models
        "verdicts": summary["verdicts"], "problems": trained["problems"],
        "total_wall_s": round(time.perf_counter() - started, 1),
        "final_check": {k: v for k, v in report["final_check"].items() if k != "offending"},
    }
