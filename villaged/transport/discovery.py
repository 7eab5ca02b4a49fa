"""Finding peers: join through bootstrap nodes, then let Kademlia lookups build the mesh.

py-libp2p 0.8.1's KadDHT does not bootstrap itself (notes/py-libp2p.md §5): connecting to a
peer does not put it in the routing table, and the table refreshes once at start and then
every 600 s. Nodes that joined early would stay connected to the bootstrap node only (a star).
So this loop seeds the table with every connected peer, refreshes it, and looks up a random
id, quickly at first and then every `discovery_interval` while the table is small and still
growing. Lookups dial the peers they query, which is what spreads connections across the
network. Once a refresh finds nobody new, the loop refreshes only every `stable_interval`: in a
village smaller than Kademlia's k the table never fills, and refreshing it every 15 s anyway
made every node answer a lookup stream per peer per interval (measured: a third of each idle
node's CPU with 16 daemons on 2 cores). It waits the full `stable_interval` at once: one refresh
is a lookup per non-empty bucket, each querying up to k peers, and 100 nodes doubling their way
up from 10 s kept 2 cores saturated for minutes.

A node re-dials its bootstrap list on `bootstrap_retry` (2, 4, 8, ... up to `backoff_max` seconds,
for as long as it fails) until one of them answers, and again
whenever it has lost every connection. Connections alone do not mean it joined: in net-100 two
nodes started before all of their bootstrap peers listened, one of them was the other's bootstrap
peer, and the two connected to each other and nobody else for the whole run (an island that never
learned the job). It checks for that every `first_interval` while it rests: a settled node rests
`stable_interval` (600 s), and one whose few connections closed stayed alone that long (net-300: a
node with no connection and no result). The swarm refuses to dial a peer for 60 s after a failed
dial (its negative cache), so each retry first lifts that block for the bootstrap peers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.swarm import Swarm
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from protocol.backoff import Backoff
from villaged.transport.identity import peer_id_from_member_id

log = logging.getLogger(__name__)

EmitFn = Callable[..., None]


@dataclass(frozen=True)
class DiscoverySettings:
    first_interval: float  # first refresh after joining; doubles up to `interval`
    interval: float  # refresh period while the routing table is small and growing
    stable_interval: float  # refresh period once refreshes stop finding new peers
    small_table: int  # "small": below this many routing-table entries
    backoff_max: float  # cap on the bootstrap retry backoff when isolated
    dial_timeout: float  # per bootstrap dial, and per DHT lookup

    @property
    def bootstrap_retry(self) -> Backoff:
        """Rests between failed rejoins: twice `first_interval`, doubling up to `backoff_max`. An
        isolated node has nothing else to do, and 60 s at most lets it back in soon after its peers."""
        return Backoff.doubling(min(2 * self.first_interval, self.backoff_max), self.backoff_max).forever()


@dataclass
class DiscoveryState:
    """What the loop has found so far, for status reports (netsim waits for `settled`)."""

    settled: bool = False  # the last refresh found nobody new: lookups now run rarely


def parse_bootstrap(addrs: Sequence[str]) -> list[PeerInfo]:
    """Parse `/ip4/.../tcp/.../p2p/<id>` strings; ValueError names the bad entry."""
    infos = []
    for i, text in enumerate(addrs):
        try:
            infos.append(info_from_p2p_addr(multiaddr.Multiaddr(text)))
        except Exception as exc:  # multiaddr and libp2p raise assorted types here
            raise ValueError(f"bootstrap[{i}]: {text!r} is not a /p2p/ multiaddr ({exc})") from exc
    return infos


async def maintain_peers(
    host: IHost, dht: KadDHT, bootstrap: Sequence[PeerInfo], settings: DiscoverySettings, emit: EmitFn,
    state: DiscoveryState,
) -> None:
    """Run forever: join, keep the routing table filled, rejoin when isolated."""
    bootstrap = [info for info in bootstrap if info.peer_id != host.get_id()]
    joined = await _join(host, dht, bootstrap, settings, emit)
    interval = settings.first_interval
    failures = 0  # rejoins that failed in a row
    known = dht.get_routing_table_size()
    while True:
        await _rest(host, bootstrap, interval, settings.first_interval)
        if bootstrap and not (joined and host.get_connected_peers()):
            emit("bootstrap_retry", None, rested=interval, failures=failures)
            if not host.get_connected_peers():
                state.settled = False
            joined = await _join(host, dht, bootstrap, settings, emit)
            failures = 0 if joined else failures + 1
            rest = settings.bootstrap_retry.next_delay(failures - 1) if failures else settings.first_interval
            assert rest is not None  # bootstrap_retry never gives up
            interval = rest
            continue
        await _refresh(host, dht, settings)
        size = dht.get_routing_table_size()
        state.settled = not (size > known and size < settings.small_table)
        if state.settled:
            interval = settings.stable_interval
        else:
            interval = min(interval * 2, settings.interval)  # still finding peers: keep looking (a period, not a retry)
        known = size


async def _rest(host: IHost, bootstrap: Sequence[PeerInfo], seconds: float, check_every: float) -> None:
    """Sleep `seconds`, or less if the node has bootstrap peers to go back to and no connection left."""
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        await trio.sleep(min(check_every, deadline - trio.current_time()))
        if bootstrap and not host.get_connected_peers():
            return


async def _join(
    host: IHost, dht: KadDHT, bootstrap: Sequence[PeerInfo], settings: DiscoverySettings, emit: EmitFn
) -> bool:
    """Dial every bootstrap peer at once; refresh the DHT through those that answered."""
    connected: list[PeerInfo] = []

    async def dial(info: PeerInfo) -> None:
        network = host.get_network()
        if isinstance(network, Swarm):
            network.unblock_peer(info.peer_id)
        try:
            with trio.fail_after(settings.dial_timeout):
                await host.connect(info)
        except Exception as exc:  # TooSlowError or any of libp2p's dial errors
            emit("bootstrap_dial_failed", None, addr=str(info.addrs[0]) if info.addrs else "", error=repr(exc))
            return
        connected.append(info)

    async with trio.open_nursery() as nursery:
        for info in bootstrap:
            nursery.start_soon(dial, info)
    if connected:
        await _refresh(host, dht, settings)
    return bool(connected)


async def _refresh(host: IHost, dht: KadDHT, settings: DiscoverySettings) -> None:
    """Seed the routing table with connected peers, refresh it, and look up a random id."""
    for peer in host.get_connected_peers():
        try:
            await dht.add_peer(peer)
        except Exception:
            log.debug("add_peer(%s) failed", peer, exc_info=True)
    random_target = peer_id_from_member_id(os.urandom(32))
    with trio.move_on_after(settings.dial_timeout):
        try:
            await dht.refresh_routing_table()
            await dht.find_peer(random_target)
        except Exception:
            log.debug("DHT refresh failed", exc_info=True)
