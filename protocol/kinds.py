"""Job kinds: how a node's local data becomes the vector it contributes, and how a summed vector
becomes a result a person can read. Each kind is one small object; `KINDS` is the registry.

The secure sum only ever sees the float vector `encode` returns (after quantization), so a kind
decides exactly what leaves a node: nothing else does.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from protocol.errors import ParameterError


class InputError(ParameterError):
    """A node's local data cannot serve as input to a job; `field` names where, `reason` what."""


class JobKind(Protocol):
    name: str

    def dimension(self, spec: Any) -> int:
        """Length of the vector every member contributes (the same on every node)."""

    def encode(self, spec: Any, payload: Any) -> np.ndarray:
        """The float64 vector this node contributes; raises InputError naming the bad field."""

    def decode(self, spec: Any, total: np.ndarray, survivors: int) -> dict[str, Any]:
        """A readable result from the dequantized sum of `survivors` inputs."""


class VectorKind:
    """Generic numeric vectors: a JSON list (or {"values": [...]}) of `dimension` finite numbers."""

    name = "vector"

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


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (VectorKind(),)}
