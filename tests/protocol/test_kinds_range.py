"""A coordinate beyond what honest inputs can sum to is counted, not passed silently (issue 16 item 4)."""

from __future__ import annotations

import numpy as np

from protocol.jobs import JobSpec
from protocol.kinds import out_of_range

SPEC = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "min_participants": 3, "max_participants": 10,
                          "quantization": {"rounding": "nearest"}})


def test_honest_extremes_are_in_range_and_a_wrapped_coordinate_is_counted() -> None:
    quantizer = SPEC.quantizer()
    values = np.array([1.0, -1.0, 0.5, 0.0])  # every client at +clip, -clip, ...
    words = sum((quantizer.quantize(values) for _ in range(10)), np.zeros(4, dtype=np.uint32)).astype(np.uint32)
    assert out_of_range(SPEC, words, 10) == 0
    assert out_of_range(SPEC, words, 3) == 3  # ten clients at +-clip and at half clip, in a sum that claims three
    wrapped = words.copy()
    wrapped[2] = np.uint32((1 << 31) + 5)  # the far end of the signed range
    assert out_of_range(SPEC, wrapped, 10) == 1


def test_dp_noise_widens_the_range_by_k_sigma() -> None:
    spec = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 4, "min_participants": 3, "max_participants": 10,
                              "privacy": {"epsilon": 1.0, "delta": 1e-5, "budget_epsilon": 4.0}})
    plan = spec.noise_plan()
    assert plan is not None
    edge = 10 * spec.quantizer().max_step + int(3.9 * (10 * plan.variance) ** 0.5)
    assert out_of_range(spec, np.full(4, edge, dtype=np.uint32), 10) == 0
