"""Getting a round's aggregate to every node: pushed down a tree of the roster, fetched by the rest.

The coordinator pushes the signed result announcement and the aggregate to the top of the job's
tree (protocol/fanout.py) and to its own children; each recipient stores it, acknowledges, and
pushes on to its own children, adopting the children of any child it cannot reach. The tree holds
every roster member but those that dropped out of the round: a member the coordinator did not
reach in time to invite is often alive and reachable by others. A recipient the push misses
fetches, from the coordinator and a few connected members, once the push is overdue: a participant
from the moment it sent its unmasking shares, anyone from the gossiped announcement. Nodes
outside the tree (observers, dropped participants, a node that restarts) fetch from random
survivors, then the coordinator. Whatever way the aggregate arrives, it travels with the round's
consistency votes and is stored (or pushed on) only if the daemon's check passes: the round has
opened, and protocol/evidence.py accepts the announcement, the aggregate and the votes.
"""

from __future__ import annotations

import random
from typing import Protocol

import msgpack
import structlog
import trio

from protocol.announcements import ResultAnnouncement, SignedAnnouncement, open_announcement
from protocol.backoff import Backoff
from protocol.errors import AuthenticationError, RemoteProtocolError
from protocol.evidence import VerifiedResult
from protocol.fanout import depth, tree_order
from villaged.errors import TransportError
from villaged.job_table import RETENTION
from villaged.metrics import Metrics
from villaged.transport import Node
from villaged.tree_push import push_down

log = structlog.get_logger("villaged.results")

#: fetch: [job id, round, asker's certificate] -> [signed announcement, aggregate, votes]. The
#: certificate lets a holder that never met the asker serve it: a node whose join never reached the
#: creator is in no roster, and in net-300 two such observers were refused by every holder for minutes.
RESULT_PROTOCOL = "/village/result/1.0.0"
RESULT_PUSH_PROTOCOL = "/village/result-push/1.0.0"  # push: [signed announcement, aggregate, votes] -> b"ok"
_FETCH_TIMEOUT = 10.0
#: A recipient waits this long per level of the tree for the push before it fetches instead (a hop
#: is a stream to a connected member, well under a second), then at doubling gaps up to
#: `_FETCH_GAP_MAX` (`_fetch_retry`) until the round's attempt window is over: the coordinator may
#: still be waiting for unmasking shares, and a fetch every 30 s at most keeps 300 askers light.
_PUSH_WAIT_PER_HOP = 3.0
_FETCH_GAP_MAX = 30.0
#: Nodes outside the tree fetch after a random wait of up to this much per survivor (capped).
_FETCH_SPREAD_PER_SURVIVOR = 0.02
_FETCH_SPREAD_MAX = 5.0
#: A fetch request: a job id, a round number and a certificate.
_MAX_FETCH = 1024
#: Round numbers are below this (a job spec's `rounds` is far smaller): a fetch naming any other
#: number, or a non-integer, is refused before it reaches the store.
_ROUND_LIMIT = 2**31


class ResultMembership(Protocol):
    """What the exchange needs from villaged/membership.py."""

    certificate: bytes  # this node's own (renewed while it runs), sent with its fetches

    def is_member(self, member: bytes) -> bool: ...

    def admit_if_unknown(self, certificate: bytes, peer: bytes) -> None:
        """Admit `peer`'s certificate unless it is a member already; raises RemoteProtocolError (counted)."""


class ResultRules(Protocol):
    """What a job says about its results (villaged/result_keeping.py)."""

    def roster(self, job_id: str) -> list[bytes] | None:
        """The job's roster, as this node knows it."""

    def attempt_window(self, job_id: str) -> float:
        """How long one attempt of the job may take."""

    def plausible(self, body: ResultAnnouncement, author: bytes) -> bool:
        """A gossiped claim worth fetching: its round has opened and its author was elected (counted if not)."""

    def verify(self, signed: SignedAnnouncement, words: bytes, votes: tuple[bytes, ...]) -> VerifiedResult:
        """The result if it proves its round ran, else raises RemoteProtocolError naming the reason."""


class ResultShelf(Protocol):
    """The results this node holds (villaged/result_keeping.py, over the store)."""

    def held_attempt(self, job_id: str, round_number: int) -> int | None:
        """The attempt whose result this node stores for a round."""

    def stored(self, job_id: str, round_number: int) -> tuple[bytes, bytes, tuple[bytes, ...]] | None:
        """(signed announcement, aggregate words, votes) as stored."""

    async def keep(self, result: VerifiedResult, record: bytes) -> None:
        """Store a verified result (committed when this returns); raises RemoteProtocolError if the
        coordinator equivocated."""


