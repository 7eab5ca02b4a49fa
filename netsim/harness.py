"""The in-memory round harness: real ClientRound machines and one CoordinatorRound, frames routed by hand.

No network, no threads, no wall clock: `RoundHarness` passes each `Send` to the machine it names,
a client listed in `stop_at` goes silent from its phase on, and the coordinator's phase timer
fires (virtual time moves on by one phase timeout) when nothing is left to deliver. Two users:

- the protocol tests, for which the harness is also a spy and a lying coordinator: it keeps every
  frame a client sent (`sent`, `revealed`), can stop the honest coordinator as it enters a phase
  (`run(until=...)`) and signs any message with the coordinator's key (`forge`);
- `netsim bench core` (`simulate_round`, `summarize`), which reads the CPU time of every machine
  call per phase and the bytes each client sent.

Next: netsim/bench.py prints these figures; tests/protocol/test_client.py shows the spy at work.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import nacl.signing
import numpy as np

from protocol import crypto
from protocol.client import ClientPhase, ClientRound
from protocol.coordinator import CoordinatorPhase, CoordinatorRound
from protocol.errors import RemoteProtocolError
from protocol.events import Output, RoundAborted, RoundFinished, RoundResult, Send, StartTimer
from protocol.messages import Message, UnmaskShares
from protocol.params import RoundParams
from protocol.wire import Envelope, RoundContext, decode, encode

#: Where a client can stop: it never sends the message of that phase, nor anything after.
DROPOUT_PHASES = ("advertise", "share", "masked", "consistency", "unmask")
CONTEXT = RoundContext("cluster-job", 4, 0)


def member_keys(n: int, seed: bytes) -> list[nacl.signing.SigningKey]:
    """n member signing keys, the same for the same seed."""
    return [nacl.signing.SigningKey(crypto.sha256(b"member", seed, i.to_bytes(4, "big"))) for i in range(n)]


def random_inputs(members: list[bytes], dimension: int, bits: int, seed: bytes) -> dict[bytes, np.ndarray]:
    """One uniformly random vector of `bits`-bit words per member, the same for the same seed."""
    rng = crypto.DeterministicRandom(seed)
    mask = np.uint32((1 << bits) - 1)
    return {m: np.frombuffer(rng(4 * dimension), dtype="<u4") & mask for m in members}


class RoundHarness:
    """n clients and a coordinator in one process; see the module docstring."""

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
        inputs: dict[bytes, np.ndarray] | None = None,
        clock: Callable[[], float] = time.process_time,
    ) -> None:
        """`stop_at`: client index -> the phase it stops in. `coordinator_index`: the coordinator is
        that participant (as in villaged) rather than an outsider. `clock` times each machine call."""
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
        self.inputs = inputs if inputs is not None else random_inputs(self.ids, params.dimension, params.bits, seed + b"/inputs")
        randoms = randoms or {m: crypto.DeterministicRandom(seed + b"/client/" + m) for m in self.ids}
        self.clients = {
            m: ClientRound(context, k, self.coordinator_id, self.inputs[m], randoms[m]) for m, k in zip(self.ids, self.keys)
        }
        self.stop_at = {self.ids[i]: phase for i, phase in (stop_at or {}).items()}
        self.dead: set[bytes] = set()
        self.frames_sent: list[bytes] = []  # everything any client sent, in order: the spy's record
        self._decoded: list[Envelope] = []
        self.bytes_sent = dict.fromkeys(self.ids, 0)
        self.client_errors: dict[bytes, list[RemoteProtocolError]] = {m: [] for m in self.ids}
        self.client_events: dict[bytes, list[Output]] = {m: [] for m in self.ids}  # outcomes, not timers
        self.client_timers: dict[bytes, list[StartTimer]] = {m: [] for m in self.ids}
        self.clock = clock
        self.client_cpu: dict[str, dict[bytes, float]] = defaultdict(lambda: defaultdict(float))  # phase -> client -> s
        self.coordinator_cpu: dict[str, float] = defaultdict(float)  # phase -> s
        self.result: RoundFinished | None = None
        self.abort: RoundAborted | None = None
        self.now = 0.0

    # --- single steps ---------------------------------------------------------------------------

    def forge(self, message: Message, context: RoundContext | None = None) -> bytes:
        """A frame signed by the coordinator: what a lying coordinator can send."""
        return encode(context or self.context, message, self.coordinator_key)

    def start(self) -> list[Send]:
        return self._call_coordinator(lambda: self.coordinator.start(self.now))

    def to_client(self, member: bytes, frame: bytes) -> list[bytes]:
        """Deliver one frame; return the frames the client sent. Errors are recorded, not raised."""
        if member in self.dead:
            return []
        client = self.clients[member]
        started = self.clock()
        try:
            outputs = client.receive(frame, self.now)
        except RemoteProtocolError as exc:
            self.client_errors[member].append(exc)
            return []
        phase = "unmask" if client.phase is ClientPhase.DONE else client.phase.value
        self.client_cpu[phase][member] += self.clock() - started
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
            self.frames_sent.append(out.frame)
            self.bytes_sent[member] += len(out.frame)
            frames.append(out.frame)
        return frames

    def to_coordinator(self, frame: bytes) -> list[Send]:
        return self._call_coordinator(lambda: self.coordinator.receive(frame, self.now))

    def peer_lost(self, member: bytes) -> list[Send]:
        """Tell the coordinator a client's connection is gone, as villaged does when a stream breaks."""
        return self._call_coordinator(lambda: self.coordinator.peer_lost(member, self.now))

    def fire_coordinator_timer(self) -> list[Send]:
        self.now += self.params.phase_timeout
        return self._call_coordinator(lambda: self.coordinator.timer_fired(self.coordinator.phase.value, self.now))

    def _call_coordinator(self, call: Callable[[], list[Output]]) -> list[Send]:
        """Run one coordinator call, timed against the phase it was made in; keep its outcome."""
        phase = self.coordinator.phase.value
        started = self.clock()
        outputs = call()
        self.coordinator_cpu[phase] += self.clock() - started
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
            else:  # everyone alive has answered: the phase timer fires
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

    @property
    def sent(self) -> list[Envelope]:
        """Every frame any client sent, decoded. Decoded when first asked for, so the bench pays nothing."""
        self._decoded.extend(decode(frame) for frame in self.frames_sent[len(self._decoded):])
        return self._decoded

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


