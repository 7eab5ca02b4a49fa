"""Tests for protocol/fanout.py: the result push tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import sha256
from protocol.errors import LocalProtocolError
from protocol.fanout import depth, push_targets, tree_order

PEERS = [sha256(b"peer", bytes([i])) for i in range(120)]


def spread(order: list[bytes], coordinator: bytes, survivors: set[bytes], fanout: int) -> dict[bytes, int]:
    """Who receives the result and after how many hops, following push_targets from the coordinator."""
    received = {coordinator: 0}
    frontier = [coordinator]
    while frontier:
        pusher = frontier.pop()
        targets = push_targets(order, pusher, coordinator, survivors, fanout)
        for target in targets:
            assert target not in received, "a survivor was pushed to twice"
            received[target] = received[pusher] + 1
        frontier.extend(targets)
    return received


@settings(max_examples=120, deadline=None)
@given(size=st.integers(1, 120), fanout=st.integers(1, 6), data=st.data())
def test_every_survivor_gets_exactly_one_push_whoever_dropped_and_whoever_coordinates(
    size: int, fanout: int, data: st.DataObject
) -> None:
    roster = PEERS[:size]
    order = tree_order("job", roster)
    coordinator = data.draw(st.sampled_from(roster))
    survivors = data.draw(st.sets(st.sampled_from(roster))) - {coordinator}
    received = spread(order, coordinator, survivors, fanout)
    assert set(received) == survivors | {coordinator}
    if survivors == set(roster) - {coordinator}:  # nobody dropped: within the heap's depth (+1 for the root's own subtree)
        assert max(received.values()) <= depth(size + 1, fanout) + 1


@settings(max_examples=40, deadline=None)
@given(roster=st.permutations(PEERS[:30]))
def test_every_node_computes_the_same_tree_whatever_order_it_got_the_roster_in(roster: list[bytes]) -> None:
    assert tree_order("job", roster) == tree_order("job", sorted(roster))


def test_the_tree_is_the_same_every_round_so_connections_are_reused() -> None:
    order = tree_order("job", PEERS[:20])
    survivors = set(PEERS[:20])
    edges = [{(p, t) for p in PEERS[:20] for t in push_targets(order, p, PEERS[c], survivors - {PEERS[c]})}
             for c in (0, 5)]
    # Two rounds with different coordinators share all the edges but those at the two roots.
    assert len(edges[0] & edges[1]) >= len(edges[0]) - 2 * 4 - 2


def test_a_node_outside_the_tree_or_a_leaf_pushes_to_nobody() -> None:
    order = tree_order("job", PEERS[:5])
    assert push_targets(order, PEERS[50], PEERS[0], set(PEERS[1:5])) == []
    assert push_targets(order, order[-1], order[0], set(order[1:])) == []  # heap index 5: a leaf


def test_depth_of_the_benchmark_sizes() -> None:
    assert [depth(n, 4) for n in (1, 2, 5, 6, 21, 22, 100, 300)] == [0, 1, 1, 2, 2, 3, 4, 4]


def test_fanout_below_one_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="fanout"):
        push_targets(PEERS[:3], PEERS[0], PEERS[0], set(PEERS[:3]), 0)
    with pytest.raises(LocalProtocolError, match="fanout"):
        depth(3, 0)
