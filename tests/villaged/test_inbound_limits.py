"""Attacks on a real daemon by a peer with a fresh key and no certificate (issue #15 items 4 and 7b):
big round frames and result pushes are refused from their length prefix, before any of the body is
read, and counted; result fetches naming absurd rounds are refused cleanly; the daemon keeps serving."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from tests.villaged.nodes import FAST, LOOPBACK, wait_until
from tests.villaged.village import running_village, village_configs
from villaged.daemon import Daemon
from villaged.errors import RemoteRefusal
from villaged.results import RESULT_PROTOCOL, RESULT_PUSH_PROTOCOL
from villaged.rounds import ROUND_PROTOCOL
from villaged.transport import open_node

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def refusals(daemon: Daemon, protocol: str, reason: str) -> float:
    value = daemon.metrics.registry.get_sample_value("village_inbound_refused_total",
                                                     {"protocol": protocol, "reason": reason})
    return value or 0.0


async def test_a_stranger_cannot_make_a_daemon_read_big_bodies_or_choke_on_absurd_rounds(tmp_path: Path) -> None:
    async with running_village(village_configs(tmp_path, 1)) as [(daemon, started, _)]:
        async with open_node(create_new_key_pair(), LOOPBACK, started.addresses, FAST) as attacker:
            await wait_until(lambda: daemon.me in attacker.connected_peers(), 10, "the attacker connected")
            frame = b"\0" * (60 * MIB)
            for protocol_id in (ROUND_PROTOCOL, RESULT_PUSH_PROTOCOL):
                with pytest.raises(RemoteRefusal, match="serves admitted members only"):
                    await attacker.request(daemon.me, protocol_id, frame, timeout=10)
                assert refusals(daemon, protocol_id, "members only") == 1
                # The refusal came before the attacker had written its frame, and nothing of it was read.
                assert attacker.statistics().bytes_sent.get(protocol_id, 0) == 0
                assert daemon._node is not None and daemon._node.statistics().bytes_received.get(protocol_id, 0) == 0
            with pytest.raises(RemoteRefusal, match="exceeds the limit of 1024 for a peer that is not an admitted"):
                await attacker.request(daemon.me, RESULT_PROTOCOL, frame, timeout=10)
            assert refusals(daemon, RESULT_PROTOCOL, "too large") == 1

            malformed = daemon.metrics.registry.get_sample_value("federation_malformed_messages_total",
                                                                 {"kind": "result"}) or 0.0
            # msgpack carries integers up to 2^64 - 1: 2^70 can only come as a float.
            for bad_round in (float(2**70), 2**64 - 1, float("inf"), float("nan"), -1, 2**31, True, "0"):
                request = msgpack.packb(["job", bad_round, b"no certificate"])
                with pytest.raises(RemoteRefusal, match="round must be an integer in 0..2147483647"):
                    await attacker.request(daemon.me, RESULT_PROTOCOL, request, timeout=10)
            assert daemon.metrics.registry.get_sample_value("federation_malformed_messages_total",
                                                            {"kind": "result"}) == malformed + 8
            # The daemon kept serving: a well-formed fetch goes on to the certificate check.
            with pytest.raises(RemoteRefusal, match="certificate"):
                await attacker.request(daemon.me, RESULT_PROTOCOL, msgpack.packb(["job", 0, b"forged"]), timeout=10)
