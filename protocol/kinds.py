"""Job kinds: how a node's local data becomes the vector it contributes, and how a summed vector
becomes a result a person can read. Each kind is one small object; `KINDS` is the registry.

The secure sum only ever sees the float vector `encode` returns (after quantization), so a kind
decides exactly what leaves a node: nothing else does.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from protocol import priors
from protocol.errors import ParameterError
from protocol.quantize import K_SIGMA
from protocol.training import update
from protocol.training.data import LocalData, parse_local_data

NO_SLOTS = np.zeros(0, dtype=np.int64)


class InputError(ParameterError):
    """A node's local data cannot serve as input to a job; `field` names where, `reason` what."""


class JobKind(Protocol):
    name: str
    computes_dimension: bool  # True: `dimension` follows from the spec's kind section, not given
    per_round: bool  # True: the vector is made anew each round (training, from the round's model)

    def check_spec(self, spec: Any) -> None:
        """Raise ParameterError naming the field if the spec's kind-specific parts do not fit the kind."""

    def dimension(self, spec: Any) -> int:
        """Length of the vector every member contributes (the same on every node)."""

    def encode(self, spec: Any, payload: Any) -> Any:
        """What this node's stored input gives the job, or InputError naming the bad field: the float64
        vector it contributes when the kind is not `per_round`; else the checked local data the round's
        vector is made from (villaged/training.py)."""

    def exact_slots(self, spec: Any) -> np.ndarray:
        """Indices of slots holding whole numbers, which travel unscaled so that their sum is exact."""

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        """A readable result from the dequantized sum of `survivors` inputs."""


class VectorKind:
    """Generic numeric vectors: a JSON list (or {"values": [...]}) of `dimension` finite numbers."""

    name = "vector"
    computes_dimension = False
    per_round = False

    def check_spec(self, spec: Any) -> None:
        if spec.priors is not None:
            raise ParameterError("priors", "only applies to kind routing-priors")
        if spec.training is not None:
            raise ParameterError("training", "only applies to kind training")

    def dimension(self, spec: Any) -> int:
        return int(spec.dimension)

    def encode(self, spec: Any, payload: Any) -> np.ndarray:
        values = payload.get("values") if isinstance(payload, dict) else payload
        if not isinstance(values, list):
            raise InputError(spec.data, 'must be a list of numbers or {"values": [...]}')
        if len(values) != spec.dimension:
            raise InputError(spec.data, f"has {len(values)} values, the job needs {spec.dimension}")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{spec.data}[{i}]", f"is {v!r}, not a finite number")
        return np.asarray(values, dtype=np.float64)

    def exact_slots(self, spec: Any) -> np.ndarray:
        return NO_SLOTS

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        values = total / survivors if spec.aggregate == "mean" else total
        return {"aggregate": spec.aggregate, "count": survivors, "values": values.tolist()}


class RoutingPriorsKind:
    """Federated routing priors (spec "Aggregation Units"): layout, encoding and decoding in protocol/priors.py.

    The spec's `priors` section declares the key space; `dimension` follows from it. Slots are
    pre-scaled to [0, 1], so the quantization clip must stay 1 and the aggregate is a sum.
    """

    name = "routing-priors"
    computes_dimension = True
    per_round = False

    def check_spec(self, spec: Any) -> None:
        if spec.training is not None:
            raise ParameterError("training", "only applies to kind training")
        layout = priors.parse_layout(spec.priors)
        if spec.dimension != layout.dimension:
            raise ParameterError("dimension", f"is {spec.dimension}, the priors key space gives {layout.dimension} "
                                              "(leave it out to have it computed)")
        if spec.aggregate != "sum":
            raise ParameterError("aggregate", "must be sum for routing-priors (the decoder forms the ratios)")
        if spec.quantization.clip != 1.0:
            raise ParameterError("quantization.clip", "must be 1 for routing-priors (every slot is pre-scaled to [0, 1])")
        limit = 1 << (spec.quantization.bits - 1)
        if type(spec.max_participants) is int and spec.max_participants * layout.max_count >= limit:
            raise ParameterError("priors.max_count", f"{spec.max_participants} max_participants x max_count "
                                                     f"{layout.max_count} must stay below 2^{spec.quantization.bits - 1} "
                                                     f"(counts are summed exactly); lower it to at most "
                                                     f"{(limit - 1) // spec.max_participants}")

    def dimension(self, spec: Any) -> int:
        return priors.parse_layout(spec.priors).dimension

    def exact_slots(self, spec: Any) -> np.ndarray:
        return NO_SLOTS if spec.privacy is not None else priors.parse_layout(spec.priors).count_slots()

    def encode(self, spec: Any, payload: Any) -> np.ndarray:
        try:
            return priors.encode(priors.parse_layout(spec.priors), payload, where=spec.data,
                                 exact_counts=spec.privacy is None)
        except ParameterError as exc:
            raise InputError(exc.field, exc.reason) from None

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        layout = priors.parse_layout(spec.priors)
        quantizer = spec.quantizer()
        floor = 2.0 * quantizer.error_bound(survivors)  # a slot nobody filled sums to 0 within this
        plan = spec.noise_plan()
        if plan is not None:
            floor += 4.0 * plan.noise_std(survivors)
        count_floor = 0.5  # whole counts summed exactly
        if spec.privacy is not None:  # counts were pre-scaled (and noised) like every other slot
            total = total.copy()
            total[layout.count_slots()] *= layout.max_count
            count_floor = floor * layout.max_count
        result = priors.decode(layout, total, floor, count_floor)
        result.update({"aggregate": "sum", "count": survivors})
        return result


