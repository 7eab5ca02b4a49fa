"""Tests for protocol/coordinator.py: what the coordinator accepts, and that it never outputs a wrong sum."""

from __future__ import annotations

from typing import Any

import nacl.signing
import numpy as np
import pytest

from protocol import crypto, masking, shamir
from protocol.coordinator import CoordinatorPhase, CoordinatorRound
from protocol.errors import LocalProtocolError, ParameterError, RemoteProtocolError
from protocol.events import RoundAborted, Send, StartTimer
from protocol.messages import (
    AdvertiseKeys, ConsistencySignature, EncryptedShares, Invite, MaskedInput, UnmaskShares,
)
from protocol.params import RoundParams
from protocol.wire import RoundContext, decode, encode

from netsim.harness import RoundHarness

PARAMS = RoundParams(dimension=8, bits=32, neighbours=4, threshold=3, min_survivors=3, phase_timeout=5.0)
N = 8


def _snapshot(c: CoordinatorRound) -> tuple[Any, ...]:
    return (
        c.phase, sorted(c._adverts), sorted(c._shares), sorted(c._inputs), c._total.tobytes(), sorted(c._votes),
        sorted(c._unmasked_by), {w: list(p) for w, p in c._seed_points.items()},
    )


def _collecting(phase: CoordinatorPhase, stop_at: dict[int, str] | None = None) -> tuple[RoundHarness, list[bytes]]:
    """A cluster whose coordinator is collecting `phase`, with every client's answer for it in hand."""
    cluster = RoundHarness(PARAMS, N, stop_at=stop_at)
    sends = cluster.start() if phase is CoordinatorPhase.ADVERTISE else cluster.run(until=phase)
    assert cluster.coordinator.phase is phase
    return cluster, cluster.deliver(sends)


def _finish(cluster: RoundHarness, frames: list[bytes], sends: list[Send] | None = None) -> None:
    """Feed the remaining client frames and route honestly (with `sends` still to deliver) to the end;
    the sum must be exact."""
    sends = list(sends or [])
    for frame in frames:
        sends += cluster.to_coordinator(frame)
    if cluster.result is None and cluster.abort is None:
        cluster.run(sends)
    assert cluster.abort is None, cluster.abort
    assert cluster.result is not None
    result = cluster.result.result
    assert np.array_equal(result.aggregate, cluster.expected_sum(result.survivors))
    assert result.aggregate.dtype == np.uint32


def test_start_invites_every_participant_and_starts_the_timer() -> None:
    cluster = RoundHarness(PARAMS, N)
    *sends, timer = cluster.coordinator.start(0.0)
    assert timer == StartTimer("advertise", PARAMS.phase_timeout)
    assert sorted(s.to for s in sends) == sorted(cluster.ids)
    assert len({s.frame for s in sends}) == 1
    invite = decode(sends[0].frame)
    assert invite.sender == cluster.coordinator_id
    assert invite.message == Invite(tuple(sorted(cluster.ids)), PARAMS)


@pytest.mark.parametrize(
    "phase",
    [CoordinatorPhase.ADVERTISE, CoordinatorPhase.SHARE, CoordinatorPhase.MASKED, CoordinatorPhase.CONSISTENCY, CoordinatorPhase.UNMASK],
)
def test_repeated_message_rejected_and_state_unchanged(phase: CoordinatorPhase) -> None:
    cluster, frames = _collecting(phase)
    first, *rest = frames
    cluster.to_coordinator(first)
    before = _snapshot(cluster.coordinator)
    with pytest.raises(RemoteProtocolError, match="repeated"):
        cluster.coordinator.receive(first, cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, rest)


