"""Errors villaged raises on purpose.

Everything derives from `VillagedError`, so a caller can tell "village refused or failed at
something it understands" from a bug. Keep the list short: each class is one meaning a caller
acts on differently (see notes/style.md §4).
"""

from __future__ import annotations

from pathlib import Path


class VillagedError(Exception):
    """Root of every error villaged raises on purpose."""


class ConfigError(VillagedError):
    """A configuration or state file is wrong; fix the named file and field, then restart."""

    def __init__(self, path: Path | str, field: str, reason: str) -> None:
        super().__init__(f"{path}: {field}: {reason}")
        self.path = Path(path)
        self.field = field
        self.reason = reason


class TransportError(VillagedError):
    """A peer could not be reached, or a request to it failed.

    Raised for every failure of one exchange: dial failure, timeout, stream reset, EOF in the
    middle of a frame, an oversize frame, or an error reply from the peer's handler. The
    round driver treats the peer as absent for this step; it may retry later.
    `peer` is the peer's 32-byte member id (None when it is not known).
    """

    def __init__(self, peer: bytes | None, reason: str) -> None:
        who = peer.hex()[:16] if peer is not None else "?"
        super().__init__(f"peer {who}: {reason}")
        self.peer = peer
        self.reason = reason


class PeerDown(TransportError):
    """Every dial to the peer was refused: nothing listens at its addresses, so its process is down
    (or moved), and resending within the same phase cannot help."""


class RemoteRefusal(TransportError):
    """The peer answered with an error reply: it was reached and refused, so resending cannot help."""
