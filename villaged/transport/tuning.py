"""Two py-libp2p 0.8.1 behaviours that cost a busy village much of its CPU, tuned.

1. Verify each peer's signed peer record once, not on every gossip RPC or DHT response.

py-libp2p 0.8.1 attaches the sender's signed peer record (an Ed25519-signed envelope with
its addresses) to every pubsub RPC, heartbeat control messages included, and the receiver
decodes it, base58-decodes the peer id and checks the signature each time
(`libp2p/pubsub/utils.py` `maybe_consume_signed_record`, called from `pubsub.py` and
`gossipsub.py`). A sender reuses the same record bytes until its addresses change
(`peerstore.py` `env_to_send_in_RPC`), so the receiver's work repeats itself exactly.
Measured with 16 daemons during a round (py-spy): a fifth of each daemon's main thread went
to this path.

The DHT does the same with its own copy of the function (`libp2p/kad_dht/utils.py`, called from
`kad_dht.py` and `peer_routing.py`) for the sender's record and for each of the up to 20 closer
peers in every FIND_NODE response. py-spy on processes restarted during net-100: lookups took
40-45 % of their time, a third of that in these signature checks.

`install()` replaces the functions with ones that remember the (peer, record bytes) pairs they
have already accepted. A record seen for the first time, or a changed one, is still verified and
stored by the original function; only a byte-identical repeat for the same peer is skipped, and
that one was verified and stored already. (The original also refuses a valid record older than
the one stored, and a lookup then skips that peer; the memo keeps using it, with the addresses
of the newer record.)

2. Grant yamux receive window in batches, as go-yamux does.

py-libp2p's yamux answers nearly every read with a WINDOW_UPDATE frame (`yamux.py`
`_auto_tune_and_send_window_update`: its "partial slack" branch fires for any read smaller than
half the window), and each frame is a Noise encryption and a socket write. Every multistream
line, identify message and small request then costs the reader an extra frame: py-spy on the
process of a job's creator taking joins put 15 % of its main thread there. The replacement
counts what the application has read and grants it back in one update once it reaches half the
window. The peer can then always send at least half a window without waiting, short streams
finish without any update, and a stream whose reader stops reading still stops its writer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import libp2p.kad_dht.kad_dht as _kad_dht
import libp2p.kad_dht.peer_routing as _peer_routing
import libp2p.kad_dht.utils as _kad_utils
import libp2p.pubsub.gossipsub as _gossipsub
import libp2p.pubsub.pubsub as _pubsub
from libp2p.kad_dht.pb.kademlia_pb2 import Message as DhtMessage
from libp2p.stream_muxer.yamux.yamux import YamuxStream

#: Peers' records remembered at once; the oldest is forgotten (and verified again) beyond this.
MEMO_SIZE = 4096

ConsumeFn = Callable[..., bool]
#: (message, peer id or None) -> (peer, record bytes), or None when the message carries no record.
KeyFn = Callable[[Any, Any], "tuple[bytes, bytes] | None"]


def pubsub_record_key(msg: Any, peer_id: Any) -> tuple[bytes, bytes] | None:
    """A pubsub RPC's sender record, from the peer it came from."""
    return (peer_id.to_bytes(), msg.senderRecord) if msg.HasField("senderRecord") else None


def dht_record_key(msg: Any, peer_id: Any) -> tuple[bytes, bytes] | None:
    """A DHT response's sender record, or a closer peer's record (that peer's id rides beside it)."""
    if isinstance(msg, DhtMessage):
        if not msg.HasField("senderRecord"):
            return None
        return (peer_id.to_bytes() if peer_id is not None else b"", msg.senderRecord)
    return (msg.id, msg.signedRecord) if msg.HasField("signedRecord") else None


class RecordMemo:
    """`maybe_consume_signed_record` with a memory of the records it accepted."""

    def __init__(self, consume: ConsumeFn, key: KeyFn, size: int = MEMO_SIZE) -> None:
        self.consume = consume
        self.key = key
        self.size = size
        self._accepted: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()

    def __call__(self, msg: Any, host: Any, peer_id: Any = None) -> bool:
        key = self.key(msg, peer_id)
        if key is None:
            return self.consume(msg, host, peer_id)
        if key in self._accepted:
            self._accepted.move_to_end(key)
            return True
        accepted = self.consume(msg, host, peer_id)
        if accepted:
            self._accepted[key] = None
            if len(self._accepted) > self.size:
                self._accepted.popitem(last=False)
        return accepted


async def grant_window_in_batches(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """`YamuxStream._auto_tune_and_send_window_update`, go-yamux style: one update per half window read."""
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        if self._pending_recv_release < self.target_recv_window // 2:
            return
        grant, self._pending_recv_release = self._pending_recv_release, 0
        self.recv_window += grant
    await self.send_window_update(grant, skip_lock=True)


def install() -> None:
    """Idempotent: batch yamux window grants; one record memo for pubsub and gossipsub, one for the DHT."""
    YamuxStream._auto_tune_and_send_window_update = grant_window_in_batches  # type: ignore[method-assign]
    if isinstance(_pubsub.maybe_consume_signed_record, RecordMemo):
        return
    memo = RecordMemo(_pubsub.maybe_consume_signed_record, pubsub_record_key)
    _pubsub.maybe_consume_signed_record = memo  # type: ignore[assignment]
    _gossipsub.maybe_consume_signed_record = memo  # type: ignore[assignment]
    dht_memo = RecordMemo(_kad_utils.maybe_consume_signed_record, dht_record_key)
    _kad_dht.maybe_consume_signed_record = dht_memo  # type: ignore[assignment]
    _peer_routing.maybe_consume_signed_record = dht_memo  # type: ignore[assignment]
