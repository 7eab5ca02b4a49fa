"""Reading a running village: what each live peer says over its control API, and its process's CPU.

Nothing here changes the village. Every read goes to many peers at once (`parallel`), and a peer
that does not answer (down, restarting, too busy) counts as no answer rather than an error
(`quiet`): the run decides what a missing answer means. The figures (bytes from /metrics, CPU
from /proc) are taken as snapshots around each round.
Next: netsim/verify.py judges what is read here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from cli.errors import CliError
from netsim.cluster import Cluster, Peer

T = TypeVar("T")
R = TypeVar("R")

#: A /metrics scrape waits at most this long; a snapshot without one peer's bytes is still useful.
METRICS_TIMEOUT = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parallel(fn: Callable[[T], R], items: list[T], workers: int = 32) -> list[R]:
    """`fn` over `items` in threads (each call waits on one peer's HTTP answer), results in order."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def quiet(fn: Callable[..., R]) -> Callable[..., R | None]:
    """`fn`, with a control API failure turned into None (the peer did not answer)."""

    def call(*args: Any) -> R | None:
        try:
            return fn(*args)
        except CliError:
            return None

    return call


def parse_bytes_metrics(text: str) -> dict[str, int]:
    """Sum `village_bytes_{sent,received}_total` over protocols from a Prometheus exposition."""
    totals = {"sent": 0, "received": 0}
    for line in text.splitlines():
        for direction in totals:
            if line.startswith(f"village_bytes_{direction}_total{{"):
                totals[direction] += int(float(line.rsplit(" ", 1)[1]))
    return totals


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a live process from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat)


class Observer:
    """Reads of `cluster`'s live peers; each list answer has one entry per peer asked (None: no answer)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def connection_counts(self, peers: list[Peer]) -> list[int]:
        return [x or 0 for x in parallel(quiet(lambda p: len(p.api.get("/v1/peers"))), peers)]

    def statuses(self, peers: list[Peer]) -> list[dict[str, Any]]:
        return [x or {} for x in parallel(quiet(lambda p: p.api.get("/v1/status")), peers)]

    def job_view(self, peer: Peer, job_id: str) -> dict[str, Any] | None:
        return quiet(lambda: peer.api.get(f"/v1/jobs/{job_id}"))()

    def job_views(self, peers: list[Peer], job_id: str) -> list[dict[str, Any] | None]:
        """The small job view (members, results held): cheap enough to poll while a result spreads."""
        return parallel(quiet(lambda p: p.api.get(f"/v1/jobs/{job_id}")), peers)

    def results(self, peers: list[Peer], job_id: str) -> list[list[dict[str, Any]] | None]:
        """Every result each peer stores, decoded by the daemon (large: read once a round is over)."""
        return parallel(quiet(lambda p: p.api.get(f"/v1/jobs/{job_id}/results")), peers)

    def training_statuses(self, peers: list[Peer], job_id: str) -> list[dict[str, Any] | None]:
        """Each peer's training status: model version and digest, and the per-round curve."""
        return parallel(quiet(lambda p: p.api.get(f"/v1/training/status/{job_id}")), peers)

    def round_records(self, peers: list[Peer], job_id: str) -> list[list[dict[str, Any]] | None]:
        return parallel(quiet(lambda p: p.api.get(f"/v1/jobs/{job_id}/rounds")), peers)

    def results_of(self, job_id: str, r: int, peers: list[Peer]) -> dict[int, dict[str, Any]]:
        """Peer index -> round r's result as that peer stores it, for the peers that hold it."""
        have = {}
        for peer, results in zip(peers, self.results(peers, job_id)):
            mine = [x for x in results or [] if x["round"] == r]
            if mine:
                have[peer.index] = mine[0]
        return have

    def all_past(self, job_id: str, r: int, waiting: list[Peer]) -> bool:
        """Every peer still without a result has given the round up (a later round has begun there)."""
        rounds = self.round_records(waiting, job_id)
        return all(rs is not None and any(x["round"] > r for x in rs) for rs in rounds)

    def attempts(self, job_id: str, r: int) -> list[dict[str, Any]]:
        """Every attempt of round r as recorded by its coordinator (or by the peers that waited for it)."""
        live = self.cluster.live_peers()
        by_attempt: dict[int, dict[str, Any]] = {}
        for peer, view in zip(live, self.round_records(live, job_id)):
            for x in view or []:
                if x["round"] != r:
                    continue
                known = by_attempt.get(x["attempt"])
                own = x["coordinator"] == peer.member_id.hex()  # the coordinator's record beats the waiters'
                if known is None or (own and x["state"] != "running") or x["state"] == "completed":
                    by_attempt[x["attempt"]] = {**x, "reported_by": peer.index}
        out = []
        for attempt in sorted(by_attempt):
            x = by_attempt[attempt]
            coordinator = self.cluster.by_member(x["coordinator"])
            out.append({"attempt": attempt, "coordinator": x["coordinator"],
                        "coordinator_peer": coordinator.index if coordinator else None,
                        "state": x["state"], "abort_reason": x["abort_reason"], "participants": x["participants"],
                        "dropped": x["dropped"], "phase_timings": x["phase_timings"], "started_at": x["started_at"],
                        "ended_at": x["ended_at"], "reported_by": x["reported_by"]})
        return out

    def snapshot(self) -> dict[str, Any]:
        """Bytes per live peer from /metrics and CPU per live process, now."""
        live = self.cluster.live_peers()
        texts = parallel(quiet(lambda p: replace(p.api, timeout=METRICS_TIMEOUT).get_text("/metrics")), live)
        bytes_by_peer = {p.index: parse_bytes_metrics(t) for p, t in zip(live, texts) if t is not None}
        cpu = {p.index: process_cpu_seconds(p.pid) for p in self.cluster.processes if p.alive() and p.pid}
        return {"at": time.time(), "bytes": bytes_by_peer, "cpu": cpu}
