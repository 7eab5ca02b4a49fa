"""Reports of netsim runs: `report.json` (everything measured) and `report.html` (a page to read).

The HTML page is self-contained (inline SVG, no script, no external files) so it opens anywhere
and can be attached to an issue; matplotlib is not a village dependency and these few simple
charts do not justify adding it.

Per run, top to bottom: a plain-language verdict (did every round give the exact sum, what faults
were injected and what they cost), the phase breakdown of each round on the scale of the longest
round (a 0.07 s round is not drawn on the run's 30 s wall clock), bytes sent per node as a
distribution (one dot per node and round, the coordinator apart), and the per-round table.
Charts across runs (round time vs N, bytes vs d) appear only when the report holds several runs
(`netsim bench` puts its workloads in one report).
"""

from __future__ import annotations

import html
import json
import math
import statistics
from pathlib import Path
from typing import Any

PHASE_COLOURS = {"advertise": "#4e79a7", "share": "#f28e2b", "masked": "#59a14f", "consistency": "#b07aa1",
                 "unmask": "#e15759"}
COORDINATOR_COLOUR, NODE_COLOUR = "#e15759", "#4e79a7"
VERDICT_WORDS = {"exact": "exact sum", "aborted": "aborted (no result anywhere)", "missing": "some live nodes lack the result",
                 "split": "nodes hold different results", "mismatch": "WRONG result",
                 "noised": "same result everywhere (DP noise: the sum is not replayable)"}


def write_report(directory: Path, runs: list[dict[str, Any]]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    json_path.write_text(json.dumps(runs, indent=1, default=str) + "\n")
    html_path.write_text(render_html(runs))
    return json_path, html_path


def round_summary(run: dict[str, Any]) -> dict[str, Any]:
    """Medians over a run's completed rounds: wall time, bytes per node, coordinator CPU."""
    rounds = run.get("rounds", [])
    walls = [r["wall_seconds"] for r in rounds if r.get("wall_seconds") is not None]
    sent = [b["sent"] for r in rounds for b in r.get("bytes", {}).values()]
    received = [b["received"] for r in rounds for b in r.get("bytes", {}).values()]
    cpu = [r["coordinator_cpu_seconds"] for r in rounds if r.get("coordinator_cpu_seconds") is not None]
    spreads = [r["result_spread_seconds"] for r in rounds if r.get("result_spread_seconds") is not None]
    phases: dict[str, list[float]] = {}
    for r in rounds:
        for phase, seconds in (r.get("phase_seconds") or {}).items():
            phases.setdefault(phase, []).append(seconds)

    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 3) if xs else None

    return {
        "round_wall_s_median": med(walls), "round_wall_s_max": round(max(walls), 3) if walls else None,
        "bytes_sent_per_node_median": med(sent), "bytes_received_per_node_median": med(received),
        "bytes_sent_per_node_max": max(sent) if sent else None,
        "coordinator_cpu_s_median": med(cpu),
        "result_spread_s_median": med(spreads),  # coordinator has the result -> the last node has it
        "phase_s_median": {p: med(v) for p, v in phases.items()},
        "verdicts": [r["check"]["verdict"] for r in rounds],
    }


def training_summary(run: dict[str, Any]) -> dict[str, Any]:
    """A training run's figures: the accuracy curve per round (the federated evaluation the nodes
    summed, and netsim's test accuracy of the same model), final federated against centralized
    accuracy, and where a round's time goes (training before the round's attempt, the attempt)."""
    end = run.get("training") or {}
    curve = []
    for r in run.get("rounds", []):
        t = r.get("training") or {}
        curve.append({"round": r["round"], "accuracy": t.get("accuracy"), "loss": t.get("loss"),
                      "test_accuracy": t.get("test_accuracy"), "participants": t.get("participants")})
    # A training round's period (first node holding round r-1's result -> first holding r's) is the
    # nodes' local training from the new model, the round's start, and its attempts; the attempts are
    # timed by the daemons (wall_seconds), the rest is put down to training and start.
    periods, training = [], []
    previous = None
    for r in run.get("rounds", []):
        first = r.get("first_result_at")
        if previous is not None and first is not None:
            period = first - previous
            periods.append(period)
            if r.get("wall_seconds") is not None:
                training.append(max(0.0, period - r["wall_seconds"]))
        previous = first

    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 3) if xs else None

    return {
        "federated_accuracy": end.get("federated_accuracy"), "centralized_accuracy": end.get("centralized_accuracy"),
        "gap_points": end.get("gap_points"), "rounds_with_result": end.get("rounds_with_result"),
        "training_rounds": end.get("training_rounds"), "ok": end.get("ok"), "problems": end.get("problems", []),
        "round_period_s_median": med(periods), "outside_attempts_s_median": med(training),
        "aggregation_s_median": round_summary(run)["round_wall_s_median"],
        "curve": curve,
    }


