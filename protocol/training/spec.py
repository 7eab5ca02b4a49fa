"""The `training` section of a job spec: the model, how members train it locally, how every node
applies the summed update, and who may take part.

It travels inside the job announcement, so it stays small: initial weights other than the
architecture's seeded default are named by their SHA-256 (`initial_model`) and fetched as a blob.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.errors import ParameterError
from protocol.training.model import Architecture
from protocol.training.optimizers import ServerOptimizerSpec
from protocol.training.trainers import TrainConfig

NODE_TYPES = ("server", "desktop", "laptop", "mobile", "edge")


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a node must have to join (the seed's participant_requirements). Values a node cannot
    measure (battery, device type) are its own word: see the README's threat model."""

    min_compute_gflops: float = 0.0
    min_memory_gb: float = 0.0
    min_battery_percent: int = 0
    allowed_node_types: tuple[str, ...] = ()  # empty: any

    @classmethod
    def from_dict(cls, raw: Any, where: str = "participant_requirements") -> Requirements:
        raw = _object(raw, where, cls)
        for key in ("min_compute_gflops", "min_memory_gb"):
            if key in raw:
                raw[key] = _number(f"{where}.{key}", raw[key], 0.0, 1e9)
        if "min_battery_percent" in raw:
            value = raw["min_battery_percent"]
            if type(value) is not int or not 0 <= value <= 100:
                raise ParameterError(f"{where}.min_battery_percent", f"must be an integer in [0, 100], got {value!r}")
        types = raw.get("allowed_node_types", ())
        if not isinstance(types, (list, tuple)):
            raise ParameterError(f"{where}.allowed_node_types", f"must be a list of {', '.join(NODE_TYPES)}")
        for i, kind in enumerate(types):
            if kind not in NODE_TYPES:
                raise ParameterError(f"{where}.allowed_node_types[{i}]", f"must be one of {', '.join(NODE_TYPES)}, "
                                                                          f"got {kind!r}")
        raw["allowed_node_types"] = tuple(sorted(set(types)))
        return cls(**raw)

    def unmet(self, capabilities: Capabilities) -> str | None:
        """The first requirement `capabilities` do not meet, said as a user reads it; None: all met."""
        c = capabilities
        if c.compute_gflops < self.min_compute_gflops:
            return f"min_compute_gflops: this node has {c.compute_gflops:.1f} GFLOPS, the job needs {self.min_compute_gflops:g}"
        if c.memory_gb < self.min_memory_gb:
            return f"min_memory_gb: this node has {c.memory_gb:.1f} GB, the job needs {self.min_memory_gb:g}"
        if self.allowed_node_types and c.device_type not in self.allowed_node_types:
            return (f"allowed_node_types: this node is a {c.device_type}, the job takes "
                    f"{', '.join(self.allowed_node_types)}")
        return self.battery_refusal(c)

    def battery_refusal(self, c: Capabilities) -> str | None:
        """Battery is checked at the join and again before every round: it changes."""
        if c.battery_percent is not None and not c.charging and c.battery_percent < self.min_battery_percent:
            return (f"min_battery_percent: battery at {c.battery_percent} % and not charging, the job needs "
                    f"{self.min_battery_percent} %")
        return None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node brings: measured (cores, memory, GFLOPS) or configured/declared (the rest)."""

    compute_gflops: float
    memory_gb: float
    cores: int
    device_type: str = "server"
    battery_percent: int | None = None  # None: mains powered
    charging: bool = False
    network_type: str = "ethernet"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    architecture: Architecture
    trainer: str = ""  # "": the architecture's built-in trainer
    local_epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    server_optimizer: ServerOptimizerSpec = field(default_factory=ServerOptimizerSpec)
    max_examples: int = 1000  # a member's weight is min(examples, max_examples) / max_examples
    initial_model: str | None = None  # hex SHA-256 of the initial safetensors blob; None: seeded default
    seed: int = 0  # the default initial weights and every member's local shuffling derive from it
    secure_aggregation: bool = True
    requirements: Requirements = field(default_factory=Requirements)

    @classmethod
    def from_dict(cls, raw: Any, where: str = "training") -> TrainingSpec:
        raw = _object(raw, where, cls)
        if "architecture" not in raw:
            raise ParameterError(f"{where}.architecture", "is required")
        raw["architecture"] = Architecture.from_dict(raw["architecture"], f"{where}.architecture")
        if "server_optimizer" in raw:
            raw["server_optimizer"] = ServerOptimizerSpec.from_dict(raw["server_optimizer"], f"{where}.server_optimizer")
        if "requirements" in raw:
            raw["requirements"] = Requirements.from_dict(raw["requirements"], f"{where}.requirements")
        if "learning_rate" in raw:
            raw["learning_rate"] = _number(f"{where}.learning_rate", raw["learning_rate"], 1e-9, 100.0)
        spec = cls(**raw)
        spec.validate(where)
        return spec

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["architecture"] = self.architecture.to_dict()
        values["requirements"]["allowed_node_types"] = list(self.requirements.allowed_node_types)
        return values

    def validate(self, where: str = "training") -> None:
        _int(f"{where}.local_epochs", self.local_epochs, 1, 1000)
        _int(f"{where}.batch_size", self.batch_size, 1, 1_000_000)
        _int(f"{where}.max_examples", self.max_examples, 1, 100_000_000)
        _int(f"{where}.seed", self.seed, 0, (1 << 32) - 1)
        if type(self.trainer) is not str or len(self.trainer) > 64:
            raise ParameterError(f"{where}.trainer", "must be a trainer name of at most 64 characters")
        if self.initial_model is not None and not _is_digest(self.initial_model):
            raise ParameterError(f"{where}.initial_model", "must be the hex SHA-256 of a safetensors model")
        if type(self.secure_aggregation) is not bool:
            raise ParameterError(f"{where}.secure_aggregation", "must be true or false")

    @property
    def trainer_name(self) -> str:
        return self.trainer or self.architecture.kind

    def train_config(self, round_number: int, member: bytes) -> TrainConfig:
        """A member's local training settings for a round: its seed differs per round and member, so
        shuffles differ, and is reproducible by anyone who knows both (netsim replays it)."""
        mixed = (self.seed * 1_000_003 + round_number * 7919 + int.from_bytes(member[:4], "big")) % (1 << 32)
        return TrainConfig(self.local_epochs, self.learning_rate, self.batch_size, mixed)


def _object(raw: Any, where: str, cls: type) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ParameterError(where, "must be an object")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParameterError(f"{where}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
    return dict(raw)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ParameterError(name, f"must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _int(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ParameterError(name, f"must be an integer in [{low}, {high}], got {value!r}")


def _is_digest(value: Any) -> bool:
    return type(value) is str and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
