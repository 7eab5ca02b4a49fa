"""Job sync: a node that missed a job's gossip learns the job from a peer over a stream.

Gossip is best effort, and under load py-libp2p's gossipsub leaves a node out of every mesh now
and then (GRAFT flood penalties): in net-100 about one node in a hundred never heard the job and
sat out every round. So each node asks one connected member, a few seconds after it starts and
then every `SYNC_INTERVAL` or so, which active jobs it is missing. The peer answers with the
creator-signed job and roster announcements it holds, as they arrived, and the asker checks them
exactly as it checks gossip: a peer can withhold a job, never forge one. A node that knows a job
whose start has passed without its roster reaching it asks every `ROSTER_CHASE_INTERVAL` or so
instead: round 0 opens a short grace after the start, and a member without the roster sits it out.

A sync that fails (the peer did not answer in time, or refused) is tried again with another random
peer on `SYNC_RETRY`: after `ROSTER_CHASE_INTERVAL` or so, doubling with each failure in a row up to
`SYNC_INTERVAL` (a successful sync is followed by the next one a `SYNC_INTERVAL` later, a period):
in net-300 a node whose few connections had stopped answering streams learned a job 90 s after it
was created, after its start, and was left out of the roster. (The doubling keeps a village whose
syncs fail because it is overloaded from syncing ten times as often.)

The request names the active jobs the asker knows and whether it has their rosters, and the
serial of the newest admin-signed revocation list it holds, so the usual answer is
``[[], None]``: one small stream per node per interval. A peer holding a newer revocation list
hands it over with the records: a node that missed the list's gossip stops admitting a revoked
member by its next sync. The request carries the asker's membership certificate, and the asker
may pick any connected peer: a node that missed the job often missed its peers' certificates too
(net-300: a node with four connections, no certificate for any of them, and no job). A revoked
asker is refused (its admission raises `MemberRevoked`).

Wire: request ``[certificate, [[job id, roster known], ...], revocation serial]`` (serial 0: none
held), reply ``[[signed record, ...], revocation list or None]``.
"""

from __future__ import annotations

import random
from typing import Protocol

import msgpack
import structlog
import trio

from protocol.backoff import Backoff
from protocol.errors import RemoteProtocolError
from villaged.errors import TransportError
from villaged.transport import Node

JOB_SYNC_PROTOCOL = "/village/jobs/2.0.0"  # 2: revocation lists ride along
#: The first sync waits for the node's first connections; later ones are jittered around the interval.
FIRST_SYNC = (3.0, 6.0)
SYNC_INTERVAL = 20.0
ROSTER_CHASE_INTERVAL = 2.0
#: After failed syncs in a row: 2, 4, 8, 16, 20, 20, ... seconds (jittered), for as long as they fail.
SYNC_RETRY = Backoff.doubling(ROSTER_CHASE_INTERVAL, SYNC_INTERVAL).forever()
#: Active jobs named in one request (a village runs a handful at a time).
MAX_JOBS = 64
MAX_CERTIFICATE = 1024
MAX_REQUEST = MAX_CERTIFICATE + 64 * MAX_JOBS + 16
MAX_REPLY = 8 * 1024 * 1024  # rosters of a few hundred members, with certificates and addresses
_TIMEOUT = 10.0

log = structlog.get_logger("villaged.job_sync")


class SyncMembership(Protocol):
    """What job sync needs from villaged/membership.py."""

    certificate: bytes  # this node's own membership certificate (renewed while it runs)

    def admit_if_unknown(self, certificate: bytes, peer: bytes) -> None:
        """Admit `peer`'s certificate unless it is a member already; raises RemoteProtocolError."""

    def held_revocations(self) -> tuple[int, bytes] | None:
        """The newest revocation list held: (serial, list)."""

    def accept_synced_revocations(self, peer: bytes, listed: bytes) -> bool:
        """Adopted? Raises RemoteProtocolError for a bad list."""


class JobRecords(Protocol):
    """What job sync needs from villaged/bulletin.py."""

    def active_jobs(self) -> dict[str, bool]:
        """Pending or running job id -> roster known."""

    def roster_overdue(self) -> bool:
        """A known job's start has passed and its roster is not here."""

    def records_for(self, job_id: str, with_job: bool) -> list[bytes]:
        """The job's signed records (its announcement if `with_job`, and its roster if known)."""

    async def accept_synced(self, peer: bytes, record: bytes) -> None:
        """A record handed on by `peer`, checked like gossip; raises RemoteProtocolError."""


