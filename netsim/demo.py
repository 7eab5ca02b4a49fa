"""`netsim demo` (and `make demo`): a real local village in about a minute.

Eight villaged processes on 127.0.0.1 with fresh identities and certificates run three rounds of a
routing-priors job (netsim/workloads.py: every node holds part of the routing statistics of
4 models x 2 regions x 2 tiers, 20 request patterns and 3 carbon regions). Before round 1 (the
daemon's round 0; the demo prints rounds from 1) one participant, never that round's coordinator,
is armed with the failpoint client:masked (villaged/rounds.py): it SIGKILLs itself in round 1 as it is about to
send its masked input, the round completes without it (its pairwise masks are removed with the
survivors' shares), and it is restarted before round 2 and takes part again.

Printed: each round's wall time, attempts, participants, drops and phase timings; the aggregated
priors node 0 applies (`GET /v1/jobs/{id}/priors`); and whether every node's stored result of
every round matched the plaintext (the digest of the exact quantized sum, and the decoded priors
within the error bound, netsim/workloads.py). Exit status 1 if any did not. Every process and the
temp dir go away at the end, on Ctrl-C and on errors (netsim/cluster.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.errors import CliError
from netsim.faults import FaultPlan, Kill
from netsim.run import Log, RunConfig, Scenario

N = 8
ROUNDS = 3
KILL_ROUND = 0  # the daemon numbers rounds from 0; the demo prints them from 1 ("round 1 of 3")
#: Seconds between round starts: room for round 1 (which waits phase_timeout for the killed peer's
#: masked input), netsim's check of it and the victim's restart before round 2 opens.
ROUND_INTERVAL = 20.0
PHASE_TIMEOUT = 5.0
PHASES = ("advertise", "share", "masked", "consistency", "unmask")


class ConsoleLog(Log):
    """netsim's progress lines, dimmed, on stderr (or nowhere)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        super().__init__()
        self.console, self.quiet = console, quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            message = re.sub(r"^round (\d+):", lambda m: f"round {int(m.group(1)) + 1}:", message)  # printed from 1
            self.console.print(Text(f"  [{time.monotonic() - self.started:5.1f}s] {message}", style="dim"), highlight=False)


def demo_config(seed: int | None, keep: bool = False) -> RunConfig:
    return RunConfig(n=N, workload="routing-priors", rounds=ROUNDS, seed=seed, keep=keep, phase_timeout=PHASE_TIMEOUT,
                     round_interval=ROUND_INTERVAL,
                     plan=FaultPlan(kills=[Kill(KILL_ROUND, None, "client", "masked")], restart=True))


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 132)


def run_demo(seed: int | None = None, keep: bool = False, quiet: bool = False, report_dir: Path | None = None,
             console: Console | None = None) -> bool:
    out = console or _console()
    err = _console(stderr=True)
    config = demo_config(seed, keep)
    scenario = Scenario(config, log=ConsoleLog(err, quiet))
    out.print(f"[bold]village demo[/bold]: {N} villaged processes on 127.0.0.1, {ROUNDS} rounds of a routing-priors job, "
              f"one participant SIGKILLed mid-round in round {KILL_ROUND + 1} (seed {scenario.seed})")
    started = time.monotonic()
    try:
        scenario.open()
        report = scenario.run()
        matrix = _check_every_node(scenario)
        priors = _priors_everywhere(scenario)
    finally:
        scenario.close()
    if report_dir is not None:
        from netsim.report import write_report

        write_report(report_dir, [report])
    elapsed = time.monotonic() - started
    out.print()
    out.print(_rounds_table(scenario, report))
    _print_faults(out, report)
    if priors["node0"] is not None and priors["node0"].get("priors"):
        _print_priors(out, priors["node0"])
    else:
        out.print("[red]node 0 applies no priors[/red]")
    return _verdict(out, report, matrix, priors, elapsed)


# --- checks ---------------------------------------------------------------------------------------


