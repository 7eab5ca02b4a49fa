"""villagectl priors JOB: the routing priors a node applies (latest round of a routing-priors job),
with the spec's validation metrics. Data from ``GET /v1/jobs/{id}/priors``."""

from __future__ import annotations

from typing import Any

from cli.client import ApiClient
from cli.common import ApiUrl, AsJson, DataDir, JobId, Token, friendly_errors, job_request, print_json, print_rows


@friendly_errors
def priors(job_id: JobId, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show the routing priors this node applies from a routing-priors job, and round quality.

    Example:

        villagectl priors 3f9c2a1b7d4e5f60
    """
    view: dict[str, Any] = job_request(ApiClient.discover(data_dir, api, token), "GET", job_id, "/priors") or {}
    if as_json:
        print_json(view)
        return
    applied = view.get("priors")
    if not applied:
        print(f"no aggregated priors yet for job {job_id} on this node (state {view.get('state')})")
        return
    validation = view.get("validation") or {}
    print(f"job {job_id}: priors from round {view.get('round')} ({view.get('participants')} participants); "
          f"stability {validation.get('stability_score', 0):.3f}, diversity {validation.get('diversity_score', 0):.3f}, "
          f"round quality {validation.get('round_quality', 0):.3f}")
    cells = []
    for c in applied.get("models", []):
        latency = c.get("latency_percentile") or {}
        rate = c.get("success_rate")
        cells.append({"model": c["model_id"], "region": c["region"], "tier": c["quality_tier"],
                      "p50_ms": _round(latency.get("p50")), "p95_ms": _round(latency.get("p95")),
                      "p99_ms": _round(latency.get("p99")), "success_rate": None if rate is None else round(rate, 4)})
    if cells:
        print_rows(cells, "model performance priors", ("model", "region", "tier", "p50_ms", "p95_ms", "p99_ms", "success_rate"))
    patterns = [{"request": h, "optimal_model": p.get("optimal_model"), "share": _round(p.get("share"), 3)}
                for h, p in applied.get("request_patterns", {}).items()]
    if patterns:
        print_rows(patterns, f"request patterns ({len(patterns)})", ("request", "optimal_model", "share"))
    carbon = [{"region": r, "gco2_per_kwh": _round(c["carbon_intensity_gco2_per_kwh"]),
               "penalty": c["routing_penalty_factor"], "reports": c["reports"]} for r, c in applied.get("carbon", {}).items()]
    if carbon:
        print_rows(carbon, "carbon priors", ("region", "gco2_per_kwh", "penalty", "reports"))


def _round(value: Any, digits: int = 1) -> Any:
    return round(value, digits) if isinstance(value, (int, float)) else None
