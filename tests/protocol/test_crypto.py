"""Tests for protocol/crypto.py and protocol/masking.py: mask keys, mask expansion, cancellation."""

from __future__ import annotations

import math

import nacl.signing
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import crypto, masking
from protocol.errors import CryptoCheckFailed, RemoteProtocolError
from protocol.graph import NeighbourGraph
from protocol.wire import RoundContext

CTX = RoundContext("job", 7, 0).encode()
P25519 = 2**255 - 19
# u-coordinates of low-order points (and non-canonical encodings of them): X25519 gives all zeros.
LOW_ORDER = [
    0,
    1,
    P25519 - 1,
    P25519,
    P25519 + 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
]


def _members(n: int, seed: bytes = b"m") -> list[tuple[bytes, bytes, bytes]]:
    """(member id, X25519 secret, X25519 public) for n members, sorted by id."""
    rng = crypto.DeterministicRandom(seed)
    out = []
    for i in range(n):
        member = crypto.member_id_of(nacl.signing.SigningKey(crypto.sha256(seed, i.to_bytes(4, "big"))))
        secret, public = crypto.x25519_keypair(rng)
        out.append((member, secret, public))
    return sorted(out)


def _pair_seed(me: tuple[bytes, bytes, bytes], peer: tuple[bytes, bytes, bytes], ctx: bytes, d: int, bits: int) -> bytes:
    """k_(me,peer) as `me` derives it: its own secret and the peer's public key."""
    shared = crypto.x25519(me[1], peer[2], peer[0], "test")
    return masking.pairwise_seed(shared, ctx, me[0], me[2], peer[0], peer[2], d, bits)


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def _chi_square_limit(df: int, z: float = 4.75) -> float:
    """Wilson–Hilferty upper quantile of chi-square(df); z = 4.75 is a one-sided p of about 1e-6."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def test_pairwise_key_is_symmetric() -> None:
    u, v = _members(2)
    assert _pair_seed(u, v, CTX, 16, 32) == _pair_seed(v, u, CTX, 16, 32)
    # argument order inside pairwise_seed does not matter either
    shared = crypto.x25519(u[1], v[2], v[0], "test")
    assert masking.pairwise_seed(shared, CTX, u[0], u[2], v[0], v[2], 16, 32) == masking.pairwise_seed(
        shared, CTX, v[0], v[2], u[0], u[2], 16, 32
    )


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 9), d=st.integers(1, 64), bits=st.integers(1, 32), seed=st.binary(max_size=8))
def test_pairwise_masks_of_a_complete_round_cancel(n: int, d: int, bits: int, seed: bytes) -> None:
    members = _members(n, seed)
    total = np.zeros(d, dtype=np.uint32)
    for me in members:
        y = np.zeros(d, dtype=np.uint32)
        for peer in members:
            if peer is not me:
                masking.add_mask(y, _pair_seed(me, peer, CTX, d, bits), positive=masking.adds_pairwise_mask(me[0], peer[0]))
        assert y.dtype == np.uint32
        np.add(total, y, out=total)
    assert total.dtype == np.uint32
    assert not np.any(total & np.uint32((1 << bits) - 1))


def test_pairwise_masks_of_a_sparse_graph_cancel() -> None:
    members = _members(12)
    by_id = {m[0]: m for m in members}
    graph = NeighbourGraph(list(by_id), 4, CTX)
    total = np.zeros(32, dtype=np.uint32)
    for me in members:
        for peer_id in graph.neighbours(me[0]):
            masking.add_mask(total, _pair_seed(me, by_id[peer_id], CTX, 32, 32), masking.adds_pairwise_mask(me[0], peer_id))
    assert not total.any()


def test_pairwise_masks_do_not_cancel_with_the_same_sign() -> None:
    # guards the test above: if both ends added, the total would be 2·PRG, not 0
    u, v = _members(2)
    y = np.zeros(16, dtype=np.uint32)
    masking.add_mask(y, _pair_seed(u, v, CTX, 16, 32), True)
    masking.add_mask(y, _pair_seed(v, u, CTX, 16, 32), True)
    assert y.any()


def test_exactly_one_end_of_a_pair_adds() -> None:
    u, v = _members(2)
    assert masking.adds_pairwise_mask(u[0], v[0]) != masking.adds_pairwise_mask(v[0], u[0])


def test_context_shape_and_pair_change_the_key() -> None:
    u, v, w = _members(3)
    base = _pair_seed(u, v, CTX, 16, 32)
    variants = [
        _pair_seed(u, v, RoundContext("job", 7, 1).encode(), 16, 32),
        _pair_seed(u, v, RoundContext("job", 8, 0).encode(), 16, 32),
        _pair_seed(u, v, RoundContext("other", 7, 0).encode(), 16, 32),
        _pair_seed(u, v, CTX, 17, 32),
        _pair_seed(u, v, CTX, 16, 31),
        _pair_seed(u, w, CTX, 16, 32),
    ]
    assert len({base, *variants}) == len(variants) + 1
    seed = bytes(32)
    self_seeds = {
        masking.self_seed(seed, CTX, 16, 32),
        masking.self_seed(seed, RoundContext("job", 7, 1).encode(), 16, 32),
        masking.self_seed(seed, CTX, 16, 8),
    }
    assert len(self_seeds) == 3
    shared = crypto.x25519(u[1], v[2], v[0], "test")
    channel = {
        masking.channel_key(shared, CTX, u[0], v[0]),
        masking.channel_key(shared, CTX, v[0], u[0]),
        masking.channel_key(shared, RoundContext("job", 7, 1).encode(), u[0], v[0]),
    }
    assert len(channel) == 3  # one key per direction and per attempt


def test_expand_mask_is_deterministic_uint32_and_prefix_consistent() -> None:
    seed = crypto.sha256(b"seed")
    a = crypto.expand_mask(seed, 100)
    assert a.dtype == np.uint32 and a.shape == (100,)
    assert np.array_equal(a, crypto.expand_mask(seed, 100))
    assert np.array_equal(a[:10], crypto.expand_mask(seed, 10))
    assert not np.array_equal(a, crypto.expand_mask(crypto.sha256(b"other"), 100))


@pytest.mark.parametrize("shift", [0, 4, 16, 24])
def test_expand_mask_is_uniform(shift: int) -> None:
    # Low and high nibble/byte frequencies: an exclusive upper bound (randint(0, M-1)) leaves one value empty.
    words = crypto.expand_mask(crypto.sha256(b"uniform", bytes([shift])), 256 * 200)
    values = (words >> np.uint32(shift)) & np.uint32(0xFF)
    counts = np.bincount(values, minlength=256)
    assert counts.min() > 0
    assert _chi_square(counts) < _chi_square_limit(255)
    nibbles = np.bincount(values & np.uint32(0xF), minlength=16)
    assert _chi_square(nibbles) < _chi_square_limit(15)


def test_uniformity_check_catches_an_exclusive_upper_bound() -> None:
    # The check above has the power it claims: values in [0, 255) fail it.
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 255, size=256 * 200), minlength=256)
    assert counts[255] == 0
    assert _chi_square(counts) > _chi_square_limit(255)


def test_add_mask_wraps_mod_2_32_without_warnings() -> None:
    seed = crypto.sha256(b"wrap")
    mask = crypto.expand_mask(seed, 64)
    acc = np.full(64, 0xFFFFFFFF, dtype=np.uint32)
    masking.add_mask(acc, seed, positive=True)
    assert acc.dtype == np.uint32
    expected = (mask.astype(np.uint64) + 0xFFFFFFFF) % 2**32
    assert np.array_equal(acc.astype(np.uint64), expected)
    masking.add_mask(acc, seed, positive=False)
    assert np.array_equal(acc, np.full(64, 0xFFFFFFFF, dtype=np.uint32))
    zero = np.zeros(64, dtype=np.uint32)
    masking.add_mask(zero, seed, positive=False)
    assert zero.dtype == np.uint32
    assert np.array_equal(zero.astype(np.uint64), (2**32 - mask.astype(np.uint64)) % 2**32)


@pytest.mark.parametrize("u", LOW_ORDER)
def test_low_order_public_key_is_the_peers_fault(u: int) -> None:
    peer = b"\x07" * 32
    secret, _ = crypto.x25519_keypair(crypto.DeterministicRandom(b"k"))
    with pytest.raises(RemoteProtocolError) as info:
        crypto.x25519(secret, u.to_bytes(32, "little"), peer, "share")
    assert info.value.peer == peer
    assert info.value.phase == "share"


def test_x25519_agreement_matches() -> None:
    u, v = _members(2)
    assert crypto.x25519(u[1], v[2], v[0], "t") == crypto.x25519(v[1], u[2], u[0], "t")
    assert crypto.x25519_public(u[1]) == u[2]


def test_sealed_share_opens_only_with_the_same_key_and_aad() -> None:
    key, other = crypto.sha256(b"k1"), crypto.sha256(b"k2")
    aad = masking.channel_aad(CTX, b"a" * 32, b"b" * 32)
    sealed = crypto.seal(key, b"share pair", aad)
    assert crypto.open_sealed(key, sealed, aad, b"a" * 32, "share") == b"share pair"
    wrong_aad = masking.channel_aad(CTX, b"b" * 32, b"a" * 32)
    for k, a, ct in [(other, aad, sealed), (key, wrong_aad, sealed), (key, aad, sealed[:-1] + bytes([sealed[-1] ^ 1]))]:
        with pytest.raises(CryptoCheckFailed, match="authentication") as info:
            crypto.open_sealed(k, ct, a, b"a" * 32, "share")
        assert info.value.check == "sealed_share"  # villaged counts it in federation_encryption_errors_total


def test_signatures_verify_and_forgeries_fail() -> None:
    key = nacl.signing.SigningKey(crypto.sha256(b"signer"))
    member = crypto.member_id_of(key)
    sig = crypto.sign(key, b"msg")
    crypto.verify(member, b"msg", sig, "p")
    other = crypto.member_id_of(nacl.signing.SigningKey(crypto.sha256(b"other")))
    for m, msg, s in [(member, b"msg!", sig), (other, b"msg", sig), (member, b"msg", bytes(64)), (member, b"msg", sig[:63])]:
        with pytest.raises(CryptoCheckFailed, match="bad signature") as info:
            crypto.verify(m, msg, s, "p")
        assert info.value.check == "signature"


def test_sha256_parts_are_length_prefixed() -> None:
    assert crypto.sha256(b"ab", b"c") != crypto.sha256(b"a", b"bc")


def test_deterministic_random_is_reproducible_and_streaming() -> None:
    a, b = crypto.DeterministicRandom(b"s"), crypto.DeterministicRandom(b"s")
    assert a(10) + a(22) == b(32)
    assert crypto.DeterministicRandom(b"t")(32) != crypto.DeterministicRandom(b"s")(32)