@pytest.mark.parametrize("phase", [CoordinatorPhase.ADVERTISE, CoordinatorPhase.MASKED])
def test_message_from_a_non_participant_rejected(phase: CoordinatorPhase) -> None:
    cluster, frames = _collecting(phase)
    outsider = nacl.signing.SigningKey(crypto.sha256(b"outsider"))
    genuine = decode(frames[0]).message
    before = _snapshot(cluster.coordinator)
    with pytest.raises(RemoteProtocolError, match="not a participant"):
        cluster.coordinator.receive(encode(cluster.context, genuine, outsider), cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, frames)


@pytest.mark.parametrize("words", [0, 7, 9, 16])
def test_masked_vector_of_the_wrong_length_rejected(words: int) -> None:
    cluster, frames = _collecting(CoordinatorPhase.MASKED)
    sender = decode(frames[0]).sender
    bad = encode(cluster.context, MaskedInput(bytes(4 * words)), cluster.key_of[sender])
    before = _snapshot(cluster.coordinator)
    with pytest.raises(RemoteProtocolError, match="expected 8"):
        cluster.coordinator.receive(bad, cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, frames)  # the sender's real input is still accepted afterwards


def test_masked_words_beyond_the_modulus_rejected() -> None:
    params = RoundParams(dimension=8, bits=16, neighbours=4, threshold=3, min_survivors=3, phase_timeout=5.0)
    cluster = RoundHarness(params, N)
    frames = cluster.deliver(cluster.run(until=CoordinatorPhase.MASKED))
    sender = decode(frames[0]).sender
    bad = encode(cluster.context, MaskedInput(np.full(8, 1 << 16, dtype="<u4").tobytes()), cluster.key_of[sender])
    with pytest.raises(RemoteProtocolError, match="beyond 16 bits"):
        cluster.coordinator.receive(bad, cluster.now)


def test_share_addressed_to_a_non_neighbour_rejected() -> None:
    cluster, frames = _collecting(CoordinatorPhase.SHARE)
    envelope = decode(frames[0])
    assert isinstance(envelope.message, EncryptedShares)
    neighbours = cluster.graph.neighbours(envelope.sender)
    stranger = next(m for m in cluster.ids if m != envelope.sender and m not in neighbours)
    ciphertext = envelope.message.shares[0][1]
    variants = [
        tuple(sorted([*envelope.message.shares, (stranger, ciphertext)])),  # one extra, to a non-neighbour
        tuple(sorted([*envelope.message.shares[1:], (stranger, ciphertext)])),  # one swapped for a non-neighbour
        envelope.message.shares[1:],  # one neighbour left out
    ]
    before = _snapshot(cluster.coordinator)
    for shares in variants:
        bad = encode(cluster.context, EncryptedShares(shares), cluster.key_of[envelope.sender])
        with pytest.raises(RemoteProtocolError, match="not addressed to exactly its live neighbours"):
            cluster.coordinator.receive(bad, cluster.now)
        assert _snapshot(cluster.coordinator) == before
    _finish(cluster, frames)


def test_keys_reused_across_clients_rejected() -> None:
    cluster, frames = _collecting(CoordinatorPhase.ADVERTISE)
    first, second, *rest = frames
    cluster.to_coordinator(first)
    copied = decode(first).message
    thief = decode(second).sender
    before = _snapshot(cluster.coordinator)
    with pytest.raises(RemoteProtocolError, match="repeat"):
        cluster.coordinator.receive(encode(cluster.context, copied, cluster.key_of[thief]), cluster.now)
    assert isinstance(copied, AdvertiseKeys)
    same = AdvertiseKeys(copied.channel_key, copied.channel_key, copied.seed_commitment)
    with pytest.raises(RemoteProtocolError, match="repeat"):
        cluster.coordinator.receive(encode(cluster.context, same, cluster.key_of[thief]), cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, [second, *rest])


def test_vote_over_a_different_survivor_set_rejected() -> None:
    cluster, frames = _collecting(CoordinatorPhase.CONSISTENCY)
    sender = decode(frames[0]).sender
    digest = masking.survivors_digest(cluster.context.encode(), tuple(sorted(cluster.ids))[1:])
    before = _snapshot(cluster.coordinator)
    with pytest.raises(RemoteProtocolError, match="different survivor set"):
        cluster.coordinator.receive(encode(cluster.context, ConsistencySignature(digest), cluster.key_of[sender]), cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, frames)


