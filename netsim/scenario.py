"""`netsim run`: a real village on this machine, one job, faults, and an exact check of every result.

Steps (each logged to stderr as it happens):
1. `Cluster.prepare/start`: N peers with fresh identities and certificates from a fresh admin key,
   a few bootstrap peers each; wait until every peer holds those connections.
2. Local data from the workload (netsim/workloads.py): `vector` gives peer i integer-valued inputs
   in [-clip, clip], `routing-priors` plausible routing statistics; netsim keeps them.
3. One job (spec below) created on peer 0; wait until every peer has seen every join.
4. Per round: arm that round's faults (faults.py), snapshot bytes and CPU, wait until every live
   peer stores the round's result (or the round is given up), apply partitions, restart/churn.
5. Check every stored result on every live peer: with `rounding = "nearest"` each quantized input
   is a pure function of the input, so the aggregate is known exactly: its digest (SHA-256 of the
   little-endian uint32 words, `protocol/announcements.py`) must equal the digest of
   sum(quantize(encode(input))) mod 2^32 over exactly the result's `participants`, and the decoded
   values must be within `error_bound` of the kind's decoding of the plaintext sum (workloads.py).
"""

from __future__ import annotations

import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netsim.cluster import (
    ApiError, Cluster, Peer, Process, api_call, parse_bytes_metrics, process_cpu_seconds,
)
from netsim.faults import FaultPlan, Kill, pick_victims
from netsim.netns import LinkShape, Netns
from netsim.workloads import Workload, make_workload
from protocol.election import coordinator_for

DATA_NAME = "netsim"
INPUT_POLICY = {"repeat": "allow"}  # see `Scenario.put_inputs`
#: villaged gives up a round after this many attempts (`villaged/jobs.py` MAX_ATTEMPTS).
MAX_ATTEMPTS = 5
#: How often netsim asks every peer whether it holds the round's result. Round times come from
#: the daemons' own records, so polling faster only loads the daemons being measured.
POLL_INTERVAL = 1.0
#: Once some peer holds a round's result, the others get this many phase timeouts to fetch it;
#: peers still without it are reported as missing (the round's verdict says so).
STRAGGLER_WAIT_FACTOR = 2.0
#: Once every roster member holds a round's result, nodes outside the roster (which only fetch it)
#: get this long more before they are reported missing and the next round is prepared.
OBSERVER_WAIT = 15.0


@dataclass
class RunConfig:
    n: int = 4
    workload: str = "vector"  # netsim/workloads.py: vector, routing-priors
    d: int = 1000
    rounds: int = 2
    dropout: float = 0.0
    drop_phase: str = "masked"
    drop_rounds: list[int] | None = None  # None: every round
    plan: FaultPlan = field(default_factory=FaultPlan)
    seed: int | None = None
    keep: bool = False
    per_process: int = 1
    phase_timeout: float = 10.0
    round_interval: float | None = None  # None: back to back without faults, room to arm them with
    neighbours: int = 14
    min_participants: int | None = None
    clip: int = 1000
    scale: int = 1000
    shape: LinkShape | None = None  # set: each process in its own network namespace
    root: Path | None = None
    report_dir: Path | None = None
    ready_timeout: float | None = None


class Log:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"netsim [{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)


def _parallel(fn: Any, items: list[Any], workers: int = 32) -> list[Any]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def rounds_missing(held: dict[int, set[int]]) -> dict[int, list[int]]:
    """Peer index -> the rounds it lacks that some other peer holds (given each peer's held rounds)."""
    everywhere = set().union(*held.values()) if held else set()
    return {peer: sorted(everywhere - rounds) for peer, rounds in held.items() if rounds != everywhere}


def _quiet(fn: Any) -> Any:
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except ApiError:
            return None
    return call


