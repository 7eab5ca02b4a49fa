"""Distributed DP: the exact discrete Gaussian sampler (mean, variance, pmf), calibration, noise
scaling with n_min, RDP composition and the notes' test vectors, and the overflow rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol import dp
from protocol.crypto import DeterministicRandom
from protocol.errors import ParameterError
from protocol.jobs import JobSpec
from protocol.quantize import K_SIGMA, Quantizer

PRIVACY = {"epsilon": 1.0, "delta": 1e-5, "budget_epsilon": 3.0}


def test_notes_test_vectors() -> None:
    # notes §6: rho_tot = 0.5, delta = 1e-5 -> 4.7284 (CKS cdp_eps), 5.2985 (simple bound)
    assert dp.zcdp_epsilon(0.5, 1e-5) == pytest.approx(4.7284, abs=1e-4)
    assert dp.simple_zcdp_epsilon(0.5, 1e-5) == pytest.approx(5.2985, abs=1e-4)
    # Gaussian z = 10 for 100 rounds: rho = 100 / (2 * 10^2) = 0.5, as composed RDP
    per_round = dp.ORDERS / (2 * 10.0**2)
    assert dp.epsilon_from_rdp(100 * per_round, 1e-5) == pytest.approx(4.7284, abs=1e-4)


@pytest.mark.parametrize("sigma", [1, 3, 40, 10_000, 3_000_000])
def test_sampler_mean_and_variance(sigma: int) -> None:
    n = 40_000
    draws = dp.sample_discrete_gaussian(sigma, n, DeterministicRandom(sigma.to_bytes(8, "big")))
    assert draws.dtype == np.int64 and draws.shape == (n,)
    variance = dp.discrete_gaussian_variance(sigma * sigma)
    assert abs(draws.mean()) < 5 * math.sqrt(variance / n)
    # var of the sample variance ~ 2 sigma^4 / n (Gaussian kurtosis): 5 standard errors
    assert abs(draws.var() / variance - 1) < 5 * math.sqrt(2 / n)


def test_sampler_matches_the_discrete_gaussian_pmf() -> None:
    sigma, n = 2, 60_000
    draws = dp.sample_discrete_gaussian(sigma, n, DeterministicRandom(b"pmf"))
    support = np.arange(-8, 9)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    expected = n * weights / dp_normalizer(sigma)
    observed = np.array([(draws == y).sum() for y in support])
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 45  # 17 cells: the 0.9999 quantile of chi2(16) is ~42
    kl = float(np.sum(np.where(observed > 0, observed / n * np.log((observed / n) / (expected / n)), 0)))
    assert kl < 1e-3


def dp_normalizer(sigma: int) -> float:
    y = np.arange(-40 * sigma, 40 * sigma + 1, dtype=float)
    return float(np.exp(-(y**2) / (2 * sigma**2)).sum())


def test_sampler_is_reproducible_from_the_seed_and_rejects_bad_sigma() -> None:
    a = dp.sample_discrete_gaussian(5, 100, DeterministicRandom(b"s"))
    assert np.array_equal(a, dp.sample_discrete_gaussian(5, 100, DeterministicRandom(b"s")))
    assert not np.array_equal(a, dp.sample_discrete_gaussian(5, 100, DeterministicRandom(b"t")))
    for bad in (0, -1, 2.5, dp.MAX_SIGMA + 1):
        with pytest.raises(ParameterError):
            dp.sample_discrete_gaussian(bad, 3, DeterministicRandom(b"s"))  # type: ignore[arg-type]


def plan(min_participants: int, scale: float | None = 1000.0, colluders: int = 0, **privacy: float) -> dp.NoisePlan:
    spec = dp.PrivacySpec(**{**PRIVACY, **privacy})  # type: ignore[arg-type]
    return dp.plan_noise(spec, 1.0, scale, 1000, min_participants, 1000, 32, colluders)


def test_calibration_hits_the_per_round_epsilon() -> None:
    p = plan(10)
    assert 0.9 < p.spent(1) <= 1.0
    assert p.delta2 == pytest.approx(1000.0 + math.sqrt(1000))  # s * l2 + sqrt(d)


@pytest.mark.parametrize("n_min", [2, 5, 20, 100])
def test_local_variance_scales_as_one_over_n_min(n_min: int) -> None:
    base = plan(3).variance * 2  # n_min * v is the central variance, the same for every n_min
    assert plan(n_min + 1).variance * n_min == pytest.approx(base, rel=0.02)
    # neither the coordinator's nor the colluders' noise is counted: n_min = min_participants - colluders - 1
    assert plan(n_min + 4, colluders=3).variance == plan(n_min + 1).variance
    assert plan(n_min + 1).n_min == n_min


@pytest.mark.parametrize(("min_participants", "stated"), [(10, 1.0), (3, 0.5), (4, 1.0)])
def test_the_stated_epsilon_holds_against_the_coordinator_which_knows_its_own_noise(min_participants: int, stated: float) -> None:
    """Issue 16: n_min was min_participants - colluders, so against any participant (which knows its own
    share) the real epsilon was larger than stated: n_min 10, stated 1.0, real 1.059."""
    p = plan(min_participants, epsilon=stated, budget_epsilon=10 * stated)
    known_to_a_participant = min_participants - 1  # every share but its own
    real = dp.epsilon_from_rdp(dp.round_rdp(p.delta2, p.dimension, known_to_a_participant, p.n_max, float(p.variance)),
                               p.delta)
    assert real <= stated
    assert p.spent_against_outsiders(3) < p.spent(3)  # an outsider knows no share at all
    view = p.view(3)
    assert view["epsilon_spent"] == round(p.spent(3), 6) and "add or remove" in view["neighbouring"]
    assert view["epsilon_remaining"] == round(p.budget_epsilon - p.spent(3), 6)


def test_the_wrap_probability_bound_is_the_noise_tail_beyond_k_sigma_per_coordinate() -> None:
    p = plan(10)
    assert p.wrap_probability_bound() == pytest.approx(1000 * math.erfc(K_SIGMA / math.sqrt(2)))
    assert 0.0 < p.wrap_probability_bound() < 0.1


def test_composition_adds_rdp_and_grows_sublinearly() -> None:
    p = plan(10)
    assert p.spent(0) == 0.0
    one, four = p.spent(1), p.spent(4)
    assert four == pytest.approx(dp.epsilon_from_rdp(4 * p.round_rdp(), 1e-5))
    assert one < four < 4 * one
    # with tau negligible the curve is zCDP: R releases = rho R
    rho = p.delta2**2 / (2 * p.n_min * p.variance)
    assert four == pytest.approx(dp.zcdp_epsilon(4 * rho, 1e-5), rel=1e-6)
    k = p.affordable_releases()
    assert p.spent(k) <= p.budget_epsilon < p.spent(k + 1)


def test_noise_tail_is_in_the_overflow_check() -> None:
    q = Quantizer(1.0, 1000.0, 100, 32, "nearest")
    room = (1 << 31) - 100 * 1000
    Quantizer(1.0, 1000.0, 100, 32, "nearest", noise_std=(room - 1) / K_SIGMA)
    with pytest.raises(ParameterError, match="noise"):
        Quantizer(1.0, 1000.0, 100, 32, "nearest", noise_std=room / K_SIGMA)
    assert q.noise_std == 0.0


def test_default_scale_leaves_room_for_the_noise_and_max_clients_do_not_wrap() -> None:
    job = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 1000, "privacy": PRIVACY})
    p, q = job.noise_plan(), job.quantizer()
    assert p is not None and q.scale == p.scale and q.noise_std == pytest.approx(p.noise_std_max)
    assert job.max_participants * q.max_step + K_SIGMA * p.noise_std_max < 2**31
    # the finest scale that fits: 1% finer overflows
    with pytest.raises(ParameterError) as info:
        JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 1000, "privacy": PRIVACY,
                           "quantization": {"scale": p.scale * 1.01}})
    assert info.value.field == "quantization.scale"


@pytest.mark.parametrize(("privacy", "extra", "field"), [
    ({"epsilon": 1e-6}, {"dimension": 10**6, "quantization": {"bits": 16}}, "privacy.epsilon"),
    ({"delta": 0.5}, {}, "privacy.delta"),
    ({"epsilon": 0.0}, {}, "privacy.epsilon"),
    ({"budget_epsilon": 0.5}, {}, "privacy.budget_epsilon"),
    ({"mechanism": "skellam"}, {}, "privacy.mechanism"),
    ({"colluders": 3}, {}, "colluders"),  # read as the job's colluders (one adversary for t and for noise)
    ({"l2_clip": -1.0}, {}, "privacy.l2_clip"),
    ({"sigma": 1.0}, {}, "privacy.sigma"),
])
def test_bad_privacy_section_names_the_field(privacy: dict[str, object], extra: dict[str, object], field: str) -> None:
    raw = {"kind": "vector", "data": "x", "dimension": 100, "privacy": {**PRIVACY, **privacy}, **extra}
    with pytest.raises(ParameterError) as info:
        JobSpec.from_dict(raw)
    assert info.value.field == field, str(info.value)


def test_noisy_secure_sum_is_unbiased_with_the_planned_spread() -> None:
    job = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 2000, "min_participants": 4,
                             "max_participants": 8, "privacy": {**PRIVACY, "epsilon": 4.0, "budget_epsilon": 8.0}})
    p, q = job.noise_plan(), job.quantizer()
    assert p is not None
    rng = np.random.default_rng(0)
    inputs = [dp.clip_l2(rng.normal(0, 0.01, 2000), p.l2_clip) for _ in range(4)]
    words = []
    for i, x in enumerate(inputs):
        w = q.quantize(x, rounding_seed=bytes([i]) * 32)
        words.append(dp.add_noise(w, dp.sample_discrete_gaussian(p.sigma, 2000, DeterministicRandom(bytes([i]))), 32))
    total = (np.sum([w.astype(np.uint64) for w in words], axis=0) % (1 << 32)).astype(np.uint32)
    error = q.dequantize_sum(total) - np.sum(inputs, axis=0)
    assert abs(error.mean()) < 5 * p.noise_std(4) / math.sqrt(2000)
    assert error.std() == pytest.approx(p.noise_std(4), rel=0.1)
