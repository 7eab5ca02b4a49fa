"""Small signed announcements: jobs, joins, rosters, cancellations, round results.

Jobs, rosters, cancellations and results travel over gossip (and rosters also over streams);
a join goes over a stream to the job's creator, who alone freezes the roster from them.

Gossip is for small things only (py-libp2p drops large or bursty messages silently), so a result
announcement carries the aggregate's SHA-256, not the aggregate; nodes fetch the vector over a
stream and check it against the digest. Each announcement is signed with the author's Ed25519
member key in addition to libp2p's own message signature, so it can be stored, relayed and
re-verified later by anyone.

    record = msgpack [version, kind, author, fields, certificate,
                      signature over msgpack [version, kind, author, fields, certificate]]

The author's membership certificate rides along, so a node learns the certificate of every member
it hears from, not only of the peers it happens to be connected to: a participant list then never
names someone this node cannot check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import nacl.signing

from protocol.crypto import sign, verify
from protocol.errors import ParameterError, RemoteProtocolError
from protocol.jobs import JobSpec
from protocol.membership import MAX_CERTIFICATE_BYTES
from protocol.messages import MAX_REASON
from protocol.params import MAX_PARTICIPANTS

VERSION = 1
#: Announcements stay far below py-libp2p's silent 1 MiB gossip drop. The largest is a roster:
#: about 240 B per member (id, 160-byte certificate, an address), so 256 KiB hold 1,000 members.
MAX_ANNOUNCEMENT_BYTES = 256 * 1024
MAX_JOB_ID = 64
MAX_ROSTER_ADDRESSES = 4  # per member, in a roster or a job announcement
MAX_ADDRESS_CHARS = 256


@dataclass(frozen=True, slots=True)
class JobAnnouncement:
    KIND: ClassVar[str] = "job"
    job_id: str
    spec: JobSpec
    created_at: float
    # Where members can dial the creator to hand over their joins (hints: Noise checks whom a dial
    # reaches). Without them a hundred members looked the creator up in the DHT at once.
    creator_addresses: tuple[str, ...] = ()

    def fields(self) -> Any:
        return [self.job_id, self.spec.to_dict(), self.created_at, list(self.creator_addresses)]

    @classmethod
    def parse(cls, value: Any) -> JobAnnouncement:
        job_id, spec, created_at, addresses = _list(value, 4)
        try:
            parsed = JobSpec.from_dict(spec)
        except (ParameterError, TypeError) as exc:
            raise ValueError(f"invalid job spec: {exc}") from None
        return cls(_job_id(job_id), parsed, _time(created_at), _addresses(addresses, "the creator"))


@dataclass(frozen=True, slots=True)
class JoinAnnouncement:
    KIND: ClassVar[str] = "join"
    job_id: str

    def fields(self) -> Any:
        return [self.job_id]

    @classmethod
    def parse(cls, value: Any) -> JoinAnnouncement:
        (job_id,) = _list(value, 1)
        return cls(_job_id(job_id))


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One member of a roster: its id, its membership certificate (self-authenticating, signed by
    the admin) and the addresses the creator reached it at (hints: Noise checks whom a dial reaches)."""

    member: bytes
    certificate: bytes
    addresses: tuple[str, ...]

    def fields(self) -> Any:
        return [self.member, self.certificate, list(self.addresses)]

    @classmethod
    def parse(cls, value: Any) -> RosterEntry:
        member, certificate, addresses = _list(value, 3)
        if type(member) is not bytes or len(member) != 32:
            raise ValueError("roster member must be a 32-byte id")
        if type(certificate) is not bytes or not 0 < len(certificate) <= MAX_CERTIFICATE_BYTES:
            raise ValueError(f"certificate of roster member {member.hex()[:16]} missing or too large")
        return cls(member, certificate, _addresses(addresses, f"roster member {member.hex()[:16]}"))


@dataclass(frozen=True, slots=True)
class RosterAnnouncement:
    """The job creator's frozen list of members at the job's start: every election uses it, so all
    nodes name the same coordinator even when announcements reached them unevenly. It carries each
    member's certificate and addresses, so a node can check and reach every participant of a round
    without having met it first (no full mesh of connections is needed)."""

    KIND: ClassVar[str] = "roster"
    job_id: str
    entries: tuple[RosterEntry, ...]

    @property
    def members(self) -> tuple[bytes, ...]:
        return tuple(entry.member for entry in self.entries)

    def fields(self) -> Any:
        return [self.job_id, [entry.fields() for entry in self.entries]]

    @classmethod
    def parse(cls, value: Any) -> RosterAnnouncement:
        job_id, entries = _list(value, 2)
        if type(entries) is not list:
            raise ValueError("roster entries must be a list")
        parsed = tuple(RosterEntry.parse(entry) for entry in entries)
        if any(a.member >= b.member for a, b in zip(parsed, parsed[1:])):
            raise ValueError("roster members must be strictly increasing")
        return cls(_job_id(job_id), parsed)


