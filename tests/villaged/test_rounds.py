"""RoundDriver in memory: real drivers, machines, JobBooks and SQLite stores, frames passed by a loopback network.

What the driver must get right beyond the machines: it records durably, before a frame leaves, the
attempt a round's input goes into; and a node restarted after that refuses every other attempt of
the round, naming the reason (issue 15: unmask-once was only in memory).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import nacl.signing
import numpy as np
import pytest
import trio

from protocol import crypto
from protocol.election import coordinator_for
from protocol.errors import InviteRefused, ProtocolError
from protocol.events import RoundResult
from protocol.jobs import JobSpec
from protocol.messages import Invite, MaskedInput
from protocol.wire import RoundContext, decode, encode
from villaged.errors import RemoteRefusal
from villaged.jobs import JobBook
from villaged.rounds import ACK, RoundDriver
from villaged.store import Store

JOB = "job-rounds"
SPEC = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": 2, "min_participants": 3,
                          "neighbours": 2, "phase_timeout": 5.0, "quantization": {"rounding": "nearest"}})
KEYS = [nacl.signing.SigningKey(crypto.sha256(b"rounds", bytes([i]))) for i in range(3)]
IDS = [bytes(k.verify_key) for k in KEYS]


class Loopback:
    """The `Network` of one driver: a request is the peer driver's `handle_frame`, a refusal a RemoteRefusal."""

    def __init__(self, me: bytes, drivers: dict[bytes, RoundDriver], log: list[tuple[bytes, bytes, bytes]]) -> None:
        self.member_id, self._drivers, self._log = me, drivers, log

    async def request(self, peer: bytes, protocol_id: str, request: bytes, *, timeout: float, max_reply: int = 0,
                      dial_retry: object = None) -> bytes:
        self._log.append((self.member_id, peer, request))
        try:
            return await self._drivers[peer].handle_frame(self.member_id, request)
        except ProtocolError as exc:
            raise RemoteRefusal(peer, str(exc)) from None


def book_for(tmp_path: Path, index: int) -> tuple[Store, JobBook]:
    store = Store.open(tmp_path / f"node{index}.db")
    book = JobBook(store, IDS[index], lambda member: member in IDS, participant_floor=3)
    if book.jobs.get(JOB) is None:
        store.put_local_input("x", [(index + 1) / 10] * 4, 1000.0)
        book.add_job(JOB, SPEC, IDS[0], time.time() - 100)
        for member in IDS:
            book.add_member(JOB, member)
        book.set_roster(JOB, tuple(sorted(IDS)))
        book.set_state(JOB, "running")
    return store, book


async def test_a_round_through_real_drivers_records_the_spent_attempt_before_the_masked_input_leaves(tmp_path: Path) -> None:
    stores, books = zip(*(book_for(tmp_path, i) for i in range(3)))
    sent: list[tuple[bytes, bytes, bytes]] = []
    results: list[RoundResult] = []
    spent_when_masked_left: list[int | None] = []

    class Watching(Loopback):
        async def request(self, peer: bytes, protocol_id: str, request: bytes, *, timeout: float, max_reply: int = 0,
                          dial_retry: object = None) -> bytes:
            reply = await super().request(peer, protocol_id, request, timeout=timeout, max_reply=max_reply, dial_retry=dial_retry)
            for frame in (request, reply):  # a client's masked input rides on the reply to the share delivery
                envelope = decode(frame) if frame != ACK else None
                if envelope is not None and isinstance(envelope.message, MaskedInput):  # it is leaving now
                    spent_when_masked_left.append(stores[IDS.index(envelope.sender)].spent_attempt(JOB, 0))
            return reply

    async def on_result(result: RoundResult) -> None:
        results.append(result)

    drivers: dict[bytes, RoundDriver] = {}
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(KEYS):
            drivers[IDS[i]] = RoundDriver(Watching(IDS[i], drivers, sent), key, books[i], nursery, on_result,
                                          no_event)
        context = RoundContext(JOB, 0, 0)
        coordinator = coordinator_for(JOB, 0, 0, sorted(IDS))
        await drivers[coordinator].coordinate(context, sorted(IDS), SPEC.round_params(3))
        with trio.fail_after(10):
            while not results:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    expected = sum(np.asarray(books[i].check_input(books[i].jobs[JOB])) for i in range(3))
    quantizer = SPEC.quantizer()
    assert np.allclose(quantizer.dequantize_sum(results[0].aggregate), expected, atol=quantizer.error_bound(3))
    assert sorted(spent_when_masked_left) == [0, 0]  # the two remote clients; the coordinator's own client is local
    assert all(store.spent_attempt(JOB, 0) == 0 for store in stores)


