"""Job sync over real libp2p streams: what a peer hands on, and what a bad request gets."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import RemoteProtocolError
from villaged.errors import RemoteRefusal
from villaged.job_sync import JOB_SYNC_PROTOCOL, MAX_JOBS, JobSync, _parse_request
from tests.villaged.nodes import network, wait_until


@dataclasses.dataclass(frozen=True)
class FakeVillage:
    """Job sync's two interfaces (`SyncMembership`, `JobRecords`) as plain functions a test can replace."""

    active: Callable[[], dict[str, bool]]
    overdue: Callable[[], bool]
    records: Callable[[str, bool], list[bytes]]
    accept: Callable[[bytes, bytes], Awaitable[None]]
    admit: Callable[[bytes, bytes], None]
    certificate: bytes
    revocations: Callable[[], tuple[int, bytes] | None]
    accept_revocations: Callable[[bytes, bytes], bool]

    def active_jobs(self) -> dict[str, bool]:
        return self.active()

    def roster_overdue(self) -> bool:
        return self.overdue()

    def records_for(self, job_id: str, with_job: bool) -> list[bytes]:
        return self.records(job_id, with_job)

    async def accept_synced(self, peer: bytes, record: bytes) -> None:
        await self.accept(peer, record)

    def admit_if_unknown(self, certificate: bytes, peer: bytes) -> None:
        self.admit(certificate, peer)

    def held_revocations(self) -> tuple[int, bytes] | None:
        return self.revocations()

    def accept_synced_revocations(self, peer: bytes, listed: bytes) -> bool:
        return self.accept_revocations(peer, listed)


def job_sync(node: object, village: FakeVillage, seed: int) -> JobSync:
    return JobSync(node, village, village, random.Random(seed))  # type: ignore[arg-type]

# The records are opaque to job sync (the daemon checks them like gossip): stand-in bytes suffice.
RECORDS = {"job-a": [b"job-a announcement", b"job-a roster"], "job-b": [b"job-b announcement"]}


def serving_village(accepted: list[bytes], members: set[bytes] | None = None,
                  revocations: tuple[int, bytes] | None = None) -> FakeVillage:
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
        if members is None or peer in members:
            return  # a member already (every peer, without `members`)
        if certificate != b"valid":
            raise RemoteProtocolError(peer, "certificate", "not signed by the village admin")
        members.add(peer)

    def accept_revocations(peer: bytes, listed: bytes) -> bool:
        accepted.append(listed)
        return True

    return FakeVillage(active=lambda: {"job-a": True, "job-b": False}, overdue=lambda: False, records=records_for,
                       accept=accept, admit=admit, certificate=b"valid", revocations=lambda: revocations,
                       accept_revocations=accept_revocations)


def asking_village(known: dict[str, bool], accepted: list[bytes], certificate: bytes = b"valid",
                 revocations: tuple[int, bytes] | None = None) -> FakeVillage:
    hooks = serving_village(accepted, revocations=revocations)
    return dataclasses.replace(hooks, active=lambda: known, overdue=lambda: not all(known.values()),
                               certificate=certificate)


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
        job_sync(server, serving_village([]), 1)
        accepted: list[bytes] = []
        sync = job_sync(asker, asking_village(known, accepted), 2)
        assert await sync.sync_with(server.member_id) == len(expected)
        assert accepted == expected


async def test_a_node_whose_roster_is_overdue_asks_at_once_not_at_its_next_regular_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("villaged.job_sync.FIRST_SYNC", (1000.0, 1000.0))  # no regular sync during the test
    async with network(2) as (server, asker), trio.open_nursery() as nursery:
        asker.add_addresses(server.member_id, server.listen_addrs)
        await wait_until(lambda: server.member_id in asker.connected_peers(), 20, "connected to the server")
        job_sync(server, serving_village([]), 1)
        accepted: list[bytes] = []
        nursery.start_soon(job_sync(asker, asking_village({"job-a": False, "job-b": True}, accepted), 2).run)
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
        hooks = asking_village({}, accepted)
        hooks = dataclasses.replace(hooks, active=lambda: asked.append(trio.current_time()) or {})
        nursery.start_soon(job_sync(asker, hooks, 2).run)
        await wait_until(lambda: bool(asked), 20, "the first sync sent")
        await trio.sleep(0.5)  # on loopback it is refused within milliseconds
        job_sync(server, serving_village([]), 1)
        await wait_until(lambda: len(accepted) == 3, 20, "the jobs learned on a later try")
        nursery.cancel_scope.cancel()


async def test_a_bad_request_is_refused_with_the_reason_and_the_server_keeps_serving() -> None:
    async with network(2) as (server, asker):
        asker.add_addresses(server.member_id, server.listen_addrs)
        job_sync(server, serving_village([]), 1)
        with pytest.raises(RemoteRefusal, match=r"\[job id, roster known\]"):
            await asker.request(server.member_id, JOB_SYNC_PROTOCOL, msgpack.packb([b"valid", [["job-a", "yes"]], 0]),
                                timeout=10)
        with pytest.raises(RemoteRefusal, match="revocation serial"):
            await asker.request(server.member_id, JOB_SYNC_PROTOCOL, msgpack.packb([b"valid", [], -1]), timeout=10)
        accepted: list[bytes] = []
        assert await job_sync(asker, asking_village({}, accepted), 2).sync_with(server.member_id) == 3


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
        job_sync(server, serving_village([], members), 1)
        refused: list[bytes] = []
        assert await job_sync(asker, asking_village({}, refused, b"forged"), 2).sync_with(server.member_id) is None
        assert refused == [] and members == set()
        accepted: list[bytes] = []
        assert await job_sync(asker, asking_village({}, accepted), 3).sync_with(server.member_id) == 3
        assert members == {asker.member_id}


@pytest.mark.parametrize(("asker_serial", "expected"), [(0, [b"list 3"]), (2, [b"list 3"]), (3, []), (4, [])])
async def test_a_newer_revocation_list_rides_along_and_an_older_or_equal_one_is_not_sent(
    asker_serial: int, expected: list[bytes]
) -> None:
    async with network(2) as (server, asker):
        asker.add_addresses(server.member_id, server.listen_addrs)
        job_sync(server, serving_village([], revocations=(3, b"list 3")), 1)
        accepted: list[bytes] = []
        held = (asker_serial, f"list {asker_serial}".encode()) if asker_serial else None
        known = {"job-a": True, "job-b": False}
        assert await job_sync(asker, asking_village(known, accepted, revocations=held), 2).sync_with(
            server.member_id) == len(expected)
        assert accepted == expected
