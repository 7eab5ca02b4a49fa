"""Real daemons on loopback in one trio process: discovery, a 3-round job, results everywhere."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from protocol import messages, wire
from protocol.wire import RoundContext
from villaged.errors import RemoteRefusal, TransportError
from villaged.rounds import ROUND_PROTOCOL

from protocol.announcements import ResultAnnouncement, sign_announcement
from protocol.election import coordinator_for
from protocol.fanout import push_targets, tree_order
from protocol.jobs import JobSpec
from protocol.membership import AdminKeyPair, issue_certificate
from villaged.transport.identity import load_or_create_identity, member_id

from villaged.control import NotFound
from villaged.bulletin import ANNOUNCE_PROTOCOL, Bulletin
from villaged.daemon import Daemon
from tests.villaged.village import running_village, village_configs, wait_for

pytestmark = pytest.mark.slow

SPEC = {
    "kind": "vector", "data": "stats", "dimension": 8, "rounds": 3, "round_interval": 0.5, "start_delay": 4.0,
    "min_participants": 3, "neighbours": 4, "phase_timeout": 3.0,
    "quantization": {"clip": 1000.0, "scale": 100.0, "rounding": "nearest"},
}


async def result_count(daemon: Daemon, job_id: str) -> int:
    try:
        return len(await daemon.results(job_id))
    except NotFound:  # the job announcement has not reached this node yet
        return 0


async def wait_for_results(daemons: list[Daemon], job_id: str, rounds: int, timeout: float) -> None:
    """Until every daemon stores at least `rounds` results of the job."""

    async def stored() -> bool:
        return min([await result_count(d, job_id) for d in daemons]) >= rounds

    await wait_for(stored, timeout=timeout)


async def test_five_nodes_mesh_and_agree_on_three_rounds(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 5)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        inputs = {}
        for i, daemon in enumerate(daemons):
            inputs[i] = [float(i * 10 + j) for j in range(8)]
            await daemon.put_data("stats", inputs[i])

        async def meshed() -> bool:
            peers = [len(await d.peers()) for d in daemons]
            members = [len(await d.members()) for d in daemons]
            return min(peers) >= 2 and min(members) == 5

        await wait_for(meshed, timeout=30)
        job = await daemons[1].create_job(SPEC)

        await wait_for_results(daemons, job["id"], 3, timeout=60)
        expected = np.sum([inputs[i] for i in range(5)], axis=0)
        for daemon in daemons:
            results = await daemon.results(job["id"])
            assert [r["round"] for r in results] == [0, 1, 2]
            for result in results:
                assert len(result["participants"]) == 5
                assert np.allclose(result["values"], expected, atol=result["error_bound"])
            digests = {r["digest"] for r in results}
            assert len(digests) == 1  # the same inputs each round give the same exact aggregate
        async def all_completed() -> bool:  # a node marks the job completed just after storing the last result
            return {(await d.get_job(job["id"]))["state"] for d in daemons} == {"completed"}

        await wait_for(all_completed, timeout=10)
        # Every member can dial every other from the roster's addresses, connected when it came or not
        # (a connection the other side opened leaves no address to dial once it closes).
        for daemon in daemons:
            for other, started, _ in nodes:
                if other is not daemon:
                    assert started.addresses[0] in daemon._node.addresses_of(other.me)


async def test_next_attempt_completes_after_the_coordinator_dies(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 5)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i + j) for j in range(8)])
        spec = dict(SPEC, rounds=1, phase_timeout=2.0, start_delay=3.0)
        job = await daemons[0].create_job(spec)

        async def everyone_joined() -> bool:  # joins go to the creator, who fixes the roster from them
            return len(daemons[0].book.jobs[job["id"]].members) == 5

        await wait_for(everyone_joined, timeout=20)
        members = sorted(d.me for d in daemons)
        first = coordinator_for(job["id"], 0, 0, members)
        victim = next(i for i, d in enumerate(daemons) if d.me == first)
        survivors = [d for i, d in enumerate(daemons) if i != victim]

        async def invites_out() -> bool:  # the round is under way: kill its coordinator now
            return any(0 in s._driver.tracker(job["id"], 0).invited for s in survivors if s._driver)

        await wait_for(invites_out, timeout=20, interval=0.01)
        nodes[victim][2].cancel()

        await wait_for_results(survivors, job["id"], 1, timeout=60)
        for daemon in survivors:
            (result,) = await daemon.results(job["id"])
            assert result["attempt"] >= 1
            assert result["coordinator"] != first.hex()
            assert first.hex() not in result["participants"]


async def test_a_node_without_a_valid_certificate_cannot_join_contribute_or_publish(tmp_path: Path) -> None:
    admin = AdminKeyPair(os.urandom(32))
    configs = village_configs(tmp_path, 4, admin)
    intruder_dir = tmp_path / "intruder"
    forger = AdminKeyPair(os.urandom(32))  # signs a certificate that claims the real village
    me = member_id(load_or_create_identity(intruder_dir))
    now = int(time.time())
    forged = issue_certificate(forger.signing_key, admin.village_id, me, now - 60, now + 3600)
    (intruder_dir / "membership.cert").write_bytes(forged.encode())
    configs.append(replace(configs[0], data_dir=intruder_dir, bootstrap=()))
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        honest, intruder = daemons[:4], daemons[4]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
        job = await honest[0].create_job(dict(SPEC, rounds=1))
        # The intruder learns the job id out of band, joins it and forges a result for it.
        intruder.book.add_job(job["id"], JobSpec.from_dict(SPEC), honest[0].me, job["created_at"])
        await intruder.join_job(job["id"])
        fake = ResultAnnouncement(job["id"], 0, 0, (intruder.me,), (), b"\0" * 32, b"\0" * 32, {})
        assert intruder._node is not None
        await intruder._node.publish(intruder.membership.topic + "/results", sign_announcement(fake, intruder._key, intruder.membership.certificate))

        await wait_for_results(honest, job["id"], 1, timeout=60)
        for daemon in honest:
            (result,) = await daemon.results(job["id"])
            assert intruder.me.hex() not in result["participants"]
            assert len(result["participants"]) == 4
            assert intruder.me not in daemon.book.jobs[job["id"]].members
            assert intruder.me.hex() not in [m["member_id"] for m in await daemon.members()]
        rejected = sum(d.metrics.failed_authentications._value.get() for d in honest)
        assert rejected >= 1


async def test_jobs_and_results_survive_a_restart(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 4)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
        job = await daemons[0].create_job(dict(SPEC, rounds=2))

        await wait_for_results(daemons, job["id"], 2, timeout=60)
        before = await daemons[2].results(job["id"])
    restarted = Daemon(configs[2])
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        assert (await restarted.get_job(job["id"]))["state"] == "completed"
        assert await restarted.results(job["id"]) == before
        assert (await restarted.get_data("stats"))["payload"] == [2.0] * 8
        nursery.cancel_scope.cancel()


async def test_bad_frames_are_refused_counted_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 3)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        sender, target = daemons[0], daemons[1]

        async def admitted() -> bool:
            return min([len(await d.members()) for d in daemons]) == 3

        await wait_for(admitted, timeout=20)
        assert sender._node is not None
        valid_but_unknown = wire.encode(RoundContext("no-such-job", 0, 0), messages.Abort("x"), sender._key)
        tampered = bytearray(valid_but_unknown)
        tampered[-1] ^= 1
        bad_frames = {
            "garbage": b"\x93\x01\x02",
            "truncated": valid_but_unknown[:-7],
            "bad signature": bytes(tampered),
            "unknown job": valid_but_unknown,
            "unknown kind": msgpack.packb([b"x", b"y", b"z" * 64]),
        }
        for name, frame in bad_frames.items():
            with pytest.raises(TransportError, match="remote error"):
                await sender._node.request(target.me, ROUND_PROTOCOL, frame, timeout=5.0)
        assert target.metrics.malformed_messages.collect()  # counted per kind
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
        job = await daemons[2].create_job(dict(SPEC, rounds=1))

        await wait_for_results(daemons, job["id"], 1, timeout=60)
        total = sum(sample.value for metric in target.metrics.malformed_messages.collect() for sample in metric.samples
                    if sample.name.endswith("_total"))
        assert total >= len(bad_frames)


async def test_a_forged_frame_signature_is_an_encryption_error(tmp_path: Path) -> None:
    """An invite is checked before anything is kept for it: one whose signature was tampered with is
    refused and counted in federation_encryption_errors_total{check="signature"}, the spec's metric."""
    async with running_village(village_configs(tmp_path, 2)) as nodes:
        (sender, _, _), (target, _, _) = nodes

        async def admitted() -> bool:
            return len(await target.members()) == 2

        await wait_for(admitted, timeout=20)
        assert sender._node is not None
        params = JobSpec.from_dict(SPEC).round_params(3)
        invite = wire.encode(RoundContext("some-job", 0, 0), messages.Invite((sender.me, target.me), params), sender._key)
        forged = invite[:-1] + bytes([invite[-1] ^ 1])  # the frame ends with its Ed25519 signature
        with pytest.raises(TransportError, match="bad signature"):
            await sender._node.request(target.me, ROUND_PROTOCOL, forged, timeout=5.0)
        registry = target.metrics.registry
        assert registry.get_sample_value("federation_encryption_errors_total", {"check": "signature"}) == 1
        assert registry.get_sample_value("federation_encryption_errors_total", {"check": "sealed_share"}) == 0
        assert await target.status()  # still serving


