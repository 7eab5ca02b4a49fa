"""Village's own framing on libp2p streams: a 4-byte big-endian length, then the body.

Why not libp2p's helpers: `read_exactly` gives up after 101 reads (8 MB over yamux fails),
`read()` without a size means different things on yamux and mplex, and a reset writer looks
like a clean EOF to the reader (notes/py-libp2p.md §3). Only a length prefix tells a complete
frame from a truncated one, and only our own limit check stops a peer from making us
allocate whatever size it announces.

A request frame is the caller's bytes as they are. A reply frame starts with one status
byte: REPLY_OK followed by the handler's bytes, or REPLY_ERROR followed by a UTF-8 reason.
"""

from __future__ import annotations

import logging
import struct
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError

from villaged.errors import RemoteRefusal, TransportError

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
# Hard ceiling for any frame, whatever a protocol asks for: the largest message a round sends
# is a masked vector (a few MB); 64 MiB leaves room and still bounds one allocation.
HARD_MAX_FRAME = 64 * 1024 * 1024
REPLY_OK = 0
REPLY_ERROR = 1
# One yamux DATA frame carries at most 64 KiB - 12 B; a chunk this size is one or two frames.
WRITE_CHUNK = 64 * 1024
# Error reasons are for logs, not payloads: cap what a remote handler can make us print.
MAX_REASON_BYTES = 512


class ByteStream(Protocol):
    """The part of a libp2p stream that framing uses (a fake one is enough in tests)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


async def read_exact(stream: ByteStream, n: int, peer: bytes | None) -> bytes:
    """Read exactly n bytes; `read(n)` may return fewer (yamux hands out ≤64 KiB chunks)."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamError as exc:  # StreamEOF, StreamReset and StreamClosed
            raise StreamEnded(peer, len(buf), n, f" ({type(exc).__name__})") from exc
        if not chunk:  # libp2p raises at EOF; an empty read would otherwise spin forever
            raise StreamEnded(peer, len(buf), n)
        buf += chunk
    return bytes(buf)


async def read_length(stream: ByteStream, max_size: int, peer: bytes | None) -> int:
    """Read a frame header; refuse before allocating if it announces more than max_size."""
    (length,) = HEADER.unpack(await read_exact(stream, HEADER.size, peer))
    if length > max_size:
        raise FrameTooLarge(peer, length, max_size)
    return length


async def write_frame(stream: ByteStream, body: bytes) -> None:
    """Write one frame; cancellation takes effect only between chunks.

    Cancelling a yamux write while it sends a muxer frame leaves half an encrypted message
    on the connection, and the whole connection dies (measured: the next new_stream to that
    peer failed with "No valid connections"). So each chunk is written under a shield, and
    a cancelled writer stops at the next chunk boundary. A chunk can still wait up to 5 s
    for a peer that stopped reading (yamux's window timeout); whoever needs to stop a
    writer sooner resets the stream, which ends that wait at once.
    """
    if len(body) > HARD_MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds the hard cap {HARD_MAX_FRAME}")
    data = memoryview(HEADER.pack(len(body)) + body)
    for start in range(0, len(data), WRITE_CHUNK):
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):
            await stream.write(bytes(data[start : start + WRITE_CHUNK]))


async def end_stream(stream: INetStream, *, graceful: bool) -> None:
    """Close a stream that carried a reply, reset any other; never raise or block for long.

    A refused request is closed, not reset, although its body was not read: a reset makes
    the caller's stream unreadable before the reason arrives. The caller resets its side as
    soon as it has the reply, which discards what yamux buffered here.
    """
    with trio.move_on_after(1.0) as scope:
        scope.shield = True  # also runs while the caller is being cancelled
        try:
            await (stream.close() if graceful else stream.reset())
        except Exception:
            log.debug("closing stream failed", exc_info=True)


class StreamEnded(TransportError):
    """The stream ended (EOF or reset) after `received` of the `wanted` bytes."""

    def __init__(self, peer: bytes | None, received: int, wanted: int, how: str = "") -> None:
        super().__init__(peer, f"stream ended after {received} of {wanted} bytes{how}")
        self.received = received


class FrameTooLarge(TransportError):
    """A frame header announced more bytes than the receiver accepts (nothing was allocated)."""

    def __init__(self, peer: bytes | None, length: int, limit: int) -> None:
        super().__init__(peer, f"frame of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


def ok_reply(body: bytes) -> bytes:
    return bytes([REPLY_OK]) + body


def error_reply(reason: str) -> bytes:
    return bytes([REPLY_ERROR]) + reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]


def open_reply(reply: bytes, peer: bytes | None) -> bytes:
    """The body of an ok reply; raises TransportError with the peer's reason for an error reply."""
    if not reply:
        raise TransportError(peer, "empty reply frame")
    status, body = reply[0], reply[1:]
    if status == REPLY_OK:
        return body
    if status == REPLY_ERROR:
        reason = body[:MAX_REASON_BYTES].decode("utf-8", "replace")
        raise RemoteRefusal(peer, f"remote error: {reason}")
    raise TransportError(peer, f"unknown reply status {status}")