# --- words -----------------------------------------------------------------------------------------


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _peers(events: list[dict[str, Any]]) -> str:
    peers = sorted({p for e in events for p in e.get("peers", [])})
    return ("peer " if len(peers) == 1 else "peers ") + ", ".join(map(str, peers))


def _faults(events: list[dict[str, Any]]) -> list[str]:
    """A round's injected faults in words: who was killed where, who came back, anything else netsim noted.
    Arming a failpoint is preparation, not a fault: it is left out."""
    died = [e for e in events if e["event"] == "died"]
    restarted = [e for e in events if e["event"] == "restarted"]
    words = []
    for failpoint in sorted({e.get("failpoint", "?") for e in died}):
        at = [e for e in died if e.get("failpoint", "?") == failpoint]
        role, _, phase = failpoint.partition(":")
        words.append(f"{_peers(at)} killed ({at[0].get('signal', 'signal')}) in the {phase or failpoint} phase"
                     + (f" as {role}" if phase else ""))
    if restarted:
        words.append(f"{_peers(restarted)} restarted after the round")
    for e in events:
        if e["event"] not in ("died", "restarted") and not e["event"].startswith("armed"):
            details = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("at", "round", "event"))
            words.append(e["event"].replace("_", " ") + (f" ({details})" if details else ""))
    return words


def verdict(run: dict[str, Any]) -> list[str]:
    """The run in sentences: the overall outcome first, then what each round went through."""
    rounds = run.get("rounds", [])
    final = run.get("final_check") or {}
    exact = sum(1 for r in rounds if r["check"]["verdict"] == "exact")
    lines = []
    noised = sum(1 for r in rounds if r["check"]["verdict"] == "noised")
    if run.get("ok") and noised:
        lines.append(f"Passed. {noised} of {_plural(len(rounds), 'round')} carry differential-privacy noise, so their sums "
                     "cannot be replayed: every node holding one holds the same result; at the end, all "
                     f"{final.get('results_checked', 0)} results held by live nodes were checked and none was missing.")
    elif run.get("ok"):
        lines.append(f"Passed. {exact} of {_plural(len(rounds), 'round')} produced the exact sum of their survivors' "
                     f"inputs (checked against the plaintext); at the end, all {final.get('results_checked', 0)} results "
                     "held by live nodes were checked and none was wrong or missing.")
    else:
        wrong = [f"round {r['round']}: {VERDICT_WORDS.get(r['check']['verdict'], r['check']['verdict'])}"
                 for r in rounds if r["check"]["verdict"] not in ("exact", "aborted", "noised")]
        lines.append("FAILED. " + ("; ".join(wrong) + ". " if wrong else "")
                     + f"Final check: {final.get('mismatches', 0)} wrong and {final.get('missing', 0)} missing of "
                       f"{final.get('results_checked', 0)} results held by live nodes.")
        for bad in final.get("offending", [])[:5]:
            lines.append(f"Peer {bad['peer']}, round {bad['round']}: {'; '.join(bad['problems'])}.")
    events = run.get("events", [])
    killed = sum(len(e.get("peers", [])) for e in events if e["event"] == "died")
    if killed:
        lines[0] += (f" Faults injected: {_plural(killed, 'peer')} killed mid-round in all, "
                     f"{sum(len(e.get('peers', [])) for e in events if e['event'] == 'restarted')} restarted.")
    for r in rounds:
        faults = _faults([e for e in events if e.get("round") == r["round"]])
        attempts = r.get("attempts", [])
        failed = [a for a in attempts if a.get("state") != "completed"]
        text = (f"Round {r['round']}: {VERDICT_WORDS.get(r['check']['verdict'], r['check']['verdict'])}, "
                f"{len(r.get('participants', []))} participants, {len(r.get('dropped', []))} dropped")
        if r.get("wall_seconds") is not None:
            text += f", {_seconds(r['wall_seconds'])}"
        text += f", {_plural(len(attempts), 'attempt')}" if attempts else ""
        if failed:
            text += " (" + "; ".join(f"attempt {a['attempt']} {a.get('state')}: {a.get('abort_reason') or 'no reason given'}"
                                     for a in failed) + ")"
        faults_text = "; ".join(faults)
        lines.append(text + "." + (f" {faults_text[0].upper()}{faults_text[1:]}." if faults else ""))
    return lines


