"""Real villaged processes on one machine: data dirs, certificates, start, stop, kill, restart.

Layout under one root directory (a fresh temp dir unless the caller gives one):

    root/admin.seed                  the fresh admin key of this village (netsim only)
    root/node007/                    one peer's data dir: identity, membership.cert, village.db,
                                     api.json / api.token (written by villaged), node.toml
    root/proc003.out, proc003.err    stdout / stderr of one OS process (one peer, or K peers
                                     with --per-process K, see netsim/multipeer.py)

Every peer gets a fixed listen address chosen before anything starts, so netsim knows every
peer's full /ip4/.../tcp/.../p2p/ID address up front and can hand each process a few of them as
bootstrap list: up to BOOTSTRAP_PEERS of those started before it, picked at random. The daemons do the rest, as they would on real machines: Kademlia
lookups add connections, a member dials the job's creator to join, and each round's coordinator
dials the participants it is not yet connected to with the addresses the roster carries. A full
mesh (N(N-1)/2 connections, each with its gossip and yamux upkeep in Python) is what kept 16
daemons on 2 cores from finishing a round.

Nothing here is left behind: every child runs under `setpriv --pdeathsig KILL`, so even a
SIGKILLed netsim takes its children with it, and `Cluster.close` (called from `finally`,
`atexit` and the SIGTERM/SIGHUP handlers installed by `netsim/main.py`) stops every process
still running and removes the root unless asked to keep it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cli.client import ApiClient
from cli.errors import CliError, DaemonNotRunning
from protocol.membership import AdminKeyPair, issue_certificate

#: How long one process may take from exec to a serving control API. Importing libp2p alone
#: takes about 1.5 s of CPU; with 100 processes starting on 2 cores they queue for the CPU.
START_TIMEOUT = 120.0
#: Bootstrap addresses each peer starts with (see the module docstring).
BOOTSTRAP_PEERS = 4
#: SIGTERM first (villaged closes its libp2p host), SIGKILL after this.
STOP_GRACE = 8.0
#: How long netsim waits for one control API answer. villagectl waits 10 s, but a daemon sharing
#: 2 cores with hundreds of others can take longer without being wedged.
API_TIMEOUT = 30.0


@dataclass
class Peer:
    """One village member: its data dir, identity and (once started) API."""

    index: int
    data_dir: Path
    member_id: bytes
    peer_id: str
    host: str  # listen IP (127.0.0.1, or the peer's own address in a network namespace)
    port: int
    serving: ApiClient | None = None  # set once its control API answers (see Cluster.wait_ready)

    @property
    def api(self) -> ApiClient:
        """villagectl's client for this peer's control API; `DaemonNotRunning` before it serves."""
        if self.serving is None:
            raise DaemonNotRunning(f"{self.name} does not serve its control API yet")
        return self.serving

    @property
    def address(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def name(self) -> str:
        return f"node{self.index:03d}"


@dataclass
class Process:
    """One OS process running one or more peers."""

    index: int
    peers: list[int]
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0  # wall time of the latest start
    noted_death: int = 0  # the start whose death is already in `deaths`
    deaths: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """N peers in `processes` OS processes; see the module docstring."""

    def __init__(
        self,
        n: int,
        root: Path | None = None,
        per_process: int = 1,
        keep: bool = False,
        addresses: list[str] | None = None,
        wrap: list[list[str]] | None = None,
        api_hosts: list[str] | None = None,
        log_level: str = "info",
    ) -> None:
        """`addresses`/`api_hosts`/`wrap` (one per process) place peers in network namespaces."""
        if n < 2:
            raise ValueError("a village needs at least 2 peers")
        self.n = n
        self.per_process = max(1, per_process)
        self.keep = keep
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="netsim-"))
        self.log_level = log_level
        self.peers: list[Peer] = []
        self.processes: list[Process] = [
            Process(i, list(range(i * self.per_process, min(n, (i + 1) * self.per_process))))
            for i in range((n + self.per_process - 1) // self.per_process)
        ]
        self._addresses = addresses
        self._wrap = wrap
        self._api_hosts = api_hosts
        self.admin = AdminKeyPair(os.urandom(32))
        self.closed = False

    # --- preparing ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Identities, certificates and fixed listen addresses for every peer."""
        from villaged.transport import load_or_create_identity, member_id, peer_id_from_member_id  # imports libp2p

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "admin.seed").write_bytes(self.admin.seed)
        ports = free_ports(self.n) if self._addresses is None else [4001] * self.n
        now = int(time.time())
        for i in range(self.n):
            data_dir = self.root / f"node{i:03d}"
            data_dir.mkdir(parents=True, exist_ok=True)
            me = member_id(load_or_create_identity(data_dir))
            cert = issue_certificate(self.admin.signing_key, self.admin.village_id, me, now - 60, now + 7 * 86400)
            (data_dir / "membership.cert").write_bytes(cert.encode())
            host = "127.0.0.1" if self._addresses is None else self._addresses[self.process_of(i).index]
            self.peers.append(Peer(i, data_dir, me, str(peer_id_from_member_id(me)), host, ports[i]))

    def process_of(self, peer: int) -> Process:
        return self.processes[peer // self.per_process]

    def live_peers(self) -> list[Peer]:
        """The peers whose process is running now."""
        return [p for p in self.peers if self.process_of(p.index).alive()]

    def by_member(self, member_hex: str) -> Peer | None:
        for peer in self.peers:
            if peer.member_id.hex() == member_hex:
                return peer
        return None

    def _write_config(self, peer: Peer, bootstrap: list[str]) -> Path:
        api_host = "127.0.0.1" if self._api_hosts is None else self._api_hosts[self.process_of(peer.index).index]
        lines = [
            f'data_dir = "{peer.data_dir}"',
            f'listen = ["/ip4/{peer.host}/tcp/{peer.port}"]',
            "bootstrap = [" + ", ".join(f'"{b}"' for b in bootstrap) + "]",
            f'api_host = "{api_host}"',
            'join_policy = "auto"',
            "participant_floor = 2",  # netsim's villages test rounds of any size, down to 2
            f'log_level = "{self.log_level}"',
            "discovery_interval = 5.0",
            "announce_interval = 1.0",
        ]
        path = peer.data_dir / "node.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- processes ---------------------------------------------------------------------------------

    def start(self, batch: int = 16) -> None:
        """Start every process; each bootstraps from a few peers started before it."""
        for first in range(0, len(self.processes), batch):
            group = self.processes[first:first + batch]
            for process in group:
                self.start_process(process, bootstrap_upto=process.peers[0])
            self.wait_ready(group)

    def bootstrap_for(self, peer: int, candidates: list[int]) -> list[int]:
        """Up to BOOTSTRAP_PEERS of `candidates`, the same picks on every call. Not always peer 0: it
        creates every netsim job, and a node everyone bootstraps from also answers everyone's lookups."""
        return sorted(random.Random(peer).sample(candidates, min(BOOTSTRAP_PEERS, len(candidates))))

    def start_process(self, process: Process, bootstrap_upto: int | None = None) -> None:
        """(Re)start one process. Bootstrap candidates: peers of other processes below `bootstrap_upto`,
        or all others; in the first process, the peers before each one (with none, the peers of the
        first process would only ever be dialed, and in net-300 some never were)."""
        if process.alive():
            raise RuntimeError(f"process {process.index} is already running")
        limit = self.n if bootstrap_upto is None else bootstrap_upto
        candidates = [i for i in range(limit) if i not in process.peers]
        configs = []
        for index in process.peers:
            peer = self.peers[index]
            (peer.data_dir / "api.json").unlink(missing_ok=True)  # readiness = a fresh api.json
            peer.serving = None
            own = candidates or [i for i in process.peers if i < index]
            bootstrap = [self.peers[i].address for i in self.bootstrap_for(index, own)]
            configs.append(self._write_config(peer, bootstrap))
        if self.per_process == 1:
            command = [str(Path(sys.executable).with_name("villaged")), "start", "--config", str(configs[0])]
        else:
            command = [sys.executable, "-m", "netsim.multipeer", *map(str, configs)]
        wrap = self._wrap[process.index] if self._wrap else []
        command = ["setpriv", "--pdeathsig", "KILL", "--", *wrap, *command]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "VILLAGE_FAILPOINT_FILE": str(self.failpoint_file(process))}
        tag = f"proc{process.index:03d}"
        with open(self.root / f"{tag}.out", "ab") as out, open(self.root / f"{tag}.err", "ab") as err:
            process.popen = subprocess.Popen(
                command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=environment, cwd=self.root,
                start_new_session=True,  # Ctrl-C reaches netsim only; netsim stops the children itself
            )
        process.starts += 1
        process.started_at = time.time()

    def failpoint_file(self, process: Process) -> Path:
        """Where `arm` puts the process's failpoint; villaged reads it as each round machine starts."""
        return self.root / f"proc{process.index:03d}.failpoint"

    def arm(self, process: Process, failpoint: str | None) -> None:
        """Arm (ROLE:PHASE) or, with None, disarm the villaged failpoint of a process, running or not."""
        path = self.failpoint_file(process)
        if failpoint is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(failpoint + "\n")

    def wait_ready(self, processes: list[Process], timeout: float = START_TIMEOUT) -> None:
        """Block until every peer of `processes` serves its control API."""
        deadline = time.monotonic() + timeout
        pending = [self.peers[i] for p in processes for i in p.peers]
        while pending:
            for peer in list(pending):
                process = self.process_of(peer.index)
                if not process.alive():
                    err = (self.root / f"proc{process.index:03d}.err").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{peer.name} (process {process.index}) exited during start-up:\n{err}")
                try:
                    info = json.loads((peer.data_dir / "api.json").read_text())
                    if info.get("pid") != process.pid:
                        continue
                    peer.serving = replace(ApiClient.discover(peer.data_dir), timeout=API_TIMEOUT)
                except (OSError, ValueError, CliError):
                    continue
                pending.remove(peer)
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} peers not ready after {timeout:.0f} s, e.g. {pending[0].name}")
                time.sleep(0.1)

    def kill(self, process: Process, sig: int = signal.SIGKILL, reason: str = "") -> None:
        if process.alive():
            assert process.popen is not None
            process.popen.send_signal(sig)
            process.popen.wait()
            process.noted_death = process.starts
            process.deaths.append({"at": time.time(), "signal": signal.Signals(sig).name, "reason": reason})

    def reap(self) -> list[Process]:
        """Processes that died by themselves since the last call (failpoints SIGKILL their process)."""
        dead = []
        for process in self.processes:
            if process.popen is None or process.popen.poll() is None or process.noted_death == process.starts:
                continue
            process.noted_death = process.starts
            code = process.popen.returncode
            process.deaths.append({"at": time.time(), "signal": signal.Signals(-code).name if code < 0 else f"exit {code}",
                                   "reason": "died by itself"})
            dead.append(process)
        return dead

    def close(self) -> None:
        """Stop everything still running (SIGTERM, then SIGKILL) and remove the root unless kept."""
        if self.closed:
            return
        self.closed = True
        live = [p for p in self.processes if p.alive()]
        for process in live:
            assert process.popen is not None
            try:
                process.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for process in live:
            assert process.popen is not None
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
