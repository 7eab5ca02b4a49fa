"""The network layer of villaged: the only code that talks to py-libp2p.

A round needs two things from the network: reliable request/response exchanges of opaque
frames with named members (`Node.serve`, `Node.request`), and small best-effort
announcements to everyone (`Node.subscribe`, `Node.publish`). Members are named by their
32-byte Ed25519 public key (see identity.py); libp2p peer ids never leave this layer.

`open_node` builds the host the way notes/py-libp2p.md says it must be built: Noise and yamux
only, connection caps raised (the swarm never frees inbound slots), a self-seeding Kademlia
DHT (discovery.py), gossipsub with a fixed 1 s heartbeat (gossip.py), every stream handler
wrapped so no exception escapes into libp2p (one would end the whole trio run), and
`host.close()` on the way out (leaving `host.run()` alone closes nothing).

Retries do not nest beyond a stated bound. A request dials at most `DIAL_RETRY.tries` (4) times,
all within its own timeout. A caller that retries requests on its own schedule passes
`dial_retry=None` and gets one dial per request: the round driver does (its SEND_RETRY makes at
most 5 tries), so one round frame costs at most 5 dials (it was up to 5 x 4). The other callers
send one request per attempt of their own schedules (joins, job sync, result fetches), so each
of their attempts dials at most 4 times.

Reading order: framing.py (wire format), limits.py, gossip.py, discovery.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto import x25519
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import MultiError
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.rcmgr import new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from protocol.backoff import Backoff
from protocol.errors import RemoteProtocolError
from villaged.transport.discovery import DiscoverySettings, DiscoveryState, maintain_peers, parse_bootstrap
from villaged.errors import PeerDown, TransportError
from villaged.transport.framing import (
    HARD_MAX_FRAME,
    HEADER,
    REPLY_OK,
    FrameTooLarge,
    StreamEnded,
    error_reply,
    ok_reply,
    open_reply,
    read_exact,
    read_length,
    write_frame,
)
from villaged.transport.gossip import Gossip, GossipValidator
from villaged.transport.identity import member_id_from_peer_id, peer_id_from_member_id
from villaged.transport.tuning import install as install_libp2p_tuning
from villaged.transport.limits import PeerLimits
from villaged.transport.stream_pool import StreamPool

log = logging.getLogger(__name__)

GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.2.0"), TProtocol("/meshsub/1.1.0")]
# The swarm admits inbound connections up to max_connections - min_connections over the
# whole process lifetime (slots are never freed, notes §4), so "huge" means lifetime total.
HUGE_CONNECTION_CAP = 1_000_000
#: A dial that fails without being refused (a handshake that timed out or broke under load) is
#: tried again after each of these delays: the swarm's own retries, which this replaces, took about
#: a second too (`_dial`).
DIAL_RETRY = Backoff((0.1, 0.3, 0.6))
_REFUSED = "connection refused at its known addresses: the peer is down"
# Addresses learned from a DHT lookup stay usable this long (libp2p's connect() uses 120 s).
LOOKUP_ADDR_TTL = 600
# Addresses handed over in a job's roster: the job may run for a day.
HINT_ADDR_TTL = 86_400
# Bytes of request bodies read or being handled at once, all peers together. Each request may be up
# to HARD_MAX_FRAME (64 MiB) and each peer may have 16 in flight, so without a global cap a few
# peers could make one daemon hold gigabytes. 256 MiB takes four maximal frames at once, and a
# round's largest frames (masked vectors) are a few MB. A request beyond it is refused, not queued.
INBOUND_BUDGET = 256 * 1024 * 1024

RequestHandler = Callable[[bytes, bytes], Awaitable[bytes]]
"""(peer member id, request) -> reply. Raise to send the peer an error reply."""

PeerConnectedHook = Callable[[bytes], Awaitable[None]]
"""Called with a member id when the first connection to that peer opens."""


class Membership(Protocol):
    """Who is an admitted member now; protocol/membership.py's MemberRegistry is one."""

    def is_member(self, member_id: bytes, now: float) -> bool: ...

    def revocation(self, member_id: bytes) -> object | None: ...


