"""protocol/spec_config.py: the spec's configuration block accepted where it means what a village
setting means, refused (naming the key and why) where it does not."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import priors
from protocol.errors import ParameterError
from protocol.jobs import JobSpec
from protocol.spec_config import translate_job

SECTION = {"models": ["gpt-4", "distilbert"], "regions": ["us-west"], "tiers": ["high"]}
JOB = {"kind": "routing-priors", "data": "stats", "priors": SECTION}
# the spec's block as written, less the keys village cannot honour
SPEC_BLOCK = {"enabled": True, "round_interval_minutes": 30, "max_round_duration_seconds": 300,
              "crypto": {"key_rotation_hours": 24}, "aggregation": {"minimum_sample_size": 100}}


def test_the_specs_block_becomes_job_settings() -> None:
    spec = JobSpec.from_dict(translate_job({**JOB, "federation": SPEC_BLOCK}))
    assert spec.round_interval == 1800.0 and spec.phase_timeout == 60.0  # 5 phases of 60 s: at most 300 s
    assert spec.priors is not None and spec.priors["min_sample_count"] == 100


def test_minimum_sample_size_keeps_small_records_on_the_node() -> None:
    layout = priors.parse_layout({**SECTION, "min_sample_count": 100})
    record = {"model_id": "gpt-4", "region": "us-west", "quality_tier": "high", "success_rate": 0.9,
              "latency_percentile": {"p50": 1, "p95": 2, "p99": 3}}
    assert not priors.encode(layout, {"models": [dict(record, sample_count=99)]}).any()
    assert priors.encode(layout, {"models": [dict(record, sample_count=100)]}).any()


@pytest.mark.parametrize(("block", "field", "fragment"), [
    ({"min_participation_threshold": 0.8}, "federation.min_participation_threshold", "min_participants"),
    ({"aggregation": {"outlier_threshold": 2.0}}, "federation.aggregation.outlier_threshold", "cannot be honoured"),
    ({"crypto": {"encryption_algorithm": "AES-256-GCM"}}, "federation.crypto.encryption_algorithm", "ChaCha20-Poly1305"),
    ({"enabled": False}, "federation.enabled", "runs no job"),
    ({"round_interval_minutes": 0}, "federation.round_interval_minutes", "positive"),
    ({"crypto": {"key_rotation_hours": -1}}, "federation.crypto.key_rotation_hours", "positive"),
    ({"aggregation": {"minimum_sample_size": 1.5}}, "federation.aggregation.minimum_sample_size", "whole number"),
    ({"rounds_per_day": 3}, "federation.rounds_per_day", "unknown setting"),
])
def test_keys_without_a_village_meaning_are_refused_naming_them(block: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ParameterError) as info:
        translate_job({**JOB, "federation": block})
    assert info.value.field == field and fragment in info.value.reason, str(info.value)


def test_a_setting_given_both_ways_must_agree() -> None:
    assert translate_job({**JOB, "round_interval": 1800.0, "federation": {"round_interval_minutes": 30}})["round_interval"] == 1800.0
    with pytest.raises(ParameterError) as info:
        translate_job({**JOB, "round_interval": 60.0, "federation": {"round_interval_minutes": 30}})
    assert "round_interval" in str(info.value)


def test_minimum_sample_size_needs_routing_priors() -> None:
    with pytest.raises(ParameterError) as info:
        translate_job({"kind": "vector", "data": "x", "dimension": 4, "federation": {"aggregation": {"minimum_sample_size": 5}}})
    assert info.value.field == "federation.aggregation.minimum_sample_size"