@dataclass(frozen=True, slots=True)
class CancelAnnouncement:
    KIND: ClassVar[str] = "cancel"
    job_id: str
    reason: str

    def fields(self) -> Any:
        return [self.job_id, self.reason]

    @classmethod
    def parse(cls, value: Any) -> CancelAnnouncement:
        job_id, reason = _list(value, 2)
        if type(reason) is not str or len(reason) > MAX_REASON:
            raise ValueError("reason must be a short string")
        return cls(_job_id(job_id), reason)


@dataclass(frozen=True, slots=True)
class ResultAnnouncement:
    """A round's result, signed by the attempt's coordinator. It stays small enough for gossip at any
    round size: the aggregate and the consistency votes (the evidence that the attempt ran, checked
    by protocol/evidence.py) travel beside it on the push and fetch streams, bound here by digest."""

    KIND: ClassVar[str] = "result"
    #: The form of the fields. Form 1 (before issue #15) carried no evidence and is refused; form 2
    #: (before training jobs) had no model digest and is read with an empty one.
    FORM: ClassVar[int] = 3
    job_id: str
    round: int
    attempt: int
    survivors: tuple[bytes, ...]  # U3: whose inputs are in the sum
    dropped: tuple[bytes, ...]  # invited, not in the sum
    aggregate_digest: bytes  # SHA-256 of the aggregate's little-endian uint32 words
    votes_digest: bytes  # protocol.evidence.votes_digest of the ConsistencySignature frames
    phase_seconds: dict[str, float]
    model_digest: bytes = b""  # training jobs: SHA-256 of the model this round produced; else empty

    @property
    def participants(self) -> tuple[bytes, ...]:
        """Everyone the coordinator invited: U3 and the dropped, sorted."""
        return tuple(sorted(self.survivors + self.dropped))

    def fields(self) -> Any:
        return [self.FORM, self.job_id, self.round, self.attempt, list(self.survivors), list(self.dropped),
                self.aggregate_digest, self.votes_digest, sorted(self.phase_seconds.items()), self.model_digest]

    @classmethod
    def parse(cls, value: Any) -> ResultAnnouncement:
        if type(value) is not list or not value or value[0] not in (2, cls.FORM) or type(value[0]) is not int:
            form = value[0] if type(value) is list and value and type(value[0]) is int else 1
            raise ValueError(f"result form {form} is not accepted: form {cls.FORM} (with the round's evidence) is required")
        if value[0] == 2:
            value = [*value, b""]
        _, job_id, round_number, attempt, survivors, dropped, digest, votes_digest, phases, model = _list(value, 10)
        if type(model) is not bytes or len(model) not in (0, 32):
            raise ValueError("model_digest must be empty or 32 bytes")
        for name, hashed in (("aggregate_digest", digest), ("votes_digest", votes_digest)):
            if type(hashed) is not bytes or len(hashed) != 32:
                raise ValueError(f"{name} must be 32 bytes")
        if type(phases) is not list or len(phases) > 16:
            raise ValueError("phase_seconds must be a short list")
        timings = {}
        for item in phases:
            name, seconds = _list(item, 2)
            if type(name) is not str or len(name) > 32 or type(seconds) is not float or not 0 <= seconds <= 86_400:
                raise ValueError("phase_seconds entries must be [name, seconds]")
            timings[name] = seconds
        survivor_ids, dropped_ids = _ids(survivors, "survivors"), _ids(dropped, "dropped")
        if set(survivor_ids) & set(dropped_ids):
            raise ValueError("a member is both a survivor and dropped")
        return cls(_job_id(job_id), _count(round_number, "round"), _count(attempt, "attempt"),
                   survivor_ids, dropped_ids, digest, votes_digest, timings, model)


Announcement = JobAnnouncement | JoinAnnouncement | RosterAnnouncement | CancelAnnouncement | ResultAnnouncement
_TYPES: dict[str, type[Announcement]] = {
    c.KIND: c for c in (JobAnnouncement, JoinAnnouncement, RosterAnnouncement, CancelAnnouncement, ResultAnnouncement)
}


