"""One running village node: wires transport, membership, jobs, rounds, results, storage and the API.

Start order (each step ready before the next): store and identity → membership certificate →
libp2p node (with the certificate exchange on every new connection) → stream handlers and gossip
subscriptions → jobs from the store → control API. SIGINT/SIGTERM cancel the whole tree; rounds
in flight are abandoned with their keys (new attempts always make new keys), the libp2p host is
closed within its close timeout.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import structlog
import trio

from protocol.announcements import (
    Announcement, CancelAnnouncement, JobAnnouncement, JoinAnnouncement, ResultAnnouncement, RosterAnnouncement,
    RosterEntry, SignedAnnouncement,
    MAX_ANNOUNCEMENT_BYTES, MAX_ROSTER_ADDRESSES, aggregate_digest, open_announcement, sign_announcement,
)
from protocol.election import coordinator_for
from protocol.errors import (AuthenticationError, CryptoCheckFailed, InviteRefused, MemberRevoked, ParameterError,
                             RemoteProtocolError)
from protocol.events import RoundResult
from protocol.evidence import VerifiedResult, announcement_of, check_claim, verify_result
from protocol.fanout import tree_order
from protocol.jobs import JobSpec
from protocol.kinds import KINDS, InputError, dequantize_total, describe_input, out_of_range
from protocol.membership import MemberRegistry, MembershipCertificate, decode_certificate, verify_revocations
from protocol.policy import InputPolicy
from protocol.priors import validate_round
from protocol.spec_config import translate_job
from protocol.wire import RoundContext
from villaged.api import serve_api
from villaged.config import DaemonConfig
from villaged.control import Conflict, InvalidRequest, NotFound
from villaged.errors import ConfigError, RemoteRefusal, TransportError
from villaged.job_sync import JobSync, JobSyncHooks
from villaged.jobs import Job, JobBook, JobHooks, run_job
from villaged.logging import log_round
from villaged.metrics import Metrics
from villaged.results import ResultExchange, ResultHooks
from villaged.rounds import ROUND_PROTOCOL, RoundDriver
from villaged.store import ResultRecord, RoundRecord, Store, StoreError
from villaged.transport import (
    Node,
    TransportConfig,
    load_or_create_identity,
    member_id,
    open_node,
    peer_id_from_member_id,
    signing_key,
)
from villaged.tree_push import push_down

log = structlog.get_logger("villaged")

MEMBERSHIP_PROTOCOL = "/village/membership/1.0.0"
ANNOUNCE_PROTOCOL = "/village/announce/1.0.0"
#: How long a coordinator waits for a roster member it is not connected to before leaving it out,
#: plus this much per member it has to dial, at most this many dials at once.
_PROBE_TIMEOUT = 2.0
_PROBE_TIMEOUT_PER_DIAL = 0.05
_CONCURRENT_DIALS = 32
#: Members connect to an upcoming coordinator at a random moment within this much per roster member,
#: and give that dial this long: nobody waits for it, and one cut off mid-handshake wasted both ends'
#: CPU (with the probe's 2 s, a loaded net-300 coordinator still had to dial half the roster itself).
_CONNECT_AHEAD_SPREAD = 0.02
_CONNECT_AHEAD_TIMEOUT = 15.0
#: A member's join waits a random part (up to this share) of the time left before the job starts,
#: and each attempt waits this long for the creator's answer. A creator taking 100 joins (most of
#: them new connections) within 40 % of the window answered half of them after the 10 s the
#: attempts then waited, and every retry was one more handshake for it to do.
_JOIN_SPREAD = 0.6
_JOIN_TIMEOUT = 20.0
#: A new connection's certificate exchange waits a random moment in this range (seconds).
_CERTIFICATE_EXCHANGE_DELAY = (1.0, 3.0)
#: A running job (with its roster) is re-announced this often, for members that missed it or restarted.
_RUNNING_ANNOUNCE_PERIOD = 60.0
#: The certificate file is looked at this often (a renewed one is picked up), and a certificate that
#: expires within `_CERTIFICATE_WARNING` is warned about (in the log at most every `_WARNING_GAP`).
_CERTIFICATE_CHECK_PERIOD = 60.0
_CERTIFICATE_WARNING = 86_400.0
_WARNING_GAP = 3600.0


@dataclass(frozen=True)
class Started:
    """What `Daemon.run` reports once the node is ready."""

    member_id: bytes
    addresses: list[str]
    api_url: str


def _failpoint_file() -> Path | None:
    """netsim's fault injection (villaged/rounds.py): the file named by VILLAGE_FAILPOINT_FILE, if set."""
    name = os.environ.get("VILLAGE_FAILPOINT_FILE")
    return Path(name) if name else None


