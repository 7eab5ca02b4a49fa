"""One running village node: builds its workers and wires them, as a house of small workers.

Start order (each step ready before the next): store and identity → membership (this node's
certificate, the registry, the revocation list) → libp2p node (with the certificate exchange on
every new connection) → the workers that need the network: round driver, result keeper and
exchange, bulletin, job runner, job sync → jobs from the store → control API. SIGINT/SIGTERM cancel
the whole tree; rounds in flight are abandoned with their keys (new attempts always make new keys),
the libp2p host is closed within its close timeout.

Who talks to whom (each arrow a worker handed to another, never a callback into this class):
bulletin → job runner (start a job, connect ahead) and result exchange (gossiped claims); job runner
→ membership, round driver, result exchange, bulletin (rosters); round driver → result keeper
(results, attempt events); result keeper → result exchange (tree push), bulletin (announce);
result exchange and job sync → membership (admit-if-unknown) and the keeper or bulletin.
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from protocol.errors import AuthenticationError, CryptoCheckFailed, InviteRefused, RemoteProtocolError
from villaged.api import serve_api
from villaged.bulletin import Bulletin
from villaged.config import DaemonConfig
from villaged.job_runner import JobRunner
from villaged.job_sync import JobSync
from villaged.blobs import BlobExchange
from villaged.capabilities import measure
from villaged.jobs import JobBook
from villaged.training import TrainingWorker
from villaged.membership import Membership
from villaged.metrics import Metrics
from villaged.node_control import Control
from villaged.result_keeping import ResultKeeper
from villaged.results import ResultExchange
from villaged.rounds import ROUND_PROTOCOL, RoundDriver
from villaged.store import Store
from villaged.transport import Node, TransportConfig, load_or_create_identity, member_id, open_node, signing_key

log = structlog.get_logger("villaged")

#: netsim's fault injection (villaged/rounds.py): the environment variable naming the failpoint file.
FAILPOINT_ENVIRONMENT = "VILLAGE_FAILPOINT_FILE"


@dataclass(frozen=True)
class Started:
    """What `Daemon.run` reports once the node is ready."""

    member_id: bytes
    addresses: list[str]
    api_url: str


def failpoint_file_from_environment() -> Path | None:
    """The failpoint file netsim names for a daemon process it starts, if any."""
    name = os.environ.get(FAILPOINT_ENVIRONMENT)
    return Path(name) if name else None


class Daemon(Control):
    """A village node. `run` serves until cancelled; the control API is `Control`'s methods."""

    def __init__(self, config: DaemonConfig, failpoint_file: Path | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keypair = load_or_create_identity(config.data_dir)
        self._key = signing_key(self._keypair)
        self.store = Store.open(config.data_dir / "village.db")
        self.membership = Membership(config, member_id(self._keypair), self.store, self.metrics)
        self.registry = self.membership.registry
        self.book = JobBook(self.store, self.membership.me, self.membership.is_member, config.participant_floor,
                            self.metrics)
        self.book.training = TrainingWorker(self.store, self.membership.me, self.metrics, measure(config))
        self._failpoint_file = failpoint_file
        self._byte_totals: dict[tuple[str, str], int] = {}  # transport counters already exported
        self._results: ResultExchange | None = None  # while the node runs
        super().__init__(self.membership, self.book, self.store, self.metrics)

    async def run(self, task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED) -> None:
        # Every line this node's tasks log names the node (several daemons may share a process: netsim).
        structlog.contextvars.bind_contextvars(node=self.me.hex()[:16])
        transport_config = TransportConfig(discovery_interval=self.config.discovery_interval)
        try:
            async with open_node(
                self._keypair, list(self.config.listen), list(self.config.bootstrap), transport_config,
                on_event=self._on_transport_event, on_peer_connected=self.membership.exchange_certificates,
                membership=self.registry,
            ) as node, trio.open_nursery() as nursery:
                await self._build_workers(node, nursery)
                endpoint = await nursery.start(
                    functools.partial(serve_api, host=self.config.api_host, port=self.config.api_port),
                    self, self.metrics, self.config.data_dir,
                )
                log.info("villaged_started", member=self.me.hex(), addresses=node.listen_addrs, api=endpoint.url)
                task_status.started(Started(self.me, node.listen_addrs, endpoint.url))
        finally:
            self.store.close()

    async def _build_workers(self, node: Node, nursery: trio.Nursery) -> None:
        """Build the workers that need the network, hand each the others it talks to, and start them."""
        membership, book, store, metrics = self.membership, self.book, self.store, self.metrics
        for member, addresses in store.peer_addresses().items():
            node.add_addresses(member, addresses)
        keeper = ResultKeeper(self._key, membership, book, store, metrics)
        driver = RoundDriver(node, self._key, book, nursery, keeper.on_coordinated_result, keeper.on_attempt_event,
                             failpoint_file=self._failpoint_file)
        node.serve(ROUND_PROTOCOL, functools.partial(self._serve_round_frame, driver))
        exchange = ResultExchange(node, nursery, membership, keeper, keeper, metrics, self.me)
        bulletin = Bulletin(self.config, self._key, membership, book, store, metrics)
        jobs = JobRunner(node, nursery, book, store, metrics, membership, driver, exchange, bulletin)
        keeper.attach(driver, exchange, bulletin)
        job_sync = JobSync(node, membership, bulletin, random.Random())  # spreads syncs in time (not for secrets)
        assert book.training is not None
        book.training.attach(BlobExchange(node, store, metrics).fetch)
        self._running(node, bulletin, jobs, driver)
        self._results = exchange
        await membership.start(node, nursery)
        await bulletin.start(node, nursery, jobs, exchange)
        for job in book.jobs.values():
            if job.state in ("pending", "running"):
                jobs.start(job)
        nursery.start_soon(job_sync.run)
        nursery.start_soon(self._track_peers, node)

    async def _serve_round_frame(self, driver: RoundDriver, peer: bytes, frame: bytes) -> bytes:
        """ROUND_PROTOCOL: a round message for the driver; a refusal is counted by its kind and logged."""
        self.membership.refuse_if_revoked(peer, "round")
        try:
            return await driver.handle_frame(peer, frame)
        except RemoteProtocolError as exc:
            if isinstance(exc, AuthenticationError):
                self.metrics.failed_authentications.inc()
            elif isinstance(exc, InviteRefused):
                self.metrics.invites_refused.labels(reason=exc.code).inc()
            elif isinstance(exc, CryptoCheckFailed):
                self.metrics.encryption_errors.labels(check=exc.check).inc()
            else:
                self.metrics.malformed_messages.labels(kind=exc.phase).inc()
            log.info("round_frame_rejected", peer=peer.hex()[:16], phase=exc.phase, reason=exc.reason)
            raise

    async def _track_peers(self, node: Node) -> None:
        """Export the member count and the transport's byte counters every few seconds."""
        while True:
            peers = node.connected_peers()
            self.metrics.nodes_active.set(1 + sum(1 for p in peers if self.membership.is_member(p)))
            stats = node.statistics()
            for direction, totals, counter in (("sent", stats.bytes_sent, self.metrics.bytes_sent),
                                               ("received", stats.bytes_received, self.metrics.bytes_received)):
                for protocol, total in totals.items():
                    seen = self._byte_totals.get((direction, protocol), 0)
                    counter.labels(protocol=protocol).inc(total - seen)
                    self._byte_totals[(direction, protocol)] = total
            await trio.sleep(2.0)

    def _on_transport_event(self, name: str, peer: bytes | None, **fields: object) -> None:
        if name.startswith(("oversize", "rate_limited", "malformed", "gossip_dropped")):
            self.metrics.malformed_messages.labels(kind=name).inc()
        if name == "inbound_refused":
            reason = str(fields["reason"])
            self.metrics.inbound_refused.labels(protocol=str(fields["protocol"]), reason=reason).inc()
            if reason in ("members only", "revoked"):
                self.metrics.failed_authentications.inc()
            if reason == "revoked":
                self.metrics.revoked_refusals.inc()
            log.info("inbound_refused", peer=peer.hex()[:16] if peer else None, **fields)
            return
        log.debug("transport_event", event_name=name, peer=peer.hex()[:16] if peer else None, **fields)


__all__ = ["Daemon", "Started", "failpoint_file_from_environment"]
