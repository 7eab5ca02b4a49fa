"""A training round as pure functions of the job spec: what a member contributes from the round's
model and its data, and the model every node derives from the round's sum. villaged runs them on
its own data and results; netsim replays them to check every aggregate and every model digest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.kinds import dequantize_total
from protocol.training import update
from protocol.training.data import LocalData, split_heldout
from protocol.training.model import initial_weights, model_digest, to_safetensors
from protocol.training.optimizers import ServerState, step
from protocol.training.trainers import trainer_named


def _training(spec: Any) -> Any:
    if spec.training is None:
        raise ValueError(f"job of kind {spec.kind} has no training section")
    return spec.training


def _l2_clip(spec: Any) -> float | None:
    plan = spec.noise_plan()
    return None if plan is None else plan.l2_clip


def is_final(spec: Any, round_number: int) -> bool:
    """The last round only evaluates the final model (a job of R training rounds has R + 1)."""
    return round_number >= spec.rounds - 1


def default_initial(spec: Any) -> np.ndarray:
    training = _training(spec)
    return initial_weights(training.architecture, training.seed)


def digest(spec: Any, weights: np.ndarray) -> bytes:
    """SHA-256 of the model's safetensors bytes: what coordinators sign and nodes compare."""
    return bytes.fromhex(model_digest(to_safetensors(_training(spec).architecture, weights)))


def contribution(spec: Any, round_number: int, member: bytes, weights: np.ndarray, data: LocalData) -> np.ndarray:
    """The float vector `member` contributes to a round that starts from `weights` (before quantization):
    its update after local training on its training rows and the evaluation of `weights` on its held-out rows."""
    training = _training(spec)
    trainer = trainer_named(training.trainer_name)
    train, heldout = split_heldout(data)
    evaluation = trainer.evaluate(training.architecture, weights, heldout)
    if is_final(spec, round_number):
        delta, examples = np.zeros_like(weights), len(train.labels)
    else:
        outcome = trainer.train(training.architecture, weights, train, training.train_config(round_number, member))
        delta, examples = outcome.weights - weights, outcome.examples
    return update.encode(delta, examples, evaluation, spec.quantization.clip, training.max_examples, _l2_clip(spec))


def read_sum(spec: Any, words: np.ndarray, survivors: int) -> update.RoundSum:
    """A training round's aggregate words, read back."""
    return update.decode(dequantize_total(spec, words), survivors, spec.quantization.clip, _training(spec).max_examples,
                         _l2_clip(spec))


def advance(spec: Any, round_number: int, weights: np.ndarray, state: ServerState, words: np.ndarray,
            survivors: int) -> tuple[np.ndarray, ServerState]:
    """The model after a round with this aggregate: the server optimizer applied to the weighted mean
    update (the final evaluation round changes nothing)."""
    if is_final(spec, round_number):
        return weights, state
    return step(_training(spec).server_optimizer, weights, read_sum(spec, words, survivors).mean_update, state)
