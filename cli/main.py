"""villagectl: the command line for village admins and node operators.

Parses options, calls the control API (`cli/client.py`) or the admin key file (`cli/admin.py`),
and prints results: rich tables for people, ``--json`` for scripts. Every expected failure is
one ``error: ...`` line on stderr and a non-zero exit code (see `cli/errors.py`); never a
traceback unless ``VILLAGECTL_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cli.admin import create_admin_key, load_admin_key, parse_expiry, parse_member_id, peer_id_for, write_private_file
from cli.client import DATA_DIR_ENV, ApiClient
from cli.errors import CliError
from protocol.membership import issue_certificate

__all__ = ["app"]

app = typer.Typer(
    name="villagectl",
    help="Control a village node and administer village membership.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
village_app = typer.Typer(help="Village administration: the admin key and membership certificates.", no_args_is_help=True)
app.add_typer(village_app, name="village")

P = ParamSpec("P")
R = TypeVar("R")

AdminDir = Annotated[
    Path,
    typer.Option("--admin-dir", "--data-dir", envvar="VILLAGE_ADMIN_DIR", help="Directory holding the admin key (admin.key)."),
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, help="The daemon's data dir (finds api.json and api.token)."),
]
ApiUrl = Annotated[str | None, typer.Option("--api", envvar="VILLAGE_API", help="API address http://HOST:PORT.")]
Token = Annotated[str | None, typer.Option("--token", envvar="VILLAGE_API_TOKEN", help="API bearer token.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


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


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


# --- village administration ----------------------------------------------------------------


@village_app.command("init")
@friendly_errors
def village_init(admin_dir: AdminDir) -> None:
    """Create the village admin key pair (admin.key, mode 0600) and print the village id."""
    keys = create_admin_key(admin_dir, os.urandom(32))
    print(f"admin key:        {admin_dir / 'admin.key'} (keep it secret; it admits members)")
    print(f"village id:       {keys.village_id.hex()}")
    print(f"admin public key: {keys.public_key.hex()}")
    print("Give the admin public key to every member's villaged; admit members with: villagectl village admit MEMBER")


@village_app.command("admit")
@friendly_errors
def village_admit(
    member: Annotated[str, typer.Argument(help="Member id (64 hex chars) or libp2p peer id (12D3KooW...).")],
    admin_dir: AdminDir,
    expires: Annotated[str, typer.Option(help="Validity: 30d, 12h, 2w, 90m, or an ISO date.")] = "30d",
    out: Annotated[Path | None, typer.Option(help="Certificate file to write (default ./member-<id>.cert).")] = None,
) -> None:
    """Issue a signed, expiring membership certificate for MEMBER and write it to a file."""
    member_id = parse_member_id(member)
    keys = load_admin_key(admin_dir)
    now = time.time()
    expires_at = parse_expiry(expires, now)
    cert = issue_certificate(keys.signing_key, keys.village_id, member_id, int(now), expires_at)
    path = out if out is not None else Path(f"member-{member_id.hex()[:16]}.cert")
    write_private_file(path, cert.encode())
    print(f"certificate: {path}")
    print(f"member:      {member_id.hex()} ({peer_id_for(member_id)})")
    print(f"village id:  {keys.village_id.hex()}")
    print(f"valid until: {_iso(expires_at)}")
    print("Give this file to the member; their villaged loads it as its membership certificate.")


# --- node commands -------------------------------------------------------------------------


@app.command()
@friendly_errors
def status(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show this node's status."""
    snapshot = ApiClient.discover(data_dir, api, token).get("/v1/status")
    if as_json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return
    table = Table(title="villaged status", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in (snapshot or {}).items():
        table.add_row(str(key), _cell(value))
    Console().print(table)


@app.command()
@friendly_errors
def peers(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """List the peers this node is connected to."""
    rows = ApiClient.discover(data_dir, api, token).get("/v1/peers") or []
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        print("no peers connected")
        return
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    table = Table(title=f"{len(rows)} peers")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


if __name__ == "__main__":
    app()
