"""Job sync over real libp2p streams: what a peer hands on, and what a bad request gets."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import RemoteProtocolError
from villaged.errors import RemoteRefusal
from villaged.job_sync import JOB_SYNC_PROTOCOL, MAX_JOBS, JobSync, JobSyncHooks, _parse_request
from tests.villaged.nodes import network, wait_until

# The records are opaque to job sync (the daemon checks them like gossip): stand-in bytes suffice.
RECORDS = {"job-a": [b"job-a announcement", b"job-a roster"], "job-b": [b"job-b announcement"]}


def serving_hooks(accepted: list[bytes], members: set[bytes] | None = None,
                  revocations: tuple[int, bytes] | None = None) -> JobSyncHooks:
    """A node that knows job-a (roster fixed) and job-b (still pending), and every peer as a member
    (or only `members`, plus any peer that shows the certificate b"valid"); it holds `revocations`
    and adopts any list it is handed (into `accepted`)."""

    def records_for(job_id: str, with_job: bool) -> list[bytes]:
        records = RECORDS[job_id]
        return records if with_job else records[1:]

    async def accept(peer: bytes, record: bytes) -> None:
        if record == b"bad":
            raise RemoteProtocolError(peer, "job_sync", "bad record")
        accepted.append(record)

    def admit(certificate: bytes, peer: bytes) -> None:
        if certificate != b"valid":
            raise RemoteProtocolError(peer, "certificate", "not signed by the village admin")
        if members is not None:
            members.add(peer)

    def accept_revocations(peer: bytes, listed: bytes) -> bool:
        accepted.append(listed)
        return True

    return JobSyncHooks(active_jobs=lambda: {"job-a": True, "job-b": False}, roster_overdue=lambda: False,
                        records_for=records_for,
                        accept=accept, is_member=lambda peer: members is None or peer in members, admit=admit,
                        certificate=lambda: b"valid", revocations=lambda: revocations,
                        accept_revocations=accept_revocations)


def asking_hooks(known: dict[str, bool], accepted: list[bytes], certificate: bytes = b"valid",
                 revocations: tuple[int, bytes] | None = None) -> JobSyncHooks:
    hooks = serving_hooks(accepted, revocations=revocations)
    return dataclasses.replace(hooks, active_jobs=lambda: known, roster_overdue=lambda: not all(known.values()),
                               certificate=lambda: certificate)


@pytest.mark.parametrize(
    ("known", "expected"),
    [
        ({}, [b"job-a announcement", b"job-a roster", b"job-b announcement"]),
        ({"job-a": False}, [b"job-a roster", b"job-b announcement"]),
        ({"job-a": True, "job-b": False}, []),
    ],
)
async def test_a_peer_hands_on_only_what_the_asker_lacks(known: dict[str, bool], expected: list[bytes]) -> None:
    async with network(2) as (server, asker):
        asker.add_addresses(server.member_id, server.listen_addrs)
        JobSync(server, serving_hooks([]), random.Random(1))
        accepted: list[bytes] = []
        sync = JobSync(asker, asking_hooks(known, accepted), random.Random(2))
        assert await sync.sync_with(server.member_id) == len(expected)
        assert accepted == expected


async def test_a_node_whose_roster_is_overdue_asks_at_once_not_at_its_next_regular_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("villaged.job_sync.FIRST_SYNC", (1000.0, 1000.0))  # no regular sync during the test
    async with network(2) as (server, asker), trio.open_nursery() as nursery:
        asker.add_addresses(server.member_id, server.listen_addrs)
        await wait_until(lambda: server.member_id in asker.connected_peers(), 20, "connected to the server")
        JobSync(server, serving_hooks([]), random.Random(1))
        accepted: list[bytes] = []
        nursery.start_soon(JobSync(asker, asking_hooks({"job-a": False, "job-b": True}, accepted), random.Random(2)).run)
        await wait_until(lambda: b"job-a roster" in accepted, 20, "the overdue roster fetched")
        nursery.cancel_scope.cancel()


async def test_a_sync_that_fails_is_tried_again_soon_not_at_the_next_regular_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The only peer does not serve job sync at first (a connection that stopped answering looks the
    same to the asker): the asker tries again a few seconds later and learns the jobs."""
    monkeypatch.setattr("villaged.job_sync.FIRST_SYNC", (0.0, 0.0))
    monkeypatch.setattr("villaged.job_sync.SYNC_INTERVAL", 1000.0)  # the regular sync would come too late
    async with network(2) as (server, asker), trio.open_nursery() as nursery:
        asker.add_addresses(server.member_id, server.listen_addrs)
        await wait_until(lambda: server.member_id in asker.connected_peers(), 20, "connected to the server")
        accepted: list[bytes] = []
        asked: list[float] = []
        hooks = asking_hooks({}, accepted)
        hooks = dataclasses.replace(hooks, active_jobs=lambda: asked.append(trio.current_time()) or {})
        nursery.start_soon(JobSync(asker, hooks, random.Random(2)).run)
        await wait_until(lambda: bool(asked), 20, "the first sync sent")
        await trio.sleep(0.5)  # on loopback it is refused within milliseconds
        JobSync(server, serving_hooks([]), random.Random(1))
        await wait_until(lambda: len(accepted) == 3, 20, "the jobs learned on a later try")
        nursery.cancel_scope.cancel()