async def test_a_node_runs_two_jobs_at_once(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 4)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
            await daemon.put_data("other", [float(10 * i)] * 4)
        first = await daemons[0].create_job(dict(SPEC, rounds=2))
        second = await daemons[3].create_job(dict(SPEC, rounds=2, data="other", dimension=4))

        async def done() -> bool:
            counts = [await result_count(d, j["id"]) for d in daemons for j in (first, second)]
            return min(counts) == 2

        await wait_for(done, timeout=90)
        (result, *_) = await daemons[1].results(second["id"])
        assert np.allclose(result["values"], [60.0] * 4, atol=result["error_bound"])


async def test_a_node_that_was_down_fetches_the_results_it_missed_from_the_peers_it_stored(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 4)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            # unchanged inputs summed without node 3 after round 0: its owner lets them be (see the next test)
            await daemon.put_data_policy("stats", {"repeat": "allow"})
            await daemon.put_data("stats", [float(i)] * 8)
        # rounds 8 s apart: node 3 is down before round 1 opens (a node that dies inside an attempt after the
        # masked inputs went out makes that round fail: no input goes into a second attempt of a round)
        job = await daemons[0].create_job(dict(SPEC, rounds=3, round_interval=8.0))

        await wait_for_results(daemons, job["id"], 1, timeout=60)
        nodes[3][2].cancel()  # node 3 goes down after round 0
        others = daemons[:3]

        # The others run rounds 1 and 2 without node 3. A peer's view of a connection to a daemon stopped in
        # this process can outlive it by seconds, so a coordinator may still invite node 3, abort that round at
        # the consistency check (its t counted node 3 as a holder) and, inputs being spent, lose the round: wait
        # for the job to end on the others, and for at least one round node 3 missed.
        async def ended() -> bool:
            return all([(await d.get_job(job["id"]))["state"] not in ("pending", "running") for d in others])

        await wait_for(ended, timeout=120)
        expected = await others[0].results(job["id"])
        assert len(expected) >= 2, [r["round"] for r in expected]
        restarted = Daemon(configs[3])  # no bootstrap peer: only the addresses its store kept from the roster
        async with trio.open_nursery() as nursery:
            await nursery.start(restarted.run)

            async def caught_up() -> bool:
                return await result_count(restarted, job["id"]) == len(expected)

            await wait_for(caught_up, timeout=60)
            got = await restarted.results(job["id"])
            assert [r["digest"] for r in got] == [r["digest"] for r in expected]
            nursery.cancel_scope.cancel()


