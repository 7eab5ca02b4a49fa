"""Village membership: an admin key signs expiring certificates; peers without one are ignored.

Without membership anyone could join rounds under many fake identities (a Sybil attack), so a
village has one admin Ed25519 key pair. The admin signs a `MembershipCertificate` for each member
id (the member's raw 32-byte Ed25519 public key, the same key libp2p uses for its peer id). Every
daemon loads the admin public key, learns the certificates of the peers it talks to, and drops
every message from a peer whose certificate is missing, expired, for another village or forged.

Rules:

1. Pure: no I/O, no clock. Every function that judges validity takes ``now`` (Unix seconds) as an
   argument, and key generation takes its 32-byte seed as an argument.
2. A certificate on the wire is the msgpack array
   ``[version, village_id, member_id, issued_at, expires_at, admin_public_key, signature]``.
   The signature covers ``SIGNING_CONTEXT`` followed by the msgpack encoding of the first six
   fields, so a signature made for another purpose with the same key never verifies here.
3. Decoding is strict: exact field count and types, no trailing bytes, bounded size. Any bad
   input raises `RemoteProtocolError(peer=None, phase="membership", reason=...)` and nothing else.
4. A certificate is valid at ``now`` when ``issued_at - MAX_CLOCK_SKEW_SECONDS <= now < expires_at``.
5. Revocation: the admin signs a `RevocationList` (a serial number, the member ids it revokes, each
   with when and why). On the wire it is the msgpack array
   ``[version, village_id, serial, issued_at, [[member_id, revoked_at, reason], ...],
   admin_public_key, signature]``, signed like a certificate under its own context, members
   sorted by id. A list with a higher serial replaces the one held (never the reverse: a replayed
   older list un-revokes nobody); the registry refuses a revoked member at every admission and
   drops its certificate, whatever certificate it shows. Certificates are short-lived (villagectl
   issues 7 days by default) so that a node that never hears of a revocation still loses a
   removed member within days.

Next: `villaged/` loads the certificates from disk and the network and feeds them to
`MemberRegistry`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgpack
import nacl.exceptions
import nacl.signing

from protocol.errors import MemberRevoked, ParameterError, RemoteProtocolError

__all__ = [
    "CERTIFICATE_VERSION",
    "MAX_CERTIFICATE_BYTES",
    "MAX_CLOCK_SKEW_SECONDS",
    "MAX_REVOCATION_REASON_CHARS",
    "MAX_REVOCATIONS_BYTES",
    "AdminKeyPair",
    "MemberRegistry",
    "MembershipCertificate",
    "RevocationList",
    "RevokedMember",
    "decode_certificate",
    "decode_revocations",
    "issue_certificate",
    "issue_revocations",
    "verify_certificate",
    "verify_revocations",
    "village_id_for",
]

CERTIFICATE_VERSION: Final = 1
KEY_SIZE: Final = 32  # Ed25519 public keys and seeds
SIGNATURE_SIZE: Final = 64  # Ed25519 signatures
VILLAGE_ID_SIZE: Final = 16  # 128 bits: collision-free for any realistic number of villages
# 7 fields: 1 + 17 + 34 + 9 + 9 + 34 + 66 = 170 bytes at most for version 1; 512 leaves room for
# a later version while bounding the work an attacker can make us do per certificate.
MAX_CERTIFICATE_BYTES: Final = 512
# Members' clocks disagree a little; a certificate issued "in the future" by up to five minutes
# is accepted so that a freshly admitted member is not rejected by a peer whose clock is behind.
MAX_CLOCK_SKEW_SECONDS: Final = 300
SIGNING_CONTEXT: Final = b"village membership certificate v1\x00"
_PHASE: Final = "membership"
# Timestamps are Unix seconds; 2**40 s is ~35,000 years, and bounding them keeps msgpack ints small.
_MAX_TIMESTAMP: Final = 2**40
REVOCATIONS_VERSION: Final = 1
REVOCATIONS_SIGNING_CONTEXT: Final = b"village revocation list v1\x00"
_REVOCATIONS_PHASE: Final = "revocations"
# A village revokes a handful of members between re-keyings; 1,000 entries of at most ~250 bytes
# bound the list (and the work of checking one) at 256 KiB.
MAX_REVOKED_MEMBERS: Final = 1000
MAX_REVOCATION_REASON_CHARS: Final = 200
MAX_REVOCATIONS_BYTES: Final = 256 * 1024


def _reject(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(peer=None, phase=_PHASE, reason=reason)


def village_id_for(admin_public_key: bytes) -> bytes:
    """The village id derived from the admin public key, so a village needs no separate name."""
    if len(admin_public_key) != KEY_SIZE:
        raise ParameterError("admin_public_key", f"must be {KEY_SIZE} bytes, got {len(admin_public_key)}")
    return hashlib.blake2b(admin_public_key, digest_size=VILLAGE_ID_SIZE, person=b"village-id").digest()


@dataclass(frozen=True, slots=True)
class AdminKeyPair:
    """The village admin's Ed25519 key pair. Built from a 32-byte seed the caller generated."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != KEY_SIZE:
            raise ParameterError("seed", f"must be {KEY_SIZE} bytes")

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def village_id(self) -> bytes:
        return village_id_for(self.public_key)


