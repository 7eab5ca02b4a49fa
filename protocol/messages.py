"""The body of every protocol message, validated field by field when decoded.

Each message is a frozen dataclass with `to_wire()` (msgpack-ready values) and `from_wire()`,
which raises `ValueError` or `TypeError` on anything malformed; `protocol.wire` turns those into
`RemoteProtocolError` naming the sender. Id lists are canonical (strictly increasing), so a
repeated id is a decoding error rather than something each machine must remember to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from protocol.params import MAX_PARTICIPANTS, RoundParams
from protocol.shamir import SHARE_BYTES

ID_BYTES = 32
KEY_BYTES = 32
#: Two 66-byte shares (mask key, self-mask seed) plus the 16-byte Poly1305 tag.
SHARE_CIPHERTEXT_BYTES = 2 * SHARE_BYTES + 16
#: A signed AdvertiseKeys or ConsistencySignature frame is about 250 bytes; this leaves room.
MAX_RELAYED_FRAME = 1024
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Invite:
    """Coordinator → client: who takes part in this attempt, and on what terms."""

    KIND: ClassVar[str] = "invite"
    participants: tuple[bytes, ...]
    params: RoundParams

    def to_wire(self) -> Any:
        return [list(self.participants), self.params.to_wire()]

    @classmethod
    def from_wire(cls, value: Any) -> Invite:
        participants, params = _fields(value, 2)
        return cls(_ids(participants, "participants"), RoundParams.from_wire(params))


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Client → all neighbours (relayed verbatim): this attempt's public keys and seed commitment."""

    KIND: ClassVar[str] = "advertise"
    channel_key: bytes  # X25519 public key for the share channel
    mask_key: bytes  # X25519 public key for pairwise masks
    seed_commitment: bytes  # H(context ‖ b_u): lets the coordinator check a rebuilt self-mask seed

    def to_wire(self) -> Any:
        return [self.channel_key, self.mask_key, self.seed_commitment]

    @classmethod
    def from_wire(cls, value: Any) -> AdvertiseKeys:
        channel, mask, commitment = _fields(value, 3)
        return cls(_bin(channel, KEY_BYTES, "channel_key"), _bin(mask, KEY_BYTES, "mask_key"), _bin(commitment, 32, "seed_commitment"))


@dataclass(frozen=True, slots=True)
class KeyBundle:
    """Coordinator → client: the signed AdvertiseKeys frames of the client and its live neighbours."""

    KIND: ClassVar[str] = "keys"
    adverts: tuple[bytes, ...]

    def to_wire(self) -> Any:
        return list(self.adverts)

    @classmethod
    def from_wire(cls, value: Any) -> KeyBundle:
        return cls(_frames(value, "adverts"))


@dataclass(frozen=True, slots=True)
class EncryptedShares:
    """Client → coordinator: for each neighbour, its shares of our mask key and seed, sealed to it."""

    KIND: ClassVar[str] = "shares"
    shares: tuple[tuple[bytes, bytes], ...]  # (recipient, ciphertext), by recipient

    def to_wire(self) -> Any:
        return [[who, ct] for who, ct in self.shares]

    @classmethod
    def from_wire(cls, value: Any) -> EncryptedShares:
        return cls(_addressed(value, SHARE_CIPHERTEXT_BYTES, "shares"))


@dataclass(frozen=True, slots=True)
class ShareDelivery:
    """Coordinator → client: the sealed shares its neighbours sent it; the senders are its U2."""

    KIND: ClassVar[str] = "delivery"
    shares: tuple[tuple[bytes, bytes], ...]  # (sender, ciphertext), by sender

    def to_wire(self) -> Any:
        return [[who, ct] for who, ct in self.shares]

    @classmethod
    def from_wire(cls, value: Any) -> ShareDelivery:
        return cls(_addressed(value, SHARE_CIPHERTEXT_BYTES, "shares"))


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Client → coordinator: y_u as little-endian uint32 words."""

    KIND: ClassVar[str] = "masked"
    vector: bytes

    def to_wire(self) -> Any:
        return self.vector

    @classmethod
    def from_wire(cls, value: Any) -> MaskedInput:
        if type(value) is not bytes or len(value) % 4:
            raise ValueError("vector must be bytes holding whole uint32 words")
        return cls(value)


@dataclass(frozen=True, slots=True)
class SurvivorList:
    """Coordinator → client: U3, the clients whose masked input is in the sum."""

    KIND: ClassVar[str] = "survivors"
    survivors: tuple[bytes, ...]

    def to_wire(self) -> Any:
        return list(self.survivors)

    @classmethod
    def from_wire(cls, value: Any) -> SurvivorList:
        return cls(_ids(value, "survivors"))


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    """Client → coordinator (relayed verbatim): "I saw this U3"; the envelope signature is the vote."""

    KIND: ClassVar[str] = "consistency"
    survivors_digest: bytes

    def to_wire(self) -> Any:
        return self.survivors_digest

    @classmethod
    def from_wire(cls, value: Any) -> ConsistencySignature:
        return cls(_bin(value, 32, "survivors_digest"))


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Coordinator → client: the consistency votes it holds, and which neighbours dropped after sharing."""

    KIND: ClassVar[str] = "unmask_request"
    signatures: tuple[bytes, ...]
    dropped: tuple[bytes, ...]

    def to_wire(self) -> Any:
        return [list(self.signatures), list(self.dropped)]

    @classmethod
    def from_wire(cls, value: Any) -> UnmaskRequest:
        signatures, dropped = _fields(value, 2)
        return cls(_frames(signatures, "signatures"), _ids(dropped, "dropped"))


