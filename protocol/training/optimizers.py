"""The server step: how every node turns the agreed mean client update into the next global model.

Every node applies the same step to the same securely summed update, so every node holds the same
next model without trusting the coordinator's copy. That only works if the step is exactly
reproducible: pure float64 numpy, elementwise operations only (+, *, /, sqrt are correctly rounded
in IEEE 754, so every CPU gets the same bits), no in-place changes to its inputs, no randomness.

Optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2 and its FedAvgM
baseline), with delta the mean update (client weights minus global weights):
  fedavg   w' = w + lr * delta                          (lr 1: plain FedAvg)
  fedavgm  m' = momentum * m + delta;  w' = w + lr * m'
  fedadam  m' = beta1 * m + (1 - beta1) * delta;  v' = beta2 * v + (1 - beta2) * delta^2;
           w' = w + lr * m' / (sqrt(v') + tau)        with m = 0, v = tau^2 before the first round
The paper has no bias correction and starts from v_{-1} >= tau^2; so does this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from protocol.errors import ParameterError

NAMES = ("fedavg", "fedavgm", "fedadam")
DEFAULT_WHERE = "training_config.server_optimizer"

#: Optimizer state carried from round to round ("m" for fedavgm; "m" and "v" for fedadam).
ServerState = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ServerOptimizerSpec:
    """A job's server optimizer; fields a chosen optimizer does not use are ignored."""

    name: str = "fedavg"
    learning_rate: float = 1.0
    momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam
    beta2: float = 0.99  # fedadam
    tau: float = 1e-3  # fedadam: adaptivity floor, keeps the step bounded where v is ~0

    def __post_init__(self) -> None:
        for key in ("learning_rate", "momentum", "beta1", "beta2", "tau"):
            if type(getattr(self, key)) is int:  # JSON's 1 for 1.0
                object.__setattr__(self, key, float(getattr(self, key)))
        self._validate(DEFAULT_WHERE)

    @classmethod
    def from_dict(cls, raw: Any, where: str = DEFAULT_WHERE) -> ServerOptimizerSpec:
        if not isinstance(raw, dict):
            raise ParameterError(where, f'must be an object {{"name": one of {", ".join(NAMES)}, ...}}')
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(f"{where}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        try:
            return cls(**raw)
        except ParameterError as exc:  # name the field where the caller found it
            raise ParameterError(where + exc.field[len(DEFAULT_WHERE):], exc.reason) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _validate(self, where: str) -> None:
        if self.name not in NAMES:
            raise ParameterError(f"{where}.name", f"must be one of {', '.join(NAMES)}, got {self.name!r}")
        _number(f"{where}.learning_rate", self.learning_rate, 0.0, 100.0, low_open=True)
        _number(f"{where}.momentum", self.momentum, 0.0, 1.0)
        _number(f"{where}.beta1", self.beta1, 0.0, 1.0)
        _number(f"{where}.beta2", self.beta2, 0.0, 1.0)
        _number(f"{where}.tau", self.tau, 0.0, 1.0, low_open=True, high_open=False)


def _number(field: str, value: object, low: float, high: float, *, low_open: bool = False,
            high_open: bool = True) -> None:
    if type(value) is float and math.isfinite(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if above and below:
            return
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ParameterError(field, f"must be a number in {interval}, got {value!r}")


def step(spec: ServerOptimizerSpec, weights: np.ndarray, mean_delta: np.ndarray,
         state: ServerState) -> tuple[np.ndarray, ServerState]:
    """The next global weights and optimizer state; `weights`, `mean_delta` and `state` are left as
    they are. An empty `state` is the first round's."""
    weights = np.asarray(weights)
    mean_delta = np.asarray(mean_delta)
    if weights.ndim != 1 or weights.dtype != np.float64:
        raise ParameterError("weights", f"must be a flat float64 vector, got {weights.dtype} {weights.shape}")
    if mean_delta.shape != weights.shape or mean_delta.dtype != np.float64:
        raise ParameterError("mean_delta", f"must be float64 of shape {weights.shape}, got {mean_delta.dtype} "
                                           f"{mean_delta.shape}")
    if not np.all(np.isfinite(mean_delta)):
        raise ParameterError("mean_delta", "has non-finite values")
    expected = {"fedavg": (), "fedavgm": ("m",), "fedadam": ("m", "v")}[spec.name]
    if state and sorted(state) != sorted(expected):
        raise ParameterError("state", f"holds {', '.join(sorted(state))}; {spec.name} keeps {', '.join(expected) or 'none'}")
    for key, value in state.items():
        if np.shape(value) != weights.shape or np.asarray(value).dtype != np.float64:
            raise ParameterError(f"state.{key}", f"must be float64 of shape {weights.shape}")

    lr = spec.learning_rate
    if spec.name == "fedavg":
        return weights + lr * mean_delta, {}
    if spec.name == "fedavgm":
        m = spec.momentum * state["m"] + mean_delta if state else mean_delta.copy()
        return weights + lr * m, {"m": m}
    m_prev = state["m"] if state else np.zeros_like(weights)
    v_prev = state["v"] if state else np.full_like(weights, spec.tau * spec.tau)
    m = spec.beta1 * m_prev + (1.0 - spec.beta1) * mean_delta
    v = spec.beta2 * v_prev + (1.0 - spec.beta2) * (mean_delta * mean_delta)
    return weights + lr * m / (np.sqrt(v) + spec.tau), {"m": m, "v": v}
