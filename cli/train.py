"""``villagectl train``: federated training jobs (issue 19) over the control API's /v1/training routes.

``create`` builds the seed's create_job body (architecture doc, section 5.2) from ``--body FILE``
and flags (flags win) and prints the job id; ``join`` declares this node's capabilities and
prints the requirement it misses on a 403; ``list``, ``show`` and ``watch`` print the jobs and
their accuracy and loss per round; ``model`` writes a round's weights as safetensors once their
SHA-256 matches the digest the daemon names. The daemon validates every field and names the bad
one; this module only maps that name back to the flag that sets it.

A job of R training rounds has R + 1 points on its curve: point r evaluates model version r (the
model round r started from), and the last one evaluates the final model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cli.client import ApiClient
from cli.common import (
    ApiUrl, AsJson, DataDir, Token, cell, console, friendly_errors, invalid_fields, print_json, print_record, print_rows,
)
from cli.data import load_json_file
from cli.errors import ApiError, CliError, JobNotCompleted

__all__ = ["build_body", "sparkline", "train_app"]

train_app = typer.Typer(
    help="Federated training jobs: create, join, list, show, watch them, and export a round's model.", no_args_is_help=True
)

_FINAL_STATES: Final = ("completed", "cancelled", "failed")
#: The sparkline's ramp, low to high; `_ASCII_RAMP` where stdout cannot encode the blocks.
_RAMP: Final = "▁▂▃▄▅▆▇█"
_ASCII_RAMP: Final = "_.-=+*#@"
#: Longer curves are averaged into this many characters.
_SPARK_WIDTH: Final = 60

#: Which flag sets each body field, to name it when the daemon refuses the field.
_FLAGS: Final = {
    "job_name": "--name", "model_config.architecture": "--architecture", "model_config.features": "--features",
    "model_config.classes": "--classes", "model_config.hidden": "--hidden", "model_config.initial_weights": "--weights",
    "model_config.trainer": "--trainer", "model_config.seed": "--seed", "training_config.rounds": "--rounds",
    "training_config.min_participants": "--min-participants", "training_config.max_participants": "--max-participants",
    "training_config.local_epochs": "--local-epochs", "training_config.learning_rate": "--learning-rate",
    "training_config.batch_size": "--batch-size", "training_config.server_optimizer.name": "--optimizer",
    "training_config.server_optimizer.learning_rate": "--server-lr", "training_config.data": "--data",
    "training_config.update_clip": "--update-clip", "training_config.round_interval": "--round-interval",
    "training_config.start_delay": "--start-delay", "training_config.phase_timeout": "--phase-timeout",
    "privacy_config.differential_privacy": "--dp", "privacy_config.epsilon": "--epsilon", "privacy_config.delta": "--delta",
    "privacy_config.l2_clip": "--l2-clip", "privacy_config.secure_aggregation": "--no-secure-aggregation",
    "participant_requirements.min_battery_percent": "--min-battery",
    "participant_requirements.allowed_node_types": "--node-type",
    "participant_requirements.min_compute_gflops": "--min-gflops",
    "participant_requirements.min_memory_gb": "--min-memory-gb",
}  # fmt: skip


def _complete_training_job(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for training job ids: ask the daemon the command line points at; nothing if it is down."""
    try:
        client = ApiClient.discover(ctx.params.get("data_dir"), ctx.params.get("api"), ctx.params.get("token"))
        jobs = client.get("/v1/training/jobs") or []
    except CliError:
        return []
    return [str(job["job_id"]) for job in jobs if str(job.get("job_id", "")).startswith(incomplete)]


TrainingJob = Annotated[str, typer.Argument(
    metavar="JOB", help="Training job id (see: villagectl train list).", autocompletion=_complete_training_job)]


# --- requests ------------------------------------------------------------------------------


def _training(client: ApiClient, method: str, route: str, job_id: str, body: Any = None) -> Any:
    """A request about one training job; an unknown job is one line that says where to look."""
    try:
        return client.request(method, f"/v1/training/{route}/{quote(job_id, safe='')}", body)
    except ApiError as exc:
        raise _job_error(exc) from None


