"""Tests for villaged/transport/ (node, host, serving, asking) over real libp2p hosts on 127.0.0.1 (real clock).

Each test starts its own small network in this process. Timings printed with -s are the
numbers quoted in the commit messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from functools import partial

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from protocol.errors import RemoteProtocolError
from protocol.membership import AdminKeyPair, MemberRegistry, issue_certificate
from tests.villaged.nodes import FAST, LOOPBACK, network, wait_until
from villaged.errors import PeerDown, RemoteRefusal, TransportError
from villaged.transport.framing import HEADER, open_reply, read_exact, read_length
from villaged.transport.identity import member_id, peer_id_from_member_id
from villaged.transport import TransportConfig, open_node

pytestmark = pytest.mark.slow

ECHO = "/village/test/echo/1"
MIB = 1024 * 1024


async def echo(peer: bytes, request: bytes) -> bytes:
    return request[::-1]


async def test_five_nodes_mesh_through_one_bootstrap_node_and_close_fast() -> None:
    async with network(5) as nodes:
        took = await wait_until(
            lambda: all(len(node.connected_peers()) >= 2 for node in nodes), 20, "≥2 connections per node"
        )
        print(f"5 nodes: every node has ≥2 connections after {took:.2f} s; "
              f"connections {[len(n.connected_peers()) for n in nodes]}, "
              f"routing tables {[n.routing_table_size() for n in nodes]}")
        members = {node.member_id for node in nodes}
        for node in nodes:
            assert set(node.connected_peers()) <= members - {node.member_id}
            assert node.listen_addrs[0].startswith("/ip4/127.0.0.1/tcp/")
            assert node.listen_addrs[0].endswith(f"/p2p/{node.peer_id}")
        start = time.perf_counter()
    closed = time.perf_counter() - start
    print(f"5 nodes closed concurrently in {closed:.2f} s")
    assert closed < 5.0


async def test_gossip_reaches_all_nodes_and_validators_stop_delivery() -> None:
    topic = "village/test/announce"

    def no_bad(sender: bytes, data: bytes) -> bool:
        return not data.startswith(b"bad")

    async with network(5) as nodes:
        inboxes = [await node.subscribe(topic, no_bad) for node in nodes]
        await wait_until(lambda: all(len(n.connected_peers()) >= 2 for n in nodes), 20, "mesh")
        # Gossipsub grafts on its 1 s heartbeat; probe until one message reaches everyone.
        got: list[set[bytes]] = [set() for _ in nodes]

        async def collect(i: int) -> None:
            async for sender, data in inboxes[i]:
                assert sender == nodes[1].member_id
                got[i].add(data)

        async with trio.open_nursery() as nursery:
            for i in range(len(nodes)):
                nursery.start_soon(collect, i)
            start = time.perf_counter()
            with trio.move_on_after(15):
                while not any(await_all(got, data) for data in got[1]):
                    await nodes[1].publish(topic, b"probe %.2f" % (time.perf_counter() - start))
                    await trio.sleep(0.1)
            assert any(await_all(got, data) for data in got[1]), "no probe reached all nodes"
            print(f"gossip reached all 5 nodes {time.perf_counter() - start:.2f} s after meshing")
            await nodes[1].publish(topic, b"bad news")
            await nodes[1].publish(topic, b"good news")
            await wait_until(lambda: await_all(got, b"good news"), 10, "good news everywhere")
            await trio.sleep(0.5)
            assert not any(b"bad news" in g for g in got)
            with pytest.raises(ValueError, match="exceeds the limit"):
                await nodes[1].publish(topic, b"x" * (FAST.max_gossip_size + 1))
            nursery.cancel_scope.cancel()
        assert nodes[1].statistics().events["gossip_rejected"] >= 1


def await_all(got: list[set[bytes]], data: bytes) -> bool:
    return all(data in g for g in got)


async def test_request_response_round_trips_and_failures() -> None:
    release = trio.Event()

    async def boom(peer: bytes, request: bytes) -> bytes:
        raise LookupError("no such round 7")

    async def refuse(peer: bytes, request: bytes) -> bytes:
        raise RemoteProtocolError(peer, "test", "not today")

    async def silent(peer: bytes, request: bytes) -> bytes:
        await release.wait()
        return b""

    async with network(2) as (server, client):
        server.serve(ECHO, echo, max_request=10 * MIB)
        server.serve("/village/test/boom/1", boom)
        server.serve("/village/test/silent/1", silent)
        server.serve("/village/test/refuse/1", refuse)
        await wait_until(lambda: client.connected_peers() == [server.member_id], 10, "connection")

        for size in (1_000_000, 8_000_000):
            payload = os.urandom(size)
            start = time.perf_counter()
            reply = await client.request(server.member_id, ECHO, payload, timeout=10)
            print(f"request/response of {size} B each way: {1000 * (time.perf_counter() - start):.0f} ms")
            assert reply == payload[::-1]

        with pytest.raises(TransportError, match="exceeds the limit of 10485760") as oversize:
            await client.request(server.member_id, ECHO, b"x" * (11 * MIB), timeout=10)
        assert oversize.value.peer == server.member_id
        with pytest.raises(TransportError, match="remote error: no such round 7"):
            await client.request(server.member_id, "/village/test/boom/1", b"", timeout=10)
        with pytest.raises(RemoteRefusal, match="in test: not today"):
            await client.request(server.member_id, "/village/test/refuse/1", b"", timeout=10)
        start = time.perf_counter()
        with pytest.raises(TransportError, match="no reply within 0.5 s"):
            await client.request(server.member_id, "/village/test/silent/1", b"", timeout=0.5)
        assert time.perf_counter() - start < 1.5
        with pytest.raises(TransportError, match="exceeds the limit of 99"):
            await client.request(server.member_id, ECHO, b"x" * 100, timeout=10, max_reply=99)

        # The server kept serving through all of that.
        assert await client.request(server.member_id, ECHO, b"still here", timeout=10) == b"ereh llits"
        release.set()

        events = server.statistics().events
        assert events["inbound_refused"] == 1 and events["handler_error"] == 1 and events["handler_refused"] == 1
        sent = client.statistics().bytes_sent[ECHO]
        assert sent >= 9_000_000 + 10
        assert server.statistics().bytes_received[ECHO] == sent


async def test_requests_share_a_kept_stream_which_survives_the_servers_idle_close_and_error_replies() -> None:
    async def picky(peer: bytes, request: bytes) -> bytes:
        if request == b"bad":
            raise RemoteProtocolError(peer, "test", "not that")
        return request[::-1]

    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            open_node(create_new_key_pair(), LOOPBACK, [], replace(FAST, stream_idle_timeout=0.5)))
        server.serve(ECHO, picky)
        client = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, server.listen_addrs, FAST))
        await wait_until(lambda: server.member_id in client.connected_peers(), 10, "connection")

        def opened() -> int:
            return client.statistics().events["stream_opened"]

        for i in range(20):
            assert await client.request(server.member_id, ECHO, bytes([i, 1]), timeout=5) == bytes([1, i])
        assert opened() == 1
        async with trio.open_nursery() as nursery:  # concurrent requests each need a stream of their own
            for i in range(3):
                nursery.start_soon(partial(client.request, server.member_id, ECHO, b"ab", timeout=5))
        assert opened() == 3
        # The server closes kept streams idle for 0.5 s; the client would still reuse one, sees it end
        # before any reply byte, and sends the request again on a new stream.
        await trio.sleep(1.0)
        assert await client.request(server.member_id, ECHO, b"ab", timeout=5) == b"ba"
        assert opened() == 4
        # An error reply is not kept (the server may end the stream with it); the next request still works.
        with pytest.raises(RemoteRefusal, match="not that"):
            await client.request(server.member_id, ECHO, b"bad", timeout=5)
        assert await client.request(server.member_id, ECHO, b"ab", timeout=5) == b"ba"
        assert opened() == 5
        events = server.statistics().events
        assert "inbound_broken" not in events and "inbound_timeout" not in events  # idle ends are no faults


async def test_request_to_a_closed_peer_fails_fast() -> None:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, [], FAST))
        async with open_node(create_new_key_pair(), LOOPBACK, client.listen_addrs, FAST) as gone:
            gone.serve(ECHO, echo)
            gone_id = gone.member_id
            await wait_until(lambda: gone_id in client.connected_peers(), 10, "connection")
            assert await client.request(gone_id, ECHO, b"ab", timeout=5) == b"ba"
        start = time.perf_counter()
        with pytest.raises(PeerDown, match="connection refused"):
            await client.request(gone_id, ECHO, b"ab", timeout=5)
        took = time.perf_counter() - start
        print(f"request to a closed peer failed after {1000 * took:.0f} ms")
        assert took < 2.0
        with pytest.raises(TransportError, match="no known address"):
            await client.request(b"\x05" * 32, ECHO, b"ab", timeout=5)


#: A node in its own process whose handler SIGKILLs that process: a peer dying mid-request.
_DYING_PEER = """
import os, signal, sys, trio
from libp2p.crypto.ed25519 import create_new_key_pair
from villaged.transport import TransportConfig, open_node