class TrainingKind:
    """Federated training (protocol/training/): each round every participant trains the round's model
    on its local data set and contributes its weighted update and an evaluation (layout in
    protocol/training/update.py); every node applies the job's server optimizer to the sum.

    A job of R training rounds has R + 1 rounds: the last only evaluates the final model."""

    name = "training"
    computes_dimension = True
    per_round = True

    def check_spec(self, spec: Any) -> None:
        if spec.training is None:
            raise ParameterError("training", "is required for kind training")
        if spec.priors is not None:
            raise ParameterError("priors", "only applies to kind routing-priors")
        if spec.dimension != self.dimension(spec):
            raise ParameterError("dimension", f"is {spec.dimension}, the model gives {self.dimension(spec)} "
                                              "(leave it out to have it computed)")
        if spec.aggregate != "sum":
            raise ParameterError("aggregate", "must be sum for training (the update is a weighted mean of the sum)")
        if spec.rounds < 2:
            raise ParameterError("rounds", "must be at least 2 for training (R training rounds and the final evaluation)")

    def dimension(self, spec: Any) -> int:
        return update.dimension(spec.training.architecture.parameters)

    def exact_slots(self, spec: Any) -> np.ndarray:
        return NO_SLOTS

    def encode(self, spec: Any, payload: Any) -> LocalData:
        try:
            return parse_local_data(payload, spec.training.architecture, spec.data)
        except ParameterError as exc:
            raise InputError(exc.field, exc.reason) from None

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        plan = spec.noise_plan()
        read = update.decode(total, survivors, spec.quantization.clip, spec.training.max_examples,
                             None if plan is None else plan.l2_clip)
        return {"aggregate": "weighted-mean-update", "count": survivors, "examples": round(read.examples, 3),
                "evaluated": round(read.evaluated, 3), "loss": read.loss, "accuracy": read.accuracy,
                "update_norm": float(np.linalg.norm(read.mean_update))}


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (VectorKind(), RoutingPriorsKind(), TrainingKind())}


def describe_input(name: str, payload: Any) -> str:
    """A line on what a stored local input holds, for `villagectl data put/show`: routing-priors
    statistics are checked field by field here (InputError names the field), so a record no job
    could read is refused when it is stored, not rounds later; other JSON is left for the job's kind."""
    values = payload.get("values") if isinstance(payload, dict) and set(payload) == {"values"} else payload
    if isinstance(values, list):
        return f"a list of {len(values)} values (kind vector)"
    if isinstance(payload, dict) and payload and set(payload) <= {"models", "request_patterns", "carbon"}:
        try:
            return priors.describe_statistics(payload, where=name)
        except ParameterError as exc:
            raise InputError(exc.field, exc.reason) from None
    return "JSON of no built-in shape (the kind of a job using it checks it)"


def quantize_input(spec: Any, values: np.ndarray, rounding_seed: bytes | None) -> np.ndarray:
    """A node's words in Z_(2^m): the job's quantizer for scaled slots, the whole numbers as they
    are for the kind's exact slots (their range is checked by the kind's `check_spec`)."""
    words = spec.quantizer().quantize(values, rounding_seed=rounding_seed)
    exact = KINDS[spec.kind].exact_slots(spec)
    words[exact] = (values[exact].astype(np.int64) & ((1 << spec.quantization.bits) - 1)).astype(np.uint32)
    return words


def dequantize_total(spec: Any, words: np.ndarray) -> np.ndarray:
    """The float sum from summed words: scaled slots divided back, exact slots read as signed integers."""
    total = spec.quantizer().dequantize_sum(words)
    exact = KINDS[spec.kind].exact_slots(spec)
    bits = spec.quantization.bits
    signed = words[exact].astype(np.int64)
    total[exact] = np.where(signed >= 1 << (bits - 1), signed - (1 << bits), signed)
    return total


def out_of_range(spec: Any, words: np.ndarray, survivors: int) -> int:
    """Scaled coordinates of a sum of `survivors` inputs beyond what honest inputs can reach: every one at
    +-clip plus K_SIGMA stds of their DP noise. Such a value means the sum wrapped (a noise tail, see
    `NoisePlan.wrap_probability_bound`) or an input outside the quantizer's range: either way that
    coordinate is wrong, so results report the count instead of passing it silently."""
    quantizer = spec.quantizer()
    plan = spec.noise_plan()
    noise = 0.0 if plan is None else K_SIGMA * math.sqrt(survivors * plan.variance)
    limit = survivors * quantizer.max_step + noise
    bits = spec.quantization.bits
    signed = words.astype(np.int64)
    signed = np.where(signed >= 1 << (bits - 1), signed - (1 << bits), signed)
    scaled = np.ones(len(words), dtype=bool)
    scaled[KINDS[spec.kind].exact_slots(spec)] = False
    return int(np.count_nonzero(np.abs(signed[scaled]) > limit))
