"""Checking that a round result describes an attempt that really ran, from what it carries.

A signed result alone proves only who signed it. So the coordinator publishes, beside the
aggregate, the ConsistencySignature frames it collected: each is a survivor's own signature over
the attempt's context and the survivor set U3. `verify_result` accepts a result only if its signer
is the elected coordinator of that attempt, the round exists in the job, the aggregate has the
job's shape, the participants and parameters are what the job allows, and every survivor's secret
has t votes from its holders in the neighbour graph, not counting the coordinator's (it could sign
two lists), the same quorum an honest client requires before it reveals a share. A member can no
longer plant a result for a round that has not run, nor can an elected coordinator publish one
without t honest-or-colluding holders of every survivor vouching for its U3.

What it cannot check: the aggregate's value. That is the sum only if the votes' signers ran the
protocol honestly; a coordinator with enough colluding participants can still publish any vector.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from protocol import masking
from protocol.announcements import ResultAnnouncement, aggregate_digest
from protocol.crypto import sha256
from protocol.election import coordinator_for
from protocol.events import RoundResult
from protocol.errors import AuthenticationError, ParameterError, RemoteProtocolError
from protocol.graph import NeighbourGraph
from protocol.jobs import JobSpec
from protocol.messages import ConsistencySignature
from protocol.params import RoundParams
from protocol.wire import RoundContext, decode

#: A ConsistencySignature frame: header (kind, job id of at most 128 characters, round, attempt,
#: sender, body hash), a 32-byte body and a signature, well under this.
MAX_VOTE_BYTES = 1024
_PHASE = "result"


@dataclass(frozen=True, slots=True)
class VerifiedResult:
    """A result that passed `verify_result` (only it makes these): safe to store and to pass on."""

    announcement: ResultAnnouncement
    coordinator: bytes
    aggregate: bytes  # little-endian uint32 words
    votes: tuple[bytes, ...]


def votes_digest(votes: Sequence[bytes]) -> bytes:
    """What a result announcement signs in place of its votes (they travel beside it)."""
    return sha256(b"village/result-votes/v1", *votes)


def announcement_of(result: RoundResult, model_digest: bytes = b"") -> tuple[ResultAnnouncement, bytes]:
    """What a coordinator signs for the attempt it finished, and the aggregate's words to send with it
    (`model_digest`: the model a training round produced)."""
    words = result.aggregate.astype("<u4").tobytes()
    context = result.context
    announcement = ResultAnnouncement(
        context.job_id, context.round, context.attempt, result.survivors, result.dropped, aggregate_digest(words),
        votes_digest(result.votes), {phase: float(seconds) for phase, seconds in result.phase_seconds.items()},
        model_digest,
    )
    return announcement, words


def context_of(announcement: ResultAnnouncement) -> RoundContext:
    return RoundContext(announcement.job_id, announcement.round, announcement.attempt)


def check_claim(spec: JobSpec, roster: Collection[bytes], announcement: ResultAnnouncement, author: bytes) -> RoundParams:
    """The checks that need no aggregate nor votes (enough to ignore a gossiped claim): the signer
    is the attempt's elected coordinator, the round is one of the job's, and the participants and
    survivors are a round the job allows. Returns the round's parameters."""
    result = announcement
    if not roster:
        raise RemoteProtocolError(author, _PHASE, f"no roster of job {result.job_id!r} here to elect its coordinator from")
    elected = coordinator_for(result.job_id, result.round, result.attempt, roster)
    if author != elected:
        raise AuthenticationError(author, _PHASE, f"signed by {author.hex()[:16]}, but attempt {result.attempt} of "
                                  f"round {result.round} is coordinated by {elected.hex()[:16]}")
    if not result.round < spec.rounds:
        raise RemoteProtocolError(author, _PHASE, f"round {result.round} is beyond the job's {spec.rounds} rounds")
    participants = result.participants
    strangers = set(participants) - set(roster)
    if strangers:
        raise RemoteProtocolError(author, _PHASE, f"{len(strangers)} participants are not in the job's roster")
    if not spec.min_participants <= len(participants) <= spec.max_participants:
        raise RemoteProtocolError(author, _PHASE, f"{len(participants)} participants, the job allows "
                                  f"{spec.min_participants} to {spec.max_participants}")
    try:
        params = spec.round_params(len(participants))
        params.check_for(len(participants), spec.colluders)
    except ParameterError as exc:
        raise RemoteProtocolError(author, _PHASE, f"no safe round of {len(participants)} participants: {exc}") from None
    if len(result.survivors) < params.min_survivors:
        raise RemoteProtocolError(author, _PHASE, f"{len(result.survivors)} survivors, below min_survivors "
                                  f"{params.min_survivors}")
    return params


