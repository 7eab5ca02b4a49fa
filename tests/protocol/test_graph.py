"""Tests for protocol/graph.py: the SecAgg+ neighbour graph every node derives on its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import sha256
from protocol.graph import NeighbourGraph
from protocol.wire import RoundContext

CTX = RoundContext("job", 1, 0).encode()


def _ids(n: int, salt: bytes = b"") -> list[bytes]:
    return [sha256(b"node", salt, i.to_bytes(4, "big")) for i in range(n)]


def _edges(graph: NeighbourGraph) -> dict[bytes, frozenset[bytes]]:
    return {m: graph.neighbours(m) for m in graph.participants}


graph_cases = st.integers(2, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, 25).map(lambda h: 2 * h), st.permutations(_ids(n)))
)


@settings(max_examples=40, deadline=None)
@given(case=graph_cases)
def test_every_node_computes_the_same_graph_whatever_the_input_order(case: tuple[int, int, list[bytes]]) -> None:
    n, k, shuffled = case
    reference = NeighbourGraph(_ids(n), k, CTX)
    other = NeighbourGraph(shuffled, k, CTX)
    assert other.participants == reference.participants == tuple(sorted(shuffled))
    assert _edges(other) == _edges(reference)
    for m in shuffled:
        assert other.holders(m) == reference.holders(m)
        assert [other.x_of(m, h) for h in other.holders(m)] == [reference.x_of(m, h) for h in reference.holders(m)]


@settings(max_examples=40, deadline=None)
@given(case=graph_cases)
def test_neighbour_relation_is_symmetric_and_irreflexive(case: tuple[int, int, list[bytes]]) -> None:
    n, k, ids = case
    graph = NeighbourGraph(ids, k, CTX)
    for u in ids:
        assert u not in graph.neighbours(u)
        for v in graph.neighbours(u):
            assert u in graph.neighbours(v)


@settings(max_examples=40, deadline=None)
@given(case=graph_cases)
def test_degree_is_exactly_k_or_n_minus_1(case: tuple[int, int, list[bytes]]) -> None:
    n, k, ids = case
    graph = NeighbourGraph(ids, k, CTX)
    expected = min(k, n - 1)
    assert graph.k == expected
    for u in ids:
        assert len(graph.neighbours(u)) == expected
        assert graph.neighbours(u) <= set(ids)


@settings(max_examples=40, deadline=None)
@given(case=graph_cases)
def test_x_of_is_never_zero_and_unique_per_owner(case: tuple[int, int, list[bytes]]) -> None:
    n, k, ids = case
    graph = NeighbourGraph(ids, k, CTX)
    for owner in ids:
        holders = graph.holders(owner)
        assert set(holders) == graph.neighbours(owner) | {owner}
        assert list(holders) == sorted(holders)
        xs = [graph.x_of(owner, h) for h in holders]
        assert 0 not in xs
        assert sorted(xs) == list(range(1, len(holders) + 1))


def test_x_of_a_non_holder_is_an_error() -> None:
    ids = _ids(10)
    graph = NeighbourGraph(ids, 2, CTX)
    stranger = next(m for m in ids if m not in graph.holders(ids[0]))
    with pytest.raises(KeyError):
        graph.x_of(ids[0], stranger)


def test_complete_graph_when_k_reaches_n_minus_1() -> None:
    ids = _ids(7)
    for k in (6, 8, 100):
        graph = NeighbourGraph(ids, k, CTX)
        for u in ids:
            assert graph.neighbours(u) == frozenset(ids) - {u}


def test_different_context_gives_a_different_permutation() -> None:
    ids = _ids(20)
    graphs = [NeighbourGraph(ids, 4, RoundContext("job", r, a).encode()) for r in range(3) for a in range(3)]
    distinct = {tuple(sorted((m, tuple(sorted(s))) for m, s in _edges(g).items())) for g in graphs}
    assert len(distinct) == len(graphs)


def test_different_participant_set_gives_a_different_permutation() -> None:
    # The PRG key covers the participant list: dropping one member reshuffles, not just removes.
    ids = _ids(21)
    full = NeighbourGraph(ids, 4, CTX)
    smaller = NeighbourGraph(ids[:-1], 4, CTX)
    changed = [m for m in ids[:-1] if smaller.neighbours(m) != full.neighbours(m) - {ids[-1]}]
    assert len(changed) > 4  # removing a node from a fixed ring would disturb at most its 4 neighbours


def test_ring_is_not_the_sorted_order() -> None:
    # The permutation is applied: with k = 2 the neighbours are not simply the sort-order adjacent ids.
    ids = sorted(_ids(30))
    graph = NeighbourGraph(ids, 2, CTX)
    adjacent = sum(graph.neighbours(ids[i]) == {ids[i - 1], ids[(i + 1) % 30]} for i in range(30))
    assert adjacent < 30


def test_two_hop_is_every_holder_of_every_secret_held() -> None:
    ids = _ids(15)
    graph = NeighbourGraph(ids, 4, CTX)
    for m in ids:
        expected = set()
        for owner in graph.holders(m):
            expected |= set(graph.holders(owner))
        assert graph.two_hop(m) == expected
        assert m in graph.two_hop(m)


def test_duplicate_participants_rejected() -> None:
    ids = _ids(4)
    with pytest.raises(ValueError, match="duplicate"):
        NeighbourGraph(ids + ids[:1], 2, CTX)
