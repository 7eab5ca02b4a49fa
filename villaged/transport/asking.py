"""Asking: one request frame to a named member, its reply frame back.

A request reuses an idle stream to the same peer and protocol when the pool has one
(stream_pool.py), and otherwise opens a stream, dialing first if no connection is open (known
addresses, else a DHT lookup). Every failure is a TransportError; a dial refused at every known
address is PeerDown.

Retries do not nest beyond a stated bound. A request dials at most `DIAL_RETRY.tries` (4) times,
all within its own timeout. A caller that retries requests on its own schedule passes
`dial_retry=None` and gets one dial per request: the round driver does (its SEND_RETRY makes at
most 5 tries), so one round frame costs at most 5 dials (it was up to 5 x 4). The other callers
send one request per attempt of their own schedules (joins, job sync, result fetches), so each
of their attempts dials at most 4 times.
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import MultiError
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID

from protocol.backoff import Backoff
from villaged.errors import PeerDown, TransportError
from villaged.transport.counters import Counters
from villaged.transport.framing import (
    HARD_MAX_FRAME,
    HEADER,
    REPLY_OK,
    FrameTooLarge,
    StreamEnded,
    end_stream,
    open_reply,
    read_exact,
    read_length,
    write_frame,
)
from villaged.transport.identity import peer_id_from_member_id
from villaged.transport.stream_pool import StreamPool

log = logging.getLogger(__name__)

#: A dial that fails without being refused (a handshake that timed out or broke under load) is
#: tried again after each of these delays: the swarm's own retries, which this replaces, took about
#: a second too (`Requester._dial`).
DIAL_RETRY = Backoff((0.1, 0.3, 0.6))
_REFUSED = "connection refused at its known addresses: the peer is down"
# Addresses learned from a DHT lookup stay usable this long (libp2p's connect() uses 120 s).
LOOKUP_ADDR_TTL = 600


class _EndedBeforeReply(StreamEnded):
    """The stream ended before the first byte of the reply."""


class Requester:
    """The asking half of a `Node`: dials, the pool of idle request streams, and exchanges."""

    def __init__(self, host: IHost, dht: KadDHT, counters: Counters, stream_idle_timeout: float) -> None:
        self._host = host
        self._dht = dht
        self._counters = counters
        # Reused only while idle for under a third of the peer's idle limit (if it runs our defaults).
        self._idle_streams: StreamPool[INetStream] = StreamPool(max_idle=stream_idle_timeout / 3)

    def forget_peer(self, peer: bytes) -> None:
        """Every connection to `peer` closed: its idle streams died with them."""
        self._idle_streams.forget(peer)

    async def request(
        self, peer: bytes, protocol_id: str, request: bytes, timeout: float, max_reply: int, dial_retry: Backoff | None
    ) -> bytes:
        """See `Node.request`; a failure is also counted as `request_failed`."""
        try:
            return await self._request_remote(peer, protocol_id, request, timeout, max_reply, dial_retry)
        except TransportError as exc:
            self._counters.emit("request_failed", peer, protocol=protocol_id, reason=exc.reason)
            raise

    async def _request_remote(
        self, peer: bytes, protocol_id: str, request: bytes, timeout: float, max_reply: int, dial_retry: Backoff | None
    ) -> bytes:
        if len(request) > HARD_MAX_FRAME:
            raise TransportError(peer, f"request of {len(request)} bytes exceeds {HARD_MAX_FRAME}")
        try:
            with trio.fail_after(timeout):
                kept, stale = self._idle_streams.take(peer, protocol_id, trio.current_time())
                for old in stale:
                    await end_stream(old, graceful=True)
                reply = None
                if kept is not None:  # None back: the server had closed it; go on with a fresh one
                    reply = await self._exchange_on(kept, peer, protocol_id, request, max_reply, kept=True)
                if reply is None:
                    stream = await self.open_stream(peer, protocol_id, dial_retry)
                    reply = await self._exchange_on(stream, peer, protocol_id, request, max_reply, kept=False)
        except trio.TooSlowError:
            raise TransportError(peer, f"no reply within {timeout:g} s") from None
        except TransportError:
            raise
        except Exception as exc:  # libp2p's dial and stream errors have no common base
            raise TransportError(peer, f"{type(exc).__name__}: {exc}") from exc
        assert reply is not None
        return open_reply(reply, peer)

    async def _exchange_on(
        self, stream: INetStream, peer: bytes, protocol_id: str, request: bytes, max_reply: int, *, kept: bool
    ) -> bytes | None:
        """One exchange; the stream goes back to the pool after an ok reply and is reset on any failure.

        None if `kept` (from the pool) and it ended before a single reply byte: the server closed
        it as idle without reading the request, so sending it again on a new stream is safe."""
        reply = None
        try:
            reply = await self._exchange(stream, peer, protocol_id, request, max_reply)
        except _EndedBeforeReply:
            if kept:
                return None
            raise
        finally:
            if reply is not None and reply[:1] == bytes([REPLY_OK]):
                surplus = self._idle_streams.give(peer, protocol_id, stream, trio.current_time())
                if surplus is not None:
                    await end_stream(surplus, graceful=True)
            else:  # an error reply may end the stream on the server's side too
                await end_stream(stream, graceful=reply is not None)
        return reply

    async def _exchange(
        self, stream: INetStream, peer: bytes, protocol_id: str, request: bytes, max_reply: int
    ) -> bytes:
        """Write the request while already reading the reply.

        A server refuses an oversize or rate-limited request before reading it and replies
        with the reason at once. Reading concurrently gets that reason to the caller instead
        of a write stalled on a full yamux window (4 MiB) until yamux gives up after 5 s.
        """
        failure: TransportError | None = None
        written = trio.Event()

        async def send() -> None:
            try:
                await write_frame(stream, request)
            except Exception:  # StreamReset and friends: the reply, or its absence, says why
                log.debug("request write to %s failed", peer.hex()[:16], exc_info=True)
                return
            finally:
                written.set()
            self._counters.sent[protocol_id] += HEADER.size + len(request)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            try:
                try:
                    length = await read_length(stream, max_reply + 1, peer)  # +1: status byte
                except StreamEnded as exc:
                    if exc.received == 0:
                        raise _EndedBeforeReply(peer, 0, HEADER.size) from exc
                    raise
                reply = await read_exact(stream, length, peer)
            except FrameTooLarge as exc:
                failure = TransportError(peer, f"reply of {exc.length - 1} bytes exceeds the limit of {max_reply}")
            except TransportError as exc:
                failure = exc
            finally:
                # Never cancel the writer (see write_frame): if it is still going, a reset
                # ends its wait for window space, and the nursery collects it promptly.
                if not written.is_set():
                    await end_stream(stream, graceful=False)
        if failure is not None:
            raise failure
        self._counters.received[protocol_id] += HEADER.size + len(reply)
        return reply

    async def open_stream(self, peer: bytes, protocol_id: str, dial_retry: Backoff | None) -> INetStream:
        """A new stream to `peer` for `protocol_id`, dialing first when no connection is open."""
        try:
            peer_id = peer_id_from_member_id(peer)
        except ValueError as exc:
            raise TransportError(peer, str(exc)) from exc
        network = self._host.get_network()
        # A peer that just died can still be listed with its closed connection, and the swarm then
        # fails the stream ("no valid connections") without dialing: dial anew, so that a refusal
        # says at once that the peer is down (net-100 took 2-3 s to give up on SIGKILLed clients).
        dialing = all(conn.is_closed for conn in network.get_connections(peer_id))
        if dialing:
            if not self._known_addrs(peer_id):
                info = await self._dht.find_peer(peer_id)
                if info is None or not info.addrs:
                    raise TransportError(peer, "no known address, and the DHT lookup found none")
                self._host.get_peerstore().add_addrs(peer_id, info.addrs, LOOKUP_ADDR_TTL)
            await self._dial(peer, peer_id, dial_retry)
        try:
            stream = await self._host.new_stream(peer_id, [TProtocol(protocol_id)])
        except Exception as exc:  # libp2p's stream errors have no common base
            if dialing and _connection_refused(exc):  # the new connection died at once: so did the peer
                raise PeerDown(peer, _REFUSED) from exc
            raise
        self._counters.emit("stream_opened", peer, protocol=protocol_id)
        return stream

    async def _dial(self, peer: bytes, peer_id: ID, retry: Backoff | None) -> None:
        """Connect, retrying on `retry` unless the dial is refused (PeerDown at once).

        The swarm's own retries are off (host.py's `_build_host`): they redialed a refused address
        for 0.7 s. Other failures (a handshake that timed out or broke under load) are retried here,
        as the swarm did, so that turning its retries off costs no reachability."""
        network = self._host.get_network()
        retries = 0
        while True:
            # The swarm refuses to dial a peer for 60 s after a failed dial. Every caller here has
            # its own deadline and retry policy (joins back off, rounds retry within a phase), and
            # a restarted creator or coordinator must be reachable again as soon as it is back.
            if isinstance(network, Swarm):
                network.unblock_peer(peer_id)
            try:
                await network.dial_peer(peer_id)
                return
            except Exception as exc:  # libp2p's dial errors have no common base
                if _connection_refused(exc):
                    raise PeerDown(peer, _REFUSED) from exc
                delay = retry.next_delay(retries) if retry is not None else None
                if delay is None:
                    raise
            await trio.sleep(delay)
            retries += 1

    def _known_addrs(self, peer_id: ID) -> bool:
        try:
            return bool(self._host.get_peerstore().addrs(peer_id))
        except Exception:  # PeerStoreError: unknown or expired
            return False


def _connection_refused(exc: BaseException) -> bool:
    """Whether a connection refusal (ECONNREFUSED) is among the causes of a dial error. The swarm
    wraps one error per address in a MultiError, each wrapping trio's, which groups its attempts."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return True
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        if isinstance(error, MultiError):  # the swarm's: one error per address dialed
            pending.extend(error.errors)
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return False