async def test_a_bad_request_is_refused_with_the_reason_and_the_server_keeps_serving() -> None:
    async with network(2) as (server, asker):
        asker.add_addresses(server.member_id, server.listen_addrs)
        JobSync(server, serving_hooks([]), random.Random(1))
        with pytest.raises(RemoteRefusal, match=r"\[job id, roster known\]"):
            await asker.request(server.member_id, JOB_SYNC_PROTOCOL, msgpack.packb([b"valid", [["job-a", "yes"]], 0]),
                                timeout=10)
        with pytest.raises(RemoteRefusal, match="revocation serial"):
            await asker.request(server.member_id, JOB_SYNC_PROTOCOL, msgpack.packb([b"valid", [], -1]), timeout=10)
        accepted: list[bytes] = []
        assert await JobSync(asker, asking_hooks({}, accepted), random.Random(2)).sync_with(server.member_id) == 3


@given(st.binary(max_size=256) | st.builds(msgpack.packb, st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=MAX_JOBS + 2), max_leaves=80)))
def test_any_request_parses_or_is_refused_with_a_protocol_error(request: bytes) -> None:
    try:
        certificate, known, serial = _parse_request(b"\x01" * 32, request)
    except RemoteProtocolError:
        return
    assert type(certificate) is bytes and type(serial) is int and serial >= 0
    assert all(type(job) is str and type(roster) is bool for job, roster in known.items())


async def test_an_asker_the_server_does_not_know_is_admitted_by_its_certificate() -> None:
    async with network(2) as (server, asker):
        asker.add_addresses(server.member_id, server.listen_addrs)
        members: set[bytes] = set()
        JobSync(server, serving_hooks([], members), random.Random(1))
        refused: list[bytes] = []
        assert await JobSync(asker, asking_hooks({}, refused, b"forged"), random.Random(2)).sync_with(server.member_id) is None
        assert refused == [] and members == set()
        accepted: list[bytes] = []
        assert await JobSync(asker, asking_hooks({}, accepted), random.Random(3)).sync_with(server.member_id) == 3
        assert members == {asker.member_id}


@pytest.mark.parametrize(("asker_serial", "expected"), [(0, [b"list 3"]), (2, [b"list 3"]), (3, []), (4, [])])
async def test_a_newer_revocation_list_rides_along_and_an_older_or_equal_one_is_not_sent(
    asker_serial: int, expected: list[bytes]
) -> None:
    async with network(2) as (server, asker):
        asker.add_addresses(server.member_id, server.listen_addrs)
        JobSync(server, serving_hooks([], revocations=(3, b"list 3")), random.Random(1))
        accepted: list[bytes] = []
        held = (asker_serial, f"list {asker_serial}".encode()) if asker_serial else None
        known = {"job-a": True, "job-b": False}
        assert await JobSync(asker, asking_hooks(known, accepted, revocations=held), random.Random(2)).sync_with(
            server.member_id) == len(expected)
        assert accepted == expected
