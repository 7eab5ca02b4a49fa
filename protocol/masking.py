"""Key derivation and mask arithmetic shared by clients and the coordinator.

Every derived key is bound to the round context and to both parties, so no key or mask is ever
reused across rounds, attempts, vector shapes or pairs, even if a caller reused a key pair.
Sign convention (fixed by the wire spec): for a pair u, v with u < v by member id bytes, u adds
PRG(k_uv) and v subtracts it.
"""

from __future__ import annotations

import numpy as np

from protocol.crypto import expand_mask, hkdf, sha256

_MASK_INFO = b"village/secagg/mask/v1"
_SELF_INFO = b"village/secagg/self/v1"
_CHANNEL_INFO = b"village/secagg/share-channel/v1"


def _shape(dimension: int, bits: int) -> bytes:
    return dimension.to_bytes(8, "big") + bits.to_bytes(1, "big")


def seed_commitment(context: bytes, seed: bytes) -> bytes:
    return sha256(b"village/secagg/seed-commitment/v1", context, seed)


def pairwise_seed(
    shared: bytes, context: bytes, a: bytes, a_key: bytes, b: bytes, b_key: bytes, dimension: int, bits: int
) -> bytes:
    """k_ab = k_ba: the X25519 output hashed with both ids, both public keys and the context."""
    (lo, lo_key), (hi, hi_key) = sorted([(a, a_key), (b, b_key)])
    info = _MASK_INFO + sha256(context, lo, hi, lo_key, hi_key, _shape(dimension, bits))
    return hkdf(shared, salt=sha256(context), info=info)


def self_seed(seed: bytes, context: bytes, dimension: int, bits: int) -> bytes:
    return hkdf(seed, salt=sha256(context), info=_SELF_INFO + sha256(context, _shape(dimension, bits)))


def channel_key(shared: bytes, context: bytes, sender: bytes, recipient: bytes) -> bytes:
    """One key per (sender → recipient) share message, so a zero AEAD nonce never repeats."""
    return hkdf(shared, salt=sha256(context), info=_CHANNEL_INFO + sha256(context, sender, recipient))


def channel_aad(context: bytes, sender: bytes, recipient: bytes) -> bytes:
    return sha256(b"village/secagg/share-aad/v1", context, sender, recipient)


def survivors_digest(context: bytes, survivors: tuple[bytes, ...]) -> bytes:
    return sha256(b"village/secagg/survivors/v1", context, *survivors)


def member_set_digest(members: frozenset[bytes] | set[bytes]) -> bytes:
    """A set of members, independent of any round: to tell whether two rounds summed the same inputs."""
    return sha256(b"village/secagg/member-set/v1", *sorted(members))


def adds_pairwise_mask(me: bytes, peer: bytes) -> bool:
    """True when `me` adds the pair's mask, False when it subtracts it."""
    return me < peer


def add_mask(accumulator: np.ndarray, seed: bytes, positive: bool) -> None:
    """accumulator ±= PRG(seed) in place, mod 2^32 (callers reduce to 2^m at the boundary)."""
    mask = expand_mask(seed, len(accumulator))
    if positive:
        np.add(accumulator, mask, out=accumulator)
    else:
        np.subtract(accumulator, mask, out=accumulator)
