"""``villagectl jobs`` and ``villagectl rounds``: create, inspect, join, cancel and watch jobs.

Kind-agnostic: a spec is whatever JSON object the daemon accepts (the daemon validates it and
names the bad field); tables show spec and result fields generically. ``jobs watch`` polls
``GET /v1/jobs/{id}/progress`` and exits 0 only if the job completes (4 otherwise).
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import ApiClient
from cli.common import (
    ApiUrl, AsJson, DataDir, JobId, Token, cell, console, friendly_errors, invalid_fields, job_request, print_json, print_record,
    print_rows,
)
from cli.data import load_json_file
from cli.errors import ApiError, CliError, JobNotCompleted

__all__ = ["jobs_app", "rounds"]

jobs_app = typer.Typer(help="Jobs: submit, list, inspect, join, cancel and watch them.", no_args_is_help=True)

_FINAL_STATES: Final = ("completed", "cancelled", "failed")


def _load_spec_file(path: Path) -> Any:
    """A spec from JSON, or from TOML (.toml: the spec's configuration block as a [federation] table)."""
    if path.suffix.lower() != ".toml":
        return load_json_file(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path} is not valid TOML: {exc}") from None


def build_spec(spec_file: Path | None, fields: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """The spec from ``--spec FILE``, then the field flags, then ``--set KEY=VALUE`` (dotted keys nest)."""
    spec = _load_spec_file(spec_file) if spec_file is not None else {}
    if not isinstance(spec, dict):
        raise CliError(f"{spec_file}: a job spec must be a JSON object")
    spec.update({key: value for key, value in fields.items() if value is not None})
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise CliError(f"--set {setting!r}: expected KEY=VALUE, e.g. --set quantization.clip=100")
        try:
            value: Any = json.loads(text, parse_constant=lambda name: text)
        except ValueError:
            value = text  # not JSON: a plain string
        *parents, leaf = key.split(".")
        target = spec
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise CliError(f"--set {setting!r}: {part!r} is not an object in the spec")
        target[leaf] = value
    return spec


@jobs_app.command("create")
@friendly_errors
def jobs_create(
    spec_file: Annotated[Path | None, typer.Option("--spec", help="Job spec as a JSON or TOML file; flags override its fields.")] = None,
    kind: Annotated[str | None, typer.Option(help="Job kind, e.g. vector.")] = None,
    data: Annotated[str | None, typer.Option(help="Name of the local input each member contributes.")] = None,
    dimension: Annotated[int | None, typer.Option(help="Length of each input vector.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Number of rounds.")] = None,
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    aggregate: Annotated[str | None, typer.Option(help="sum or mean.")] = None,
    round_interval: Annotated[float | None, typer.Option(help="Seconds between round starts.")] = None,
    start_delay: Annotated[float | None, typer.Option(help="Seconds for members to join before round 0.")] = None,
    min_participants: Annotated[int | None, typer.Option(help="Fewest participants a round may finish with.")] = None,
    phase_timeout: Annotated[float | None, typer.Option(help="Seconds each protocol phase waits.")] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Any other spec field as KEY=VALUE (JSON value; dotted keys nest).")
    ] = None,
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Submit a job to the village and print its id. The daemon checks the spec and names any bad field.

    Examples:

        villagectl jobs create --spec job.json

        villagectl jobs create --kind vector --data stats --dimension 8 --rounds 3 --set quantization.clip=1000
    """
    fields = {
        "kind": kind, "data": data, "dimension": dimension, "rounds": rounds, "name": name, "aggregate": aggregate,
        "round_interval": round_interval, "start_delay": start_delay, "min_participants": min_participants,
        "phase_timeout": phase_timeout,
    }  # fmt: skip
    spec = build_spec(spec_file, fields, settings or [])
    client = ApiClient.discover(data_dir, api, token)
    try:
        job = client.post("/v1/jobs", spec)
    except ApiError as exc:
        if exc.status != 422:
            raise
        raise invalid_fields(exc, "job spec") from None
    if as_json:
        print_json(job)
    else:
        print(job["id"])


@jobs_app.command("list")
@friendly_errors
def jobs_list(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """List the jobs this node knows, oldest first.

    Example:

        villagectl jobs list --json
    """
    jobs = ApiClient.discover(data_dir, api, token).get("/v1/jobs") or []
    if as_json:
        print_json(jobs)
        return
    if not jobs:
        print("no jobs; create one with: villagectl jobs create --spec job.json")
        return
    rows = []
    for job in jobs:
        spec = job.get("spec") or {}
        rows.append({
            "id": job.get("id"), "name": spec.get("name") or None, "kind": spec.get("kind"), "state": job.get("state"),
            "rounds": f"{job.get('results', '?')}/{spec.get('rounds', '?')}", "members": len(job.get("members") or []),
            "joined": job.get("joined"), "created_at": job.get("created_at"),
        })  # fmt: skip
    print_rows(rows, f"{len(rows)} jobs")


@jobs_app.command("show")
@friendly_errors
def jobs_show(job_id: JobId, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show one job: its state, creator, members and every spec field.

    Example:

        villagectl jobs show 3f9c2a1b7d4e5f60
    """
    job = job_request(ApiClient.discover(data_dir, api, token), "GET", job_id)
    if as_json:
        print_json(job)
        return
    if isinstance(job.get("members"), list):
        job = {**job, "members": len(job["members"])}
    privacy = job.pop("privacy", None)
    print_record(job, f"job {job_id}")
    if privacy:
        print_record({key: privacy[key] for key in _PRIVACY_FIELDS if key in privacy},
                     "differential privacy (this node's input)")


#: What `jobs show` prints of a job's DP accounting, in reading order.
_PRIVACY_FIELDS = (
    "guarantee", "neighbouring", "epsilon_per_round", "delta", "budget_epsilon", "releases", "epsilon_spent",
    "epsilon_remaining", "epsilon_spent_against_outsiders", "rounds_affordable", "wrap_probability_bound_per_round",
)


@jobs_app.command("result")
@friendly_errors
def jobs_result(job_id: JobId, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show a job's committed results, one per round (--json for every value).

    Example:

        villagectl jobs result 3f9c2a1b7d4e5f60 --json
    """
    results = job_request(ApiClient.discover(data_dir, api, token), "GET", job_id, "/results") or []
    if as_json:
        print_json(results)
        return
    if not results:
        print(f"no results yet for job {job_id}; follow it with: villagectl jobs watch {job_id}")
        return
    rows = [{key: len(value) if key in ("participants", "dropped") and isinstance(value, list) else value
             for key, value in result.items()} for result in results]  # fmt: skip
    print_rows(rows, f"job {job_id}: {len(rows)} results", ("round", "attempt", "participants", "dropped"))


@jobs_app.command("cancel")
@friendly_errors
def jobs_cancel(job_id: JobId, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Cancel a job (its creator's cancel reaches every member).

    Example:

        villagectl jobs cancel 3f9c2a1b7d4e5f60
    """
    job = job_request(ApiClient.discover(data_dir, api, token), "POST", job_id, "/cancel")
    if as_json:
        print_json(job)
    else:
        print(f"job {job_id} is {job.get('state')}")


@jobs_app.command("join")
@friendly_errors
def jobs_join(job_id: JobId, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Contribute this node's local input (the spec's 'data' name) to a job it has not joined.

    Example:

        villagectl jobs join 3f9c2a1b7d4e5f60
    """
    client = ApiClient.discover(data_dir, api, token)
    try:
        job = job_request(client, "POST", job_id, "/join")
    except ApiError as exc:
        if exc.status == 422:
            raise CliError(f"cannot join job {job_id}: {exc.message}") from None
        raise
    if as_json:
        print_json(job)
    else:
        print(f"joined job {job_id}")


@jobs_app.command("watch")
@friendly_errors
def jobs_watch(
    job_id: JobId,
    interval: Annotated[float, typer.Option(min=0.0, help="Seconds between polls.")] = 1.0,
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Follow a job live until it ends: a bar over rounds, the current round, attempt, coordinator and
    this node's phase, members joined and participants dropped. Exits 0 if the job completes, 4 if it
    is cancelled or fails. With --json, prints one JSON object per change (one per line).

    Example:

        villagectl jobs watch 3f9c2a1b7d4e5f60 && villagectl jobs result 3f9c2a1b7d4e5f60
    """
    client = ApiClient.discover(data_dir, api, token)
    if as_json:
        progress = _watch_json(client, job_id, interval)
    else:
        progress = _watch_bar(client, job_id, interval)
    done, total = progress.get("rounds_completed"), progress.get("rounds")
    if progress.get("state") != "completed":
        raise JobNotCompleted(f"job {job_id} ended {progress.get('state')} after {done}/{total} rounds; see: villagectl rounds {job_id}")
    if not as_json:
        print(f"job {job_id} completed {done}/{total} rounds; results: villagectl jobs result {job_id}")


def _watch_json(client: ApiClient, job_id: str, interval: float) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    while True:
        progress: dict[str, Any] = job_request(client, "GET", job_id, "/progress")
        if progress != last:
            print(json.dumps(progress, sort_keys=True), flush=True)
            last = progress
        if progress.get("state") in _FINAL_STATES:
            return progress
        time.sleep(interval)


def _watch_bar(client: ApiClient, job_id: str, interval: float) -> dict[str, Any]:
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    last: dict[str, Any] | None = None
    with Progress(*columns, console=console()) as bar:
        task = bar.add_task(f"job {job_id}", total=None)
        while True:
            progress: dict[str, Any] = job_request(client, "GET", job_id, "/progress")
            for line in _news(last, progress):
                bar.console.print(line, highlight=False, markup=False)
            bar.update(task, total=progress.get("rounds"), completed=progress.get("rounds_completed") or 0,
                       description=_describe(progress))
            last = progress
            if progress.get("state") in _FINAL_STATES:
                return progress
            time.sleep(interval)


def _describe(progress: dict[str, Any]) -> str:
    """The live status next to the bar."""
    parts = [str(progress.get("state"))]
    if progress.get("round") is not None:
        parts.append(f"round {progress['round']} attempt {progress.get('attempt')}")
        parts.append(f"coordinator {cell(progress.get('coordinator'))}")
        if progress.get("phase") is not None:
            parts.append(f"phase {progress['phase']} ({progress.get('role')})")
    parts.append(f"{progress.get('members')} joined")
    if (last := progress.get("last_result")) is not None:
        parts.append(f"{last.get('dropped')} dropped in round {last.get('round')}")
    return " · ".join(parts)


def _news(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Lines worth keeping in the scrollback: state changes, finished rounds, new attempts."""
    lines = []
    last = now.get("last_result")
    if last is not None and (before is None or before.get("last_result") != last):
        lines.append(f"round {last.get('round')} done: {last.get('participants')} participants, {last.get('dropped')} dropped")
    if before is None or before.get("state") != now.get("state"):
        lines.append(f"job {now.get('id')} is {now.get('state')}")
    where = (now.get("round"), now.get("attempt"))
    if where[0] is not None and (before is None or (before.get("round"), before.get("attempt")) != where):
        lines.append(f"round {where[0]} attempt {where[1]}: coordinator {cell(now.get('coordinator'))}")
    return lines


@friendly_errors
def rounds(job_id: JobId, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show a job's round history: every attempt, its coordinator, participants, dropped and phase timings (s).

    Example:

        villagectl rounds 3f9c2a1b7d4e5f60
    """
    history = job_request(ApiClient.discover(data_dir, api, token), "GET", job_id, "/rounds") or []
    if as_json:
        print_json(history)
        return
    if not history:
        print(f"no rounds recorded yet for job {job_id} on this node")
        return
    rows = []
    for entry in history:
        timings: dict[str, float] = entry.get("phase_timings") or {}
        started = entry.get("started_at")
        row = {key: value for key, value in entry.items()
               if key not in ("phase_timings", "started_at", "ended_at", "abort_reason")}
        row["started"] = time.strftime("%H:%M:%S", time.gmtime(started)) if isinstance(started, (int, float)) else None
        row["phases_s"] = " ".join(f"{phase}={seconds:.3f}" for phase, seconds in timings.items()) or None
        row["total_s"] = round(sum(timings.values()), 3) if timings else None
        row["abort_reason"] = entry.get("abort_reason")
        rows.append(row)
    columns = ("round", "attempt", "state", "coordinator", "participants", "dropped", "started")
    print_rows(rows, f"job {job_id}: {len(rows)} round attempts (times UTC)", columns)
