"""The one exception hierarchy of `protocol/`.

Two concrete kinds, as in h11: `LocalProtocolError` is our caller's mistake (a bad parameter,
an illegal call), `RemoteProtocolError` is a peer's (bad bytes, a bad signature, a lying
coordinator). Normal outcomes such as "too few survivors" are *events* (`RoundAborted`),
never exceptions.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error `protocol/` raises on purpose."""


class LocalProtocolError(ProtocolError):
    """Our own caller asked for something illegal: fix the calling code or configuration."""


class ParameterError(LocalProtocolError):
    """A round or quantization configuration is unsafe or impossible; the message names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """A peer sent something invalid. `peer` is its member id when known, `phase` where it happened."""

    def __init__(self, peer: bytes | None, phase: str, reason: str) -> None:
        who = peer.hex()[:16] if peer else "unknown peer"
        super().__init__(f"{who} in {phase}: {reason}")
        self.peer = peer
        self.phase = phase
        self.reason = reason


class AuthenticationError(RemoteProtocolError):
    """The peer is not who may send this: not a village member, or not the signer of its frame.
    Counted apart from malformed input (villaged's `failed_authentications` metric)."""


class CryptoCheckFailed(RemoteProtocolError):
    """A peer's bytes failed a cryptographic check: a sealed share that does not decrypt and
    authenticate (`check` "sealed_share"), or a signature that does not verify ("signature").
    Counted apart (villaged's `federation_encryption_errors_total{check}`): tampering or a broken peer."""

    def __init__(self, peer: bytes | None, phase: str, check: str, reason: str) -> None:
        super().__init__(peer, phase, reason)
        self.check = check


class InviteRefused(RemoteProtocolError):
    """An invitation this node will not answer. `code` is a short label for metrics
    (``federation_invites_refused_total{reason}``); `reason` says what was wrong."""

    def __init__(self, peer: bytes | None, code: str, reason: str) -> None:
        super().__init__(peer, "invite", reason)
        self.code = code


class MemberRevoked(AuthenticationError):
    """The peer's member id is on the village admin's revocation list: refused whatever certificate it shows.
    Counted as a failed authentication and, apart, as a refusal of a revoked member."""
