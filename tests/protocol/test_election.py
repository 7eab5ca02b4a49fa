"""Tests for protocol/election.py: rendezvous-hash coordinator election."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import sha256
from protocol.election import coordinator_for, ranking
from protocol.errors import LocalProtocolError

PEERS = [sha256(b"peer", bytes([i])) for i in range(20)]


@settings(max_examples=50, deadline=None)
@given(members=st.permutations(PEERS), round_number=st.integers(0, 2**40), job=st.text(min_size=1, max_size=20))
def test_same_ranking_whatever_the_input_order(members: list[bytes], round_number: int, job: str) -> None:
    assert ranking(job, round_number, members) == ranking(job, round_number, PEERS)
    assert ranking(job, round_number, members + members[:3]) == ranking(job, round_number, PEERS)  # duplicates ignored
    assert sorted(ranking(job, round_number, members)) == sorted(PEERS)


def test_attempt_plus_one_names_the_next_in_the_ranking() -> None:
    ranked = ranking("job", 5, PEERS)
    for attempt in range(3 * len(PEERS)):
        assert coordinator_for("job", 5, attempt, PEERS) == ranked[attempt % len(PEERS)]
    assert len({coordinator_for("job", 5, a, PEERS) for a in range(len(PEERS))}) == len(PEERS)


@settings(max_examples=60, deadline=None)
@given(
    stay=st.sets(st.sampled_from(PEERS), min_size=2),
    extra=st.sets(st.sampled_from(PEERS)),
    round_number=st.integers(0, 1000),
    data=st.data(),
)
def test_relative_order_never_changes_when_others_join_or_leave(
    stay: set[bytes], extra: set[bytes], round_number: int, data: st.DataObject
) -> None:
    a, b = data.draw(st.lists(st.sampled_from(sorted(stay)), min_size=2, max_size=2, unique=True))
    small = ranking("job", round_number, stay)
    large = ranking("job", round_number, stay | extra)
    assert (small.index(a) < small.index(b)) == (large.index(a) < large.index(b))
    # the coordinator of attempt 0 changes only if a newcomer outranks it
    if coordinator_for("job", round_number, 0, stay | extra) in stay:
        assert coordinator_for("job", round_number, 0, stay | extra) == coordinator_for("job", round_number, 0, stay)


def test_rounds_and_jobs_change_the_ranking() -> None:
    rankings = {tuple(ranking("job", r, PEERS)) for r in range(20)}
    assert len(rankings) == 20
    assert ranking("job", 1, PEERS) != ranking("other", 1, PEERS)


def test_coordinators_spread_evenly_over_many_rounds() -> None:
    rounds = 4000
    counts = dict.fromkeys(PEERS, 0)
    for r in range(rounds):
        counts[coordinator_for("job", r, 0, PEERS)] += 1
    expected = rounds / len(PEERS)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    df = len(PEERS) - 1
    a = 2 / (9 * df)
    limit = df * (1 - a + 4.75 * math.sqrt(a)) ** 3  # p about 1e-6
    assert chi2 < limit
    assert min(counts.values()) > expected * 0.6 and max(counts.values()) < expected * 1.4


def test_no_members_or_negative_attempt_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="no eligible"):
        coordinator_for("job", 0, 0, [])
    with pytest.raises(LocalProtocolError, match="attempt"):
        coordinator_for("job", 0, -1, PEERS)
