"""`netsim`: run village rounds locally and check every result against the plaintext."""

from __future__ import annotations

import json

import typer

from netsim.bench import bench_core
from netsim.core import DROPOUT_PHASES

app = typer.Typer(help="Spawn local village peers, inject faults, and check every result against the plaintext.", no_args_is_help=True)
bench_app = typer.Typer(help="Standard workloads; each prints one JSON line.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("core")
def core(
    n: int = typer.Option(100, help="clients in the round"),
    d: int = typer.Option(100_000, help="vector length"),
    k: int = typer.Option(14, help="SecAgg+ neighbours per client (even)"),
    t: int = typer.Option(None, help="threshold (default: a strict majority of k+1)"),
    dropout: float = typer.Option(0.1, min=0.0, max=0.9, help="fraction of clients that drop"),
    drop_phase: str = typer.Option("consistency", help=f"phase in which they drop: {', '.join(DROPOUT_PHASES)}"),
    seed: int = typer.Option(1, help="seed for inputs, keys and the dropout draw"),
) -> None:
    """In-process state machines, no network: per-phase CPU, bytes, PRG speed, exact-sum check.

    Example: netsim bench core --n 100 --d 100000 --k 14 --dropout 0.1
    """
    try:
        line = bench_core(n, d, k, t, dropout, drop_phase, seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(json.dumps(line))
    if not line["exact_sum"]:
        raise typer.Exit(1)
