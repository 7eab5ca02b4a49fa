"""In-process simulation of one SecAgg+ attempt: n client machines and a coordinator machine.

No network, no threads: frames are routed between the real state machines in a queue, dropouts
follow a schedule, and the coordinator's phase timers fire when the queue runs dry (a dropped
client never answers). Every machine call is timed with a CPU clock so the benchmark can report
per-phase costs. Used by the protocol tests and by `netsim bench core`.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.signing
import numpy as np

from protocol import crypto
from protocol.client import ClientPhase, ClientRound
from protocol.coordinator import CoordinatorRound
from protocol.events import Output, RoundAborted, RoundFinished, RoundResult, Send
from protocol.params import RoundParams
from protocol.wire import RoundContext

#: Where a client can stop: it never sends the message of that phase, nor anything after.
DROPOUT_PHASES = ("advertise", "share", "masked", "consistency", "unmask")


@dataclass
class SimulationOutcome:
    result: RoundResult | None
    abort: RoundAborted | None
    expected: np.ndarray | None  # Σ inputs of the survivors mod 2^m, when the round finished
    client_cpu: dict[str, dict[bytes, float]] = field(default_factory=dict)  # phase -> client -> seconds
    coordinator_cpu: dict[str, float] = field(default_factory=dict)
    client_bytes: list[int] = field(default_factory=list)
    inputs: dict[bytes, np.ndarray] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.result is not None and self.expected is not None and bool(np.array_equal(self.result.aggregate, self.expected))


def make_members(n: int, seed: bytes = b"netsim") -> list[nacl.signing.SigningKey]:
    return [nacl.signing.SigningKey(crypto.sha256(b"member", seed, i.to_bytes(4, "big"))) for i in range(n)]


def random_inputs(members: list[bytes], dimension: int, bits: int, seed: bytes) -> dict[bytes, np.ndarray]:
    rng = crypto.DeterministicRandom(seed)
    mask = np.uint32((1 << bits) - 1)
    return {m: np.frombuffer(rng(4 * dimension), dtype="<u4") & mask for m in members}


def simulate_round(
    params: RoundParams,
    n: int,
    dropouts: dict[int, str] | None = None,
    seed: bytes = b"netsim",
    context: RoundContext | None = None,
    inputs: dict[bytes, np.ndarray] | None = None,
    clock: Callable[[], float] = time.process_time,
) -> SimulationOutcome:
    """Run one attempt; `dropouts` maps a client index to the phase it stops in."""
    context = context or RoundContext("sim-job", 0, 0)
    keys = make_members(n, seed)
    ids = [crypto.member_id_of(k) for k in keys]
    coordinator_key = nacl.signing.SigningKey(crypto.sha256(b"coordinator", seed))
    inputs = inputs if inputs is not None else random_inputs(ids, params.dimension, params.bits, seed)
    random_bytes = crypto.DeterministicRandom(seed + b"/clients")
    clients = {
        m: ClientRound(context, k, crypto.member_id_of(coordinator_key), inputs[m], random_bytes)
        for m, k in zip(ids, keys)
    }
    stop_at = {ids[i]: phase for i, phase in (dropouts or {}).items()}
    coordinator = CoordinatorRound(context, coordinator_key, ids, params)
    outcome = SimulationOutcome(None, None, None, inputs=inputs)
    client_cpu: dict[str, dict[bytes, float]] = defaultdict(lambda: defaultdict(float))
    sent = dict.fromkeys(ids, 0)
    dead: set[bytes] = set()
    to_coordinator: deque[bytes] = deque()
    to_clients: deque[Send] = deque()
    now = 0.0

    def run_coordinator(call: Callable[[], list[Output]]) -> None:
        phase = coordinator.phase.value
        started = clock()
        outputs = call()
        outcome.coordinator_cpu[phase] = outcome.coordinator_cpu.get(phase, 0.0) + clock() - started
        for out in outputs:
            if isinstance(out, Send):
                to_clients.append(out)
            elif isinstance(out, RoundFinished):
                outcome.result = out.result
            elif isinstance(out, RoundAborted):
                outcome.abort = out

    run_coordinator(lambda: coordinator.start(now))
    while outcome.result is None and outcome.abort is None:
        if to_clients:
            send = to_clients.popleft()
            client = clients[send.to]
            if send.to in dead:
                continue
            started = clock()
            outputs = client.receive(send.frame, now)
            phase = "unmask" if client.phase is ClientPhase.DONE else client.phase.value
            client_cpu[phase][send.to] += clock() - started
            for out in outputs:
                if not isinstance(out, Send):
                    continue
                if stop_at.get(send.to) == phase:
                    dead.add(send.to)
                    continue
                sent[send.to] += len(out.frame)
                to_coordinator.append(out.frame)
        elif to_coordinator:
            frame = to_coordinator.popleft()
            run_coordinator(lambda: coordinator.receive(frame, now))
        else:  # everyone alive has answered: the phase timer fires
            now += params.phase_timeout
            run_coordinator(lambda: coordinator.timer_fired(coordinator.phase.value, now))
    outcome.client_cpu = {phase: dict(per_client) for phase, per_client in client_cpu.items()}
    outcome.client_bytes = [sent[m] for m in ids if m not in dead]
    if outcome.result is not None:
        total = np.zeros(params.dimension, dtype=np.uint32)
        for m in outcome.result.survivors:
            np.add(total, inputs[m], out=total)
        outcome.expected = total & np.uint32(params.modulus_mask)
    return outcome


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
