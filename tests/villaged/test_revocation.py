"""Revocation in a real village: an admitted member is revoked, the admin's list reaches every node
(gossip, and job sync for a node that was down), and each of the member's requests is then refused
naming "revoked". The list survives a restart; an older list or another admin's never replaces it.
And renewal: a running daemon takes a renewed certificate file, and warns while its own expires soon."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
import trio

from protocol.announcements import JoinAnnouncement, sign_announcement
from protocol.membership import AdminKeyPair, RevokedMember, issue_certificate, issue_revocations
from villaged.control import Conflict, InvalidRequest
from villaged.bulletin import ANNOUNCE_PROTOCOL
from villaged.daemon import Daemon
from villaged.membership import MEMBERSHIP_PROTOCOL
from villaged.errors import RemoteRefusal
from villaged.transport.identity import load_or_create_identity, member_id
from villaged.job_sync import JOB_SYNC_PROTOCOL
from villaged.results import RESULT_PROTOCOL
from villaged.rounds import ROUND_PROTOCOL
from tests.villaged.village import running_village, village_configs, wait_for

pytestmark = pytest.mark.slow


def revocations(admin: AdminKeyPair, serial: int, *members: bytes) -> bytes:
    now = int(time.time())
    revoked = [RevokedMember(m, now, "removed by the admin") for m in members]
    return issue_revocations(admin.signing_key, admin.village_id, serial, now, revoked).encode()


def serial(daemon: Daemon) -> int:
    held = daemon.registry.revocations
    return 0 if held is None else held.serial


def counter(daemon: Daemon, name: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_a_revoked_member_is_refused_everywhere_and_the_list_survives_a_restart(tmp_path: Path) -> None:
    admin = AdminKeyPair(os.urandom(32))
    configs = village_configs(tmp_path, 4, admin)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        honest, mallory = daemons[:3], daemons[3]

        async def meshed() -> bool:
            return all([len(await d.members()) == 4 for d in daemons])

        await wait_for(meshed, timeout=30)
        job = await honest[0].create_job({"kind": "vector", "data": "stats", "dimension": 2, "rounds": 1,
                                           "start_delay": 600.0, "min_participants": 3})

        # The admin revokes mallory; one member publishes the list and gossip takes it everywhere.
        answer = await honest[0].publish_revocations(revocations(admin, 1, mallory.me))
        assert answer == {"serial": 1, "revoked": [mallory.me.hex()]}

        await wait_for(lambda: holding(honest, 1), timeout=20)
        target = honest[1]
        assert not target.registry.is_member(mallory.me, time.time())
        assert mallory.me not in {bytes.fromhex(m["member_id"]) for m in await target.members()}

        # Every way in is refused, naming the revocation, and counted.
        failed_before = counter(target, "federation_failed_authentications_total")
        certificate = mallory.membership.certificate
        attempts = {
            "round frame": (ROUND_PROTOCOL, b"any frame: refused before it is parsed"),
            "job sync": (JOB_SYNC_PROTOCOL, msgpack.packb([certificate, [], 0])),
            "result fetch": (RESULT_PROTOCOL, msgpack.packb([job["id"], 0, certificate])),
            "join": (ANNOUNCE_PROTOCOL, sign_announcement(JoinAnnouncement(job["id"]), mallory._key, certificate)),
            "certificate exchange": (MEMBERSHIP_PROTOCOL, certificate),
        }
        assert mallory._node is not None
        mallory._node.add_addresses(target.me, (await target.status())["addresses"])  # type: ignore[arg-type]
        for what, (protocol_id, request) in attempts.items():
            with pytest.raises(RemoteRefusal, match="revoked"):
                await mallory._node.request(target.me, protocol_id, request, timeout=10)
        assert counter(target, "federation_failed_authentications_total") >= failed_before + len(attempts)
        assert counter(target, "federation_revoked_member_refusals_total") >= len(attempts)
        assert mallory.me not in (await target.get_job(job["id"]))["members"]

        # An older list, or another village's, never replaces the newer one.
        with pytest.raises(Conflict, match="holds revocation list 1"):
            await honest[0].publish_revocations(revocations(admin, 1))
        with pytest.raises(InvalidRequest, match="not this village's admin"):
            await honest[0].publish_revocations(revocations(AdminKeyPair(os.urandom(32)), 7))

        # Node 2 goes down; a newer list is published meanwhile (gossip cannot reach it).
        nodes[2][2].cancel()
        await trio.sleep(1.0)
        eve = os.urandom(32)
        await honest[0].publish_revocations(revocations(admin, 2, mallory.me, eve))
        await wait_for(lambda: holding(honest[:2], 2), timeout=20)

        # Back up: it holds list 1 from its store at once, and job sync brings it list 2.
        restarted = Daemon(replace(configs[2], bootstrap=(nodes[0][1].addresses[0],)))
        assert serial(restarted) == 1 and not restarted.registry.is_member(mallory.me, time.time())
        async with trio.open_nursery() as nursery:
            await nursery.start(restarted.run)
            await wait_for(lambda: holding([restarted], 2), timeout=40)
            assert restarted.registry.revocation(eve) is not None
            assert (await restarted.status())["revocation_serial"] == 2
            nursery.cancel_scope.cancel()


async def holding(daemons: list[Daemon], wanted: int) -> bool:
    """Every one of `daemons` holds revocation list `wanted`."""
    return all(serial(d) == wanted for d in daemons)


async def test_a_renewed_certificate_is_picked_up_without_a_restart_and_expiry_is_warned_about(tmp_path: Path) -> None:
    admin = AdminKeyPair(os.urandom(32))
    configs = village_configs(tmp_path, 1, admin)  # certificates of one hour: within the day of warning
    async with running_village(configs) as [(daemon, _, _)]:
        job = await daemon.create_job({"kind": "vector", "data": "stats", "dimension": 2, "rounds": 1,
                                       "start_delay": 600.0, "min_participants": 3})
        status = await daemon.status()
        assert any("expires in" in w and "reload-certificate" in w for w in status["warnings"])  # type: ignore[union-attr]

        with pytest.raises(InvalidRequest, match="older than the certificate in use"):
            admit(admin, configs[0].data_dir, lifetime=7200, issued_ago=3600)
            await daemon.reload_certificate()
        admit(admin, configs[0].data_dir, lifetime=7 * 86_400)
        answer = await daemon.reload_certificate()
        assert answer["renewed"] is True and answer["expires_at"] > time.time() + 6 * 86_400
        status = await daemon.status()
        assert status["warnings"] == [] and status["certificate_expires_at"] == answer["expires_at"]
        assert (await daemon.get_job(job["id"]))["id"] == job["id"]  # the store is the same
        assert (await daemon.reload_certificate())["renewed"] is False


def admit(admin: AdminKeyPair, data_dir: Path, lifetime: int, issued_ago: int = 0) -> None:
    """Write a certificate for the node in `data_dir`, issued `issued_ago` seconds ago."""
    now = int(time.time()) - issued_ago
    cert = issue_certificate(admin.signing_key, admin.village_id, member_id(load_or_create_identity(data_dir)), now,
                             now + lifetime)
    (data_dir / "membership.cert").write_bytes(cert.encode())
