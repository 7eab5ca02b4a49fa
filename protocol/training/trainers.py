"""Trainers: (global weights, local data, config) -> (new weights, example count, metrics), and the
evaluation of weights on local data as sums the village can add up securely.

Rules:
  1. Never code from the network. A job names a trainer; a node runs it only if it is built in
     or installed locally under the `village.trainers` entry-point group, and refuses the job
     with `TrainerMissing` otherwise. Built-ins win over installed trainers of the same name.
  2. No hand-written training loops: the built-ins are scikit-learn estimators whose parameters
     are set from the global model; this module only feeds them mini-batches in an order drawn
     from the config's seed.
  3. Deterministic: the same (weights, data, config) gives bit-identical weights on the same
     machine (netsim replays a participant's training to check the aggregate). Different CPUs or
     BLAS builds may differ in the last bits; that is harmless, because every node applies the
     server step to the same agreed aggregate, not to its own replay.
  4. Every class of the model exists on every node (`classes=range(arch.classes)`), so a node
     whose data lacks some classes trains and evaluates all the same.

Next: protocol/training/optimizers.py turns the mean update into the next global model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from protocol.errors import ParameterError
from protocol.training.data import LocalData
from protocol.training.model import Architecture, ModelError, unflatten

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "village.trainers"
#: Per-example log loss cap: one confidently wrong example (p ~ 0) would otherwise make the summed
#: loss infinite; e^-20 ~ 2e-9 is far below any probability a useful model assigns.
MAX_EXAMPLE_LOSS = 20.0
MAX_LOCAL_EPOCHS = 1_000
MAX_SEED = 2**32 - 1  # scikit-learn's random_state range


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """A participant's local training settings for one round (the seed varies per node and round)."""

    local_epochs: int
    learning_rate: float
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if not (type(self.local_epochs) is int and 1 <= self.local_epochs <= MAX_LOCAL_EPOCHS):
            raise ParameterError("training_config.local_epochs",
                                 f"must be an integer in [1, {MAX_LOCAL_EPOCHS}], got {self.local_epochs!r}")
        lr = self.learning_rate
        if type(lr) is int:  # JSON's 1 for 1.0
            lr = float(lr)
            object.__setattr__(self, "learning_rate", lr)
        if not (type(lr) is float and math.isfinite(lr) and 0.0 < lr <= 10.0):
            raise ParameterError("training_config.learning_rate", f"must be a number in (0, 10], got {lr!r}")
        if not (type(self.batch_size) is int and self.batch_size >= 1):
            raise ParameterError("training_config.batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not (type(self.seed) is int and 0 <= self.seed <= MAX_SEED):
            raise ParameterError("seed", f"must be an integer in [0, 2^32 - 1], got {self.seed!r}")


@dataclass(frozen=True, eq=False, slots=True)
class TrainOutcome:
    """New flat weights, the number of examples trained on (the FedAvg weight), and the new
    weights' mean loss and accuracy on those examples ("train_loss", "train_accuracy")."""

    weights: np.ndarray
    examples: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Sums over examples, so that nodes' evaluations add up: summed log loss (each example's at
    most MAX_EXAMPLE_LOSS), correctly classified examples, examples."""

    loss_sum: float
    correct: int
    count: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else math.nan


@runtime_checkable
class Trainer(Protocol):
    """What a trainer provides; installed trainers implement the same (a class or an instance)."""

    name: str

    def supports(self, arch: Architecture) -> bool:
        """Whether this trainer can train models of this architecture."""

    def train(self, arch: Architecture, weights: np.ndarray, data: LocalData, config: TrainConfig) -> TrainOutcome:
        """Train from the global `weights` on local `data`; must not change its inputs."""

    def evaluate(self, arch: Architecture, weights: np.ndarray, data: LocalData) -> Evaluation:
        """Loss and accuracy sums of `weights` on `data`."""


class TrainerMissing(ParameterError):
    """This node has no trainer of the name a job asks for: install it (a package exposing it in
    the `village.trainers` entry-point group) or leave the job to nodes that have it."""


# --- built-ins ------------------------------------------------------------------------------------


class LogisticTrainer:
    """Logistic regression as scikit-learn's SGDClassifier with log loss (one-vs-rest for more than
    two classes, as SGDClassifier does it), constant learning rate, its default small L2 penalty.
    Its allocating partial_fit leaves no state behind that matters: with a constant learning rate
    and no averaging, SGDClassifier's next steps depend only on coef_ and intercept_."""

    name = "logistic"

    def supports(self, arch: Architecture) -> bool:
        return arch.kind == "logistic"

    def _estimator(self, arch: Architecture, weights: np.ndarray, data: LocalData, config: TrainConfig) -> Any:
        from sklearn.linear_model import SGDClassifier

        # shuffle=False: the batch order comes from `_batches`, one seeded permutation per epoch.
        est = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=config.learning_rate,
                            random_state=config.seed, shuffle=False)
        est.partial_fit(data.features[:1], data.labels[:1], classes=np.arange(arch.classes))  # allocates
        tensors = unflatten(arch, weights)
        est.coef_ = np.ascontiguousarray(tensors["coef"])
        est.intercept_ = np.ascontiguousarray(tensors["intercept"])
        return est

    def train(self, arch: Architecture, weights: np.ndarray, data: LocalData, config: TrainConfig) -> TrainOutcome:
        _check_inputs(self, arch, weights, data)
        with _quiet():
            est = self._estimator(arch, weights, data, config)
            for batch in _batches(data.rows, config):
                est.partial_fit(data.features[batch], data.labels[batch])
            new = np.concatenate([est.coef_.ravel(), est.intercept_.ravel()]).astype(np.float64)
            return _outcome(new, data, _score(est.predict_proba(data.features), data.labels))

    def evaluate(self, arch: Architecture, weights: np.ndarray, data: LocalData) -> Evaluation:
        _check_inputs(self, arch, weights, data)
        with _quiet():
            est = self._estimator(arch, weights, data, TrainConfig(1, 1.0, 1, 0))
            return _score(est.predict_proba(data.features), data.labels)


