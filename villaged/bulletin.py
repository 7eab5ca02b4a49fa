"""The village's notice board: jobs, joins, rosters, cancellations and result claims.

Announcements are signed by their author (protocol/announcements.py) and travel by gossip, by a
stream to their author's addressee (a join goes to the job's creator), down the job's tree (a
roster, villaged/tree_push.py) and by job sync (villaged/job_sync.py, which this worker answers
for). Whatever way one arrives, it is checked alike: well formed, signed by its author, a member
(admitted with the certificate it carries, if need be). A creator re-announces its jobs at
doubling gaps until they start, then now and then with their roster, for nodes that came up late.
"""

from __future__ import annotations

import random
import time
from typing import Protocol

import nacl.signing
import structlog
import trio

from protocol.announcements import (
    MAX_ANNOUNCEMENT_BYTES,
    MAX_ROSTER_ADDRESSES,
    Announcement,
    CancelAnnouncement,
    JobAnnouncement,
    JoinAnnouncement,
    ResultAnnouncement,
    RosterAnnouncement,
    RosterEntry,
    SignedAnnouncement,
    open_announcement,
    sign_announcement,
)
from protocol.backoff import Backoff
from protocol.errors import CryptoCheckFailed, RemoteProtocolError
from protocol.fanout import tree_order
from protocol.kinds import InputError
from villaged.config import DaemonConfig
from villaged.errors import RemoteRefusal, TransportError
from villaged.jobs import Job, JobBook
from villaged.membership import Membership
from villaged.metrics import Metrics
from villaged.store import Store
from villaged.transport import Node
from villaged.tree_push import push_down

log = structlog.get_logger("villaged")

ANNOUNCE_PROTOCOL = "/village/announce/1.0.0"
#: A member's join waits a random part (up to this share) of the time left before the job starts,
#: and each attempt waits this long for the creator's answer. A creator taking 100 joins (most of
#: them new connections) within 40 % of the window answered half of them after the 10 s the
#: attempts then waited, and every retry was one more handshake for it to do.
_JOIN_SPREAD = 0.6
_JOIN_TIMEOUT = 20.0
#: An undelivered join is sent again after 1, 2, 4, 8, 8, ... seconds (jittered), until the job starts:
#: soon enough for a creator that was briefly busy, rare enough not to add to its handshakes.
_JOIN_RETRY = Backoff.doubling(1.0, 8.0).forever()
#: A running job (with its roster) is re-announced this often, for members that missed it or restarted
#: (a period, not a retry: nothing failed).
_RUNNING_ANNOUNCE_PERIOD = 60.0


class JobStarter(Protocol):
    """What the bulletin asks of the job runner when it learns of jobs and rosters."""

    def start(self, job: Job) -> None: ...

    def connect_ahead(self, job: Job, round_number: int) -> None: ...


class ResultClaims(Protocol):
    """Where a gossiped result announcement goes (villaged/results.py)."""

    def on_announcement(self, body: ResultAnnouncement, author: bytes) -> None: ...


