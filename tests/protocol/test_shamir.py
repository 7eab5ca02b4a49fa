"""Tests for protocol/shamir.py: t-of-n reconstruction over GF(2^521 - 1)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import shamir
from protocol.crypto import DeterministicRandom
from protocol.errors import LocalProtocolError

SECRET = bytes(range(32))


def _split(secret: bytes, n: int, t: int, seed: bytes = b"shamir") -> list[tuple[int, int]]:
    xs = list(range(1, n + 1))
    return list(zip(xs, shamir.split(secret, xs, t, DeterministicRandom(seed))))


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(1, 20), data=st.data())
def test_any_t_shares_rebuild_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n), label="t")
    points = data.draw(st.permutations(_split(secret, n, t, data.draw(st.binary(max_size=8), label="seed"))))
    assert shamir.combine(points[:t]) == secret


def test_every_t_subset_rebuilds_the_secret() -> None:
    points = _split(SECRET, 6, 3)
    for subset in itertools.combinations(points, 3):
        assert shamir.combine(list(subset)) == SECRET


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(2, 20), data=st.data())
def test_t_minus_one_shares_do_not_give_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n), label="t")
    points = data.draw(st.permutations(_split(secret, n, t)))
    try:
        rebuilt = shamir.combine(points[: t - 1])
    except LocalProtocolError:
        return  # the usual case: the interpolated value is not a 32-byte number
    assert rebuilt != secret


def test_degree_is_t_minus_one_not_t() -> None:
    # "t used as the polynomial degree" would need t + 1 shares; exactly t must suffice for every t.
    for t in range(1, 8):
        assert shamir.combine(_split(SECRET, 8, t)[-t:]) == SECRET


def test_split_is_randomised_by_the_coefficients() -> None:
    a = _split(SECRET, 5, 3, seed=b"a")
    b = _split(SECRET, 5, 3, seed=b"b")
    assert [y for _, y in a] != [y for _, y in b]
    # one share alone says nothing: the same x carries different values for the same secret
    assert a[0][1] != b[0][1]


@pytest.mark.parametrize("xs", [[0, 1, 2], [1, 2, 0], [-1, 1, 2], [1, 2, shamir.PRIME]])
def test_x_zero_or_outside_the_field_rejected(xs: list[int]) -> None:
    with pytest.raises(LocalProtocolError, match="x-coordinates"):
        shamir.split(SECRET, xs, 2, DeterministicRandom(b"x"))
    points = [(x, 5) for x in xs]
    with pytest.raises(LocalProtocolError, match="x-coordinates"):
        shamir.combine(points)


def test_duplicate_x_rejected() -> None:
    with pytest.raises(LocalProtocolError, match="duplicate"):
        shamir.split(SECRET, [1, 2, 2], 2, DeterministicRandom(b"x"))
    points = _split(SECRET, 3, 2)
    with pytest.raises(LocalProtocolError, match="duplicate"):
        shamir.combine([points[0], (points[0][0], points[1][1])])


def test_bad_threshold_and_secret_size_rejected() -> None:
    rng = DeterministicRandom(b"x")
    with pytest.raises(LocalProtocolError, match="threshold"):
        shamir.split(SECRET, [1, 2, 3], 4, rng)
    with pytest.raises(LocalProtocolError, match="threshold"):
        shamir.split(SECRET, [1, 2, 3], 0, rng)
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        shamir.split(SECRET[:31], [1, 2, 3], 2, rng)


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 12),
    delta=st.integers(1, shamir.PRIME - 1),
    data=st.data(),
)
def test_tampered_share_gives_a_different_secret_or_an_error(
    secret: bytes, n: int, delta: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(2, n), label="t")
    points = _split(secret, n, t)[:t]
    i = data.draw(st.integers(0, t - 1), label="tampered index")
    x, y = points[i]
    points[i] = (x, (y + delta) % shamir.PRIME)
    try:
        rebuilt = shamir.combine(points)
    except LocalProtocolError:
        return
    assert rebuilt != secret


def test_tampered_share_detected_in_the_usual_case() -> None:
    # A random change lands outside the 32-byte range with overwhelming probability: an error, not a wrong key.
    points = _split(SECRET, 5, 3)[:3]
    points[1] = (points[1][0], points[1][1] ^ (1 << 300))
    with pytest.raises(LocalProtocolError, match="corrupt"):
        shamir.combine(points)


@settings(max_examples=30, deadline=None)
@given(xs=st.lists(st.integers(1, 10_000), min_size=1, max_size=12, unique=True))
def test_lagrange_cache_matches_uncached_computation(xs: list[int]) -> None:
    key = tuple(xs)
    uncached = shamir.lagrange_at_zero.__wrapped__(key)
    assert shamir.lagrange_at_zero(key) == uncached
    assert shamir.lagrange_at_zero(key) == uncached  # second call served from the cache
    # and the coefficients are right: they interpolate the constant polynomial 1 and x -> x to 1 and 0
    assert sum(uncached) % shamir.PRIME == 1
    if len(xs) > 1:
        assert sum(l * x for l, x in zip(uncached, xs)) % shamir.PRIME == 0


def test_lagrange_cache_is_hit() -> None:
    shamir.lagrange_at_zero.cache_clear()
    points = _split(SECRET, 6, 4)
    for _ in range(3):
        assert shamir.combine(points[:4]) == SECRET
    info = shamir.lagrange_at_zero.cache_info()
    assert (info.misses, info.hits) == (1, 2)


@given(y=st.integers(0, shamir.PRIME - 1))
def test_share_encoding_round_trips(y: int) -> None:
    data = shamir.encode_share(y)
    assert len(data) == shamir.SHARE_BYTES
    assert shamir.decode_share(data) == y


@pytest.mark.parametrize(
    "data", [b"", bytes(65), bytes(67), shamir.PRIME.to_bytes(66, "big"), (shamir.PRIME + 1).to_bytes(66, "big")]
)
def test_share_decoding_rejects_wrong_size_or_non_field_element(data: bytes) -> None:
    with pytest.raises(ValueError):
        shamir.decode_share(data)
