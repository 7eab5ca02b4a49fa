"""Prometheus metrics of one villaged, served at ``/metrics`` by `villaged/api.py`.

Names follow the spec's "Monitoring and Observability" section (federation_*), plus per-protocol
traffic counters (village_*); where the spec's name differs from ours (`federated_rounds_completed`),
both are exported. Each `Metrics` owns a private `CollectorRegistry` instead of the
process-global one, so tests and netsim can run many daemons in one process without their
counters colliding ("Duplicated timeseries" errors) or leaking into each other.

Counters are declared without the ``_total`` suffix; prometheus-client appends it on exposition
(``federation_rounds_completed`` -> ``federation_rounds_completed_total``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE", "ROUND_DURATION_BUCKETS", "Metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# Rounds take from under a second (small loopback tests) to several minutes (the spec's alert
# fires at 300 s), so buckets span 0.5 s .. 20 min on a roughly doubling scale.
ROUND_DURATION_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


class Metrics:
    """Every metric villaged exports. Attributes are the prometheus-client objects themselves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.nodes_active = Gauge(
            "federation_nodes_active", "Village members currently connected with a valid certificate.", registry=r
        )
        self.round_duration_seconds = Histogram(
            "federation_round_duration_seconds",
            "Wall time from round start to result or abort.",
            buckets=ROUND_DURATION_BUCKETS,
            registry=r,
        )
        self.participation_rate = Gauge(
            "federation_participation_rate",
            "Fraction (0..1) of invited participants whose input made it into the last completed round.",
            registry=r,
        )
        self.rounds_completed = Counter(
            "federation_rounds_completed", "Rounds that produced an aggregate.", registry=r
        )
        self.rounds_aborted = Counter(
            "federation_rounds_aborted", "Rounds aborted, by reason.", ["reason"], registry=r
        )
        self.failed_authentications = Counter(
            "federation_failed_authentications",
            "Messages or peers rejected for a missing, expired or invalid membership certificate.",
            registry=r,
        )
        self.revoked_refusals = Counter(
            "federation_revoked_member_refusals",
            "Requests, frames and admissions refused because the member is on the admin's revocation list "
            "(each also counted in federation_failed_authentications).",
            registry=r,
        )
        self.malformed_messages = Counter(
            "federation_malformed_messages", "Messages that failed to decode or validate, by kind.", ["kind"], registry=r
        )
        self.invites_refused = Counter(
            "federation_invites_refused",
            "Round invitations this node refused to answer, by rule (protocol/invites.py): wrong round, attempt, "
            "participants or parameters for the job, or a round its input already went into.",
            ["reason"], registry=r,
        )
        self.inbound_refused = Counter(
            "village_inbound_refused",
            "Inbound requests refused from their length prefix, before a byte of the body was read, by libp2p "
            "protocol id and reason (members only, revoked, too large, inbound budget, rate limited, too many "
            "concurrent streams).",
            ["protocol", "reason"], registry=r,
        )
        self.bytes_sent = Counter(
            "village_bytes_sent", "Payload bytes sent, by libp2p protocol id.", ["protocol"], registry=r
        )
        self.bytes_received = Counter(
            "village_bytes_received", "Payload bytes received, by libp2p protocol id.", ["protocol"], registry=r
        )
        self.input_refusals = Counter(
            "federation_input_refusals",
            "Jobs this node's input policy kept from using its input, by stage (join, round).",
            ["stage"],
            registry=r,
        )
        self.training_rounds_prepared = Counter(
            "village_training_rounds_prepared",
            "Training rounds this node trained its local update for.",
            registry=r,
        )
        self.training_model_mismatches = Counter(
            "village_training_model_mismatches",
            "Training rounds after which this node derived another model than the one its coordinator signed.",
            registry=r,
        )
        self.prior_stability = Gauge(
            "federation_prior_stability",
            "1 - fraction (0..1) of routing decisions that changed from the previous routing-priors round.",
            registry=r
        )
        self.model_diversity = Gauge(
            "federation_model_diversity",
            "Normalized entropy (0..1) of the request patterns' optimal models in the last routing-priors aggregate.",
            registry=r
        )
        self.convergence_rate = Gauge(
            "federation_convergence_rate",
            "1 - mean relative change (0..1) of the aggregated routing-prior values from the previous round "
            "(protocol/priors.py convergence_rate): 1 once the priors stop moving.",
            registry=r
        )
        self.encryption_errors = Counter(
            "federation_encryption_errors",
            "Peer bytes that failed a cryptographic check, by check: sealed_share (a share that does not decrypt "
            "and authenticate), signature (a frame or record whose signature does not verify).",
            ["check"], registry=r,
        )
        for check in ("sealed_share", "signature"):  # shown at 0 from the start: an alert can rate() them
            self.encryption_errors.labels(check=check)
        r.register(_SpecAliases(self))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (serve with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _SpecAliases(Collector):
    """The spec's names where ours differ, read from our metric at scrape time (never counted twice):
    `federated_rounds_completed` (the spec's "federated") mirrors `federation_rounds_completed`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("federated_rounds_completed", "")]

    def collect(self) -> Iterable[Metric]:
        total = sum(s.value for family in self._metrics.rounds_completed.collect() for s in family.samples
                    if s.name.endswith("_total"))
        yield CounterMetricFamily("federated_rounds_completed",
                                  "The spec's name for federation_rounds_completed (same value).", value=total)