class MLPTrainer:
    """A small relu MLP as scikit-learn's MLPClassifier, plain SGD with a constant learning rate.

    Momentum is 0 and the solver is not Adam on purpose: an estimator is built afresh every round
    (its one allocating partial_fit is then overwritten by the global weights), and with momentum
    or Adam that allocating step would leave optimizer state behind that leaks into the round's
    first real step. Plain local SGD is also what FedAvg assumes; momentum and adaptivity belong
    to the server optimizer (protocol/training/optimizers.py)."""

    name = "mlp"

    def supports(self, arch: Architecture) -> bool:
        return arch.kind == "mlp"

    def _estimator(self, arch: Architecture, weights: np.ndarray, data: LocalData, config: TrainConfig) -> Any:
        from sklearn.neural_network import MLPClassifier

        # A batch larger than the data makes scikit-learn warn and clip; clip here instead.
        batch = min(config.batch_size, data.rows)
        est = MLPClassifier(hidden_layer_sizes=arch.hidden, solver="sgd", learning_rate="constant",
                            learning_rate_init=config.learning_rate, momentum=0.0, batch_size=batch,
                            random_state=config.seed, shuffle=False)
        est.partial_fit(data.features[:batch], data.labels[:batch], classes=np.arange(arch.classes))  # allocates
        tensors = unflatten(arch, weights)
        layers = len(arch.hidden) + 1
        est.coefs_ = [np.ascontiguousarray(tensors[f"coefs.{i}"]) for i in range(layers)]
        est.intercepts_ = [np.ascontiguousarray(tensors[f"intercepts.{i}"]) for i in range(layers)]
        return est

    def train(self, arch: Architecture, weights: np.ndarray, data: LocalData, config: TrainConfig) -> TrainOutcome:
        _check_inputs(self, arch, weights, data)
        with _quiet():
            est = self._estimator(arch, weights, data, config)
            for order in _epochs(data.rows, config):  # partial_fit is one pass in the given order
                est.partial_fit(data.features[order], data.labels[order])
            new = np.concatenate([part.ravel() for pair in zip(est.coefs_, est.intercepts_) for part in pair])
            return _outcome(new.astype(np.float64), data, _score(est.predict_proba(data.features), data.labels))

    def evaluate(self, arch: Architecture, weights: np.ndarray, data: LocalData) -> Evaluation:
        _check_inputs(self, arch, weights, data)
        with _quiet():
            est = self._estimator(arch, weights, data, TrainConfig(1, 1.0, 1, 0))
            return _score(est.predict_proba(data.features), data.labels)


BUILT_IN: dict[str, Trainer] = {t.name: t for t in (LogisticTrainer(), MLPTrainer())}


def default_trainer(arch: Architecture) -> str:
    """The built-in trainer for an architecture: its kind."""
    return arch.kind