def test_unmask_shares_other_than_requested_rejected() -> None:
    cluster, frames = _collecting(CoordinatorPhase.UNMASK)
    envelope = decode(frames[0])
    shares = envelope.message
    assert isinstance(shares, UnmaskShares)
    key = cluster.key_of[envelope.sender]
    variants = [
        UnmaskShares(shares.seed_shares[1:], shares.key_shares),  # one missing
        UnmaskShares((), shares.seed_shares),  # seeds offered as keys: both kinds for survivors
        UnmaskShares(shares.seed_shares, shares.seed_shares[:1]),
    ]
    before = _snapshot(cluster.coordinator)
    for bad in variants:
        with pytest.raises(RemoteProtocolError, match="do not match what was requested"):
            cluster.coordinator.receive(encode(cluster.context, bad, key), cluster.now)
    too_big = UnmaskShares(((shares.seed_shares[0][0], shamir.PRIME.to_bytes(66, "big")), *shares.seed_shares[1:]), ())
    with pytest.raises(RemoteProtocolError, match="field element"):
        cluster.coordinator.receive(encode(cluster.context, too_big, key), cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, frames)


def test_message_of_the_wrong_kind_rejected_but_stragglers_ignored() -> None:
    cluster, frames = _collecting(CoordinatorPhase.MASKED)
    sender = decode(frames[0]).sender
    before = _snapshot(cluster.coordinator)
    late = [e.frame for e in cluster.sent if e.sender == sender and e.message.KIND in ("advertise", "shares")]
    assert len(late) == 2
    for frame in late:  # answers to phases that have closed: harmless
        assert cluster.coordinator.receive(frame, cluster.now) == []
    early = encode(cluster.context, ConsistencySignature(bytes(32)), cluster.key_of[sender])
    with pytest.raises(RemoteProtocolError, match="unexpected in phase masked"):
        cluster.coordinator.receive(early, cluster.now)
    assert _snapshot(cluster.coordinator) == before
    _finish(cluster, frames)


def test_sender_that_skipped_a_phase_rejected() -> None:
    cluster = RoundHarness(PARAMS, N, stop_at={0: "share"})
    frames = cluster.deliver(cluster.run(until=CoordinatorPhase.MASKED))
    skipper = cluster.ids[0]
    forged = encode(cluster.context, MaskedInput(bytes(32)), cluster.key_of[skipper])
    with pytest.raises(RemoteProtocolError, match="dropped out of an earlier phase"):
        cluster.coordinator.receive(forged, cluster.now)
    _finish(cluster, frames)


@pytest.mark.parametrize(
    "later", [RoundContext("cluster-job", 5, 0), RoundContext("cluster-job", 4, 1), RoundContext("cluster-job", 3, 0)]
)
def test_frames_of_another_round_or_attempt_rejected(later: RoundContext) -> None:
    old = RoundHarness(PARAMS, N)
    old.run()
    assert old.result is not None
    new = RoundHarness(PARAMS, N, context=later)
    sends = new.start()
    for env in old.sent:  # every kind of frame from the old round, in the new round's first phase
        before = _snapshot(new.coordinator)
        with pytest.raises(RemoteProtocolError, match="expected"):
            new.coordinator.receive(env.frame, 0.0)
        assert _snapshot(new.coordinator) == before
    new.run(sends)
    assert new.result is not None
    assert np.array_equal(new.result.result.aggregate, new.expected_sum(new.ids))


def _first_t_xs(cluster: RoundHarness, order: list[bytes], owner: bytes) -> tuple[int, ...]:
    holders = [s for s in order if s in cluster.graph.holders(owner)]
    return tuple(cluster.graph.x_of(owner, h) for h in holders[: PARAMS.threshold])


