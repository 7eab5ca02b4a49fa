"""A real village in one trio process: N daemons on 127.0.0.1 with admin-signed certificates."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio

from protocol.membership import AdminKeyPair, issue_certificate
from villaged.config import DaemonConfig
from villaged.daemon import Daemon, Started
from villaged.transport.identity import load_or_create_identity, member_id


def admit(admin: AdminKeyPair, data_dir: Path, lifetime: float = 3600) -> bytes:
    """Create the node's identity and store a certificate for it; returns the member id."""
    me = member_id(load_or_create_identity(data_dir))
    now = int(time.time())
    cert = issue_certificate(admin.signing_key, admin.village_id, me, now - 60, now + int(lifetime))
    (data_dir / "membership.cert").write_bytes(cert.encode())
    return me


def village_configs(root: Path, n: int, admin: AdminKeyPair | None = None) -> list[DaemonConfig]:
    admin = admin or AdminKeyPair(os.urandom(32))
    configs = []
    for i in range(n):
        data_dir = root / f"node{i}"
        admit(admin, data_dir)
        # Test villages run rounds of 2 or 3 nodes: below the default floor, so lowered explicitly.
        configs.append(DaemonConfig(data_dir=data_dir, discovery_interval=2.0, announce_interval=0.5,
                                    participant_floor=2))
    return configs


@asynccontextmanager
async def running_village(configs: list[DaemonConfig]) -> AsyncIterator[list[tuple[Daemon, Started, trio.CancelScope]]]:
    """Start daemon 0, then the rest bootstrapped from it; each can be stopped by its cancel scope."""
    async with trio.open_nursery() as nursery:
        nodes = []
        bootstrap: tuple[str, ...] = ()
        for config in configs:
            daemon = Daemon(replace(config, bootstrap=config.bootstrap or bootstrap))
            scope = trio.CancelScope()

            async def run(daemon: Daemon = daemon, scope: trio.CancelScope = scope, *, task_status: trio.TaskStatus[Started]) -> None:
                with scope:
                    await daemon.run(task_status=task_status)

            started = await nursery.start(run)
            bootstrap = bootstrap or (started.addresses[0],)
            nodes.append((daemon, started, scope))
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)
