"""`netsim bench soak`: a small village runs many rounds back to back; does the pace hold, does memory?

Four real daemons (libp2p on loopback, SQLite stores) in this one trio process, so that the
process's RSS and trio task count are the village's, run one vector job of `rounds` rounds with
`round_interval` 0. A round's start is its first attempt's start in its coordinator's store; the
pace is the gap from one round's start to the next's, for the first and the last 50 rounds. A
job that once ran back to back at 0.03 s a round stalled 14 s a round from its 14th second on
(issue 18), which only a run this long shows. Figures, never assertions.
"""

from __future__ import annotations

import random
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from netsim.cluster import Cluster
from netsim.run import DATA_NAME, INPUT_POLICY

if TYPE_CHECKING:
    from villaged.daemon import Daemon

#: Rounds at each end of the job whose pace is reported.
PACE_WINDOW = 50


@dataclass(frozen=True)
class Footprint:
    rss_mb: float
    trio_tasks: int


def footprint() -> Footprint:
    """This process's resident memory and live trio tasks now."""
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return Footprint(round(rss_kb / 1024, 1), _count_tasks(trio.lowlevel.current_root_task()))


def _count_tasks(task: trio.lowlevel.Task | None) -> int:
    if task is None:
        return 0
    return 1 + sum(_count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks)


def pace(starts: list[float]) -> dict[str, object]:
    """Median and p95 of round-start-to-round-start gaps (s) over the first and the last PACE_WINDOW rounds."""

    def summary(window: list[float]) -> dict[str, float | None]:
        gaps = [b - a for a, b in zip(window, window[1:])]
        if not gaps:
            return {"median_s": None, "p95_s": None}
        ordered = sorted(gaps)
        return {"median_s": round(statistics.median(gaps), 3),
                "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)}

    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return {"first": summary(starts[:PACE_WINDOW]), "last": summary(starts[-PACE_WINDOW:]),
            "max_gap_s": round(max(gaps, default=0.0), 3), "gaps_over_1s": sum(1 for gap in gaps if gap > 1.0)}


async def _soak(root: Path, n: int, rounds: int, dimension: int, phase_timeout: float, timeout: float) -> dict[str, object]:
    from villaged.config import DaemonConfig
    from villaged.daemon import Daemon  # imports libp2p
    from villaged.logs import configure_logging

    configure_logging("warning")  # after libp2p's import; a round's info lines would flood the output

    cluster = Cluster(n, root=root, keep=True)
    cluster.prepare()
    rng = random.Random(1)
    async with trio.open_nursery() as nursery:
        daemons: list[Daemon] = []
        for peer in cluster.peers:
            bootstrap = tuple(p.address for p in cluster.peers[:peer.index])
            config = DaemonConfig(data_dir=peer.data_dir, listen=(f"/ip4/{peer.host}/tcp/{peer.port}",), bootstrap=bootstrap,
                                  participant_floor=2, discovery_interval=5.0, announce_interval=1.0)
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            await daemon.put_data_policy(DATA_NAME, INPUT_POLICY)  # the same input every round, whatever its survivors
            await daemon.put_data(DATA_NAME, [rng.uniform(-1, 1) for _ in range(dimension)])
            daemons.append(daemon)
        with trio.fail_after(60):
            while min([len(await d.members()) for d in daemons]) < n:
                await trio.sleep(0.2)
        spec = {"kind": "vector", "data": DATA_NAME, "dimension": dimension, "rounds": rounds, "round_interval": 0.0,
                "start_delay": 3.0, "min_participants": 3, "max_participants": n, "neighbours": 2,
                "phase_timeout": phase_timeout, "quantization": {"clip": 1.0, "scale": 1000.0}}
        job_id = str((await daemons[0].create_job(spec))["id"])
        began = time.monotonic()

        def held() -> int:  # rounds whose result every daemon stores
            return min(len(d.store.result_rounds(job_id)) for d in daemons)

        with trio.move_on_after(timeout):
            while held() < 1:
                await trio.sleep(0.05)
        at_start = footprint()
        with trio.move_on_after(max(0.0, timeout - (time.monotonic() - began))):
            while held() < rounds:
                await trio.sleep(0.2)
        at_end = footprint()
        done, starts = held(), _round_starts(daemons, job_id)
        nursery.cancel_scope.cancel()  # the daemons close their stores
    return {
        "bench": "soak", "n": n, "d": dimension, "rounds": rounds, "rounds_done": done, "phase_timeout": phase_timeout,
        "wall_s": round(time.monotonic() - began, 1), "pace": pace(starts),
        "start": {"rss_mb": at_start.rss_mb, "trio_tasks": at_start.trio_tasks},
        "end": {"rss_mb": at_end.rss_mb, "trio_tasks": at_end.trio_tasks},
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _round_starts(daemons: list[Daemon], job_id: str) -> list[float]:
    """Each round's start: its earliest attempt as its coordinator recorded it (wall time, in round order)."""
    firsts: dict[int, float] = {}
    for daemon in daemons:
        for record in daemon.store.rounds(job_id):
            if record.coordinator == daemon.me:
                firsts[record.round] = min(record.started_at, firsts.get(record.round, record.started_at))
    return [firsts[r] for r in sorted(firsts)]


def run_soak(rounds: int, n: int = 4, dimension: int = 1000, phase_timeout: float = 10.0, timeout: float = 1800.0,
             root: Path | None = None) -> dict[str, object]:
    """Run the soak in a fresh directory (removed afterwards unless `root` is given)."""
    work = root or Path(tempfile.mkdtemp(prefix="netsim-soak-"))
    try:
        return trio.run(_soak, work, n, rounds, dimension, phase_timeout, timeout)
    finally:
        if root is None:
            shutil.rmtree(work, ignore_errors=True)
