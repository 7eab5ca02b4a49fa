"""Tests for netsim/harness.py: the in-memory round harness behind `netsim bench core` (the protocol tests use its spy)."""

from __future__ import annotations

import itertools

import numpy as np

from netsim.harness import DROPOUT_PHASES, member_keys, random_inputs, simulate_round, summarize
from protocol import crypto
from protocol.params import RoundParams
from protocol.wire import RoundContext

PARAMS = RoundParams(dimension=16, bits=32, neighbours=4, threshold=3, min_survivors=3, phase_timeout=2.0)


def test_honest_round_is_exact_and_accounts_for_everyone() -> None:
    outcome = simulate_round(PARAMS, 8)
    assert outcome.abort is None and outcome.result is not None
    assert outcome.exact
    assert outcome.expected is not None and outcome.expected.dtype == np.uint32
    assert len(outcome.result.survivors) == 8 and outcome.result.dropped == ()
    assert len(outcome.client_bytes) == 8 and min(outcome.client_bytes) > 0
    assert set(outcome.client_cpu) == {"advertise", "share", "masked", "consistency", "unmask"}


def test_same_seed_same_outcome_different_seed_different_inputs() -> None:
    a, b, c = simulate_round(PARAMS, 6, seed=b"s"), simulate_round(PARAMS, 6, seed=b"s"), simulate_round(PARAMS, 6, seed=b"t")
    assert a.result is not None and b.result is not None and c.result is not None
    assert np.array_equal(a.result.aggregate, b.result.aggregate)
    assert not np.array_equal(a.result.aggregate, c.result.aggregate)


def test_dropped_clients_send_nothing_from_their_phase_on() -> None:
    for phase in DROPOUT_PHASES:
        outcome = simulate_round(PARAMS, 8, dropouts={2: phase})
        assert len(outcome.client_bytes) == 7  # the dead client is not counted
        assert outcome.result is not None and outcome.exact


def test_phase_timer_advances_virtual_time_only_when_someone_is_silent() -> None:
    ticks = itertools.count()
    outcome = simulate_round(PARAMS, 8, dropouts={1: "share"}, clock=lambda: float(next(ticks)))
    assert outcome.result is not None
    seconds = outcome.result.phase_seconds
    # the share phase waited for the silent client's timer; the others closed when everyone answered
    assert seconds["share"] == PARAMS.phase_timeout
    assert seconds["advertise"] == 0.0 and seconds["masked"] == 0.0


def test_explicit_inputs_and_context_are_used() -> None:
    ids = [crypto.member_id_of(k) for k in member_keys(5, b"netsim")]
    inputs = {m: np.full(16, i, dtype=np.uint32) for i, m in enumerate(ids)}
    outcome = simulate_round(PARAMS, 5, inputs=inputs, context=RoundContext("j", 9, 2))
    assert outcome.result is not None
    assert outcome.result.context == RoundContext("j", 9, 2)
    assert np.array_equal(outcome.result.aggregate, np.full(16, sum(range(5)), dtype=np.uint32))


def test_random_inputs_respect_the_modulus() -> None:
    ids = [crypto.member_id_of(k) for k in member_keys(3, b"netsim")]
    for bits in (1, 8, 32):
        for vector in random_inputs(ids, 64, bits, b"x").values():
            assert vector.dtype == np.uint32 and int(vector.max()) < 1 << bits


def test_summarize_reports_every_phase() -> None:
    summary = summarize(simulate_round(PARAMS, 6))
    assert set(summary["client_cpu_ms"]) == {"advertise", "share", "masked", "consistency", "unmask"}  # type: ignore[arg-type]
    assert summary["client_bytes_sent"]["max"] > 0  # type: ignore[index]
