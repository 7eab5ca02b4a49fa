"""protocol/evidence.py: a real round's result passes; every kind of planted or tampered result is
refused, naming the signer and the reason. The evidence comes from real client and coordinator
machines (netsim/harness.py); the attacks forge only with keys an attacker would hold."""

from __future__ import annotations

from dataclasses import replace

import pytest

from protocol import masking
from protocol.announcements import ResultAnnouncement, aggregate_digest
from protocol.election import coordinator_for
from protocol.errors import AuthenticationError, RemoteProtocolError
from protocol.events import RoundResult
from protocol.evidence import VerifiedResult, announcement_of, check_claim, verify_result, votes_digest
from protocol.jobs import JobSpec
from protocol.messages import ConsistencySignature
from protocol.wire import RoundContext, encode
from netsim.harness import CONTEXT, RoundHarness, member_keys

N, D = 8, 16
SPEC = JobSpec.from_dict({"kind": "vector", "data": "stats", "dimension": D, "rounds": 6, "min_participants": 4,
                          "max_participants": N, "neighbours": 4})
KEYS = member_keys(N, b"cluster")  # RoundHarness's default seed
IDS = [bytes(k.verify_key) for k in KEYS]
KEY_OF = dict(zip(IDS, KEYS))
ROSTER = sorted(IDS)
ELECTED = coordinator_for(CONTEXT.job_id, CONTEXT.round, CONTEXT.attempt, ROSTER)


def run_round(stop_at: dict[int, str] | None = None) -> RoundResult:
    """A genuine round among the roster, coordinated by the member the election names."""
    cluster = RoundHarness(SPEC.round_params(N), N, keys=KEYS, stop_at=stop_at, coordinator_index=IDS.index(ELECTED))
    cluster.run()
    assert cluster.result is not None, cluster.abort
    return cluster.result.result


GENUINE = run_round()
# One client stops before sending its masked input: it is invited but not in U3.
WITH_DROPOUT = run_round(stop_at={next(i for i, m in enumerate(IDS) if m != ELECTED): "masked"})


def verify(result: RoundResult, spec: JobSpec = SPEC, author: bytes = ELECTED, roster: list[bytes] = ROSTER,
           **changes: object) -> VerifiedResult:
    announcement, words = announcement_of(result)
    votes = changes.pop("votes", result.votes)
    words = changes.pop("aggregate", words)  # type: ignore[assignment]
    announcement = replace(announcement, **{"votes_digest": votes_digest(votes), **changes})  # type: ignore[arg-type]
    return verify_result(spec, roster, announcement, author, words, votes)  # type: ignore[arg-type]


def vote(signer: bytes, survivors: tuple[bytes, ...], context: RoundContext = CONTEXT) -> bytes:
    """A consistency vote signed with `signer`'s own key (a colluding member can make these)."""
    return encode(context, ConsistencySignature(masking.survivors_digest(context.encode(), survivors)), KEY_OF[signer])


