"""Who is a member: this node's certificate, its peers' certificates and the revocation list.

Every protocol handler that may hear from a node whose certificate has not reached this one yet
(job sync, result fetches, announcements) admits the certificate the request carries with one
call, `admit_if_unknown`; refusals are counted as failed authentications (and revocations) here,
once. The node's own certificate file is watched: a renewed one is used without a restart, and
one about to expire is warned about.
"""

from __future__ import annotations

import random
import time

import structlog
import trio

from protocol.errors import MemberRevoked, RemoteProtocolError
from protocol.membership import MemberRegistry, MembershipCertificate, decode_certificate, verify_revocations
from villaged.config import DaemonConfig
from villaged.control import Conflict, InvalidRequest
from villaged.errors import ConfigError, TransportError
from villaged.metrics import Metrics
from villaged.store import Store
from villaged.transport import Node

log = structlog.get_logger("villaged")

MEMBERSHIP_PROTOCOL = "/village/membership/1.0.0"
#: How long `reachable` waits for a member it is not connected to, plus this much per member it
#: has to dial, at most this many dials at once.
_PROBE_TIMEOUT = 2.0
_PROBE_TIMEOUT_PER_DIAL = 0.05
_CONCURRENT_DIALS = 32
#: A new connection's certificate exchange waits a random moment in this range (seconds).
_CERTIFICATE_EXCHANGE_DELAY = (1.0, 3.0)
#: The certificate file is looked at this often (a renewed one is picked up), and a certificate that
#: expires within `_CERTIFICATE_WARNING` is warned about (in the log at most every `_WARNING_GAP`).
_CERTIFICATE_CHECK_PERIOD = 60.0
_CERTIFICATE_WARNING = 86_400.0
_WARNING_GAP = 3600.0
_MAX_CERTIFICATE = 1024


