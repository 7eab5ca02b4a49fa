"""``villagectl data``: this node's local inputs, read from JSON, NumPy (.npy) or CSV files.

JSON files go to the daemon as they are (any JSON value; the job kind decides what fits).
``.npy`` and ``.csv`` files hold one numeric vector and are sent as a JSON list of numbers.
A broken file is one line naming the file and the place: line and column for JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import quote

import numpy as np
import typer

from cli.client import ApiClient
from cli.common import ApiUrl, AsJson, DataDir, Token, friendly_errors, print_json, print_record
from cli.errors import ApiError, CliError

__all__ = ["data_app", "load_input_file", "load_json_file"]

data_app = typer.Typer(help="This node's local inputs: the data it contributes to jobs.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(metavar="NAME", help="Input name; a job's spec names the input it takes (field 'data').")]
AllowJob = Annotated[list[str], typer.Option("--allow-job", metavar="ID", help="Only this job may use the input (repeatable; default: any job).")]
AllowCreator = Annotated[list[str], typer.Option(
    "--allow-creator", metavar="MEMBER_ID", help="Only jobs created by this member may use it (repeatable; default: any member).")]
MinParticipants = Annotated[Optional[int], typer.Option(
    "--min-participants", metavar="N", help="Rounds using it need at least N participants (default: the node's floor).")]
RequireDp = Annotated[bool, typer.Option("--require-dp", help="Only jobs with distributed DP noise (a privacy section) may use it.")]
Repeat = Annotated[str, typer.Option(
    "--repeat", metavar="same-survivors|allow",
    help="same-survivors: an unchanged input is summed again only with the same survivors (or in a DP job); allow: always.")]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (only finite numbers are)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def load_json_file(path: Path) -> Any:
    """The JSON value in ``path``; a syntax error names its line and column."""
    text = _read_text(path)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None
    except RecursionError:
        raise CliError(f"{path}: JSON nested too deeply") from None


def _load_npy(path: Path) -> list[float]:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise CliError(f"{path} is not a readable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise CliError(f"{path}: expected an array of numbers, got dtype {getattr(array, 'dtype', type(array).__name__)}")
    if array.ndim != 1:
        raise CliError(f"{path}: expected one vector (1 dimension), got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise CliError(f"{path}: value {int(bad[0])} is {array[bad[0]]}, not a finite number")
    return [float(v) for v in array.tolist()]


def _load_csv(path: Path) -> list[float]:
    rows = [row for row in csv.reader(io.StringIO(_read_text(path)))]
    filled = [(line, row) for line, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not filled:
        raise CliError(f"{path}: no numbers in the file")
    if len(filled) > 1 and any(len(row) > 1 for _, row in filled):
        raise CliError(f"{path}: expected one vector (one row, or one value per line), got a table")
    values = []
    for line, row in filled:
        for column, text in enumerate(row, start=1):
            try:
                value = float(text)
            except ValueError:
                raise CliError(f"{path}: line {line} column {column}: {text.strip()!r} is not a number") from None
            if not math.isfinite(value):
                raise CliError(f"{path}: line {line} column {column}: {text.strip()!r} is not a finite number")
            values.append(value)
    return values


def load_input_file(path: Path) -> Any:
    """A local input from a .json, .npy or .csv file (the suffix decides)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return load_json_file(path)
    if suffix == ".npy":
        return _load_npy(path)
    if suffix == ".csv":
        return _load_csv(path)
    raise CliError(f"{path}: expected a .json, .npy or .csv file")


@data_app.command("put")
@friendly_errors
def data_put(
    name: Name,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .json file (any JSON), or a numeric vector as .npy or .csv.")],
    allow_job: AllowJob = [],  # noqa: B006 (typer reads the default, never mutates it)
    allow_creator: AllowCreator = [],  # noqa: B006
    min_participants: MinParticipants = None,
    require_dp: RequireDp = False,
    repeat: Repeat = "same-survivors",
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Store FILE as this node's local input NAME (replacing an earlier one), with what it may be used
    for: without options, any job whose rounds have at least the node's floor of participants.

    Example:

        villagectl data put stats latencies.csv --allow-creator 3f2a...e9 --min-participants 10
    """
    payload = load_input_file(file)
    policy = _policy(allow_job, allow_creator, min_participants, require_dp, repeat)
    client = ApiClient.discover(data_dir, api, token)
    _put_policy(client, name, policy)  # first: the input never exists under a policy not meant for it
    try:
        reply = client.put(f"/v1/data/{quote(name, safe='')}", payload)
    except ApiError as exc:
        if exc.status == 422:
            raise CliError(f"villaged refused {file} as input {name!r}: {exc.message.removeprefix('request body: ')}") from None
        raise
    if as_json:
        print_json(reply)
        return
    print(f"stored local input {name!r}: {reply['summary']}")


@data_app.command("policy")
@friendly_errors
def data_policy(
    name: Name,
    allow_job: AllowJob = [],  # noqa: B006
    allow_creator: AllowCreator = [],  # noqa: B006
    min_participants: MinParticipants = None,
    require_dp: RequireDp = False,
    repeat: Repeat = "same-survivors",
    data_dir: DataDir = None,
    api: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set what local input NAME may be used for, without putting it again (options as in `data put`;
    the ones left out go back to their defaults).

    Example:

        villagectl data policy stats --require-dp --min-participants 20
    """
    client = ApiClient.discover(data_dir, api, token)
    reply = _put_policy(client, name, _policy(allow_job, allow_creator, min_participants, require_dp, repeat))
    if as_json:
        print_json(reply)
        return
    print_record(reply["policy"], f"policy of local input {name}")


def _policy(jobs: list[str], creators: list[str], min_participants: int | None, require_dp: bool, repeat: str) -> dict[str, Any]:
    return {"jobs": jobs, "creators": creators, "min_participants": min_participants, "require_dp": require_dp,
            "repeat": repeat}


def _put_policy(client: ApiClient, name: str, policy: dict[str, Any]) -> Any:
    """Set the policy; a refused field is named as the daemon names it (policy.creators[0]: ...)."""
    try:
        return client.put(f"/v1/data/{quote(name, safe='')}/policy", policy)
    except ApiError as exc:
        if exc.status == 422:
            raise CliError(f"villaged refused the policy of {name!r}: {exc.message.removeprefix('request body: ')}") from None
        raise


@data_app.command("show")
@friendly_errors
def data_show(name: Name, data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show this node's local input NAME.

    Example:

        villagectl data show stats --json
    """
    client = ApiClient.discover(data_dir, api, token)
    try:
        item = client.get(f"/v1/data/{quote(name, safe='')}")
    except ApiError as exc:
        if exc.code == "not_found":
            raise CliError(f"{exc.message} on this node; store one with: villagectl data put {name} FILE") from None
        raise
    if as_json:
        print_json(item)
        return
    print_record(item, f"local input {name}")
