"""Content-addressed blobs between members: a training job's initial model, fetched from any holder.

A blob is asked for by its hex SHA-256 and checked against it on arrival, so a holder can refuse or
fail but never substitute. Only members may ask (a request is 64 bytes; strangers get nothing).
"""

from __future__ import annotations

import hashlib
import time

import structlog

from protocol.errors import RemoteProtocolError
from villaged.errors import TransportError
from villaged.metrics import Metrics
from villaged.store import Store
from villaged.transport import Node
from villaged.transport.framing import HARD_MAX_FRAME

log = structlog.get_logger("villaged.blobs")

BLOB_PROTOCOL = "/village/blob/1.0.0"
MAX_BLOB = HARD_MAX_FRAME - 1  # one reply frame (its status byte aside)
_FETCH_TIMEOUT = 60.0  # a 64 MiB model over loopback takes about a second; a slow link more


class BlobExchange:
    """Serves the blobs this node holds to members and fetches the ones it lacks."""

    def __init__(self, node: Node, store: Store, metrics: Metrics) -> None:
        self._node, self._store, self._metrics = node, store, metrics
        node.serve(BLOB_PROTOCOL, self._serve, max_request=64)  # members only: no non-member allowance

    async def _serve(self, peer: bytes, request: bytes) -> bytes:
        digest = request.decode("ascii", "replace")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            self._metrics.malformed_messages.labels(kind="blob").inc()
            raise RemoteProtocolError(peer, "blob", "request is not a hex SHA-256")
        blob = self._store.get_blob(digest)
        if blob is None:
            raise RemoteProtocolError(peer, "blob", f"blob {digest[:16]} is not held here")
        return blob

    async def fetch(self, digest: str, sources: list[bytes]) -> bool:
        """Ask `sources` in turn until one sends the bytes named `digest`; keep them. True once held."""
        if self._store.get_blob(digest) is not None:
            return True
        for source in sources:
            try:
                blob = await self._node.request(source, BLOB_PROTOCOL, digest.encode(), timeout=_FETCH_TIMEOUT,
                                                max_reply=MAX_BLOB)
            except TransportError as exc:
                log.info("blob_fetch_failed", blob=digest[:16], source=source.hex()[:16], reason=str(exc))
                continue
            if hashlib.sha256(blob).hexdigest() != digest:
                self._metrics.malformed_messages.labels(kind="blob").inc()
                log.warning("blob_substituted", blob=digest[:16], source=source.hex()[:16])
                continue
            await self._store.write(self._store.put_blob, blob, time.time())
            log.info("blob_fetched", blob=digest[:16], source=source.hex()[:16], size=len(blob))
            return True
        return False
