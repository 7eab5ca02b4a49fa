"""Several villaged `Daemon`s in one OS process, for villages larger than the machine has room
for one process per peer (`netsim run --per-process K`).

Usage: python -m netsim.multipeer NODE.toml [NODE.toml ...]

Each daemon gets its own data dir, identity, certificate, libp2p host, SQLite store and control
API, exactly as `villaged start --config NODE.toml` would give it; only the trio run, the Python
interpreter and the process-wide libp2p settings (shared/notes/py-libp2p.md §2) are shared.
A failpoint (VILLAGE_FAILPOINT_FILE) kills the whole process, so all K peers drop together.
Stops on SIGINT/SIGTERM like villaged.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from villaged.config import load_config
from villaged.logs import configure_logging


async def _serve(config_paths: list[Path]) -> None:
    from villaged.daemon import Daemon, failpoint_file_from_environment  # imports libp2p

    configs = [load_config(path, {}) for path in config_paths]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for config in configs:
                started = await nursery.start(Daemon(config, failpoint_file_from_environment()).run)
                print(f"{config.data_dir.name} api {started.api_url}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m netsim.multipeer NODE.toml [NODE.toml ...]")
    paths = [Path(a) for a in argv]
    configure_logging(load_config(paths[0], {}).log_level)
    trio.run(_serve, paths)


if __name__ == "__main__":
    main(sys.argv[1:])