def _tamper(cluster: RoundHarness, frames: list[bytes], kind: str, owner: bytes, how: str) -> list[bytes]:
    """Re-sign one holder's UnmaskShares with a bad share of `owner` and put it first."""
    envelopes = [decode(f) for f in frames]
    victim = next(e for e in envelopes if owner in dict(getattr(e.message, f"{kind}_shares")))
    rest = [e.frame for e in envelopes if e is not victim]
    order = [victim.sender] + [e.sender for e in envelopes if e is not victim]
    shares = dict(getattr(victim.message, f"{kind}_shares"))
    y = shamir.decode_share(shares[owner])
    if how == "plus-one":  # a share that still rebuilds a 32-byte value: secret + 1
        lam = shamir.lagrange_at_zero(_first_t_xs(cluster, order, owner))[0]
        y = (y + pow(lam, -1, shamir.PRIME)) % shamir.PRIME
    else:  # a random change: the rebuilt value falls outside 32 bytes
        y = (y + (1 << 400)) % shamir.PRIME
    shares[owner] = shamir.encode_share(y)
    message = victim.message
    assert isinstance(message, UnmaskShares)
    new = (
        UnmaskShares(tuple(sorted(shares.items())), message.key_shares)
        if kind == "seed"
        else UnmaskShares(message.seed_shares, tuple(sorted(shares.items())))
    )
    return [encode(cluster.context, new, cluster.key_of[victim.sender]), *rest]


@pytest.mark.parametrize(
    ("how", "reason"), [("plus-one", "does not match its commitment"), ("random", "cannot rebuild the self-mask seed")]
)
def test_bad_seed_share_gives_a_clean_abort_never_a_wrong_sum(how: str, reason: str) -> None:
    cluster, frames = _collecting(CoordinatorPhase.UNMASK)
    owner = decode(frames[0]).sender
    for frame in _tamper(cluster, frames, "seed", owner, how):
        cluster.to_coordinator(frame)
        if cluster.abort or cluster.result:
            break
    assert cluster.result is None
    assert isinstance(cluster.abort, RoundAborted)
    assert cluster.abort.phase == "unmask"
    assert reason in cluster.abort.reason
    assert cluster.coordinator.phase is CoordinatorPhase.ABORTED


@pytest.mark.parametrize(
    ("how", "reason"), [("plus-one", "does not match its public key"), ("random", "cannot rebuild the mask key")]
)
def test_bad_key_share_gives_a_clean_abort_never_a_wrong_sum(how: str, reason: str) -> None:
    cluster, frames = _collecting(CoordinatorPhase.UNMASK, stop_at={0: "masked"})
    dropped = cluster.ids[0]
    assert cluster.coordinator._dropped_after_sharing == {dropped}
    for frame in _tamper(cluster, frames, "key", dropped, how):
        cluster.to_coordinator(frame)
        if cluster.abort or cluster.result:
            break
    assert cluster.result is None
    assert isinstance(cluster.abort, RoundAborted)
    assert reason in cluster.abort.reason


def test_abort_is_announced_to_every_participant() -> None:
    cluster = RoundHarness(PARAMS, N, stop_at={i: "advertise" for i in range(N - 2)})
    sends = cluster.deliver(cluster.start())
    for frame in sends:
        cluster.to_coordinator(frame)
    out = cluster.coordinator.timer_fired("advertise", 10.0)
    aborts = [o for o in out if isinstance(o, Send)]
    assert sorted(s.to for s in aborts) == sorted(cluster.ids)
    assert decode(aborts[0].frame).message.KIND == "abort"
    [event] = [o for o in out if isinstance(o, RoundAborted)]
    assert event.reason == "only 2 clients advertised keys, below min_survivors 3"