async def main():
    async with open_node(create_new_key_pair(), ["/ip4/127.0.0.1/tcp/0"], [sys.argv[1]], TransportConfig()) as node:
        async def die(peer, request):
            os.kill(os.getpid(), signal.SIGKILL)
        node.serve(sys.argv[2], die)
        print(node.member_id.hex(), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_peer_killed_mid_request_is_reported_down_at_the_next_request() -> None:
    # The swarm still lists the dead connection for a while and used to fail the next stream with "no
    # valid connections", not as a refused dial: a coordinator then waited 1-3 s more for a SIGKILLed client.
    async with open_node(create_new_key_pair(), LOOPBACK, [], FAST) as client:
        bootstrap = client.listen_addrs[0]
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _DYING_PEER, bootstrap, ECHO], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert process.stdout is not None
            line = b""
            with trio.fail_after(30):
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive_some(100)
            dying = bytes.fromhex(line.decode().strip())
            await wait_until(lambda: dying in client.connected_peers(), 10, "connection")
            with pytest.raises(TransportError, match="stream ended"):
                await client.request(dying, ECHO, b"ab", timeout=5)
            # Once it is gone (a dial an instant earlier can still reach its closing listener).
            assert await process.wait() == -signal.SIGKILL
            start = time.perf_counter()
            with pytest.raises(PeerDown, match="connection refused"):
                await client.request(dying, ECHO, b"ab", timeout=5)
            took = time.perf_counter() - start
            print(f"the request after the peer died failed as down after {1000 * took:.0f} ms")
        finally:
            process.kill()
            await process.wait()
            await process.stdout.aclose()


