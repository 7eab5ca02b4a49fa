"""Tests for villaged/results.py: results pushed down the survivors' tree and fetched, over real libp2p nodes.

These test the distribution: the daemon's check of a result's evidence is replaced here by its
two simplest parts (the elected signer, the digest). tests/villaged/test_result_evidence.py runs
the real check against real daemons."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgpack
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from protocol.announcements import (
    ResultAnnouncement, SignedAnnouncement, aggregate_digest, open_announcement, sign_announcement,
)
from protocol.errors import AuthenticationError, RemoteProtocolError
from protocol.evidence import VerifiedResult, votes_digest
from protocol.fanout import push_targets, tree_order
from tests.villaged.nodes import network, wait_until
from villaged.errors import RemoteRefusal
from villaged.transport.identity import member_id, signing_key
from villaged.metrics import Metrics
from villaged.results import RESULT_PROTOCOL, RESULT_PUSH_PROTOCOL, ResultExchange
from villaged.transport import Node

pytestmark = pytest.mark.slow

WORDS = os.urandom(200_000)  # a 50,000-word aggregate


@dataclass
class Peer:
    """One node with its exchange and what it stored (a dict stands in for the daemon's store)."""

    node: Node
    stop: trio.CancelScope
    exchange: ResultExchange
    metrics: Metrics
    results: dict[tuple[str, int], tuple[bytes, bytes]] = field(default_factory=dict)

    @property
    def me(self) -> bytes:
        return self.node.member_id


@dataclass(frozen=True)
class FakeVillage:
    """The exchange's three interfaces (`ResultMembership`, `ResultRules`, `ResultShelf`) as plain functions."""

    member: Callable[[bytes], bool]
    admit: Callable[[bytes, bytes], None]
    claim: Callable[[ResultAnnouncement, bytes], bool]
    check: Callable[[SignedAnnouncement, bytes, tuple[bytes, ...]], VerifiedResult]
    job_roster: Callable[[str], list[bytes] | None]
    attempt_held: Callable[[str, int], int | None]
    found: Callable[[str, int], tuple[bytes, bytes, tuple[bytes, ...]] | None]
    store: Callable[[VerifiedResult, bytes], None]
    certificate: bytes = b"valid"

    def is_member(self, member: bytes) -> bool:
        return self.member(member)

    def admit_if_unknown(self, certificate: bytes, peer: bytes) -> None:
        if not self.member(peer):
            self.admit(certificate, peer)

    def roster(self, job_id: str) -> list[bytes] | None:
        return self.job_roster(job_id)

    def attempt_window(self, job_id: str) -> float:
        return 60.0

    def plausible(self, body: ResultAnnouncement, author: bytes) -> bool:
        return self.claim(body, author)

    def verify(self, signed: SignedAnnouncement, words: bytes, votes: tuple[bytes, ...]) -> VerifiedResult:
        return self.check(signed, words, votes)

    def held_attempt(self, job_id: str, round_number: int) -> int | None:
        return self.attempt_held(job_id, round_number)

    def stored(self, job_id: str, round_number: int) -> tuple[bytes, bytes, tuple[bytes, ...]] | None:
        return self.found(job_id, round_number)

    async def keep(self, result: VerifiedResult, record: bytes) -> None:
        self.store(result, record)


@asynccontextmanager
async def exchanges(
    n: int, coordinator_index: int = 0, roster_size: int | None = None, known: set[bytes] | None = None,
) -> AsyncIterator[tuple[list[Peer], object]]:
    """n nodes with result exchanges; the one at `coordinator_index` is every round's elected coordinator,
    and the first `roster_size` (default: all) form the job's roster. Every node takes every other for
    a member, or (with `known`) only those in `known`, which a node joins by showing the certificate
    b"valid". Yields the peers and a signing function for that coordinator."""
    keypairs = [create_new_key_pair() for _ in range(n)]
    coordinator = member_id(keypairs[coordinator_index])
    roster = sorted(member_id(k) for k in keypairs[:roster_size])
    scopes: list[trio.CancelScope] = []
    async with network(n, keypairs=keypairs, scopes=scopes) as nodes, trio.open_nursery() as nursery:
        await wait_until(lambda: len(nodes[0].connected_peers()) == n - 1, 20, "everyone connected to the bootstrap node")
        peers: list[Peer] = []

        def admit(certificate: bytes, peer: bytes) -> None:
            if certificate != b"valid":
                raise RemoteProtocolError(peer, "certificate", "not signed by the village admin")
            if known is not None:
                known.add(peer)

        for node, scope in zip(nodes, scopes):
            peer = Peer(node, scope, None, Metrics())  # type: ignore[arg-type]
            results = peer.results

            def store(result: VerifiedResult, record: bytes,
                      results: dict[tuple[str, int], tuple[bytes, bytes]] = results) -> None:
                results[(result.announcement.job_id, result.announcement.round)] = (record, result.aggregate)

            village = FakeVillage(
                member=lambda m: known is None or m in known,
                admit=admit,
                claim=lambda body, author: author == coordinator,
                check=signed_by(coordinator),
                job_roster=lambda job: roster,
                attempt_held=lambda job, r, results=results: (
                    open_announcement(results[(job, r)][0]).body.attempt if (job, r) in results else None),
                found=lambda job, r, results=results: (*results[(job, r)], ()) if (job, r) in results else None,
                store=store,
            )
            peer.exchange = ResultExchange(node, nursery, village, village, village, peer.metrics, node.member_id)
            peers.append(peer)

        def sign(body: ResultAnnouncement, key=signing_key(keypairs[coordinator_index])) -> bytes:  # type: ignore[no-untyped-def]
            return sign_announcement(body, key, b"certificate")

        yield peers, sign
        nursery.cancel_scope.cancel()


def signed_by(coordinator: bytes):  # type: ignore[no-untyped-def]
    """The parts of the daemon's check that need no job: the signer and the aggregate's digest."""

    def verify(signed: SignedAnnouncement, words: bytes, votes: tuple[bytes, ...]) -> VerifiedResult:
        body = signed.body
        assert isinstance(body, ResultAnnouncement)
        if signed.author != coordinator:
            raise AuthenticationError(signed.author, "result", "signed by a node that is not the round's coordinator")
        if aggregate_digest(words) != body.aggregate_digest:
            raise RemoteProtocolError(signed.author, "result", "aggregate does not match the announced digest")
        return VerifiedResult(body, signed.author, words, votes)

    return verify


def announcement(survivors: list[bytes], words: bytes = WORDS, round_number: int = 0, attempt: int = 0,
                 dropped: list[bytes] = ()) -> ResultAnnouncement:  # type: ignore[assignment]
    return ResultAnnouncement("job-1", round_number, attempt, tuple(sorted(survivors)), tuple(sorted(dropped)),
                              aggregate_digest(words), votes_digest(()), {"masked": 0.5})


def start_push(coordinator: Peer, body: ResultAnnouncement, record: bytes, words: bytes = WORDS) -> None:
    coordinator.results[(body.job_id, body.round)] = (record, words)
    coordinator.exchange.push(VerifiedResult(body, coordinator.me, words, ()), record)


async def test_the_coordinator_pushes_to_its_children_and_every_survivor_gets_the_result() -> None:
    async with exchanges(10) as (peers, sign):
        body = announcement([p.me for p in peers])
        record = sign(body)
        start_push(peers[0], body, record)
        took = await wait_until(lambda: all(("job-1", 0) in p.results for p in peers), 30, "every survivor has the result")
        print(f"10 survivors hold the 200 KB result {took:.2f} s after the push began")
        assert all(p.results[("job-1", 0)] == (record, WORDS) for p in peers)
        pushed = [p.node.statistics().bytes_sent.get(RESULT_PUSH_PROTOCOL, 0) // len(WORDS) for p in peers]
        # The coordinator sent only the copies the tree gives it (the top of the tree and its own
        # children), and there were 9 copies in all, one per survivor.
        order = tree_order("job-1", body.survivors)
        assert pushed[0] == len(push_targets(order, peers[0].me, peers[0].me, set(body.survivors))) < len(peers) - 1
        assert sum(pushed) == len(peers) - 1


async def test_a_dead_survivor_does_not_cut_off_its_subtree() -> None:
    async with exchanges(10) as (peers, sign):
        body = announcement([p.me for p in peers])
        order, survivors = tree_order("job-1", body.survivors), set(body.survivors)
        inner = next(t for t in push_targets(order, peers[0].me, peers[0].me, survivors)
                     if push_targets(order, t, peers[0].me, survivors))  # a node with nodes below it
        dead = next(p for p in peers if p.me == inner)
        dead.stop.cancel()
        await wait_until(lambda: dead.me not in peers[0].node.connected_peers(), 10, "the dead node gone")
        start_push(peers[0], body, sign(body))
        alive = [p for p in peers if p is not dead]
        await wait_until(lambda: all(("job-1", 0) in p.results for p in alive), 30, "every live survivor has the result")
        assert ("job-1", 0) not in dead.results


async def test_a_tampered_aggregate_or_a_wrong_coordinator_is_refused_and_nothing_is_stored() -> None:
    async with exchanges(3) as (peers, sign):
        body = announcement([p.me for p in peers])
        tampered = bytes([WORDS[0] ^ 1]) + WORDS[1:]
        with pytest.raises(RemoteRefusal, match="does not match the announced digest"):
            await peers[0].node.request(peers[1].me, RESULT_PUSH_PROTOCOL, msgpack.packb([sign(body), tampered, []]), timeout=10)
        forged = sign_announcement(body, signing_key(create_new_key_pair()), b"certificate")
        with pytest.raises(RemoteRefusal, match="not the round's coordinator"):
            await peers[0].node.request(peers[1].me, RESULT_PUSH_PROTOCOL, msgpack.packb([forged, WORDS, []]), timeout=10)
        with pytest.raises(RemoteRefusal, match="push is not"):
            await peers[0].node.request(peers[1].me, RESULT_PUSH_PROTOCOL, b"\xc1garbage", timeout=10)
        assert peers[1].results == {}
        assert peers[1].metrics.malformed_messages.labels(kind="result")._value.get() == 2
        assert peers[1].metrics.failed_authentications._value.get() == 1
        # The form before round evidence ([announcement, aggregate]) is refused by name.
        with pytest.raises(RemoteRefusal, match=r"push is not \[announcement, aggregate, votes\]"):
            await peers[0].node.request(peers[1].me, RESULT_PUSH_PROTOCOL, msgpack.packb([sign(body), WORDS]), timeout=10)
        # And the node keeps serving: the genuine push goes through.
        await peers[0].node.request(peers[1].me, RESULT_PUSH_PROTOCOL, msgpack.packb([sign(body), WORDS, []]), timeout=10)
        assert peers[1].results[("job-1", 0)][1] == WORDS


async def test_roster_members_left_out_of_the_round_get_the_push_and_dropped_ones_do_not() -> None:
    """The coordinator invited only half the roster (it could not reach the rest in time) and one
    invitee dropped out: every member but the dropped one receives the result down the tree."""
    async with exchanges(10) as (peers, sign):
        dropped = peers[9]
        body = announcement([p.me for p in peers[:5]], dropped=[dropped.me])
        start_push(peers[0], body, sign(body))
        await wait_until(lambda: all(("job-1", 0) in p.results for p in peers[:9]), 30, "every member but the dropped one")
        await trio.sleep(0.5)
        assert ("job-1", 0) not in dropped.results
        assert sum(p.node.statistics().bytes_sent.get(RESULT_PUSH_PROTOCOL, 0) for p in peers) // len(WORDS) == 8


async def test_a_participant_the_push_misses_fetches_from_the_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    """No push and no announcement reach it: from its unmasking shares on, it asks the coordinator
    once the push is overdue, and again later if the coordinator had no result yet."""
    monkeypatch.setattr("villaged.results._PUSH_WAIT_PER_HOP", 0.3)
    async with exchanges(3) as (peers, sign):
        body = announcement([p.me for p in peers])
        record = sign(body)
        peers[1].exchange.expect("job-1", 0, peers[0].me)
        await trio.sleep(1.0)  # the first request came before the coordinator had the result (refused)
        assert ("job-1", 0) not in peers[1].results
        peers[0].results[("job-1", 0)] = (record, WORDS)
        await wait_until(lambda: ("job-1", 0) in peers[1].results, 10, "the participant fetched the result")
        assert peers[1].results[("job-1", 0)] == (record, WORDS)
        assert peers[0].node.statistics().bytes_sent.get(RESULT_PUSH_PROTOCOL, 0) == 0


async def test_a_node_outside_the_tree_fetches_the_result_when_the_announcement_reaches_it() -> None:
    async with exchanges(5, roster_size=4) as (peers, sign):
        survivors, observer = peers[:4], peers[4]
        body = announcement([p.me for p in survivors], round_number=3)
        start_push(survivors[0], body, sign(body))
        observer.exchange.on_announcement(body, survivors[0].me)
        await wait_until(lambda: all(("job-1", 3) in p.results for p in peers), 30, "observer and survivors have it")
        assert observer.results[("job-1", 3)][1] == WORDS
        assert observer.node.statistics().bytes_sent.get(RESULT_PUSH_PROTOCOL, 0) == 0


async def test_a_missed_result_is_fetched_from_the_roster() -> None:
    async with exchanges(4) as (peers, sign):
        body = announcement([p.me for p in peers[:3]], round_number=1)
        record = sign(body)
        for holder in peers[:3]:
            holder.results[("job-1", 1)] = (record, WORDS)
        assert await peers[3].exchange.fetch_missed([p.me for p in peers], "job-1", 1)
        assert peers[3].results[("job-1", 1)] == (record, WORDS)
        assert not await peers[3].exchange.fetch_missed([p.me for p in peers], "job-1", 2)


async def test_a_holder_that_never_met_the_asker_admits_it_by_the_certificate_its_fetch_carries() -> None:
    """A node whose join never reached the creator is in no roster and known to few: its fetch shows
    its certificate. A fetch with a bad certificate, or in the old two-field form, is refused."""
    holder_and_coordinator: set[bytes] = set()
    async with exchanges(2, known=holder_and_coordinator) as (peers, sign):
        holder, asker = peers
        body = announcement([holder.me], round_number=2)
        record = sign(body)
        holder.results[("job-1", 2)] = (record, WORDS)
        with pytest.raises(RemoteRefusal, match="not signed by the village admin"):
            await asker.node.request(holder.me, RESULT_PROTOCOL, msgpack.packb(["job-1", 2, b"forged"]), timeout=10)
        with pytest.raises(RemoteRefusal, match=r"\[job id, round, certificate\]"):
            await asker.node.request(holder.me, RESULT_PROTOCOL, msgpack.packb(["job-1", 2]), timeout=10)
        assert asker.me not in holder_and_coordinator
        assert await asker.exchange.fetch_from([holder.me], "job-1", 2)
        assert asker.results[("job-1", 2)] == (record, WORDS)
        assert asker.me in holder_and_coordinator


async def test_a_result_of_an_earlier_attempt_replaces_a_later_ones_and_not_the_other_way_round() -> None:
    async with exchanges(2) as (peers, sign):
        survivors = [p.me for p in peers]
        later, earlier, latest = WORDS[:40_000], WORDS[:80_000], WORDS[:120_000]
        for attempt, words in ((1, later), (0, earlier), (2, latest)):
            record = sign(announcement(survivors, words, attempt=attempt))
            await peers[0].node.request(peers[1].me, RESULT_PUSH_PROTOCOL, msgpack.packb([record, words, []]), timeout=10)
        assert peers[1].results[("job-1", 0)][1] == earlier
