"""protocol/training/optimizers.py: each server optimizer against a hand computation, state carried
across rounds, inputs never changed, the spec parsed and refused naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocol.errors import ParameterError
from protocol.training.optimizers import ServerOptimizerSpec, step

# Dyadic values, so the hand computations below are exact in float64.
W = np.array([1.0, -2.0, 0.5])
D = np.array([0.125, 0.0, -0.25])


def test_fedavg_adds_the_scaled_mean_update() -> None:
    weights, state = step(ServerOptimizerSpec(), W, D, {})
    assert weights.tolist() == [1.125, -2.0, 0.25] and state == {}
    weights, _ = step(ServerOptimizerSpec(learning_rate=0.5), W, D, {})
    assert weights.tolist() == [1.0625, -2.0, 0.375]


def test_fedavgm_by_hand() -> None:
    spec = ServerOptimizerSpec("fedavgm", learning_rate=2.0, momentum=0.5)
    w1, s1 = step(spec, W, D, {})
    assert s1["m"].tolist() == [0.125, 0.0, -0.25]  # m1 = 0.5 * 0 + d
    assert w1.tolist() == [1.25, -2.0, 0.0]
    d2 = np.array([0.25, 0.25, 0.25])
    w2, s2 = step(spec, w1, d2, s1)
    assert s2["m"].tolist() == [0.3125, 0.25, 0.125]  # 0.5 * m1 + d2
    assert w2.tolist() == [1.875, -1.5, 0.25]


def test_fedadam_by_hand() -> None:
    spec = ServerOptimizerSpec("fedadam", learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w1, s1 = step(spec, W, D, {})
    for i in range(3):
        m = 0.1 * D[i]
        v = 0.99 * 1e-6 + 0.01 * D[i] ** 2  # v starts at tau^2 (Reddi et al., Algorithm 2)
        assert s1["m"][i] == pytest.approx(m, rel=1e-15, abs=1e-300)
        assert s1["v"][i] == pytest.approx(v, rel=1e-15)
        assert w1[i] == pytest.approx(W[i] + 0.1 * m / (math.sqrt(v) + 1e-3), rel=1e-15)
    w2, s2 = step(spec, w1, D, s1)
    m2 = 0.9 * s1["m"] + (1 - 0.9) * D
    v2 = 0.99 * s1["v"] + (1 - 0.99) * D * D
    assert np.array_equal(s2["m"], m2) and np.array_equal(s2["v"], v2)
    assert np.array_equal(w2, w1 + 0.1 * m2 / (np.sqrt(v2) + 1e-3))
    # a coordinate nobody moves stays put
    assert w2[1] == W[1]


vectors = arrays(np.float64, 6, elements=st.floats(-1e3, 1e3))


@settings(max_examples=60, deadline=None)
@given(weights=vectors, deltas=st.lists(vectors, min_size=1, max_size=4), name=st.sampled_from(["fedavg", "fedavgm", "fedadam"]))
def test_steps_are_pure_and_repeatable(weights: np.ndarray, deltas: list[np.ndarray], name: str) -> None:
    spec = ServerOptimizerSpec(name, learning_rate=0.3)
    state_a: dict[str, np.ndarray] = {}
    state_b: dict[str, np.ndarray] = {}
    wa, wb = weights, weights.copy()
    for delta in deltas:
        kept = (wa.copy(), delta.copy(), {k: v.copy() for k, v in state_a.items()})
        new_a, new_state_a = step(spec, wa, delta, state_a)
        assert np.array_equal(wa, kept[0]) and np.array_equal(delta, kept[1])  # no in-place change
        assert all(np.array_equal(state_a[k], kept[2][k]) for k in kept[2])
        new_b, state_b = step(spec, wb, delta.copy(), state_b)
        assert new_a.tobytes() == new_b.tobytes() and new_a.dtype == np.float64
        assert all(not np.shares_memory(v, delta) for v in new_state_a.values())
        wa, state_a, wb = new_a, new_state_a, new_b
    assert np.all(np.isfinite(wa))


def test_step_refuses_bad_inputs() -> None:
    spec = ServerOptimizerSpec("fedavgm")
    with pytest.raises(ParameterError, match="mean_delta"):
        step(spec, W, D[:2], {})
    with pytest.raises(ParameterError, match="mean_delta"):
        step(spec, W, np.array([np.nan, 0, 0]), {})
    with pytest.raises(ParameterError, match="weights"):
        step(spec, W.astype(np.float32), D.astype(np.float32), {})
    with pytest.raises(ParameterError, match="state"):
        step(spec, W, D, {"v": D})
    with pytest.raises(ParameterError, match="state.m"):
        step(spec, W, D, {"m": D[:1]})


def test_spec_from_dict() -> None:
    assert ServerOptimizerSpec.from_dict({}) == ServerOptimizerSpec()
    spec = ServerOptimizerSpec.from_dict({"name": "fedadam", "learning_rate": 1, "tau": 0.01})
    assert spec.learning_rate == 1.0 and type(spec.learning_rate) is float and spec.tau == 0.01
    assert ServerOptimizerSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(("raw", "field"), [
    ("fedavg", "job.opt"),
    ({"name": "sgd"}, "job.opt.name"),
    ({"lr": 1.0}, "job.opt.lr"),
    ({"learning_rate": 0}, "job.opt.learning_rate"),
    ({"learning_rate": "1"}, "job.opt.learning_rate"),
    ({"momentum": 1.0}, "job.opt.momentum"),
    ({"beta1": -0.1}, "job.opt.beta1"),
    ({"beta2": 1}, "job.opt.beta2"),
    ({"tau": 0.0}, "job.opt.tau"),
    ({"tau": float("inf")}, "job.opt.tau"),
])
def test_spec_refuses_naming_the_field(raw: object, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        ServerOptimizerSpec.from_dict(raw, where="job.opt")
    assert info.value.field == field
    with pytest.raises(ParameterError, match="training_config.server_optimizer"):
        ServerOptimizerSpec(name="adam")