class EventHook(Protocol):
    """Receives every counted event (drops, failures, connects) for metrics and logs."""

    def __call__(self, name: str, peer: bytes | None, **fields: object) -> None: ...


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timings of one node. Defaults suit a daemon; tests shorten the timings."""

    max_frame: int = HARD_MAX_FRAME  # default request limit of a served protocol
    read_timeout: float = 30.0  # inbound: receive the whole request; also the reply write
    handler_timeout: float = 60.0  # inbound: the handler's time to produce a reply
    max_inbound_streams_per_peer: int = 16
    inbound_rate_per_peer: float = 50.0  # requests per second, refilled continuously
    inbound_burst_per_peer: float = 100.0
    max_gossip_size: int = 64 * 1024  # announcements only; gossipsub drops ≥1 MiB silently
    gossip_publish_spacing: float = 0.010  # back-to-back publishes overflow peer queues (§6)
    gossip_queue_size: int = 256
    gossip_max_rate_per_peer: float = 50.0  # libp2p's default 10/s drops bursts (§6)
    discovery_first_interval: float = 1.0
    discovery_interval: float = 15.0
    discovery_stable_interval: float = 600.0  # Kademlia's usual refresh, once nobody new turns up
    small_routing_table: int = 20  # Kademlia's k: below this, keep looking for peers
    bootstrap_backoff_max: float = 60.0
    dial_timeout: float = 10.0
    close_timeout: float = 5.0
    stream_idle_timeout: float = 30.0  # inbound: a kept stream with no next request for this long is closed
    max_inbound_bytes: int = INBOUND_BUDGET  # request bodies held at once, all peers together


@dataclass(frozen=True)
class TransportStats:
    """A snapshot of the node's counters (see `Node.statistics`)."""

    events: Mapping[str, int]
    bytes_sent: Mapping[str, int]  # per protocol id, frame headers included
    bytes_received: Mapping[str, int]
    connected_peers: int
    routing_table_size: int


@dataclass(frozen=True)
class _Route:
    protocol_id: str
    handler: RequestHandler
    max_request: int  # from an admitted member
    max_request_nonmember: int | None  # from any other peer; None: members only
    read_timeout: float
    handler_timeout: float


@functools.lru_cache(maxsize=16384)
def _parsed_address(text: str) -> multiaddr.Multiaddr:
    """Parsed once per address: every roster names hundreds, and py-multiaddr's parser is slow (in
    netsim's net-300, parsing took 8 % of the CPU while rosters spread)."""
    return multiaddr.Multiaddr(text)