class Bulletin:
    """Reads and writes announcements; keeps the signed job and roster records job sync hands on."""

    def __init__(self, config: DaemonConfig, key: nacl.signing.SigningKey, membership: Membership, book: JobBook,
                 store: Store, metrics: Metrics) -> None:
        self._config, self._key, self._membership = config, key, membership
        self._book, self._store, self._metrics = book, store, metrics
        self.me = membership.me
        self._jitter = random.Random()  # spreads joins in time (not for secrets)
        self._joining: set[str] = set()  # jobs whose join is on its way to the creator
        # Signed job and roster announcements (other creators' as they arrived, this node's own as it
        # signed them, with `_signed_with`): handed on by job sync.
        self._job_records: dict[str, bytes] = {}
        self._roster_records: dict[str, bytes] = {}
        self._signed_with = membership.certificate
        self._node: Node | None = None
        self._nursery: trio.Nursery | None = None
        self._jobs: JobStarter | None = None
        self._results: ResultClaims | None = None

    async def start(self, node: Node, nursery: trio.Nursery, jobs: JobStarter, results: ResultClaims) -> None:
        """Serve hand-overs, follow the village's gossip, and re-announce this node's jobs."""
        self._node, self._nursery, self._jobs, self._results = node, nursery, jobs, results
        # Joins and rosters come from members whose certificate may not have reached this node yet.
        node.serve(ANNOUNCE_PROTOCOL, self._serve_announcement, max_request=MAX_ANNOUNCEMENT_BYTES,
                   max_request_nonmember=MAX_ANNOUNCEMENT_BYTES)
        channel = await node.subscribe(self._membership.topic, self._validate_gossip)
        nursery.start_soon(self._consume_gossip, channel)
        nursery.start_soon(self._announce_pending)

    # --- publishing -------------------------------------------------------------------------------

    async def publish(self, record: bytes, what: str) -> None:
        """Gossip a signed announcement. One too large for gossip (the roster of a few hundred
        members, with certificates and addresses) is left to the streams that carry it as well:
        the creator's hand-over of the roster to each member, and job sync."""
        assert self._node is not None
        if len(record) > self._node.max_gossip_size:
            log.info("not_gossiped", what=what, bytes=len(record), limit=self._node.max_gossip_size)
            return
        await self._node.publish(self._membership.topic, record)

    def sign(self, body: Announcement) -> bytes:
        return sign_announcement(body, self._key, self._membership.certificate)

    async def announce_job(self, job: Job) -> None:
        await self.publish(self._job_record(job), "job")

    async def announce_cancel(self, job_id: str, reason: str) -> None:
        body = CancelAnnouncement(job_id, reason)
        await self.publish(self.sign(body), body.KIND)

    def _own_records_current(self) -> None:
        """This node's own records carry its certificate: after a renewal, sign them anew."""
        if self._signed_with == self._membership.certificate:
            return
        self._signed_with = self._membership.certificate
        for job in self._book.active_jobs():
            if job.creator == self.me:
                self._job_records.pop(job.id, None)
                self._roster_records.pop(job.id, None)

    def _job_record(self, job: Job) -> bytes:
        """This creator's signed announcement of `job`, with the addresses it listens on now (kept for job sync)."""
        assert self._node is not None
        self._own_records_current()
        addresses = tuple(a.split("/p2p/")[0] for a in self._node.listen_addrs[:MAX_ROSTER_ADDRESSES])
        record = self.sign(JobAnnouncement(job.id, job.spec, job.created_at, addresses))
        self._job_records[job.id] = record
        return record

    def _roster_record(self, job: Job) -> bytes:
        """This creator's signed roster: each member with its certificate and the addresses it was
        reached at. Signed once (again after a restart or a renewal), and the same record goes to everyone."""
        assert job.roster is not None and self._node is not None
        self._own_records_current()
        if job.id in self._roster_records:
            return self._roster_records[job.id]
        entries = []
        for member in job.roster:
            cert = self._membership.registry.certificate(member, time.time())
            if cert is not None:
                entries.append(RosterEntry(member, cert.encode(), tuple(self._node.addresses_of(member)[:4])))
        record = self.sign(RosterAnnouncement(job.id, tuple(entries)))
        self._roster_records[job.id] = record
        return record

    async def announce_roster(self, job: Job) -> None:
        """Gossip the roster, and hand it down the job's tree over streams: round 0 cannot start
        until members have it, and gossip may take seconds to reach everyone, drop it, or (above
        64 KB, some 230 members) not carry it at all."""
        assert job.roster is not None and self._jobs is not None
        log.info("roster_announced", job=job.id, members=len(job.roster))
        self._jobs.connect_ahead(job, 0)
        record = self._roster_record(job)
        self._hand_on_roster(job, record)
        await self.publish(record, "roster")

    def _hand_on_roster(self, job: Job, record: bytes) -> None:
        """Pass the job's signed roster to the members below this node in the job's tree."""
        assert job.roster is not None and self._node is not None and self._nursery is not None
        push_down(self._node, self._nursery, ANNOUNCE_PROTOCOL, record, tree_order(job.id, job.roster), job.creator,
                  job.roster, "roster")

    async def _announce_pending(self) -> None:
        """Gossip is best effort: the creator repeats each of its jobs' announcements at doubling gaps
        (announce_interval, 2x, 4x, ...) until the job starts, then every `_RUNNING_ANNOUNCE_PERIOD`
        with its roster, for nodes that came up late. Every gossiped message costs each node a few ms
        per copy it receives: a job re-announced every second kept 100 nodes on 2 cores saturated.
        (Repeats of a message nobody refused, not retries: periods, without a `Backoff`.)"""
        schedule: dict[str, tuple[float, float]] = {}  # job id -> (next announcement at, gap after it)
        while True:
            await trio.sleep(self._config.announce_interval)
            now = time.time()
            for job_id in self._book.forget_ended(now):  # the signed records of jobs long over go too
                self._job_records.pop(job_id, None)
                self._roster_records.pop(job_id, None)
            active = self._book.active_jobs()
            for job_id in schedule.keys() - {job.id for job in active}:
                del schedule[job_id]
            for job in active:
                if job.creator != self.me:
                    continue
                due, gap = schedule.get(job.id, (now, self._config.announce_interval))
                if now < due:
                    continue
                before_start = job.state == "pending" and now <= job.start_at
                schedule[job.id] = (now + gap, gap * 2) if before_start else (now + _RUNNING_ANNOUNCE_PERIOD, gap)
                await self.publish(self._job_record(job), "job")
                if job.roster is not None:
                    await self.publish(self._roster_record(job), "roster")

    # --- joining ----------------------------------------------------------------------------------

    async def maybe_join(self, job: Job) -> None:
        """Join a job this node learned of, if its join policy is auto and its input policy allows."""
        if self._config.join_policy != "auto" or job.state not in ("pending", "running"):
            return
        if not job.spec.masked:  # a plain sum shows the coordinator this node's input: only an explicit join
            log.info("not_joining", job=job.id, reason="a plain sum (secure_aggregation false) needs an explicit join")
            return
        try:
            self._book.check_input(job)
        except InputError as exc:
            log.info("not_joining", job=job.id, reason=str(exc))
            return
        if self.join_refusal(job) is None:
            await self.join(job)

    def join_refusal(self, job: Job) -> str | None:
        """Why this node's input policy (or a training job's participant requirements) keeps it out of
        `job` (logged and counted), or None."""
        refusal = self._book.policy_refusal(job) or self._book.requirement_refusal(job)
        if refusal is not None:
            log.warning("job_not_joined", job=job.id, creator=job.creator.hex()[:16], input=job.spec.data, reason=refusal)
            self._metrics.input_refusals.labels(stage="join").inc()
        return refusal

    async def join(self, job: Job) -> None:
        """Join locally; a member that did not create the job tells the creator, who fixes the roster."""
        self._book.add_member(job.id, self.me)
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
        record = self.sign(JoinAnnouncement(job.id))
        await trio.sleep(self._jitter.uniform(0, _JOIN_SPREAD * max(0.0, job.start_at - time.time())))
        retries = 0
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
                delay = _JOIN_RETRY.next_delay(retries)
                assert delay is not None  # _JOIN_RETRY never gives up: the job's start ends it
                await trio.sleep(min(delay * self._jitter.uniform(0.5, 1.5), max(0.0, job.start_at - time.time())))
                retries += 1
        finally:
            self._joining.discard(job.id)

    # --- receiving --------------------------------------------------------------------------------

    async def _serve_announcement(self, peer: bytes, record: bytes) -> bytes:
        """ANNOUNCE_PROTOCOL: an announcement handed over directly, checked like a gossiped one. A
        member (one the roster lists will do: its certificate may not have reached this node yet) hands
        on rosters it did not sign, down the job's tree; anything else comes from its author."""
        self._membership.refuse_if_revoked(peer, "announcement")
        if record in self._roster_records.values():
            return b"ok"  # a roster this node holds, handed on again (the tree adopts a slow child's children)
        signed = self._opened(record)
        if signed is None:
            raise RemoteProtocolError(peer, "announcement", "rejected: malformed or badly signed")
        self._membership.refuse_if_revoked(signed.author, "announcement")
        relayed = signed.author != peer
        if relayed and not (isinstance(signed.body, RosterAnnouncement)
                            and (peer in signed.body.members or self._membership.is_member(peer))):
            self._metrics.failed_authentications.inc()
            raise RemoteProtocolError(peer, "announcement", "rejected: only a member may hand on an announcement "
                                                            "it did not sign, and only a roster")
        if not self._authentic(signed, signed.author):
            raise RemoteProtocolError(peer, "announcement", "rejected: not signed by a member with a valid certificate")
        await self._on_announcement(signed)
        return b"ok"

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
                self._metrics.encryption_errors.labels(check=exc.check).inc()
            else:
                self._metrics.malformed_messages.labels(kind="announcement").inc()
            log.info("announcement_refused", phase=exc.phase, reason=exc.reason)
            return None

    def _authentic(self, announcement: SignedAnnouncement, sender: bytes) -> bool:
        """Signed by `sender`, a member (admitted now with the certificate it carries, if need be)."""
        if announcement.author != sender:
            self._metrics.failed_authentications.inc()
            return False
        try:
            self._membership.admit_if_unknown(announcement.certificate, sender)
        except RemoteProtocolError:
            return False
        return True

    async def _consume_gossip(self, channel: trio.MemoryReceiveChannel[tuple[bytes, bytes]]) -> None:
        async for sender, data in channel:
            try:
                await self._on_announcement(open_announcement(data))
            except RemoteProtocolError as exc:
                self._metrics.malformed_messages.labels(kind="announcement").inc()
                log.info("announcement_rejected", peer=sender.hex()[:16], reason=exc.reason)

    async def _on_announcement(self, signed: SignedAnnouncement) -> None:
        body, author = signed.body, signed.author
        assert self._node is not None and self._jobs is not None and self._results is not None
        if isinstance(body, JobAnnouncement):
            if author not in self._node.connected_peers():
                self._node.add_addresses(author, body.creator_addresses)
            job = self._book.add_job(body.job_id, body.spec, author, body.created_at)
            known = self._book.jobs.get(body.job_id)  # new, or known from before (the store, after a restart)
            if known is not None and known.creator == author:
                self._job_records.setdefault(known.id, signed.record)
            if job is not None:
                await self._store.write(self._store.put_addresses, [(author, body.creator_addresses)], time.time())
                log.info("job_learned", job=job.id, creator=author.hex()[:16], kind=job.spec.kind)
                await self.maybe_join(job)
                self._jobs.start(job)
        elif isinstance(body, JoinAnnouncement):
            job = self._book.jobs.get(body.job_id)
            if job is None or job.creator != self.me:
                raise RemoteProtocolError(author, "join", "joins go to the job's creator, and this node is not it")
            if job.state != "pending" or job.roster is not None:
                raise RemoteProtocolError(author, "join", f"job {job.id} is {job.state}: its roster is fixed")
            if self._book.add_member(body.job_id, author):
                log.info("member_joined", job=body.job_id, member=author.hex()[:16])
        elif isinstance(body, RosterAnnouncement):
            job = self._book.jobs.get(body.job_id)
            if job is not None and job.creator == author and self._book.set_roster(job.id, body.members):
                log.info("roster_fixed", job=job.id, members=len(body.members), in_roster=self.me in body.members)
                await self._learn_roster(body)
                self._hand_on_roster(job, signed.record)
                self._jobs.connect_ahead(job, 0)
            if job is not None and job.creator == author and job.roster == body.members:
                self._roster_records.setdefault(job.id, signed.record)
        elif isinstance(body, CancelAnnouncement):
            job = self._book.jobs.get(body.job_id)
            if job is not None and job.creator == author and job.state in ("pending", "running"):
                self._book.set_state(job.id, "cancelled")
                log.info("job_cancelled", job=job.id, reason=body.reason)
        elif isinstance(body, ResultAnnouncement):
            self._results.on_announcement(body, author)

    async def _learn_roster(self, roster: RosterAnnouncement) -> None:
        """Admit the roster members' certificates and remember their addresses (in the store too, for a
        restart): every participant of a round can then be checked and dialed, met before or not. Also
        those connected now: a connection another node opened leaves no dialable address behind, and in
        net-100 a coordinator that lost such a client looked it up in the DHT for 4.6 s, mid-phase."""
        assert self._node is not None
        others = [e for e in roster.entries if e.member != self.me]
        self._membership.admit_all([(e.member, e.certificate) for e in others])
        for entry in others:
            self._node.add_addresses(entry.member, entry.addresses)
        await self._store.write(self._store.put_addresses, [(e.member, e.addresses) for e in others], time.time())

    # --- job sync (villaged/job_sync.py) ------------------------------------------------------------

    def active_jobs(self) -> dict[str, bool]:
        """Pending or running job id -> roster known."""
        return {j.id: j.roster is not None for j in self._book.active_jobs()}

    def roster_overdue(self) -> bool:
        """A known job's start has passed and its roster is not here."""
        now = time.time()
        return any(j.roster is None and j.state == "pending" and now > j.start_at for j in self._book.active_jobs())

    def records_for(self, job_id: str, with_job: bool) -> list[bytes]:
        """A job's creator-signed announcement (if `with_job`) and roster, for job sync."""
        job = self._book.jobs[job_id]
        self._own_records_current()
        if job.creator == self.me:  # after a restart, this node's own records are signed again
            if job_id not in self._job_records:
                self._job_record(job)
            if job.roster is not None:
                self._roster_record(job)
        records = (self._job_records.get(job_id) if with_job else None, self._roster_records.get(job_id))
        return [r for r in records if r is not None]

    async def accept_synced(self, peer: bytes, record: bytes) -> None:
        """A job or roster announcement handed on by `peer`: checked like gossip from its author."""
        signed = open_announcement(record)
        if not isinstance(signed.body, (JobAnnouncement, RosterAnnouncement)):
            raise RemoteProtocolError(peer, "job_sync", f"a {signed.body.KIND} announcement is not a job or roster")
        if not self._authentic(signed, signed.author):
            raise RemoteProtocolError(peer, "job_sync", "announcement not signed by a member with a valid certificate")
        await self._on_announcement(signed)
