"""protocol/training/trainers.py: the built-in trainers map flat weights onto scikit-learn's
estimators exactly (checked against a forward pass by hand), train bit-for-bit deterministically,
learn, cope with missing classes; trainers are found among the built-ins and the `village.trainers`
entry points, and a missing or broken one is refused naming the trainer."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ParameterError
from netsim import datasets
from protocol.training.data import LocalData
from protocol.training.model import Architecture, ModelError, initial_weights, unflatten
from protocol.training.trainers import (
    BUILT_IN,
    ENTRY_POINT_GROUP,
    MAX_EXAMPLE_LOSS,
    Evaluation,
    LogisticTrainer,
    MLPTrainer,
    TrainConfig,
    Trainer,
    TrainerMissing,
    TrainOutcome,
    default_trainer,
    trainer_named,
)

LOGISTIC = Architecture("logistic", 64, 10)
MLP = Architecture("mlp", 64, 10, (16,))


@pytest.fixture(scope="module")
def digits() -> tuple[LocalData, LocalData]:
    split = datasets.train_test(*datasets.load("digits"), seed=0)
    return LocalData(split.X_train, split.y_train), LocalData(split.X_test, split.y_test)


def _small(rows: int = 60, features: int = 5, classes: int = 3, seed: int = 0) -> LocalData:
    rng = np.random.default_rng(seed)
    return LocalData(rng.normal(size=(rows, features)), np.arange(rows, dtype=np.int64) % classes)


def test_train_config_refuses_naming_the_field() -> None:
    assert TrainConfig(2, 1, 16, 0).learning_rate == 1.0  # JSON's 1 for 1.0
    for kwargs, field in [
        ({"local_epochs": 0}, "training_config.local_epochs"),
        ({"local_epochs": 2.0}, "training_config.local_epochs"),
        ({"learning_rate": 0.0}, "training_config.learning_rate"),
        ({"learning_rate": float("nan")}, "training_config.learning_rate"),
        ({"learning_rate": True}, "training_config.learning_rate"),
        ({"batch_size": 0}, "training_config.batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
    ]:
        with pytest.raises(ParameterError) as info:
            TrainConfig(**{"local_epochs": 1, "learning_rate": 0.1, "batch_size": 8, "seed": 0, **kwargs})
        assert info.value.field == field


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _by_hand(proba: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    loss = np.minimum(-np.log(proba[np.arange(len(labels)), labels]), MAX_EXAMPLE_LOSS)
    return float(loss.sum()), int((proba.argmax(axis=1) == labels).sum())


def test_logistic_weights_map_onto_the_estimator() -> None:
    rng = np.random.default_rng(1)
    for arch in (Architecture("logistic", 5, 2), Architecture("logistic", 5, 3)):
        data = _small(classes=arch.classes)
        weights = rng.normal(size=arch.parameters)
        t = unflatten(arch, weights)
        scores = 1 / (1 + np.exp(-(data.features @ t["coef"].T + t["intercept"])))
        # scikit-learn: binary is [1 - p, p]; multiclass one-vs-rest normalizes the sigmoids
        proba = np.hstack([1 - scores, scores]) if arch.classes == 2 else scores / scores.sum(axis=1, keepdims=True)
        loss, correct = _by_hand(proba, data.labels)
        got = LogisticTrainer().evaluate(arch, weights, data)
        assert got.count == 60 and got.correct == correct and got.loss_sum == pytest.approx(loss, rel=1e-12)


def test_mlp_weights_map_onto_the_estimator() -> None:
    rng = np.random.default_rng(2)
    for arch in (Architecture("mlp", 5, 2, (4, 3)), Architecture("mlp", 5, 3, (4,))):
        data = _small(classes=arch.classes)
        weights = rng.normal(size=arch.parameters)
        t = unflatten(arch, weights)
        layers = len(arch.hidden) + 1
        a = data.features
        for i in range(layers):
            z = a @ t[f"coefs.{i}"] + t[f"intercepts.{i}"]
            a = np.maximum(z, 0) if i < layers - 1 else z
        proba = np.hstack([1 - 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-a))]) if arch.classes == 2 else _softmax(a)
        loss, correct = _by_hand(proba, data.labels)
        got = MLPTrainer().evaluate(arch, weights, data)
        assert got.correct == correct and got.loss_sum == pytest.approx(loss, rel=1e-9)


def test_log_loss_is_clipped_per_example() -> None:
    arch = Architecture("logistic", 5, 2)
    data = _small(classes=2)
    weights = np.zeros(arch.parameters)
    weights[-1] = -1e6  # intercept: every example is surely class 0, so class-1 examples cost "infinity"
    got = LogisticTrainer().evaluate(arch, weights, data)
    assert got.loss_sum == pytest.approx(30 * MAX_EXAMPLE_LOSS) and got.correct == 30
    assert got.accuracy == 0.5 and got.loss == pytest.approx(got.loss_sum / 60)


@pytest.mark.parametrize("arch", [Architecture("logistic", 5, 3), Architecture("mlp", 5, 3, (6, 4))], ids=["logistic", "mlp"])
def test_training_is_bit_for_bit_deterministic_and_leaves_inputs_alone(arch: Architecture) -> None:
    trainer = trainer_named(default_trainer(arch))
    data = _small()
    weights = initial_weights(arch, 3) + 0.01
    before = (weights.copy(), data.features.copy(), data.labels.copy())
    config = TrainConfig(local_epochs=3, learning_rate=0.05, batch_size=7, seed=11)
    first, second = trainer.train(arch, weights, data, config), trainer.train(arch, weights, data, config)
    assert isinstance(first, TrainOutcome) and first.examples == 60
    assert first.weights.dtype == np.float64 and first.weights.shape == (arch.parameters,)
    assert first.weights.tobytes() == second.weights.tobytes() and first.metrics == second.metrics
    assert not np.array_equal(first.weights, weights)
    assert np.array_equal(weights, before[0]) and np.array_equal(data.features, before[1])
    assert np.array_equal(data.labels, before[2])
    other = trainer.train(arch, weights, data, TrainConfig(3, 0.05, 7, 12))
    assert not np.array_equal(other.weights, first.weights)  # the seed orders the batches
    assert set(first.metrics) == {"train_loss", "train_accuracy"}


def test_logistic_learns_digits(digits: tuple[LocalData, LocalData]) -> None:
    train, test = digits
    trainer = trainer_named("logistic")
    start = trainer.evaluate(LOGISTIC, initial_weights(LOGISTIC, 0), test)
    outcome = trainer.train(LOGISTIC, initial_weights(LOGISTIC, 0), train, TrainConfig(3, 0.01, 32, 0))
    after = trainer.evaluate(LOGISTIC, outcome.weights, test)
    assert start.accuracy < 0.2 and after.accuracy > 0.85  # chance is 0.1
    assert after.loss < start.loss and outcome.metrics["train_accuracy"] > 0.85


def test_mlp_learns_digits(digits: tuple[LocalData, LocalData]) -> None:
    train, test = digits
    trainer = trainer_named("mlp")
    outcome = trainer.train(MLP, initial_weights(MLP, 0), train, TrainConfig(5, 0.05, 32, 0))
    assert trainer.evaluate(MLP, outcome.weights, test).accuracy > 0.85


@pytest.mark.parametrize("arch", [LOGISTIC, MLP], ids=["logistic", "mlp"])
def test_a_node_missing_classes_trains_and_evaluates(arch: Architecture, digits: tuple[LocalData, LocalData]) -> None:
    train, test = digits
    only = np.isin(train.labels, [3, 7])
    local = LocalData(train.features[only][:80], train.labels[only][:80])
    trainer = trainer_named(arch.kind)
    outcome = trainer.train(arch, initial_weights(arch, 1), local, TrainConfig(2, 0.05, 16, 4))
    assert outcome.weights.shape == (arch.parameters,) and outcome.examples == 80
    got = trainer.evaluate(arch, outcome.weights, LocalData(test.features[:50], test.labels[:50]))
    assert got.count == 50 and 0 <= got.correct <= 50


def test_trainers_refuse_mismatched_inputs() -> None:
    data = _small()
    arch = Architecture("logistic", 5, 3)
    with pytest.raises(ModelError, match="does not train mlp") as info:
        LogisticTrainer().train(Architecture("mlp", 5, 3, (4,)), np.zeros(39), data, TrainConfig(1, 0.1, 8, 0))
    assert info.value.field == "model_config.architecture"
    with pytest.raises(ModelError) as info:
        LogisticTrainer().evaluate(arch, np.zeros(3), data)
    assert info.value.field == "weights"
    with pytest.raises(ParameterError) as info:
        LogisticTrainer().evaluate(Architecture("logistic", 4, 3), np.zeros(15), data)
    assert info.value.field == "data.features"
    with pytest.raises(ParameterError) as info:
        LogisticTrainer().evaluate(Architecture("logistic", 5, 2), np.zeros(6), data)  # labels up to 2
    assert info.value.field == "data.labels"


# --- lookup ------------------------------------------------------------------------------------------


class EchoTrainer:
    """A plug-in that returns the global weights unchanged."""

    name = "echo"

    def supports(self, arch: Architecture) -> bool:
        return True

    def train(self, arch: Architecture, weights: np.ndarray, data: LocalData, config: TrainConfig) -> TrainOutcome:
        return TrainOutcome(weights.copy(), data.rows, {})

    def evaluate(self, arch: Architecture, weights: np.ndarray, data: LocalData) -> Evaluation:
        return Evaluation(0.0, 0, data.rows)


ECHO = EchoTrainer()
NOT_A_TRAINER = object()


def _point(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{target}", group=ENTRY_POINT_GROUP)


def test_built_ins_and_default_trainer() -> None:
    assert set(BUILT_IN) == {"logistic", "mlp"}
    assert isinstance(trainer_named("logistic"), LogisticTrainer) and isinstance(trainer_named("mlp"), MLPTrainer)
    assert default_trainer(LOGISTIC) == "logistic" and default_trainer(MLP) == "mlp"
    assert all(isinstance(t, Trainer) for t in BUILT_IN.values())


def test_entry_points_load_a_class_or_an_instance() -> None:
    by_class = trainer_named("echo", installed=[_point("echo", "EchoTrainer")])
    assert isinstance(by_class, EchoTrainer)
    assert trainer_named("echo2", installed=[_point("echo", "EchoTrainer"), _point("echo2", "ECHO")]) is ECHO


def test_a_built_in_cannot_be_shadowed() -> None:
    assert isinstance(trainer_named("logistic", installed=[_point("logistic", "EchoTrainer")]), LogisticTrainer)


def test_missing_and_broken_trainers_are_refused_with_a_reason() -> None:
    with pytest.raises(TrainerMissing) as info:
        trainer_named("torch-cnn", installed=[_point("echo", "EchoTrainer")])
    assert info.value.field == "trainer"
    assert info.value.reason == "no trainer 'torch-cnn' on this node (built in: logistic, mlp; installed: echo)"
    with pytest.raises(TrainerMissing, match=r"installed: none\)"):
        trainer_named("torch-cnn", installed=[])
    broken = EntryPoint(name="gone", value="village_no_such_module:Trainer", group=ENTRY_POINT_GROUP)
    with pytest.raises(TrainerMissing, match="'gone' .* does not load: ModuleNotFoundError"):
        trainer_named("gone", installed=[broken])
    with pytest.raises(TrainerMissing, match="lacks name, supports, train or evaluate"):
        trainer_named("odd", installed=[_point("odd", "NOT_A_TRAINER")])
    assert issubclass(TrainerMissing, ParameterError)


def test_a_trainer_installed_as_a_distribution_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real installed package, as pip leaves it: a module and a dist-info naming its entry point.
    (tmp_path / "village_toy_trainer.py").write_text(
        "class ToyTrainer:\n"
        "    name = 'toy'\n"
        "    def supports(self, arch): return arch.kind == 'logistic'\n"
        "    def train(self, arch, weights, data, config): raise NotImplementedError\n"
        "    def evaluate(self, arch, weights, data): raise NotImplementedError\n"
    )
    info = tmp_path / "village_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: village-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = village_toy_trainer:ToyTrainer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "village_toy_trainer", raising=False)
    try:
        toy = trainer_named("toy")
        assert type(toy).__name__ == "ToyTrainer" and toy.supports(LOGISTIC) and not toy.supports(MLP)
        with pytest.raises(TrainerMissing, match=r"installed: .*\btoy\b"):
            trainer_named("absent")
    finally:
        sys.modules.pop("village_toy_trainer", None)


def test_overflowing_weights_evaluate_to_finite_sums() -> None:
    arch = Architecture("mlp", 5, 3, (4,))
    data = _small()
    got = MLPTrainer().evaluate(arch, initial_weights(arch, 0) * 1e300, data)
    assert got.count == 60 and 0 <= got.correct <= 60
    assert np.isfinite(got.loss_sum) and got.loss_sum <= 60 * MAX_EXAMPLE_LOSS


def test_divergence_is_refused_naming_the_learning_rate() -> None:
    arch = Architecture("mlp", 5, 3, (4,))
    data = LocalData(_small().features * 1e6, _small().labels)
    with pytest.raises(ParameterError, match="diverged") as info:
        MLPTrainer().train(arch, initial_weights(arch, 0), data, TrainConfig(2, 10.0, 4, 0))
    assert info.value.field == "training_config.learning_rate"
