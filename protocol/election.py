"""Coordinator election by rendezvous hashing: no messages, every node gets the same answer.

Each eligible member gets the score H(job ‖ round ‖ member); the ranking is by score and the
coordinator of attempt a is ranking[a mod n]. A member's score does not depend on who else is
eligible, so the relative order of two members never changes when others join or leave, and the
coordinator of attempt 0 changes only if the newcomer outranks it. Scores are uniform, so over
many rounds every member coordinates about equally often.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from protocol.crypto import sha256
from protocol.errors import LocalProtocolError


#: Rankings kept: every node asks for the same few rounds' rankings from many places (the invite
#: check, the job loop, result verification, the control API); one of 300 members is ~10 KB.
_CACHED_RANKINGS = 256


def ranking(job_id: str, round_number: int, members: Iterable[bytes]) -> list[bytes]:
    """Eligible members, best first, for one round of one job (computed once per distinct input)."""
    return list(_ranked(job_id, round_number, tuple(sorted(set(members)))))


@functools.lru_cache(maxsize=_CACHED_RANKINGS)
def _ranked(job_id: str, round_number: int, members: tuple[bytes, ...]) -> tuple[bytes, ...]:
    prefix = (b"village/election/v1", job_id.encode(), round_number.to_bytes(8, "big"))
    return tuple(sorted(members, key=lambda m: (sha256(*prefix, m), m)))


def coordinator_for(job_id: str, round_number: int, attempt: int, members: Iterable[bytes]) -> bytes:
    """The member that coordinates this attempt; attempt + 1 names the next one in the ranking."""
    ranked = ranking(job_id, round_number, members)
    if not ranked:
        raise LocalProtocolError("no eligible members to elect a coordinator from")
    if attempt < 0:
        raise LocalProtocolError(f"attempt must be >= 0, got {attempt}")
    return ranked[attempt % len(ranked)]


def capped_roster(job_id: str, members: Iterable[bytes], cap: int) -> tuple[bytes, ...]:
    """The roster a creator freezes from the members that joined: all of them, sorted, or the `cap`
    best-ranked by H(job ‖ member) when more joined (the overflow check and the DP noise assume at
    most `max_participants`). A rule every node can recompute from the same joins."""
    ranked = sorted(set(members), key=lambda m: (sha256(b"village/roster/v1", job_id.encode(), m), m))
    return tuple(sorted(ranked[:cap]))
