"""Fault plans: who dies, when, and how the network misbehaves, decided up front from a seed.

Process faults use villaged's own failpoint (ROLE:PHASE in the file VILLAGE_FAILPOINT_FILE names,
`villaged/rounds.py`): the process SIGKILLs itself when one of its machines enters PHASE, before
that phase's messages leave, which is a real crash at an exact protocol point. The file is read as
each round machine starts, so netsim arms a running victim by writing it between rounds, once the
round's elected coordinator is known (the election depends on the job id; `protocol/election.py`).
Victims of client faults are never the process of that round's attempt-0 coordinator, so "a client
dropped" and "the coordinator died" stay separate cases.

Network faults (netns.py) are a link shape for every namespace plus optional partitions: at a
chosen round the village is split in two halves for a while, then healed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PHASES = ("advertise", "share", "masked", "consistency", "unmask")


@dataclass(frozen=True)
class Kill:
    """Arm peer `peer` (its whole process) to SIGKILL itself in `phase` of `round` as `role`."""

    round: int
    peer: int | None  # None: the round's attempt-0 coordinator (role "coordinator"), or any other process (role "client")
    role: str
    phase: str

    @property
    def failpoint(self) -> str:
        return f"{self.role}:{self.phase}"


@dataclass
class FaultPlan:
    kills: list[Kill] = field(default_factory=list)
    restart: bool = True  # restart killed peers after their round
    churn: int = 0  # peers stopped (SIGTERM) after each round; those stopped before come back
    partition_round: int | None = None
    partition_seconds: float = 0.0

    def kills_in(self, round_number: int) -> list[Kill]:
        return [k for k in self.kills if k.round == round_number]

    @property
    def any(self) -> bool:
        return bool(self.kills or self.churn or self.partition_round is not None)


def parse_kill(text: str) -> Kill:
    """`PEER:PHASE[@ROUND]` (a client kill), `client:PHASE[@ROUND]` (a client chosen from the seed,
    never in the process of that round's coordinator) or `coordinator:PHASE[@ROUND]`."""
    who, _, rest = text.partition(":")
    phase, _, round_text = rest.partition("@")
    if phase not in PHASES:
        raise ValueError(f"--kill {text!r}: phase must be one of {', '.join(PHASES)}")
    round_number = int(round_text) if round_text else 0
    if who == "coordinator":
        return Kill(round_number, None, "coordinator", phase)
    if who == "client":
        return Kill(round_number, None, "client", phase)
    if not who.isdigit():
        raise ValueError(f"--kill {text!r}: expected PEER_INDEX:PHASE[@ROUND], client:PHASE[@ROUND] or coordinator:PHASE[@ROUND]")
    return Kill(round_number, int(who), "client", phase)


def pick_victims(rng: random.Random, candidates: list[int], fraction: float, per_process: int) -> list[int]:
    """round(fraction * peers) peers from `candidates`, whole processes at a time."""
    want = round(fraction * len(candidates) * 1.0)
    processes = sorted({c // per_process for c in candidates})
    rng.shuffle(processes)
    chosen: list[int] = []
    for process in processes:
        if len(chosen) >= want:
            break
        members = [c for c in candidates if c // per_process == process]
        if len(chosen) + len(members) > want and chosen:
            continue
        chosen.extend(members)
    return sorted(chosen)