# --- SVG helpers -----------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values 0, step, 2 step, ... covering `top`, with step 1, 2 or 5 x 10^k."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tick_label(value: float, unit: str) -> str:
    if unit == "s":
        return _seconds(value) if value else "0"
    if unit == "B":
        return _fmt_bytes(value).replace(".0 ", " ") if value else "0"
    return f"{value:g}"


def _svg(width: int, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="12">{"".join(body)}</svg>')


def _x_axis(left: float, width: float, top: float, bottom: float, ticks: list[float], unit: str) -> list[str]:
    parts = []
    for t in ticks:
        x = left + width * t / ticks[-1]
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle" fill="#555">{_esc(_tick_label(t, unit))}</text>')
    return parts


def phase_breakdown(run: dict[str, Any], width: int = 900) -> str:
    """Each round's completed attempt as one bar split into its phases, on the longest round's scale."""
    bars = []
    for r in run.get("rounds", []):
        done = [a for a in r.get("attempts", []) if a.get("state") == "completed" and a.get("phase_timings")]
        if done:
            timings = done[-1]["phase_timings"]
            order = [p for p in PHASE_COLOURS if p in timings] + sorted(set(timings) - set(PHASE_COLOURS))
            bars.append((f"round {r['round']}", {p: timings[p] for p in order}))
    if not bars:
        return '<p class="muted">No round completed, so there are no phase timings to draw.</p>'
    ticks = nice_ticks(max(sum(p.values()) for _, p in bars))
    left, row, top = 90, 30, 10
    plot = width - left - 30
    bottom = top + row * len(bars)
    parts = _x_axis(left, plot, top, bottom, ticks, "s")
    for i, (label, phases) in enumerate(bars):
        y = top + i * row
        parts.append(f'<text x="{left - 8}" y="{y + 19}" text-anchor="end">{_esc(label)}</text>')
        x = left
        for phase, seconds in phases.items():
            w = plot * seconds / ticks[-1]
            parts.append(f'<rect x="{x:.1f}" y="{y + 5}" width="{max(w, 0.5):.1f}" height="{row - 10}" '
                         f'fill="{PHASE_COLOURS.get(phase, "#999")}"><title>{_esc(label)} {phase}: {_seconds(seconds)}</title></rect>')
            if w > 46:
                parts.append(f'<text x="{x + w / 2:.1f}" y="{y + 19}" text-anchor="middle" fill="white">{_seconds(seconds)}</text>')
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 19}" fill="#333">{_seconds(sum(phases.values()))}</text>')
    legend = " ".join(f'<span class="key" style="background:{c}">{p}</span>' for p, c in PHASE_COLOURS.items())
    return _svg(width, bottom + 24, parts) + f'<div class="legend">{legend}</div>'


