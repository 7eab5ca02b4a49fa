"""`netsim`: run village rounds locally and check every result against the plaintext.

`netsim run` spawns real villaged processes (netsim/run.py, netsim/cluster.py), optionally
in network namespaces with shaped links (netsim/netns.py) and with planned crashes
(netsim/faults.py), and writes a report (netsim/report.py). `netsim bench` runs the standard
workloads (netsim/bench.py). Cleanup: SIGTERM and SIGHUP are turned into KeyboardInterrupt, so
Ctrl-C, `kill` and errors all leave through the same `finally` that stops every process and
removes every namespace; `atexit` covers the rest, and children die with netsim (pdeathsig).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, NoReturn

import typer

from netsim.bench import bench_core
from netsim.harness import DROPOUT_PHASES

app = typer.Typer(help="Spawn local village peers, inject faults, and check every result against the plaintext.", no_args_is_help=True)
bench_app = typer.Typer(help="Standard workloads; each prints one JSON line.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


# The training workload's options, shared by `netsim run` and `netsim bench train`.
_DATASET = typer.Option("digits", "--dataset", help="training: digits, wine or breast_cancer (scikit-learn's)")
_ALPHA = typer.Option(0.5, "--alpha", min=0.001, help="training: Dirichlet concentration (smaller: more skew)")
_ARCHITECTURE = typer.Option("logistic", "--architecture", help="training: logistic or mlp")
_HIDDEN = typer.Option("32", "--hidden", help="training: mlp hidden widths, comma-separated")
_LOCAL_EPOCHS = typer.Option(1, "--local-epochs", min=1, help="training: local epochs per round")
_LR = typer.Option(0.1, "--lr", help="training: local learning rate")
_BATCH_SIZE = typer.Option(32, "--batch-size", min=1, help="training: local batch size")
_OPTIMIZER = typer.Option("fedavg", "--optimizer", help="training: server optimizer fedavg, fedavgm or fedadam")
_SERVER_LR = typer.Option(None, "--server-lr", help="training: server learning rate (default: the optimizer's)")
_UPDATE_CLIP = typer.Option(1.0, "--update-clip", help="training: largest coordinate an update may move")
_EPSILON = typer.Option(None, "--epsilon", help="training: differential privacy, the whole job's epsilon")
_DELTA = typer.Option(1e-5, "--delta", help="training: differential privacy delta")



@app.command()
def run(
    n: int = typer.Option(4, "--n", min=2, help="peers in the village"),
    workload: str = typer.Option("vector", "--workload", help="what the job computes: vector, routing-priors, training (netsim/workloads.py)"),
    d: int = typer.Option(1000, "--d", min=1, help="vector length (workload vector)"),
    rounds: int = typer.Option(2, "--rounds", min=1, help="rounds of the job (training: training rounds; the job has one more, which evaluates)"),
    dropout: float = typer.Option(0.0, "--dropout", min=0.0, max=0.9, help="fraction of peers SIGKILLed in each faulty round"),
    drop_phase: str = typer.Option("masked", "--drop-phase", help=f"phase the dropouts die in: {', '.join(DROPOUT_PHASES)}"),
    drop_rounds: str = typer.Option("", "--drop-rounds", help="comma-separated rounds with dropouts (default: all)"),
    kill: list[str] = typer.Option([], "--kill", help="PEER:PHASE[@ROUND], client:PHASE[@ROUND] (any non-coordinator) or coordinator:PHASE[@ROUND] (repeatable)"),
    kill_coordinator: bool = typer.Option(False, "--kill-coordinator", help="same as --kill coordinator:masked@0"),
    restart: bool = typer.Option(True, "--restart/--no-restart", help="restart killed peers after their round"),
    churn: int = typer.Option(0, "--churn", min=0, help="peers that leave after each round (those who left before rejoin)"),
    seed: int = typer.Option(None, "--seed", help="seed for inputs and fault choices (default: random, printed)"),
    keep: bool = typer.Option(False, "--keep", help="keep the data dirs and logs"),
    per_process: int = typer.Option(1, "--per-process", min=1, help="peers per OS process (netsim/multipeer.py)"),
    phase_timeout: float = typer.Option(10.0, "--phase-timeout", help="the job's phase timeout (s)"),
    round_interval: float = typer.Option(None, "--round-interval", help="seconds between round starts (default: 0, or room to arm faults)"),
    neighbours: int = typer.Option(14, "--neighbours", help="SecAgg+ neighbours per peer"),
    min_participants: int = typer.Option(None, "--min-participants", help="the job's min_participants (default 3)"),
    netns: bool = typer.Option(False, "--netns", help="each process in its own network namespace (root, iproute2)"),
    delay: float = typer.Option(0.0, "--delay", help="netem delay per packet, ms (implies --netns)"),
    jitter: float = typer.Option(0.0, "--jitter", help="netem jitter, ms (implies --netns)"),
    loss: float = typer.Option(0.0, "--loss", help="netem loss, percent (implies --netns)"),
    rate: float = typer.Option(0.0, "--rate", help="link rate cap, Mbit/s (implies --netns)"),
    partition: str = typer.Option("", "--partition", help="ROUND:SECONDS: split the village in halves at that round, then heal"),
    report: Path = typer.Option(None, "--report", help="directory for report.json and report.html"),
    dataset: str = _DATASET,
    partition_scheme: str = typer.Option("iid", "--partition-scheme", help="training: iid or dirichlet (label skew)"),
    alpha: float = _ALPHA, architecture: str = _ARCHITECTURE, hidden: str = _HIDDEN, local_epochs: int = _LOCAL_EPOCHS,
    lr: float = _LR, batch_size: int = _BATCH_SIZE, optimizer: str = _OPTIMIZER, server_lr: float = _SERVER_LR,
    update_clip: float = _UPDATE_CLIP, epsilon: float = _EPSILON, delta: float = _DELTA,
) -> None:
    """Spawn N villaged peers on this machine, run one job, check each result exactly.

    Example: netsim run --n 8 --d 10000 --rounds 3 --dropout 0.25 --drop-phase masked --report out/

    Training: netsim run --workload training --n 8 --rounds 10 --dataset wine --partition-scheme dirichlet
    """
    from netsim.faults import FaultPlan, parse_kill
    from netsim.netns import LinkShape, NetnsUnavailable, check_available
    from netsim.run import RunConfig, run_scenario
    from netsim.verify import PASSING
    from netsim.workloads import WORKLOAD_NAMES

    if workload not in WORKLOAD_NAMES:
        raise typer.BadParameter(f"--workload must be one of {', '.join(WORKLOAD_NAMES)}")
    training = None
    if workload == "training":
        training = _training_options(dataset, partition_scheme, alpha, architecture, hidden, local_epochs, lr, batch_size,
                                     optimizer, server_lr, update_clip, epsilon, delta)
    if drop_phase not in DROPOUT_PHASES:
        raise typer.BadParameter(f"--drop-phase must be one of {', '.join(DROPOUT_PHASES)}")
    try:
        kills = [parse_kill(k) for k in kill] + ([parse_kill("coordinator:masked@0")] if kill_coordinator else [])
        partition_round, partition_seconds = (None, 0.0)
        if partition:
            r, _, s = partition.partition(":")
            partition_round, partition_seconds = int(r), float(s or 10)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    shape = LinkShape(delay, jitter, loss, rate)
    use_netns = netns or partition_round is not None or shape != LinkShape()
    if use_netns:
        try:
            check_available(shape.needs_netem)
        except NetnsUnavailable as exc:
            typer.echo(f"netsim: {exc}", err=True)
            raise typer.Exit(3) from None
    config = RunConfig(
        n=n, workload=workload, d=d, rounds=rounds, dropout=dropout, drop_phase=drop_phase,
        drop_rounds=[int(x) for x in drop_rounds.split(",") if x.strip()] or None,
        plan=FaultPlan(kills=kills, restart=restart, churn=churn, partition_round=partition_round,
                       partition_seconds=partition_seconds),
        seed=seed, keep=keep, per_process=per_process, phase_timeout=phase_timeout, round_interval=round_interval,
        neighbours=neighbours, min_participants=min_participants, shape=shape if use_netns else None, report_dir=report,
        training=training,
    )
    install_signal_handlers()
    try:
        result = run_scenario(config)
    except KeyboardInterrupt as exc:
        typer.echo(f"netsim: interrupted ({exc or 'SIGINT'}); every process stopped", err=True)
        raise typer.Exit(130) from None
    typer.echo(json.dumps(_summary_line(result)))
    for problem in (result.get("training") or {}).get("problems", []):
        typer.echo(f"netsim: training check: {problem}", err=True)
    if not result["ok"]:
        bad = [r["round"] for r in result["rounds"] if r["check"]["verdict"] not in PASSING]
        bad += [o["round"] for o in result["final_check"]["offending"]]
        typer.echo(f"netsim: result check FAILED in round(s) {sorted(set(bad))}", err=True)
        raise typer.Exit(1)


def _summary_line(result: dict[str, Any]) -> dict[str, Any]:
    from netsim.report import round_summary, training_summary

    c = result["config"]
    line = {"netsim": "run", "ok": result["ok"], "workload": result["workload"], "n": c["n"], "d": result["dimension"],
            "rounds": c["rounds"],
            "processes": c["processes"], "seed": result["seed"], **round_summary(result),
            "final_check": {k: v for k, v in result["final_check"].items() if k != "offending"}}
    if "training" in result:
        line["training"] = training_summary(result)
    return line


def _training_options(dataset: str, partition: str, alpha: float, architecture: str, hidden: str, local_epochs: int,
                      lr: float, batch_size: int, optimizer: str, server_lr: float | None, update_clip: float,
                      epsilon: float | None, delta: float) -> Any:
    from netsim.training_workload import ARCHITECTURES, OPTIMIZERS, TrainingOptions
    from netsim.datasets import NAMES, SCHEMES

    for flag, value, allowed in (("--dataset", dataset, NAMES), ("--partition-scheme", partition, SCHEMES),
                                 ("--architecture", architecture, ARCHITECTURES), ("--optimizer", optimizer, OPTIMIZERS)):
        if value not in allowed:
            raise typer.BadParameter(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    try:
        widths = tuple(int(x) for x in hidden.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--hidden must be comma-separated layer widths, got {hidden!r}") from None
    return TrainingOptions(dataset=dataset, partition=partition, alpha=alpha, architecture=architecture,
                           hidden=widths or (32,), local_epochs=local_epochs, learning_rate=lr, batch_size=batch_size,
                           optimizer=optimizer, server_learning_rate=server_lr, update_clip=update_clip,
                           epsilon=epsilon, delta=delta)


@app.command()
def demo(
    seed: int = typer.Option(None, "--seed", help="seed for the nodes' statistics and the victim (default: random, printed)"),
    keep: bool = typer.Option(False, "--keep", help="keep the data dirs and logs"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines on stderr"),
    report: Path = typer.Option(None, "--report", help="directory for report.json and report.html"),
) -> None:
    """A real local village: 8 villaged processes, 3 rounds of routing priors, one peer SIGKILLed
    mid-round in round 1 and restarted; prints each round, the aggregated priors and the check.

    Exit status 0 only if every node's result of every round matched the plaintext exactly.
    """
    from netsim.demo import run_demo

    install_signal_handlers()
    try:
        ok = run_demo(seed=seed, keep=keep, quiet=quiet, report_dir=report)
    except KeyboardInterrupt as exc:
        typer.echo(f"netsim: interrupted ({exc or 'SIGINT'}); every process stopped", err=True)
        raise typer.Exit(130) from None
    if not ok:
        raise typer.Exit(1)


def _bench_net(name: str, seed: int, report: Path | None, per_process: int | None) -> None:
    from netsim.bench import bench_net

    install_signal_handlers()
    try:
        line = bench_net(name, seed=seed, report_dir=report, per_process=per_process)
    except KeyboardInterrupt:
        typer.echo("netsim: interrupted; every process stopped", err=True)
        raise typer.Exit(130) from None
    typer.echo(json.dumps(line))
    if not line["ok"]:
        raise typer.Exit(1)


_SEED = typer.Option(1, "--seed", help="seed for inputs and dropouts")
_REPORT = typer.Option(None, "--report", help="directory for report.json/report.html")
_PER_PROCESS = typer.Option(None, "--per-process", help="override peers per OS process")


@bench_app.command("net-16")
def net_16(seed: int = _SEED, report: Path = _REPORT, per_process: int = _PER_PROCESS) -> None:
    """16 villaged processes, d=100,000, 3 rounds."""
    _bench_net("net-16", seed, report, per_process)


@bench_app.command("net-100")
def net_100(seed: int = _SEED, report: Path = _REPORT, per_process: int = _PER_PROCESS) -> None:
    """100 peers (5 per process), d=100,000, 10% SIGKILLed in the masked phase of each round."""
    _bench_net("net-100", seed, report, per_process)


@bench_app.command("net-300")
def net_300(seed: int = _SEED, report: Path = _REPORT, per_process: int = _PER_PROCESS) -> None:
    """300 peers (20 per process), d=10,000."""
    _bench_net("net-300", seed, report, per_process)


@bench_app.command("train")
def train(
    n: int = typer.Option(20, "--n", min=3, help="peers, each holding one partition"),
    rounds: int = typer.Option(30, "--rounds", min=1, help="training rounds (the job has one more, which evaluates)"),
    dataset: str = _DATASET,
    partition_scheme: str = typer.Option("dirichlet", "--partition-scheme", help="iid or dirichlet (label skew)"),
    alpha: float = _ALPHA, architecture: str = _ARCHITECTURE, hidden: str = _HIDDEN, local_epochs: int = _LOCAL_EPOCHS,
    lr: float = _LR, batch_size: int = _BATCH_SIZE, optimizer: str = _OPTIMIZER, server_lr: float = _SERVER_LR,
    update_clip: float = _UPDATE_CLIP, epsilon: float = _EPSILON, delta: float = _DELTA,
    dropout: float = typer.Option(0.0, "--dropout", min=0.0, max=0.9, help="fraction of peers SIGKILLed (masked phase) each round, restarted after it"),
    phase_timeout: float = typer.Option(10.0, "--phase-timeout", help="the job's phase timeout (s)"),
    round_interval: float = typer.Option(None, "--round-interval", help="seconds between round starts (default: 0, or room to arm faults)"),
    min_participants: int = typer.Option(None, "--min-participants", help="the job's min_participants (default 3; DP needs more)"),
    keep: bool = typer.Option(False, "--keep", help="keep the data dirs and logs"),
    seed: int = _SEED, report: Path = _REPORT,
    per_process: int = typer.Option(1, "--per-process", min=1, help="peers per OS process"),
) -> None:
    """Federated training on real villaged processes: accuracy per round, final federated vs
    centralized accuracy, round time (training and aggregation), bytes per node. One JSON line.

    Example: netsim bench train --n 20 --rounds 30 --dataset digits --partition-scheme dirichlet --alpha 0.5
    """
    from netsim.bench import bench_train

    options = _training_options(dataset, partition_scheme, alpha, architecture, hidden, local_epochs, lr, batch_size,
                                optimizer, server_lr, update_clip, epsilon, delta)
    install_signal_handlers()
    try:
        line = bench_train(n=n, rounds=rounds, seed=seed, report_dir=report, per_process=per_process, dropout=dropout,
                           phase_timeout=phase_timeout, round_interval=round_interval, min_participants=min_participants, keep=keep, **{k: getattr(options, k) for k in options.__dataclass_fields__})
    except KeyboardInterrupt:
        typer.echo("netsim: interrupted; every process stopped", err=True)
        raise typer.Exit(130) from None
    typer.echo(json.dumps(line))
    for problem in line["problems"]:  # type: ignore[attr-defined]
        typer.echo(f"netsim: training check: {problem}", err=True)
    if not line["ok"]:
        raise typer.Exit(1)


@bench_app.command("soak")
def soak(
    rounds: int = typer.Option(500, "--rounds", min=2, help="rounds of the job, run back to back"),
    n: int = typer.Option(4, "--n", min=3, help="daemons in the village (all in this process)"),
    d: int = typer.Option(1000, "--d", min=1, help="vector length"),
    phase_timeout: float = typer.Option(10.0, "--phase-timeout", help="the job's phase timeout (s)"),
    timeout: float = typer.Option(1800.0, "--timeout", help="stop after this many seconds and report the rounds done"),
) -> None:
    """Real daemons in one process run a vector job back to back (round_interval 0): round pace over
    the first and the last 50 rounds, RSS and trio tasks at the start and the end.

    Example: netsim bench soak --rounds 500
    """
    from netsim.soak import run_soak

    install_signal_handlers()
    try:
        line = run_soak(rounds, n=n, dimension=d, phase_timeout=phase_timeout, timeout=timeout)
    except KeyboardInterrupt:
        typer.echo("netsim: interrupted; every daemon stopped", err=True)
        raise typer.Exit(130) from None
    typer.echo(json.dumps(line))
    if line["rounds_done"] != rounds:
        raise typer.Exit(1)


@bench_app.command("core")
def core(
    n: int = typer.Option(100, help="clients in the round"),
    d: int = typer.Option(100_000, help="vector length"),
    k: int = typer.Option(14, help="SecAgg+ neighbours per client (even)"),
    t: int = typer.Option(None, help="threshold (default: a strict majority of k+1)"),
    dropout: float = typer.Option(0.1, min=0.0, max=0.9, help="fraction of clients that drop"),
    drop_phase: str = typer.Option("consistency", help=f"phase in which they drop: {', '.join(DROPOUT_PHASES)}"),
    seed: int = typer.Option(1, help="seed for inputs, keys and the dropout draw"),
) -> None:
    """In-process state machines, no network: per-phase CPU, bytes, PRG speed, exact-sum check.

    Example: netsim bench core --n 100 --d 100000 --k 14 --dropout 0.1
    """
    try:
        line = bench_core(n, d, k, t, dropout, drop_phase, seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(json.dumps(line))
    if not line["exact_sum"]:
        raise typer.Exit(1)