class Membership:
    """The registry of members, kept in step with the store, the network and the certificate file."""

    def __init__(self, config: DaemonConfig, me: bytes, store: Store, metrics: Metrics) -> None:
        self._config, self.me, self._store, self._metrics = config, me, store, metrics
        self.certificate = self._load_certificate()
        own = decode_certificate(self.certificate)
        self.registry = MemberRegistry(own.admin_public_key, own.village_id)
        self.registry.admit(self.certificate, time.time(), member_id=me)
        self._load_revocations()
        for record in store.members():
            try:
                self.registry.admit(record.certificate, time.time(), member_id=record.member_id)
            except RemoteProtocolError:
                continue  # expired or revoked since: forgotten
        self.topic = f"village/{own.village_id.hex()}"
        self._revocations_topic = f"{self.topic}/revocations"
        self._certificate_warned_at = 0.0
        self._jitter = random.Random()  # spreads certificate exchanges in time (not for secrets)
        self._node: Node | None = None
        self._nursery: trio.Nursery | None = None

    async def start(self, node: Node, nursery: trio.Nursery) -> None:
        """Serve certificate exchanges, follow revocation gossip and watch the certificate file."""
        self._node, self._nursery = node, nursery
        node.serve(MEMBERSHIP_PROTOCOL, self._serve_certificate, max_request=_MAX_CERTIFICATE,
                   max_request_nonmember=_MAX_CERTIFICATE)
        revocations = await node.subscribe(self._revocations_topic, self._validate_revocations)
        nursery.start_soon(self._consume_revocations, revocations)
        nursery.start_soon(self._watch_certificate)

    # --- members ----------------------------------------------------------------------------------

    def is_member(self, member: bytes) -> bool:
        return self.registry.is_member(member, time.time())

    def admit(self, certificate: bytes, peer: bytes) -> None:
        """Check a member's certificate and keep it (in the store too, unless it is the one held
        already). Raises RemoteProtocolError (counted as a failed authentication) if it is not valid."""
        admitted = self._checked(certificate, peer)
        if admitted is not None:
            self._store.put_member(peer, certificate, admitted.expires_at)

    def _checked(self, certificate: bytes, peer: bytes) -> MembershipCertificate | None:
        """Admit `certificate` for `peer` to the registry; None if it is the one already held (nothing to
        store). Raises RemoteProtocolError (and counts an authentication failure) if it is not valid."""
        held = self.registry.certificate(peer, time.time())
        if held is not None and held.encode() == certificate:
            return None
        try:
            return self.registry.admit(certificate, time.time(), member_id=peer)
        except RemoteProtocolError as exc:
            self._metrics.failed_authentications.inc()
            if isinstance(exc, MemberRevoked):
                self._metrics.revoked_refusals.inc()
            log.warning("certificate_rejected", peer=peer.hex()[:16], reason=exc.reason)
            raise

    def admit_if_unknown(self, certificate: bytes, peer: bytes) -> None:
        """A request from `peer` carried `certificate`: admit it unless `peer` is a member already.
        Raises RemoteProtocolError (counted) if it is not a valid certificate of `peer`."""
        if not self.is_member(peer):
            self.admit(certificate, peer)

    def admit_all(self, entries: list[tuple[bytes, bytes]]) -> None:
        """Admit (member, certificate) pairs a creator vouched for, stored in one transaction (300
        members stored one by one took seconds); bad ones are skipped (they fail every check here)."""
        new = []
        for member, certificate in entries:
            try:
                admitted = self._checked(certificate, member)
            except RemoteProtocolError:
                continue  # the creator vouched for a bad certificate: that member fails every check here
            if admitted is not None:
                new.append((member, certificate, admitted.expires_at))
        self._store.put_members(new)

    def refuse_if_revoked(self, peer: bytes, phase: str) -> None:
        """Raise MemberRevoked (counted, logged) if `peer` is on the revocation list: for the handlers
        whose own membership check would give a vaguer reason."""
        if self.registry.revocation(peer) is None:
            return
        self._metrics.failed_authentications.inc()
        self._metrics.revoked_refusals.inc()
        log.warning("revoked_member_refused", peer=peer.hex()[:16], phase=phase)
        raise MemberRevoked(peer, phase, "member is revoked by the village admin")

    async def _serve_certificate(self, peer: bytes, request: bytes) -> bytes:
        self.admit(request, peer)
        return self.certificate

    async def exchange_certificates(self, peer: bytes) -> None:
        """On a new connection, learn the peer's certificate unless it is known already (a roster or an
        announcement brought it): a coordinator connecting to 100 members ahead of a round otherwise
        starts 200 certificate exchanges at once. It waits a moment first, because a new connection
        often carries its certificate right away: a member joining a job dials the creator to hand
        over its signed join, certificate included, and a creator that asked each of them for it as
        well made 100 joins cost 200 requests."""
        await trio.sleep(self._jitter.uniform(*_CERTIFICATE_EXCHANGE_DELAY))
        if self._node is None or self.is_member(peer) or peer not in self._node.connected_peers():
            return
        try:
            reply = await self._node.request(peer, MEMBERSHIP_PROTOCOL, self.certificate, timeout=10.0,
                                             max_reply=_MAX_CERTIFICATE)
            self.admit(reply, peer)
        except (TransportError, RemoteProtocolError) as exc:
            log.info("certificate_exchange_failed", peer=peer.hex()[:16], reason=str(exc))

    async def reachable(self, members: list[bytes], timeout: float | None = None) -> set[bytes]:
        """Members connected now with a known certificate, plus those that answer a certificate
        exchange within `timeout` (by default a few seconds; dialed with the roster's addresses if
        need be)."""
        assert self._node is not None
        node = self._node
        connected = {m for m in node.connected_peers() if self.is_member(m)}
        answered = {m for m in members if m in connected}
        unconnected = [m for m in members if m not in connected]
        if timeout is None:  # dials queue for the CPU when many are new (a Noise handshake in Python each)
            timeout = _PROBE_TIMEOUT + _PROBE_TIMEOUT_PER_DIAL * len(unconnected)
        limiter = trio.CapacityLimiter(_CONCURRENT_DIALS)

        async def probe(member: bytes) -> None:
            async with limiter:
                try:
                    reply = await node.request(member, MEMBERSHIP_PROTOCOL, self.certificate, timeout=timeout,
                                               max_reply=_MAX_CERTIFICATE)
                    self.admit(reply, member)
                    answered.add(member)
                except (TransportError, RemoteProtocolError):
                    pass

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for member in unconnected:
                    nursery.start_soon(probe, member)
        return answered

    # --- revocation -------------------------------------------------------------------------------

    def _load_revocations(self) -> None:
        """Adopt the revocation list kept in the store (before any stored certificate is admitted)."""
        stored = self._store.revocation_list()
        if stored is None:
            return
        try:
            self.registry.apply_revocations(stored)
        except RemoteProtocolError as exc:
            raise ConfigError(self._store.path, "revocation_list", exc.reason) from None

    def held_revocations(self) -> tuple[int, bytes] | None:
        """The newest revocation list held: (serial, the list as the admin signed it)."""
        held = self.registry.revocations
        return None if held is None else (held.serial, held.encode())

    def adopt_revocations(self, listed: bytes, source: str) -> bool:
        """Adopt a revocation list newer than the held one: keep it in the store (it survives a restart),
        and close the connections of the members it revokes. False if it is not newer. Raises
        RemoteProtocolError (counted as malformed) if the list is bad or not this village admin's."""
        try:
            adopted = self.registry.apply_revocations(listed)
        except RemoteProtocolError as exc:
            self._metrics.malformed_messages.labels(kind="revocations").inc()
            log.warning("revocations_rejected", source=source, reason=exc.reason)
            raise
        if adopted is None:
            return False
        self._store.put_revocation_list(listed)
        log.warning("revocations_adopted", serial=adopted.serial, revoked=[r.member_id.hex()[:16] for r in adopted.revoked],
                    source=source)
        if self._node is not None and self._nursery is not None:
            connected = set(self._node.connected_peers())
            for entry in adopted.revoked:
                if entry.member_id in connected:
                    self._nursery.start_soon(self._node.disconnect, entry.member_id)
        return True

    def accept_synced_revocations(self, peer: bytes, listed: bytes) -> bool:
        return self.adopt_revocations(listed, f"job sync with {peer.hex()[:16]}")

    def _validate_revocations(self, sender: bytes, data: bytes) -> bool:
        """Relay only this village admin's lists, the one held or newer (an older one is no news; the one
        held passes, for gossipsub checks a node's own publication too)."""
        try:
            listed = verify_revocations(data, self.registry.admin_public_key, self.registry.village_id)
        except RemoteProtocolError:
            self._metrics.malformed_messages.labels(kind="revocations").inc()
            return False
        held = self.registry.revocations
        return held is None or listed.serial >= held.serial

    async def _consume_revocations(self, channel: trio.MemoryReceiveChannel[tuple[bytes, bytes]]) -> None:
        async for sender, data in channel:
            try:
                self.adopt_revocations(data, f"gossip from {sender.hex()[:16]}")
            except RemoteProtocolError:
                continue  # counted and logged

    async def publish_revocations(self, listed: bytes) -> dict[str, object]:
        """Control API: adopt an admin-signed revocation list and spread it (gossip; job sync hands it to
        nodes gossip missed)."""
        try:
            adopted = self.adopt_revocations(listed, "control api")
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

    def _load_certificate(self) -> bytes:
        path = self._config.certificate_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(path, "certificate", "missing: ask the village admin for one (`villagectl village admit "
                                                   f"{self.me.hex()}`) and save it here") from None
        try:
            cert = decode_certificate(data)
        except RemoteProtocolError as exc:
            raise ConfigError(path, "certificate", exc.reason) from None
        pinned = self._config.admin_public_key
        if pinned is not None and cert.admin_public_key != bytes.fromhex(pinned):
            raise ConfigError(path, "certificate", "signed by a different admin key than the configured admin_public_key")
        if cert.member_id != self.me:
            raise ConfigError(path, "certificate", f"issued for member {cert.member_id.hex()[:16]}, this node is {self.me.hex()[:16]}")
        if not cert.is_valid_at(time.time()):
            raise ConfigError(path, "certificate", "expired or not yet valid: ask the admin to re-admit this node")
        return data

    async def _watch_certificate(self) -> None:
        """Pick up a renewed certificate file, and warn while the one in use expires within a day."""
        while True:
            await trio.sleep(_CERTIFICATE_CHECK_PERIOD)
            try:
                self._reload_certificate()
            except ConfigError as exc:
                log.warning("certificate_not_reloaded", path=str(exc.path), reason=exc.reason)
            warning = self.certificate_warning()
            if warning is not None and time.time() - self._certificate_warned_at >= _WARNING_GAP:
                self._certificate_warned_at = time.time()
                log.warning("certificate_expiring", detail=warning)

    def _reload_certificate(self) -> bool:
        """Use the certificate file if it holds a newer certificate for this node; True if it did.
        Raises ConfigError (naming the file) if the file is bad, expired, or this node is revoked."""
        data = self._load_certificate()
        if data == self.certificate:
            return False
        try:
            held = self.registry.admit(data, time.time(), member_id=self.me)
        except RemoteProtocolError as exc:
            raise ConfigError(self._config.certificate_path, "certificate", exc.reason) from None
        if held.encode() != data:
            raise ConfigError(self._config.certificate_path, "certificate", "older than the certificate in use")
        self.certificate = data
        log.info("certificate_renewed", expires_at=held.expires_at)
        return True

    def certificate_warning(self) -> str | None:
        left = self.expires_at - time.time()
        if left >= _CERTIFICATE_WARNING:
            return None
        return (f"this node's certificate expires in {max(left, 0) / 3600:.1f} h: ask the admin to renew it "
                f"(villagectl village admit {self.me.hex()}), save it as {self._config.certificate_path}, "
                "and run villagectl village reload-certificate")

    @property
    def expires_at(self) -> int:
        return decode_certificate(self.certificate).expires_at

    async def reload_certificate(self) -> dict[str, object]:
        """Control API: re-read the certificate file (a renewed certificate) without a restart."""
        try:
            renewed = self._reload_certificate()
        except ConfigError as exc:
            raise InvalidRequest("certificate", f"{exc.path}: {exc.reason}") from None
        return {"renewed": renewed, "expires_at": self.expires_at}