# --- one call for the bench ---------------------------------------------------------------------------


@dataclass
class SimulationOutcome:
    result: RoundResult | None
    abort: RoundAborted | None
    expected: np.ndarray | None  # Σ inputs of the survivors mod 2^m, when the round finished
    client_cpu: dict[str, dict[bytes, float]] = field(default_factory=dict)  # phase -> client -> seconds
    coordinator_cpu: dict[str, float] = field(default_factory=dict)
    client_bytes: list[int] = field(default_factory=list)  # per client that stayed alive
    inputs: dict[bytes, np.ndarray] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.result is not None and self.expected is not None and bool(np.array_equal(self.result.aggregate, self.expected))


def simulate_round(
    params: RoundParams,
    n: int,
    dropouts: dict[int, str] | None = None,
    seed: bytes = b"netsim",
    context: RoundContext = RoundContext("sim-job", 0, 0),
    inputs: dict[bytes, np.ndarray] | None = None,
    clock: Callable[[], float] = time.process_time,
) -> SimulationOutcome:
    """Run one attempt honestly to its end; `dropouts` maps a client index to the phase it stops in."""
    harness = RoundHarness(params, n, context=context, seed=seed, stop_at=dropouts, inputs=inputs, clock=clock)
    harness.run()
    result = harness.result.result if harness.result is not None else None
    return SimulationOutcome(
        result=result,
        abort=harness.abort,
        expected=harness.expected_sum(result.survivors) if result is not None else None,
        client_cpu={phase: dict(per_client) for phase, per_client in harness.client_cpu.items()},
        coordinator_cpu=dict(harness.coordinator_cpu),
        client_bytes=[harness.bytes_sent[m] for m in harness.ids if m not in harness.dead],
        inputs=harness.inputs,
    )


def summarize(outcome: SimulationOutcome) -> dict[str, object]:
    """The benchmark's view of one outcome: medians and maxima per phase, in milliseconds."""
    per_client_total: dict[bytes, float] = defaultdict(float)
    per_phase = {}
    for phase, per_client in outcome.client_cpu.items():
        values = list(per_client.values())
        per_phase[phase] = {"median": round(1e3 * statistics.median(values), 3), "max": round(1e3 * max(values), 3)}
        for member, seconds in per_client.items():
            per_client_total[member] += seconds
    totals = list(per_client_total.values()) or [0.0]
    return {
        "client_cpu_ms": per_phase,
        "client_total_cpu_ms": {"median": round(1e3 * statistics.median(totals), 3), "max": round(1e3 * max(totals), 3)},
        "coordinator_cpu_ms": {p: round(1e3 * s, 3) for p, s in outcome.coordinator_cpu.items()},
        "coordinator_total_cpu_ms": round(1e3 * sum(outcome.coordinator_cpu.values()), 3),
        "client_bytes_sent": {
            "median": statistics.median(outcome.client_bytes or [0]),
            "max": max(outcome.client_bytes or [0]),
        },
    }