def bytes_distribution(run: dict[str, Any], width: int = 900) -> str:
    """Bytes each node sent in each round: one dot per node (the coordinator in red), the median marked."""
    rows = [(r["round"], r.get("coordinator"), r.get("bytes") or {}) for r in run.get("rounds", []) if r.get("bytes")]
    if not rows:
        return '<p class="muted">No byte counts recorded.</p>'
    ticks = nice_ticks(max(b["sent"] for _, _, per in rows for b in per.values()))
    left, row, top = 90, 34, 10
    plot = width - left - 30
    bottom = top + row * len(rows)
    parts = _x_axis(left, plot, top, bottom, ticks, "B")
    for i, (number, coordinator, per_node) in enumerate(rows):
        y = top + i * row + row / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">round {number}</text>')
        members = [b["sent"] for node, b in per_node.items() if str(node) != str(coordinator)]
        if members:
            median = statistics.median(members)
            mx = left + plot * median / ticks[-1]
            parts.append(f'<line x1="{mx:.1f}" y1="{y - 12}" x2="{mx:.1f}" y2="{y + 12}" stroke="#222" stroke-width="2">'
                         f'<title>median of the other nodes: {_fmt_bytes(median)}</title></line>')
        for j, (node, b) in enumerate(sorted(per_node.items(), key=lambda kv: str(kv[0]))):
            is_coordinator = str(node) == str(coordinator)
            x = left + plot * b["sent"] / ticks[-1]
            jitter = ((j * 7) % 11 - 5) * 1.2  # spread equal values a little so each dot stays visible
            parts.append(f'<circle cx="{x:.1f}" cy="{y + jitter:.1f}" r="4.5" fill-opacity="0.75" '
                         f'fill="{COORDINATOR_COLOUR if is_coordinator else NODE_COLOUR}">'
                         f'<title>node {_esc(node)}{" (coordinator)" if is_coordinator else ""}: sent {_fmt_bytes(b["sent"])}, '
                         f'received {_fmt_bytes(b["received"])}</title></circle>')
    legend = (f'<span class="dot" style="background:{NODE_COLOUR}"></span> a node '
              f'<span class="dot" style="background:{COORDINATOR_COLOUR}"></span> the round\'s coordinator '
              '<b>|</b> median of the nodes (nodes that dropped out are not shown)')
    return _svg(width, bottom + 24, parts) + f'<div class="legend">{legend}</div>'