def test_stale_and_terminal_timers_are_ignored() -> None:
    cluster = RoundHarness(PARAMS, N)
    sends = cluster.start()
    for name in ("share", "masked", "consistency", "unmask", "done", "aborted", "bogus"):
        assert cluster.coordinator.timer_fired(name, 1.0) == []
        assert cluster.coordinator.phase is CoordinatorPhase.ADVERTISE
    cluster.run(sends)
    assert cluster.result is not None and cluster.coordinator.phase is CoordinatorPhase.DONE
    for name in ("advertise", "unmask", "done", "aborted"):  # regression: "done" raised KeyError
        assert cluster.coordinator.timer_fired(name, 1e6) == []
    aborted = RoundHarness(PARAMS, N, stop_at={i: "advertise" for i in range(N)})
    aborted.run()
    assert aborted.abort is not None
    assert aborted.coordinator.timer_fired("aborted", 1e6) == []
    assert aborted.coordinator.receive(b"anything", 1e6) == []


def test_unmask_closes_as_soon_as_every_secret_has_t_shares() -> None:
    cluster, frames = _collecting(CoordinatorPhase.UNMASK)
    fed = 0
    for frame in frames:
        cluster.to_coordinator(frame)
        fed += 1
        if cluster.result is not None:
            break
    assert cluster.result is not None
    assert fed <= len(frames)
    assert np.array_equal(cluster.result.result.aggregate, cluster.expected_sum(cluster.ids))


def test_unsafe_parameters_or_strangers_refused_at_construction() -> None:
    key = nacl.signing.SigningKey(bytes(32))
    ids = [crypto.sha256(bytes([i])) for i in range(8)]
    weak = RoundParams(dimension=8, bits=32, neighbours=4, threshold=2, min_survivors=3, phase_timeout=5.0)
    with pytest.raises(ParameterError, match="must exceed"):
        CoordinatorRound(RoundContext("j", 0, 0), key, ids, weak)
    with pytest.raises(ParameterError, match="min_survivors"):
        CoordinatorRound(RoundContext("j", 0, 0), key, ids[:4], RoundParams(8, 32, 4, 3, 5, 5.0))
    with pytest.raises(LocalProtocolError, match="not members"):
        CoordinatorRound(RoundContext("j", 0, 0), key, ids, PARAMS, is_member=lambda m: m != ids[0])


@pytest.mark.parametrize("phase", [CoordinatorPhase.ADVERTISE, CoordinatorPhase.SHARE, CoordinatorPhase.MASKED,
                                   CoordinatorPhase.CONSISTENCY, CoordinatorPhase.UNMASK])
def test_a_lost_peer_is_not_waited_for_and_the_sum_stays_exact(phase: CoordinatorPhase) -> None:
    cluster, frames = _collecting(phase)
    lost = cluster.ids[0]
    mine = [f for f in frames if decode(f).sender == lost]
    others = [f for f in frames if decode(f).sender != lost]
    sends: list[Send] = []
    for frame in others:
        sends += cluster.to_coordinator(frame)
    if phase is not CoordinatorPhase.UNMASK:  # unmask may close early anyway: every secret has t shares
        assert cluster.coordinator.phase is phase  # still waiting for the lost peer's answer
    sends += cluster.peer_lost(lost)
    assert cluster.coordinator.phase is not phase, "closed without waiting for the timeout"
    for frame in mine:  # the peer turns up after all: a straggler, ignored
        assert cluster.to_coordinator(frame) == []
    _finish(cluster, [], sends)
    assert cluster.result is not None
    assert (lost in cluster.result.result.survivors) == (phase in (CoordinatorPhase.CONSISTENCY, CoordinatorPhase.UNMASK))


def test_losing_a_stranger_or_a_peer_after_the_end_changes_nothing() -> None:
    cluster = RoundHarness(PARAMS, N)
    cluster.start()
    assert cluster.coordinator.peer_lost(crypto.sha256(b"stranger"), 0.0) == []
    cluster.run()
    assert cluster.result is not None
    assert cluster.coordinator.peer_lost(cluster.ids[0], 1.0) == []
