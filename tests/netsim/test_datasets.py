"""protocol/training/datasets.py: bundled data sets standardized, stratified deterministic splits,
partitions that give every row to exactly one peer with label skew under Dirichlet, and the
centralized baseline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ParameterError
from netsim import datasets
from protocol.training.model import Architecture
from protocol.training.trainers import TrainConfig


@pytest.mark.parametrize(("name", "shape", "classes"), [("digits", (1797, 64), 10), ("wine", (178, 13), 3),
                                                        ("breast_cancer", (569, 30), 2)])
def test_load_standardizes(name: str, shape: tuple[int, int], classes: int) -> None:
    X, y = datasets.load(name)
    assert X.shape == shape and X.dtype == np.float64 and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == set(range(classes))
    assert np.allclose(X.mean(axis=0), 0, atol=1e-12)
    std = X.std(axis=0)
    assert np.allclose(std[std > 0], 1) and np.all(X[:, std == 0] == 0)  # digits has blank pixels


def test_load_refuses_unknown_names() -> None:
    with pytest.raises(ParameterError) as info:
        datasets.load("mnist")
    assert info.value.field == "dataset" and "'mnist'" in info.value.reason


def test_train_test_is_stratified_and_deterministic() -> None:
    X, y = datasets.load("wine")
    split = datasets.train_test(X, y, test_fraction=0.25, seed=3)
    X_train, y_train, X_test, y_test = split
    assert len(y_test) == 45 and len(y_train) == 133
    assert np.allclose(np.bincount(y_test) / len(y_test), np.bincount(y) / len(y), atol=0.02)
    again = datasets.train_test(X, y, test_fraction=0.25, seed=3)
    assert np.array_equal(again.X_test, X_test) and np.array_equal(again.y_train, y_train)
    assert not np.array_equal(datasets.train_test(X, y, 0.25, seed=4).y_test, y_test)
    with pytest.raises(ParameterError, match="test_fraction"):
        datasets.train_test(X, y, test_fraction=1.5)


@settings(max_examples=40, deadline=None)
@given(peers=st.integers(1, 30), scheme=st.sampled_from(["iid", "dirichlet"]),
       alpha=st.sampled_from([0.05, 0.5, 5.0]), seed=st.integers(0, 2**32 - 1), rows=st.integers(150, 400))
def test_partitions_cover_every_row_exactly_once(peers: int, scheme: str, alpha: float, seed: int, rows: int) -> None:
    y = np.arange(rows, dtype=np.int64) % 10
    parts = datasets.partition(y, peers, scheme, alpha, seed)
    assert len(parts) == peers
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(rows))
    assert min(len(p) for p in parts) >= 5
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    again = datasets.partition(y, peers, scheme, alpha, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def _label_spread(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over peers of the largest class's share of a peer's rows (0.1 for a perfect IID 10-class split)."""
    return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet_skews_labels_and_iid_does_not() -> None:
    _, y = datasets.load("digits")
    iid = datasets.partition(y, 20, "iid", seed=1)
    skewed = datasets.partition(y, 20, "dirichlet", alpha=0.5, seed=1)
    very = datasets.partition(y, 20, "dirichlet", alpha=0.05, seed=1)
    assert _label_spread(y, iid) < 0.2
    assert _label_spread(y, skewed) > 0.3
    assert _label_spread(y, very) > _label_spread(y, skewed)
    classes_per_peer = [len(np.unique(y[p])) for p in very]
    assert np.median(classes_per_peer) <= 4  # most peers see a few classes only


def test_tiny_peers_are_topped_up() -> None:
    # 12 peers x 5 rows out of 60 and alpha tiny: draws leave peers short, the top-up fills them.
    y = np.arange(60, dtype=np.int64) % 3
    parts = datasets.partition(y, 12, "dirichlet", alpha=0.01, seed=0)
    assert sorted(len(p) for p in parts) == [5] * 12
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(60))


def test_partition_refuses() -> None:
    y = np.zeros(20, dtype=np.int64)
    for kwargs, field in [({"peers": 5}, "peers"), ({"peers": 0}, "peers"), ({"peers": 2, "scheme": "shards"}, "scheme"),
                          ({"peers": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
                          ({"peers": 2, "min_rows": -1}, "min_rows")]:
        with pytest.raises(ParameterError) as info:
            datasets.partition(y, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field


def test_centralized_accuracy_is_the_same_trainer_on_the_union() -> None:
    X, y = datasets.load("breast_cancer")
    split = datasets.train_test(X, y, seed=0)
    arch = Architecture("logistic", 30, 2)
    config = TrainConfig(local_epochs=1, learning_rate=0.01, batch_size=32, seed=0)
    accuracy = datasets.centralized_accuracy(arch, "logistic", *split, config, epochs=3)
    assert accuracy > 0.9  # about 0.63 by predicting the majority class
    assert accuracy == datasets.centralized_accuracy(arch, "logistic", *split, config, epochs=3)
