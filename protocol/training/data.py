"""A node's local training data: parsed from the stored JSON, checked against the job's model, and
split into the rows it trains on and the rows it evaluates the next global model on.

This data never leaves the node; only trained weights and evaluation sums do. Errors name the exact
place (`where.features[3][7]`) so the owner can fix the record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.errors import ParameterError
from protocol.training.model import Architecture

MIN_ROWS = 2  # one to train on and one held out


@dataclass(frozen=True, eq=False, slots=True)
class LocalData:
    """Rows of float64 features (n, f) with int64 class labels (n,)."""

    features: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.features.dtype != np.float64 or self.features.ndim != 2:
            raise ParameterError("features", f"must be a float64 matrix, got {self.features.dtype} {self.features.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (self.features.shape[0],):
            raise ParameterError("labels", f"must be {self.features.shape[0]} int64 labels, got "
                                           f"{self.labels.dtype} {self.labels.shape}")

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def parse_local_data(payload: Any, arch: Architecture, where: str = "data") -> LocalData:
    """A node's {"features": [[...], ...], "labels": [...]} checked against the model: every row has
    `arch.features` finite numbers, every label is an integer class in [0, arch.classes), and there
    are at least MIN_ROWS rows."""
    if not isinstance(payload, dict) or "features" not in payload or "labels" not in payload:
        raise ParameterError(where, 'must be an object {"features": [[...], ...], "labels": [...]}')
    rows, labels = payload["features"], payload["labels"]
    if not isinstance(rows, list):
        raise ParameterError(f"{where}.features", "must be a list of rows")
    if not isinstance(labels, list):
        raise ParameterError(f"{where}.labels", "must be a list of class labels")
    if len(rows) < MIN_ROWS:
        raise ParameterError(f"{where}.features", f"has {len(rows)} rows, at least {MIN_ROWS} are needed")
    if len(labels) != len(rows):
        raise ParameterError(f"{where}.labels", f"has {len(labels)} labels for {len(rows)} rows")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != arch.features:
            size = f"{len(row)} values" if isinstance(row, list) else repr(row)[:40]
            raise ParameterError(f"{where}.features[{i}]", f"is {size}, the model needs a list of {arch.features}")
        for j, value in enumerate(row):
            if not _finite_number(value):
                raise ParameterError(f"{where}.features[{i}][{j}]", f"is {value!r}, not a finite number")
    for i, label in enumerate(labels):
        if type(label) is not int or not 0 <= label < arch.classes:
            raise ParameterError(f"{where}.labels[{i}]", f"is {label!r}, not a class in [0, {arch.classes})")
    return LocalData(np.asarray(rows, dtype=np.float64).reshape(len(rows), arch.features),
                     np.asarray(labels, dtype=np.int64))


def split_heldout(data: LocalData, fraction: float = 0.2) -> tuple[LocalData, LocalData]:
    """(train, heldout): evenly spaced rows held out (fraction 0.2: every 5th row), at least one row
    on each side. Deterministic, so the same record always gives the same split."""
    if not (type(fraction) is float and 0.0 < fraction < 1.0):
        raise ParameterError("fraction", f"must be a number in (0, 1), got {fraction!r}")
    n = data.rows
    if n < MIN_ROWS:
        raise ParameterError("data", f"has {n} rows, at least {MIN_ROWS} are needed to hold one out")
    held = min(n - 1, max(1, round(n * fraction)))
    heldout = (np.arange(1, held + 1) * n) // held - 1  # the last row of each of `held` equal stretches
    mask = np.zeros(n, dtype=bool)
    mask[heldout] = True
    return (LocalData(data.features[~mask], data.labels[~mask]),
            LocalData(data.features[mask], data.labels[mask]))


def _finite_number(value: object) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is int:
        return abs(value) <= 1 << 1023  # beyond, float() overflows
    return False