def refused(match: str, *args: object, **kwargs: object) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError, match=match) as caught:
        verify(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.peer == kwargs.get("author", ELECTED)
    return caught.value


def test_a_genuine_result_passes_with_and_without_dropouts() -> None:
    verified = verify(GENUINE)
    assert verified.coordinator == ELECTED and verified.votes == GENUINE.votes
    assert GENUINE.participants == tuple(ROSTER) and len(GENUINE.votes) == N
    assert verify(WITH_DROPOUT).announcement.dropped == WITH_DROPOUT.dropped
    assert len(WITH_DROPOUT.dropped) == 1 and len(WITH_DROPOUT.votes) == N - 1


def test_a_member_that_was_not_elected_cannot_sign_a_result() -> None:
    """Even with the genuine votes, a valid signature by another member is not the attempt's result."""
    other = next(m for m in ROSTER if m != ELECTED)
    error = refused("is coordinated by", GENUINE, author=other)
    assert isinstance(error, AuthenticationError)


def test_a_round_beyond_the_jobs_rounds_is_refused() -> None:
    refused(f"round {CONTEXT.round} is beyond the job's 3 rounds", GENUINE, spec=replace(SPEC, rounds=3))


def test_an_aggregate_of_the_wrong_length_or_digest_is_refused() -> None:
    _, words = announcement_of(GENUINE)
    longer = words + bytes(8 * 1024 * 1024)  # the 8 MiB "result" of the finding
    refused("aggregate of 8388672 bytes, the job's 16 words are 64", GENUINE, aggregate=longer,
            aggregate_digest=aggregate_digest(longer))
    refused("does not match the announced digest", GENUINE, aggregate=bytes(len(words)))


def test_a_result_without_votes_or_with_too_few_is_refused() -> None:
    """What a member that plants a result for a round that never ran can show: no votes."""
    refused("has 0 votes from its holders besides the coordinator, t=3 are needed", GENUINE, votes=())
    refused("t=3 are needed", GENUINE, votes=GENUINE.votes[:3])


def test_the_coordinators_own_vote_never_counts() -> None:
    own = vote(ELECTED, GENUINE.survivors)
    assert own in GENUINE.votes
    refused("has 0 votes from its holders besides the coordinator", GENUINE, votes=(own,))


def test_votes_of_non_survivors_are_refused() -> None:
    """The dropped client colludes and signs the survivor list in place of a survivor's vote: it is not in
    U3, so its vote is refused."""
    (dropped,) = WITH_DROPOUT.dropped
    votes = (*WITH_DROPOUT.votes[1:], vote(dropped, WITH_DROPOUT.survivors))
    refused("who is not a survivor", WITH_DROPOUT, votes=votes)


def test_votes_for_another_survivor_set_attempt_or_twice_are_refused() -> None:
    # Claiming the dropped client's input is in the sum: the genuine votes signed a different U3.
    refused("for a different survivor set", WITH_DROPOUT, survivors=WITH_DROPOUT.participants, dropped=())
    other_attempt = RoundContext(CONTEXT.job_id, CONTEXT.round, CONTEXT.attempt + 1)
    refused("is not a consistency vote for", GENUINE,
            votes=(*GENUINE.votes[1:], vote(GENUINE.survivors[0], GENUINE.survivors, other_attempt)))
    refused("votes twice", GENUINE, votes=(*GENUINE.votes[:-1], GENUINE.votes[0]))
    refused("do not match the announced votes digest", GENUINE, votes_digest=b"\0" * 32)
    refused("a vote is invalid", GENUINE, votes=(b"\xc1" * 40,))


def test_participants_must_be_roster_members_in_the_jobs_range() -> None:
    refused("8 participants, the job allows 4 to 6", GENUINE, spec=replace(SPEC, max_participants=6))
    smaller_roster = ROSTER[:-1] if ROSTER[-1] != ELECTED else ROSTER[1:]
    author = coordinator_for(CONTEXT.job_id, CONTEXT.round, CONTEXT.attempt, smaller_roster)
    with pytest.raises(RemoteProtocolError, match="1 participants are not in the job's roster"):
        check_claim(SPEC, smaller_roster, announcement_of(GENUINE)[0], author)
    with pytest.raises(RemoteProtocolError, match="no roster"):
        check_claim(SPEC, [], announcement_of(GENUINE)[0], ELECTED)


def test_too_few_survivors_are_refused() -> None:
    """Only the coordinator and two others in U3 (the rest called dropped): below min_survivors 4."""
    kept = tuple(sorted({ELECTED, *[m for m in ROSTER if m != ELECTED][:2]}))
    announcement = ResultAnnouncement(CONTEXT.job_id, CONTEXT.round, CONTEXT.attempt, kept,
                                      tuple(m for m in ROSTER if m not in kept), b"\0" * 32, b"\0" * 32, {})
    with pytest.raises(RemoteProtocolError, match="3 survivors, below min_survivors 4"):
        check_claim(SPEC, ROSTER, announcement, ELECTED)