def scatter(title: str, xlabel: str, ylabel: str, points: list[tuple[float, float, str]], unit: str,
            width: int = 460, height: int = 300) -> str:
    """A labelled scatter plot across runs; each point is (x, y, label)."""
    left, bottom, top, right = 70, 40, 30, 20
    xticks, yticks = nice_ticks(max(p[0] for p in points)), nice_ticks(max(p[1] for p in points))
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + pw * x / xticks[-1]

    def sy(y: float) -> float:
        return top + ph * (1 - y / yticks[-1])

    parts = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>',
             f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{_esc(xlabel)}</text>',
             f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">{_esc(ylabel)}</text>']
    for yv in yticks:
        parts.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{left + pw}" y2="{sy(yv):.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{_esc(_tick_label(yv, unit))}</text>')
    for xv in xticks:
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{xv:g}</text>')
    for x, y, label in points:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{NODE_COLOUR}"><title>{_esc(label)}</title></circle>')
        parts.append(f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 6:.1f}">{_esc(label)}</text>')
    return _svg(width, height, parts)


def accuracy_curve(run: dict[str, Any], width: int = 900, height: int = 300) -> str:
    """A training run's accuracy per round: the federated evaluation the nodes summed on their own
    held-out rows (of the model each round started from), netsim's accuracy of the same model on the
    common test split, and the final federated and centralized accuracies as horizontal lines."""
    summary = training_summary(run)
    series = {"federated evaluation (nodes' held-out rows)": ("#4e79a7", [(p["round"], p["accuracy"]) for p in summary["curve"]
                                                                            if p["accuracy"] is not None]),
              "test split (netsim)": ("#f28e2b", [(p["round"], p["test_accuracy"]) for p in summary["curve"]
                                                  if p["test_accuracy"] is not None])}
    if not any(points for _, points in series.values()):
        return '<p class="muted">No round reported an accuracy.</p>'
    left, right, top, bottom = 60, 20, 14, 36
    last = max(1, max(p["round"] for p in summary["curve"]))
    xticks = [t for t in nice_ticks(last, 10) if t == int(t)] if last >= 10 else [float(i) for i in range(last + 1)]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + pw * x / xticks[-1]

    def sy(y: float) -> float:
        return top + ph * (1 - y)

    parts = [f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">round (the model it started from)</text>']
    for yv in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{left + pw}" y2="{sy(yv):.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv * 100:.0f} %</text>')
    for xv in xticks:
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{xv:g}</text>')
    # The reference lines are named in the legend: over the curves, their labels would hide the points.
    references = [(name, value, colour) for name, value, colour in (
        ("centralized", summary["centralized_accuracy"], "#59a14f"),
        ("federated final", summary["federated_accuracy"], "#e15759")) if value is not None]
    for name, value, colour in references:
        parts.append(f'<line x1="{left}" y1="{sy(value):.1f}" x2="{left + pw}" y2="{sy(value):.1f}" stroke="{colour}" '
                     f'stroke-dasharray="6 4"><title>{name}: {value * 100:.1f} %</title></line>')
    for name, (colour, points) in series.items():
        if points:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, y in points:
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
                             f'<title>{_esc(name)}, round {x}: {y * 100:.1f} %</title></circle>')
    legend = " ".join(f'<span class="dot" style="background:{c}"></span> {_esc(n)}' for n, (c, _) in series.items())
    legend += "".join(f' <span style="color:{c}">- - {_esc(n)} {v * 100:.1f} %</span>' for n, v, c in references)
    return _svg(width, height, parts) + f'<div class="legend">{legend}</div>'


def _training_section(run: dict[str, Any]) -> str:
    if "training" not in run:
        return ""
    end = run["training"]
    s = training_summary(run)
    privacy = end.get("privacy")
    words = (f'{end.get("dataset")}, {end.get("partition")}, {end.get("architecture")} ({end.get("parameters")} parameters), '
             f'{end.get("optimizer")}, {end.get("training_rounds")} training rounds '
             f'({end.get("rounds_with_result")} with a result)'
             + (f', differential privacy epsilon {privacy["epsilon"]:g} delta {privacy["delta"]:g}' if privacy else ""))
    figures = []
    if s["federated_accuracy"] is not None:
        figures.append(f'final federated test accuracy {s["federated_accuracy"] * 100:.1f} %')
    if s["centralized_accuracy"] is not None:
        figures.append(f'centralized {s["centralized_accuracy"] * 100:.1f} %')
    if s["gap_points"] is not None:
        figures.append(f'gap {s["gap_points"]:.1f} points')
    problems = "".join(f"<li>{_esc(p)}</li>" for p in end.get("problems", []))
    return (f'<h3>Training</h3><p>{_esc(words)}: {_esc(", ".join(figures))}.</p>'
            + (f'<ul class="rounds">{problems}</ul>' if problems else "")
            + f'<h3>Accuracy per round</h3>{accuracy_curve(run)}')


def _run_table(run: dict[str, Any]) -> str:
    head = ("<tr><th>round</th><th>result</th><th>time</th><th>attempts</th><th>coordinator</th><th>its CPU</th>"
            "<th>participants</th><th>dropped</th><th>result spread</th><th title=\"median over the nodes\">sent/node</th>"
            "<th title=\"median over the nodes\">received/node</th></tr>")
    rows = []
    for r in run.get("rounds", []):
        sent = [b["sent"] for b in r.get("bytes", {}).values()]
        received = [b["received"] for b in r.get("bytes", {}).values()]
        reasons = "; ".join(f'{a["attempt"]}: {a["abort_reason"]}' for a in r.get("attempts", []) if a.get("abort_reason"))

        def secs(value: Any) -> str:
            return "-" if value is None else _seconds(value)

        rows.append(
            f'<tr><td>{r["round"]}</td><td class="{_esc(r["check"]["verdict"])}">{_esc(r["check"]["verdict"])}</td>'
            f'<td>{secs(r.get("wall_seconds"))}</td><td title="{_esc(reasons)}">{len(r.get("attempts", []))}</td>'
            f'<td>{_esc(r.get("coordinator"))}</td><td>{secs(r.get("coordinator_cpu_seconds"))}</td>'
            f'<td>{len(r.get("participants", []))}</td><td>{len(r.get("dropped", []))}</td>'
            f'<td>{secs(r.get("result_spread_seconds"))}</td>'
            f'<td>{_fmt_bytes(statistics.median(sent)) if sent else "-"}</td>'
            f'<td>{_fmt_bytes(statistics.median(received)) if received else "-"}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _label(run: dict[str, Any]) -> str:
    c = run.get("config", {})
    return run.get("bench") or f'N={c.get("n")} d={run.get("dimension", c.get("d"))}'


def _across_runs(runs: list[dict[str, Any]]) -> str:
    """Round time vs N and bytes vs d, one point per run: drawn only when there are several runs."""
    if len(runs) < 2:
        return ""
    latency = [(r["config"]["n"], s["round_wall_s_median"], _label(r)) for r in runs
               if (s := round_summary(r))["round_wall_s_median"] is not None]
    per_node = [(r["config"]["d"], s["bytes_sent_per_node_median"], _label(r)) for r in runs
                if (s := round_summary(r))["bytes_sent_per_node_median"] is not None]
    charts = [scatter("Round time vs N", "peers (N)", "median round time", latency, "s") if len(latency) > 1 else "",
              scatter("Bytes sent per node vs d", "vector length (d)", "median sent per node and round", per_node, "B")
              if len(per_node) > 1 else ""]
    return f'<h2>Across {len(runs)} runs</h2><div class="charts">{"".join(charts)}</div>' if any(charts) else ""


def render_html(runs: list[dict[str, Any]]) -> str:
    sections = []
    for run in runs:
        c = run.get("config", {})
        status = "passed" if run.get("ok") else "FAILED"
        sentences = verdict(run)
        sections.append(
            f'<section><h2>{_esc(_label(run))} <span class="badge {status}">{status}</span></h2>'
            f'<p class="verdict {status}">{_esc(sentences[0])}</p>'
            f'<ul class="rounds">{"".join(f"<li>{_esc(s)}</li>" for s in sentences[1:])}</ul>'
            f'<p class="muted">{c.get("n")} peers in {c.get("processes")} processes, vector length {run.get("dimension", c.get("d"))}, '
            f'{c.get("rounds")} rounds, workload {_esc(run.get("workload", "vector"))}, seed {run.get("seed")}, '
            f'job {_esc(run.get("job_id"))}, start-up {run.get("startup_seconds")} s.</p>'
            f'{_training_section(run)}'
            f'<h3>Where each round spends its time</h3>{phase_breakdown(run)}'
            f'<h3>Bytes each node sent per round</h3>{bytes_distribution(run)}'
            f'<h3>Rounds</h3>{_run_table(run)}</section>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>netsim report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em 2em; color: #222; max-width: 960px; }}
h1 {{ margin-bottom: 0.2em; }} h3 {{ margin: 1.4em 0 0.3em; font-size: 1em; color: #444; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }}
.verdict {{ font-size: 1.1em; padding: 0.6em 0.8em; border-radius: 4px; }}
.verdict.passed {{ background: #e8f4e8; }} .verdict.FAILED {{ background: #fbe9e9; }}
.badge {{ font-size: 0.7em; padding: 2px 8px; border-radius: 3px; color: white; vertical-align: middle; }}
.badge.passed {{ background: #2a7a2a; }} .badge.FAILED {{ background: #b00; }}
.exact {{ color: #2a7a2a; }} .mismatch, .missing, .split {{ color: #b00; font-weight: bold; }} .aborted {{ color: #a60; }}
.muted {{ color: #777; }} .charts {{ display: flex; gap: 2em; flex-wrap: wrap; }}
.legend {{ font-size: 0.85em; color: #444; margin: 0.2em 0 0 90px; }}
.key {{ color: white; padding: 1px 6px; margin-right: 3px; }}
.dot {{ display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-left: 6px; }}
ul.rounds {{ margin: 0.4em 0; padding-left: 1.2em; }} ul.rounds li {{ margin: 0.2em 0; }}
</style></head><body>
<h1>netsim report</h1>
{_across_runs(runs)}
{''.join(sections)}
</body></html>
"""
