"""What every villagectl command shares: connection options, the one-line error wrapper, output helpers.

Output rules: tables go through rich, which emits colour only when stdout is a terminal (and
honours NO_COLOR); ``--json`` prints the API's JSON unchanged for scripts. Tables shorten hex
ids to 16 characters and show ``*_at`` Unix times as UTC ISO dates; ``--json`` keeps both whole.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, ParamSpec, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.client import DATA_DIR_ENV, ApiClient
from cli.errors import ApiError, CliError

__all__ = [
    "ApiUrl", "AsJson", "DataDir", "JobId", "Token", "cell", "friendly_errors", "iso", "job_request",
    "console", "print_json", "print_record", "print_rows",
]

P = ParamSpec("P")
R = TypeVar("R")

_HEX_ID: Final = re.compile(r"^[0-9a-f]{32,}$")
#: Lists longer than this are shown as their first items and a count; --json shows them whole.
_PREVIEW_ITEMS: Final = 8
#: Table width when stdout is not a terminal.
_PIPE_WIDTH: Final = 160
#: Columns whose header and cells fit in this many characters are never wrapped.
_SHORT_COLUMN: Final = 16


def _complete_job_id(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for job ids: ask the daemon the command line points at; nothing if it is down."""
    try:
        client = ApiClient.discover(ctx.params.get("data_dir"), ctx.params.get("api"), ctx.params.get("token"))
        jobs = client.get("/v1/jobs") or []
    except CliError:
        return []
    return [job["id"] for job in jobs if str(job.get("id", "")).startswith(incomplete)]


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, help="The daemon's data dir (finds api.json and api.token)."),
]
ApiUrl = Annotated[str | None, typer.Option("--api", envvar="VILLAGE_API", help="API address http://HOST:PORT.")]
Token = Annotated[str | None, typer.Option("--token", envvar="VILLAGE_API_TOKEN", help="API bearer token.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
JobId = Annotated[
    str, typer.Argument(metavar="JOB", help="Job id (see: villagectl jobs list).", autocompletion=_complete_job_id)
]


def job_request(client: ApiClient, method: str, job_id: str, suffix: str = "") -> Any:
    """A request about one job; an unknown job becomes one line that says where to look."""
    try:
        return client.request(method, f"/v1/jobs/{quote(job_id, safe='')}{suffix}")
    except ApiError as exc:
        if exc.code == "not_found":
            raise CliError(f"{exc.message} on this node; list the jobs it knows with: villagectl jobs list") from None
        if exc.status == 409:
            raise CliError(exc.message) from None
        raise


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn every failure into one line on stderr and a non-zero exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            _fail(str(exc), exc.exit_code)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("VILLAGECTL_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (set VILLAGECTL_DEBUG=1 for a traceback)", 1)

    return wrapper


def invalid_fields(exc: ApiError, what: str, flag_of: Callable[[str], str | None] = lambda field: None) -> CliError:
    """A 422 that names a field, said as "invalid WHAT: field 'F' (--flag): reason"."""
    message = exc.message.removeprefix("request body: ")
    if exc.code == "invalid_field":
        field, _, reason = message.partition(": ")
        flag = flag_of(field)
        message = f"field '{field}'{f' ({flag})' if flag else ''}: {reason}"
    return CliError(f"invalid {what}: {message}")


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def console() -> Console:
    """Rich console for stdout: the terminal's width on a TTY; off one (pipes, logs) 160 columns
    rather than rich's 80, unless COLUMNS says otherwise."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=_PIPE_WIDTH)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def cell(value: Any, key: str = "") -> str:
    """One table cell: ``-`` for None, short hex ids, ISO times for ``*_at``, previews of long lists."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_at") and isinstance(value, (int, float)):
        return iso(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value[:16] if _HEX_ID.fullmatch(value) else value
    if isinstance(value, list):
        items = ", ".join(cell(v) for v in value[:_PREVIEW_ITEMS])
        return f"[{items}]" if len(value) <= _PREVIEW_ITEMS else f"[{items}, … ({len(value)} items)]"
    return json.dumps(value, sort_keys=True)


def print_rows(rows: list[dict[str, Any]], title: str, columns: Iterable[str] = ()) -> None:
    """A table with one row per object; columns in the order given, then any others in first-seen order.

    Columns that are empty in every row are left out; short columns never wrap, long ones fold.
    """
    names = list(columns)
    for row in rows:
        names += [key for key in row if key not in names]
    names = [name for name in names if any(row.get(name) is not None for row in rows)]
    cells = [[cell(row.get(name), name) for name in names] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]
    out = console()
    # Keep short columns whole, unless even they do not fit (then rich shares the width out).
    fits = sum(w for w in widths if w <= _SHORT_COLUMN) + 3 * len(names) + 1 < out.width
    table = Table(title=title)
    for name, width in zip(names, widths, strict=True):
        table.add_column(name, no_wrap=fits and width <= _SHORT_COLUMN, overflow="fold")
    for line in cells:
        table.add_row(*(Text(text) for text in line))  # Text: values are data, never rich markup
    out.print(table)


def print_record(record: dict[str, Any], title: str) -> None:
    """A two-column table of one object; nested objects become dotted keys (``spec.quantization.clip``)."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in _flatten(record):
        table.add_row(Text(key), Text(cell(value, key)))
    console().print(table)


def _flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, dict) and value:
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items
