"""Two py-libp2p 0.8.1 behaviours that cost a busy village much of its CPU, tuned.

1. Verify each peer's signed peer record once, not on every gossip RPC.

py-libp2p 0.8.1 attaches the sender's signed peer record (an Ed25519-signed envelope with
its addresses) to every pubsub RPC, heartbeat control messages included, and the receiver
decodes it, base58-decodes the peer id and checks the signature each time
(`libp2p/pubsub/utils.py` `maybe_consume_signed_record`, called from `pubsub.py` and
`gossipsub.py`). A sender reuses the same record bytes until its addresses change
(`peerstore.py` `env_to_send_in_RPC`), so the receiver's work repeats itself exactly.
Measured with 16 daemons during a round (py-spy): a fifth of each daemon's main thread went
to this path.

`install()` replaces the function in both modules with one that remembers the (peer, record
bytes) pairs it has already accepted. A record seen for the first time, or a changed one, is
still verified and stored by the original function; only a byte-identical repeat from the same
peer is skipped, and that one was verified and stored already.

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

import libp2p.pubsub.gossipsub as _gossipsub
import libp2p.pubsub.pubsub as _pubsub
from libp2p.stream_muxer.yamux.yamux import YamuxStream

#: Peers' records remembered at once; the oldest is forgotten (and verified again) beyond this.
MEMO_SIZE = 4096

ConsumeFn = Callable[[Any, Any, Any], bool]


class RecordMemo:
    """`maybe_consume_signed_record` with a memory of the records it accepted."""

    def __init__(self, consume: ConsumeFn, size: int = MEMO_SIZE) -> None:
        self.consume = consume
        self.size = size
        self._accepted: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()

    def __call__(self, msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = (peer_id.to_bytes(), msg.senderRecord)
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
    """Idempotent: batch yamux window grants; patch pubsub and gossipsub to share one memo."""
    YamuxStream._auto_tune_and_send_window_update = grant_window_in_batches  # type: ignore[method-assign]
    if isinstance(_pubsub.maybe_consume_signed_record, RecordMemo):
        return
    memo = RecordMemo(_pubsub.maybe_consume_signed_record)
    _pubsub.maybe_consume_signed_record = memo  # type: ignore[assignment]
    _gossipsub.maybe_consume_signed_record = memo  # type: ignore[assignment]