async def test_a_node_restarted_after_its_input_left_refuses_the_next_attempt(tmp_path: Path) -> None:
    """Its masked input went into attempt 0 (recorded, then the process died); after the restart the
    coordinator of attempt 1 invites it: refused, with the reason, although nothing is in memory."""
    elected = coordinator_for(JOB, 0, 1, sorted(IDS))
    victim = next(i for i, member in enumerate(IDS) if member != elected)
    store, book = book_for(tmp_path, victim)
    store.record_spent(JOB, 0, 0, time.time())
    store.close()
    store, book = book_for(tmp_path, victim)  # the restart: a new store and book from the same file
    invite = encode(RoundContext(JOB, 0, 1), Invite(tuple(sorted(IDS)), SPEC.round_params(3)), KEYS[IDS.index(elected)])
    async with trio.open_nursery() as nursery:
        driver = RoundDriver(Loopback(IDS[victim], {}, []), KEYS[victim], book, nursery, _no_result, no_event)
        with pytest.raises(InviteRefused) as refused:
            await driver.handle_frame(elected, invite)
        nursery.cancel_scope.cancel()
    assert refused.value.code == "round_spent" and "attempt 0" in refused.value.reason
    assert driver.tracker(JOB, 0).spent_in == 0


async def test_an_unsigned_invite_leaves_no_state(tmp_path: Path) -> None:
    """Issue 15 item 5: 50,000 rejected frames left 50,000 trackers behind."""
    _, book = book_for(tmp_path, 1)
    elected = coordinator_for(JOB, 0, 0, sorted(IDS))
    async with trio.open_nursery() as nursery:
        driver = RoundDriver(Loopback(IDS[1], {}, []), KEYS[1], book, nursery, _no_result, no_event)
        for round_number in range(200):
            frame = bytearray(encode(RoundContext(JOB, round_number, 0), Invite(tuple(sorted(IDS)), SPEC.round_params(3)),
                                     KEYS[IDS.index(elected)]))
            frame[-1] ^= 1  # break the signature
            with pytest.raises(ProtocolError):
                await driver.handle_frame(elected, bytes(frame))
        nursery.cancel_scope.cancel()
    assert driver.progress(JOB) is None  # no tracker was made for any of them


async def no_event(context: RoundContext, event: str, fields: dict[str, object]) -> None:
    pass


async def _no_result(result: RoundResult) -> None:
    raise AssertionError("no result expected")


@pytest.mark.slow
async def test_a_process_killed_right_after_its_input_left_refuses_the_next_attempt_after_its_restart(tmp_path: Path) -> None:
    """Issue 18: a real process records the spent attempt as the driver does before the masked input
    leaves, and is SIGKILLed at once (no clean shutdown, no flush of anything but the commit). Restarted
    on the same file, the node refuses attempt 1's invitation, naming attempt 0."""
    elected = coordinator_for(JOB, 0, 1, sorted(IDS))
    victim = next(i for i, member in enumerate(IDS) if member != elected)
    store, _ = book_for(tmp_path, victim)
    store.close()
    script = (
        "import os, signal, sys, time\n"
        "from villaged.store import Store\n"
        "store = Store.open(sys.argv[1])\n"
        f"store.record_spent({JOB!r}, 0, 0, time.time())\n"
        "print('sent', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"node{victim}.db")],
                          capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGKILL and died.stdout == "sent\n", died.stderr
    store, book = book_for(tmp_path, victim)  # the restart
    invite = encode(RoundContext(JOB, 0, 1), Invite(tuple(sorted(IDS)), SPEC.round_params(3)), KEYS[IDS.index(elected)])
    async with trio.open_nursery() as nursery:
        driver = RoundDriver(Loopback(IDS[victim], {}, []), KEYS[victim], book, nursery, _no_result, no_event)
        with pytest.raises(InviteRefused) as refused:
            await driver.handle_frame(elected, invite)
        nursery.cancel_scope.cancel()
    assert refused.value.code == "round_spent" and "attempt 0" in refused.value.reason


async def test_an_invite_whose_input_waits_goes_to_the_tracker_the_job_loop_took_meanwhile(tmp_path: Path) -> None:
    """A training round's input may wait for the local training; meanwhile the job loop begins the
    round and takes its tracker. The invite must reach that tracker: it replaced it once, and the
    loop then waited a whole attempt window on a machine that never heard of the invite or the result
    (back-to-back training rounds lost 4 to 6 members a round in netsim)."""
    _, book = book_for(tmp_path, 1)
    elected = coordinator_for(JOB, 0, 0, sorted(IDS))
    released = trio.Event()

    class SlowInput:  # the book, with an input that is ready only once the job loop began the round
        def __getattr__(self, name: str) -> object:
            return getattr(book, name)

        async def client_input(self, job_id: str, round_number: int) -> np.ndarray | None:
            await released.wait()
            return await book.client_input(job_id, round_number)

    invite = encode(RoundContext(JOB, 0, 0), Invite(tuple(sorted(IDS)), SPEC.round_params(3)), KEYS[IDS.index(elected)])
    async with trio.open_nursery() as nursery:
        driver = RoundDriver(Loopback(IDS[1], {}, []), KEYS[1], SlowInput(), nursery, _no_result, no_event)  # type: ignore[arg-type]
        nursery.start_soon(driver.handle_frame, elected, invite)
        await trio.sleep(0.05)
        loops = driver.tracker(JOB, 0)  # the job loop begins the round while the invite waits
        released.set()
        with trio.fail_after(5):
            while 0 not in loops.invited:
                await trio.sleep(0.01)
        assert driver.tracker(JOB, 0) is loops
        nursery.cancel_scope.cancel()