class Node:
    """A running village node: request/response, gossip, and peer status.

    Get one from `open_node`; it is valid until that context exits.
    """

    def __init__(
        self,
        host: IHost,
        dht: KadDHT,
        pubsub: Pubsub,
        nursery: trio.Nursery,
        config: TransportConfig,
        on_event: EventHook | None,
        on_peer_connected: PeerConnectedHook | None,
        membership: Membership | None,
    ) -> None:
        self._host = host
        self._dht = dht
        self._nursery = nursery
        self._config = config
        self._on_event = on_event
        self._on_peer_connected = on_peer_connected
        self._routes: dict[str, _Route] = {}
        self._membership = membership
        self._inbound_held = 0  # bytes of admitted request bodies, until their reply is sent
        self._limits = PeerLimits(
            max_active=config.max_inbound_streams_per_peer,
            rate=config.inbound_rate_per_peer,
            burst=config.inbound_burst_per_peer,
        )
        self._events: Counter[str] = Counter()
        self._sent: Counter[str] = Counter()
        self._received: Counter[str] = Counter()
        self._connected: set[ID] = set()
        # Reused only while idle for under a third of the peer's idle limit (if it runs our defaults).
        self._idle_streams: StreamPool[INetStream] = StreamPool(max_idle=config.stream_idle_timeout / 3)
        self._gossip = Gossip(
            pubsub,
            nursery,
            self._emit,
            max_size=config.max_gossip_size,
            publish_spacing=config.gossip_publish_spacing,
            queue_size=config.gossip_queue_size,
        )
        self.discovery = DiscoveryState()
        self.peer_id: ID = host.get_id()
        self.member_id: bytes = member_id_from_peer_id(self.peer_id)

    # ---- status ------------------------------------------------------------------------

    @property
    def listen_addrs(self) -> list[str]:
        """Full addresses others can dial, `/ip4/.../tcp/.../p2p/<id>`."""
        return [str(addr) for addr in self._host.get_addrs()]

    def connected_peers(self) -> list[bytes]:
        """Member ids of the peers with an open connection (non-Ed25519 peers left out)."""
        members = []
        for peer in self._host.get_connected_peers():
            try:
                members.append(member_id_from_peer_id(peer))
            except ValueError:
                continue
        return members

    def addresses_of(self, peer: bytes) -> list[str]:
        """The dialable addresses known for `peer` (from its connections, identify, or hints)."""
        try:
            addrs = self._host.get_peerstore().addrs(peer_id_from_member_id(peer))
        except Exception:  # PeerStoreError (unknown or expired), or an id that is not a key
            return []
        return [str(addr) for addr in addrs]

    def add_addresses(self, peer: bytes, addresses: Sequence[str]) -> None:
        """Remember where `peer` can be dialed (bad entries are skipped; Noise checks whom a dial reaches)."""
        if peer == self.member_id:
            return
        parsed = []
        for text in addresses:
            try:
                parsed.append(_parsed_address(text))
            except Exception:  # multiaddr raises assorted types for malformed text
                self._emit("bad_address_hint", peer, address=text[:80])
        if parsed:
            self._host.get_peerstore().add_addrs(peer_id_from_member_id(peer), parsed, HINT_ADDR_TTL)

    async def disconnect(self, peer: bytes) -> None:
        """Close every connection to `peer` (a revoked member): its open streams end at once. It may
        dial again; then each request it makes is refused by the membership check of its handler."""
        await self._host.disconnect(peer_id_from_member_id(peer))  # idle streams are forgotten on the way

    @property
    def max_gossip_size(self) -> int:
        """The largest message `publish` takes."""
        return self._config.max_gossip_size

    def routing_table_size(self) -> int:
        return self._dht.get_routing_table_size()

    def statistics(self) -> TransportStats:
        return TransportStats(
            events=dict(self._events),
            bytes_sent=dict(self._sent),
            bytes_received=dict(self._received),
            connected_peers=len(self._host.get_connected_peers()),
            routing_table_size=self.routing_table_size(),
        )

    # ---- gossip ------------------------------------------------------------------------

    async def subscribe(
        self, topic: str, validator: GossipValidator
    ) -> trio.MemoryReceiveChannel[tuple[bytes, bytes]]:
        """Receive (sender member id, data) for `topic`; see `Gossip.subscribe`."""
        return await self._gossip.subscribe(topic, validator)

    async def publish(self, topic: str, data: bytes) -> None:
        """Best-effort small announcement; see `Gossip.publish`."""
        await self._gossip.publish(topic, data)

    # ---- request/response: serving --------------------------------------------------------

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
            self._emit("inbound_failed", peer, protocol=route.protocol_id, error=repr(exc))
        finally:
            await _finish(stream, graceful=graceful)

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
                self._emit("inbound_timeout", peer, protocol=route.protocol_id)
        except StreamEnded as exc:
            if exc.received or not between_requests:
                self._emit("inbound_broken", peer, protocol=route.protocol_id, reason=exc.reason)
        return None

    async def _admit_and_serve(self, route: _Route, stream: INetStream, peer: bytes, length: int) -> tuple[bool, bool]:
        """Serve one request if `_admit` lets it in: (a reply frame was sent, the stream can carry another)."""
        refusal = self._admit(route, peer, length)
        if refusal is not None:  # the body stays unread, so the stream ends with this reply
            reason, message = refusal
            self._emit("inbound_refused", peer, protocol=route.protocol_id, reason=reason, size=length, message=message)
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
            self._emit("inbound_timeout", peer, protocol=route.protocol_id)
            return False, False
        except TransportError as exc:
            self._emit("inbound_broken", peer, protocol=route.protocol_id, reason=exc.reason)
            return False, False
        self._received[route.protocol_id] += HEADER.size + length
        reply = await self._call_handler(route, peer, request)
        await self._send_reply(route, stream, reply)
        return True, True

    async def _call_handler(self, route: _Route, peer: bytes, request: bytes) -> bytes:
        try:
            with trio.fail_after(route.handler_timeout):
                return ok_reply(await route.handler(peer, request))
        except trio.TooSlowError:
            self._emit("handler_timeout", peer, protocol=route.protocol_id)
            return error_reply(f"handler gave no reply within {route.handler_timeout:g} s")
        except RemoteProtocolError as exc:  # the handler refused the request: an answer, not a fault
            self._emit("handler_refused", peer, protocol=route.protocol_id, error=exc.reason)
            return error_reply(str(exc))
        except Exception as exc:
            log.warning("handler for %s raised", route.protocol_id, exc_info=True)
            self._emit("handler_error", peer, protocol=route.protocol_id, error=repr(exc))
            return error_reply(str(exc) or type(exc).__name__)

    async def _send_reply(self, route: _Route, stream: INetStream, reply: bytes) -> None:
        with trio.fail_after(route.read_timeout):
            await write_frame(stream, reply)
        self._sent[route.protocol_id] += HEADER.size + len(reply)

    # ---- request/response: asking ---------------------------------------------------------

    async def request(
        self,
        peer: bytes,
        protocol_id: str,
        request: bytes,
        *,
        timeout: float,
        max_reply: int = HARD_MAX_FRAME - 1,
        dial_retry: Backoff | None = DIAL_RETRY,
    ) -> bytes:
        """Send one request frame to `peer` and return its reply.

        Dials first if needed, using known addresses or a DHT lookup, retrying a failed dial on
        `dial_retry` (None: one dial, for callers that retry the whole request themselves). Every
        failure (no address, dial, timeout, reset, truncated or oversize reply, error reply) raises
        TransportError; nothing else is raised except cancellation.
        """
        if peer == self.member_id:
            return await self._request_self(protocol_id, request)
        try:
            return await self._request_remote(peer, protocol_id, request, timeout, max_reply, dial_retry)
        except TransportError as exc:
            self._emit("request_failed", peer, protocol=protocol_id, reason=exc.reason)
            raise

    async def _request_remote(
        self, peer: bytes, protocol_id: str, request: bytes, timeout: float, max_reply: int, dial_retry: Backoff | None
    ) -> bytes:
        if len(request) > HARD_MAX_FRAME:
            raise TransportError(peer, f"request of {len(request)} bytes exceeds {HARD_MAX_FRAME}")
        try:
            with trio.fail_after(timeout):
                kept, stale = self._idle_streams.take(peer, protocol_id, trio.current_time())
                for old in stale:
                    await _finish(old, graceful=True)
                reply = None
                if kept is not None:  # None back: the server had closed it; go on with a fresh one
                    reply = await self._exchange_on(kept, peer, protocol_id, request, max_reply, kept=True)
                if reply is None:
                    stream = await self._open_stream(peer, protocol_id, dial_retry)
                    reply = await self._exchange_on(stream, peer, protocol_id, request, max_reply, kept=False)
        except trio.TooSlowError:
            raise TransportError(peer, f"no reply within {timeout:g} s") from None
        except TransportError:
            raise
        except Exception as exc:  # libp2p's dial and stream errors have no common base
            raise TransportError(peer, f"{type(exc).__name__}: {exc}") from exc
        assert reply is not None
        return open_reply(reply, peer)

    async def _exchange_on(
        self, stream: INetStream, peer: bytes, protocol_id: str, request: bytes, max_reply: int, *, kept: bool
    ) -> bytes | None:
        """One exchange; the stream goes back to the pool after an ok reply and is reset on any failure.

        None if `kept` (from the pool) and it ended before a single reply byte: the server closed
        it as idle without reading the request, so sending it again on a new stream is safe."""
        reply = None
        try:
            reply = await self._exchange(stream, peer, protocol_id, request, max_reply)
        except _EndedBeforeReply:
            if kept:
                return None
            raise
        finally:
            if reply is not None and reply[:1] == bytes([REPLY_OK]):
                surplus = self._idle_streams.give(peer, protocol_id, stream, trio.current_time())
                if surplus is not None:
                    await _finish(surplus, graceful=True)
            else:  # an error reply may end the stream on the server's side too
                await _finish(stream, graceful=reply is not None)
        return reply

    async def _exchange(
        self, stream: INetStream, peer: bytes, protocol_id: str, request: bytes, max_reply: int
    ) -> bytes:
        """Write the request while already reading the reply.

        A server refuses an oversize or rate-limited request before reading it and replies
        with the reason at once. Reading concurrently gets that reason to the caller instead
        of a write stalled on a full yamux window (4 MiB) until yamux gives up after 5 s.
        """
        failure: TransportError | None = None
        written = trio.Event()

        async def send() -> None:
            try:
                await write_frame(stream, request)
            except Exception:  # StreamReset and friends: the reply, or its absence, says why
                log.debug("request write to %s failed", peer.hex()[:16], exc_info=True)
                return
            finally:
                written.set()
            self._sent[protocol_id] += HEADER.size + len(request)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            try:
                try:
                    length = await read_length(stream, max_reply + 1, peer)  # +1: status byte
                except StreamEnded as exc:
                    if exc.received == 0:
                        raise _EndedBeforeReply(peer, 0, HEADER.size) from exc
                    raise
                reply = await read_exact(stream, length, peer)
            except FrameTooLarge as exc:
                failure = TransportError(peer, f"reply of {exc.length - 1} bytes exceeds the limit of {max_reply}")
            except TransportError as exc:
                failure = exc
            finally:
                # Never cancel the writer (see write_frame): if it is still going, a reset
                # ends its wait for window space, and the nursery collects it promptly.
                if not written.is_set():
                    await _finish(stream, graceful=False)
        if failure is not None:
            raise failure
        self._received[protocol_id] += HEADER.size + len(reply)
        return reply

    async def _open_stream(self, peer: bytes, protocol_id: str, dial_retry: Backoff | None) -> INetStream:
        try:
            peer_id = peer_id_from_member_id(peer)
        except ValueError as exc:
            raise TransportError(peer, str(exc)) from exc
        network = self._host.get_network()
        # A peer that just died can still be listed with its closed connection, and the swarm then
        # fails the stream ("no valid connections") without dialing: dial anew, so that a refusal
        # says at once that the peer is down (net-100 took 2-3 s to give up on SIGKILLed clients).
        dialing = all(conn.is_closed for conn in network.get_connections(peer_id))
        if dialing:
            if not self._known_addrs(peer_id):
                info = await self._dht.find_peer(peer_id)
                if info is None or not info.addrs:
                    raise TransportError(peer, "no known address, and the DHT lookup found none")
                self._host.get_peerstore().add_addrs(peer_id, info.addrs, LOOKUP_ADDR_TTL)
            await self._dial(peer, peer_id, dial_retry)
        try:
            stream = await self._host.new_stream(peer_id, [TProtocol(protocol_id)])
        except Exception as exc:  # libp2p's stream errors have no common base
            if dialing and _connection_refused(exc):  # the new connection died at once: so did the peer
                raise PeerDown(peer, _REFUSED) from exc
            raise
        self._emit("stream_opened", peer, protocol=protocol_id)
        return stream

    async def _dial(self, peer: bytes, peer_id: ID, retry: Backoff | None) -> None:
        """Connect, retrying on `retry` unless the dial is refused (PeerDown at once).

        The swarm's own retries are off (`_build_host`): they redialed a refused address for 0.7 s.
        Other failures (a handshake that timed out or broke under load) are retried here, as the
        swarm did, so that turning its retries off costs no reachability."""
        network = self._host.get_network()
        retries = 0
        while True:
            # The swarm refuses to dial a peer for 60 s after a failed dial. Every caller here has
            # its own deadline and retry policy (joins back off, rounds retry within a phase), and
            # a restarted creator or coordinator must be reachable again as soon as it is back.
            if isinstance(network, Swarm):
                network.unblock_peer(peer_id)
            try:
                await network.dial_peer(peer_id)
                return
            except Exception as exc:  # libp2p's dial errors have no common base
                if _connection_refused(exc):
                    raise PeerDown(peer, _REFUSED) from exc
                delay = retry.next_delay(retries) if retry is not None else None
                if delay is None:
                    raise
            await trio.sleep(delay)
            retries += 1

    def _known_addrs(self, peer_id: ID) -> bool:
        try:
            return bool(self._host.get_peerstore().addrs(peer_id))
        except Exception:  # PeerStoreError: unknown or expired
            return False

    async def _request_self(self, protocol_id: str, request: bytes) -> bytes:
        """A member may address itself (a coordinator is also a client); skip the network."""
        route = self._routes.get(protocol_id)
        if route is None:
            raise TransportError(self.member_id, f"protocol {protocol_id} is not served here")
        return open_reply(await self._call_handler(route, self.member_id, request), self.member_id)

    # ---- events --------------------------------------------------------------------------

    def _emit(self, name: str, peer: bytes | None, **fields: object) -> None:
        self._events[name] += 1
        log.debug("%s peer=%s %s", name, peer.hex()[:16] if peer else None, fields)
        if self._on_event is None:
            return
        try:
            self._on_event(name, peer, **fields)
        except Exception:
            log.exception("on_event hook raised for %s", name)

    def _peer_connected(self, peer_id: ID) -> None:
        if peer_id in self._connected:
            return
        self._connected.add(peer_id)
        try:
            member = member_id_from_peer_id(peer_id)
        except ValueError:
            return
        self._emit("peer_connected", member)
        if self._on_peer_connected is not None:
            self._nursery.start_soon(self._run_connected_hook, self._on_peer_connected, member)

    def _peer_disconnected(self, peer_id: ID) -> None:
        if self._host.get_network().get_connections(peer_id) or peer_id not in self._connected:
            return
        self._connected.discard(peer_id)
        try:
            member = member_id_from_peer_id(peer_id)
        except ValueError:
            return
        self._idle_streams.forget(member)  # they died with the connection
        self._emit("peer_disconnected", member)

    async def _run_connected_hook(self, hook: PeerConnectedHook, member: bytes) -> None:
        try:
            await hook(member)
        except Exception:
            log.exception("on_peer_connected hook raised")
            self._emit("peer_connected_hook_error", member)


