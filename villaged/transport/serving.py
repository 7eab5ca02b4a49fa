"""Serving requests: each inbound stream of a served protocol gets one reply frame per request frame.

Admission is decided from a request's length prefix alone, before a byte of its body is read:
the sender's limit on the route (members, other peers, revoked members), the sender's stream and
rate limits (limits.py), and the node's inbound budget (bytes of request bodies held at once, all
peers together). A refusal is an error reply naming the reason, counted as `inbound_refused`.
A stream carries requests one after another until the asker closes it or leaves it idle
(keep-alive, stream_pool.py). No exception escapes into libp2p: one would end the whole trio run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol

from protocol.errors import RemoteProtocolError
from villaged.errors import TransportError
from villaged.transport.config import TransportConfig
from villaged.transport.counters import Counters
from villaged.transport.framing import (
    HARD_MAX_FRAME,
    HEADER,
    StreamEnded,
    end_stream,
    error_reply,
    ok_reply,
    open_reply,
    read_exact,
    write_frame,
)
from villaged.transport.identity import member_id_from_peer_id
from villaged.transport.limits import PeerLimits

log = logging.getLogger(__name__)

RequestHandler = Callable[[bytes, bytes], Awaitable[bytes]]
"""(peer member id, request) -> reply. Raise to send the peer an error reply."""


class Membership(Protocol):
    """Who is an admitted member now; protocol/membership.py's MemberRegistry is one."""

    def is_member(self, member_id: bytes, now: float) -> bool: ...

    def revocation(self, member_id: bytes) -> object | None: ...


@dataclass(frozen=True)
class _Route:
    protocol_id: str
    handler: RequestHandler
    max_request: int  # from an admitted member
    max_request_nonmember: int | None  # from any other peer; None: members only
    read_timeout: float
    handler_timeout: float