def verify_result(spec: JobSpec, roster: Collection[bytes], announcement: ResultAnnouncement, author: bytes,
                  aggregate: bytes, votes: Sequence[bytes]) -> VerifiedResult:
    """Every check of the module docstring; raises `RemoteProtocolError` naming `author` and the reason."""
    result = announcement
    params = check_claim(spec, roster, result, author)
    if type(aggregate) is not bytes or len(aggregate) != 4 * spec.dimension:
        size = len(aggregate) if isinstance(aggregate, bytes) else 0
        raise RemoteProtocolError(author, _PHASE, f"aggregate of {size} bytes, the job's {spec.dimension} words are "
                                  f"{4 * spec.dimension}")
    if aggregate_digest(aggregate) != result.aggregate_digest:
        raise RemoteProtocolError(author, _PHASE, "aggregate does not match the announced digest")
    if params.bits < 32 and int(np.frombuffer(aggregate, dtype="<u4").max(initial=0)) >> params.bits:
        raise RemoteProtocolError(author, _PHASE, f"aggregate has words beyond {params.bits} bits")
    if votes_digest(votes) != result.votes_digest:
        raise RemoteProtocolError(author, _PHASE, "votes do not match the announced votes digest")
    context = context_of(result)
    voters = _voters(context, result, author, votes)
    graph = NeighbourGraph(result.participants, params.neighbours, context.encode())
    counted = voters - {author}  # the coordinator could have signed another list for other holders
    for survivor in result.survivors:
        quorum = len(counted & set(graph.holders(survivor)))
        if quorum < params.threshold:
            raise RemoteProtocolError(author, _PHASE, f"survivor {survivor.hex()[:16]} has {quorum} votes from its "
                                      f"holders besides the coordinator, t={params.threshold} are needed")
    return VerifiedResult(result, author, aggregate, tuple(votes))


def _voters(context: RoundContext, result: ResultAnnouncement, author: bytes, votes: Sequence[bytes]) -> set[bytes]:
    """The distinct survivors whose valid vote for this context and this U3 is among `votes`."""
    if len(votes) > len(result.survivors):
        raise RemoteProtocolError(author, _PHASE, f"{len(votes)} votes for {len(result.survivors)} survivors")
    expected = masking.survivors_digest(context.encode(), result.survivors)
    survivors = set(result.survivors)
    voters: set[bytes] = set()
    for frame in votes:
        try:
            vote = decode(frame, max_bytes=MAX_VOTE_BYTES)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(author, _PHASE, f"a vote is invalid: {exc}") from None
        who = vote.sender.hex()[:16]
        if not isinstance(vote.message, ConsistencySignature) or vote.context != context:
            raise RemoteProtocolError(author, _PHASE, f"vote of {who} is not a consistency vote for {context}")
        if vote.sender not in survivors:
            raise RemoteProtocolError(author, _PHASE, f"vote of {who}, who is not a survivor")
        if vote.sender in voters:
            raise RemoteProtocolError(author, _PHASE, f"{who} votes twice")
        if vote.message.survivors_digest != expected:
            raise RemoteProtocolError(author, _PHASE, f"vote of {who} is for a different survivor set")
        voters.add(vote.sender)
    return voters