def _check_every_node(scenario: Scenario) -> dict[tuple[int, int], list[str] | None]:
    """(round, peer) -> problems ([] = matched the plaintext), None = the peer holds no result."""
    assert scenario.cluster is not None
    job_id = scenario.job["id"]
    matrix: dict[tuple[int, int], list[str] | None] = {(r, p.index): None for r in range(ROUNDS) for p in scenario.cluster.peers}
    for peer in scenario.live_peers:
        try:
            results = peer.api.get(f"/v1/jobs/{job_id}/results")
        except CliError:
            continue
        for result in results:
            matrix[(result["round"], peer.index)] = scenario.workload.check_result(result)
    return matrix


def _priors_everywhere(scenario: Scenario) -> dict[str, Any]:
    """Node 0's applied priors, and the nodes whose `/priors` differs from node 0's or is not the last round."""
    assert scenario.cluster is not None
    job_id = scenario.job["id"]
    views: dict[int, Any] = {}
    for peer in scenario.live_peers:
        try:
            views[peer.index] = peer.api.get(f"/v1/jobs/{job_id}/priors")
        except CliError:
            views[peer.index] = None
    first = views.get(0)
    differ = sorted(i for i, v in views.items()
                    if v is None or first is None or v.get("round") != ROUNDS - 1 or v.get("priors") != first.get("priors"))
    return {"node0": first, "differ": differ, "nodes": len(views)}


# --- output ---------------------------------------------------------------------------------------


def _rounds_table(scenario: Scenario, report: dict[str, Any]) -> Table:
    table = Table(title="rounds: wall time from the first attempt to the result, when the result was there (s after the "
                        "job's start), phase timings (s) of the completed attempt", title_justify="left")
    headers = ("round", "wall s", "done at", "attempts", "coordinator", "members", "dropped",
               "advertise share masked consist. unmask", "check")
    for column in headers:
        table.add_column(column, justify="left" if column in ("check", "dropped", "coordinator") else "right", no_wrap=True)
    start_at = scenario.job.get("start_at", 0.0)
    for r in report["rounds"]:
        attempts = r["attempts"]
        failed = [a for a in attempts if a["state"] != "completed"]
        attempt_text = str(len(attempts)) + (f" ({len(failed)} failed)" if failed else "")  # reasons printed below
        completed = [a for a in attempts if a["state"] == "completed" and a["ended_at"]]
        done_at = f"{completed[0]['ended_at'] - start_at:.1f}" if completed else "-"
        phases = r["phase_seconds"] or {}
        verdict = r["check"]["verdict"]
        table.add_row(
            f"{r['round'] + 1}/{len(report['rounds'])}", "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.2f}",
            done_at, attempt_text,
            "-" if r["coordinator"] is None else f"node {r['coordinator']}",
            f"{len(r['participants'])}/{scenario.config.n}",
            ", ".join(f"node {i}" for i in r["dropped"]) or "none",
            "  ".join(f"{phases[p]:5.2f}" if p in phases else "    -" for p in PHASES),
            Text(verdict, style="green" if verdict == "exact" else "red"),
        )
    return table


def _print_faults(out: Console, report: dict[str, Any]) -> None:
    for r in report["rounds"]:
        for a in r["attempts"]:
            if a["state"] != "completed":
                who = "-" if a["coordinator_peer"] is None else f"node {a['coordinator_peer']}"
                out.print(f"round {r['round'] + 1}, attempt {a['attempt']} (coordinator {who}) {a['state']}: {a['abort_reason']}")
    for e in report["events"]:
        peers = ", ".join(f"node {i}" for i in e.get("peers", []))
        if e["event"] == "died":
            out.print(f"round {e['round'] + 1}: {peers} SIGKILLed itself mid-round ({e.get('failpoint')}: "
                      f"entering the masked phase, before sending its masked input)")
        elif e["event"] == "restarted":
            out.print(f"after round {e['round'] + 1}: {peers} restarted (same identity and data dir)")
        elif e["event"] in ("kill_skipped", "armed_late", "disarmed"):
            out.print(f"[yellow]round {e['round'] + 1}: {e['event']} {peers}[/yellow]")


