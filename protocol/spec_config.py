"""The configuration block of the federated aggregation spec ("Configuration Management") in
village's terms. A job spec may carry the spec's `federation` section; `translate_job` turns the keys
that mean the same thing into job fields, and refuses the others naming the key and why:

    federation.enabled                           true: nothing to do (a job is running federation);
                                                 false: refused (create no job). For a daemon:
                                                 villaged's join_policy (true: auto, false: manual)
    federation.round_interval_minutes            round_interval = 60 x minutes
    federation.max_round_duration_seconds        phase_timeout = seconds / 5: an attempt runs at most
                                                 5 phases (advertise, share, masked, consistency,
                                                 unmask), each cut off after phase_timeout
    federation.aggregation.minimum_sample_size   priors.min_sample_count (routing-priors): records with
                                                 fewer samples stay on the node
    federation.crypto.key_rotation_hours         accepted, any positive value: every round attempt
                                                 uses fresh X25519 keys, so every rotation period is met
    federation.min_participation_threshold       refused: rounds take a count (min_participants), not a
                                                 fraction; the 0.8 is the LowParticipationRate alert
    federation.aggregation.outlier_threshold     refused: no node ever sees another's input, so there is
                                                 nothing to cut outliers from (validate inputs locally)
    federation.crypto.encryption_algorithm       refused unless "ChaCha20-Poly1305": what seals shares
"""

from __future__ import annotations

import math
from typing import Any

from protocol.errors import ParameterError

ROUND_PHASES = 5  # advertise, share, masked, consistency, unmask: each bounded by phase_timeout
SEALING = "ChaCha20-Poly1305"


def _positive(section: dict[str, Any], key: str, where: str) -> float:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ParameterError(f"{where}.{key}", f"must be a positive number, got {value!r}")
    return float(value)


def _table(section: dict[str, Any], key: str, where: str, known: set[str]) -> dict[str, Any]:
    value = section.get(key, {})
    if not isinstance(value, dict):
        raise ParameterError(f"{where}.{key}", "must be an object")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ParameterError(f"{where}.{key}.{unknown[0]}", f"unknown setting (known: {', '.join(sorted(known))})")
    return value


def translate_job(raw: Any) -> Any:
    """`raw` with its `federation` section (if any) turned into job fields. A field set both ways must
    agree; ParameterError names the spec's key at fault."""
    if not isinstance(raw, dict) or "federation" not in raw:
        return raw
    spec = dict(raw)
    section, where = spec.pop("federation"), "federation"
    if not isinstance(section, dict):
        raise ParameterError(where, "must be an object (the spec's federation block)")
    known = {"enabled", "round_interval_minutes", "max_round_duration_seconds", "min_participation_threshold",
             "aggregation", "crypto"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ParameterError(f"{where}.{unknown[0]}", f"unknown setting (known: {', '.join(sorted(known))})")
    if section.get("enabled", True) is not True:
        raise ParameterError(f"{where}.enabled", "is not true: a disabled federation runs no job (create none)")
    if "min_participation_threshold" in section:
        raise ParameterError(f"{where}.min_participation_threshold",
                             "has no per-round equivalent: rounds need min_participants (a count) and abort below "
                             "it; the spec's 0.8 is the LowParticipationRate alert (villaged/alerts/federation.rules.yml)")
    derived: dict[str, Any] = {}
    if "round_interval_minutes" in section:
        derived["round_interval"] = 60.0 * _positive(section, "round_interval_minutes", where)
    if "max_round_duration_seconds" in section:
        derived["phase_timeout"] = _positive(section, "max_round_duration_seconds", where) / ROUND_PHASES
    aggregation = _table(section, "aggregation", where, {"minimum_sample_size", "outlier_threshold"})
    if "outlier_threshold" in aggregation:
        raise ParameterError(f"{where}.aggregation.outlier_threshold",
                             "cannot be honoured: secure aggregation shows no node another's input, so outliers "
                             "cannot be cut from the sum; validate statistics on each node before data put")
    if "minimum_sample_size" in aggregation:
        minimum = aggregation["minimum_sample_size"]
        if type(minimum) is not int or minimum < 0:
            raise ParameterError(f"{where}.aggregation.minimum_sample_size", f"must be a whole number >= 0, got {minimum!r}")
        if spec.get("kind") != "routing-priors" or not isinstance(spec.get("priors"), dict):
            raise ParameterError(f"{where}.aggregation.minimum_sample_size",
                                 "applies to kind routing-priors with a priors section (per-record sample counts)")
        spec["priors"] = _merge(dict(spec["priors"]), "min_sample_count", minimum, f"{where}.aggregation.minimum_sample_size")
    crypto = _table(section, "crypto", where, {"key_rotation_hours", "encryption_algorithm"})
    if "key_rotation_hours" in crypto:
        _positive(crypto, "key_rotation_hours", f"{where}.crypto")
    if crypto.get("encryption_algorithm", SEALING) != SEALING:
        raise ParameterError(f"{where}.crypto.encryption_algorithm",
                             f"is {crypto['encryption_algorithm']!r}: village seals shares with {SEALING} (not configurable)")
    for key, value in derived.items():
        _merge(spec, key, value, f"{where} ({key})")
    return spec


def _merge(target: dict[str, Any], key: str, value: Any, source: str) -> dict[str, Any]:
    if key in target and target[key] != value:
        raise ParameterError(source, f"gives {key} {value!r}, the spec's {key} says {target[key]!r}")
    target[key] = value
    return target
