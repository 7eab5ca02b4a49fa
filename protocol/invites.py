"""Which invitations a client answers: each is checked against the job it claims to belong to.

The election names one coordinator per (job, round, attempt), but it is the coordinator that
writes the invitation: the participant list, the round parameters, the round and attempt
numbers. A lying member elected for some attempt could otherwise invite a victim to a "round" of
two (and read the victim's input as the sum), to a round the job does not have, or to attempt
5,000, of which every member is elected for some. So a client answers only an invitation that
is exactly what the job's spec gives for its participant count, names only roster members, at
least the job's and this node's own minimum of participants, for a round of the job that has
opened by the schedule, and an attempt the schedule can have reached. Pure and deterministic:
the caller passes the clock reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.election import coordinator_for
from protocol.errors import InviteRefused, ParameterError
from protocol.jobs import JobSpec
from protocol.messages import Invite
from protocol.wire import RoundContext

#: Members' wall clocks differ; a round may be seen to open this much before this node's schedule
#: says (NTP keeps clocks within well under a second; this allows for a node without it).
CLOCK_SKEW = 10.0


@dataclass(frozen=True, slots=True)
class InviteTerms:
    """What this node knows, independently of the inviter, about the round an invitation names."""

    spec: JobSpec
    roster: Sequence[bytes]  # the job's frozen roster, the electorate
    opens_at: float  # wall time the round opens by the job's schedule
    floor: int  # this node's own minimum of participants for the input it would contribute
    local_attempt: int  # the attempt this node's job loop has reached in the round
    spent_in: int | None  # the attempt of the round this node's masked input went into (durable)
    budget_left: bool = True  # False: one more release would exceed the job's privacy budget


def attempt_limit(roster_size: int) -> int:
    """Attempts a round may have: each roster member coordinates at most one of them."""
    return roster_size


def reachable_attempt(terms: InviteTerms, now: float) -> int:
    """The highest attempt the schedule can have reached by `now`. Without an invite a node moves on
    after one phase timeout, so attempts advance at most once per phase timeout, unless this node
    saw them fail faster (its own job loop is then further on)."""
    by_clock = int(max(0.0, now - terms.opens_at + CLOCK_SKEW) // terms.spec.phase_timeout)
    return max(terms.local_attempt + 1, by_clock)


def check_invite(terms: InviteTerms, context: RoundContext, inviter: bytes, invite: Invite, now: float) -> None:
    """Raise `InviteRefused` naming the first rule the (signature-checked) invitation breaks."""
    spec, roster = terms.spec, terms.roster

    def refuse(code: str, reason: str) -> InviteRefused:
        return InviteRefused(inviter, code, reason)

    if terms.spent_in is not None:
        raise refuse("round_spent", f"this node's input for round {context.round} went into attempt {terms.spent_in}; "
                                    f"it takes part in no other attempt of the round")
    if not terms.budget_left:
        raise refuse("privacy_budget_spent", "one more release would exceed the job's privacy budget")
    if not 0 <= context.round < spec.rounds:
        raise refuse("no_such_round", f"round {context.round} does not exist (the job has {spec.rounds} rounds)")
    if now + CLOCK_SKEW < terms.opens_at:
        raise refuse("round_not_open", f"round {context.round} opens in {terms.opens_at - now:.1f} s by the job's schedule")
    if context.attempt >= attempt_limit(len(roster)):
        raise refuse("attempt_out_of_range", f"attempt {context.attempt} of a round of {len(roster)} roster members "
                                             f"(each member coordinates at most one attempt)")
    reachable = reachable_attempt(terms, now)
    if context.attempt > reachable:
        raise refuse("attempt_ahead", f"attempt {context.attempt} is ahead of the schedule (at most {reachable} by now)")
    if inviter != coordinator_for(context.job_id, context.round, context.attempt, roster):
        raise refuse("not_elected", f"not the elected coordinator of attempt {context.attempt}")
    participants = invite.participants
    if len(set(participants)) != len(participants):
        raise refuse("duplicate_participants", "the participant list repeats a member")
    if not set(participants) <= set(roster):
        raise refuse("not_on_roster", "invites members outside the job's roster")
    if len(participants) < spec.min_participants:
        raise refuse("too_few_participants",
                     f"{len(participants)} participants, the job needs at least {spec.min_participants}")
    if len(participants) < terms.floor:
        raise refuse("below_floor", f"{len(participants)} participants, this node contributes only to rounds "
                                    f"of at least {terms.floor}")
    if len(participants) > spec.max_participants:
        raise refuse("too_many_participants",
                     f"{len(participants)} participants, the job allows at most {spec.max_participants}")
    try:
        expected = spec.round_params(len(participants))
    except ParameterError as exc:
        raise refuse("bad_parameters", f"the job gives no safe parameters for {len(participants)} participants: {exc}") from None
    if invite.params != expected:
        raise refuse("parameters_differ", f"round parameters {invite.params} differ from the job's {expected}")
