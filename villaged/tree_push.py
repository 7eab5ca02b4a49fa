"""Handing one payload down a job's tree (protocol/fanout.py): a round's result, or the job's roster.

A node sends a few copies (to its children) instead of the root sending one to every member: with
300 members, the creator handing its 83 KB roster to each member itself timed out for nearly all
of them, and they learned it 5 to 105 s later through job sync. Each recipient hands the payload on
to its own children when it has accepted it; a child that cannot be reached has its children
adopted by the node that tried it, so the nodes below a dead member still get theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import structlog
import trio

from protocol.fanout import push_targets
from villaged.errors import TransportError
from villaged.transport import Node

log = structlog.get_logger("villaged.tree_push")

#: How long one copy may take to be accepted (a new connection under load included).
PUSH_TIMEOUT = 10.0


def push_down(
    node: Node, nursery: trio.Nursery, protocol: str, payload: bytes,
    order: list[bytes], root: bytes, recipients: Collection[bytes], what: str,
) -> None:
    """Send `payload` in the background to the members below this node in the tree given by `order`
    (the job's tree order) with `root` at the top; members not in `recipients` are skipped."""

    def targets_of(member: bytes) -> list[bytes]:
        return push_targets(order, member, root, recipients)

    async def push_to(targets: list[bytes]) -> None:
        async with trio.open_nursery() as children:
            for target in targets:
                children.start_soon(push_one, target)

    async def push_one(target: bytes) -> None:
        try:
            await node.request(target, protocol, payload, timeout=PUSH_TIMEOUT, max_reply=1024)  # room for a refusal
        except TransportError as exc:
            # Dead or refusing: the nodes below it would wait for a push that never comes.
            log.info("push_failed", what=what, peer=target.hex()[:16], reason=exc.reason)
            await push_to(targets_of(target))

    nursery.start_soon(push_to, targets_of(node.member_id))