class Daemon:
    """A village node. `run` serves until cancelled; the public async methods are the control API."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self._started_at = time.time()
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keypair = load_or_create_identity(config.data_dir)
        self.me = member_id(self._keypair)
        self._key = signing_key(self._keypair)
        self._certificate = self._load_certificate()
        cert = decode_certificate(self._certificate)
        self.registry = MemberRegistry(cert.admin_public_key, cert.village_id)
        self.registry.admit(self._certificate, time.time(), member_id=self.me)
        self.store = Store.open(config.data_dir / "village.db")
        self._load_revocations()
        for record in self.store.members():
            try:
                self.registry.admit(record.certificate, time.time(), member_id=record.member_id)
            except RemoteProtocolError:
                continue  # expired or revoked since: forgotten
        self.book = JobBook(self.store, self.me, self._is_member, config.participant_floor, self.metrics)
        self._topic = f"village/{cert.village_id.hex()}"
        self._revocations_topic = f"{self._topic}/revocations"
        self._certificate_warned_at = 0.0
        self._node: Node | None = None
        self._driver: RoundDriver | None = None
        self._results: ResultExchange | None = None
        self._nursery: trio.Nursery | None = None
        self._running_jobs: set[str] = set()
        self._byte_totals: dict[tuple[str, str], int] = {}  # transport counters already exported
        self._joining: set[str] = set()  # jobs whose join is on its way to the creator
        self._jitter = random.Random()  # spreads joins, dials and fetches in time (not for secrets)
        self._dialing_ahead: set[bytes] = set()  # coordinators this node will dial before their round
        # Signed job and roster announcements (other creators' as they arrived, this node's own as it
        # signed them): handed on by job sync.
        self._job_records: dict[str, bytes] = {}
        self._roster_records: dict[str, bytes] = {}

    def _load_certificate(self) -> bytes:
        path = self.config.certificate_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(path, "certificate", "missing: ask the village admin for one (`villagectl village admit "
                                                   f"{self.me.hex()}`) and save it here") from None
        try:
            cert = decode_certificate(data)
        except RemoteProtocolError as exc:
            raise ConfigError(path, "certificate", exc.reason) from None
        pinned = self.config.admin_public_key
        if pinned is not None and cert.admin_public_key != bytes.fromhex(pinned):
            raise ConfigError(path, "certificate", "signed by a different admin key than the configured admin_public_key")
        if cert.member_id != self.me:
            raise ConfigError(path, "certificate", f"issued for member {cert.member_id.hex()[:16]}, this node is {self.me.hex()[:16]}")
        if not cert.is_valid_at(time.time()):
            raise ConfigError(path, "certificate", "expired or not yet valid: ask the admin to re-admit this node")
        return data

    def _is_member(self, member: bytes) -> bool:
        return self.registry.is_member(member, time.time())

    def _own_certificate(self) -> bytes:
        return self._certificate

    # --- running ----------------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED) -> None:
        # Every line this node's tasks log names the node (several daemons may share a process: netsim).
        structlog.contextvars.bind_contextvars(node=self.me.hex()[:16])
        transport_config = TransportConfig(discovery_interval=self.config.discovery_interval)
        try:
            async with open_node(
                self._keypair, list(self.config.listen), list(self.config.bootstrap), transport_config,
                on_event=self._on_transport_event, on_peer_connected=self._exchange_certificates,
                membership=self.registry,
            ) as node, trio.open_nursery() as nursery:
                self._node, self._nursery = node, nursery
                self._driver = RoundDriver(node, self._key, self.book, nursery, self._on_coordinated_result,
                                           self._on_attempt_event, failpoint_file=_failpoint_file())
                for member, addresses in self.store.peer_addresses().items():
                    node.add_addresses(member, addresses)
                node.serve(ROUND_PROTOCOL, self._handle_round_frame)
                node.serve(MEMBERSHIP_PROTOCOL, self._handle_certificate, max_request=1024, max_request_nonmember=1024)
                self._results = ResultExchange(node, nursery, ResultHooks(
                    is_member=self._is_member, plausible=self._plausible_result, verify=self._verify_result,
                    roster=self.book.round_members,
                    held_attempt=self.store.result_attempt,
                    stored=self._stored_result, store=self._store_fetched_result,
                    attempt_window=self._attempt_window, admit=self._admit, certificate=self._own_certificate),
                    self.metrics, self.me)
                # Joins and rosters come from members whose certificate may not have reached this node yet.
                node.serve(ANNOUNCE_PROTOCOL, self._handle_announcement, max_request=MAX_ANNOUNCEMENT_BYTES,
                           max_request_nonmember=MAX_ANNOUNCEMENT_BYTES)
                job_sync = JobSync(node, JobSyncHooks(
                    active_jobs=self._active_jobs, roster_overdue=self._roster_overdue, records_for=self._records_for,
                    accept=self._accept_synced,
                    is_member=self._is_member, admit=self._admit, certificate=self._own_certificate,
                    revocations=self._held_revocations, accept_revocations=self._accept_synced_revocations),
                    self._jitter)
                channel = await node.subscribe(self._topic, self._validate_gossip)
                nursery.start_soon(self._consume_gossip, channel)
                revocations = await node.subscribe(self._revocations_topic, self._validate_revocations)
                nursery.start_soon(self._consume_revocations, revocations)
                nursery.start_soon(self._watch_certificate)
                for job in self.book.jobs.values():
                    if job.state in ("pending", "running"):
                        self._start_job(job)
                nursery.start_soon(self._announce_pending)
                nursery.start_soon(job_sync.run)
                nursery.start_soon(self._track_peers)
                endpoint = await nursery.start(
                    functools.partial(serve_api, host=self.config.api_host, port=self.config.api_port),
                    self, self.metrics, self.config.data_dir,
                )
                log.info("villaged_started", member=self.me.hex(), addresses=node.listen_addrs, api=endpoint.url)
                task_status.started(Started(self.me, node.listen_addrs, endpoint.url))
        finally:
            self.store.close()

    def _start_job(self, job: Job) -> None:
        if job.id in self._running_jobs or self._nursery is None or self._driver is None:
            return
        self._running_jobs.add(job.id)
        self._nursery.start_soon(self._run_job, job)

    async def _run_job(self, job: Job) -> None:
        assert self._driver is not None
        try:
            hooks = JobHooks(reachable=self._reachable, has_result=self._has_result, fetch_result=self._fetch_result,
                             on_round_end=self._on_round_end, announce_roster=self._announce_roster,
                             connect_ahead=self._connect_ahead)
            await run_job(job, self.book, self._driver, self.store, hooks)
        except Exception as exc:  # a bug in one job must not stop the daemon and its other jobs
            log.exception("job_crashed", job=job.id)
            self.book.finish(job.id, f"internal error on this node: {type(exc).__name__}: {exc}", "failed")
        finally:
            self._running_jobs.discard(job.id)

    async def _reachable(self, members: list[bytes], timeout: float | None = None) -> set[bytes]:
        """Members connected now with a known certificate, plus those that answer a certificate
        exchange within `timeout` (by default a few seconds; dialed with the roster's addresses if
        need be)."""
        assert self._node is not None
        connected = {m for m in self._node.connected_peers() if self._is_member(m)}
        answered = {m for m in members if m in connected}
        unconnected = [m for m in members if m not in connected]
        if timeout is None:  # dials queue for the CPU when many are new (a Noise handshake in Python each)
            timeout = _PROBE_TIMEOUT + _PROBE_TIMEOUT_PER_DIAL * len(unconnected)
        limiter = trio.CapacityLimiter(_CONCURRENT_DIALS)

        async def probe(member: bytes) -> None:
            assert self._node is not None
            async with limiter:
                try:
                    reply = await self._node.request(member, MEMBERSHIP_PROTOCOL, self._certificate, timeout=timeout,
                                                     max_reply=1024)
                    self._admit(reply, member)
                    answered.add(member)
                except (TransportError, RemoteProtocolError):
                    pass

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for member in unconnected:
                    nursery.start_soon(probe, member)
        return answered

    def _connect_ahead(self, job: Job, round_number: int) -> None:
        """Connect to the coordinator the election names first for `round_number` before it opens, so
        that the round does not start with its coordinator dialing hundreds of members (with 300
        members on 2 cores, its probe reached only 31 to 87 of them in time). Each member dials once,
        at a random moment in the first three quarters of the time left before the round (at least a
        spread of a few ms per member), so that one process is not handed every handshake at once.
        Called when the roster arrives (round 0) and when the previous round is over on this node (a
        restarted node too): 300 handshakes with the next coordinator while a round ran slowed that
        round down. Rounds that run back to back leave no gap, so there it is called as the previous
        round opens."""
        if job.roster is None or round_number >= job.spec.rounds or self._nursery is None or self.me not in job.roster:
            return
        coordinator = coordinator_for(job.id, round_number, 0, sorted(job.roster))
        if (coordinator == self.me or self._node is None or coordinator in self._dialing_ahead
                or coordinator in self._node.connected_peers()):
            return
        spread = max(_CONNECT_AHEAD_SPREAD * len(job.roster), 0.75 * (job.round_opens_at(round_number) - time.time()))
        self._dialing_ahead.add(coordinator)
        self._nursery.start_soon(self._dial_later, coordinator, spread)

    async def _dial_later(self, member: bytes, delay_limit: float) -> None:
        try:
            await trio.sleep(self._jitter.uniform(0, delay_limit))
            await self._reachable([member], timeout=_CONNECT_AHEAD_TIMEOUT)
        finally:
            self._dialing_ahead.discard(member)

    def _attempt_window(self, job_id: str) -> float:
        job = self.book.jobs.get(job_id)
        return job.spec.attempt_window if job is not None else 0.0

    def _has_result(self, job_id: str, round_number: int) -> bool:
        return round_number in self.store.result_rounds(job_id)

    def _stored_result(self, job_id: str, round_number: int) -> tuple[bytes, bytes, tuple[bytes, ...]] | None:
        """The coordinator's signed announcement, the aggregate and the votes, as this node stored them."""
        found = self.store.get_result(job_id, round_number)
        return None if found is None else (found.signed_announcement, found.aggregate, found.votes)

    async def _fetch_result(self, job: Job, round_number: int) -> bool:
        assert self._results is not None
        return await self._results.fetch_missed(list(job.roster or ()), job.id, round_number)

    async def _on_round_end(self, job: Job, round_number: int, outcome: str) -> None:
        if outcome != "completed":
            self.metrics.rounds_aborted.labels(reason="gave_up").inc()
            log.warning("round_given_up", job=job.id, round=round_number, reason=outcome)

    async def _track_peers(self) -> None:
        assert self._node is not None
        while True:
            peers = self._node.connected_peers()
            self.metrics.nodes_active.set(1 + sum(1 for p in peers if self._is_member(p)))
            stats = self._node.statistics()
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

    # --- membership -------------------------------------------------------------------------------

    async def _exchange_certificates(self, peer: bytes) -> None:
        """On a new connection, learn the peer's certificate unless it is known already (a roster or an
        announcement brought it): a coordinator connecting to 100 members ahead of a round otherwise
        starts 200 certificate exchanges at once. It waits a moment first, because a new connection
        often carries its certificate right away: a member joining a job dials the creator to hand
        over its signed join, certificate included, and a creator that asked each of them for it as
        well made 100 joins cost 200 requests."""
        assert self._node is not None
        await trio.sleep(self._jitter.uniform(*_CERTIFICATE_EXCHANGE_DELAY))
        if self._is_member(peer) or peer not in self._node.connected_peers():
            return
        try:
            reply = await self._node.request(peer, MEMBERSHIP_PROTOCOL, self._certificate, timeout=10.0, max_reply=1024)
            self._admit(reply, peer)
        except (TransportError, RemoteProtocolError) as exc:
            log.info("certificate_exchange_failed", peer=peer.hex()[:16], reason=str(exc))

    async def _handle_certificate(self, peer: bytes, request: bytes) -> bytes:
        self._admit(request, peer)
        return self._certificate

    def _admit(self, certificate: bytes, peer: bytes) -> None:
        """Check a member's certificate and keep it (in the store too, unless it is the one held already)."""
        cert = self._verify_certificate(certificate, peer)
        if cert is not None:
            self.store.put_member(peer, certificate, cert.expires_at)

    def _verify_certificate(self, certificate: bytes, peer: bytes) -> MembershipCertificate | None:
        """Admit `certificate` for `peer` to the registry; None if it is the one already held (nothing to
        store). Raises RemoteProtocolError (and counts an authentication failure) if it is not valid."""
        held = self.registry.certificate(peer, time.time())
        if held is not None and held.encode() == certificate:
            return None
        try:
            return self.registry.admit(certificate, time.time(), member_id=peer)
        except RemoteProtocolError as exc:
            self.metrics.failed_authentications.inc()
            if isinstance(exc, MemberRevoked):
                self.metrics.revoked_refusals.inc()
            log.warning("certificate_rejected", peer=peer.hex()[:16], reason=exc.reason)
            raise

    def _refuse_if_revoked(self, peer: bytes, phase: str) -> None:
        """Raise MemberRevoked (counted, logged) if `peer` is on the revocation list: for the handlers
        whose own membership check would give a vaguer reason."""
        if self.registry.revocation(peer) is None:
            return
        self.metrics.failed_authentications.inc()
        self.metrics.revoked_refusals.inc()
        log.warning("revoked_member_refused", peer=peer.hex()[:16], phase=phase)
        raise MemberRevoked(peer, phase, "member is revoked by the village admin")

    # --- revocation -------------------------------------------------------------------------------

    def _load_revocations(self) -> None:
        """Adopt the revocation list kept in the store (before any stored certificate is admitted)."""
        stored = self.store.revocation_list()
        if stored is None:
            return
        try:
            self.registry.apply_revocations(stored)
        except RemoteProtocolError as exc:
            raise ConfigError(self.store.path, "revocation_list", exc.reason) from None

    def _held_revocations(self) -> tuple[int, bytes] | None:
        held = self.registry.revocations
        return None if held is None else (held.serial, held.encode())

    def _adopt_revocations(self, listed: bytes, source: str) -> bool:
        """Adopt a revocation list newer than the held one: keep it in the store (it survives a restart),
        and close the connections of the members it revokes. False if it is not newer. Raises
        RemoteProtocolError (counted as malformed) if the list is bad or not this village admin's."""
        try:
            adopted = self.registry.apply_revocations(listed)
        except RemoteProtocolError as exc:
            self.metrics.malformed_messages.labels(kind="revocations").inc()
            log.warning("revocations_rejected", source=source, reason=exc.reason)
            raise
        if adopted is None:
            return False
        self.store.put_revocation_list(listed)
        log.warning("revocations_adopted", serial=adopted.serial, revoked=[r.member_id.hex()[:16] for r in adopted.revoked],
                    source=source)
        if self._node is not None and self._nursery is not None:
            connected = set(self._node.connected_peers())
            for entry in adopted.revoked:
                if entry.member_id in connected:
                    self._nursery.start_soon(self._node.disconnect, entry.member_id)
        return True

    def _accept_synced_revocations(self, peer: bytes, listed: bytes) -> bool:
        return self._adopt_revocations(listed, f"job sync with {peer.hex()[:16]}")

    def _validate_revocations(self, sender: bytes, data: bytes) -> bool:
        """Relay only this village admin's lists, the one held or newer (an older one is no news; the one
        held passes, for gossipsub checks a node's own publication too)."""
        try:
            listed = verify_revocations(data, self.registry.admin_public_key, self.registry.village_id)
        except RemoteProtocolError:
            self.metrics.malformed_messages.labels(kind="revocations").inc()
            return False
        held = self.registry.revocations
        return held is None or listed.serial >= held.serial

    async def _consume_revocations(self, channel: trio.MemoryReceiveChannel[tuple[bytes, bytes]]) -> None:
        async for sender, data in channel:
            try:
                self._adopt_revocations(data, f"gossip from {sender.hex()[:16]}")
            except RemoteProtocolError:
                continue  # counted and logged

    async def publish_revocations(self, listed: bytes) -> dict[str, object]:
        """Control API: adopt an admin-signed revocation list and spread it (gossip; job sync hands it to
        nodes gossip missed)."""
        try:
            adopted = self._adopt_revocations(listed, "control api")
        except RemoteProtocolError as exc:
            raise InvalidRequest("revocations", exc.reason) from None
        held = self.registry.revocations
        assert held is not None
        if not adopted:
            raise Conflict(f"this node holds revocation list {held.serial} already; sign a newer one (serial "
                           f"{held.serial + 1}) with: villagectl village revoke")
        if self._node is not None and len(listed) <= self._node.max_gossip_size:
            await self._node.publish(self._revocations_topic, listed)
        return {"serial": held.serial, "revoked": [r.member_id.hex() for r in held.revoked]}

    # --- own certificate --------------------------------------------------------------------------

    async def _watch_certificate(self) -> None:
        """Pick up a renewed certificate file, and warn while the one in use expires within a day."""
        while True:
            await trio.sleep(_CERTIFICATE_CHECK_PERIOD)
            try:
                self._reload_certificate()
            except ConfigError as exc:
                log.warning("certificate_not_reloaded", path=str(exc.path), reason=exc.reason)
            warning = self._certificate_warning()
            if warning is not None and time.time() - self._certificate_warned_at >= _WARNING_GAP:
                self._certificate_warned_at = time.time()
                log.warning("certificate_expiring", detail=warning)

    def _reload_certificate(self) -> bool:
        """Use the certificate file if it holds a newer certificate for this node; True if it did.
        Raises ConfigError (naming the file) if the file is bad, expired, or this node is revoked."""
        data = self._load_certificate()
        if data == self._certificate:
            return False
        try:
            held = self.registry.admit(data, time.time(), member_id=self.me)
        except RemoteProtocolError as exc:
            raise ConfigError(self.config.certificate_path, "certificate", exc.reason) from None
        if held.encode() != data:
            raise ConfigError(self.config.certificate_path, "certificate", "older than the certificate in use")
        self._certificate = data
        for job in self.book.jobs.values():  # this node's own records carry its certificate: sign them anew
            if job.creator == self.me:
                self._job_records.pop(job.id, None)
                self._roster_records.pop(job.id, None)
        log.info("certificate_renewed", expires_at=held.expires_at)
        return True

    def _certificate_warning(self) -> str | None:
        expires_at = decode_certificate(self._certificate).expires_at
        left = expires_at - time.time()
        if left >= _CERTIFICATE_WARNING:
            return None
        return (f"this node's certificate expires in {max(left, 0) / 3600:.1f} h: ask the admin to renew it "
                f"(villagectl village admit {self.me.hex()}), save it as {self.config.certificate_path}, "
                "and run villagectl village reload-certificate")

    async def reload_certificate(self) -> dict[str, object]:
        """Control API: re-read the certificate file (a renewed certificate) without a restart."""
        try:
            renewed = self._reload_certificate()
        except ConfigError as exc:
            raise InvalidRequest("certificate", f"{exc.path}: {exc.reason}") from None
        return {"renewed": renewed, "expires_at": decode_certificate(self._certificate).expires_at}

    # --- rounds -----------------------------------------------------------------------------------

    async def _handle_round_frame(self, peer: bytes, frame: bytes) -> bytes:
        assert self._driver is not None
        self._refuse_if_revoked(peer, "round")
        try:
            return await self._driver.handle_frame(peer, frame)
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

    def _on_attempt_event(self, context: RoundContext, event: str, fields: dict[str, object]) -> None:
        log.info(event, job=context.job_id, round=context.round, attempt=context.attempt, **fields)
        members = self.book.round_members(context.job_id) if event == "client_done" else None
        if members and self._results is not None:  # unmasked: the result is due, make sure it comes
            self._results.expect(context.job_id, context.round,
                                 coordinator_for(context.job_id, context.round, context.attempt, members))
        if event == "coordinator_aborted":
            self.metrics.rounds_aborted.labels(reason=str(fields.get("phase", "unknown"))).inc()
            self.store.record_round(RoundRecord(context.job_id, context.round, context.attempt, self.me, "aborted",
                                                time.time(), ended_at=time.time(), abort_reason=str(fields.get("reason"))))

    async def _on_coordinated_result(self, result: RoundResult) -> None:
        """This node coordinated a round to the end: store (before announcing), then publish."""
        assert self._node is not None
        context = result.context
        announcement, words = announcement_of(result)
        record = sign_announcement(announcement, self._key, self._certificate)
        try:  # the check every other node makes: a result that fails it would be refused everywhere
            verified = self._verify_result(open_announcement(record), words, result.votes)
        except RemoteProtocolError as exc:
            log.error("own_result_unverifiable", job=context.job_id, round=context.round, attempt=context.attempt,
                      reason=exc.reason)
            return
        superseded = self._store_result(verified, record) == "superseded"
        participants = len(result.survivors) + len(result.dropped)
        self.metrics.rounds_completed.inc()
        self.metrics.participation_rate.set(len(result.survivors) / participants)
        self.metrics.round_duration_seconds.observe(sum(result.phase_seconds.values()))
        self.store.record_round(RoundRecord(context.job_id, context.round, context.attempt, self.me, "completed",
                                            time.time() - sum(result.phase_seconds.values()), participants=result.survivors,
                                            dropped=result.dropped, phase_timings=dict(result.phase_seconds),
                                            ended_at=time.time()))
        log_round(log, "round_completed", job=context.job_id, round=context.round, attempt=context.attempt,
                  coordinator=self.me, participants=result.survivors, phase_timings=result.phase_seconds,
                  dropped=len(result.dropped))
        if superseded:  # an earlier attempt of this round completed too, and its result is the round's
            log.info("result_superseded", job=context.job_id, round=context.round, attempt=context.attempt)
            return
        assert self._results is not None
        self._results.push(verified, record)
        await self._gossip(record, "result")

    def _store_result(self, result: VerifiedResult, record: bytes) -> str:
        """Store a result that passed `_verify_result` (the type says so): kept if it is the round's
        first, or of a lower attempt than the one stored (`Store.put_result`)."""
        announcement = result.announcement
        stored = self.store.put_result(ResultRecord(
            job_id=announcement.job_id, round=announcement.round, attempt=announcement.attempt,
            coordinator=result.coordinator, aggregate=result.aggregate, participants=announcement.survivors,
            dropped=announcement.dropped, signed_announcement=record, received_at=time.time(), votes=result.votes,
        ))
        if stored == "stored":
            self._export_prior_metrics(announcement.job_id)
        if self._driver is not None:
            tracker = self._driver.tracker(announcement.job_id, announcement.round)
            tracker.result = True
            tracker.changed()
        return stored

    def _export_prior_metrics(self, job_id: str) -> None:
        """After a routing-priors round: the spec's validation metrics as gauges."""
        job = self.book.jobs.get(job_id)
        if job is None or job.spec.kind != "routing-priors":
            return
        validation = self._prior_validation(job)
        if validation is not None:
            self.metrics.prior_stability.set(validation["stability_score"])
            self.metrics.model_diversity.set(validation["diversity_score"])
            self.metrics.convergence_rate.set(validation["convergence_rate"])

    def _prior_validation(self, job: Job) -> dict[str, float] | None:
        results = self.store.get_results(job.id)
        if not results:
            return None
        current = self._result_view(job, results[-1])
        previous = self._result_view(job, results[-2]) if len(results) > 1 else None
        models = len((job.spec.priors or {}).get("models", []))
        return validate_round(previous, current, models)

    # --- gossip -----------------------------------------------------------------------------------

    def _roster_record(self, job: Job) -> bytes:
        """This creator's signed roster: each member with its certificate and the addresses it was
        reached at. Signed once (again after a restart), and the same record goes to everyone."""
        assert job.roster is not None and self._node is not None
        if job.id in self._roster_records:
            return self._roster_records[job.id]
        entries = []
        for member in job.roster:
            cert = self.registry.certificate(member, time.time())
            if cert is not None:
                entries.append(RosterEntry(member, cert.encode(), tuple(self._node.addresses_of(member)[:4])))
        record = sign_announcement(RosterAnnouncement(job.id, tuple(entries)), self._key, self._certificate)
        self._roster_records[job.id] = record
        return record

    async def _announce_roster(self, job: Job) -> None:
        """Gossip the roster, and hand it down the job's tree over streams: round 0 cannot start
        until members have it, and gossip may take seconds to reach everyone, drop it, or (above
        64 KB, some 230 members) not carry it at all."""
        assert job.roster is not None
        log.info("roster_announced", job=job.id, members=len(job.roster))
        self._connect_ahead(job, 0)
        record = self._roster_record(job)
        self._hand_on_roster(job, record)
        await self._gossip(record, "roster")

    def _hand_on_roster(self, job: Job, record: bytes) -> None:
        """Pass the job's signed roster to the members below this node in the job's tree."""
        assert job.roster is not None and self._node is not None and self._nursery is not None
        push_down(self._node, self._nursery, ANNOUNCE_PROTOCOL, record, tree_order(job.id, job.roster), job.creator,
                  job.roster, "roster")

    async def _handle_announcement(self, peer: bytes, record: bytes) -> bytes:
        """ANNOUNCE_PROTOCOL: an announcement handed over directly, checked like a gossiped one. A
        member (one the roster lists will do: its certificate may not have reached this node yet) hands
        on rosters it did not sign, down the job's tree; anything else comes from its author."""
        self._refuse_if_revoked(peer, "announcement")
        if record in self._roster_records.values():
            return b"ok"  # a roster this node holds, handed on again (the tree adopts a slow child's children)
        signed = self._opened(record)
        if signed is None:
            raise RemoteProtocolError(peer, "announcement", "rejected: malformed or badly signed")
        self._refuse_if_revoked(signed.author, "announcement")
        relayed = signed.author != peer
        if relayed and not (isinstance(signed.body, RosterAnnouncement) and (peer in signed.body.members
                                                                            or self._is_member(peer))):
            self.metrics.failed_authentications.inc()
            raise RemoteProtocolError(peer, "announcement", "rejected: only a member may hand on an announcement "
                                                            "it did not sign, and only a roster")
        if not self._authentic(signed, signed.author):
            raise RemoteProtocolError(peer, "announcement", "rejected: not signed by a member with a valid certificate")
        await self._on_announcement(signed)
        return b"ok"

    def _active_jobs(self) -> dict[str, bool]:
        return {j.id: j.roster is not None for j in self.book.active_jobs()}

    def _roster_overdue(self) -> bool:
        now = time.time()
        return any(j.roster is None and j.state == "pending" and now > j.start_at for j in self.book.active_jobs())

    def _records_for(self, job_id: str, with_job: bool) -> list[bytes]:
        """A job's creator-signed announcement (if `with_job`) and roster, for job sync."""
        job = self.book.jobs[job_id]
        if job.creator == self.me:  # after a restart, this node's own records are signed again
            if job_id not in self._job_records:
                self._job_record(job)
            if job.roster is not None:
                self._roster_record(job)
        records = (self._job_records.get(job_id) if with_job else None, self._roster_records.get(job_id))
        return [r for r in records if r is not None]

    async def _accept_synced(self, peer: bytes, record: bytes) -> None:
        """A job or roster announcement handed on by `peer`: checked like gossip from its author."""
        signed = open_announcement(record)
        if not isinstance(signed.body, (JobAnnouncement, RosterAnnouncement)):
            raise RemoteProtocolError(peer, "job_sync", f"a {signed.body.KIND} announcement is not a job or roster")
        if not self._authentic(signed, signed.author):
            raise RemoteProtocolError(peer, "job_sync", "announcement not signed by a member with a valid certificate")
        await self._on_announcement(signed)

    def _job_record(self, job: Job) -> bytes:
        """This creator's signed announcement of `job`, with the addresses it listens on now (kept for job sync)."""
        assert self._node is not None
        addresses = tuple(a.split("/p2p/")[0] for a in self._node.listen_addrs[:MAX_ROSTER_ADDRESSES])
        record = sign_announcement(JobAnnouncement(job.id, job.spec, job.created_at, addresses), self._key,
                                   self._certificate)
        self._job_records[job.id] = record
        return record

    async def _announce(self, body: Announcement) -> None:
        await self._gossip(sign_announcement(body, self._key, self._certificate), body.KIND)

    async def _gossip(self, record: bytes, what: str) -> None:
        """Publish a signed announcement. One too large for gossip (the roster of a few hundred
        members, with certificates and addresses) is left to the streams that carry it as well:
        the creator's hand-over of the roster to each member, and job sync."""
        assert self._node is not None
        if len(record) > self._node.max_gossip_size:
            log.info("not_gossiped", what=what, bytes=len(record), limit=self._node.max_gossip_size)
            return
        await self._node.publish(self._topic, record)

    def _validate_gossip(self, sender: bytes, data: bytes) -> bool:
        """Relay only well-formed announcements signed by their originator, a member with a valid certificate."""
        announcement = self._opened(data)
        return announcement is not None and self._authentic(announcement, sender)

    def _opened(self, record: bytes) -> SignedAnnouncement | None:
        """The announcement, or None (counted: a bad signature as an encryption error, else as malformed)
        if it does not parse or verify."""
        try:
            return open_announcement(record)
        except RemoteProtocolError as exc:
            if isinstance(exc, CryptoCheckFailed):
                self.metrics.encryption_errors.labels(check=exc.check).inc()
            else:
                self.metrics.malformed_messages.labels(kind="announcement").inc()
            log.info("announcement_refused", phase=exc.phase, reason=exc.reason)
            return None

    def _authentic(self, announcement: SignedAnnouncement, sender: bytes) -> bool:
        """Signed by `sender`, a member (admitted now with the certificate it carries, if need be)."""
        if announcement.author != sender:
            self.metrics.failed_authentications.inc()
            return False
        if not self._is_member(sender):
            try:
                self._admit(announcement.certificate, sender)
            except RemoteProtocolError:
                return False
        return True

    async def _consume_gossip(self, channel: trio.MemoryReceiveChannel[tuple[bytes, bytes]]) -> None:
        async for sender, data in channel:
            try:
                await self._on_announcement(open_announcement(data))
            except RemoteProtocolError as exc:
                self.metrics.malformed_messages.labels(kind="announcement").inc()
                log.info("announcement_rejected", peer=sender.hex()[:16], reason=exc.reason)

    async def _on_announcement(self, signed: SignedAnnouncement) -> None:
        body, author = signed.body, signed.author
        if isinstance(body, JobAnnouncement):
            if self._node is not None and author not in self._node.connected_peers():
                self._node.add_addresses(author, body.creator_addresses)
            job = self.book.add_job(body.job_id, body.spec, author, body.created_at)
            known = self.book.jobs.get(body.job_id)  # new, or known from before (the store, after a restart)
            if known is not None and known.creator == author:
                self._job_records.setdefault(known.id, signed.record)
            if job is not None:
                self.store.put_addresses([(author, body.creator_addresses)], time.time())
                log.info("job_learned", job=job.id, creator=author.hex()[:16], kind=job.spec.kind)
                await self._maybe_join(job)
                self._start_job(job)
        elif isinstance(body, JoinAnnouncement):
            job = self.book.jobs.get(body.job_id)
            if job is None or job.creator != self.me:
                raise RemoteProtocolError(author, "join", "joins go to the job's creator, and this node is not it")
            if job.state != "pending" or job.roster is not None:
                raise RemoteProtocolError(author, "join", f"job {job.id} is {job.state}: its roster is fixed")
            if self.book.add_member(body.job_id, author):
                log.info("member_joined", job=body.job_id, member=author.hex()[:16])
        elif isinstance(body, RosterAnnouncement):
            job = self.book.jobs.get(body.job_id)
            if job is not None and job.creator == author and self.book.set_roster(job.id, body.members):
                log.info("roster_fixed", job=job.id, members=len(body.members), in_roster=self.me in body.members)
                self._learn_roster(body)
                self._hand_on_roster(job, signed.record)
                self._connect_ahead(job, 0)
            if job is not None and job.creator == author and job.roster == body.members:
                self._roster_records.setdefault(job.id, signed.record)
        elif isinstance(body, CancelAnnouncement):
            job = self.book.jobs.get(body.job_id)
            if job is not None and job.creator == author and job.state in ("pending", "running"):
                self.book.set_state(job.id, "cancelled")
                log.info("job_cancelled", job=job.id, reason=body.reason)
        elif isinstance(body, ResultAnnouncement):
            assert self._results is not None
            self._results.on_announcement(body, author)

    def _learn_roster(self, roster: RosterAnnouncement) -> None:
        """Admit the roster members' certificates and remember their addresses (in the store too, for a
        restart): every participant of a round can then be checked and dialed, met before or not. Also
        those connected now: a connection another node opened leaves no dialable address behind, and in
        net-100 a coordinator that lost such a client looked it up in the DHT for 4.6 s, mid-phase."""
        assert self._node is not None
        new = []
        for entry in roster.entries:
            if entry.member == self.me:
                continue
            try:
                cert = self._verify_certificate(entry.certificate, entry.member)
            except RemoteProtocolError:
                continue  # the creator vouched for a bad certificate: that member fails every check here
            if cert is not None:
                new.append((entry.member, entry.certificate, cert.expires_at))
            self._node.add_addresses(entry.member, entry.addresses)
        self.store.put_members(new)  # one transaction: 300 members stored one by one took seconds
        self.store.put_addresses([(e.member, e.addresses) for e in roster.entries if e.member != self.me], time.time())

    def _result_job(self, body: ResultAnnouncement, author: bytes) -> tuple[Job, list[bytes]]:
        """The job and roster a result claims a round of, if that round has opened by this node's clock
        (less one phase timeout for clock skew); raises RemoteProtocolError naming the reason."""
        job = self.book.jobs.get(body.job_id)
        roster = self.book.round_members(body.job_id)
        if job is None or roster is None:
            raise RemoteProtocolError(author, "result", f"job {body.job_id!r} or its roster is not known here")
        opens_in = job.round_opens_at(body.round) - job.spec.phase_timeout - time.time()
        if opens_in > 0:
            raise RemoteProtocolError(author, "result", f"round {body.round} has not opened (it opens in {opens_in:.0f} s)")
        return job, roster

    def _plausible_result(self, body: ResultAnnouncement, author: bytes) -> bool:
        """A gossiped result claim worth fetching the aggregate for: its round has opened and its author
        is the attempt's elected coordinator, with a participant list the job allows. Refusals are logged
        and counted (a wrong author as a failed authentication)."""
        try:
            job, roster = self._result_job(body, author)
            check_claim(job.spec, roster, body, author)
            return True
        except RemoteProtocolError as exc:
            if isinstance(exc, AuthenticationError):
                self.metrics.failed_authentications.inc()
            else:
                self.metrics.malformed_messages.labels(kind="result").inc()
            log.warning("result_claim_rejected", job=body.job_id, round=body.round, attempt=body.attempt,
                        author=author.hex()[:16], reason=exc.reason)
            return False

    def _verify_result(self, signed: SignedAnnouncement, words: bytes, votes: tuple[bytes, ...]) -> VerifiedResult:
        """A result (this node's own or another's) that proves its round ran: see protocol/evidence.py.
        Raises RemoteProtocolError naming the reason; the result exchange logs and counts it."""
        body = signed.body
        assert isinstance(body, ResultAnnouncement)
        job, roster = self._result_job(body, signed.author)
        return verify_result(job.spec, roster, body, signed.author, words, votes)

    def _store_fetched_result(self, result: VerifiedResult, record: bytes) -> None:
        """A result from another node that the exchange verified (`_verify_result`)."""
        body, author = result.announcement, result.coordinator
        try:
            if self._store_result(result, record) != "stored":
                return
        except StoreError as exc:  # the coordinator signed two different results for one attempt
            self.metrics.failed_authentications.inc()
            raise RemoteProtocolError(author, "result", str(exc)) from None
        # The coordinator's round history, so `villagectl rounds` shows every round on every node
        # (timings are the coordinator's word: keep only plausible ones).
        timings = {phase: seconds for phase, seconds in body.phase_seconds.items() if 0.0 <= seconds <= 86_400.0}
        ended = time.time()
        self.store.record_round(RoundRecord(body.job_id, body.round, body.attempt, author, "completed",
                                            ended - sum(timings.values()), participants=body.survivors,
                                            dropped=body.dropped, phase_timings=timings, ended_at=ended))
        log_round(log, "result_stored", job=body.job_id, round=body.round, attempt=body.attempt, coordinator=author,
                  participants=body.survivors, phase_timings=body.phase_seconds, dropped=len(body.dropped))

    async def _maybe_join(self, job: Job) -> None:
        if self.config.join_policy != "auto" or job.state not in ("pending", "running"):
            return
        try:
            self.book.check_input(job)
        except InputError as exc:
            log.info("not_joining", job=job.id, reason=str(exc))
            return
        if self._join_refusal(job) is None:
            await self._join(job)

    def _join_refusal(self, job: Job) -> str | None:
        """Why this node's input policy keeps it out of `job` (logged and counted), or None."""
        refusal = self.book.policy_refusal(job)
        if refusal is not None:
            log.warning("job_not_joined", job=job.id, creator=job.creator.hex()[:16], input=job.spec.data, reason=refusal)
            self.metrics.input_refusals.labels(stage="join").inc()
        return refusal

    async def _join(self, job: Job) -> None:
        """Join locally; a member that did not create the job tells the creator, who fixes the roster."""
        self.book.add_member(job.id, self.me)
        if job.creator != self.me and self._nursery is not None and job.id not in self._joining:
            self._joining.add(job.id)
            self._nursery.start_soon(self._send_join, job)

    async def _send_join(self, job: Job) -> None:
        """Hand the signed join to the job's creator over a stream, retrying until it acknowledges, refuses,
        or the job starts. Joins used to be gossiped and re-gossiped by every member: at 16 members that
        was most of the village's gossip, and joins still reached nodes unevenly.

        Every member learns of a job within a second of the others, so the first attempt waits a random
        part of the time left: a hundred members dialing the creator at once (a Noise handshake in Python
        each) kept it from answering any of them within the timeout."""
        assert self._node is not None
        record = sign_announcement(JoinAnnouncement(job.id), self._key, self._certificate)
        await trio.sleep(self._jitter.uniform(0, _JOIN_SPREAD * max(0.0, job.start_at - time.time())))
        delay = 1.0
        try:
            while job.state == "pending" and job.roster is None and time.time() < job.start_at:
                try:
                    await self._node.request(job.creator, ANNOUNCE_PROTOCOL, record, timeout=_JOIN_TIMEOUT,
                                             max_reply=1024)
                    log.info("joined", job=job.id, creator=job.creator.hex()[:16])
                    return
                except TransportError as exc:
                    log.info("join_not_delivered", job=job.id, creator=job.creator.hex()[:16], reason=exc.reason)
                    if isinstance(exc, RemoteRefusal):
                        return  # the creator answered and refused (e.g. the roster is already fixed)
                await trio.sleep(min(delay * self._jitter.uniform(0.5, 1.5), max(0.0, job.start_at - time.time())))
                delay = min(delay * 2, 8.0)
        finally:
            self._joining.discard(job.id)

    async def _announce_pending(self) -> None:
        """Gossip is best effort: the creator repeats each of its jobs' announcements at doubling gaps
        (announce_interval, 2x, 4x, ...) until the job starts, then every `_RUNNING_ANNOUNCE_PERIOD`
        with its roster, for nodes that came up late. Every gossiped message costs each node a few ms
        per copy it receives: a job re-announced every second kept 100 nodes on 2 cores saturated."""
        assert self._node is not None
        schedule: dict[str, tuple[float, float]] = {}  # job id -> (next announcement at, gap after it)
        while True:
            await trio.sleep(self.config.announce_interval)
            now = time.time()
            for job_id in self.book.forget_ended(now):  # the signed records of jobs long over go too
                self._job_records.pop(job_id, None)
                self._roster_records.pop(job_id, None)
            active = self.book.active_jobs()
            for job_id in schedule.keys() - {job.id for job in active}:
                del schedule[job_id]
            for job in active:
                if job.creator != self.me:
                    continue
                due, gap = schedule.get(job.id, (now, self.config.announce_interval))
                if now < due:
                    continue
                before_start = job.state == "pending" and now <= job.start_at
                schedule[job.id] = (now + gap, gap * 2) if before_start else (now + _RUNNING_ANNOUNCE_PERIOD, gap)
                await self._gossip(self._job_record(job), "job")
                if job.roster is not None:
                    await self._gossip(self._roster_record(job), "roster")

    # --- NodeControl (the control API) ---------------------------------------------------------------

    async def status(self) -> dict[str, object]:
        node = self._node
        jobs = list(self.book.jobs.values())
        return {
            "member_id": self.me.hex(),
            "peer_id": str(node.peer_id) if node else None,
            "village_id": self.registry.village_id.hex(),
            "addresses": node.listen_addrs if node else [],
            "uptime_seconds": round(time.time() - self._started_at, 1),
            "connected_peers": len(node.connected_peers()) if node else 0,
            "members_known": len(self.registry.members(time.time())),
            "routing_table_size": node.routing_table_size() if node else 0,
            "discovery_settled": node.discovery.settled if node else False,
            "jobs": {state: sum(1 for j in jobs if j.state == state) for state in ("pending", "running", "completed", "cancelled", "failed")},
            "certificate_expires_at": decode_certificate(self._certificate).expires_at,
            "revocation_serial": held.serial if (held := self.registry.revocations) is not None else 0,
            "warnings": [w for w in (self._certificate_warning(),) if w is not None],
        }

    async def peers(self) -> list[dict[str, object]]:
        node = self._node
        return [
            {"member_id": p.hex(), "peer_id": str(peer_id_from_member_id(p)), "member": self._is_member(p)}
            for p in sorted(node.connected_peers() if node else [])
        ]

    async def members(self) -> list[dict[str, object]]:
        return [{"member_id": c.member_id.hex(), "issued_at": c.issued_at, "expires_at": c.expires_at, "self": c.member_id == self.me}
                for c in self.registry.members(time.time())]

    async def create_job(self, spec: dict[str, object]) -> dict[str, object]:
        try:
            parsed = JobSpec.from_dict(translate_job(spec))  # the spec's federation block, in village's terms
        except ParameterError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        except TypeError as exc:
            raise InvalidRequest("spec", str(exc)) from None
        job_id = secrets.token_hex(8)
        job = self.book.add_job(job_id, parsed, self.me, time.time())
        assert job is not None and self._node is not None
        await self._gossip(self._job_record(job), "job")
        await self._maybe_join(job)
        self._start_job(job)
        log.info("job_created", job=job_id, kind=parsed.kind, rounds=parsed.rounds)
        return self._job_view(job)

    async def join_job(self, job_id: str) -> dict[str, object]:
        job = self._job(job_id)
        try:
            self.book.check_input(job)
        except InputError as exc:
            raise InvalidRequest("data", str(exc)) from None
        if job.state not in ("pending", "running"):
            raise Conflict(f"job {job_id} is {job.state}")
        refusal = self._join_refusal(job)
        if refusal is not None:
            raise Conflict(f"input {job.spec.data!r} may not be used by job {job_id}: {refusal}")
        await self._join(job)
        return self._job_view(job)

    async def list_jobs(self) -> list[dict[str, object]]:
        return [self._job_view(j) for j in sorted(self.book.jobs.values(), key=lambda j: j.created_at)]

    async def get_job(self, job_id: str) -> dict[str, object]:
        return self._job_view(self._job(job_id))

    async def job_progress(self, job_id: str) -> dict[str, object]:
        job = self._job(job_id)
        results = self.store.get_results(job_id)
        current = self._driver.progress(job_id) if self._driver is not None and job.state == "running" else None
        members = self.book.round_members(job_id) or []
        coordinator = None
        if current is not None and members:
            coordinator = coordinator_for(job_id, current.round, current.attempt, members).hex()
        last = results[-1] if results else None
        return {
            "id": job.id, "state": job.state, "rounds": job.spec.rounds, "rounds_completed": len(results),
            "members": len(self._members_of(job)), "start_at": job.start_at,
            "round": current.round if current else None, "attempt": current.attempt if current else None,
            "coordinator": coordinator, "role": current.role if current else None,
            "phase": current.phase if current else None,
            "participants": current.participants if current else None,
            "last_result": None if last is None else {
                "round": last.round, "participants": len(last.participants), "dropped": len(last.dropped)},
        }

    async def cancel_job(self, job_id: str) -> dict[str, object]:
        job = self._job(job_id)
        if job.state not in ("pending", "running"):
            raise Conflict(f"job {job_id} is already {job.state}")
        self.book.set_state(job_id, "cancelled")
        if job.creator == self.me and self._node is not None:
            await self._announce(CancelAnnouncement(job_id, "cancelled by its creator"))
        return self._job_view(job)

    async def rounds(self, job_id: str) -> list[dict[str, object]]:
        self._job(job_id)
        return [
            {"round": r.round, "attempt": r.attempt, "coordinator": r.coordinator.hex(), "state": r.state,
             "participants": len(r.participants), "dropped": len(r.dropped), "phase_timings": r.phase_timings,
             "started_at": r.started_at, "ended_at": r.ended_at, "abort_reason": r.abort_reason}
            for r in self.store.rounds(job_id)
        ]

    async def results(self, job_id: str) -> list[dict[str, object]]:
        job = self._job(job_id)
        return [self._result_view(job, r) for r in self.store.get_results(job_id)]

    async def priors(self, job_id: str) -> dict[str, object]:
        """The routing priors this node applies: the latest round's decoded aggregate, with the
        spec's validation metrics against the round before."""
        job = self._job(job_id)
        if job.spec.kind != "routing-priors":
            raise Conflict(f"job {job_id} is a {job.spec.kind} job, not routing-priors")
        results = self.store.get_results(job_id)
        if not results:
            return {"job": job_id, "state": job.state, "round": None, "priors": None, "validation": None}
        view = self._result_view(job, results[-1])
        return {
            "job": job_id, "state": job.state, "round": view["round"], "participants": len(results[-1].participants),
            "error_bound": view["error_bound"], "validation": self._prior_validation(job),
            "priors": {key: view[key] for key in ("models", "request_patterns", "carbon")},
        }

    async def put_data(self, name: str, payload: object) -> dict[str, object]:
        if not (0 < len(name) <= 128):
            raise InvalidRequest("name", "must be 1 to 128 characters")
        try:
            summary = describe_input(name, payload)
        except InputError as exc:
            self.metrics.malformed_messages.labels(kind="local_input").inc()
            log.info("local_input_refused", input=name, field=exc.field, reason=exc.reason)
            raise InvalidRequest(exc.field, exc.reason) from None
        self.store.put_local_input(name, payload, time.time())
        return {"name": name, "updated_at": time.time(), "summary": summary,
                "policy": self.store.get_input_policy(name).to_dict()}

    async def put_data_policy(self, name: str, raw: object) -> dict[str, object]:
        if not (0 < len(name) <= 128):
            raise InvalidRequest("name", "must be 1 to 128 characters")
        try:
            policy = InputPolicy.from_dict(raw)
        except ParameterError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        self.store.set_input_policy(name, policy)
        log.info("input_policy_set", input=name, policy=policy.to_dict())
        return {"name": name, "policy": policy.to_dict()}

    async def get_data(self, name: str) -> dict[str, object]:
        local = self.store.get_local_input(name)
        if local is None:
            raise NotFound(f"local input {name!r}")
        try:
            summary = describe_input(name, local.payload)
        except InputError as exc:  # stored before put checked it
            summary = f"no job can read it: {exc}"
        return {"name": local.name, "summary": summary, "payload": local.payload,
                "updated_at": local.updated_at, "policy": self.store.get_input_policy(name).to_dict()}

    def _job(self, job_id: str) -> Job:
        job = self.book.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r}")
        return job

    @staticmethod
    def _members_of(job: Job) -> tuple[bytes, ...] | set[bytes]:
        """The roster once it is fixed; before, the joins this node knows (all of them on the creator)."""
        return job.roster if job.roster is not None else job.members

    def _job_view(self, job: Job) -> dict[str, object]:
        return {
            "id": job.id, "state": job.state, "spec": job.spec.to_dict(), "creator": job.creator.hex(),
            "created_at": job.created_at, "start_at": job.start_at, "members": sorted(m.hex() for m in self._members_of(job)),
            "joined": self.me in job.members, "results": len(self.store.result_rounds(job.id)),
            "privacy": self.book.privacy_view(job), "end_reason": self.book.end_reason(job.id),
        }

    def _result_view(self, job: Job, record: ResultRecord) -> dict[str, object]:
        words = np.frombuffer(record.aggregate, dtype="<u4").astype(np.uint32)
        survivors = len(record.participants)
        quantizer = job.spec.quantizer()
        view = KINDS[job.spec.kind].decode(job.spec, dequantize_total(job.spec, words), survivors)
        per_input = survivors if job.spec.aggregate == "mean" else 1
        view.update({
            "round": record.round, "attempt": record.attempt, "coordinator": record.coordinator.hex(),
            "participants": [p.hex() for p in record.participants], "dropped": [d.hex() for d in record.dropped],
            "error_bound": quantizer.error_bound(survivors) / per_input,
            "noise_std": 0.0 if (plan := job.spec.noise_plan()) is None else plan.noise_std(survivors) / per_input,
            "digest": aggregate_digest(record.aggregate).hex(), "received_at": record.received_at,
            # > 0: those coordinates wrapped (a noise tail) or a participant sent words outside the range
            "coordinates_out_of_range": out_of_range(job.spec, words, survivors),
        })
        return view


__all__ = ["Daemon", "Started", "MEMBERSHIP_PROTOCOL"]
