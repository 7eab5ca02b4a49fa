"""A training job's model: its architecture, its weights as one flat float64 vector, and those
weights as safetensors bytes named by their SHA-256.

Rules:
  1. The flat vector is what the village sums and what the server optimizer steps (every node
     does the same float64 arithmetic on it); tensors exist only at the trainer's edge.
  2. The tensor layout mirrors scikit-learn's estimators exactly (`coef_`/`intercept_` for the
     logistic model, `coefs_`/`intercepts_` for the MLP), so weights map onto an estimator 1:1.
  3. Weights on the wire are safetensors in float64: no pickle (a model from the network never
     runs code), nothing rounded, and the same weights give the same bytes, hence the same digest,
     on every node. A decoder refuses anything else naming the tensor at fault.

Next: protocol/training/trainers.py turns (weights, local data) into new weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.numpy

from protocol.errors import ParameterError

KINDS = ("logistic", "mlp")
DEFAULT_HIDDEN = (32,)
MAX_HIDDEN_LAYERS = 3
# Limits on what a job's creator can make every member allocate and train. A model of 10^7
# float64 parameters is 80 MB per copy; the largest benchmark model has 10^5.
MAX_FEATURES = 100_000
MAX_CLASSES = 10_000
MAX_WIDTH = 100_000
MAX_PARAMETERS = 10_000_000


class ModelError(ParameterError):
    """A model's description or weights are unusable; `field` names the key or tensor at fault."""


Layout = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True, slots=True)
class Architecture:
    """What every node needs to build the same model: kind, input width, classes, hidden widths.

    Checked when built (ModelError naming the "model_config" field), so an Architecture in hand
    is always trainable within the limits above."""

    kind: str
    features: int
    classes: int
    hidden: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(self.kind, self.features, self.classes, self.hidden, "model_config")

    @classmethod
    def from_dict(cls, raw: Any, where: str = "model_config") -> Architecture:
        """Parse a job's model_config; keys other than the four read here belong to the caller."""
        if not isinstance(raw, dict):
            raise ModelError(where, 'must be an object {"architecture", "features", "classes", ...}')
        for key in ("architecture", "features", "classes"):
            if key not in raw:
                raise ModelError(f"{where}.{key}", "is required")
        kind = raw["architecture"]
        if kind not in KINDS:
            raise ModelError(f"{where}.architecture", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        hidden_raw = raw.get("hidden", list(DEFAULT_HIDDEN) if kind == "mlp" else [])
        if not isinstance(hidden_raw, (list, tuple)):
            raise ModelError(f"{where}.hidden", f"must be a list of layer widths, got {hidden_raw!r}")
        hidden = tuple(hidden_raw)
        _check(kind, raw["features"], raw["classes"], hidden, where)
        return cls(kind, raw["features"], raw["classes"], hidden)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.kind, "features": self.features, "classes": self.classes,
                "hidden": list(self.hidden)}

    @property
    def outputs(self) -> int:
        """Output units: scikit-learn models a binary problem with one (the positive class's) score."""
        return 1 if self.classes == 2 else self.classes

    def layout(self) -> Layout:
        """(tensor name, shape) in the fixed order of the flat vector."""
        if self.kind == "logistic":
            return [("coef", (self.outputs, self.features)), ("intercept", (self.outputs,))]
        units = [self.features, *self.hidden, self.outputs]
        layout: Layout = []
        for i in range(len(units) - 1):
            layout += [(f"coefs.{i}", (units[i], units[i + 1])), (f"intercepts.{i}", (units[i + 1],))]
        return layout

    @property
    def parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.layout())


def _check(kind: object, features: object, classes: object, hidden: tuple[Any, ...], where: str) -> None:
    if kind not in KINDS:
        raise ModelError(f"{where}.architecture", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (type(features) is int and 1 <= features <= MAX_FEATURES):
        raise ModelError(f"{where}.features", f"must be an integer in [1, {MAX_FEATURES}], got {features!r}")
    if not (type(classes) is int and 2 <= classes <= MAX_CLASSES):
        raise ModelError(f"{where}.classes", f"must be an integer in [2, {MAX_CLASSES}], got {classes!r}")
    if not isinstance(hidden, tuple):
        raise ModelError(f"{where}.hidden", f"must be a tuple of layer widths, got {hidden!r}")
    if kind == "logistic" and hidden:
        raise ModelError(f"{where}.hidden", "must be empty for a logistic model (it has no hidden layers)")
    if kind == "mlp" and not 1 <= len(hidden) <= MAX_HIDDEN_LAYERS:
        raise ModelError(f"{where}.hidden", f"an mlp has 1 to {MAX_HIDDEN_LAYERS} hidden layers, got {len(hidden)}")
    for i, width in enumerate(hidden):
        if not (type(width) is int and 1 <= width <= MAX_WIDTH):
            raise ModelError(f"{where}.hidden[{i}]", f"must be an integer in [1, {MAX_WIDTH}], got {width!r}")
    units = [features, *hidden, 1 if classes == 2 else classes]
    count = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(units[:-1], units[1:]))
    if count > MAX_PARAMETERS:
        raise ModelError(where, f"has {count} parameters, at most {MAX_PARAMETERS} are allowed")


