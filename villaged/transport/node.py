"""`Node`: what the rest of villaged sees of the network, one object per running node.

A round needs two things from the network: reliable request/response exchanges of opaque
frames with named members (`Node.serve`, `Node.request`), and small best-effort
announcements to everyone (`Node.subscribe`, `Node.publish`). Members are named by their
32-byte Ed25519 public key (see identity.py); libp2p peer ids never leave this package.
The node puts together the serving half (serving.py), the asking half (asking.py), gossip
(gossip.py), the counters (counters.py) and the peers' connect and disconnect events.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub

from protocol.backoff import Backoff
from villaged.transport.asking import DIAL_RETRY, Requester
from villaged.transport.config import TransportConfig
from villaged.transport.counters import Counters, TransportStats
from villaged.transport.discovery import DiscoveryState
from villaged.transport.framing import HARD_MAX_FRAME
from villaged.transport.gossip import Gossip, GossipValidator
from villaged.transport.identity import member_id_from_peer_id, peer_id_from_member_id
from villaged.transport.serving import Membership, RequestHandler, Responder

log = logging.getLogger(__name__)

# Addresses handed over in a job's roster: the job may run for a day.
HINT_ADDR_TTL = 86_400

PeerConnectedHook = Callable[[bytes], Awaitable[None]]
"""Called with a member id when the first connection to that peer opens."""


@functools.lru_cache(maxsize=16384)
def _parsed_address(text: str) -> multiaddr.Multiaddr:
    """Parsed once per address: every roster names hundreds, and py-multiaddr's parser is slow (in
    netsim's net-300, parsing took 8 % of the CPU while rosters spread)."""
    return multiaddr.Multiaddr(text)


class Node:
    """A running village node: request/response, gossip, and peer status.

    Get one from `open_node` (host.py); it is valid until that context exits. It registers
    itself for the swarm's connection events.
    """

    def __init__(
        self,
        host: IHost,
        dht: KadDHT,
        pubsub: Pubsub,
        nursery: trio.Nursery,
        config: TransportConfig,
        counters: Counters,
        on_peer_connected: PeerConnectedHook | None,
        membership: Membership | None,
    ) -> None:
        self._host = host
        self._dht = dht
        self._nursery = nursery
        self._config = config
        self._counters = counters
        self._on_peer_connected = on_peer_connected
        self._connected: set[ID] = set()
        self.discovery = DiscoveryState()
        self.peer_id: ID = host.get_id()
        self.member_id: bytes = member_id_from_peer_id(self.peer_id)
        self._responder = Responder(host, config, counters, membership, self.member_id)
        self._requester = Requester(host, dht, counters, config.stream_idle_timeout)
        self._gossip = Gossip(
            pubsub,
            nursery,
            counters.emit,
            max_size=config.max_gossip_size,
            publish_spacing=config.gossip_publish_spacing,
            queue_size=config.gossip_queue_size,
        )
        host.get_network().register_notifee(_ConnectionEvents(self))

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
                self._counters.emit("bad_address_hint", peer, address=text[:80])
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
            events=dict(self._counters.events),
            bytes_sent=dict(self._counters.sent),
            bytes_received=dict(self._counters.received),
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

    # ---- request/response ----------------------------------------------------------------

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
        """Answer each request frame on `protocol_id` with one reply frame; who may send what, and
        how a refusal or a handler's exception is answered: `Responder.serve` (serving.py)."""
        self._responder.serve(
            protocol_id,
            handler,
            max_request=max_request,
            max_request_nonmember=max_request_nonmember,
            read_timeout=read_timeout,
            handler_timeout=handler_timeout,
        )

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
        `dial_retry` (None: one dial, for callers that retry the whole request themselves; the
        bound this keeps is in asking.py). Every failure (no address, dial, timeout, reset,
        truncated or oversize reply, error reply) raises TransportError; nothing else is raised
        except cancellation.
        """
        if peer == self.member_id:
            return await self._responder.answer_self(protocol_id, request)
        return await self._requester.request(peer, protocol_id, request, timeout, max_reply, dial_retry)

    # ---- connection events ---------------------------------------------------------------

    def _peer_connected(self, peer_id: ID) -> None:
        if peer_id in self._connected:
            return
        self._connected.add(peer_id)
        try:
            member = member_id_from_peer_id(peer_id)
        except ValueError:
            return
        self._counters.emit("peer_connected", member)
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
        self._requester.forget_peer(member)
        self._counters.emit("peer_disconnected", member)

    async def _run_connected_hook(self, hook: PeerConnectedHook, member: bytes) -> None:
        try:
            await hook(member)
        except Exception:
            log.exception("on_peer_connected hook raised")
            self._counters.emit("peer_connected_hook_error", member)


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