async def test_a_peer_that_comes_back_is_reachable_at_once_despite_the_failed_dial() -> None:
    key = create_new_key_pair()
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, [], FAST))
        async with open_node(key, LOOPBACK, client.listen_addrs, FAST) as server:
            server.serve(ECHO, echo)
            server_id, address = server.member_id, server.listen_addrs[0]
            await wait_until(lambda: server_id in client.connected_peers(), 10, "connection")
        with pytest.raises(PeerDown):  # down: the dial is refused, and the swarm blocks the peer for 60 s
            await client.request(server_id, ECHO, b"ab", timeout=5)
        port = address.split("/tcp/")[1].split("/")[0]
        async with open_node(key, [f"/ip4/127.0.0.1/tcp/{port}"], [], FAST) as back:
            back.serve(ECHO, echo)
            assert await client.request(server_id, ECHO, b"ab", timeout=5) == b"ba"


async def test_a_settled_node_that_lost_every_connection_goes_back_to_its_bootstrap_peer() -> None:
    # Settled, a node's discovery rests 600 s: losing its only connection must not leave it alone that long.
    config = replace(FAST, discovery_stable_interval=600.0)
    key = create_new_key_pair()
    scopes: list[trio.CancelScope] = []
    async with network(2, config, keypairs=[key, create_new_key_pair()], scopes=scopes) as (seed, member):
        seed_id, address = seed.member_id, seed.listen_addrs[0]
        await wait_until(lambda: member.discovery.settled and seed_id in member.connected_peers(), 30, "settled")
        scopes[0].cancel()  # the seed, its only peer, goes away
        await wait_until(lambda: not member.connected_peers(), 10, "the seed gone")
        port = address.split("/tcp/")[1].split("/")[0]
        async with open_node(key, [f"/ip4/127.0.0.1/tcp/{port}"], [], config):
            took = await wait_until(lambda: seed_id in member.connected_peers(), 15, "back with its bootstrap peer")
            print(f"reconnected {took:.1f} s after the seed came back")


async def test_a_node_whose_bootstrap_peer_was_not_up_yet_joins_it_even_when_others_dialed_it() -> None:
    # In net-100 two nodes started before their bootstrap peers listened; one was the other's bootstrap
    # peer, and with a connection each, neither dialed its own bootstrap peers again: an island of two.
    seed_key = create_new_key_pair()
    with trio.socket.socket() as probe:  # a free port for the seed, which starts last
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seed_address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_from_member_id(member_id(seed_key))}"
    async with AsyncExitStack() as stack:
        early = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, [seed_address], FAST))
        other = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, early.listen_addrs, FAST))
        await wait_until(lambda: early.member_id in other.connected_peers(), 10, "the island of two")
        seed = await stack.enter_async_context(open_node(seed_key, [f"/ip4/127.0.0.1/tcp/{port}"], [], FAST))
        took = await wait_until(lambda: seed.member_id in early.connected_peers(), 15, "the seed reached")
        print(f"the early node reached its bootstrap peer {took:.1f} s after it came up")


