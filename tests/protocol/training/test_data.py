"""protocol/training/data.py: local data parses into float64/int64 arrays, refuses naming the exact
row, column or label, and splits into a deterministic held-out part with rows on both sides."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ParameterError
from protocol.training.data import LocalData, parse_local_data, split_heldout
from protocol.training.model import Architecture

ARCH = Architecture("logistic", 3, 4)


def _payload(rows: int = 10) -> dict[str, list[object]]:
    return {"features": [[float(i), i * 2, -0.5] for i in range(rows)], "labels": [i % 4 for i in range(rows)]}


def test_parses_into_float64_and_int64() -> None:
    data = parse_local_data(_payload(), ARCH, "data")
    assert data.features.dtype == np.float64 and data.features.shape == (10, 3)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert data.features[4].tolist() == [4.0, 8.0, -0.5] and data.rows == 10


def _with(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = dict(_payload())
    payload.update(changes)
    return payload


def _row(i: int, row: object) -> list[object]:
    rows: list[object] = list(_payload()["features"])
    rows[i] = row
    return rows


@pytest.mark.parametrize(("payload", "field"), [
    ([1, 2], "inputs.x"),
    ({"features": []}, "inputs.x"),
    (_with(features="rows"), "inputs.x.features"),
    (_with(labels={"a": 1}), "inputs.x.labels"),
    ({"features": [[1.0, 2.0, 3.0]], "labels": [0]}, "inputs.x.features"),  # one row is too few
    (_with(labels=[0] * 9), "inputs.x.labels"),
    (_with(features=_row(3, [1.0, 2.0])), "inputs.x.features[3]"),
    (_with(features=_row(3, "1,2,3")), "inputs.x.features[3]"),
    (_with(features=_row(3, [1.0, float("nan"), 3.0])), "inputs.x.features[3][1]"),
    (_with(features=_row(7, [1.0, 2.0, float("inf")])), "inputs.x.features[7][2]"),
    (_with(features=_row(7, [True, 2.0, 3.0])), "inputs.x.features[7][0]"),
    (_with(features=_row(7, [1.0, "2", 3.0])), "inputs.x.features[7][1]"),
    (_with(features=_row(7, [1.0, 2.0, 10**400])), "inputs.x.features[7][2]"),
    (_with(labels=[0, 1, 2, 4, 0, 1, 2, 3, 0, 1]), "inputs.x.labels[3]"),
    (_with(labels=[0, 1, -1, 3, 0, 1, 2, 3, 0, 1]), "inputs.x.labels[2]"),
    (_with(labels=[0, 1, 2, 3, 0, 1.0, 2, 3, 0, 1]), "inputs.x.labels[5]"),
    (_with(labels=[0, 1, 2, 3, 0, 1, True, 3, 0, 1]), "inputs.x.labels[6]"),
])
def test_refuses_naming_the_place(payload: object, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_local_data(payload, ARCH, "inputs.x")
    assert info.value.field == field


def test_local_data_checks_its_arrays() -> None:
    with pytest.raises(ParameterError, match="features"):
        LocalData(np.zeros((3, 2), dtype=np.float32), np.zeros(3, dtype=np.int64))
    with pytest.raises(ParameterError, match="labels"):
        LocalData(np.zeros((3, 2)), np.zeros(2, dtype=np.int64))


def test_every_fifth_row_is_held_out() -> None:
    data = parse_local_data(_payload(10), ARCH, "d")
    train, heldout = split_heldout(data)
    assert heldout.features[:, 0].tolist() == [4.0, 9.0]
    assert train.features[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0]
    assert heldout.labels.tolist() == [0, 1]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(2, 300), fraction=st.floats(0.01, 0.99))
def test_split_keeps_every_row_once_and_both_sides_non_empty(rows: int, fraction: float) -> None:
    data = LocalData(np.arange(rows, dtype=np.float64).reshape(rows, 1), np.zeros(rows, dtype=np.int64))
    train, heldout = split_heldout(data, fraction)
    assert train.rows >= 1 and heldout.rows >= 1
    assert sorted(train.features[:, 0].tolist() + heldout.features[:, 0].tolist()) == list(range(rows))
    assert abs(heldout.rows - rows * fraction) <= 1 or heldout.rows in (1, rows - 1)
    again = split_heldout(data, fraction)
    assert np.array_equal(again[1].features, heldout.features)


def test_split_refuses() -> None:
    data = LocalData(np.zeros((1, 2)), np.zeros(1, dtype=np.int64))
    with pytest.raises(ParameterError, match="data"):
        split_heldout(data)
    with pytest.raises(ParameterError, match="fraction"):
        split_heldout(LocalData(np.zeros((4, 2)), np.zeros(4, dtype=np.int64)), 1.0)
