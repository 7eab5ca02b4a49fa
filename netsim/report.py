"""Reports of netsim runs: `report.json` (everything measured) and `report.html` (pictures).

The HTML page is self-contained (inline SVG, no script, no external files) so it opens
anywhere and can be attached to an issue. It was chosen over matplotlib PNGs because
matplotlib is not a village dependency and three simple charts do not justify adding it.

Charts: a timeline of the phases of every round (failed attempts in grey, with their abort
reason as tooltip), round latency against N and bytes per node against d over all runs in
the report (one point per run; `netsim bench` puts its workloads in one report), and a table
per run with each round's participants, drops, coordinator CPU and result check.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path
from typing import Any

PHASE_COLOURS = {"advertise": "#4e79a7", "share": "#f28e2b", "masked": "#59a14f", "consistency": "#b07aa1",
                 "unmask": "#e15759"}


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


# --- SVG helpers -----------------------------------------------------------------------------------

def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _axis_max(values: list[float]) -> float:
    top = max(values) if values else 1.0
    return top * 1.1 if top > 0 else 1.0


def scatter(title: str, xlabel: str, ylabel: str, points: list[tuple[float, float, str]], width: int = 460, height: int = 300) -> str:
    """A labelled scatter plot; each point is (x, y, label)."""
    left, bottom, top, right = 70, 40, 30, 20
    xmax = _axis_max([p[0] for p in points])
    ymax = _axis_max([p[1] for p in points])
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + pw * x / xmax

    def sy(y: float) -> float:
        return top + ph * (1 - y / ymax)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
             f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{_esc(xlabel)}</text>',
             f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">{_esc(ylabel)}</text>']
    for i in range(5):
        yv, xv = ymax * i / 4, xmax * i / 4
        parts.append(f'<text x="{left - 4}" y="{sy(yv) + 4}" text-anchor="end">{yv:.3g}</text>')
        parts.append(f'<line x1="{left}" y1="{sy(yv)}" x2="{left + pw}" y2="{sy(yv)}" stroke="#ddd"/>')
        parts.append(f'<text x="{sx(xv)}" y="{top + ph + 14}" text-anchor="middle">{xv:.3g}</text>')
    for x, y, label in points:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="#4e79a7"><title>{_esc(label)}</title></circle>')
        parts.append(f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 6:.1f}">{_esc(label)}</text>')
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline(run: dict[str, Any], width: int = 900) -> str:
    """One row per round: each attempt from its start; completed attempts split into phases."""
    rounds = run.get("rounds", [])
    starts = [a["started_at"] for r in rounds for a in r.get("attempts", []) if a.get("started_at")]
    if not starts:
        return '<p class="muted">no round attempts recorded</p>'
    t0 = min(starts)
    ends = [a.get("ended_at") or a["started_at"] for r in rounds for a in r.get("attempts", []) if a.get("started_at")]
    span = max(max(ends) - t0, 1e-3) * 1.02
    left, row, top = 80, 22, 24
    height = top + row * len(rounds) + 30
    pw = width - left - 20

    def sx(t: float) -> float:
        return left + pw * (t - t0) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">']
    for i in range(6):
        t = span * i / 5
        x = left + pw * i / 5
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 26}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle">{t:.1f} s</text>')
    for i, r in enumerate(rounds):
        y = top + i * row
        verdict = r["check"]["verdict"]
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">round {r["round"]}'
                     f'{"" if verdict == "exact" else " (" + _esc(verdict) + ")"}</text>')
        for a in r.get("attempts", []):
            if not a.get("started_at"):
                continue
            x0 = sx(a["started_at"])
            if a["state"] == "completed" and a.get("phase_timings"):
                x = x0
                for phase, seconds in a["phase_timings"].items():
                    w = max(pw * seconds / span, 0.5)
                    colour = PHASE_COLOURS.get(phase, "#999")
                    parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{colour}">'
                                 f'<title>round {r["round"]} attempt {a["attempt"]} {phase}: {seconds:.3f} s</title></rect>')
                    x += w
            else:
                end = a.get("ended_at") or a["started_at"]
                w = max(sx(end) - x0, 2)
                parts.append(f'<rect x="{x0:.1f}" y="{y + 6}" width="{w:.1f}" height="{row - 12}" fill="#bbb">'
                             f'<title>attempt {a["attempt"]} {a["state"]}: {_esc(a.get("abort_reason"))}</title></rect>')
    parts.append("</svg>")
    legend = " ".join(f'<span style="background:{c};color:white;padding:1px 6px">{p}</span>' for p, c in PHASE_COLOURS.items())
    return "".join(parts) + f'<div>{legend} <span style="background:#bbb;padding:1px 6px">failed attempt</span></div>'


def _run_table(run: dict[str, Any]) -> str:
    head = ("<tr><th>round</th><th>check</th><th>wall s</th><th>attempts</th><th>coordinator</th><th>coord. CPU s</th>"
            "<th>participants</th><th>dropped</th><th>result spread s</th><th>sent/node (median)</th><th>received/node (median)</th></tr>")
    rows = []
    for r in run.get("rounds", []):
        sent = [b["sent"] for b in r.get("bytes", {}).values()]
        received = [b["received"] for b in r.get("bytes", {}).values()]
        reasons = "; ".join(f'{a["attempt"]}: {a["abort_reason"]}' for a in r.get("attempts", []) if a.get("abort_reason"))
        rows.append(
            f'<tr><td>{r["round"]}</td><td class="{_esc(r["check"]["verdict"])}">{_esc(r["check"]["verdict"])}</td>'
            f'<td>{_esc(r.get("wall_seconds"))}</td><td title="{_esc(reasons)}">{len(r.get("attempts", []))}</td>'
            f'<td>{_esc(r.get("coordinator"))}</td><td>{_esc(r.get("coordinator_cpu_seconds"))}</td>'
            f'<td>{len(r.get("participants", []))}</td><td>{len(r.get("dropped", []))}</td>'
            f'<td>{_esc(r.get("result_spread_seconds", "-"))}</td>'
            f'<td>{_fmt_bytes(statistics.median(sent)) if sent else "-"}</td>'
            f'<td>{_fmt_bytes(statistics.median(received)) if received else "-"}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _label(run: dict[str, Any]) -> str:
    c = run.get("config", {})
    return run.get("bench") or f'N={c.get("n")} d={c.get("d")}'


def render_html(runs: list[dict[str, Any]]) -> str:
    latency = [(r["config"]["n"], s["round_wall_s_median"], _label(r)) for r in runs
               if (s := round_summary(r))["round_wall_s_median"] is not None]
    per_node = [(r["config"]["d"], s["bytes_sent_per_node_median"] / 1e6, _label(r)) for r in runs
                if (s := round_summary(r))["bytes_sent_per_node_median"] is not None]
    sections = []
    for run in runs:
        c = run.get("config", {})
        status = "ok" if run.get("ok") else "FAILED"
        events = "".join(f'<li>round {_esc(e.get("round"))}: {_esc(e["event"])} '
                         f'{_esc({k: v for k, v in e.items() if k not in ("at", "round", "event")})}</li>'
                         for e in run.get("events", []))
        sections.append(
            f'<h2>{_esc(_label(run))}: <span class="{status}">{status}</span></h2>'
            f'<p>N={c.get("n")} peers in {c.get("processes")} processes, d={c.get("d")}, {c.get("rounds")} rounds, '
            f'seed {run.get("seed")}, job {_esc(run.get("job_id"))}, start-up {run.get("startup_seconds")} s, '
            f'final check: {_esc(run.get("final_check"))}</p>'
            f'{timeline(run)}{_run_table(run)}'
            + (f"<details><summary>{len(run.get('events', []))} fault events</summary><ul>{events}</ul></details>" if events else ""))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>netsim report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.exact, .ok {{ color: #2a7a2a; }} .mismatch, .missing, .split, .FAILED {{ color: #b00; font-weight: bold; }}
.aborted {{ color: #a60; }} .muted {{ color: #888; }} .charts {{ display: flex; gap: 2em; flex-wrap: wrap; }}
</style></head><body>
<h1>netsim report</h1>
<div class="charts">
{scatter("Round latency vs N", "peers (N)", "median round wall time (s)", latency)}
{scatter("Bytes sent per node vs d", "vector length (d)", "median MB sent per node per round", per_node)}
</div>
{''.join(sections)}
</body></html>
"""