@dataclass(frozen=True, slots=True)
class MembershipCertificate:
    """A signed statement "member_id belongs to village_id from issued_at until expires_at".

    Building one checks field sizes and ordering (not the signature: see `verify_certificate`).
    """

    village_id: bytes
    member_id: bytes
    issued_at: int
    expires_at: int
    admin_public_key: bytes
    signature: bytes
    version: int = CERTIFICATE_VERSION

    def __post_init__(self) -> None:
        problem = _field_problem(self)
        if problem is not None:
            raise ParameterError(*problem)

    def signed_bytes(self) -> bytes:
        """The exact bytes the admin signs."""
        return SIGNING_CONTEXT + _pack(
            [self.version, self.village_id, self.member_id, self.issued_at, self.expires_at, self.admin_public_key]
        )

    def encode(self) -> bytes:
        return _pack(
            [
                self.version,
                self.village_id,
                self.member_id,
                self.issued_at,
                self.expires_at,
                self.admin_public_key,
                self.signature,
            ]
        )

    def is_valid_at(self, now: float) -> bool:
        return self.issued_at - MAX_CLOCK_SKEW_SECONDS <= now < self.expires_at


def _pack(fields: list[object]) -> bytes:
    packed = msgpack.packb(fields, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def _is_int(value: object) -> bool:
    # bool is an int subclass; a msgpack `true` must not pass as a version, serial or timestamp.
    return isinstance(value, int) and not isinstance(value, bool)


def _timestamp_problem(stamp: object) -> str | None:
    if not _is_int(stamp) or not 0 <= stamp < _MAX_TIMESTAMP:  # type: ignore[operator]
        return f"must be an integer Unix time in [0, 2**40), got {stamp!r}"
    return None


def _field_problem(cert: MembershipCertificate) -> tuple[str, str] | None:
    """(field, reason) for the first bad field, or None. Shared by the constructor and the decoder."""
    if not _is_int(cert.version) or cert.version != CERTIFICATE_VERSION:
        return "version", f"unsupported certificate version {cert.version!r}, expected {CERTIFICATE_VERSION}"
    sizes = (
        ("village_id", cert.village_id, VILLAGE_ID_SIZE),
        ("member_id", cert.member_id, KEY_SIZE),
        ("admin_public_key", cert.admin_public_key, KEY_SIZE),
        ("signature", cert.signature, SIGNATURE_SIZE),
    )
    for name, value, size in sizes:
        if not isinstance(value, bytes) or len(value) != size:
            got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
            return name, f"must be {size} bytes, got {got}"
    for name, stamp in (("issued_at", cert.issued_at), ("expires_at", cert.expires_at)):
        if (problem := _timestamp_problem(stamp)) is not None:
            return name, problem
    if cert.expires_at <= cert.issued_at:
        return "expires_at", f"{cert.expires_at} is not after issued_at {cert.issued_at}"
    return None


def issue_certificate(
    admin_signing_key: nacl.signing.SigningKey,
    village_id: bytes,
    member_id: bytes,
    issued_at: int,
    expires_at: int,
) -> MembershipCertificate:
    """Sign a certificate admitting ``member_id`` to ``village_id`` for ``[issued_at, expires_at)``.

    Raises:
        ParameterError: a field has the wrong size or the validity period is empty.
    """
    unsigned = MembershipCertificate(
        village_id=village_id,
        member_id=member_id,
        issued_at=issued_at,
        expires_at=expires_at,
        admin_public_key=bytes(admin_signing_key.verify_key),
        signature=bytes(SIGNATURE_SIZE),
    )
    signature = admin_signing_key.sign(unsigned.signed_bytes()).signature
    return MembershipCertificate(
        village_id=village_id,
        member_id=member_id,
        issued_at=issued_at,
        expires_at=expires_at,
        admin_public_key=unsigned.admin_public_key,
        signature=bytes(signature),
    )


def decode_certificate(cert_bytes: bytes) -> MembershipCertificate:
    """Parse a certificate without judging it (no signature, village or time check).

    Raises:
        RemoteProtocolError: the bytes are not a well-formed version-1 certificate.
    """
    if not isinstance(cert_bytes, (bytes, bytearray, memoryview)):
        raise _reject(f"certificate must be bytes, got {type(cert_bytes).__name__}")
    if len(cert_bytes) > MAX_CERTIFICATE_BYTES:
        raise _reject(f"certificate is {len(cert_bytes)} bytes, limit {MAX_CERTIFICATE_BYTES}")
    try:
        fields = msgpack.unpackb(
            bytes(cert_bytes),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_CERTIFICATE_BYTES,
            max_str_len=MAX_CERTIFICATE_BYTES,
            max_array_len=16,
            max_map_len=16,
            max_ext_len=MAX_CERTIFICATE_BYTES,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ExtraData and FormatError derive from ValueError; StackError from UnpackException.
        raise _reject(f"certificate is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(fields, list):
        raise _reject(f"certificate must be a msgpack array, got {type(fields).__name__}")
    if len(fields) != 7:
        raise _reject(f"certificate must have 7 fields, got {len(fields)}")
    version, village_id, member_id, issued_at, expires_at, admin_public_key, signature = fields
    try:
        return MembershipCertificate(
            version=version,
            village_id=village_id,
            member_id=member_id,
            issued_at=issued_at,
            expires_at=expires_at,
            admin_public_key=admin_public_key,
            signature=signature,
        )
    except ParameterError as exc:
        raise _reject(f"certificate field {exc.field}: {exc.reason}") from None


@functools.lru_cache(maxsize=8192)
def _signed_by_admin(signed: bytes, signature: bytes, admin_public_key: bytes) -> bool:
    """Checked once per certificate: a node meets the same certificates again and again (in rosters,
    job sync, certificate exchanges; in netsim, twenty daemons of one process learn the same 300)."""
    try:
        nacl.signing.VerifyKey(admin_public_key).verify(signed, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True


def verify_certificate(
    cert_bytes: bytes,
    admin_public_key: bytes,
    village_id: bytes,
    now: float,
    member_id: bytes | None = None,
) -> MembershipCertificate:
    """Decode a certificate and check it is valid for this village at ``now``.

    Args:
        member_id: when given, the certificate must be for this member (the peer presenting it),
            so a member cannot lend its certificate to another identity.

    Raises:
        RemoteProtocolError: malformed, signed by another admin, for another village or member,
            bad signature, not yet valid, or expired. ``reason`` says which.
    """
    cert = decode_certificate(cert_bytes)
    if cert.admin_public_key != admin_public_key:
        raise _reject(f"certificate signed by admin {cert.admin_public_key.hex()[:16]}, not this village's admin")
    if cert.village_id != village_id:
        raise _reject(f"certificate is for village {cert.village_id.hex()}, not {village_id.hex()}")
    if member_id is not None and cert.member_id != member_id:
        raise _reject(f"certificate is for member {cert.member_id.hex()[:16]}, presented by {member_id.hex()[:16]}")
    if not _signed_by_admin(cert.signed_bytes(), cert.signature, admin_public_key):
        raise _reject("bad certificate signature")
    if now < cert.issued_at - MAX_CLOCK_SKEW_SECONDS:
        raise _reject(f"certificate not valid until {cert.issued_at} (now {now:.0f}); check the clocks")
    if now >= cert.expires_at:
        raise _reject(f"certificate expired at {cert.expires_at} (now {now:.0f}); ask the admin to re-admit")
    return cert


@dataclass(frozen=True, slots=True)
class RevokedMember:
    """One entry of a revocation list: who, since when (Unix seconds), and the admin's note."""

    member_id: bytes
    revoked_at: int
    reason: str = ""

    def __post_init__(self) -> None:
        problem = _entry_problem(self.member_id, self.revoked_at, self.reason)
        if problem is not None:
            raise ParameterError(*problem)


def _entry_problem(member_id: object, revoked_at: object, reason: object) -> tuple[str, str] | None:
    if not isinstance(member_id, bytes) or len(member_id) != KEY_SIZE:
        got = f"{len(member_id)} bytes" if isinstance(member_id, bytes) else type(member_id).__name__
        return "member_id", f"must be {KEY_SIZE} bytes, got {got}"
    if (problem := _timestamp_problem(revoked_at)) is not None:
        return "revoked_at", problem
    if not isinstance(reason, str) or len(reason) > MAX_REVOCATION_REASON_CHARS:
        return "reason", f"must be text of at most {MAX_REVOCATION_REASON_CHARS} characters"
    return None


@dataclass(frozen=True, slots=True)
class RevocationList:
    """The admin's signed word "these members no longer belong to village_id", version ``serial``.

    Building one checks every field (entries sorted by member id, none twice), not the signature:
    see `verify_revocations`.
    """

    village_id: bytes
    serial: int
    issued_at: int
    revoked: tuple[RevokedMember, ...]
    admin_public_key: bytes
    signature: bytes
    version: int = REVOCATIONS_VERSION

    def __post_init__(self) -> None:
        problem = _revocations_problem(self)
        if problem is not None:
            raise ParameterError(*problem)

    def _fields(self) -> list[object]:
        entries = [[r.member_id, r.revoked_at, r.reason] for r in self.revoked]
        return [self.version, self.village_id, self.serial, self.issued_at, entries, self.admin_public_key]

    def signed_bytes(self) -> bytes:
        """The exact bytes the admin signs."""
        return REVOCATIONS_SIGNING_CONTEXT + _pack(self._fields())

    def encode(self) -> bytes:
        return _pack([*self._fields(), self.signature])


def _revocations_problem(listed: RevocationList) -> tuple[str, str] | None:
    """(field, reason) for the first bad field of a revocation list, or None."""
    if not _is_int(listed.version) or listed.version != REVOCATIONS_VERSION:
        return "version", f"unsupported revocation list version {listed.version!r}, expected {REVOCATIONS_VERSION}"
    for name, value, size in (("village_id", listed.village_id, VILLAGE_ID_SIZE),
                              ("admin_public_key", listed.admin_public_key, KEY_SIZE),
                              ("signature", listed.signature, SIGNATURE_SIZE)):
        if not isinstance(value, bytes) or len(value) != size:
            got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
            return name, f"must be {size} bytes, got {got}"
    if not _is_int(listed.serial) or not 1 <= listed.serial < _MAX_TIMESTAMP:
        return "serial", f"must be an integer in [1, 2**40), got {listed.serial!r}"
    if (problem := _timestamp_problem(listed.issued_at)) is not None:
        return "issued_at", problem
    if not isinstance(listed.revoked, tuple) or len(listed.revoked) > MAX_REVOKED_MEMBERS:
        return "revoked", f"must list at most {MAX_REVOKED_MEMBERS} members"
    previous = b""
    for index, entry in enumerate(listed.revoked):
        if not isinstance(entry, RevokedMember):
            return f"revoked[{index}]", "must be a RevokedMember"
        if entry.member_id <= previous:
            return f"revoked[{index}].member_id", "members must be sorted by id, each listed once"
        previous = entry.member_id
    return None


def issue_revocations(
    admin_signing_key: nacl.signing.SigningKey,
    village_id: bytes,
    serial: int,
    issued_at: int,
    revoked: Iterable[RevokedMember],
) -> RevocationList:
    """Sign revocation list number ``serial`` revoking ``revoked`` (in any order; each member once).

    Raises:
        ParameterError: a field is out of range, or a member is listed twice.
    """
    entries = tuple(sorted(revoked, key=lambda r: r.member_id))
    unsigned = RevocationList(village_id, serial, issued_at, entries, bytes(admin_signing_key.verify_key),
                              bytes(SIGNATURE_SIZE))
    signature = bytes(admin_signing_key.sign(unsigned.signed_bytes()).signature)
    return RevocationList(village_id, serial, issued_at, entries, unsigned.admin_public_key, signature)


def _reject_revocations(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(peer=None, phase=_REVOCATIONS_PHASE, reason=reason)


def decode_revocations(data: bytes) -> RevocationList:
    """Parse a revocation list without judging it (no signature or village check).

    Raises:
        RemoteProtocolError: the bytes are not a well-formed list; ``reason`` names the field.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _reject_revocations(f"revocation list must be bytes, got {type(data).__name__}")
    if len(data) > MAX_REVOCATIONS_BYTES:
        raise _reject_revocations(f"revocation list is {len(data)} bytes, limit {MAX_REVOCATIONS_BYTES}")
    try:
        fields = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True,
                                 max_array_len=MAX_REVOKED_MEMBERS, max_map_len=16)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _reject_revocations(f"revocation list is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(fields, list):
        raise _reject_revocations(f"revocation list must be a msgpack array, got {type(fields).__name__}")
    if len(fields) != 7:
        raise _reject_revocations(f"revocation list must have 7 fields, got {len(fields)}")
    version, village_id, serial, issued_at, entries, admin_public_key, signature = fields
    if not isinstance(entries, list):
        raise _reject_revocations(f"revocation list field revoked: must be an array, got {type(entries).__name__}")
    revoked = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 3:
            raise _reject_revocations(f"revocation list field revoked[{index}]: must be [member_id, revoked_at, reason]")
        if (problem := _entry_problem(*entry)) is not None:
            raise _reject_revocations(f"revocation list field revoked[{index}].{problem[0]}: {problem[1]}")
        revoked.append(RevokedMember(*entry))
    try:
        return RevocationList(village_id, serial, issued_at, tuple(revoked), admin_public_key, signature, version)
    except ParameterError as exc:
        raise _reject_revocations(f"revocation list field {exc.field}: {exc.reason}") from None


def verify_revocations(data: bytes, admin_public_key: bytes, village_id: bytes) -> RevocationList:
    """Decode a revocation list and check that this village's admin signed it.

    Raises:
        RemoteProtocolError: malformed, signed by another admin, for another village, or a bad
            signature. ``reason`` says which.
    """
    listed = decode_revocations(data)
    if listed.admin_public_key != admin_public_key:
        raise _reject_revocations(f"revocation list signed by admin {listed.admin_public_key.hex()[:16]}, "
                                  "not this village's admin")
    if listed.village_id != village_id:
        raise _reject_revocations(f"revocation list is for village {listed.village_id.hex()}, not {village_id.hex()}")
    try:
        nacl.signing.VerifyKey(admin_public_key).verify(listed.signed_bytes(), listed.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise _reject_revocations("bad revocation list signature") from None
    return listed


class MemberRegistry:
    """The members a daemon currently knows: member id -> its newest valid certificate, minus the
    members the newest revocation list names.

    Expiry is judged at every query with the caller's ``now``, so nothing has to fire when a
    certificate runs out; `prune` only frees the memory. Revocation drops the certificate at once,
    and every later `admit` of a revoked member raises `MemberRevoked`, so an admission point that
    goes through the registry cannot forget it.
    """

    def __init__(self, admin_public_key: bytes, village_id: bytes) -> None:
        if len(admin_public_key) != KEY_SIZE:
            raise ParameterError("admin_public_key", f"must be {KEY_SIZE} bytes, got {len(admin_public_key)}")
        if len(village_id) != VILLAGE_ID_SIZE:
            raise ParameterError("village_id", f"must be {VILLAGE_ID_SIZE} bytes, got {len(village_id)}")
        self.admin_public_key = admin_public_key
        self.village_id = village_id
        self._certificates: dict[bytes, MembershipCertificate] = {}
        self._revocations: RevocationList | None = None
        self._revoked: dict[bytes, RevokedMember] = {}

    @property
    def revocations(self) -> RevocationList | None:
        """The newest revocation list adopted, or None."""
        return self._revocations

    def apply_revocations(self, data: bytes) -> RevocationList | None:
        """Verify a revocation list and adopt it if its serial is higher than the held one's, dropping
        the certificates of the members it revokes. Returns the list if adopted, None if it is not
        newer (an older or the same serial is ignored: a replay never un-revokes anyone).

        Raises:
            RemoteProtocolError: the list is malformed or not signed by this village's admin.
        """
        listed = verify_revocations(data, self.admin_public_key, self.village_id)
        if self._revocations is not None and listed.serial <= self._revocations.serial:
            return None
        self._revocations = listed
        self._revoked = {r.member_id: r for r in listed.revoked}
        for member in self._revoked:
            self._certificates.pop(member, None)
        return listed

    def revocation(self, member_id: bytes) -> RevokedMember | None:
        """The entry revoking ``member_id`` in the held list, or None."""
        return self._revoked.get(member_id)

    def admit(self, cert_bytes: bytes, now: float, member_id: bytes | None = None) -> MembershipCertificate:
        """Verify a certificate and remember it if it is newer than the one we hold.

        A newer certificate is one issued later (or, issued at the same time, expiring later), so
        replaying an old certificate never shortens or replaces a re-admission.

        Returns the certificate now held for that member.

        Raises:
            MemberRevoked: the member is on the held revocation list (whatever its certificate).
            RemoteProtocolError: the certificate is not valid (see `verify_certificate`).
        """
        cert = verify_certificate(cert_bytes, self.admin_public_key, self.village_id, now, member_id)
        revoked = self._revoked.get(cert.member_id)
        if revoked is not None:
            assert self._revocations is not None
            note = f": {revoked.reason}" if revoked.reason else ""
            raise MemberRevoked(cert.member_id, _PHASE, f"member {cert.member_id.hex()[:16]} was revoked at "
                                f"{revoked.revoked_at} by revocation list {self._revocations.serial}{note}")
        held = self._certificates.get(cert.member_id)
        if held is None or (cert.issued_at, cert.expires_at) > (held.issued_at, held.expires_at):
            self._certificates[cert.member_id] = cert
            return cert
        return held

    def is_member(self, member_id: bytes, now: float) -> bool:
        cert = self._certificates.get(member_id)
        return cert is not None and cert.is_valid_at(now)

    def certificate(self, member_id: bytes, now: float) -> MembershipCertificate | None:
        """The valid certificate for ``member_id`` at ``now``, or None."""
        cert = self._certificates.get(member_id)
        return cert if cert is not None and cert.is_valid_at(now) else None

    def members(self, now: float) -> list[MembershipCertificate]:
        """Every certificate valid at ``now``, ordered by member id."""
        return sorted(
            (c for c in self._certificates.values() if c.is_valid_at(now)), key=lambda c: c.member_id
        )

    def prune(self, now: float) -> list[bytes]:
        """Forget expired certificates; returns the member ids removed."""
        expired = [m for m, c in self._certificates.items() if now >= c.expires_at]
        for member in expired:
            del self._certificates[member]
        return sorted(expired)