class JobSync:
    def __init__(self, node: Node, membership: SyncMembership, records: JobRecords, jitter: random.Random) -> None:
        self._node = node
        self._membership = membership
        self._records = records
        self._jitter = jitter
        # Open to peers whose certificate has not reached this node yet: the request carries it.
        node.serve(JOB_SYNC_PROTOCOL, self._serve, max_request=MAX_REQUEST, max_request_nonmember=MAX_REQUEST)

    async def run(self) -> None:
        """Sync with one random connected peer now and then (often while a roster is overdue), for as
        long as the node runs."""
        next_sync = trio.current_time() + self._jitter.uniform(*FIRST_SYNC)
        failures = 0  # in a row
        while True:
            await trio.sleep(min(self._jitter.uniform(0.5, 1.5) * ROSTER_CHASE_INTERVAL,
                                 max(0.0, next_sync - trio.current_time())))
            if trio.current_time() < next_sync and not self._records.roster_overdue():
                continue
            peers = self._node.connected_peers()  # listed only when needed: a node may have 300
            if peers:
                failures = 0 if await self.sync_with(self._jitter.choice(peers)) is not None else failures + 1
                next_sync = trio.current_time() + self._jitter.uniform(0.5, 1.5) * _gap_after(failures)

    async def sync_with(self, peer: bytes) -> int | None:
        """Ask `peer` for the jobs and rosters this node lacks; returns how many records it accepted,
        or None if the peer did not answer or refused the request."""
        known = sorted(self._records.active_jobs().items())[:MAX_JOBS]
        held = self._membership.held_revocations()
        try:
            request = msgpack.packb([self._membership.certificate, [[j, r] for j, r in known], held[0] if held else 0])
            reply = await self._node.request(peer, JOB_SYNC_PROTOCOL, request, timeout=_TIMEOUT, max_reply=MAX_REPLY)
            records, revocations = _parse_reply(peer, reply)
        except (TransportError, ValueError, msgpack.UnpackException) as exc:
            log.debug("job_sync_failed", peer=peer.hex()[:16], reason=str(exc))
            return None
        except RemoteProtocolError as exc:
            log.info("job_sync_rejected", peer=peer.hex()[:16], reason=exc.reason)
            return None
        accepted = 0
        for record in records:
            try:
                await self._records.accept_synced(peer, record)
                accepted += 1
            except RemoteProtocolError as exc:
                log.info("job_sync_record_rejected", peer=peer.hex()[:16], reason=exc.reason)
        if revocations is not None:
            try:
                accepted += self._membership.accept_synced_revocations(peer, revocations)
            except RemoteProtocolError as exc:
                log.info("job_sync_revocations_rejected", peer=peer.hex()[:16], reason=exc.reason)
        if accepted:
            log.info("job_sync_learned", peer=peer.hex()[:16], records=accepted)
        return accepted

    async def _serve(self, peer: bytes, request: bytes) -> bytes:
        certificate, asker, asker_serial = _parse_request(peer, request)
        self._membership.admit_if_unknown(certificate, peer)  # raises for a revoked member (MemberRevoked)
        records: list[bytes] = []
        for job_id, have_roster in self._records.active_jobs().items():
            if job_id not in asker:
                records += self._records.records_for(job_id, True)
            elif have_roster and not asker[job_id]:
                records += self._records.records_for(job_id, False)
        held = self._membership.held_revocations()
        return msgpack.packb([records, held[1] if held is not None and held[0] > asker_serial else None])


def _gap_after(failures: int) -> float:
    """Seconds to the next sync after `failures` failed ones in a row (see the module docstring)."""
    if not failures:
        return SYNC_INTERVAL  # a period after a sync that worked
    delay = SYNC_RETRY.next_delay(failures - 1)
    assert delay is not None  # SYNC_RETRY never gives up
    return delay


def _parse_reply(peer: bytes, reply: bytes) -> tuple[list[bytes], bytes | None]:
    """(signed records, revocation list or None) from [[record, ...], revocation list or None]."""
    value = msgpack.unpackb(reply)
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
            and all(type(r) is bytes for r in value[0]) and (value[1] is None or type(value[1]) is bytes)):
        raise RemoteProtocolError(peer, "job_sync", "reply is not [records, revocation list or nil]")
    return value[0], value[1]


def _parse_request(peer: bytes, request: bytes) -> tuple[bytes, dict[str, bool], int]:
    """(the asker's certificate, job id -> roster known, its revocation serial) from
    [certificate, [[job id, roster known], ...], revocation serial]."""
    try:
        value = msgpack.unpackb(request)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(peer, "job_sync", f"request is not msgpack: {exc}") from None
    if not (isinstance(value, list) and len(value) == 3 and type(value[0]) is bytes and len(value[0]) <= MAX_CERTIFICATE):
        raise RemoteProtocolError(peer, "job_sync", "request must be [certificate, jobs, revocation serial]")
    certificate, items, serial = value
    if type(serial) is not int or serial < 0:
        raise RemoteProtocolError(peer, "job_sync", f"revocation serial must be an integer >= 0, got {serial!r}")
    if not isinstance(items, list) or len(items) > MAX_JOBS:
        raise RemoteProtocolError(peer, "job_sync", f"request must list at most {MAX_JOBS} jobs")
    known: dict[str, bool] = {}
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is str and type(item[1]) is bool):
            raise RemoteProtocolError(peer, "job_sync", "each listed job must be [job id, roster known]")
        known[item[0]] = item[1]
    return certificate, known, serial
