"""The seed's training API body (`POST /v1/training/create_job`, architecture doc section 5.2) in
village's terms: a job spec of kind training, and the initial model's bytes when the body has them.

A body's `training_config.rounds` R gives a job of R + 1 rounds (the last evaluates the final
model). `privacy_config.epsilon` is the whole job's budget: the per-round epsilon is the largest
whose RDP composition over the R + 1 releases stays within it.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import replace
from typing import Any

from protocol.dp import PrivacySpec
from protocol.errors import ParameterError
from protocol.jobs import JobSpec
from protocol.training.model import Architecture, from_safetensors, model_digest

SECTIONS = ("job_name", "model_config", "training_config", "privacy_config", "participant_requirements")
MODEL_KEYS = ("architecture", "features", "classes", "hidden", "initial_weights", "trainer", "seed")
TRAINING_KEYS = ("rounds", "min_participants", "max_participants", "local_epochs", "learning_rate", "batch_size",
                 "server_optimizer", "update_clip", "max_examples", "data", "round_interval", "start_delay",
                 "phase_timeout", "neighbours", "colluders")
PRIVACY_KEYS = ("differential_privacy", "epsilon", "delta", "secure_aggregation", "l2_clip")
DEFAULT_DATA = "training"
DEFAULT_L2_CLIP = 1.0
MAX_INITIAL_MODEL = 64 * 1024 * 1024 - 1  # one transport frame (villaged/blobs.py)


def job_from_request(body: Any) -> tuple[JobSpec, bytes | None]:
    """The job spec a create_job body asks for and its initial model blob (None: the seeded default);
    raises ParameterError naming the body's field."""
    if not isinstance(body, dict):
        raise ParameterError("body", "must be a JSON object {job_name, model_config, training_config, ...}")
    _known("", body, SECTIONS)
    for required in ("job_name", "model_config", "training_config"):
        if required not in body:
            raise ParameterError(required, "is required")
    model = _section(body, "model_config", MODEL_KEYS)
    config = _section(body, "training_config", TRAINING_KEYS)
    privacy = _section(body, "privacy_config", PRIVACY_KEYS)
    architecture = Architecture.from_dict(model, "model_config")
    blob = None
    training: dict[str, Any] = {"architecture": architecture.to_dict()}
    if model.get("initial_weights") is not None:
        blob = _initial_weights(model["initial_weights"], architecture)
        training["initial_model"] = model_digest(blob)
    for key in ("trainer", "seed"):
        if key in model:
            training[key] = model[key]
    for key in ("local_epochs", "learning_rate", "batch_size", "server_optimizer", "max_examples"):
        if key in config:
            training[key] = config[key]
    if "secure_aggregation" in privacy:
        training["secure_aggregation"] = privacy["secure_aggregation"]
    if "participant_requirements" in body:
        training["requirements"] = body["participant_requirements"]
    rounds = config.get("rounds", 10)
    if type(rounds) is not int or not 1 <= rounds <= 1000:
        raise ParameterError("training_config.rounds", f"must be an integer in [1, 1000], got {rounds!r}")
    spec: dict[str, Any] = {
        "kind": "training", "name": body["job_name"], "data": config.get("data", DEFAULT_DATA), "rounds": rounds + 1,
        "training": training, "quantization": {"clip": config.get("update_clip", 1.0)},
    }
    for key in ("min_participants", "max_participants", "round_interval", "start_delay", "phase_timeout",
                "neighbours", "colluders"):
        if key in config:
            spec[key] = config[key]
    parsed = _renamed(lambda: JobSpec.from_dict(spec))
    if privacy.get("differential_privacy", False) is True:
        parsed = _with_privacy(parsed, privacy)
    elif privacy.get("differential_privacy", False) is not False:
        raise ParameterError("privacy_config.differential_privacy", "must be true or false")
    return parsed, blob


def _with_privacy(spec: JobSpec, privacy: dict[str, Any]) -> JobSpec:
    """The spec with the per-round epsilon whose composition over all its rounds fits the job's epsilon."""
    for required in ("epsilon", "delta"):
        if required not in privacy:
            raise ParameterError(f"privacy_config.{required}", "is required with differential_privacy")
    total, delta = _float("privacy_config.epsilon", privacy["epsilon"]), _float("privacy_config.delta", privacy["delta"])
    l2_clip = _float("privacy_config.l2_clip", privacy.get("l2_clip", DEFAULT_L2_CLIP))

    def spent(per_round: float) -> float:
        candidate = replace(spec, privacy=PrivacySpec(per_round, delta, total, l2_clip=l2_clip))
        plan = _renamed(candidate.noise_plan)
        assert plan is not None
        return plan.spent(spec.rounds)

    low, high = total / spec.rounds / 4, total
    if spent(low) > total:
        raise ParameterError("privacy_config.epsilon", f"{total:g} cannot cover {spec.rounds} rounds")
    for _ in range(24):  # bisection in log space: epsilon per round to 0.3 %
        middle = math.sqrt(low * high)
        low, high = (middle, high) if spent(middle) <= total else (low, middle)
    parsed = replace(spec, privacy=PrivacySpec(low, delta, total, l2_clip=l2_clip))
    _renamed(parsed.validate)
    return parsed


def _initial_weights(value: Any, architecture: Architecture) -> bytes:
    where = "model_config.initial_weights"
    if type(value) is not str:
        raise ParameterError(where, "must be the base64 of a safetensors file (villagectl train create --weights FILE)")
    if value.startswith(("http://", "https://")):
        raise ParameterError(where, "URLs are not fetched (a daemon makes no traffic outside the village): give the "
                                    "base64 of a safetensors file")
    try:
        blob = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParameterError(where, "is not valid base64") from None
    if len(blob) > MAX_INITIAL_MODEL:
        raise ParameterError(where, f"is {len(blob)} bytes, members fetch at most {MAX_INITIAL_MODEL} in one frame")
    from_safetensors(architecture, blob, where)  # names the tensor at fault
    return blob


def _renamed(make: Any) -> Any:
    """Errors in the spec built from the body, named by the body's fields."""
    try:
        return make()
    except ParameterError as exc:
        field = exc.field
        for prefix, section in (("training.requirements", "participant_requirements"), ("training.architecture", "model_config"),
                                ("training.secure_aggregation", "privacy_config.secure_aggregation"),
                                ("training", "training_config"), ("quantization.clip", "training_config.update_clip"),
                                ("privacy", "privacy_config")):
            if field == prefix or field.startswith(prefix + "."):
                field = section + field[len(prefix):]
                break
        else:
            if field in TRAINING_KEYS or field in ("rounds", "name", "data"):
                field = "job_name" if field == "name" else f"training_config.{field}"
        raise ParameterError(field, exc.reason) from None


def _section(body: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    value = body.get(name, {})
    if not isinstance(value, dict):
        raise ParameterError(name, "must be an object")
    _known(name, value, keys)
    return value


def _known(where: str, value: dict[str, Any], keys: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(keys))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ParameterError(f"{prefix}{unknown[0]}", f"unknown field (known: {', '.join(keys)})")


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(name, f"must be a number, got {value!r}")
    return float(value)