class Responder:
    """The serving half of a `Node`: its routes, their admission and the inbound budget."""

    def __init__(
        self, host: IHost, config: TransportConfig, counters: Counters, membership: Membership | None, me: bytes
    ) -> None:
        self._host = host
        self._config = config
        self._counters = counters
        self._membership = membership
        self._me = me
        self._routes: dict[str, _Route] = {}
        self._inbound_held = 0  # bytes of admitted request bodies, until their reply is sent
        self._limits = PeerLimits(
            max_active=config.max_inbound_streams_per_peer,
            rate=config.inbound_rate_per_peer,
            burst=config.inbound_burst_per_peer,
        )

    def serve(
        self,
        protocol_id: str,
        handler: RequestHandler,
        *,
        max_request: int | None = None,
        max_request_nonmember: int | None = None,
        read_timeout: float | None = None,
        handler_timeout: float | None = None,
    ) -> None:
        """Answer each request frame on `protocol_id` with one reply frame. A stream carries requests
        one after another until the asker closes it or leaves it idle (keep-alive, stream_pool.py).

        Who may send what: an admitted member (see `Membership`) requests of up to `max_request`
        bytes, any other peer (peer ids are free) requests of up to `max_request_nonmember`, or
        none when it is None. A request beyond its sender's limit is refused from its length prefix,
        before a byte of its body is read. A node run without a `Membership` treats every peer as a
        member.

        A handler exception becomes an error reply carrying `str(exc)` (the caller raises
        TransportError with it); it never reaches libp2p.
        """
        limit = self._config.max_frame if max_request is None else max_request
        if not 0 <= limit <= HARD_MAX_FRAME:
            raise ValueError(f"max_request must be within 0..{HARD_MAX_FRAME}, got {limit}")
        if max_request_nonmember is not None and not 0 <= max_request_nonmember <= limit:
            raise ValueError(f"max_request_nonmember must be within 0..{limit}, got {max_request_nonmember}")
        route = _Route(
            protocol_id=protocol_id,
            handler=handler,
            max_request=limit,
            max_request_nonmember=max_request_nonmember,
            read_timeout=read_timeout or self._config.read_timeout,
            handler_timeout=handler_timeout or self._config.handler_timeout,
        )
        self._routes[protocol_id] = route

        async def on_stream(stream: INetStream) -> None:
            await self._handle_stream(route, stream)

        self._host.set_stream_handler(TProtocol(protocol_id), on_stream)

    async def answer_self(self, protocol_id: str, request: bytes) -> bytes:
        """A member may address itself (a coordinator is also a client); skip the network."""
        route = self._routes.get(protocol_id)
        if route is None:
            raise TransportError(self._me, f"protocol {protocol_id} is not served here")
        return open_reply(await self._call_handler(route, self._me, request), self._me)

    async def _handle_stream(self, route: _Route, stream: INetStream) -> None:
        """Serve requests on one inbound stream until the asker closes it, it stays idle for
        `stream_idle_timeout`, or a request cannot be answered and read past (keep-alive, stream_pool.py)."""
        peer: bytes | None = None
        graceful = False
        try:
            peer = member_id_from_peer_id(stream.muxed_conn.peer_id)
            header_timeout, served = route.read_timeout, False
            while True:
                length = await self._next_request_length(route, stream, peer, header_timeout, served)
                if length is None:
                    graceful = True  # a refusal was sent, or the asker is done with the stream
                    return
                graceful, keep = await self._admit_and_serve(route, stream, peer, length)
                if not keep:
                    return
                header_timeout, served = self._config.stream_idle_timeout, True
        except Exception as exc:  # an exception escaping here would end the whole trio run
            self._counters.emit("inbound_failed", peer, protocol=route.protocol_id, error=repr(exc))
        finally:
            await end_stream(stream, graceful=graceful)

    async def _next_request_length(
        self, route: _Route, stream: INetStream, peer: bytes, timeout: float, between_requests: bool
    ) -> int | None:
        """The next request's length, or None when the stream has no further request to serve (an
        idle kept stream's end is no event)."""
        try:
            with trio.fail_after(timeout):
                (length,) = HEADER.unpack(await read_exact(stream, HEADER.size, peer))
                return length
        except trio.TooSlowError:
            if not between_requests:
                self._counters.emit("inbound_timeout", peer, protocol=route.protocol_id)
        except StreamEnded as exc:
            if exc.received or not between_requests:
                self._counters.emit("inbound_broken", peer, protocol=route.protocol_id, reason=exc.reason)
        return None

    async def _admit_and_serve(self, route: _Route, stream: INetStream, peer: bytes, length: int) -> tuple[bool, bool]:
        """Serve one request if `_admit` lets it in: (a reply frame was sent, the stream can carry another)."""
        refusal = self._admit(route, peer, length)
        if refusal is not None:  # the body stays unread, so the stream ends with this reply
            reason, message = refusal
            self._counters.emit(
                "inbound_refused", peer, protocol=route.protocol_id, reason=reason, size=length, message=message
            )
            await self._send_reply(route, stream, error_reply(message))
            return True, False
        try:
            return await self._serve_one(route, stream, peer, length)
        finally:
            self._inbound_held -= length
            self._limits.release(peer)

    def _admit(self, route: _Route, peer: bytes, length: int) -> tuple[str, str] | None:
        """Decide from the length prefix alone whether to read a request of `length` bytes: None (a
        slot of the peer's limits and `length` bytes of the inbound budget are then held), or why not
        as (reason label, message for the peer)."""
        refusal = self._sender_refusal(route, peer, length)
        if refusal is not None:
            return refusal
        limited = self._limits.admit(peer, trio.current_time())
        if limited is not None:
            return limited, limited
        budget = self._config.max_inbound_bytes
        if self._inbound_held + length > budget:
            self._limits.release(peer)
            return "inbound budget", (f"request of {length} bytes refused: this node holds {self._inbound_held} bytes "
                                      f"of requests already, and its inbound budget is {budget}; try again later")
        self._inbound_held += length
        return None

    def _sender_refusal(self, route: _Route, peer: bytes, length: int) -> tuple[str, str] | None:
        """Why `peer` may not send a request of `length` bytes on this route (see `serve`), or None."""
        if self._membership is None or self._membership.is_member(peer, time.time()):
            limit, whose = route.max_request, ""
        elif route.max_request_nonmember is None:
            if self._membership.revocation(peer) is not None:
                return "revoked", "member is revoked by the village admin"
            return "members only", f"{route.protocol_id} serves admitted members only, and this peer is not one (yet)"
        else:
            limit, whose = route.max_request_nonmember, " for a peer that is not an admitted member"
        if length > limit:
            return "too large", f"frame of {length} bytes exceeds the limit of {limit}{whose}"
        return None

    async def _serve_one(self, route: _Route, stream: INetStream, peer: bytes, length: int) -> tuple[bool, bool]:
        try:
            with trio.fail_after(route.read_timeout):
                request = await read_exact(stream, length, peer)
        except trio.TooSlowError:
            self._counters.emit("inbound_timeout", peer, protocol=route.protocol_id)
            return False, False
        except TransportError as exc:
            self._counters.emit("inbound_broken", peer, protocol=route.protocol_id, reason=exc.reason)
            return False, False
        self._counters.received[route.protocol_id] += HEADER.size + length
        reply = await self._call_handler(route, peer, request)
        await self._send_reply(route, stream, reply)
        return True, True

    async def _call_handler(self, route: _Route, peer: bytes, request: bytes) -> bytes:
        try:
            with trio.fail_after(route.handler_timeout):
                return ok_reply(await route.handler(peer, request))
        except trio.TooSlowError:
            self._counters.emit("handler_timeout", peer, protocol=route.protocol_id)
            return error_reply(f"handler gave no reply within {route.handler_timeout:g} s")
        except RemoteProtocolError as exc:  # the handler refused the request: an answer, not a fault
            self._counters.emit("handler_refused", peer, protocol=route.protocol_id, error=exc.reason)
            return error_reply(str(exc))
        except Exception as exc:
            log.warning("handler for %s raised", route.protocol_id, exc_info=True)
            self._counters.emit("handler_error", peer, protocol=route.protocol_id, error=repr(exc))
            return error_reply(str(exc) or type(exc).__name__)

    async def _send_reply(self, route: _Route, stream: INetStream, reply: bytes) -> None:
        with trio.fail_after(route.read_timeout):
            await write_frame(stream, reply)
        self._counters.sent[route.protocol_id] += HEADER.size + len(reply)
