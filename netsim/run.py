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

This module drives the run (processes, inputs, the job, faults, the pace of rounds); what the peers
say is read by netsim/observe.py and judged by netsim/verify.py.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from netsim.cluster import Cluster, Peer, Process
from netsim.faults import FaultPlan, pick_victims
from netsim.netns import LinkShape, Netns
from netsim.observe import Observer, parallel
from netsim.verify import PASSING, check_round, final_check, held_rounds, rounds_missing
from netsim.training_workload import TrainingOptions
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
#: Writing a peer's input and policy waits this long (every peer is written at once, 8 at a time).
PUT_TIMEOUT = 60.0


@dataclass
class RunConfig:
    n: int = 4
    workload: str = "vector"  # netsim/workloads.py: vector, routing-priors, training
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
    training: TrainingOptions | None = None  # workload training (None: its defaults); rounds = training rounds


class Log:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"netsim [{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)


class Scenario:
    def __init__(self, config: RunConfig, log: Log | None = None) -> None:
        self.config = config
        self.log = log or Log()
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        self.rng = random.Random(self.seed)
        self.netns: Netns | None = None
        self.cluster: Cluster | None = None
        self.observer: Observer | None = None
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
        self.observer = Observer(self.cluster)
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
        return self.cluster.live_peers()

    @property
    def observe(self) -> Observer:
        assert self.observer is not None, "open() first"
        return self.observer

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
            status = self.observe.statuses(live)
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
            api = replace(peer.api, timeout=PUT_TIMEOUT)
            api.put(f"/v1/data/{DATA_NAME}/policy", INPUT_POLICY)
            api.put(f"/v1/data/{DATA_NAME}", payloads[peer.member_id.hex()])

        parallel(put, self.cluster.peers, workers=8)

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
        self.workload.complete(spec)
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
            if min(self.observe.connection_counts(peers)) >= 1:
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
        job_rounds = spec["rounds"]  # a training job has one more than its training rounds
        assert self.cluster is not None
        self.job = self.cluster.peers[0].api.post("/v1/jobs", spec)
        job_id = self.job["id"]
        self.log(f"job {job_id}: {job_rounds} rounds of {c.workload}, d={self.workload.dimension}, start_delay {start_delay:.1f} s, round_interval {round_interval:.1f} s")
        # Arm round 0 now, while members join. The roster, if every join arrives, names round 0's
        # coordinator, whose process is not armed.
        self.members = sorted(p.member_id for p in self.cluster.peers)
        self.transition(None, 0)
        self._wait_joined(job_id, self.job["start_at"])
        if self.cluster.process_of(self.coordinator_peer(0).index).index in self.armed:
            self.event(0, "coordinator_armed", reason="joins went missing, and the roster elected a coordinator in an armed process")
        prev = self.observe.snapshot()
        verdicts = []
        for r in range(job_rounds):
            opens_at = self.job["start_at"] + r * round_interval
            record = self._run_round(r, opens_at, prev)
            prev = record.pop("_snapshot")
            self.rounds.append(record)
            verdicts.append(record["check"]["verdict"])
            self.log(f"round {r}: {record['check']['verdict']}, {len(record['participants'])} participants, "
                     f"{len(record['attempts'])} attempt(s)" + _progress(record.get(self.workload.name)))
            self.transition(r, r + 1 if r + 1 < job_rounds else None)
            if self.armed:
                prev = self.observe.snapshot()
        # A process restarted after the last round had its streams time out for 30-40 s in net-100
        # (its nodes fetched the round 36 s after they were up): give it that long, then call it missing.
        results = final_check(self.workload.check_result, self._wait_caught_up(job_id, timeout=45.0 + 0.2 * c.n))
        ok = all(v in PASSING for v in verdicts) and results["mismatches"] == results["missing"] == 0
        end = self.workload.observe_end(self)
        extra = {} if end is None else {self.workload.name: end}
        ok = ok and (end is None or bool(end["ok"]))
        return {
            "netsim": "run", "ok": ok, "seed": self.seed,
            "config": {**{k: v for k, v in asdict(c).items() if k not in ("plan", "shape", "root", "report_dir")},
                       "plan": asdict(c.plan), "shape": asdict(c.shape) if c.shape else None,
                       "processes": len(self.cluster.processes)},
            "workload": c.workload, "dimension": self.workload.dimension,
            "spec": spec, "job_id": job_id, "startup_seconds": round(self.startup_seconds, 2), "mesh": mesh,
            "rounds": self.rounds, "events": self.events, "final_check": results, **extra,
        }

    def _wait_caught_up(self, job_id: str, timeout: float) -> dict[int, list[dict[str, Any]] | None]:
        """Until every live peer holds every round some peer holds (restarted peers fetch the rounds
        they missed from the others), or `timeout`; returns each live peer's stored results then."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_peers
            views = {p.index: v for p, v in zip(live, self.observe.results(live, job_id))}
            missing = rounds_missing(held_rounds(views))
            if not missing:
                return views
            if time.monotonic() > deadline:
                self.log(f"peers {sorted(missing)} still miss rounds after {timeout:.0f} s: {missing}")
                return views
            time.sleep(0.5)

    def _wait_joined(self, job_id: str, start_at: float) -> None:
        """Until the job's creator (peer 0) holds every peer's join, or the job starts."""
        assert self.cluster is not None
        n = self.config.n
        creator = self.cluster.peers[0]
        view: dict[str, Any] = {}
        while True:
            view = self.observe.job_view(creator, job_id) or view
            if len(view.get("members", ())) >= n or time.time() > start_at - 0.5:
                break
            time.sleep(0.3)
        self.members = sorted(bytes.fromhex(m) for m in view.get("members", ()))
        if len(self.members) < n:
            self.log(f"only {len(self.members)} of {n} joins reached the creator by the job start")
        self.log(f"{len(self.members)} members joined; {start_at - time.time():.1f} s before the first round")

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
            views = self.observe.job_views(live, job_id)
            holders |= {p.index for p, v in zip(live, views) if v and v.get("results", 0) > r}
            waiting = [p for p in self.live_peers if p.index not in holders]
            if not waiting:
                break
            if holders and self.observe.all_past(job_id, r, waiting):
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
        have = self.observe.results_of(job_id, r, [p for p in self.live_peers if p.index in holders])
        # Counters on /metrics move every 2 s: wait for this round's bytes to show.
        time.sleep(2.2)
        after = self.observe.snapshot()
        attempts = self.observe.attempts(job_id, r)
        missing = sorted(i for i in alive_at_open if self.cluster.process_of(i).alive() and i not in have
                         and self.cluster.process_of(i).started_at < opens_at)
        check = check_round(self.workload.check_result, have, missing)
        if check["verdict"] == "exact" and not self.workload.replayable:
            check["verdict"] = "noised"
        observed = self.workload.observe_round(self, r, sorted(have)) if have else None
        if observed is not None and observed["problems"]:
            check["mismatches"][self.workload.name] = observed["problems"]
            check["verdict"] = "mismatch"
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
            "first_result_at": min(arrivals) if arrivals else None,
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
            **({} if observed is None else {self.workload.name: observed}),
            "_snapshot": after,
        }


def _progress(observed: dict[str, Any] | None) -> str:
    """A workload's round figures for the progress line (training: the accuracy of the round's model)."""
    if not observed:
        return ""
    figures = [f"{k} {observed[k]:.3f}" for k in ("accuracy", "test_accuracy") if isinstance(observed.get(k), float)]
    return (", " + ", ".join(figures)) if figures else ""


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