class ResultExchange:
    """Serves fetches and pushes of results, pushes to the nodes below this one, fetches what is missing."""

    def __init__(self, node: Node, nursery: trio.Nursery, membership: ResultMembership, rules: ResultRules,
                 shelf: ResultShelf, metrics: Metrics, me: bytes) -> None:
        self._node, self._nursery, self._metrics, self._me = node, nursery, metrics, me
        self._membership, self._rules, self._shelf = membership, rules, shelf
        self._jitter = random.Random()  # spreads fetches in time (not for secrets)
        # Attempts whose result this node pushed on (once each) -> when (trio time, in order): kept for
        # `RETENTION`, far beyond the last copy of a push that can still be on its way.
        self._forwarded: dict[tuple[str, int, int], float] = {}
        # Rounds whose push this node waits for (one waiter each, `_fetch_when_overdue`), and the event
        # set when the round's result is kept; both go when the wait ends, however it ends.
        self._awaiting: set[tuple[str, int]] = set()
        self._arrivals: dict[tuple[str, int], trio.Event] = {}
        # A fetch carries the asker's certificate (it may be new here); a push comes from a member.
        node.serve(RESULT_PROTOCOL, self._serve_fetch, max_request=_MAX_FETCH, max_request_nonmember=_MAX_FETCH)
        node.serve(RESULT_PUSH_PROTOCOL, self._serve_push)

    # --- pushing ----------------------------------------------------------------------------------

    def push(self, result: VerifiedResult, record: bytes) -> None:
        """Push a verified result on to the nodes below this one in the tree, in the background (once per attempt).
        The result is stored here by now: a wait for it (this coordinator's own, as a client) ends."""
        body, coordinator = result.announcement, result.coordinator
        self._arrived(body.job_id, body.round)
        key = (body.job_id, body.round, body.attempt)
        if key in self._forwarded:
            return
        self._forget_forwarded_before(trio.current_time() - RETENTION)
        self._forwarded[key] = trio.current_time()
        order = self._tree(body, coordinator)
        push_down(self._node, self._nursery, RESULT_PUSH_PROTOCOL,
                  msgpack.packb([record, result.aggregate, list(result.votes)]), order, coordinator,
                  frozenset(order) - frozenset(body.dropped), "result")

    def _forget_forwarded_before(self, cutoff: float) -> None:
        """Drop the oldest entries of `_forwarded` (it is in push order) up to `cutoff`."""
        while self._forwarded:
            oldest = next(iter(self._forwarded))
            if self._forwarded[oldest] >= cutoff:
                return
            del self._forwarded[oldest]

    def _tree(self, body: ResultAnnouncement, coordinator: bytes) -> list[bytes]:
        return tree_order(body.job_id, self._rules.roster(body.job_id) or [coordinator, *body.survivors])

    async def _serve_push(self, peer: bytes, request: bytes) -> bytes:
        self._check_member(peer)
        try:
            record, words, votes = msgpack.unpackb(request)
        except (ValueError, TypeError, msgpack.UnpackException):
            self._metrics.malformed_messages.labels(kind="result").inc()
            raise RemoteProtocolError(peer, "result", "push is not [announcement, aggregate, votes]") from None
        result, record = self._verified(peer, record, words, votes, None)
        await self._keep(result, record, peer, "push")
        self.push(result, record)
        return b"ok"

    # --- fetching ---------------------------------------------------------------------------------

    async def _serve_fetch(self, peer: bytes, request: bytes) -> bytes:
        job_id, round_number, certificate = self._fetch_request(peer, request)
        self._membership.admit_if_unknown(certificate, peer)  # raises (and counts) if the certificate is not valid
        self._check_member(peer)
        found = self._shelf.stored(job_id, round_number)
        if found is None:
            raise RemoteProtocolError(peer, "result", "no such result here")
        return msgpack.packb(list(found))  # the signed announcement travels with the vector

    def on_announcement(self, body: ResultAnnouncement, author: bytes) -> None:
        """A gossiped result announcement: make sure this node ends up with the aggregate."""
        if author != self._me and self._wants(body) and self._rules.plausible(body, author):
            in_tree = self._me in (self._rules.roster(body.job_id) or body.survivors) and self._me not in body.dropped
            if in_tree and self._shelf.held_attempt(body.job_id, body.round) is None:
                self._await_push(body.job_id, body.round, author)
            else:
                self._nursery.start_soon(self._collect, body, author)

    def expect(self, job_id: str, round_number: int, coordinator: bytes) -> None:
        """This node sent its unmasking shares to `coordinator`: the result comes down the tree, and
        if the push is overdue (or the announcement's gossip never comes), this node fetches it."""
        if self._shelf.held_attempt(job_id, round_number) is None:
            self._await_push(job_id, round_number, coordinator)

    def _await_push(self, job_id: str, round_number: int, coordinator: bytes) -> None:
        key = (job_id, round_number)
        if key not in self._awaiting:
            self._awaiting.add(key)
            self._nursery.start_soon(self._fetch_when_overdue, job_id, round_number, coordinator)

    async def _fetch_when_overdue(self, job_id: str, round_number: int, coordinator: bytes) -> None:
        """Wait for the push as long as the tree is deep, then ask the coordinator and two connected
        members at doubling gaps (the coordinator may still be waiting for unmasking shares)."""
        key = (job_id, round_number)
        roster = self._rules.roster(job_id) or [coordinator]
        deadline = trio.current_time() + self._rules.attempt_window(job_id)
        retry = _fetch_retry(len(roster) + 1)
        fetches = 0
        try:
            while self._shelf.held_attempt(job_id, round_number) is None and trio.current_time() < deadline:
                gap = retry.next_delay(fetches)
                assert gap is not None  # kept forever: the attempt window ends it
                with trio.move_on_after(gap):
                    await self._arrivals.setdefault(key, trio.Event()).wait()
                if self._shelf.held_attempt(job_id, round_number) is not None:
                    return
                connected = set(self._node.connected_peers())
                near = [m for m in roster if m in connected and m not in (self._me, coordinator)]
                if await self.fetch_from([coordinator, *self._jitter.sample(near, min(2, len(near)))], job_id, round_number):
                    return
                fetches += 1
        finally:
            self._awaiting.discard(key)
            self._arrivals.pop(key, None)

    async def _collect(self, body: ResultAnnouncement, author: bytes) -> None:
        """A node outside the tree waits a random moment (so that they do not all ask at once) and
        asks two random survivors (those holding it answer, the others refuse at once), then the
        coordinator."""
        await trio.sleep(self._jitter.uniform(0, min(_FETCH_SPREAD_MAX, _FETCH_SPREAD_PER_SURVIVOR * len(body.survivors))))
        if not self._wants(body):
            return
        others = [s for s in body.survivors if s not in (self._me, author)]
        for source in [*self._jitter.sample(others, min(2, len(others))), author]:
            if await self.fetch_from([source], body.job_id, body.round):
                return

    async def fetch_missed(self, roster: list[bytes], job_id: str, round_number: int) -> bool:
        """Ask some roster members for a result this node missed (it was down, or the announcement was
        lost): a few connected ones and a few dialed with the roster's addresses."""
        connected = set(self._node.connected_peers())
        others = [m for m in roster if m != self._me]
        near = [m for m in others if m in connected]
        far = [m for m in others if m not in connected]
        sources = self._jitter.sample(near, min(4, len(near)))
        sources += self._jitter.sample(far, min(8 - len(sources), len(far)))
        return await self.fetch_from(sources, job_id, round_number)

    async def fetch_from(self, sources: list[bytes], job_id: str, round_number: int) -> bool:
        """Ask `sources` at once; the first verified answer is stored. Bounded by one fetch timeout."""

        async def ask(source: bytes, cancel_all: trio.CancelScope) -> None:
            try:
                request = msgpack.packb([job_id, round_number, self._membership.certificate])
                reply = await self._node.request(source, RESULT_PROTOCOL, request, timeout=_FETCH_TIMEOUT)
                record, words, votes = msgpack.unpackb(reply)
                await self._keep(*self._verified(source, record, words, votes, (job_id, round_number)), source, "fetch")
            except (TransportError, RemoteProtocolError, ValueError, TypeError, msgpack.UnpackException) as exc:
                log.debug("result_fetch_failed", source=source.hex()[:16], reason=str(exc))
                return
            cancel_all.cancel()

        async with trio.open_nursery() as nursery:
            for source in sources:
                nursery.start_soon(ask, source, nursery.cancel_scope)
        return self._shelf.held_attempt(job_id, round_number) is not None

    # --- checks -----------------------------------------------------------------------------------

    def _fetch_request(self, peer: bytes, request: bytes) -> tuple[str, int, bytes]:
        """(job id, round, certificate) from a fetch request, each of its type and the round within
        0..2^31-1, checked before anything is converted or looked up; a refusal says which is wrong."""
        try:
            value = msgpack.unpackb(request)
        except (ValueError, TypeError, msgpack.UnpackException):
            value = None
        if not (isinstance(value, list) and len(value) == 3):
            problem = "request is not [job id, round, certificate]"
        elif type(value[0]) is not str:
            problem = f"job id must be a string, got {type(value[0]).__name__}"
        elif type(value[1]) is not int or not 0 <= value[1] < _ROUND_LIMIT:
            problem = f"round must be an integer in 0..{_ROUND_LIMIT - 1}, got {value[1]!r:.40}"
        elif type(value[2]) is not bytes:
            problem = f"certificate must be bytes, got {type(value[2]).__name__}"
        else:
            return value[0], value[1], value[2]
        self._metrics.malformed_messages.labels(kind="result").inc()
        log.info("result_fetch_refused", peer=peer.hex()[:16], reason=problem)
        raise RemoteProtocolError(peer, "result", problem)

    def _check_member(self, peer: bytes) -> None:
        if not self._membership.is_member(peer):
            self._metrics.failed_authentications.inc()
            raise RemoteProtocolError(peer, "result", "not a member of this village")

    def _verified(self, peer: bytes, record: object, words: object, votes: object,
                  expected: tuple[str, int] | None) -> tuple[VerifiedResult, bytes]:
        """The result as sent by `peer` and its signed announcement, if the daemon's check finds that it
        proves its round ran (and it is the round asked for, when one was). Refusals are logged and
        counted: a wrong signer as a failed authentication, anything else as a malformed result."""
        signed = open_announcement(record) if type(record) is bytes else None
        body = signed.body if signed is not None else None
        if not isinstance(body, ResultAnnouncement) or (expected is not None and (body.job_id, body.round) != expected):
            self._metrics.malformed_messages.labels(kind="result").inc()
            raise RemoteProtocolError(peer, "result", "not a result announcement for the round asked for")
        assert signed is not None
        try:
            if type(words) is not bytes or type(votes) is not list or any(type(v) is not bytes for v in votes):
                raise RemoteProtocolError(signed.author, "result", "aggregate or votes are not bytes")
            return self._rules.verify(signed, words, tuple(votes)), signed.record
        except RemoteProtocolError as exc:
            if isinstance(exc, AuthenticationError):
                self._metrics.failed_authentications.inc()
            else:
                self._metrics.malformed_messages.labels(kind="result").inc()
            log.warning("result_rejected", source=peer.hex()[:16], author=signed.author.hex()[:16], job=body.job_id,
                        round=body.round, attempt=body.attempt, reason=exc.reason)
            raise RemoteProtocolError(peer, "result", exc.reason) from None

    def _wants(self, body: ResultAnnouncement) -> bool:
        """This node holds no result of that round, or one of a later attempt (the lowest attempt's
        result is the round's result: see `Store.put_result`)."""
        held = self._shelf.held_attempt(body.job_id, body.round)
        return held is None or held > body.attempt

    async def _keep(self, result: VerifiedResult, record: bytes, source: bytes, via: str) -> None:
        body = result.announcement
        if self._wants(body):
            with trio.CancelScope(shield=True):  # a fetch that another source answered first stops here; a result half kept does not
                await self._shelf.keep(result, record)
            log.info("result_received", job=body.job_id, round=body.round, attempt=body.attempt, via=via,
                     source=source.hex()[:16])
        self._arrived(body.job_id, body.round)

    def _arrived(self, job_id: str, round_number: int) -> None:
        """Wake the wait for the round's push, if one is on (`_fetch_when_overdue`)."""
        event = self._arrivals.pop((job_id, round_number), None)
        if event is not None:
            event.set()


def _fetch_retry(tree_size: int) -> Backoff:
    """The waits of a tree member for a pushed result: a push's time down the tree, then doubling."""
    return Backoff.doubling(_PUSH_WAIT_PER_HOP * depth(tree_size), _FETCH_GAP_MAX).forever()
