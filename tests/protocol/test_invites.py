"""A member elected for some attempt writes the invitation; the client checks it against the job (issue 15 attack 2)."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import crypto
from protocol.election import coordinator_for, ranking
from protocol.errors import InviteRefused
from protocol.invites import CLOCK_SKEW, InviteTerms, check_invite
from protocol.jobs import JobSpec
from protocol.messages import Invite
from protocol.params import RoundParams
from protocol.wire import RoundContext

SPEC = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "rounds": 3, "min_participants": 5,
                          "max_participants": 8, "phase_timeout": 10.0})
ROSTER = sorted(crypto.sha256(b"member", bytes([i])) for i in range(8))
OPENS_AT = 1_000_000.0
JOB = "job-1"


def terms(**changes: object) -> InviteTerms:
    base = InviteTerms(SPEC, ROSTER, OPENS_AT, floor=5, local_attempt=0, spent_in=None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def honest(round_number: int = 0, attempt: int = 0, participants: list[bytes] | None = None) -> tuple[RoundContext, bytes, Invite]:
    chosen = tuple(sorted(participants or ROSTER))
    return (RoundContext(JOB, round_number, attempt), coordinator_for(JOB, round_number, attempt, ROSTER),
            Invite(chosen, SPEC.round_params(len(chosen))))


def refused(code: str, context: RoundContext, inviter: bytes, invite: Invite, now: float = OPENS_AT + 1,
            **changes: object) -> InviteRefused:
    with pytest.raises(InviteRefused) as caught:
        check_invite(terms(**changes), context, inviter, invite, now)
    assert caught.value.code == code, caught.value.reason
    return caught.value


def test_the_honest_invitation_is_accepted() -> None:
    check_invite(terms(), *honest(), OPENS_AT + 1)
    check_invite(terms(), *honest(participants=ROSTER[:5]), OPENS_AT + 1)


def test_a_member_inviting_a_victim_to_a_round_of_two_is_refused() -> None:
    context, elected, _ = honest()
    victim = next(m for m in ROSTER if m != elected)
    tiny = Invite(tuple(sorted([elected, victim])), RoundParams(4, 32, 2, 2, 2, 10.0))
    error = refused("too_few_participants", context, elected, tiny)
    assert "at least 5" in error.reason


def test_rounds_below_this_nodes_floor_are_refused_even_when_the_job_allows_them() -> None:
    context, elected, invite = honest(participants=ROSTER[:6])
    refused("below_floor", context, elected, invite, floor=7)


def test_parameters_other_than_the_jobs_are_refused() -> None:
    context, elected, invite = honest()
    weaker = dataclasses.replace(invite.params, min_survivors=3)
    refused("parameters_differ", context, elected, Invite(invite.participants, weaker))


def test_a_coordinator_cannot_turn_a_masked_job_into_a_plain_sum() -> None:
    """Only a training job with secure_aggregation false runs unmasked: a coordinator that invites to a
    plain sum for any other job would receive every input in the clear, so clients refuse it."""
    context, elected, invite = honest()
    plain = dataclasses.replace(invite.params, masked=False)
    assert RoundParams.from_wire(plain.to_wire()) == plain and len(invite.params.to_wire()) == 6
    refused("parameters_differ", context, elected, Invite(invite.participants, plain))


@pytest.mark.parametrize("round_number", [3, 999_999])
def test_rounds_the_job_does_not_have_are_refused(round_number: int) -> None:
    refused("no_such_round", *honest(round_number=round_number))


def test_a_round_before_its_opening_is_refused() -> None:
    refused("round_not_open", *honest(round_number=1), now=OPENS_AT - CLOCK_SKEW - 1)


@pytest.mark.parametrize("attempt", [len(ROSTER), 5_000])
def test_attempts_past_one_per_roster_member_are_refused(attempt: int) -> None:
    refused("attempt_out_of_range", *honest(attempt=attempt), now=OPENS_AT + 10**6)


def test_an_attempt_ahead_of_the_schedule_is_refused_and_accepted_once_reached() -> None:
    context, elected, invite = honest(attempt=4)
    refused("attempt_ahead", context, elected, invite, now=OPENS_AT)
    check_invite(terms(), context, elected, invite, OPENS_AT + 4 * SPEC.phase_timeout)  # four attempts' time later
    check_invite(terms(local_attempt=3), context, elected, invite, OPENS_AT)  # or this node saw three fail


def test_only_the_elected_coordinator_and_roster_members() -> None:
    context, elected, invite = honest()
    other = next(m for m in ROSTER if m != elected)
    refused("not_elected", context, other, invite)
    stranger = crypto.sha256(b"stranger")
    with_stranger = tuple(sorted([*ROSTER[:5], stranger]))
    refused("not_on_roster", context, elected, Invite(with_stranger, SPEC.round_params(6)))
    twice = tuple(sorted([*ROSTER[:5], ROSTER[0]]))
    refused("duplicate_participants", context, elected, Invite(twice, SPEC.round_params(6)))


def test_a_round_whose_input_went_into_another_attempt_is_refused() -> None:
    error = refused("round_spent", *honest(attempt=1), now=OPENS_AT + 100, spent_in=0)
    assert "attempt 0" in error.reason


def test_no_invitation_once_the_privacy_budget_is_spent() -> None:
    refused("privacy_budget_spent", *honest(), budget_left=False)


def test_every_member_is_elected_for_exactly_one_accepted_attempt() -> None:
    """attempt % n made every member the coordinator of infinitely many attempts; now of one."""
    ranked = ranking(JOB, 0, ROSTER)
    late = OPENS_AT + 10**6
    for member in ROSTER:
        accepted = []
        for attempt in range(3 * len(ROSTER)):
            context = RoundContext(JOB, 0, attempt)
            try:
                check_invite(terms(), context, member, Invite(tuple(ROSTER), SPEC.round_params(8)), late)
                accepted.append(attempt)
            except InviteRefused:
                pass
        assert accepted == [ranked.index(member)]