@dataclass(frozen=True, slots=True)
class SignedAnnouncement:
    author: bytes
    body: Announcement
    certificate: bytes  # the author's membership certificate, still to be verified by the caller
    record: bytes


def aggregate_digest(aggregate_words: bytes) -> bytes:
    return hashlib.sha256(aggregate_words).digest()


def sign_announcement(body: Announcement, signing_key: nacl.signing.SigningKey, certificate: bytes) -> bytes:
    author = bytes(signing_key.verify_key)
    signed = msgpack.packb([VERSION, body.KIND, author, body.fields(), certificate], use_bin_type=True)
    record = msgpack.packb(
        [VERSION, body.KIND, author, body.fields(), certificate, sign(signing_key, signed)], use_bin_type=True
    )
    if len(record) > MAX_ANNOUNCEMENT_BYTES:
        raise ParameterError("announcement", f"{len(record)} bytes exceeds the gossip limit of {MAX_ANNOUNCEMENT_BYTES}")
    return record


def open_announcement(record: bytes) -> SignedAnnouncement:
    """Validate and authenticate; raises only `RemoteProtocolError`."""
    if type(record) is not bytes or len(record) > MAX_ANNOUNCEMENT_BYTES:
        raise RemoteProtocolError(None, "announcement", "missing or larger than the gossip limit")
    try:
        value = msgpack.unpackb(record, raw=False, strict_map_key=True, max_bin_len=MAX_ANNOUNCEMENT_BYTES,
                                max_str_len=MAX_ANNOUNCEMENT_BYTES, max_array_len=MAX_PARTICIPANTS, max_map_len=64,
                                max_ext_len=0)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(None, "announcement", f"not valid msgpack ({type(exc).__name__})") from None
    if type(value) is not list or len(value) != 6:
        raise RemoteProtocolError(None, "announcement", "not a list of 6 fields")
    version, kind, author, fields, certificate, signature = value
    if type(author) is not bytes or len(author) != 32:
        raise RemoteProtocolError(None, "announcement", "author is not a 32-byte member id")
    if version != VERSION or type(version) is not int:
        raise RemoteProtocolError(author, "announcement", f"unsupported version {version!r}")
    body_type = _TYPES.get(kind) if type(kind) is str else None
    if body_type is None:
        raise RemoteProtocolError(author, "announcement", f"unknown kind {kind!r}")
    if type(signature) is not bytes or len(signature) != 64:
        raise RemoteProtocolError(author, kind, "signature is not 64 bytes")
    if type(certificate) is not bytes or len(certificate) > MAX_CERTIFICATE_BYTES:
        raise RemoteProtocolError(author, kind, "certificate missing or too large")
    verify(author, msgpack.packb([version, kind, author, fields, certificate], use_bin_type=True), signature, kind)
    try:
        body = body_type.parse(fields)
    except (ValueError, TypeError) as exc:
        raise RemoteProtocolError(author, kind, f"malformed: {exc}") from None
    return SignedAnnouncement(author, body, certificate, record)


def _list(value: Any, count: int) -> list[Any]:
    if type(value) is not list or len(value) != count:
        raise ValueError(f"expected {count} fields")
    return value


def _job_id(value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_JOB_ID or not value.isascii() or not value.replace("-", "").isalnum():
        raise ValueError("job id must be 1-64 ASCII letters, digits or dashes")
    return value


def _time(value: Any) -> float:
    if type(value) is not float or not 0 <= value < 1e11:
        raise ValueError("timestamp must be seconds since the epoch")
    return value


def _addresses(value: Any, whose: str) -> tuple[str, ...]:
    if (type(value) is not list or len(value) > MAX_ROSTER_ADDRESSES
            or any(type(a) is not str or not 0 < len(a) <= MAX_ADDRESS_CHARS for a in value)):
        raise ValueError(f"addresses of {whose} must be at most {MAX_ROSTER_ADDRESSES} short strings")
    return tuple(value)


def _count(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _ids(value: Any, name: str) -> tuple[bytes, ...]:
    if type(value) is not list or any(type(v) is not bytes or len(v) != 32 for v in value):
        raise ValueError(f"{name} must be a list of 32-byte ids")
    ids = tuple(value)
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise ValueError(f"{name} must be strictly increasing")
    return ids
