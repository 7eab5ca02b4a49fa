"""Small signed announcements over gossipsub (a round id, a CID), never round payloads.

Gossipsub drops messages without telling anyone (notes/py-libp2p.md §6): at 1 MiB, above a
per-peer rate, when a queue is full, or when a validator says no. So it only carries small
hints that a node can also learn some other way; anything a round must receive goes over
request/response streams. This wrapper adds what the library leaves out: a size limit on
both sides, spacing between publishes, validators that cannot raise, and counted drops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub

from villaged.transport.identity import member_id_from_peer_id

log = logging.getLogger(__name__)

GossipValidator = Callable[[bytes, bytes], bool]
"""(sender member id, data) -> accept. Runs before a message is delivered or relayed."""

EmitFn = Callable[..., None]


class Gossip:
    """Topic subscriptions and publishes for one node (see `Node.subscribe`/`Node.publish`)."""

    def __init__(
        self,
        pubsub: Pubsub,
        nursery: trio.Nursery,
        emit: EmitFn,
        *,
        max_size: int,
        publish_spacing: float,
        queue_size: int,
    ) -> None:
        self._pubsub = pubsub
        self._nursery = nursery
        self._emit = emit
        self._max_size = max_size
        self._spacing = publish_spacing
        self._queue_size = queue_size
        self._publish_lock = trio.Lock()
        self._last_publish = -float("inf")

    async def subscribe(
        self, topic: str, validator: GossipValidator
    ) -> trio.MemoryReceiveChannel[tuple[bytes, bytes]]:
        """Deliver accepted messages on `topic` as (sender member id, data), own ones included.

        If the consumer falls `queue_size` messages behind, newer messages are dropped and
        counted as `gossip_queue_full` (gossipsub would drop them anyway, silently).
        """
        self._pubsub.set_topic_validator(topic, self._guard(topic, validator), False)
        subscription = await self._pubsub.subscribe(topic)
        send, receive = trio.open_memory_channel[tuple[bytes, bytes]](self._queue_size)
        self._nursery.start_soon(self._pump, topic, subscription, send)
        return receive

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish a small message. Raises ValueError above the size limit.

        Returns once the message is queued: delivery is not confirmed (gossipsub never
        reports drops). Publishes are spaced `publish_spacing` apart, because back-to-back
        publishes overflow the per-peer queue of 32 RPCs.
        """
        if len(data) > self._max_size:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds the limit of {self._max_size}")
        async with self._publish_lock:
            await trio.sleep_until(self._last_publish + self._spacing)
            await self._pubsub.publish(topic, data)
            self._last_publish = trio.current_time()

    def _guard(self, topic: str, validator: GossipValidator) -> Callable[[ID, Any], bool]:
        """Wrap a validator: enforce the size limit, name the originator, never raise."""

        def validate(forwarder: ID, msg: Any) -> bool:
            data: bytes = msg.data
            if len(data) > self._max_size:
                self._emit("gossip_oversize_dropped", None, topic=topic, size=len(data))
                return False
            try:
                sender = member_id_from_peer_id(ID(msg.from_id))
                accepted = bool(validator(sender, data))
            except Exception:
                log.exception("gossip validator for %s raised; message rejected", topic)
                self._emit("gossip_validator_error", None, topic=topic)
                return False
            if not accepted:
                self._emit("gossip_rejected", sender, topic=topic)
            return accepted

        return validate

    async def _pump(
        self, topic: str, subscription: Any, send: trio.MemorySendChannel[tuple[bytes, bytes]]
    ) -> None:
        async with send:
            async for msg in subscription:
                sender = member_id_from_peer_id(ID(msg.from_id))  # the validator accepted it
                try:
                    send.send_nowait((sender, bytes(msg.data)))
                except trio.WouldBlock:
                    self._emit("gossip_queue_full", sender, topic=topic)
                except trio.BrokenResourceError:
                    return  # the consumer closed its channel
