"""Small networks of real libp2p nodes on 127.0.0.1, each in its own task of this trio process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from villaged.transport import Node, TransportConfig, run_node

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
# Short discovery timings so a 5-node network meshes within seconds.
FAST = TransportConfig(discovery_first_interval=0.5, discovery_interval=2.0, dial_timeout=5.0)


@asynccontextmanager
async def network(
    n: int, config: TransportConfig = FAST, keypairs: Sequence[KeyPair] = (), scopes: list[trio.CancelScope] | None = None
) -> AsyncIterator[list[Node]]:
    """n nodes (with `keypairs` if given); node 0 is the only bootstrap node the others know.
    `scopes`, if given, receives each node's cancel scope: cancelling one kills that node.

    Leaving the block cancels all of them at once, so they close concurrently.
    """
    keys = list(keypairs) or [create_new_key_pair() for _ in range(n)]
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for key in keys[:n]:
            scope = trio.CancelScope()
            bootstrap = nodes[0].listen_addrs if nodes else []

            async def run(key: KeyPair = key, bootstrap: list[str] = bootstrap, scope: trio.CancelScope = scope, *,
                          task_status: trio.TaskStatus[Node]) -> None:
                with scope:
                    await run_node(key, LOOPBACK, bootstrap, config, task_status=task_status)

            nodes.append(await nursery.start(run))
            if scopes is not None:
                scopes.append(scope)
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()


async def wait_until(predicate: object, timeout: float, what: str) -> float:
    """Poll `predicate()` until true; return the seconds it took."""
    start = time.perf_counter()
    with trio.move_on_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.1)
        return time.perf_counter() - start
    pytest.fail(f"{what} not reached within {timeout} s")