async def test_per_peer_concurrency_limit_and_connect_hook() -> None:
    connected: list[bytes] = []
    release = trio.Event()

    async def hold(peer: bytes, request: bytes) -> bytes:
        await release.wait()
        return b"done"

    async def on_connect(member: bytes) -> None:
        connected.append(member)

    config = TransportConfig(max_inbound_streams_per_peer=1, dial_timeout=5.0)
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            open_node(create_new_key_pair(), LOOPBACK, [], config, on_peer_connected=on_connect)
        )
        client = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, server.listen_addrs, config))
        server.serve("/village/test/hold/1", hold)
        await wait_until(lambda: connected == [client.member_id], 10, "connect hook")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(client.request, server.member_id, "/village/test/hold/1", b"", timeout=10))
            await wait_until(lambda: server.statistics().bytes_received, 5, "first request in")
            with pytest.raises(TransportError, match="too many concurrent streams"):
                await client.request(server.member_id, "/village/test/hold/1", b"", timeout=5)
            release.set()
        assert server.statistics().events["inbound_refused"] == 1


async def test_a_non_member_is_refused_from_the_length_prefix_and_the_inbound_budget_bounds_members() -> None:
    """The attack of issue #15 item 4: a fresh key with no certificate announces 60 MiB bodies. The
    server refuses from the 4-byte length prefix alone (nothing of the body needs to arrive), names
    the reason, counts it, and keeps serving; admitted members get the full limit, bounded together
    by the node's inbound budget."""
    admin = AdminKeyPair(os.urandom(32))
    registry = MemberRegistry(admin.public_key, admin.village_id)
    member_key, stranger_key = create_new_key_pair(), create_new_key_pair()
    now = int(time.time())
    registry.admit(issue_certificate(admin.signing_key, admin.village_id, member_id(member_key), now - 60,
                                     now + 3600).encode(), now)
    release = trio.Event()

    async def hold(peer: bytes, request: bytes) -> bytes:
        await release.wait()
        return b"held %d" % len(request)

    config = replace(FAST, max_inbound_bytes=3 * MIB)
    members_only, open_to_all = "/village/test/members/1", "/village/test/open/1"
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(open_node(create_new_key_pair(), LOOPBACK, [], config,
                                                           membership=registry))
        server.serve(members_only, echo)
        server.serve(open_to_all, echo, max_request=64 * MIB, max_request_nonmember=1024)
        server.serve("/village/test/hold/1", hold)
        stranger = await stack.enter_async_context(open_node(stranger_key, LOOPBACK, server.listen_addrs, config))
        member = await stack.enter_async_context(open_node(member_key, LOOPBACK, server.listen_addrs, config))
        await wait_until(lambda: {stranger.member_id, member.member_id} <= set(server.connected_peers()), 10, "both in")

        # Only the length prefix is ever sent: the refusal cannot have waited for the body.
        stream = await stranger._requester.open_stream(server.member_id, members_only, None)
        await stream.write(HEADER.pack(60 * MIB))
        with trio.fail_after(10):
            with pytest.raises(RemoteRefusal, match="serves admitted members only"):
                open_reply(await read_exact(stream, await read_length(stream, 1024, None), None), server.member_id)
        await stream.reset()

        # Through the ordinary client: the 60 MiB body is never all written, and none of it is read.
        body = b"\0" * (60 * MIB)
        with pytest.raises(RemoteRefusal, match="serves admitted members only"):
            await stranger.request(server.member_id, members_only, body, timeout=10)
        with pytest.raises(RemoteRefusal, match="exceeds the limit of 1024 for a peer that is not an admitted member"):
            await stranger.request(server.member_id, open_to_all, body, timeout=10)
        assert await stranger.request(server.member_id, open_to_all, b"small", timeout=10) == b"llams"
        assert stranger.statistics().bytes_sent.get(members_only, 0) == 0  # the writer never finished
        assert server.statistics().bytes_received.get(members_only, 0) == 0
        assert server.statistics().events["inbound_refused"] == 3

        # A member may send big requests, up to the inbound budget of the whole node at once.
        assert await member.request(server.member_id, members_only, b"m" * (2 * MIB), timeout=10) == b"m" * (2 * MIB)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(member.request, server.member_id, "/village/test/hold/1", b"a" * (2 * MIB),
                                       timeout=10))
            await wait_until(lambda: server.statistics().bytes_received.get("/village/test/hold/1"), 10, "first in")
            with pytest.raises(RemoteRefusal, match="inbound budget is 3145728"):
                await member.request(server.member_id, "/village/test/hold/1", b"b" * (2 * MIB), timeout=10)
            release.set()
        assert await member.request(server.member_id, "/village/test/hold/1", b"c" * (2 * MIB), timeout=10) == (
            b"held %d" % (2 * MIB))
        assert server.statistics().events["inbound_refused"] == 4
