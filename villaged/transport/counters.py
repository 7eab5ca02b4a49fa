"""The node's counters: every event (drop, failure, connect) and the bytes sent and received per
protocol, shared by its serving and asking halves and handed on to the daemon's `EventHook`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class EventHook(Protocol):
    """Receives every counted event (drops, failures, connects) for metrics and logs."""

    def __call__(self, name: str, peer: bytes | None, **fields: object) -> None: ...


@dataclass(frozen=True)
class TransportStats:
    """A snapshot of the node's counters (see `Node.statistics`)."""

    events: Mapping[str, int]
    bytes_sent: Mapping[str, int]  # per protocol id, frame headers included
    bytes_received: Mapping[str, int]
    connected_peers: int
    routing_table_size: int


class Counters:
    """Counts what happens on one node; `emit` also logs the event and calls the hook, whose
    exceptions are logged and go no further (a metrics bug must not break a request)."""

    def __init__(self, on_event: EventHook | None) -> None:
        self._on_event = on_event
        self.events: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # bytes per protocol id, frame headers included
        self.received: Counter[str] = Counter()

    def emit(self, name: str, peer: bytes | None, **fields: object) -> None:
        self.events[name] += 1
        log.debug("%s peer=%s %s", name, peer.hex()[:16] if peer else None, fields)
        if self._on_event is None:
            return
        try:
            self._on_event(name, peer, **fields)
        except Exception:
            log.exception("on_event hook raised for %s", name)