class Scenario:
    def __init__(self, config: RunConfig, log: Log | None = None) -> None:
        self.config = config
        self.log = log or Log()
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        self.rng = random.Random(self.seed)
        self.netns: Netns | None = None
        self.cluster: Cluster | None = None
        self.workload: Workload = make_workload(config.workload, config)
        self.job: dict[str, Any] = {}
        self.members: list[bytes] = []
        self.rounds: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.armed: dict[int, str] = {}  # process index -> failpoint it was started with
        self.down: dict[int, float] = {}  # process index -> when it went down (killed, churned)
        self.churned: list[int] = []

    # --- setup -------------------------------------------------------------------------------------

    def open(self) -> None:
        c = self.config
        processes = (c.n + c.per_process - 1) // c.per_process
        addresses = wrap = api_hosts = None
        if c.shape is not None:
            self.netns = Netns(processes, c.shape)
            self.log(f"creating {processes} network namespaces ({c.shape})")
            self.netns.open()
            addresses = [self.netns.address(i) for i in range(processes)]
            api_hosts = addresses
            wrap = [self.netns.wrap(i) for i in range(processes)]
        self.cluster = Cluster(c.n, root=c.root, per_process=c.per_process, keep=c.keep, addresses=addresses,
                               wrap=wrap, api_hosts=api_hosts)
        self.log(f"preparing {c.n} peers in {processes} processes under {self.cluster.root}")
        self.cluster.prepare()
        started = time.monotonic()
        self.cluster.start()
        self.startup_seconds = time.monotonic() - started
        self.log(f"all {processes} processes serve their API after {self.startup_seconds:.1f} s")

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.netns is not None:
            self.netns.close()

    @property
    def live_peers(self) -> list[Peer]:
        assert self.cluster is not None
        return [p for p in self.cluster.peers if self.cluster.process_of(p.index).alive()]

    def _connection_counts(self, peers: list[Peer]) -> list[int]:
        return [x or 0 for x in _parallel(_quiet(lambda p: len(api_call(p, "GET", "/v1/peers"))), peers)]

    def wait_mesh(self, timeout: float) -> dict[str, Any]:
        """Until every live peer is connected, so it hears the job and can reach its creator, and its
        discovery has settled (Kademlia lookups dial many peers
        while a routing table still grows; a deployed village is past that when a job comes).
        Rounds dial whatever else they need (cluster.py)."""
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_peers
            want = 1  # in the village; lookups bring more once discovery runs, and rounds dial the rest
            status = [x or {} for x in _parallel(_quiet(lambda p: api_call(p, "GET", "/v1/status")), live)]
            connected = [x.get("connected_peers", 0) for x in status]
            settled = sum(1 for x in status if x.get("discovery_settled"))
            summary = {"min_connected": min(connected), "median_connected": sorted(connected)[len(connected) // 2],
                       "max_connected": max(connected), "wanted": want, "discovery_settled": settled}
            if min(connected) >= want and settled == len(live):
                return {**summary, "ready": True}
            if time.monotonic() > deadline:
                self.log(f"peers not connected after {timeout:.0f} s: {summary}")
                return {**summary, "ready": False}
            time.sleep(0.5)

    @property
    def inputs(self) -> dict[str, Any]:
        """Member id hex -> the local input netsim put on that member."""
        return self.workload.payloads

    def put_inputs(self) -> None:
        assert self.cluster is not None
        payloads = self.workload.make_inputs([p.member_id.hex() for p in self.cluster.peers], self.seed)

        def put(peer: Peer) -> None:
            # netsim's inputs never change between rounds and it checks every round's exact sum,
            # whatever its survivors: each input may be summed again with other survivors.
            api_call(peer, "PUT", f"/v1/data/{DATA_NAME}/policy", INPUT_POLICY, timeout=60)
            api_call(peer, "PUT", f"/v1/data/{DATA_NAME}", payloads[peer.member_id.hex()], timeout=60)

        _parallel(put, self.cluster.peers, workers=8)

    def spec(self, start_delay: float, round_interval: float) -> dict[str, Any]:
        """The job spec (and the workload bound to it, so it quantizes exactly as the daemons will)."""
        c = self.config
        spec = {
            "name": f"netsim {c.workload}", "data": DATA_NAME, "rounds": c.rounds,
            "round_interval": float(round_interval), "start_delay": float(start_delay),
            "min_participants": c.min_participants or max(2, min(c.n, 3)), "max_participants": max(c.n, 3),
            "neighbours": c.neighbours, "phase_timeout": float(c.phase_timeout),
            **self.workload.spec_fields(),
        }
        self.workload.bind(spec)
        return spec

    # --- faults ------------------------------------------------------------------------------------

    def _round_has_faults(self, r: int) -> bool:
        c = self.config
        dropout_here = c.dropout > 0 and (c.drop_rounds is None or r in c.drop_rounds)
        return dropout_here or bool(c.plan.kills_in(r))

    def coordinator_peer(self, r: int, attempt: int = 0) -> Peer:
        assert self.cluster is not None
        member = coordinator_for(self.job["id"], r, attempt, self.members)
        peer = self.cluster.by_member(member.hex())
        assert peer is not None
        return peer

    def _plans(self, r: int, up: set[int]) -> dict[int, str]:
        """Failpoint per process for round r; `up` = processes that will be running when it opens."""
        assert self.cluster is not None
        c = self.config
        coordinator = self.coordinator_peer(r)
        coordinator_process = self.cluster.process_of(coordinator.index)
        spared = {coordinator_process.index}
        plans: dict[int, str] = {}
        for kill in c.plan.kills_in(r):
            if kill.peer is None and kill.role == "client":  # any client: one not sharing the coordinator's process
                choices = sorted({self.cluster.process_of(p.index).index for p in self.cluster.peers} & up
                                 - spared - set(plans))
                if not choices:
                    self.event(r, "kill_skipped", reason="no process left to kill a client in")
                    continue
                plans[self.rng.choice(choices)] = kill.failpoint
                continue
            target = coordinator_process if kill.peer is None else self.cluster.process_of(kill.peer)
            if target.index not in up:
                self.event(r, "kill_skipped", process=target.index, reason="that process is down")
            elif kill.peer is not None and target is coordinator_process:
                self.event(r, "kill_skipped", peer=kill.peer, reason="peer shares the process of this round's coordinator")
            else:
                plans[target.index] = kill.failpoint
        if c.dropout > 0 and (c.drop_rounds is None or r in c.drop_rounds):
            candidates = [p.index for p in self.cluster.peers
                          if self.cluster.process_of(p.index).index in up - spared
                          and self.cluster.process_of(p.index).index not in plans]
            share = c.dropout * c.n / max(1, len(candidates))
            for victim in pick_victims(self.rng, candidates, min(1.0, share), c.per_process):
                plans[self.cluster.process_of(victim).index] = f"client:{c.drop_phase}"
        return plans

    def transition(self, done: int | None, upcoming: int | None) -> None:
        """Between rounds: disarm, restart the killed, churn, and arm the next round. Arming writes
        the process's failpoint file (see Cluster.arm); only a process that is down is started."""
        assert self.cluster is not None
        c = self.config
        starts: dict[int, str] = {}  # process index -> why it starts
        if done is not None:
            for index in list(self.armed):
                process = self.cluster.processes[index]
                del self.armed[index]
                self.cluster.arm(process, None)
                if process.alive():  # the fault never fired
                    self.event(done, "disarmed", process=process.index, peers=process.peers)
                elif c.plan.restart:
                    starts[index] = "restarted"
            if c.plan.churn and upcoming is not None:
                back = list(self.churned)
                candidates = [p for p in self.cluster.processes if p.alive() and p.index not in starts and p.index != 0]
                leaving = self.rng.sample(candidates, min(c.plan.churn, len(candidates)))
                for process in leaving:
                    self.cluster.kill(process, sig=15, reason="churn: leaves")
                    self.down[process.index] = time.time()
                    self.event(done, "churn_leave", process=process.index, peers=process.peers)
                self.churned = [p.index for p in leaving]
                for index in back:
                    starts[index] = "churn_join"
        if upcoming is not None and self._round_has_faults(upcoming):
            coordinator = self.coordinator_peer(upcoming).index
            up = {p.index for p in self.cluster.processes if p.alive()} | set(starts)
            for index, failpoint in self._plans(upcoming, up).items():
                process = self.cluster.processes[index]
                self.cluster.arm(process, failpoint)
                self.armed[index] = failpoint
                self.event(upcoming, f"armed {failpoint}", process=index, peers=process.peers,
                           coordinator=coordinator in process.peers)
        if not starts:
            return
        processes = [self.cluster.processes[i] for i in sorted(starts)]
        for process in processes:
            self.cluster.start_process(process)
            self.down.pop(process.index, None)
            self.event(done, starts[process.index], process=process.index, peers=process.peers)
        self.cluster.wait_ready(processes)
        self._wait_reconnected(processes)

    def _wait_reconnected(self, processes: list[Process], timeout: float = 30.0) -> None:
        assert self.cluster is not None
        peers = [self.cluster.peers[i] for p in processes for i in p.peers]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if min(self._connection_counts(peers)) >= 1:
                return
            time.sleep(0.3)
        self.log("restarted peers did not reconnect to their bootstrap peers in time")

    def event(self, r: int | None, kind: str, **fields: Any) -> None:
        self.events.append({"at": time.time(), "round": r, "event": kind, **fields})
        self.log(f"round {r}: {kind} {json.dumps(fields, default=str)}")

    # --- the run -----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        assert self.cluster is not None
        c = self.config
        mesh = self.wait_mesh(c.ready_timeout or 60 + c.n * 0.5)
        self.put_inputs()
        faults = any(self._round_has_faults(r) for r in range(c.rounds)) or c.plan.churn or c.plan.partition_round is not None
        round_interval = c.round_interval if c.round_interval is not None else (
            2 * c.phase_timeout + 12 + 0.1 * c.n if faults else 0.0)
        start_delay = 6 + 0.15 * c.n + (8 + 0.2 * c.n if self._round_has_faults(0) else 0)
        spec = self.spec(start_delay, round_interval)
        assert self.cluster is not None
        self.job = api_call(self.cluster.peers[0], "POST", "/v1/jobs", spec)
        job_id = self.job["id"]
        self.log(f"job {job_id}: {c.rounds} rounds of {c.workload}, d={self.workload.dimension}, start_delay {start_delay:.1f} s, round_interval {round_interval:.1f} s")
        # Arm round 0 now, while members join. The roster, if every join arrives, names round 0's
        # coordinator, whose process is not armed.
        self.members = sorted(p.member_id for p in self.cluster.peers)
        self.transition(None, 0)
        self._wait_joined(job_id, self.job["start_at"])
        if self.cluster.process_of(self.coordinator_peer(0).index).index in self.armed:
            self.event(0, "coordinator_armed", reason="joins went missing, and the roster elected a coordinator in an armed process")
        prev = self._snapshot()
        verdicts = []
        for r in range(c.rounds):
            opens_at = self.job["start_at"] + r * round_interval
            record = self._run_round(r, opens_at, prev)
            prev = record.pop("_snapshot")
            self.rounds.append(record)
            verdicts.append(record["check"]["verdict"])
            self.transition(r, r + 1 if r + 1 < c.rounds else None)
            if self.armed:
                prev = self._snapshot()
        # A process restarted after the last round had its streams time out for 30-40 s in net-100
        # (its nodes fetched the round 36 s after they were up): give it that long, then call it missing.
        results = self._final_check(self._wait_caught_up(job_id, timeout=45.0 + 0.2 * c.n))
        ok = all(v in ("exact", "aborted") for v in verdicts) and results["mismatches"] == results["missing"] == 0
        return {
            "netsim": "run", "ok": ok, "seed": self.seed,
            "config": {**{k: v for k, v in asdict(c).items() if k not in ("plan", "shape", "root", "report_dir")},
                       "plan": asdict(c.plan), "shape": asdict(c.shape) if c.shape else None,
                       "processes": len(self.cluster.processes)},
            "workload": c.workload, "dimension": self.workload.dimension,
            "spec": spec, "job_id": job_id, "startup_seconds": round(self.startup_seconds, 2), "mesh": mesh,
            "rounds": self.rounds, "events": self.events, "final_check": results,
        }

    def _wait_caught_up(self, job_id: str, timeout: float) -> list[list[dict[str, Any]] | None]:
        """Until every live peer holds every round some peer holds (restarted peers fetch the rounds
        they missed from the others), or `timeout`; returns each live peer's stored results then."""
        deadline = time.monotonic() + timeout
        while True:
            views = _parallel(_quiet(lambda p: api_call(p, "GET", f"/v1/jobs/{job_id}/results", timeout=30)), self.live_peers)
            missing = self._rounds_missing(views)
            if not missing:
                return views
            if time.monotonic() > deadline:
                self.log(f"peers {sorted(missing)} still miss rounds after {timeout:.0f} s: {missing}")
                return views
            time.sleep(0.5)

    def _rounds_missing(self, views: list[list[dict[str, Any]] | None]) -> dict[int, list[int]]:
        return rounds_missing({p.index: {x["round"] for x in v or []} for p, v in zip(self.live_peers, views)})

    def _wait_joined(self, job_id: str, start_at: float) -> None:
        """Until the job's creator (peer 0) holds every peer's join, or the job starts."""
        assert self.cluster is not None
        n = self.config.n
        creator = self.cluster.peers[0]
        view: dict[str, Any] = {}
        while True:
            view = _quiet(lambda: api_call(creator, "GET", f"/v1/jobs/{job_id}"))() or view
            if len(view.get("members", ())) >= n or time.time() > start_at - 0.5:
                break
            time.sleep(0.3)
        self.members = sorted(bytes.fromhex(m) for m in view.get("members", ()))
        if len(self.members) < n:
            self.log(f"only {len(self.members)} of {n} joins reached the creator by the job start")
        self.log(f"{len(self.members)} members joined; {start_at - time.time():.1f} s before the first round")

    def _snapshot(self) -> dict[str, Any]:
        """Bytes per peer from /metrics and CPU per process, now."""
        assert self.cluster is not None
        texts = _parallel(_quiet(lambda p: api_call(p, "GET", "/metrics", raw=True, timeout=10)), self.live_peers)
        bytes_by_peer = {p.index: parse_bytes_metrics(t) for p, t in zip(self.live_peers, texts) if t is not None}
        cpu = {p.index: process_cpu_seconds(p.pid) for p in self.cluster.processes if p.alive() and p.pid}
        return {"at": time.time(), "bytes": bytes_by_peer, "cpu": cpu}

    def _run_round(self, r: int, opens_at: float, before: dict[str, Any]) -> dict[str, Any]:
        assert self.cluster is not None
        c = self.config
        job_id = self.job["id"]
        if time.time() > opens_at + 0.5 and (self._round_has_faults(r)):
            self.event(r, "armed_late", seconds_late=round(time.time() - opens_at, 1))
        alive_at_open = {p.index for p in self.live_peers}
        deadline = max(opens_at, time.time()) + MAX_ATTEMPTS * 6 * c.phase_timeout + 30
        partitioned = False
        holders: set[int] = set()
        first_seen: float | None = None  # when some peer first held the result
        roster = set(self.members)
        roster_done: float | None = None  # when every roster member still up held it
        while time.time() < deadline:
            if c.plan.partition_round == r and self.netns is not None and not partitioned and time.time() >= opens_at:
                half = len(self.cluster.processes) // 2
                self.netns.partition(list(range(half)), list(range(half, len(self.cluster.processes))))
                partitioned, healed_at = True, time.time() + c.plan.partition_seconds
                self.event(r, "partition", sides=[half, len(self.cluster.processes) - half], seconds=c.plan.partition_seconds)
            if partitioned and self.netns is not None and time.time() >= healed_at and self.netns._partition_routes:
                self.netns.heal()
                self.event(r, "healed")
            for process in self.cluster.reap():
                self.down[process.index] = time.time()
                self.event(r, "died", process=process.index, peers=process.peers, failpoint=self.armed.get(process.index),
                           signal=process.deaths[-1]["signal"])
            live = [p for p in self.live_peers if p.index not in holders]
            # Poll only the small job view while the result spreads; the (large, decoded) results are
            # read once the round is over, so the harness does not load the daemons it measures.
            views = _parallel(_quiet(lambda p: api_call(p, "GET", f"/v1/jobs/{job_id}")), live)
            holders |= {p.index for p, v in zip(live, views) if v and v.get("results", 0) > r}
            waiting = [p for p in self.live_peers if p.index not in holders]
            if not waiting:
                break
            if holders and self._all_past(r, waiting):
                break
            if holders and first_seen is None:
                first_seen = time.time()
            in_roster = {p.index for p in waiting if p.member_id in roster}
            if in_roster or roster_done is None:
                roster_done = None if in_roster else time.time()
            observers_late = roster_done is not None and time.time() > roster_done + OBSERVER_WAIT
            if observers_late or (first_seen is not None and time.time() > first_seen + STRAGGLER_WAIT_FACTOR * c.phase_timeout):
                self.event(r, "stragglers", peers=[p.index for p in waiting])  # reported as missing below
                break
            time.sleep(POLL_INTERVAL)
        if self.netns is not None and self.netns._partition_routes:
            self.netns.heal()
            self.event(r, "healed")
        have = self._results_of(r, [p for p in self.live_peers if p.index in holders])
        # Counters on /metrics move every 2 s: wait for this round's bytes to show.
        time.sleep(2.2)
        after = self._snapshot()
        attempts = self._attempts(r)
        check = self._check_round(r, have, alive_at_open, opens_at)
        completed = [a for a in attempts if a["state"] == "completed"]
        coordinator = completed[0]["coordinator"] if completed else None
        coordinator_peer = self.cluster.by_member(coordinator) if coordinator else None
        coordinator_cpu = None
        if coordinator_peer is not None:
            pid_index = self.cluster.process_of(coordinator_peer.index).index
            a, b = before["cpu"].get(pid_index), after["cpu"].get(pid_index)
            coordinator_cpu = round(b - a, 3) if a is not None and b is not None else None
        result = next(iter(have.values()), None)
        wall = None
        if completed and completed[0]["ended_at"]:
            first = min(a["started_at"] for a in attempts)
            wall = round(completed[0]["ended_at"] - first, 3)
        # How long the aggregate took to reach every node that got it, after the coordinator (the first) stored it.
        arrivals = [x["received_at"] for x in have.values()]
        spread = round(max(arrivals) - min(arrivals), 3) if arrivals else None
        return {
            "round": r,
            "opens_at": opens_at,
            "wall_seconds": wall,
            "result_spread_seconds": spread,
            "result_holders": len(have),
            "phase_seconds": completed[0]["phase_timings"] if completed else {},
            "attempts": attempts,
            "coordinator": coordinator_peer.index if coordinator_peer else None,
            "coordinator_cpu_seconds": coordinator_cpu,
            "coordinator_per_process": c.per_process,
            "participants": sorted(self.cluster.by_member(m).index for m in result["participants"]) if result else [],  # type: ignore[union-attr]
            "dropped": sorted(self.cluster.by_member(m).index for m in result["dropped"]) if result else [],  # type: ignore[union-attr]
            "bytes": {
                str(i): {k: after["bytes"][i][k] - before["bytes"].get(i, {}).get(k, 0) for k in ("sent", "received")}
                for i in after["bytes"] if i in before["bytes"]
            },
            "check": check,
            "_snapshot": after,
        }

    def _results_of(self, r: int, peers: list[Peer]) -> dict[int, dict[str, Any]]:
        """Round r's result as each of `peers` stores it (decoded by the daemon)."""
        job_id = self.job["id"]
        results = _parallel(_quiet(lambda p: api_call(p, "GET", f"/v1/jobs/{job_id}/results", timeout=30)), peers)
        have = {}
        for peer, res in zip(peers, results):
            mine = [x for x in res or [] if x["round"] == r]
            if mine:
                have[peer.index] = mine[0]
        return have

    def _all_past(self, r: int, waiting: list[Peer]) -> bool:
        """Every peer still without a result has given the round up (a later round has begun there)."""
        job_id = self.job["id"]
        rounds = _parallel(_quiet(lambda p: api_call(p, "GET", f"/v1/jobs/{job_id}/rounds")), waiting)
        return all(rs is not None and any(x["round"] > r for x in rs) for rs in rounds)

    def _attempts(self, r: int) -> list[dict[str, Any]]:
        """Every attempt of round r as recorded by its coordinator (or by the peers that waited for it)."""
        job_id = self.job["id"]
        live = self.live_peers
        views = _parallel(_quiet(lambda p: api_call(p, "GET", f"/v1/jobs/{job_id}/rounds")), live)
        by_attempt: dict[int, dict[str, Any]] = {}
        for peer, view in zip(live, views):
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
            peer = self.cluster.by_member(x["coordinator"]) if self.cluster else None
            out.append({"attempt": attempt, "coordinator": x["coordinator"], "coordinator_peer": peer.index if peer else None,
                        "state": x["state"], "abort_reason": x["abort_reason"], "participants": x["participants"],
                        "dropped": x["dropped"], "phase_timings": x["phase_timings"], "started_at": x["started_at"],
                        "ended_at": x["ended_at"], "reported_by": x["reported_by"]})
        return out

    def expected(self, participants: list[str]) -> tuple[np.ndarray, str]:
        """Plaintext sum over `participants` and the digest of its exact quantized aggregate."""
        return self.workload.expected(participants)

    def check_result(self, result: dict[str, Any]) -> list[str]:
        return self.workload.check_result(result)

    def _check_round(self, r: int, have: dict[int, dict[str, Any]], alive_at_open: set[int], opens_at: float) -> dict[str, Any]:
        assert self.cluster is not None
        mismatches = {}
        for index, result in have.items():
            problems = self.check_result(result)
            if problems:
                mismatches[str(index)] = problems
        missing = sorted(i for i in alive_at_open if self.cluster.process_of(i).alive() and i not in have
                         and self.cluster.process_of(i).started_at < opens_at)
        digests = sorted({res["digest"] for res in have.values()})
        if mismatches:
            verdict = "mismatch"
        elif not have:
            verdict = "aborted"
        elif missing:
            verdict = "missing"
        elif len(digests) > 1:
            verdict = "split"  # different participant sets committed for one round
        else:
            verdict = "exact"
        return {"verdict": verdict, "peers_with_result": len(have), "missing": missing, "mismatches": mismatches,
                "digests": len(digests)}

    def _final_check(self, views: list[list[dict[str, Any]] | None]) -> dict[str, Any]:
        """Every result every live peer holds at the end (`views`, from `_wait_caught_up`), including
        rounds caught up after a restart; a round a live peer still lacks fails the run too."""
        missing = self._rounds_missing(views)
        checked = mismatches = 0
        offending = []
        for peer, results in zip(self.live_peers, views):
            for result in results or []:
                checked += 1
                problems = self.check_result(result)
                if problems:
                    mismatches += 1
                    offending.append({"peer": peer.index, "round": result["round"], "problems": problems})
        for index, rounds in missing.items():
            offending += [{"peer": index, "round": r, "problems": ["missing: never fetched"]} for r in rounds]
        return {"results_checked": checked, "mismatches": mismatches, "missing": sum(map(len, missing.values())),
                "offending": offending}


def run_scenario(config: RunConfig) -> dict[str, Any]:
    """Open, run, close (always), and write the report if asked."""
    scenario = Scenario(config)
    try:
        scenario.open()
        report = scenario.run()
    finally:
        scenario.close()
    if config.report_dir is not None:
        from netsim.report import write_report

        write_report(config.report_dir, [report])
    return report
