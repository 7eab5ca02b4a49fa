"""Building and running a node: the libp2p host, the DHT, gossipsub, and `open_node`/`run_node`.

`open_node` builds the host the way notes/py-libp2p.md says it must be built: Noise and yamux
only, connection caps raised (the swarm never frees inbound slots), a self-seeding Kademlia
DHT (discovery.py), gossipsub with a fixed 1 s heartbeat (gossip.py), the swarm's own dial
retries off (asking.py retries with a stated bound), every stream handler wrapped so no
exception escapes into libp2p (serving.py; one would end the whole trio run), and
`host.close()` on the way out (leaving `host.run()` alone closes nothing).

Reading order: node.py (`Node`, what the daemon uses), serving.py, asking.py, then framing.py
(wire format), limits.py, gossip.py, discovery.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto import x25519
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.rcmgr import new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from villaged.transport.config import TransportConfig
from villaged.transport.counters import Counters, EventHook
from villaged.transport.discovery import DiscoverySettings, maintain_peers, parse_bootstrap
from villaged.transport.node import Node, PeerConnectedHook
from villaged.transport.serving import Membership
from villaged.transport.tuning import install as install_libp2p_tuning

log = logging.getLogger(__name__)

GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.2.0"), TProtocol("/meshsub/1.1.0")]
# The swarm admits inbound connections up to max_connections - min_connections over the
# whole process lifetime (slots are never freed, notes §4), so "huge" means lifetime total.
HUGE_CONNECTION_CAP = 1_000_000


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
        # The swarm would redial a refused address 3 times over 0.7 s; asking.py's Requester._dial retries the rest.
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
    `membership` tells which peers are admitted members (see serving.py); without it, every peer
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
        counters = Counters(on_event)
        node = Node(host, dht, pubsub, nursery, config, counters, on_peer_connected, membership)
        settings = DiscoverySettings(
            first_interval=config.discovery_first_interval,
            interval=config.discovery_interval,
            stable_interval=config.discovery_stable_interval,
            small_table=config.small_routing_table,
            backoff_max=config.bootstrap_backoff_max,
            dial_timeout=config.dial_timeout,
        )
        nursery.start_soon(maintain_peers, host, dht, bootstrap_peers, settings, counters.emit, node.discovery)
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