def _print_priors(out: Console, view: dict[str, Any]) -> None:
    priors = view["priors"]
    out.print()
    cells = Table(title=f"aggregated routing priors after round {view['round'] + 1} ({view['participants']} participants), "
                        f"as node 0 applies them (GET /v1/jobs/{{id}}/priors)", title_justify="left")
    for column in ("model", "region", "tier", "p50 ms", "p95 ms", "p99 ms", "success rate", "requests", "weight"):
        cells.add_column(column, justify="left" if column in ("model", "region", "tier") else "right")
    for c in priors["models"]:
        lat = c["latency_percentile"] or {}
        cells.add_row(c["model_id"], c["region"], c["quality_tier"],
                      *(f"{lat[p]:.1f}" if p in lat else "-" for p in ("p50", "p95", "p99")),
                      "-" if c["success_rate"] is None else f"{100 * c['success_rate']:.2f} %",
                      f"{c['total_count']:,.0f}", f"{c['weight']:.2f}")
    out.print(cells)
    patterns = Table(title="request patterns: the model each is routed to", title_justify="left")
    for _ in range(2):
        patterns.add_column("pattern")
        patterns.add_column("model")
        patterns.add_column("share", justify="right")
    rows = sorted(priors["request_patterns"].items())
    half = (len(rows) + 1) // 2
    for left, right in zip(rows[:half], rows[half:] + [None] * (2 * half - len(rows))):
        cells_row = []
        for item in (left, right):
            if item is None:
                cells_row += ["", "", ""]
            else:
                name, entry = item
                cells_row += [name[:12], entry["optimal_model"], f"{100 * entry['share']:.0f} %"]
        patterns.add_row(*cells_row)
    out.print(patterns)
    carbon = Table(title="carbon priors", title_justify="left")
    for column in ("region", "gCO2/kWh", "routing penalty", "reports"):
        carbon.add_column(column, justify="left" if column == "region" else "right")
    for region, entry in priors["carbon"].items():
        carbon.add_row(region, f"{entry['carbon_intensity_gco2_per_kwh']:.1f}", f"{entry['routing_penalty_factor']:.3f}",
                       str(entry["reports"]))
    out.print(carbon)
    v = view.get("validation") or {}
    if v:
        out.print(f"prior stability {v['stability_score']:.3f} (vs round {view['round']}), model diversity "
                  f"{v['diversity_score']:.3f}, round quality {v['round_quality']:.3f}")


def _verdict(out: Console, report: dict[str, Any], matrix: dict[tuple[int, int], list[str] | None],
             priors: dict[str, Any], elapsed: float) -> bool:
    missing = sorted(k for k, v in matrix.items() if v is None)
    wrong = {k: v for k, v in matrix.items() if v}
    died = [e for e in report["events"] if e["event"] == "died"]
    out.print()
    for (r, node), problems in sorted(wrong.items()):
        out.print(f"[red]round {r}, node {node}: result does NOT match the plaintext: {'; '.join(problems[:3])}[/red]")
    if missing:
        out.print(f"[red]no result held for (round, node): {missing}[/red]")
    if priors["differ"]:
        out.print(f"[red]nodes {priors['differ']} apply priors other than node 0's last round[/red]")
    if not died:
        out.print("[yellow]the armed peer was never killed (it was not invited to round 1 in time)[/yellow]")
    nodes = len({node for _, node in matrix})
    if not missing and not wrong and not priors["differ"]:
        out.print(f"[bold green]every node's result matched the plaintext: {ROUNDS} rounds x {nodes} nodes[/bold green]"
                  f" (exact digests, decoded priors within the error bound; {elapsed:.0f} s)")
        return True
    matched = sum(1 for v in matrix.values() if v == [])
    out.print(f"[bold red]result check FAILED: {matched} of {ROUNDS} rounds x {nodes} nodes matched the plaintext[/bold red]")
    return False
