"""Verify each peer's signed peer record once, not on every gossip RPC.

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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub
import libp2p.pubsub.pubsub as _pubsub

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


def install() -> None:
    """Idempotent: patch pubsub and gossipsub to share one memo."""
    if isinstance(_pubsub.maybe_consume_signed_record, RecordMemo):
        return
    memo = RecordMemo(_pubsub.maybe_consume_signed_record)
    _pubsub.maybe_consume_signed_record = memo  # type: ignore[assignment]
    _gossipsub.maybe_consume_signed_record = memo  # type: ignore[assignment]
