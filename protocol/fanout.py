"""Who pushes a round's result to whom: a k-ary tree over the job's roster, fed by the coordinator.

The coordinator serving every node's copy of a 400 KB aggregate itself took a minute at 100 nodes.
In the tree each node sends a few copies, and the last recipient has it after about log_fanout(n)
hops. Every node computes the same tree from the roster and the signed result announcement, so a
node knows whom to push to without being told.

The tree is the same for every round of a job (the roster in a per-job pseudo-random order), so
from the second round on the pushes reuse the connections the first one opened: a new py-libp2p
connection costs about 58 ms of CPU against 13 ms for a request on an open one. The round's
coordinator stands in for the tree's root and also serves its own subtree. A member that is not a
recipient (villaged skips the members that dropped out of the round) is skipped: its nearest
receiving ancestor pushes to its children, so every recipient gets exactly one push.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from protocol.crypto import sha256
from protocol.errors import LocalProtocolError

#: Copies each node sends: with 4, 100 or 300 members are all within 4 or 5 hops of the root.
DEFAULT_FANOUT = 4


def tree_order(job_id: str, roster: Iterable[bytes]) -> list[bytes]:
    """The roster in the job's tree order (heap order below the root)."""
    prefix = (b"village/fanout/v1", job_id.encode())
    return sorted(set(roster), key=lambda m: (sha256(*prefix, m), m))


def push_targets(
    order: list[bytes], member: bytes, coordinator: bytes, recipients: Collection[bytes], fanout: int = DEFAULT_FANOUT
) -> list[bytes]:
    """The recipients `member` pushes the result to (empty for a leaf or a node outside the tree)."""
    if fanout < 1:
        raise LocalProtocolError(f"fanout must be >= 1, got {fanout}")
    positions = {m: i + 1 for i, m in enumerate(order)}  # heap index; 0 is the root
    if member == coordinator:
        starts = [0, positions.get(member, 0)]
    elif member in positions:
        starts = [positions[member]]
    else:
        return []
    targets: list[bytes] = []
    for start in dict.fromkeys(starts):
        pending = list(range(start * fanout + 1, start * fanout + fanout + 1))
        while pending:
            index = pending.pop(0)
            if index > len(order):
                continue
            below = order[index - 1]
            if below == coordinator:
                continue  # it pushes its own subtree
            if below in recipients:
                targets.append(below)
            else:  # skipped: adopt its children
                pending.extend(range(index * fanout + 1, index * fanout + fanout + 1))
    return targets


def depth(size: int, fanout: int = DEFAULT_FANOUT) -> int:
    """Hops from the root to the deepest of `size` heap positions (0 for the root alone)."""
    if fanout < 1:
        raise LocalProtocolError(f"fanout must be >= 1, got {fanout}")
    hops, last = 0, 0  # `last`: heap index of the last node on level `hops`
    while last < size - 1:
        last = last * fanout + fanout
        hops += 1
    return hops
