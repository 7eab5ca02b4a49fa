"""Who pushes a round's result to whom: a k-ary tree over the survivors, rooted at the coordinator.

The coordinator serving every node's copy of a 400 KB aggregate itself took a minute at 100 nodes.
In the tree each node sends at most `fanout` copies, and the last survivor has it after about
log_fanout(n) hops. Every node computes the same tree from the signed result announcement, so a
node knows its children without being told; when a child cannot be reached its parent pushes to
the child's children instead, so one dead survivor does not cut off its subtree.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.crypto import sha256
from protocol.errors import LocalProtocolError

#: Copies each node sends: with 4, 100 or 300 nodes are all within 4 hops of the coordinator.
DEFAULT_FANOUT = 4


def push_order(job_id: str, round_number: int, coordinator: bytes, survivors: Iterable[bytes]) -> list[bytes]:
    """The tree in heap order: the coordinator, then the other survivors in a per-round pseudo-random
    order (so the same nodes are not always the inner, busier ones)."""
    prefix = (b"village/fanout/v1", job_id.encode(), round_number.to_bytes(8, "big"))
    others = sorted(set(survivors) - {coordinator}, key=lambda m: (sha256(*prefix, m), m))
    return [coordinator, *others]


def children(order: list[bytes], member: bytes, fanout: int = DEFAULT_FANOUT) -> list[bytes]:
    """The nodes `member` pushes to; empty for a leaf or a node outside the tree."""
    if fanout < 1:
        raise LocalProtocolError(f"fanout must be >= 1, got {fanout}")
    try:
        position = order.index(member)
    except ValueError:
        return []
    first = position * fanout + 1
    return order[first:first + fanout]


def depth(size: int, fanout: int = DEFAULT_FANOUT) -> int:
    """Hops from the root to the deepest of `size` nodes (0 for the root alone)."""
    if fanout < 1:
        raise LocalProtocolError(f"fanout must be >= 1, got {fanout}")
    hops, last = 0, 0  # `last`: heap index of the last node on level `hops`
    while last < size - 1:
        last = last * fanout + fanout
        hops += 1
    return hops
