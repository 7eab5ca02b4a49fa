"""What a member of a training round contributes, as the one float vector the secure sum adds, and
what every node reads back from the sum.

Layout (P = the model's parameter count, c = the job's quantization clip, the largest coordinate
an update may move):

    [0, P)   w * clip(new - global, -c, c)     the weighted local update
    P        w * c                              the weight: min(examples, max_examples) / max_examples
    P + 1    v * c * min(mean loss, L) / L      the evaluation of the round's *starting* model on
    P + 2    v * c * accuracy                   the member's held-out rows, weighted by
    P + 3    v * c                              v = min(held-out rows, max_examples) / max_examples

So sum[0:P] / (sum[P] / c) is the weighted mean update (FedAvg), and the evaluation slots give
the village's loss and accuracy without any member's numbers. Every scaled slot lies in [-c, c],
the range the job's quantizer was sized for, so the existing no-wrap check covers the sum.

With differential privacy the weights are not sent (they would need their own noise budget):
the update is clipped in L2 to 0.9 of the job's `l2_clip`, the evaluation slots carry accuracy and
loss at 0.3 * l2_clip each (the whole vector stays within l2_clip), and the reader divides by the
number of survivors, which the signed result states exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.dp import clip_l2
from protocol.training.trainers import MAX_EXAMPLE_LOSS, Evaluation

EXTRA_SLOTS = 4
UPDATE_L2_SHARE = 0.9  # of l2_clip, for the update under DP
EVAL_L2_SHARE = 0.3  # of l2_clip, for each of the two evaluation slots under DP: 0.81 + 2 * 0.09 = 0.99 <= 1


@dataclass(frozen=True, slots=True)
class RoundSum:
    """What every node reads from a training round's sum."""

    mean_update: np.ndarray  # the weighted mean of the members' updates
    examples: float  # weighted training examples (capped per member); under DP: survivors
    loss: float | None  # mean held-out loss of the round's starting model; None: nobody evaluated
    accuracy: float | None
    evaluated: float  # held-out rows (capped per member) behind those; under DP: survivors


def dimension(parameters: int) -> int:
    return parameters + EXTRA_SLOTS


def encode(update: np.ndarray, examples: int, evaluation: Evaluation, clip: float, max_examples: int,
           l2_clip: float | None) -> np.ndarray:
    """A member's vector; `l2_clip` is the job's DP clip (None: no DP)."""
    p = len(update)
    out = np.zeros(p + EXTRA_SLOTS, dtype=np.float64)
    bounded = np.clip(update, -clip, clip)
    accuracy = evaluation.correct / evaluation.count if evaluation.count else 0.0
    loss_share = min(evaluation.loss_sum / evaluation.count, MAX_EXAMPLE_LOSS) / MAX_EXAMPLE_LOSS if evaluation.count else 0.0
    if l2_clip is None:
        w = min(examples, max_examples) / max_examples
        v = min(evaluation.count, max_examples) / max_examples
        out[:p] = w * bounded
        out[p] = w * clip
        out[p + 1:p + 4] = (v * clip * loss_share, v * clip * accuracy, v * clip)
        return out
    out[:p] = clip_l2(bounded, UPDATE_L2_SHARE * l2_clip)
    e = min(EVAL_L2_SHARE * l2_clip, clip)
    out[p + 1:p + 3] = (e * loss_share, e * accuracy)
    return out


def decode(total: np.ndarray, survivors: int, clip: float, max_examples: int, l2_clip: float | None) -> RoundSum:
    """The sum of `survivors` members' vectors, read back (the dequantized float sum)."""
    p = len(total) - EXTRA_SLOTS
    if l2_clip is not None:
        e = min(EVAL_L2_SHARE * l2_clip, clip)
        n = max(survivors, 1)
        loss = float(np.clip(total[p + 1] / (e * n), 0.0, 1.0)) * MAX_EXAMPLE_LOSS
        accuracy = float(np.clip(total[p + 2] / (e * n), 0.0, 1.0))
        return RoundSum(total[:p] / n, float(survivors), loss, accuracy, float(survivors))
    weight = total[p] / clip
    mean = total[:p] / weight if weight > 0 else np.zeros(p)
    evaluated = total[p + 3] / clip
    loss = accuracy = None
    if evaluated * max_examples >= 0.5:  # at least one held-out row behind the sum
        loss = float(np.clip(total[p + 1] / total[p + 3], 0.0, 1.0)) * MAX_EXAMPLE_LOSS
        accuracy = float(np.clip(total[p + 2] / total[p + 3], 0.0, 1.0))
    return RoundSum(mean, float(weight * max_examples), loss, accuracy, float(evaluated * max_examples))
