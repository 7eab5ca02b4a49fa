"""villagectl: the command line for village admins and node operators.

Parses options, calls the control API (`cli/client.py`) or the admin key file (`cli/admin.py`),
and prints results: rich tables for people, ``--json`` for scripts. Every expected failure is
one ``error: ...`` line on stderr and a non-zero exit code (see `cli/errors.py`); never a
traceback unless ``VILLAGECTL_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.admin import (
    REVOCATIONS_FILENAME, create_admin_key, load_admin_key, parse_expiry, parse_member_id, peer_id_for, revoke_member,
    write_private_file,
)
from cli.client import ApiClient
from cli.errors import CliError
from cli.common import ApiUrl, AsJson, DataDir, Token, friendly_errors, iso, print_json, print_record, print_rows
from cli.data import data_app
from cli.jobs import jobs_app, rounds
from cli.priors import priors
from cli.train import train_app
from protocol.membership import issue_certificate

__all__ = ["app"]

app = typer.Typer(
    name="villagectl",
    help="Control a village node and administer village membership. Finds the daemon from --data-dir, "
    "$VILLAGE_DATA_DIR or ~/.village (or --api and --token).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
village_app = typer.Typer(help="Village administration: the admin key, membership certificates, members.", no_args_is_help=True)
app.add_typer(village_app, name="village")
app.add_typer(jobs_app, name="jobs")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.command("rounds")(rounds)
app.command("priors")(priors)

AdminDir = Annotated[
    Path,
    typer.Option("--admin-dir", "--data-dir", envvar="VILLAGE_ADMIN_DIR", help="Directory holding the admin key (admin.key)."),
]


# --- village administration ----------------------------------------------------------------


@village_app.command("init")
@friendly_errors
def village_init(admin_dir: AdminDir) -> None:
    """Create the village admin key pair (admin.key, mode 0600) and print the village id.

    Example:

        villagectl village init --admin-dir ~/.village-admin
    """
    keys = create_admin_key(admin_dir, os.urandom(32))
    print(f"admin key:        {admin_dir / 'admin.key'} (keep it secret; it admits members)")
    print(f"village id:       {keys.village_id.hex()}")
    print(f"admin public key: {keys.public_key.hex()}")
    print("Give the admin public key to every member's villaged; admit members with: villagectl village admit MEMBER")


@village_app.command("admit")
@friendly_errors
def village_admit(
    member: Annotated[str, typer.Argument(help="Member id (64 hex chars), libp2p peer id (12D3KooW...), or a file "
                                               "holding what `villaged id` printed.")],
    admin_dir: AdminDir,
    expires: Annotated[str, typer.Option(help="Validity: 7d, 12h, 2w, 90m, or an ISO date.")] = "7d",
    out: Annotated[Path | None, typer.Option(help="Certificate file to write (default ./member-<id>.cert).")] = None,
) -> None:
    """Issue a signed, expiring membership certificate for MEMBER and write it to a file. Renewal is the
    same command: the member saves the new file as its membership.cert and runs
    `villagectl village reload-certificate` (or waits a minute: villaged looks at the file).

    Example:

        villagectl village admit 12D3KooWQx... --admin-dir ~/.village-admin --expires 7d --out node1.cert
        villagectl village admit node1.id --admin-dir ~/.village-admin   # node1.id: `villaged id` output
    """
    member_id = parse_member_id(Path(member).read_text() if Path(member).is_file() else member)
    keys = load_admin_key(admin_dir)
    now = time.time()
    expires_at = parse_expiry(expires, now)
    cert = issue_certificate(keys.signing_key, keys.village_id, member_id, int(now), expires_at)
    path = out if out is not None else Path(f"member-{member_id.hex()[:16]}.cert")
    write_private_file(path, cert.encode())
    print(f"certificate: {path}")
    print(f"member:      {member_id.hex()} ({peer_id_for(member_id)})")
    print(f"village id:  {keys.village_id.hex()}")
    print(f"valid until: {iso(expires_at)}")
    print("Give this file to the member; their villaged loads it as its membership certificate.")


@village_app.command("revoke")
@friendly_errors
def village_revoke(
    member: Annotated[str, typer.Argument(help="Member id (64 hex chars) or libp2p peer id (12D3KooW...).")],
    admin_dir: AdminDir,
    reason: Annotated[str, typer.Option(help="Why (kept in the list, shown in every node's log).")] = "",
    out: Annotated[Path | None, typer.Option(help="Also write a copy of the new list here, for publishing.")] = None,
) -> None:
    """Revoke MEMBER: sign the next revocation list (ADMIN_DIR/revocations.bin, serial + 1).

    Give the list to any running member with `villagectl village publish-revocations FILE`; it spreads
    to the village by gossip and job sync, and every node refuses the member from then on.

    Example:

        villagectl village revoke 12D3KooWQx... --admin-dir ~/.village-admin --reason "laptop stolen" --out rev.bin
    """
    member_id = parse_member_id(member)
    keys = load_admin_key(admin_dir)
    listed = revoke_member(admin_dir, keys, member_id, reason, time.time())
    if out is not None:
        write_private_file(out, listed.encode())
    print(f"revocation list: {out or admin_dir / REVOCATIONS_FILENAME} (serial {listed.serial}, "
          f"{len(listed.revoked)} revoked)")
    print(f"revoked:         {member_id.hex()} ({peer_id_for(member_id)})")
    print("Publish it on any running member: villagectl village publish-revocations FILE")


# --- node commands -------------------------------------------------------------------------


@village_app.command("publish-revocations")
@friendly_errors
def village_publish_revocations(
    file: Annotated[Path, typer.Argument(help="A revocation list written by `villagectl village revoke`.")],
    data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Hand a revocation list to this node's daemon, which keeps it and spreads it to the village.

    Example:

        villagectl village publish-revocations ~/.village-admin/revocations.bin --data-dir ~/.village
    """
    try:
        listed = file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}") from None
    answer = ApiClient.discover(data_dir, api, token).post("/v1/revocations", {"revocations": listed.hex()})
    if as_json:
        print_json(answer)
        return
    print(f"revocation list {answer['serial']} adopted; {len(answer['revoked'])} members revoked")