@dataclass(frozen=True, slots=True)
class UnmaskShares:
    """Client → coordinator: self-mask seed shares of survivors, mask-key shares of the dropped."""

    KIND: ClassVar[str] = "unmask"
    seed_shares: tuple[tuple[bytes, bytes], ...]  # (owner, share)
    key_shares: tuple[tuple[bytes, bytes], ...]

    def to_wire(self) -> Any:
        return [[[o, s] for o, s in self.seed_shares], [[o, s] for o, s in self.key_shares]]

    @classmethod
    def from_wire(cls, value: Any) -> UnmaskShares:
        seeds, keys = _fields(value, 2)
        return cls(_addressed(seeds, SHARE_BYTES, "seed_shares"), _addressed(keys, SHARE_BYTES, "key_shares"))


@dataclass(frozen=True, slots=True)
class Abort:
    """Coordinator → client: this attempt is over; nothing more will be asked."""

    KIND: ClassVar[str] = "abort"
    reason: str

    def to_wire(self) -> Any:
        return self.reason

    @classmethod
    def from_wire(cls, value: Any) -> Abort:
        if type(value) is not str or len(value) > MAX_REASON:
            raise ValueError(f"reason must be a string of at most {MAX_REASON} characters")
        return cls(value)


Message = (
    Invite | AdvertiseKeys | KeyBundle | EncryptedShares | ShareDelivery | MaskedInput
    | SurvivorList | ConsistencySignature | UnmaskRequest | UnmaskShares | Abort
)
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Invite, AdvertiseKeys, KeyBundle, EncryptedShares, ShareDelivery, MaskedInput,
        SurvivorList, ConsistencySignature, UnmaskRequest, UnmaskShares, Abort,
    )
}


def _fields(value: Any, count: int) -> list[Any]:
    if type(value) is not list or len(value) != count:
        raise ValueError(f"expected a list of {count} fields")
    return value


def _bin(value: Any, size: int, name: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
    return value


def _ids(value: Any, name: str) -> tuple[bytes, ...]:
    if type(value) is not list or len(value) > MAX_PARTICIPANTS:
        raise ValueError(f"{name} must be a list of at most {MAX_PARTICIPANTS} ids")
    ids = tuple(_bin(v, ID_BYTES, name) for v in value)
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise ValueError(f"{name} must be strictly increasing (sorted, no repeats)")
    return ids


def _frames(value: Any, name: str) -> tuple[bytes, ...]:
    if type(value) is not list or len(value) > MAX_PARTICIPANTS:
        raise ValueError(f"{name} must be a list of at most {MAX_PARTICIPANTS} frames")
    if any(type(v) is not bytes or len(v) > MAX_RELAYED_FRAME for v in value):
        raise ValueError(f"{name} must hold frames of at most {MAX_RELAYED_FRAME} bytes")
    return tuple(value)


def _addressed(value: Any, size: int, name: str) -> tuple[tuple[bytes, bytes], ...]:
    if type(value) is not list or len(value) > MAX_PARTICIPANTS:
        raise ValueError(f"{name} must be a list of at most {MAX_PARTICIPANTS} entries")
    pairs = tuple((_bin(who, ID_BYTES, name), _bin(data, size, name)) for who, data in (_fields(v, 2) for v in value))
    if any(a[0] >= b[0] for a, b in zip(pairs, pairs[1:])):
        raise ValueError(f"{name} must be ordered by id with no repeats")
    return pairs