def initial_weights(arch: Architecture, seed: int) -> np.ndarray:
    """The architecture's default start, the same on every node for the same seed.

    Logistic: zeros (the loss is convex, any start works, zeros is what scikit-learn uses).
    MLP: Glorot-uniform as scikit-learn's `_init_coef` (bound sqrt(6 / (fan_in + fan_out)) for
    relu, weights then biases of each layer), drawn from numpy's PCG64 so the draw is specified by
    numpy's stable Generator rather than by scikit-learn's internals."""
    if arch.kind == "logistic":
        return np.zeros(arch.parameters, dtype=np.float64)
    rng = np.random.default_rng(seed)
    parts = []
    units = [arch.features, *arch.hidden, arch.outputs]
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        parts.append(rng.uniform(-bound, bound, (fan_in, fan_out)).ravel())
        parts.append(rng.uniform(-bound, bound, fan_out))
    return np.concatenate(parts).astype(np.float64, copy=False)


def flatten(arch: Architecture, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The flat float64 vector of `tensors`, which must hold exactly the layout's names and shapes."""
    layout = arch.layout()
    names = [name for name, _ in layout]
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise ModelError(extra[0], f"is not a tensor of this {arch.kind} model (it has {', '.join(names)})")
    parts = []
    for name, shape in layout:
        if name not in tensors:
            raise ModelError(name, "is missing")
        value = np.asarray(tensors[name])
        if value.shape != shape:
            raise ModelError(name, f"has shape {value.shape}, the architecture needs {shape}")
        parts.append(value.astype(np.float64, copy=False).ravel())
    return np.concatenate(parts)


def unflatten(arch: Architecture, flat: np.ndarray) -> dict[str, np.ndarray]:
    """The named tensors of a flat vector, as fresh arrays (changing one leaves `flat` alone)."""
    flat = np.asarray(flat)
    if flat.shape != (arch.parameters,):
        raise ModelError("weights", f"has shape {flat.shape}, the architecture needs ({arch.parameters},)")
    tensors: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in arch.layout():
        size = math.prod(shape)
        tensors[name] = np.array(flat[start:start + size], dtype=np.float64).reshape(shape)
        start += size
    return tensors


def to_safetensors(arch: Architecture, flat: np.ndarray) -> bytes:
    """Deterministic safetensors bytes of the weights: float64 tensors in layout order (the format
    sorts them itself), with the architecture as JSON in the metadata."""
    _require_finite(flat, "weights")
    tensors = unflatten(arch, flat)
    metadata = {"architecture": json.dumps(arch.to_dict(), sort_keys=True, separators=(",", ":"))}
    return bytes(safetensors.numpy.save(tensors, metadata=metadata))


def from_safetensors(arch: Architecture, blob: bytes, where: str = "model") -> np.ndarray:
    """The flat weights in `blob`; ModelError naming `where` and the tensor for anything but this
    architecture's tensors, in float64, all finite. The metadata is not trusted or needed."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ModelError(where, f"must be bytes, got {type(blob).__name__}")
    try:
        tensors = safetensors.numpy.load(bytes(blob))
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a refusal
        raise ModelError(where, f"is not a safetensors file ({exc})") from None
    layout = arch.layout()
    names = [name for name, _ in layout]
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise ModelError(f"{where}.{extra[0]}", f"is not a tensor of this {arch.kind} model (it has {', '.join(names)})")
    for name, shape in layout:
        if name not in tensors:
            raise ModelError(f"{where}.{name}", "is missing")
        value = tensors[name]
        if value.dtype != np.float64:
            raise ModelError(f"{where}.{name}", f"has dtype {value.dtype}, models travel as float64")
        if value.shape != shape:
            raise ModelError(f"{where}.{name}", f"has shape {value.shape}, the architecture needs {shape}")
        _require_finite(value, f"{where}.{name}")
    return flatten(arch, tensors)


def model_digest(blob: bytes) -> str:
    """The name of a model blob: hex SHA-256 of its bytes."""
    return hashlib.sha256(blob).hexdigest()


def _require_finite(values: np.ndarray, field: str) -> None:
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
    if bad.size:
        raise ModelError(field, f"has {bad.size} non-finite values (first at flat index {int(bad[0])})")
