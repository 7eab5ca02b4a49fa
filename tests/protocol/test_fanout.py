"""Tests for protocol/fanout.py: the result push tree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import sha256
from protocol.errors import LocalProtocolError
from protocol.fanout import children, depth, push_order

PEERS = [sha256(b"peer", bytes([i])) for i in range(120)]


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 120), fanout=st.integers(1, 8), round_number=st.integers(0, 2**40))
def test_every_survivor_is_pushed_to_exactly_once_within_depth_hops(size: int, fanout: int, round_number: int) -> None:
    coordinator, *survivors = PEERS[:size]
    order = push_order("job", round_number, coordinator, [*survivors, coordinator])
    assert order[0] == coordinator and sorted(order) == sorted(PEERS[:size])
    received: dict[bytes, int] = {coordinator: 0}  # member -> hops from the coordinator
    frontier = [coordinator]
    while frontier:
        parent = frontier.pop()
        kids = children(order, parent, fanout)
        assert len(kids) <= fanout
        for kid in kids:
            assert kid not in received
            received[kid] = received[parent] + 1
        frontier.extend(kids)
    assert set(received) == set(order)
    assert max(received.values()) == depth(size, fanout)


@settings(max_examples=40, deadline=None)
@given(survivors=st.permutations(PEERS[1:30]), round_number=st.integers(0, 1000))
def test_every_node_computes_the_same_tree_whatever_order_it_got_the_survivors_in(
    survivors: list[bytes], round_number: int
) -> None:
    assert push_order("job", round_number, PEERS[0], survivors) == push_order("job", round_number, PEERS[0], sorted(survivors))


def test_the_order_changes_from_round_to_round() -> None:
    orders = {tuple(push_order("job", r, PEERS[0], PEERS[1:20])) for r in range(5)}
    assert len(orders) == 5


def test_a_node_outside_the_tree_pushes_to_nobody() -> None:
    order = push_order("job", 0, PEERS[0], PEERS[1:5])
    assert children(order, PEERS[50]) == []
    assert children(order, order[-1]) == []


def test_depth_of_the_benchmark_sizes() -> None:
    assert [depth(n, 4) for n in (1, 2, 5, 6, 21, 22, 100, 300)] == [0, 1, 1, 2, 2, 3, 4, 4]


def test_fanout_below_one_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="fanout"):
        children(PEERS[:3], PEERS[0], 0)
    with pytest.raises(LocalProtocolError, match="fanout"):
        depth(3, 0)
