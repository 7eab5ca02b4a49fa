"""Job specifications: what a job computes, on what data, and under which round parameters.

A spec arrives as JSON from a user (control API) or as msgpack from a peer (job announcement);
both go through `JobSpec.from_dict`, which names the field at fault in every error. Defaults are
filled in here so every node derives the same round parameters from the same spec.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from protocol.dp import NoisePlan, PrivacySpec, plan_noise
from protocol.errors import ParameterError
from protocol.kinds import KINDS
from protocol.params import MAX_DIMENSION, MAX_PARTICIPANTS, RoundParams
from protocol.quantize import Quantizer
from protocol.training.spec import TrainingSpec

JOB_KINDS = ("vector", "routing-priors", "training")  # each has an entry in protocol.kinds.KINDS
AGGREGATES = ("sum", "mean")


@dataclass(frozen=True, slots=True)
class QuantizationSpec:
    clip: float = 1.0
    scale: float | None = None  # None: the finest scale that cannot wrap for max_participants
    rounding: str = "stochastic"
    bits: int = 32


@dataclass(frozen=True, slots=True)
class JobSpec:
    kind: str
    data: str  # name of the local input each member contributes
    dimension: int = 0  # 0 only while parsing a kind that computes it (routing-priors)
    name: str = ""
    aggregate: str = "sum"
    rounds: int = 1
    round_interval: float = 10.0  # seconds between round starts
    start_delay: float = 10.0  # seconds after creation for members to learn the job and join
    min_participants: int = 3
    max_participants: int = 1000
    neighbours: int = 14
    threshold: int | None = None  # None: the smallest safe t, (k_eff + 1 + colluders) // 2 + 1
    colluders: int = 0  # corrupt participants besides a round's coordinator that t must withstand
    phase_timeout: float = 10.0
    quantization: QuantizationSpec = field(default_factory=QuantizationSpec)
    priors: dict[str, Any] | None = None  # routing-priors key space (protocol/priors.py)
    privacy: PrivacySpec | None = None  # distributed DP (protocol/dp.py); None: no noise
    training: TrainingSpec | None = None  # kind training: the model and how it is trained (protocol/training/)

    @classmethod
    def from_dict(cls, raw: Any) -> JobSpec:
        if not isinstance(raw, dict):
            raise ParameterError("spec", "must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
        for required in ("kind", "data"):
            if required not in raw:
                raise ParameterError(required, "is required")
        kind = KINDS.get(raw["kind"]) if isinstance(raw["kind"], str) else None
        if "dimension" not in raw and not (kind is not None and kind.computes_dimension):
            raise ParameterError("dimension", "is required")
        values = dict(raw)
        if values.get("training") is not None:
            values["training"] = TrainingSpec.from_dict(values["training"])
        privacy = values.pop("privacy", None)
        if isinstance(privacy, dict) and "colluders" in privacy:  # specs before colluders moved up (one adversary)
            privacy = dict(privacy)
            values["colluders"] = max(privacy.pop("colluders"), values.get("colluders", 0))
        quantization = values.pop("quantization", {})
        if not isinstance(quantization, dict):
            raise ParameterError("quantization", "must be an object")
        q_known = set(QuantizationSpec.__dataclass_fields__)
        q_unknown = sorted(set(quantization) - q_known)
        if q_unknown:
            raise ParameterError(f"quantization.{q_unknown[0]}", f"unknown field (known: {', '.join(sorted(q_known))})")
        for key in ("round_interval", "start_delay", "phase_timeout"):
            if type(values.get(key)) is int:
                values[key] = float(values[key])
        for key in ("clip", "scale"):
            if type(quantization.get(key)) is int:
                quantization[key] = float(quantization[key])
        spec = cls(**values, quantization=QuantizationSpec(**quantization),
                   privacy=None if privacy is None else PrivacySpec.from_dict(privacy))
        if "dimension" not in raw and kind is not None:
            spec = replace(spec, dimension=kind.dimension(spec))
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.training is not None:
            values["training"] = self.training.to_dict()
        return values

    def validate(self) -> None:
        _choice("kind", self.kind, JOB_KINDS)
        _choice("aggregate", self.aggregate, AGGREGATES)
        _text("data", self.data, 1, 128)
        _text("name", self.name, 0, 200)
        _int("dimension", self.dimension, 1, MAX_DIMENSION)
        KINDS[self.kind].check_spec(self)
        _int("rounds", self.rounds, 1, 1_000_000)
        _seconds("round_interval", self.round_interval, 0.0, 86_400 * 365)
        _seconds("start_delay", self.start_delay, 0.0, 86_400)
        _int("min_participants", self.min_participants, 2, MAX_PARTICIPANTS)
        _int("max_participants", self.max_participants, self.min_participants, MAX_PARTICIPANTS)
        if self.threshold is not None:
            _int("threshold", self.threshold, 2, self.neighbours + 1)
        # the coordinator and the colluders must leave some participant's noise (and some holder's vote) unknown
        _int("colluders", self.colluders, 0, min(self.neighbours, self.min_participants - 2))
        for participants in {self.min_participants, self.max_participants}:
            params = self.round_params(participants)
            params.check_for(participants, self.colluders)
            holders = params.effective_neighbours(participants) + 1
            if params.threshold >= holders:  # a village's coordinator is a participant, and its vote never counts
                raise ParameterError("threshold", f"t={params.threshold} leaves no quorum with {participants} participants: "
                                                  f"each secret has {holders} holders, the coordinator's vote does not count")
        if self.privacy is not None:
            self.privacy.validate()
        self.quantizer()

    def threshold_for(self, participants: int) -> int:
        """t for a round of n participants: the spec's value, or the smallest t > (k_eff + 1 + colluders)/2."""
        if self.threshold is not None:
            return self.threshold
        return (min(self.neighbours, participants - 1) + 1 + self.colluders) // 2 + 1

    def round_params(self, participants: int) -> RoundParams:
        try:
            return RoundParams(
                dimension=self.dimension,
                bits=self.quantization.bits,
                neighbours=self.neighbours,
                threshold=self.threshold_for(participants),
                min_survivors=self.min_participants,
                phase_timeout=self.phase_timeout,
                masked=self.masked,
            )
        except ParameterError as exc:
            renamed = {"min_survivors": "min_participants", "bits": "quantization.bits"}
            raise ParameterError(renamed.get(exc.field, exc.field), exc.reason) from None

    def noise_plan(self) -> NoisePlan | None:
        """Scale, per-client noise and accounting of a job with `privacy`; None without."""
        if self.privacy is None:
            return None
        q = self.quantization
        try:
            return plan_noise(self.privacy, q.clip, q.scale, self.dimension, self.min_participants,
                              self.max_participants, q.bits, self.colluders)
        except ParameterError as exc:
            field_name = {"clip": "quantization.clip", "bits": "quantization.bits"}.get(exc.field, exc.field)
            raise ParameterError(field_name, exc.reason) from None

    def quantizer(self) -> Quantizer:
        q = self.quantization
        plan = self.noise_plan()
        try:
            if plan is not None:
                return Quantizer(q.clip, plan.scale, self.max_participants, q.bits, q.rounding,  # type: ignore[arg-type]
                                 noise_std=plan.noise_std_max)
            if q.scale is None:
                return Quantizer.for_range(q.clip, self.max_participants, q.bits, q.rounding)  # type: ignore[arg-type]
            return Quantizer(q.clip, q.scale, self.max_participants, q.bits, q.rounding)  # type: ignore[arg-type]
        except ParameterError as exc:
            field_name = exc.field if exc.field == "max_participants" else f"quantization.{exc.field}"
            raise ParameterError(field_name, exc.reason) from None

    @property
    def masked(self) -> bool:
        """False only for a training job with secure_aggregation false: its rounds are plain sums."""
        return self.training is None or self.training.secure_aggregation

    @property
    def attempt_window(self) -> float:
        """How long one attempt may take before the next coordinator takes over."""
        return 6 * self.phase_timeout


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(name, f"must be one of {', '.join(allowed)}, got {value!r}")


def _text(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not str or not low <= len(value) <= high:
        raise ParameterError(name, f"must be a string of {low} to {high} characters")


def _int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ParameterError(name, f"must be an integer in [{low}, {high}], got {value!r}")


def _seconds(name: str, value: object, low: float, high: float) -> None:
    if type(value) is not float or not math.isfinite(value) or not low <= value <= high:
        raise ParameterError(name, f"must be a number of seconds in [{low:g}, {high:g}], got {value!r}")