def _job_error(exc: ApiError) -> CliError:
    if exc.status == 404:
        return CliError(f"{exc.message} on this node; list the training jobs it knows with: villagectl train list")
    if exc.status == 409:
        return CliError(exc.message)
    return exc


# --- create --------------------------------------------------------------------------------


def _read_weights(path: Path) -> bytes:
    """The bytes of a safetensors file, after a look at its framing (8-byte header length, JSON header)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    size = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    if not 2 <= size <= len(blob) - 8:
        raise CliError(f"{path} is not a safetensors file (its first 8 bytes must give the header's length)")
    try:
        header = json.loads(blob[8:8 + size])
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise CliError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return blob


def _put(body: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``body[a][b]...`` for ``a.b...``, making the sections a flag needs; None leaves the body alone."""
    if value is None:
        return
    *sections, leaf = dotted.split(".")
    target = body
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise CliError(f"the body's {section!r} must be a JSON object to take {_FLAGS.get(dotted, dotted)}")
    target[leaf] = value


def build_body(body_file: Path | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The create_job body: ``--body FILE`` (or an empty object), the required model_config and
    training_config sections (empty: the daemon's defaults), then each flag's field (dotted name ->
    value; None: not given) over it. ``--epsilon``, ``--delta`` and ``--l2-clip`` need differential
    privacy on, by ``--dp`` or the file."""
    body = load_json_file(body_file) if body_file is not None else {}
    if not isinstance(body, dict):
        raise CliError(f"{body_file}: a create_job body must be a JSON object")
    for section in ("model_config", "training_config"):  # required sections: the daemon's defaults fill them
        body.setdefault(section, {})
    for dotted, value in fields.items():
        _put(body, dotted, value)
    privacy = body.get("privacy_config")
    dp_on = isinstance(privacy, dict) and privacy.get("differential_privacy") is True
    for key in ("epsilon", "delta", "l2_clip"):
        if fields.get(f"privacy_config.{key}") is not None and not dp_on:
            raise CliError(f"{_FLAGS[f'privacy_config.{key}']} sets differential privacy's budget: add --dp")
    return body


def _refused_body(exc: ApiError, weights: int) -> CliError:
    """A 422 names the body's field: say it with the flag that sets it. A 413 is the weights' size."""
    if exc.status == 413:
        hint = (f"; the initial weights are {weights} bytes ({(weights + 2) // 3 * 4} in base64): leave out --weights to "
                "start from the architecture's seeded initial weights") if weights else ""
        return CliError(f"the create_job body is too large for the control API ({exc.message}){hint}")
    if exc.status != 422:
        return exc
    # allowed_node_types[1] is --node-type's
    return invalid_fields(exc, "training job", lambda field: _FLAGS.get(re.sub(r"\[\d+\]$", "", field)))


@train_app.command("create")
@friendly_errors
def train_create(
    body_file: Annotated[Path | None, typer.Option("--body", help="A create_job body as JSON (the seed's); flags override its fields.")] = None,
    name: Annotated[str | None, typer.Option(help="job_name: a label for people.")] = None,
    architecture: Annotated[Literal["logistic", "mlp"] | None, typer.Option(help="The model.")] = None,
    features: Annotated[int | None, typer.Option(help="Input features per example.")] = None,
    classes: Annotated[int | None, typer.Option(help="Number of classes.")] = None,
    hidden: Annotated[list[int] | None, typer.Option(metavar="UNITS", help="An MLP hidden layer's width (repeat: --hidden 32 --hidden 16).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Initial weights: a .safetensors file (sent base64; default: the seeded init).")] = None,
    trainer: Annotated[str | None, typer.Option(help="A trainer installed on the members (village.trainers entry point).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the default initial weights and the local shuffling.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Training rounds (a last round evaluates the final model).")] = None,
    min_participants: Annotated[int | None, typer.Option(help="Fewest participants a round may finish with.")] = None,
    max_participants: Annotated[int | None, typer.Option(help="Most participants selected per round.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Passes over the local data per round.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="The participants' local learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local mini-batch size.")] = None,
    optimizer: Annotated[Literal["fedavg", "fedavgm", "fedadam"] | None, typer.Option(
        help="The server optimizer every node applies.")] = None,
    server_lr: Annotated[float | None, typer.Option(help="The server optimizer's learning rate.")] = None,
    data: Annotated[str | None, typer.Option(help="Name of the local input each member trains on (default training).")] = None,
    update_clip: Annotated[float | None, typer.Option(help="Largest absolute update value the quantizer takes.")] = None,
    round_interval: Annotated[float | None, typer.Option(help="Seconds between round starts.")] = None,
    start_delay: Annotated[float | None, typer.Option(help="Seconds for members to join before round 0.")] = None,
    phase_timeout: Annotated[float | None, typer.Option(help="Seconds each protocol phase waits.")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Distributed differential privacy on the updates.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="The whole job's epsilon (with --dp).")] = None,
    delta: Annotated[float | None, typer.Option(help="Delta (with --dp).")] = None,
    l2_clip: Annotated[float | None, typer.Option(help="L2 bound each update is clipped to (with --dp).")] = None,
    secure_aggregation: Annotated[bool | None, typer.Option(
        "--secure-aggregation/--no-secure-aggregation", help="--no-secure-aggregation: a plain sum the coordinator sees.")] = None,
    min_battery: Annotated[int | None, typer.Option(min=0, max=100, help="Battery percent a member needs (or be charging).")] = None,
    node_types: Annotated[list[str] | None, typer.Option("--node-type", metavar="TYPE",
                                                         help="A device type allowed to join (repeatable; default: any).")] = None,
    min_gflops: Annotated[float | None, typer.Option(help="Measured GFLOPS a member needs.")] = None,
    min_memory_gb: Annotated[float | None, typer.Option(help="Memory (GB) a member needs.")] = None,
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a federated training job and print its id.

    The daemon checks the body and names any bad field; villagectl adds the flag that sets it.

    Examples:

        villagectl train create --name digits --architecture logistic --features 64 --classes 10 --rounds 30

        villagectl train create --body job.json --rounds 5 --dp --epsilon 1 --delta 1e-5
    """
    blob = _read_weights(weights) if weights is not None else None
    fields = {
        "job_name": name, "model_config.architecture": architecture, "model_config.features": features,
        "model_config.classes": classes, "model_config.hidden": hidden or None,
        "model_config.initial_weights": None if blob is None else base64.b64encode(blob).decode("ascii"),
        "model_config.trainer": trainer, "model_config.seed": seed, "training_config.rounds": rounds,
        "training_config.min_participants": min_participants, "training_config.max_participants": max_participants,
        "training_config.local_epochs": local_epochs, "training_config.learning_rate": learning_rate,
        "training_config.batch_size": batch_size, "training_config.server_optimizer.name": optimizer,
        "training_config.server_optimizer.learning_rate": server_lr, "training_config.data": data,
        "training_config.update_clip": update_clip, "training_config.round_interval": round_interval,
        "training_config.start_delay": start_delay, "training_config.phase_timeout": phase_timeout,
        "privacy_config.differential_privacy": dp, "privacy_config.epsilon": epsilon, "privacy_config.delta": delta,
        "privacy_config.l2_clip": l2_clip, "privacy_config.secure_aggregation": secure_aggregation,
        "participant_requirements.min_battery_percent": min_battery,
        "participant_requirements.allowed_node_types": node_types or None,
        "participant_requirements.min_compute_gflops": min_gflops, "participant_requirements.min_memory_gb": min_memory_gb,
    }  # fmt: skip
    body = build_body(body_file, fields)
    client = ApiClient.discover(data_dir, api, token)
    try:
        job = client.post("/v1/training/create_job", body)
    except ApiError as exc:
        raise _refused_body(exc, len(blob or b"")) from None
    if as_json:
        print_json(job)
    else:
        print(job["job_id"])


# --- join ----------------------------------------------------------------------------------


@train_app.command("join")
@friendly_errors
def train_join(
    job_id: TrainingJob,
    device_type: Annotated[str | None, typer.Option(help="server, desktop, laptop, mobile or edge (default: the daemon's config).")] = None,
    battery: Annotated[int | None, typer.Option(min=0, max=100, help="Battery percent now.")] = None,
    charging: Annotated[bool | None, typer.Option("--charging/--not-charging", help="Whether the device is charging.")] = None,
    network_type: Annotated[str | None, typer.Option(help="e.g. ethernet, wifi, cellular.")] = None,
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Join a training job with this node's capabilities; a refusal names the requirement not met.

    The daemon measures cores, memory and GFLOPS; device type, battery and charging are this node's
    word (these flags, else its config).

    Example:

        villagectl train join 3f9c2a1b7d4e5f60 --device-type laptop --battery 80 --charging
    """
    declared = {"device_type": device_type, "battery_percent": battery, "charging": charging, "network_type": network_type}
    body = {"capabilities": {key: value for key, value in declared.items() if value is not None}}
    client = ApiClient.discover(data_dir, api, token)
    try:
        answer = client.post(f"/v1/training/join/{quote(job_id, safe='')}", body)
    except ApiError as exc:
        if exc.status == 403:
            raise CliError(f"cannot join training job {job_id}: {exc.message}") from None
        if exc.status == 422:
            raise CliError(f"cannot join training job {job_id}: {exc.message.removeprefix('request body: ')}") from None
        raise _job_error(exc) from None
    if as_json:
        print_json(answer)
        return
    caps = answer.get("capabilities") or {}
    said = ", ".join(f"{key} {cell(caps[key])}" for key in ("device_type", "battery_percent", "charging", "compute_gflops",
                                                             "memory_gb") if caps.get(key) is not None)  # fmt: skip
    print(f"joined training job {job_id} ({answer.get('state')}){f'; capabilities: {said}' if said else ''}")


# --- list, show ----------------------------------------------------------------------------


def _percent(value: Any) -> str | None:
    return None if not isinstance(value, (int, float)) else f"{value:.2%}"


def _number(value: Any, digits: int = 4) -> str | None:
    return None if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _progress_text(job: dict[str, Any]) -> str:
    """Training rounds done of the job's rounds (the final evaluation is not a training round)."""
    total = job.get("rounds")
    done = job.get("rounds_done") or 0
    if isinstance(total, int):
        return f"{min(done, total)}/{total}{' (final model evaluated)' if done > total else ''}"
    return f"{done}/?"


@train_app.command("list")
@friendly_errors
def train_list(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """List the training jobs this node knows: state, rounds done, model version and digest, latest accuracy and loss.

    Example:

        villagectl train list
    """
    jobs = ApiClient.discover(data_dir, api, token).get("/v1/training/jobs") or []
    if as_json:
        print_json(jobs)
        return
    if not jobs:
        print("no training jobs; create one with: villagectl train create --name NAME --features N --classes K")
        return
    rows = [{
        "job_id": job.get("job_id"), "name": job.get("name") or None, "state": job.get("state"), "rounds": _progress_text(job),
        "model": job.get("model_version"), "model_digest": job.get("model_digest"), "participants": job.get("participants"),
        "accuracy": _percent(job.get("accuracy")), "loss": _number(job.get("loss")), "joined": job.get("joined"),
        "end_reason": job.get("end_reason"),
    } for job in jobs]  # fmt: skip
    print_rows(rows, f"{len(rows)} training jobs")


def sparkline(values: list[float | None], width: int = _SPARK_WIDTH, ramp: str = _RAMP) -> str:
    """One character per value (means of consecutive values past `width`), scaled from the lowest
    value to the highest; a space where there is no value."""
    if len(values) > width:
        chunks = [values[len(values) * i // width:len(values) * (i + 1) // width] for i in range(width)]
        values = [_mean([v for v in chunk if v is not None]) for chunk in chunks]
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    steps = len(ramp) - 1
    return "".join(" " if v is None else ramp[round((v - low) / (high - low) * steps) if high > low else steps]
                   for v in values)  # fmt: skip


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ramp() -> str:
    try:
        _RAMP.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return _ASCII_RAMP
    return _RAMP


def _print_curve(job_id: str, curve: list[dict[str, Any]]) -> None:
    """The per-round table, the accuracy sparkline, and a warning per round whose model digest disagrees."""
    if not curve:
        print(f"no rounds finished yet; follow the job with: villagectl train watch {job_id}")
        return
    table = Table(title=f"training job {job_id}: accuracy and loss per round (held-out data of the participants)")
    for name in ("round", "model", "accuracy", "loss", "evaluated", "examples", "participants", "dropped", "update_norm"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("next_model_digest", no_wrap=True)
    for point in curve:
        final = point.get("final_evaluation") is True
        table.add_row(*(Text(text or "-") for text in (
            f"{point.get('round')}{' final' if final else ''}", cell(point.get("model_version")),
            _percent(point.get("accuracy")), _number(point.get("loss")), _number(point.get("evaluated"), 0),
            _number(point.get("examples"), 0), cell(point.get("participants")), cell(point.get("dropped")),
            _number(point.get("update_norm")),
            "-" if final else cell(point.get("next_model_digest")) + ("" if point.get("agrees", True) else " DIFFERS"),
        )))  # fmt: skip
    console().print(table)
    accuracy = [p.get("accuracy") if isinstance(p.get("accuracy"), (int, float)) else None for p in curve]
    known = [(p.get("round"), a) for p, a in zip(curve, accuracy, strict=True) if a is not None]
    if known:
        best_round, best = max(known, key=lambda item: item[1])
        print(f"accuracy {sparkline(accuracy, ramp=_ramp())}  {known[0][1]:.2%} -> {known[-1][1]:.2%} "
              f"(best {best:.2%} at round {best_round})")  # fmt: skip
    for point in curve:
        if point.get("agrees") is False:
            print(f"warning: round {point.get('round')}: this node's next model differs from the digest the coordinator "
                  f"announced ({cell(point.get('next_model_digest'))}); its model no longer matches the village's",
                  file=sys.stderr)  # fmt: skip


#: What `train show` prints of a job's DP accounting, in reading order (the rest is in --json).
_PRIVACY_FIELDS: Final = (
    "guarantee", "neighbouring", "epsilon_per_round", "delta", "budget_epsilon", "releases", "epsilon_spent",
    "epsilon_remaining", "rounds_affordable",
)


def _summary(status: dict[str, Any]) -> dict[str, Any]:
    record = {key: value for key, value in status.items() if key not in ("curve", "privacy")}
    record["rounds_done"] = _progress_text(status)
    if record.get("trainer") == "":
        record["trainer"] = "built-in"
    if "accuracy" in record:
        record["accuracy"] = _percent(record["accuracy"])
    if "loss" in record:
        record["loss"] = _number(record["loss"])
    return record


def _print_status(job_id: str, status: dict[str, Any]) -> None:
    print_record(_summary(status), f"training job {job_id}")
    privacy = status.get("privacy")
    if isinstance(privacy, dict) and privacy:
        shown = {key: privacy[key] for key in _PRIVACY_FIELDS if key in privacy} or privacy
        print_record(shown, "differential privacy")
    if status.get("secure_aggregation") is False:
        print("note: secure aggregation is off for this job: the coordinator sees each participant's update", file=sys.stderr)
    _print_curve(job_id, status.get("curve") or [])


@train_app.command("show")
@friendly_errors
def train_show(job_id: TrainingJob, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None,
               as_json: AsJson = False) -> None:  # fmt: skip
    """Show a training job and its accuracy and loss per round (a table and a sparkline).

    The summary covers the model, the optimizers, privacy and the participant requirements.
    --json prints the daemon's status, curve included.

    Example:

        villagectl train show 3f9c2a1b7d4e5f60
    """
    status = _training(ApiClient.discover(data_dir, api, token), "GET", "status", job_id)
    if as_json:
        print_json(status)
        return
    _print_status(job_id, status)


# --- watch ---------------------------------------------------------------------------------


def _point_line(point: dict[str, Any]) -> str:
    what = "final model" if point.get("final_evaluation") else f"round {point.get('round')}"
    return (f"{what}: accuracy {_percent(point.get('accuracy')) or '-'}, loss {_number(point.get('loss')) or '-'}, "
            f"{point.get('participants')} participants, {point.get('dropped')} dropped")  # fmt: skip


def _news(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Lines worth keeping in the scrollback: state changes and each new point of the curve."""
    seen = len(before.get("curve") or []) if before else 0
    lines = [_point_line(point) for point in (now.get("curve") or [])[seen:]]
    if before is None or before.get("state") != now.get("state"):
        lines.append(f"training job {now.get('job_id')} is {now.get('state')}")
    return lines


def _watch(client: ApiClient, job_id: str, interval: float, as_json: bool) -> dict[str, Any]:
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    last: dict[str, Any] | None = None
    with Progress(*columns, console=console(), disable=as_json) as bar:
        task = bar.add_task(f"training job {job_id}", total=None)
        while True:
            status: dict[str, Any] = _training(client, "GET", "status", job_id)
            if as_json:
                if status != last:
                    seen = len(last.get("curve") or []) if last else 0
                    print(json.dumps({**status, "curve": (status.get("curve") or [])[seen:]}, sort_keys=True), flush=True)
            else:
                for line in _news(last, status):
                    bar.console.print(line, highlight=False, markup=False)
                rounds = status.get("rounds")
                bar.update(task, total=rounds, completed=min(status.get("rounds_done") or 0, rounds or 0),
                           description=f"training job {job_id}: {status.get('state')}")
            last = status
            if status.get("state") in _FINAL_STATES:
                return status
            time.sleep(interval)


@train_app.command("watch")
@friendly_errors
def train_watch(
    job_id: TrainingJob,
    interval: Annotated[float, typer.Option(min=0.0, help="Seconds between polls.")] = 1.0,
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Follow a training job until it ends, then print its curve; exits 0 if it completes, 4 if not.

    Shows a bar over its rounds and one line per finished round with its accuracy and loss. With
    --json, prints the status once per change, one object per line, whose "curve" holds only the
    points new since the line before (all lines' curves together are the whole curve).

    Example:

        villagectl train watch 3f9c2a1b7d4e5f60 && villagectl train model 3f9c2a1b7d4e5f60 --out final.safetensors
    """
    client = ApiClient.discover(data_dir, api, token)
    status = _watch(client, job_id, interval, as_json)
    if not as_json:
        _print_curve(job_id, status.get("curve") or [])
    if status.get("state") != "completed":
        reason = f" ({status['end_reason']})" if status.get("end_reason") else ""
        raise JobNotCompleted(f"training job {job_id} ended {status.get('state')}{reason} after "
                              f"{_progress_text(status)} rounds; see: villagectl train show {job_id}")  # fmt: skip


# --- model ---------------------------------------------------------------------------------


@train_app.command("model")
@friendly_errors
def train_model(
    job_id: TrainingJob,
    version: Annotated[int | None, typer.Option(min=0, help="Model version r: the model round r started from "
                                                            "(default: the newest this node holds).")] = None,
    out: Annotated[Path | None, typer.Option(help="File to write (default ./JOB-vN.safetensors).")] = None,
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Write a training job's model (a round's weights) to a safetensors file, checking its SHA-256.

    The SHA-256 of the bytes must equal the digest the daemon names (x-model-digest), or nothing is
    written. Prints the version, size and digest.

    Example:

        villagectl train model 3f9c2a1b7d4e5f60 --version 30 --out digits.safetensors
    """
    client = ApiClient.discover(data_dir, api, token)
    path = f"/v1/training/model/{quote(job_id, safe='')}" + ("" if version is None else f"/{version}")
    try:
        blob, headers = client.get_bytes(path)
    except ApiError as exc:
        raise _job_error(exc) from None
    named, got = headers.get("x-model-digest", "").strip().lower(), hashlib.sha256(blob).hexdigest()
    if not named:
        raise CliError(f"villaged sent model bytes of job {job_id} without an x-model-digest header; nothing written")
    if named != got:
        raise CliError(f"model of job {job_id}: the bytes hash to {got}, the daemon named {named}; nothing written")
    number = headers.get("x-model-version", "")
    if version is not None and number != str(version):
        raise CliError(f"asked for model version {version} of job {job_id}, villaged sent version {number or '?'}")
    target = out if out is not None else Path(f"{job_id}-v{number or 'latest'}.safetensors")
    staging = target.with_name(f".{target.name}.partial")
    try:
        staging.write_bytes(blob)
        os.replace(staging, target)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        raise CliError(f"cannot write {target}: {exc.strerror}") from None
    if as_json:
        print_json({"job_id": job_id, "version": int(number) if number.isdigit() else None, "digest": got,
                    "bytes": len(blob), "path": str(target)})  # fmt: skip
        return
    print(f"model version {number or '?'} of training job {job_id}: {len(blob)} bytes, sha256 {got} -> {target}")