class _ConnectionEvents(INotifee):
    """Forwards swarm connect/disconnect to the node. Must not block: the swarm awaits it."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node._peer_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node._peer_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class _EndedBeforeReply(StreamEnded):
    """The stream ended before the first byte of the reply."""


async def _finish(stream: INetStream, *, graceful: bool) -> None:
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


def _connection_refused(exc: BaseException) -> bool:
    """Whether a connection refusal (ECONNREFUSED) is among the causes of a dial error. The swarm
    wraps one error per address in a MultiError, each wrapping trio's, which groups its attempts."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return True
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        if isinstance(error, MultiError):  # the swarm's: one error per address dialed
            pending.extend(error.errors)
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return False


def _build_host(keypair: KeyPair, config: TransportConfig) -> IHost:
    host = new_host(
        key_pair=keypair,
        # Noise only: the default host also accepts /plaintext/2.0.0 (notes §1).
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(keypair, noise_privkey=x25519.create_new_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        # min_connections=0 and low_watermark=0 also turn off the auto-connector (notes §4).
        connection_config=ConnectionConfig(
            max_connections=HUGE_CONNECTION_CAP,
            min_connections=0,
            low_watermark=0,
            high_watermark=HUGE_CONNECTION_CAP,
            dial_timeout=config.dial_timeout,
        ),
        # The resource manager's extras cost CPU on every stream and can refuse a busy village
        # outright: its circuit breaker stops *all* connections for 60 s after 5 failed
        # acquisitions, and graceful degradation shrinks the stream limit under load.
        # villaged bounds its peers itself (limits.py); keep only the connection caps.
        resource_manager=new_resource_manager(
            enable_metrics=False,
            enable_circuit_breaker=False,
            enable_graceful_degradation=False,
            connection_limits=ConnectionLimits(
                max_pending_inbound=4096,
                max_pending_outbound=4096,
                max_established_inbound=HUGE_CONNECTION_CAP,
                max_established_outbound=HUGE_CONNECTION_CAP,
                max_established_per_peer=8,
                max_established_total=HUGE_CONNECTION_CAP,
            )
        ),
    )
    network = host.get_network()
    if isinstance(network, Swarm):  # new_host takes no retry settings
        # The swarm would redial a refused address 3 times over 0.7 s; Node._dial retries the rest.
        network.retry_config = RetryConfig(max_retries=0)
    return host


def _build_gossipsub(config: TransportConfig) -> GossipSub:
    return GossipSub(
        protocols=GOSSIPSUB_PROTOCOLS,
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        # Adaptive gossip raises the heartbeat to 30-60 s on small networks (notes §6).
        adaptive_gossip_enabled=False,
        max_messages_per_topic_per_second=config.gossip_max_rate_per_peer,
    )


async def _stop_auto_connector(host: IHost) -> None:
    """Stop the swarm's auto-connector: discovery.py decides whom to dial.

    With high_watermark raised (it must be: the pruner closes connections above it) the
    auto-connector aims at (low + high) / 2 connections and dials every peer in the
    peerstore with a public address every 10 s, logging at INFO each time. Swarm.run starts
    it with no checkpoint after the listen event, so it is running once host.run() is entered.
    """
    network = host.get_network()
    if isinstance(network, Swarm):
        await network.auto_connector.stop()
async def _close_host(host: IHost, timeout: float) -> None:
    """host.close() closes connections and listeners; leaving host.run() does not (notes §7)."""
    with trio.move_on_after(timeout) as scope:
        scope.shield = True
        await host.close()
    if scope.cancelled_caught:
        log.warning("host.close() took longer than %.1f s; abandoned", timeout)


@asynccontextmanager
async def open_node(
    keypair: KeyPair,
    listen: Sequence[str],
    bootstrap: Sequence[str],
    config: TransportConfig = TransportConfig(),
    *,
    on_event: EventHook | None = None,
    on_peer_connected: PeerConnectedHook | None = None,
    membership: Membership | None = None,
) -> AsyncIterator[Node]:
    """Run a node listening on `listen`, joined through `bootstrap`, until the block exits.

    `bootstrap` entries are full `/ip4/.../tcp/.../p2p/<id>` addresses (ValueError if not);
    joining continues in the background, so the node is usable at once. Leaving the block
    closes the host within `config.close_timeout`; to stop a node by cancellation, run it
    with `run_node` instead.
    `membership` tells which peers are admitted members (see `Node.serve`); without it, every peer
    counts as one.
    """
    bootstrap_peers = parse_bootstrap(bootstrap)
    install_libp2p_tuning()
    host = _build_host(keypair, config)
    dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False)
    gossipsub = _build_gossipsub(config)
    pubsub = Pubsub(host, gossipsub, strict_signing=True)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in listen]))
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(gossipsub))
        await pubsub.wait_until_ready()
        await stack.enter_async_context(background_trio_service(dht))
        await _stop_auto_connector(host)
        stack.push_async_callback(_close_host, host, config.close_timeout)
        nursery = await stack.enter_async_context(trio.open_nursery())
        node = Node(host, dht, pubsub, nursery, config, on_event, on_peer_connected, membership)
        host.get_network().register_notifee(_ConnectionEvents(node))
        settings = DiscoverySettings(
            first_interval=config.discovery_first_interval,
            interval=config.discovery_interval,
            stable_interval=config.discovery_stable_interval,
            small_table=config.small_routing_table,
            backoff_max=config.bootstrap_backoff_max,
            dial_timeout=config.dial_timeout,
        )
        nursery.start_soon(maintain_peers, host, dht, bootstrap_peers, settings, node._emit, node.discovery)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


