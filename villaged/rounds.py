"""Runs this node's protocol machines over the network: the I/O half of a SecAgg+ round.

Each machine from `protocol/` (a `ClientRound` per attempt this node takes part in, a
`CoordinatorRound` per attempt it coordinates) gets a `MachineRunner` that feeds it frames,
turns its `StartTimer`s into trio sleeps and its `Send`s into stream requests. Inbound frames
arrive on one request/response protocol; the frame's signer must be the peer at the other end
of the stream and a member of the village, and frames are routed by their (job, round, attempt).

The rules that span attempts are the round's attempts machine's (`protocol/attempts.py`, one per
round this node works on, held in a `RoundTracker`): which invites the client answers (checked by
`protocol/invites.py` after the invite's signature, before anything is kept for it), a later
attempt replacing an earlier one, and the one attempt per round a masked input may go into. The
driver carries out what it decides:
- Fault injection for netsim: with the environment variable VILLAGE_FAILPOINT_FILE naming a file
  that holds ROLE:PHASE (ROLE client or coordinator, PHASE a machine phase such as "masked"), the
  process SIGKILLs itself when a machine started while the file held it enters PHASE, before the
  phase's messages leave. The file is read as each machine starts, so netsim arms and disarms a
  running process by writing and removing it (a restart to arm it cost a DHT bootstrap storm).
- A round's input goes into one attempt: the store records the attempt (`RecordSpent`) before the
  masked input leaves (`SendingMaskedInput`), and every other attempt of the round is refused, after
  a restart too (the machine is built with the durable record). So no two attempts' sums (whose survivor sets may differ by one member) both hold it, and
  this node unmasks at most once per round. The survivor set an unchanged input is signed over is
  recorded before the signature leaves (`SigningSurvivors`).

A machine's answer to the peer whose frame it just received rides back on that request's reply
instead of on a stream of its own: each phase then costs one stream per client, not two. With 16
daemons sharing 2 cores, opening a stream (multistream-select in Python, in both processes) was
the larger part of every phase.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nacl.signing
import numpy as np
import structlog
import trio

from protocol import crypto
from protocol.attempts import RoundAttempts
from protocol.backoff import Backoff
from protocol.client import ClientPhase, ClientRound
from protocol.coordinator import CoordinatorRound
from protocol.errors import AuthenticationError, ProtocolError, RemoteProtocolError
from protocol.events import (
    ClientFinished, Output, RoundAborted, RoundFinished, RoundResult, Send, SendingMaskedInput, SigningSurvivors, StartTimer,
)
from protocol.invites import InviteTerms
from protocol.messages import Invite
from protocol.params import RoundParams
from protocol.wire import RoundContext, decode, peek
from villaged.errors import PeerDown, RemoteRefusal, TransportError

ROUND_PROTOCOL = "/village/round/1.0.0"
ACK = b"ok"
#: Messages a client receives; everything else goes to a coordinator.
_CLIENT_KINDS = frozenset({"invite", "keys", "delivery", "survivors", "unmask_request", "abort"})
#: A failed send is retried on this schedule (capped at a tenth of the phase timeout), unless
#: the peer refused it or is down: a client SIGKILLed mid-phase breaks the coordinator's stream, and
#: the retry's refused dial tells the coordinator to stop waiting for it. Each try dials once (the
#: transport's own dial retries are off for round frames: transport/asking.py states the bound), so a
#: dial that fails for another reason gets its retries here.
SEND_RETRY = Backoff((0.25, 0.5, 1.0, 2.0))
#: An invite may arrive before the creator's roster announcement; wait this long for it.
_ROSTER_WAIT = 5.0

log = structlog.get_logger("villaged.rounds")


class Network(Protocol):
    """What the driver needs from `villaged.transport.Node` (and from test networks)."""

    member_id: bytes

    async def request(self, peer: bytes, protocol_id: str, request: bytes, *, timeout: float, max_reply: int = ...,
                      dial_retry: Backoff | None = ...) -> bytes:
        """`dial_retry=None`: one dial per request (the driver retries the whole request itself)."""


class RoundDirectory(Protocol):
    """What the driver asks the daemon about jobs and membership."""

    def is_member(self, member: bytes) -> bool: ...

    def round_members(self, job_id: str) -> list[bytes] | None:
        """Members that joined the job (the election's candidates); None for an unknown job."""

    async def wait_for_roster(self, job_id: str, timeout: float) -> bool:
        """Wait up to `timeout` for a known job's roster; False if the job is unknown or it did not come."""

    async def client_input(self, job_id: str, round_number: int) -> np.ndarray | None:
        """This node's quantized input for the job's round, or None if it does not take part."""

    def invite_terms(self, job_id: str, round_number: int, local_attempt: int) -> InviteTerms | None:
        """What an invitation to the round must match; None until the job's roster is known."""

    def spent_attempt(self, job_id: str, round_number: int) -> int | None:
        """The attempt of the round this node's masked input went into (durable), if any."""

    def same_survivors_as(self, job_id: str) -> bytes | None:
        """The only survivor set (digest) this node's unchanged input may be summed over, if restricted."""

    async def record_spent(self, context: RoundContext) -> None:
        """Commit, before the masked input leaves, that it goes into this attempt; raise to stop it."""

    async def record_signed_survivors(self, context: RoundContext, survivors: frozenset[bytes]) -> None:
        """Commit, before the signature leaves, the survivor set this node's input is signed over."""


class RoundTracker:
    """A round's attempts machine on this node and the event the job loop waits on for its inputs."""

    def __init__(self, machine: RoundAttempts) -> None:
        self.machine = machine
        self._changed = trio.Event()

    @property
    def invited(self) -> set[int]:
        return self.machine.invited

    @property
    def spent_in(self) -> int | None:
        return self.machine.spent_in

    @property
    def result(self) -> bool:
        return self.machine.result

    @result.setter
    def result(self, stored: bool) -> None:
        if stored:
            self.machine.result_stored()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._changed.wait()


@dataclass(frozen=True, slots=True)
class RoundProgress:
    """A read-only snapshot of the round this node is working on in one job (for the control API)."""

    round: int
    attempt: int
    role: str | None  # "coordinator" or "client" when this node runs a machine for the attempt
    phase: str | None  # that machine's phase
    participants: int | None  # invited to the attempt, when this node coordinates it


class MachineRunner:
    """Feeds one machine, runs its timers, carries out its sends. Stops at its first terminal output."""

    def __init__(
        self,
        machine: ClientRound | CoordinatorRound,
        nursery: trio.Nursery,
        send: Callable[[Send, float, Callable[[bytes], Awaitable[None]]], None],
        report: Callable[[Output], Awaitable[None]],
        send_timeout: float,
        failpoint: str | None = None,
    ) -> None:
        self.machine = machine
        self._send_timeout = send_timeout
        self._failpoint = failpoint
        self._nursery = nursery
        self._send = send
        self._report = report
        self._closed = trio.Event()
        self._lock = trio.Lock()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start(self) -> None:
        self._nursery.start_soon(self._apply_later, self.machine.start(trio.current_time()))

    async def feed(self, frame: bytes, reply_to: bytes | None = None) -> bytes | None:
        """Give the machine one frame; raises `RemoteProtocolError` if it rejects it.

        If the machine answers `reply_to` with exactly one frame, that frame is returned to ride
        on the reply instead of being sent."""
        if self.closed:
            raise RemoteProtocolError(None, "route", "that attempt has ended on this node")
        async with self._lock:
            outputs = self.machine.receive(frame, trio.current_time())
            return await self._apply(outputs, reply_to)

    def close(self) -> None:
        """Abandon the machine: no more frames, no timers. Its keys die with it."""
        self._closed.set()

    async def _apply_later(self, outputs: list[Output]) -> None:
        async with self._lock:
            await self._apply(outputs)

    async def _apply(self, outputs: list[Output], reply_to: bytes | None = None) -> bytes | None:
        if self._failpoint is not None and any(isinstance(out, Send) for out in outputs):
            role = "client" if isinstance(self.machine, ClientRound) else "coordinator"
            if self._failpoint == f"{role}:{self.machine.phase.value}":
                log.warning("failpoint_hit", failpoint=self._failpoint)
                os.kill(os.getpid(), signal.SIGKILL)  # a real crash, before this phase's messages leave
        answers = [out for out in outputs if isinstance(out, Send) and out.to == reply_to]
        reply = answers[0] if reply_to is not None and len(answers) == 1 else None
        for out in outputs:
            if out is reply:
                continue
            if isinstance(out, Send):
                self._send(out, self._send_timeout, self.lost)
            elif isinstance(out, StartTimer):
                self._nursery.start_soon(self._timer, out.name, out.seconds)
            else:
                if isinstance(out, (RoundFinished, RoundAborted, ClientFinished)):
                    self.close()
                await self._report(out)
        return reply.frame if reply is not None else None

    async def lost(self, peer: bytes) -> None:
        """A send to `peer` failed for good (unreachable, or it refused): a coordinator stops waiting for it."""
        if self.closed or not isinstance(self.machine, CoordinatorRound):
            return
        async with self._lock:
            if not self.closed:
                await self._apply(self.machine.peer_lost(peer, trio.current_time()))

    async def _timer(self, name: str, seconds: float) -> None:
        """Fire `name` after `seconds` unless the machine closes first. A timer that outlived its closed
        machine kept it (keys, vectors) alive: back to back, 25 a round piled up for a phase timeout."""
        with trio.move_on_after(seconds):
            await self._closed.wait()
        if not self.closed:
            async with self._lock:
                if not self.closed:
                    await self._apply(self.machine.timer_fired(name, trio.current_time()))


class RoundDriver:
    def __init__(
        self,
        network: Network,
        signing_key: nacl.signing.SigningKey,
        directory: RoundDirectory,
        nursery: trio.Nursery,
        on_result: Callable[[RoundResult], Awaitable[None]],
        on_attempt_event: Callable[[RoundContext, str, dict[str, object]], Awaitable[None]],
        random_bytes: crypto.RandomBytes = os.urandom,
        failpoint_file: Path | None = None,
    ) -> None:
        self.me = bytes(signing_key.verify_key)
        self._failpoint_file = failpoint_file
        self._network = network
        self._key = signing_key
        self._directory = directory
        self._nursery = nursery
        self._on_result = on_result
        self._on_attempt_event = on_attempt_event
        self._random = random_bytes
        self._clients: dict[tuple[str, int], tuple[int, MachineRunner]] = {}
        self._coordinators: dict[RoundContext, MachineRunner] = {}
        self._trackers: dict[tuple[str, int], RoundTracker] = {}

    def tracker(self, job_id: str, round_number: int) -> RoundTracker:
        """The round's attempts machine, made when first asked for. Before the job's roster is known
        there is no election to make one from: a detached tracker stands in (nothing is kept)."""
        tracker = self._trackers.get((job_id, round_number))
        if tracker is None:
            tracker = self._new_tracker(job_id, round_number)
            if tracker.machine.ranking:
                self._trackers[(job_id, round_number)] = tracker
        return tracker

    def _new_tracker(self, job_id: str, round_number: int, terms: InviteTerms | None = None) -> RoundTracker:
        terms = terms or self._directory.invite_terms(job_id, round_number, 0)
        roster, spec = (terms.roster, terms.spec) if terms is not None else ((), None)
        return RoundTracker(RoundAttempts(job_id, round_number, roster, self.me, spec,  # type: ignore[arg-type]
                                          self._directory.spent_attempt(job_id, round_number)))

    def forget_round(self, job_id: str, round_number: int) -> None:
        """Drop the machines and tracker of a round that is over for this node."""
        entry = self._clients.pop((job_id, round_number), None)
        if entry:
            entry[1].close()
        for context in [c for c in self._coordinators if (c.job_id, c.round) == (job_id, round_number)]:
            self._coordinators.pop(context).close()
        self._trackers.pop((job_id, round_number), None)

    def progress(self, job_id: str) -> RoundProgress | None:
        """The latest round of ``job_id`` this node is working on, or None between rounds."""
        rounds = [r for j, r in self._trackers if j == job_id]
        if not rounds:
            return None
        round_number = max(rounds)
        attempt = self._trackers[(job_id, round_number)].machine.attempt
        client = self._clients.get((job_id, round_number))
        if client is not None and client[0] > attempt:  # invited to a later attempt than the job loop is on
            attempt = client[0]
        coordinating = self._coordinators.get(RoundContext(job_id, round_number, attempt))
        if coordinating is not None:
            machine = coordinating.machine
            assert isinstance(machine, CoordinatorRound)
            return RoundProgress(round_number, attempt, "coordinator", machine.phase.value, len(machine.participants))
        if client is not None and client[0] == attempt:
            return RoundProgress(round_number, attempt, "client", client[1].machine.phase.value, None)
        return RoundProgress(round_number, attempt, None, None, None)

    # --- inbound --------------------------------------------------------------------------------

    async def handle_frame(self, peer: bytes, frame: bytes, *, can_reply: bool = True) -> bytes:
        """The ROUND_PROTOCOL handler: route one frame; raising sends the reason back as an error reply.

        Returns ACK, or (with `can_reply`) this node's answer to `peer` when its machine has one."""
        context, kind, sender = peek(frame)
        if sender != peer:
            raise AuthenticationError(peer, kind, "frame signed by someone other than the sending peer")
        if not self._directory.is_member(peer):
            raise AuthenticationError(peer, kind, "not a member of this village")
        reply_to = peer if can_reply else None
        if kind in _CLIENT_KINDS:
            answer = await self._to_client(context, kind, sender, frame, reply_to)
        else:
            runner = self._coordinators.get(context)
            if runner is None:
                raise RemoteProtocolError(peer, kind, f"this node does not coordinate {context}")
            answer = await runner.feed(frame, reply_to)
        return answer if answer is not None else ACK

    async def _to_client(
        self, context: RoundContext, kind: str, sender: bytes, frame: bytes, reply_to: bytes | None
    ) -> bytes | None:
        key = (context.job_id, context.round)
        current = self._clients.get(key)
        if kind != "invite":
            if current is None or current[0] != context.attempt:
                if kind == "abort" and self._directory.round_members(context.job_id) is not None:
                    return None  # this node already left that attempt of a job it knows: nothing to stop
                raise RemoteProtocolError(sender, kind, f"no client machine for {context} on this node")
            return await self._feed_client(current[1], context, frame, reply_to)
        invite = decode(frame).message  # the signature first: nothing is kept for a forged or unsigned frame
        if not isinstance(invite, Invite):
            raise RemoteProtocolError(sender, kind, "an invite frame that holds no invitation")
        terms = self._directory.invite_terms(context.job_id, context.round, 0)
        if terms is None and await self._directory.wait_for_roster(context.job_id, _ROSTER_WAIT):
            terms = self._directory.invite_terms(context.job_id, context.round, 0)
        if terms is None:  # the invite overtook the roster and it did not come
            raise RemoteProtocolError(sender, kind, f"unknown job {context.job_id!r} or no roster for it yet")
        tracker = self._trackers.get(key) or self._new_tracker(*key, terms)  # kept only once the invite is taken
        tracker.machine.check_invite(terms, context, sender, invite, time.time())
        vector = await self._directory.client_input(context.job_id, context.round)
        if vector is None:
            raise RemoteProtocolError(sender, kind, "this node does not take part in that job")
        # While the input was made (a training round's, which may wait for the local training), the job
        # loop may have begun the round with a tracker of its own: the invite goes to that one, checked
        # again, or the loop would wait on a machine that never hears of the invite nor of the result.
        kept = self._trackers.get(key)
        if kept is not None and kept is not tracker:
            tracker = kept
            tracker.machine.check_invite(terms, context, sender, invite, time.time())
        current = self._clients.get(key)
        if tracker.machine.take_invite(sender, context.attempt) is not None and current is not None:
            current[1].close()  # the later attempt replaces the earlier one, and its keys go with it
        self._trackers[key] = tracker
        params = terms.spec.round_params(len(invite.participants))
        machine = ClientRound(
            context, self._key, sender, vector, self._random, self._directory.is_member,
            invite_timeout=params.phase_timeout, same_survivors_as=self._directory.same_survivors_as(context.job_id),
        )
        runner = MachineRunner(
            machine, self._nursery, self._send, lambda out: self._client_output(context, out), params.phase_timeout,
            self._failpoint(),
        )
        self._clients[key] = (context.attempt, runner)
        log.info("invited", job=context.job_id, round=context.round, attempt=context.attempt,
                 coordinator=sender.hex()[:16], participants=len(invite.participants))
        tracker.changed()
        runner.start()
        return await self._feed_client(runner, context, frame, reply_to)

    async def _feed_client(
        self, runner: MachineRunner, context: RoundContext, frame: bytes, reply_to: bytes | None
    ) -> bytes | None:
        try:
            return await runner.feed(frame, reply_to)
        except RemoteProtocolError as exc:
            machine = runner.machine
            if isinstance(machine, ClientRound) and machine.phase is ClientPhase.ABORTED:
                runner.close()
                await self._client_output(context, RoundAborted(context, exc.phase, f"refused the coordinator: {exc.reason}"))
            raise

    def _failpoint(self) -> str | None:
        """The failpoint armed for machines starting now (see the module docstring)."""
        if self._failpoint_file is None:
            return None
        try:
            return self._failpoint_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    # --- coordinating ---------------------------------------------------------------------------

    async def coordinate(self, context: RoundContext, participants: list[bytes], params: RoundParams) -> None:
        """Start coordinating one attempt (raises `ProtocolError` for unusable parameters)."""
        machine = CoordinatorRound(context, self._key, participants, params, self._directory.is_member)
        runner = MachineRunner(
            machine, self._nursery, self._send, lambda out: self._coordinator_output(context, out), params.phase_timeout,
            self._failpoint(),
        )
        self._coordinators[context] = runner
        runner.start()  # before the first await: a frame for this attempt finds it running
        await self._on_attempt_event(context, "coordinating", {"participants": len(participants)})

    async def _coordinator_output(self, context: RoundContext, out: Output) -> None:
        tracker = self.tracker(context.job_id, context.round)
        if isinstance(out, RoundFinished):
            await self._on_result(out.result)
            tracker.machine.coordinator_finished(context.attempt)
        elif isinstance(out, RoundAborted):
            tracker.machine.aborted(context.attempt, out.reason)
            await self._on_attempt_event(context, "coordinator_aborted", {"phase": out.phase, "reason": out.reason})
        tracker.changed()

    async def _client_output(self, context: RoundContext, out: Output) -> None:
        """Outcomes of a client machine. The durable records come before the frame that follows them
        leaves: `MachineRunner._apply` awaits this for each output in order, and a record that fails
        raises, so the frame is never sent."""
        tracker = self.tracker(context.job_id, context.round)
        if isinstance(out, SendingMaskedInput):
            for record in tracker.machine.masked_input_leaving(context.attempt):
                await self._directory.record_spent(record.context)
            return
        if isinstance(out, SigningSurvivors):
            await self._directory.record_signed_survivors(context, out.survivors)
            return
        if isinstance(out, ClientFinished):
            tracker.machine.client_finished(context.attempt)
            await self._on_attempt_event(context, "client_done", {})
        elif isinstance(out, RoundAborted):
            if tracker.machine.aborted(context.attempt, out.reason):
                await self._on_attempt_event(context, "client_aborted", {"phase": out.phase, "reason": out.reason})
        tracker.changed()

    # --- outbound -------------------------------------------------------------------------------

    def _send(self, send: Send, timeout: float, on_lost: Callable[[bytes], Awaitable[None]]) -> None:
        self._nursery.start_soon(self._deliver, send, timeout, on_lost)

    async def _deliver(self, send: Send, timeout: float, on_lost: Callable[[bytes], Awaitable[None]]) -> None:
        if send.to == self.me:
            await self._deliver_locally(send.frame)
            return
        retry = SEND_RETRY.capped(timeout / 10)
        for retries in range(retry.tries):
            try:
                reply = await self._network.request(send.to, ROUND_PROTOCOL, send.frame, timeout=timeout, dial_retry=None)
            except TransportError as exc:
                delay = retry.next_delay(retries)
                if delay is None or isinstance(exc, (RemoteRefusal, PeerDown)):
                    log.info("round_send_failed", peer=send.to.hex()[:16], reason=exc.reason)
                    await on_lost(send.to)
                    return
                await trio.sleep(delay)
                continue
            if reply != ACK:  # the peer's answer rode on the reply
                await self._deliver_locally(reply, sender=send.to)
            return

    async def _deliver_locally(self, frame: bytes, sender: bytes | None = None) -> None:
        """Feed a frame from `sender` (this node by default) without a reply channel."""
        try:
            await self.handle_frame(sender or self.me, frame, can_reply=False)
        except ProtocolError as exc:
            log.info("local_frame_rejected", sender=(sender or self.me).hex()[:16], reason=str(exc))


