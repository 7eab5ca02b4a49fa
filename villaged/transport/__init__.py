"""villaged's network layer: the only package that imports py-libp2p (or multiaddr).

The rest of villaged names members by their 32-byte Ed25519 public key and talks through
`Node` (request/response frames, best-effort gossip); libp2p peer ids, hosts and streams stay
in here, so a py-libp2p upgrade or a different network touches this package alone.

Reading order: node.py (Node), host.py (building it: open_node, run_node), config.py
(TransportConfig), serving.py (inbound requests and their admission), asking.py (outbound
requests and dials), framing.py (the wire format), limits.py (per-peer admission),
stream_pool.py (keep-alive), counters.py, gossip.py, discovery.py, tuning.py (two py-libp2p
behaviours tuned), identity.py (the node's key and its two names).

Importing this package first reattaches py-libp2p's logger to the root logger: at import,
libp2p sets its `libp2p` logger to propagate=False with no handlers (`libp2p/utils/logging.py`
`setup_logging`), so its warnings would bypass villaged's logging setup and go to Python's
last-resort stderr handler as bare lines (notes/py-libp2p.md §8). Every module of the package
imports libp2p after this runs, whatever order a process (or a test run) imports things in.
"""

from __future__ import annotations

import logging

import libp2p  # noqa: F401, I001  (runs libp2p's setup_logging, which the next line undoes)

logging.getLogger("libp2p").propagate = True

from villaged.transport.config import TransportConfig  # noqa: E402
from villaged.transport.counters import TransportStats  # noqa: E402
from villaged.transport.host import open_node, run_node  # noqa: E402
from villaged.transport.identity import (  # noqa: E402
    load_or_create_identity,
    member_id,
    member_id_from_peer_id,
    peer_id_from_member_id,
    signing_key,
)
from villaged.transport.node import Node  # noqa: E402

__all__ = [
    "Node",
    "TransportConfig",
    "TransportStats",
    "load_or_create_identity",
    "member_id",
    "member_id_from_peer_id",
    "open_node",
    "peer_id_from_member_id",
    "run_node",
    "signing_key",
]