@village_app.command("reload-certificate")
@friendly_errors
def village_reload_certificate(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None) -> None:
    """Make the daemon re-read its certificate file now (after `villagectl village admit` renewed it).

    Example:

        villagectl village reload-certificate --data-dir ~/.village
    """
    answer = ApiClient.discover(data_dir, api, token).post("/v1/certificate/reload")
    state = "renewed" if answer["renewed"] else "unchanged"
    print(f"certificate {state}; valid until {iso(answer['expires_at'])}")


@village_app.command("members")
@friendly_errors
def village_members(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """List the village members this node knows (certificates it has verified) and when they expire.

    Example:

        villagectl village members --data-dir ~/.village
    """
    members = ApiClient.discover(data_dir, api, token).get("/v1/members") or []
    if as_json:
        print_json(members)
        return
    rows = [{"peer_id": _peer_id(m.get("member_id")), **m} for m in members]
    print_rows(rows, f"{len(rows)} members")


def _peer_id(member_id: object) -> str | None:
    try:
        return peer_id_for(bytes.fromhex(str(member_id)))
    except ValueError:
        return None


@app.command()
@friendly_errors
def status(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Show this node's status: ids, addresses, uptime, peers, members and jobs by state.

    Example:

        villagectl status --data-dir ~/.village
    """
    snapshot = ApiClient.discover(data_dir, api, token).get("/v1/status") or {}
    if as_json:
        print_json(snapshot)
        return
    warnings = snapshot.pop("warnings", None) or []
    print_record(snapshot, "villaged status")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


@app.command()
@friendly_errors
def peers(data_dir: DataDir = None, api: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """List the peers this node is connected to.

    Example:

        villagectl peers --json
    """
    rows = ApiClient.discover(data_dir, api, token).get("/v1/peers") or []
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no peers connected")
        return
    print_rows(rows, f"{len(rows)} peers")


if __name__ == "__main__":
    app()