async def run_node(
    keypair: KeyPair,
    listen: Sequence[str],
    bootstrap: Sequence[str],
    config: TransportConfig = TransportConfig(),
    *,
    on_event: EventHook | None = None,
    on_peer_connected: PeerConnectedHook | None = None,
    membership: Membership | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`open_node` as a task: `node = await nursery.start(run_node, ...)`; runs until cancelled.

    Cancelling a scope around `open_node` cancels libp2p's own tasks at the same moment as
    our close, so connections being set up are dropped half-made (libp2p logs ADDCONN_FAIL
    and leaks their sockets). Here cancellation only tells a shielded task to leave
    `open_node` the orderly way. Cancelling one nursery of these closes its nodes
    concurrently, which keeps a shutdown of many nodes short (notes §7).
    """
    stop = trio.Event()
    node_opts = dict(on_event=on_event, on_peer_connected=on_peer_connected, membership=membership)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(_node_until, stop, keypair, listen, bootstrap, config, node_opts)
        task_status.started(node)
        try:
            await trio.sleep_forever()
        finally:
            stop.set()


async def _node_until(
    stop: trio.Event,
    keypair: KeyPair,
    listen: Sequence[str],
    bootstrap: Sequence[str],
    config: TransportConfig,
    node_opts: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope(shield=True) as scope:
        async with open_node(keypair, listen, bootstrap, config, **node_opts) as node:
            task_status.started(node)
            await stop.wait()
            # The shield keeps outside cancellation out, not our own deadline: bound the close.
            scope.deadline = trio.current_time() + config.close_timeout + 1.0
