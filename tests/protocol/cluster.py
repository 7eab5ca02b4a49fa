"""An in-memory harness: real ClientRound machines, one coordinator key, frames routed by hand.

The harness is also the spy. It decodes and keeps every frame a client sends, so tests can check
what was revealed. A test can run the honest CoordinatorRound for some phases, hold back what it
sends at a chosen transition, and then act as a lying coordinator: `forge` signs any message with
the coordinator's key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import nacl.signing
import numpy as np

from protocol import crypto
from protocol.client import ClientPhase, ClientRound
from protocol.coordinator import CoordinatorPhase, CoordinatorRound
from protocol.errors import RemoteProtocolError
from protocol.events import Output, RoundAborted, RoundFinished, Send, StartTimer
from protocol.messages import Message, UnmaskShares
from protocol.params import RoundParams
from protocol.wire import Envelope, RoundContext, decode, encode

CONTEXT = RoundContext("cluster-job", 4, 0)


def member_keys(n: int, seed: bytes = b"cluster") -> list[nacl.signing.SigningKey]:
    return [nacl.signing.SigningKey(crypto.sha256(b"member", seed, i.to_bytes(4, "big"))) for i in range(n)]


class Cluster:
    def __init__(
        self,
        params: RoundParams,
        n: int,
        context: RoundContext = CONTEXT,
        seed: bytes = b"cluster",
        keys: list[nacl.signing.SigningKey] | None = None,
        randoms: dict[bytes, crypto.RandomBytes] | None = None,
        stop_at: dict[int, str] | None = None,
        coordinator_index: int | None = None,
    ) -> None:
        """`coordinator_index`: the coordinator is that participant (as in villaged) rather than an outsider."""
        self.params = params
        self.context = context
        self.keys = keys or member_keys(n, seed)
        self.ids = [crypto.member_id_of(k) for k in self.keys]
        self.key_of = dict(zip(self.ids, self.keys))
        self.coordinator_key = (
            nacl.signing.SigningKey(crypto.sha256(b"coordinator", seed))
            if coordinator_index is None else self.keys[coordinator_index]
        )
        self.coordinator_id = crypto.member_id_of(self.coordinator_key)
        self.coordinator = CoordinatorRound(context, self.coordinator_key, self.ids, params)
        self.graph = self.coordinator.graph
        rng = crypto.DeterministicRandom(seed + b"/inputs")
        mask = np.uint32(params.modulus_mask)
        self.inputs = {m: np.frombuffer(rng(4 * params.dimension), dtype="<u4") & mask for m in self.ids}
        randoms = randoms or {m: crypto.DeterministicRandom(seed + b"/client/" + m) for m in self.ids}
        self.clients = {
            m: ClientRound(context, k, self.coordinator_id, self.inputs[m], randoms[m]) for m, k in zip(self.ids, self.keys)
        }
        self.stop_at = {self.ids[i]: phase for i, phase in (stop_at or {}).items()}
        self.dead: set[bytes] = set()
        self.sent: list[Envelope] = []  # everything any client sent, decoded: the spy's record
        self.client_errors: dict[bytes, list[RemoteProtocolError]] = {m: [] for m in self.ids}
        self.client_events: dict[bytes, list[Output]] = {m: [] for m in self.ids}  # outcomes, not timers
        self.client_timers: dict[bytes, list[StartTimer]] = {m: [] for m in self.ids}
        self.result: RoundFinished | None = None
        self.abort: RoundAborted | None = None
        self.now = 0.0

    # --- single steps ---------------------------------------------------------------------------

    def forge(self, message: Message, context: RoundContext | None = None) -> bytes:
        """A frame signed by the coordinator: what a lying coordinator can send."""
        return encode(context or self.context, message, self.coordinator_key)

    def start(self) -> list[Send]:
        return self._from_coordinator(self.coordinator.start(self.now))

    def to_client(self, member: bytes, frame: bytes) -> list[bytes]:
        """Deliver one frame; return the frames the client sent. Errors are recorded, not raised."""
        if member in self.dead:
            return []
        client = self.clients[member]
        try:
            outputs = client.receive(frame, self.now)
        except RemoteProtocolError as exc:
            self.client_errors[member].append(exc)
            return []
        phase = "unmask" if client.phase is ClientPhase.DONE else client.phase.value
        frames = []
        for out in outputs:
            if isinstance(out, StartTimer):
                self.client_timers[member].append(out)
                continue
            if not isinstance(out, Send):
                self.client_events[member].append(out)
                continue
            assert out.to == self.coordinator_id
            if self.stop_at.get(member) == phase:
                self.dead.add(member)
                continue
            self.sent.append(decode(out.frame))
            frames.append(out.frame)
        return frames

    def to_coordinator(self, frame: bytes) -> list[Send]:
        return self._from_coordinator(self.coordinator.receive(frame, self.now))

    def fire_coordinator_timer(self) -> list[Send]:
        self.now += self.params.phase_timeout
        return self._from_coordinator(self.coordinator.timer_fired(self.coordinator.phase.value, self.now))

    def _from_coordinator(self, outputs: list[Output]) -> list[Send]:
        sends = []
        for out in outputs:
            if isinstance(out, Send):
                sends.append(out)
            elif isinstance(out, RoundFinished):
                self.result = out
            elif isinstance(out, RoundAborted):
                self.abort = out
        return sends

    # --- honest routing ---------------------------------------------------------------------------

    def run(self, sends: Iterable[Send] | None = None, until: CoordinatorPhase | None = None) -> list[Send]:
        """Route honestly until the coordinator enters `until` (its sends for that phase are returned,
        undelivered) or the round ends (returns [])."""
        to_clients: deque[Send] = deque(self.start() if sends is None else sends)
        to_coordinator: deque[bytes] = deque()
        while self.result is None and self.abort is None:
            if to_clients:
                send = to_clients.popleft()
                to_coordinator.extend(self.to_client(send.to, send.frame))
                continue
            phase_before = self.coordinator.phase
            if to_coordinator:
                new = self.to_coordinator(to_coordinator.popleft())
            else:
                new = self.fire_coordinator_timer()
            if until is not None and self.coordinator.phase is until and phase_before is not until:
                assert not to_coordinator
                return new
            to_clients.extend(new)
        return []

    def deliver(self, sends: Iterable[Send]) -> list[bytes]:
        """Deliver coordinator sends to clients; return what the clients answered."""
        out: list[bytes] = []
        for send in sends:
            out.extend(self.to_client(send.to, send.frame))
        return out

    # --- the spy's view ---------------------------------------------------------------------------

    def expected_sum(self, survivors: Iterable[bytes]) -> np.ndarray:
        total = np.zeros(self.params.dimension, dtype=np.uint32)
        for m in survivors:
            np.add(total, self.inputs[m], out=total)
        return total & np.uint32(self.params.modulus_mask)

    def revealed(self) -> dict[bytes, dict[str, set[bytes]]]:
        """owner -> {"seed": holders that sent a b_w share, "key": holders that sent an s_w^SK share}."""
        out: dict[bytes, dict[str, set[bytes]]] = {m: {"seed": set(), "key": set()} for m in self.ids}
        for env in self.sent:
            if isinstance(env.message, UnmaskShares):
                for owner, _ in env.message.seed_shares:
                    out[owner]["seed"].add(env.sender)
                for owner, _ in env.message.key_shares:
                    out[owner]["key"].add(env.sender)
        return out

    def unmask_messages_from(self, member: bytes) -> list[UnmaskShares]:
        return [e.message for e in self.sent if e.sender == member and isinstance(e.message, UnmaskShares)]