async def test_unchanged_inputs_are_not_summed_again_without_a_member_that_dropped(tmp_path: Path) -> None:
    """Issue 15: with inputs unchanged between rounds, round 1's sum without node 3 minus round 0's sum with
    it is node 3's input, for anyone who holds both results. The others refuse to sign round 1's survivor
    set (the default policy, `repeat: same-survivors`), so round 1 releases nothing."""
    configs = village_configs(tmp_path, 4)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
        job = await daemons[0].create_job(dict(SPEC, rounds=2, round_interval=8.0, phase_timeout=2.0))  # down before round 1
        await wait_for_results(daemons, job["id"], 1, timeout=60)
        nodes[3][2].cancel()  # node 3 goes down after round 0
        others = daemons[:3]

        async def round_1_given_up() -> bool:
            states = [(await d.get_job(job["id"]))["state"] for d in others]
            return "running" not in states

        await wait_for(round_1_given_up, timeout=120)
        for daemon in others:
            assert await result_count(daemon, job["id"]) == 1  # round 0 only: no sum leaves node 3 out
            version = daemon.store.local_input_version("stats")
            assert version is not None and daemon.store.input_survivors("stats", version) is not None
        reasons = [str(r.get("abort_reason")) for d in others for r in await d.rounds(job["id"]) if r["round"] == 1]
        assert any("unchanged since it was summed with a different survivor set" in r for r in reasons), reasons


