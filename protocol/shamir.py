"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1 (a Mersenne prime).

A 32-byte key or seed is one field element, so a share is one 66-byte number and no chunking is
needed. x-coordinates are supplied by the caller (1 + the holder's index in the owner's holder
list, never 0, never repeated) and never read from a share payload. Lagrange coefficients at 0
depend only on the x-set, so they are cached: in SecAgg+ the same holder pattern recurs across
secrets and the coordinator pays for each pattern once.
"""

from __future__ import annotations

from functools import lru_cache

from protocol.crypto import RandomBytes
from protocol.errors import LocalProtocolError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66
SECRET_BYTES = 32
_COEFFICIENT_BYTES = 72  # 576 random bits reduced mod a 521-bit prime: bias below 2^-55


def split(secret: bytes, xs: list[int], threshold: int, random_bytes: RandomBytes) -> list[int]:
    """The shares f(x) for each x, where f has degree threshold-1 and f(0) is the secret."""
    if len(secret) != SECRET_BYTES:
        raise LocalProtocolError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise LocalProtocolError(f"threshold {threshold} outside 1..{len(xs)} holders")
    coefficients = [int.from_bytes(secret, "big")] + [
        int.from_bytes(random_bytes(_COEFFICIENT_BYTES), "big") % PRIME for _ in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """λ_i = Π_{j≠i} x_j / (x_j − x_i) mod p, cached per x-set."""
    _check_xs(list(xs))
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def combine(points: list[tuple[int, int]]) -> bytes:
    """The secret from (x, y) points; exactly `threshold` of them must be given.

    Raises `LocalProtocolError` when the result is not a 32-byte value, which happens when some
    share is wrong. A wrong share that still lands in range is caught by the caller's commitment
    check (the signed public key or seed hash).
    """
    xs = tuple(x for x, _ in points)
    secret = sum(l * y for l, (_, y) in zip(lagrange_at_zero(xs), points)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise LocalProtocolError("shares do not rebuild a 32-byte secret (a share is corrupt)")
    return secret.to_bytes(SECRET_BYTES, "big")


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """A share from its wire form; the caller maps errors to the sending peer."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ValueError("share value is not a field element")
    return y


def _check_xs(xs: list[int]) -> None:
    if any(x <= 0 or x >= PRIME for x in xs):
        raise LocalProtocolError("share x-coordinates must be in 1..p-1 (x = 0 is the secret)")
    if len(set(xs)) != len(xs):
        raise LocalProtocolError("duplicate share x-coordinates")
