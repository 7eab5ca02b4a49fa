"""What an operator of the federated aggregation spec sees on real daemons: the spec's own Model
Performance records (success_rate and sample_count, no counts) are stored with a summary saying the
counts are derived, aggregate exactly as rate x samples rounded, and GET /metrics shows every metric
the spec names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.villaged.fake_control import http
from tests.villaged.test_metrics import SPEC_NAMES
from tests.villaged.test_priors_village import TIMING, meshed_village, result_count
from tests.villaged.village import running_village, village_configs, wait_for
from villaged.control import InvalidRequest

SECTION = {"models": ["gpt-4", "distilbert"], "regions": ["us-west"], "tiers": ["high"], "request_patterns": 0}


def spec_record(rate: float, samples: int) -> dict[str, object]:
    """The spec's "Model Performance Priors" record as the spec writes it."""
    return {"model_id": "gpt-4", "region": "us-west", "quality_tier": "high",
            "latency_percentile": {"p50": 850, "p95": 1200, "p99": 1800}, "success_rate": rate, "sample_count": samples}


@pytest.mark.slow
async def test_specs_records_aggregate_and_metrics_carry_the_specs_names(tmp_path: Path) -> None:
    records = [(0.987, 15420), (0.5, 3), (0.9, 1001)]  # success 15219.54 -> 15220, 1.5 -> 2, 900.9 -> 901
    async with running_village(village_configs(tmp_path, 3)) as nodes:
        daemons = [d for d, _, _ in nodes]
        for daemon, (rate, samples) in zip(daemons, records, strict=True):
            stored = await daemon.put_data("stats", {"models": [spec_record(rate, samples)]})
            assert "derived from success_rate x sample_count, rounded to whole numbers" in stored["summary"]
        with pytest.raises(InvalidRequest) as refused:  # a rate contradicting its counts is refused when stored
            await daemons[0].put_data("other", {"models": [dict(spec_record(0.987, 100), success_count=10, total_count=100)]})
        assert refused.value.field == "other.models[0].success_rate"
        await meshed_village(daemons)
        job = await daemons[0].create_job({"kind": "routing-priors", "data": "stats", "priors": SECTION, "rounds": 1,
                                           "max_participants": 10, **TIMING})

        async def done() -> bool:
            return min([await result_count(d, job["id"]) for d in daemons]) == 1

        await wait_for(done, timeout=60)
        cell = (await daemons[1].priors(job["id"]))["priors"]["models"][0]
        assert (cell["success_count"], cell["total_count"]) == (15220 + 2 + 901, 15420 + 3 + 1001)
        assert cell["success_rate"] == (15220 + 2 + 901) / (15420 + 3 + 1001)

        _, started, _ = nodes[0]
        reply = await http(urlsplit(started.api_url).port, "GET", "/metrics", token=None)
        assert reply.status == 200
        exposed = {s.name: s.value for family in text_string_to_metric_families(reply.body.decode()) for s in family.samples}
        assert set(SPEC_NAMES) <= set(exposed), set(SPEC_NAMES) - set(exposed)
        assert exposed["federation_malformed_messages_total"] >= 1  # the refused put, counted
        assert exposed["federated_rounds_completed_total"] == exposed["federation_rounds_completed_total"]
