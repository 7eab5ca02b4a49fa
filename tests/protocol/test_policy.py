"""The per-input policy: what a job must be for a node to lend it its input, and its strict JSON form."""

from __future__ import annotations

import pytest

from protocol.errors import ParameterError
from protocol.jobs import JobSpec
from protocol.policy import InputPolicy

SPEC = JobSpec.from_dict({"kind": "vector", "data": "stats", "dimension": 4, "min_participants": 6, "neighbours": 4})
CREATOR = b"\x07" * 32


def test_the_default_policy_allows_any_job_at_or_above_the_floor() -> None:
    policy = InputPolicy()
    assert policy.refusal("j", SPEC, CREATOR, floor=6) is None
    assert policy.refusal("j", SPEC, CREATOR, floor=7) == "job allows rounds of 6 participants, this input needs at least 7"
    assert policy.min_for(5) == 5 and InputPolicy(min_participants=3).min_for(5) == 5
    assert InputPolicy(min_participants=9).min_for(5) == 9


def test_round_trip_through_json() -> None:
    policy = InputPolicy(jobs=("j1", "j2"), creators=(CREATOR,), min_participants=8, require_dp=True, repeat="allow")
    assert InputPolicy.from_dict(policy.to_dict()) == policy
    assert InputPolicy.from_dict(None) == InputPolicy() == InputPolicy.from_dict({})


@pytest.mark.parametrize(("raw", "field", "fragment"), [
    ([], "policy", "must be an object"),
    ({"floor": 3}, "policy.floor", "unknown field"),
    ({"jobs": "j1"}, "policy.jobs", "must be a list"),
    ({"jobs": ["ok", ""]}, "policy.jobs[1]", "job id of 1 to 128 characters"),
    ({"creators": ["07" * 32, "xyz"]}, "policy.creators[1]", "hex member id"),
    ({"creators": ["07" * 31]}, "policy.creators[0]", "32-byte member id"),
    ({"min_participants": 1}, "policy.min_participants", "integer in [2,"),
    ({"min_participants": True}, "policy.min_participants", "integer in [2,"),
    ({"require_dp": "yes"}, "policy.require_dp", "true or false"),
    ({"repeat": "always"}, "policy.repeat", "same-survivors, allow"),
])
def test_a_bad_policy_names_its_field(raw: object, field: str, fragment: str) -> None:
    with pytest.raises(ParameterError) as caught:
        InputPolicy.from_dict(raw)
    assert caught.value.field == field and fragment in caught.value.reason
