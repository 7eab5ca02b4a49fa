"""Tests for villaged/metrics.py: names, labels, private registries, text format."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.villaged.promtool import promtool

from villaged.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_spec_metrics_are_exported() -> None:
    m = Metrics()
    m.nodes_active.set(5)
    m.participation_rate.set(0.8)
    m.round_duration_seconds.observe(3.0)
    m.rounds_completed.inc()
    m.rounds_aborted.labels(reason="below_threshold").inc()
    m.failed_authentications.inc(2)
    m.malformed_messages.labels(kind="gossip").inc()
    m.bytes_sent.labels(protocol="/village/secagg/1").inc(100)
    m.bytes_received.labels(protocol="/village/secagg/1").inc(40)
    m.prior_stability.set(0.97)
    m.model_diversity.set(4)
    got = samples(m)
    assert got[("federation_nodes_active", ())] == 5
    assert got[("federation_participation_rate", ())] == 0.8
    assert got[("federation_round_duration_seconds_count", ())] == 1
    assert got[("federation_round_duration_seconds_bucket", (("le", "5.0"),))] == 1
    assert got[("federation_round_duration_seconds_bucket", (("le", "2.5"),))] == 0
    assert got[("federation_rounds_completed_total", ())] == 1
    assert got[("federation_rounds_aborted_total", (("reason", "below_threshold"),))] == 1
    assert got[("federation_failed_authentications_total", ())] == 2
    assert got[("federation_malformed_messages_total", (("kind", "gossip"),))] == 1
    assert got[("village_bytes_sent_total", (("protocol", "/village/secagg/1"),))] == 100
    assert got[("village_bytes_received_total", (("protocol", "/village/secagg/1"),))] == 40
    assert got[("federation_prior_stability", ())] == 0.97
    assert got[("federation_model_diversity", ())] == 4


def test_two_daemons_in_one_process_do_not_share_counters() -> None:
    a, b = Metrics(), Metrics()
    a.rounds_completed.inc()
    assert samples(a)[("federation_rounds_completed_total", ())] == 1
    assert samples(b)[("federation_rounds_completed_total", ())] == 0


SPEC_NAMES = (  # the spec's "Monitoring and Observability": every name it lists, as Prometheus exposes it
    "federation_nodes_active", "federation_round_duration_seconds_count", "federation_participation_rate",
    "federated_rounds_completed_total", "federation_prior_stability", "federation_model_diversity",
    "federation_convergence_rate", "federation_failed_authentications_total", "federation_encryption_errors_total",
    "federation_malformed_messages_total",
)


def test_every_metric_the_spec_names_is_exported() -> None:
    m = Metrics()
    m.round_duration_seconds.observe(1.0)
    m.malformed_messages.labels(kind="gossip").inc()
    names = {name for name, _ in samples(m)}
    assert set(SPEC_NAMES) <= names, set(SPEC_NAMES) - names


def test_the_specs_rounds_completed_is_an_alias_not_a_second_count() -> None:
    m = Metrics()
    for _ in range(3):
        m.rounds_completed.inc()
    got = samples(m)
    assert got[("federated_rounds_completed_total", ())] == got[("federation_rounds_completed_total", ())] == 3


def test_encryption_errors_are_shown_at_zero_and_counted_by_check() -> None:
    m = Metrics()
    got = samples(m)
    assert got[("federation_encryption_errors_total", (("check", "sealed_share"),))] == 0
    assert got[("federation_encryption_errors_total", (("check", "signature"),))] == 0
    m.encryption_errors.labels(check="sealed_share").inc()
    assert samples(m)[("federation_encryption_errors_total", (("check", "sealed_share"),))] == 1


def test_exposition_passes_promtool_check_metrics() -> None:
    m = Metrics()
    m.rounds_completed.inc()
    m.round_duration_seconds.observe(2.0)
    checked = subprocess.run([promtool(), "check", "metrics"], input=m.render(), capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
