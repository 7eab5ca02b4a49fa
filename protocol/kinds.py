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


class InputError(ParameterError):
    """A node's local data cannot serve as input to a job; `field` names where, `reason` what."""


class JobKind(Protocol):
    name: str
    computes_dimension: bool  # True: `dimension` follows from the spec's kind section, not given

    def check_spec(self, spec: Any) -> None:
        """Raise ParameterError naming the field if the spec's kind-specific parts do not fit the kind."""

    def dimension(self, spec: Any) -> int:
        """Length of the vector every member contributes (the same on every node)."""

    def encode(self, spec: Any, payload: Any) -> np.ndarray:
        """The float64 vector this node contributes; raises InputError naming the bad field."""

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        """A readable result from the dequantized sum of `survivors` inputs."""


class VectorKind:
    """Generic numeric vectors: a JSON list (or {"values": [...]}) of `dimension` finite numbers."""

    name = "vector"
    computes_dimension = False

    def check_spec(self, spec: Any) -> None:
        if spec.priors is not None:
            raise ParameterError("priors", "only applies to kind routing-priors")

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

    def check_spec(self, spec: Any) -> None:
        layout = priors.parse_layout(spec.priors)
        if spec.dimension != layout.dimension:
            raise ParameterError("dimension", f"is {spec.dimension}, the priors key space gives {layout.dimension} "
                                              "(leave it out to have it computed)")
        if spec.aggregate != "sum":
            raise ParameterError("aggregate", "must be sum for routing-priors (the decoder forms the ratios)")
        if spec.quantization.clip != 1.0:
            raise ParameterError("quantization.clip", "must be 1 for routing-priors (every slot is pre-scaled to [0, 1])")

    def dimension(self, spec: Any) -> int:
        return priors.parse_layout(spec.priors).dimension

    def encode(self, spec: Any, payload: Any) -> np.ndarray:
        try:
            return priors.encode(priors.parse_layout(spec.priors), payload, where=spec.data)
        except ParameterError as exc:
            raise InputError(exc.field, exc.reason) from None

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        layout = priors.parse_layout(spec.priors)
        quantizer = spec.quantizer()
        floor = 2.0 * quantizer.error_bound(survivors)  # a slot nobody filled sums to 0 within this
        plan = spec.noise_plan()
        if plan is not None:
            floor += 4.0 * plan.noise_std(survivors)
        result = priors.decode(layout, total, floor)
        result.update({"aggregate": "sum", "count": survivors})
        return result


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (VectorKind(), RoutingPriorsKind())}
