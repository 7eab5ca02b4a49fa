"""The limits and timings of one node (`TransportConfig`), read by every part of the transport."""

from __future__ import annotations

from dataclasses import dataclass

from villaged.transport.framing import HARD_MAX_FRAME

# Bytes of request bodies read or being handled at once, all peers together. Each request may be up
# to HARD_MAX_FRAME (64 MiB) and each peer may have 16 in flight, so without a global cap a few
# peers could make one daemon hold gigabytes. 256 MiB takes four maximal frames at once, and a
# round's largest frames (masked vectors) are a few MB. A request beyond it is refused, not queued.
INBOUND_BUDGET = 256 * 1024 * 1024


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