def trainer_named(name: str, installed: Iterable[EntryPoint] | None = None) -> Trainer:
    """The trainer a job names: a built-in, else one installed in the `village.trainers` entry-point
    group (the entry point loads a Trainer class, instantiated without arguments, or an instance).

    `installed` defaults to this environment's entry points; pass others to look elsewhere."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    if installed is None:
        # Imported here: importlib.metadata loads the email package, and with it socket, which
        # protocol/'s import check keeps out of every module.
        from importlib.metadata import entry_points

        installed = entry_points(group=ENTRY_POINT_GROUP)
    points = list(installed)
    for point in points:
        if point.name == name:
            return _load(point)
    names = ", ".join(sorted({p.name for p in points} - set(BUILT_IN))) or "none"
    raise TrainerMissing("trainer", f"no trainer {name!r} on this node (built in: {', '.join(BUILT_IN)}; "
                                    f"installed: {names})")


def _load(point: EntryPoint) -> Trainer:
    try:
        loaded = point.load()
        trainer = loaded() if isinstance(loaded, type) else loaded
    except Exception as exc:  # noqa: BLE001 - a broken plug-in refuses the job, it does not crash the node
        raise TrainerMissing("trainer", f"trainer {point.name!r} ({point.value}) is installed but does not load: "
                                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(trainer, Trainer):
        raise TrainerMissing("trainer", f"trainer {point.name!r} ({point.value}) lacks name, supports, train or "
                                        "evaluate")
    return trainer


# --- shared helpers -------------------------------------------------------------------------------


def _check_inputs(trainer: Trainer, arch: Architecture, weights: np.ndarray, data: LocalData) -> None:
    if not trainer.supports(arch):
        raise ModelError("model_config.architecture", f"trainer {trainer.name!r} does not train {arch.kind} models")
    if np.shape(weights) != (arch.parameters,):
        raise ModelError("weights", f"has shape {np.shape(weights)}, the architecture needs ({arch.parameters},)")
    if data.features.shape[1] != arch.features:
        raise ParameterError("data.features", f"rows have {data.features.shape[1]} values, the model needs {arch.features}")
    if data.rows == 0:
        raise ParameterError("data", "has no rows")
    if data.labels.min() < 0 or data.labels.max() >= arch.classes:
        raise ParameterError("data.labels", f"must be classes in [0, {arch.classes})")


def _epochs(rows: int, config: TrainConfig) -> Iterator[np.ndarray]:
    """One permutation of the rows per epoch, from the seed alone."""
    rng = np.random.default_rng(config.seed)
    for _ in range(config.local_epochs):
        yield rng.permutation(rows)


def _batches(rows: int, config: TrainConfig) -> Iterator[np.ndarray]:
    for order in _epochs(rows, config):
        for start in range(0, rows, config.batch_size):
            yield order[start:start + config.batch_size]


def _score(proba: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Sums that are always finite (they enter the secure sum): an example whose probabilities
    overflowed counts as wrong, with the capped loss."""
    broken = ~np.all(np.isfinite(proba), axis=1)
    proba = np.where(broken[:, None], 0.0, proba)
    picked = proba[np.arange(len(labels)), labels]
    losses = np.minimum(-np.log(np.maximum(picked, math.exp(-MAX_EXAMPLE_LOSS))), MAX_EXAMPLE_LOSS)
    correct = int(np.count_nonzero((np.argmax(proba, axis=1) == labels) & ~broken))
    return Evaluation(float(np.sum(losses)), correct, int(len(labels)))


def _outcome(weights: np.ndarray, data: LocalData, fit: Evaluation) -> TrainOutcome:
    if not np.all(np.isfinite(weights)):
        raise ParameterError("training_config.learning_rate", "training diverged (non-finite weights); lower it")
    return TrainOutcome(weights, data.rows, {"train_loss": fit.loss, "train_accuracy": fit.accuracy})


@contextmanager
def _quiet() -> Iterator[None]:
    """scikit-learn without noise, and divergence as a field error.

    ConvergenceWarning is silenced: a few local epochs never 'converge', by design. Overflow is
    silenced too: weights that overflow evaluate as probability 0 (loss capped, see `_score`), and
    training that overflows ends in scikit-learn's "non-finite parameter weights" ValueError,
    which becomes a ParameterError naming the learning rate."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            yield
        except ValueError as exc:
            if "non-finite" not in str(exc):
                raise
            raise ParameterError("training_config.learning_rate", f"training diverged ({exc}); lower it") from None