async def test_a_node_that_missed_a_jobs_gossip_learns_it_from_a_peer_and_joins(tmp_path: Path) -> None:
    # The creator announces the job once (no repeats for 10 minutes) while the fourth node is down, and
    # the node comes up after gossipsub's message cache (5 heartbeats) has dropped the announcement:
    # only job sync can tell that node about the job.
    configs = [replace(c, announce_interval=600.0) for c in village_configs(tmp_path, 4)]
    async with running_village(configs[:3]) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)
        job = await daemons[0].create_job(dict(SPEC, rounds=1, start_delay=25.0))
        await trio.sleep(8.0)
        late = Daemon(replace(configs[3], bootstrap=(nodes[0][1].addresses[0],)))
        await late.put_data("stats", [3.0] * 8)
        async with trio.open_nursery() as nursery:
            await nursery.start(late.run)
            await wait_for_results([*daemons, late], job["id"], 1, timeout=60)
            (result,) = await late.results(job["id"])
            assert np.allclose(result["values"], [0.0 + 1.0 + 2.0 + 3.0] * 8, atol=result["error_bound"])
            nursery.cancel_scope.cancel()


async def test_an_announcement_too_large_for_gossip_is_left_to_the_streams(tmp_path: Path) -> None:
    # net-300: the creator's signed roster of 274 members (78 KB) exceeded gossip's 64 KB and the
    # ValueError took down the creator's process; members get the roster over streams anyway.
    configs = village_configs(tmp_path, 2)
    async with running_village(configs) as nodes:
        creator = nodes[0][0]
        assert creator._node is not None and creator._bulletin is not None
        await creator._bulletin.publish(b"\x00" * (creator._node.max_gossip_size + 1), "roster")
        assert (await creator.status())["member_id"] == creator.me.hex()


async def test_the_roster_reaches_every_member_down_the_tree_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # net-300: the roster (83 KB) is too large for gossip, and the creator handing it to 300 members
    # itself timed out for most of them. With roster gossip and job sync both off, only the members
    # handing it on to their children in the job's tree can bring it to all nine.
    original_gossip = Bulletin.publish

    async def no_roster_gossip(self: Bulletin, record: bytes, what: str) -> None:
        if what != "roster":
            await original_gossip(self, record, what)

    async def no_job_sync(self: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(Bulletin, "publish", no_roster_gossip)
    monkeypatch.setattr("villaged.job_sync.JobSync.run", no_job_sync)
    configs = village_configs(tmp_path, 9)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        for i, daemon in enumerate(daemons):
            await daemon.put_data("stats", [float(i)] * 8)

        async def admitted() -> bool:
            return min([len(await d.members()) for d in daemons]) == 9

        await wait_for(admitted, timeout=30)
        job = await daemons[0].create_job(dict(SPEC, rounds=1))
        await wait_for_results(daemons, job["id"], 1, timeout=60)
        for daemon in daemons:
            (result,) = await daemon.results(job["id"])
            assert len(result["participants"]) == 9
            assert np.allclose(result["values"], [36.0] * 8, atol=result["error_bound"])

        assert daemons[0]._bulletin is not None
        roster = daemons[0]._bulletin.records_for(job["id"], False)[0]
        assert daemons[0]._node is not None
        members = sorted(d.me for d in daemons)
        tree_copies = push_targets(tree_order(job["id"], members), daemons[0].me, daemons[0].me, members)
        # The creator sent only the copies the tree gives it (at most 7 of 8); members sent the rest.
        assert daemons[0]._node.statistics().bytes_sent.get(ANNOUNCE_PROTOCOL, 0) // len(roster) == len(tree_copies)
        assert len(tree_copies) < 8

        # A member may hand on the creator's roster; it may not hand on anything else it did not sign.
        relay, target = daemons[2], daemons[3]
        assert relay._node is not None
        assert await relay._node.request(target.me, ANNOUNCE_PROTOCOL, roster, timeout=10) == b"ok"
        with pytest.raises(RemoteRefusal, match="only a roster"):
            await relay._node.request(target.me, ANNOUNCE_PROTOCOL, daemons[0]._bulletin.records_for(job["id"], True)[0], timeout=10)
