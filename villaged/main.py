"""`villaged`: the village daemon's command line."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio
import typer

from villaged.config import load_config
from villaged.errors import VillagedError
from villaged.logs import configure_logging
from villaged.transport import load_or_create_identity, member_id, peer_id_from_member_id

app = typer.Typer(help="The village daemon: secure aggregation rounds with peers over libp2p.", no_args_is_help=True)


@app.command()
def start(
    data_dir: Path = typer.Option(None, "--data-dir", help="where identity, certificate, database and API token live"),
    listen: list[str] = typer.Option([], "--listen", help="multiaddr to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4001"),
    bootstrap: list[str] = typer.Option([], "--bootstrap", help="full /ip4/.../tcp/.../p2p/ID address of a peer (repeatable)"),
    config: Path = typer.Option(None, "--config", help="TOML file with the same settings; flags win"),
    api_port: int = typer.Option(None, "--api-port", help="control API port on 127.0.0.1 (default: any free port)"),
    certificate: Path = typer.Option(None, "--certificate", help="membership certificate (default: DATA_DIR/membership.cert)"),
    join_policy: str = typer.Option(None, "--join-policy", help="auto: join every job whose local input exists; manual"),
    participant_floor: int = typer.Option(None, "--participant-floor",
                                          help="fewest participants a round with this node's input may have (default 5)"),
    log_level: str = typer.Option(None, "--log-level", help="debug, info, warning or error"),
    admin_public_key: str = typer.Option(None, "--admin-public-key", help="pin the village's admin key (hex)"),
) -> None:
    """Run a node until SIGINT or SIGTERM.

    Example: villaged start --data-dir ~/.village --bootstrap /ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...
    """
    try:
        settings = load_config(config, {
            "data_dir": str(data_dir) if data_dir else None, "listen": listen, "bootstrap": bootstrap,
            "api_port": api_port, "certificate": str(certificate) if certificate else None,
            "join_policy": join_policy, "log_level": log_level, "admin_public_key": admin_public_key,
            "participant_floor": participant_floor,
        })
        configure_logging(settings.log_level)
        from villaged.daemon import Daemon, failpoint_file_from_environment  # imports libp2p: only once the flags are known good

        daemon = Daemon(settings, failpoint_file_from_environment())
        trio.run(_serve_until_signal, daemon)
    except VillagedError as exc:
        typer.echo(f"villaged: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


async def _serve_until_signal(daemon: object) -> None:
    from villaged.daemon import Daemon, Started

    assert isinstance(daemon, Daemon)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            started: Started = await nursery.start(daemon.run)
            for address in started.addresses:
                print(f"listening {address}", flush=True)
            print(f"api {started.api_url}", flush=True)
            async for signum in signals:
                print(f"villaged: {signal.Signals(signum).name}, shutting down", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                break


@app.command("id")
def show_id(
    data_dir: Path = typer.Option(..., "--data-dir", help="the node's data directory (created if missing)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the member id (64 hex digits)"),
    as_json: bool = typer.Option(False, "--json", help='print {"member_id": ..., "peer_id": ...}'),
) -> None:
    """Print this node's member id (creating its identity on first use): give it to the admin to be admitted.
    `villagectl village admit` takes the member id, the peer id, or this output (or a file holding it) as it is.

    Example: villaged id --data-dir ~/.village > node1.id
    """
    try:
        keypair = load_or_create_identity(data_dir)
    except VillagedError as exc:
        typer.echo(f"villaged: {exc}", err=True)
        raise typer.Exit(2) from None
    me = member_id(keypair)
    if quiet:
        typer.echo(me.hex())
    elif as_json:
        typer.echo(json.dumps({"member_id": me.hex(), "peer_id": str(peer_id_from_member_id(me))}))
    else:
        typer.echo(f"member_id {me.hex()}")
        typer.echo(f"peer_id {peer_id_from_member_id(me)}")
if __name__ == "__main__":
    app()
