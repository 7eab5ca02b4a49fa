"""Issue #15 item 6 against real daemons: a member (even an elected coordinator) cannot plant a
result for a round that has not run, over the push stream or the fetch stream. Each forgery is
signed with a real member's key and sent to a real daemon, which refuses it naming the reason,
counts it, keeps its stored result and keeps serving."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from protocol.announcements import ResultAnnouncement, aggregate_digest, open_announcement, sign_announcement
from protocol.election import coordinator_for
from protocol.evidence import votes_digest
from tests.villaged.village import running_village, village_configs, wait_for
from villaged.daemon import Daemon
from villaged.errors import RemoteRefusal
from villaged.results import RESULT_PUSH_PROTOCOL

pytestmark = pytest.mark.slow

# Round 0 runs; rounds 1 and 2 open 10 and 20 minutes later, long after the test.
SPEC = {
    "kind": "vector", "data": "stats", "dimension": 8, "rounds": 3, "round_interval": 600.0, "start_delay": 4.0,
    "min_participants": 3, "neighbours": 4, "phase_timeout": 3.0,
    "quantization": {"clip": 1000.0, "scale": 100.0, "rounding": "nearest"},
}


def refusals(daemon: Daemon) -> float:
    return (daemon.metrics.malformed_messages.labels(kind="result")._value.get()
            + daemon.metrics.failed_authentications._value.get())


async def test_forged_results_are_refused_on_push_and_fetch_and_the_stored_one_stays(tmp_path: Path) -> None:
    async with running_village(village_configs(tmp_path, 4)) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
        job_id = (await daemons[0].create_job(SPEC))["id"]

        async def round_zero_everywhere() -> bool:
            return all(d.store.get_result(job_id, 0) is not None for d in daemons)

        await wait_for(round_zero_everywhere, timeout=60)
        roster = daemons[0].book.round_members(job_id)
        assert roster is not None
        by_id = {d.me: d for d in daemons}
        genuine = daemons[0].store.get_result(job_id, 0)
        assert genuine is not None and len(genuine.votes) >= 3
        body = open_announcement(genuine.signed_announcement).body
        assert isinstance(body, ResultAnnouncement)

        def elected(round_number: int, attempt: int = 0) -> Daemon:
            return by_id[coordinator_for(job_id, round_number, attempt, roster)]

        def target_for(sender: Daemon) -> Daemon:
            return next(d for d in daemons if d is not sender)

        async def push(sender: Daemon, forged: ResultAnnouncement, words: bytes, votes: tuple[bytes, ...],
                       reason: str) -> None:
            forged = replace(forged, aggregate_digest=aggregate_digest(words), votes_digest=votes_digest(votes))
            record = sign_announcement(forged, sender._key, sender.membership.certificate)
            target = target_for(sender)
            before = refusals(target)
            assert sender._node is not None
            with pytest.raises(RemoteRefusal, match=reason):
                await sender._node.request(target.me, RESULT_PUSH_PROTOCOL, msgpack.packb([record, words, list(votes)]),
                                           timeout=30)
            assert refusals(target) == before + 1

        # The finding: an 8 MiB "result" for round 2 of a job of 8 words that has not started, pushed
        # by the member the election names for it.
        await push(elected(2), replace(body, round=2), bytes(8 * 1024 * 1024), (), "round 2 has not opened")
        coordinator = elected(0)
        assert coordinator.me == genuine.coordinator
        # Round 0 has run, but only the genuine result carries its evidence.
        await push(coordinator, body, bytes(40), genuine.votes, "aggregate of 40 bytes, the job's 8 words are 32")
        await push(coordinator, body, genuine.aggregate, (), "has 0 votes from its holders besides the coordinator")
        own_vote = next(v for v in genuine.votes if v.find(coordinator.me) >= 0)
        await push(coordinator, body, genuine.aggregate, (own_vote,), "has 0 votes from its holders besides")
        other = next(d for d in daemons if d is not coordinator)
        await push(other, body, genuine.aggregate, genuine.votes, "is coordinated by")
        # A claim for a higher attempt, by that attempt's elected coordinator, with round 0's genuine
        # votes (they are for attempt 0), never replaces the stored result.
        await push(elected(0, 1), replace(body, attempt=1), bytes(32), genuine.votes, "is not a consistency vote for")

        # The fetch path: a lying member serves a planted round-1 result from its own store.
        liar, asker = daemons[1], daemons[2]
        planted = replace(body, round=1, aggregate_digest=aggregate_digest(bytes(32)), votes_digest=votes_digest(()))
        liar.store.put_result(replace(genuine, round=1, aggregate=bytes(32), votes=(), received_at=time.time(),
                                      signed_announcement=sign_announcement(planted, liar._key, liar.membership.certificate)))
        assert asker._results is not None
        before = refusals(asker)
        assert not await asker._results.fetch_from([liar.me], job_id, 1)
        assert asker.store.get_result(job_id, 1) is None and refusals(asker) == before + 1

        # Every node still holds the genuine round 0 and nothing else, and keeps serving: the genuine
        # result pushed again is taken (as a duplicate).
        for daemon in daemons:
            assert [r.round for r in daemon.store.get_results(job_id)] == ([0, 1] if daemon is liar else [0])
            held = daemon.store.get_result(job_id, 0)
            assert held is not None and held == replace(genuine, received_at=held.received_at)
        assert coordinator._node is not None
        reply = await coordinator._node.request(
            target_for(coordinator).me, RESULT_PUSH_PROTOCOL,
            msgpack.packb([genuine.signed_announcement, genuine.aggregate, list(genuine.votes)]), timeout=30)
        assert reply == b"ok"
