"""The data sets scikit-learn ships (no download), split and partitioned among simulated peers, for
netsim's training workload and the benchmarks; and the centralized baseline they are judged by.

It lives in netsim, not protocol/: scikit-learn reads its bundled files from disk here. Every
function is deterministic for its seed, so a netsim run can be replayed and checked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from protocol.errors import ParameterError
from protocol.training.data import LocalData
from protocol.training.model import Architecture, initial_weights
from protocol.training.trainers import TrainConfig, trainer_named

NAMES = ("digits", "wine", "breast_cancer")
SCHEMES = ("iid", "dirichlet")
#: Dirichlet draws tried before topping up small peers from the largest ones (a draw leaving a peer
#: short is common only for tiny alpha or many peers; the top-up keeps the result deterministic).
MAX_DRAWS = 100


class Split(NamedTuple):
    """A train/test split, unpacked as (X_train, y_train, X_test, y_test)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): float64 features standardized to zero mean and unit variance per feature over the
    whole set (a constant feature stays 0), int64 labels 0..classes-1."""
    from sklearn import datasets

    loaders = {"digits": datasets.load_digits, "wine": datasets.load_wine,
               "breast_cancer": datasets.load_breast_cancer}
    if name not in loaders:
        raise ParameterError("dataset", f"unknown data set {name!r} (known: {', '.join(NAMES)})")
    X, y = loaders[name](return_X_y=True)
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return X, np.asarray(y, dtype=np.int64)


def train_test(X: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """A stratified split (every class in the same proportion on both sides), fixed by `seed`."""
    from sklearn.model_selection import train_test_split

    if not (type(test_fraction) is float and 0.0 < test_fraction < 1.0):
        raise ParameterError("test_fraction", f"must be a number in (0, 1), got {test_fraction!r}")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)
    return Split(X_train, y_train, X_test, y_test)


def partition(y: np.ndarray, peers: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0,
              min_rows: int = 5) -> list[np.ndarray]:
    """Row indices for each of `peers` peers, every row given to exactly one, each peer at least
    `min_rows` rows, sorted within a peer.

    iid: a seeded shuffle cut into near-equal parts. dirichlet: label skew as in Hsu et al. 2019
    ("Measuring the effects of non-identical data distribution"): for each class, the share of each
    peer is drawn from Dirichlet(alpha, ..., alpha); small alpha gives peers few classes. Draws
    leaving a peer below `min_rows` are redrawn (from the same seeded stream) up to MAX_DRAWS times,
    then the shortest peers are topped up with the last rows of the largest."""
    y = np.asarray(y)
    if not (type(peers) is int and peers >= 1):
        raise ParameterError("peers", f"must be a positive integer, got {peers!r}")
    if not (type(min_rows) is int and min_rows >= 0):
        raise ParameterError("min_rows", f"must be a non-negative integer, got {min_rows!r}")
    if len(y) < peers * min_rows:
        raise ParameterError("peers", f"{peers} peers of at least {min_rows} rows need {peers * min_rows} rows, "
                                      f"the data has {len(y)}")
    if scheme not in SCHEMES:
        raise ParameterError("scheme", f"must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(y)), peers)]
    if not (type(alpha) in (int, float) and 0.0 < alpha < float("inf")):
        raise ParameterError("alpha", f"must be a positive number, got {alpha!r}")
    for _ in range(MAX_DRAWS):
        parts = _dirichlet_draw(y, peers, float(alpha), rng)
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(p) for p in parts]
    return [np.sort(p) for p in _top_up(parts, min_rows)]


def _dirichlet_draw(y: np.ndarray, peers: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(peers)]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(peers, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for peer, chunk in enumerate(np.split(rows, cuts)):
            parts[peer].append(chunk)
    return [np.concatenate(chunks).astype(np.int64) for chunks in parts]


def _top_up(parts: list[np.ndarray], min_rows: int) -> list[np.ndarray]:
    parts = [p.copy() for p in parts]
    while True:
        short = min(range(len(parts)), key=lambda i: (len(parts[i]), i))
        if len(parts[short]) >= min_rows:
            return parts
        large = max(range(len(parts)), key=lambda i: (len(parts[i]), -i))
        parts[short] = np.append(parts[short], parts[large][-1])
        parts[large] = parts[large][:-1]


def centralized_accuracy(arch: Architecture, trainer_name: str, X_train: np.ndarray, y_train: np.ndarray,
                         X_test: np.ndarray, y_test: np.ndarray, config: TrainConfig, epochs: int) -> float:
    """Test accuracy of the baseline federated training is judged against: the same trainer, from
    the same initial weights (`initial_weights(arch, config.seed)`), trained on the union of the
    peers' data for `epochs` epochs (config's learning rate, batch size and seed)."""
    trainer = trainer_named(trainer_name)
    train = LocalData(np.asarray(X_train, dtype=np.float64), np.asarray(y_train, dtype=np.int64))
    test = LocalData(np.asarray(X_test, dtype=np.float64), np.asarray(y_test, dtype=np.int64))
    outcome = trainer.train(arch, initial_weights(arch, config.seed), train, replace(config, local_epochs=epochs))
    return trainer.evaluate(arch, outcome.weights, test).accuracy
