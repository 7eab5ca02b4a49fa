"""Distributed differential privacy: each client adds a share of discrete Gaussian noise before masking.

Mechanism (Kairouz, Liu, Steinke, ICML '21; notes/secure-aggregation.md §6). Every client clips its
float vector to L2 norm `l2_clip`, quantizes it (scale s, stochastic rounding, protocol/quantize.py)
and adds N_Z(0, v) integer noise to every coordinate, v the *local* variance. The secure sum only
releases the total, whose noise is the sum of at least n_min = min_participants - colluders - 1 shares
unknown to the adversary, so it carries variance >= n_min * v although no single client added more than
v. The "- 1" is the coordinator: it is a participant, holds the result, and knows its own share.

Calibration (per round, target (epsilon, delta)):
  * sensitivity in integer units after rounding: Delta2 = s * l2_clip + sqrt(d) (notes §5: stochastic
    rounding can grow the norm by at most sqrt(d) steps; Kairouz et al. Thm 1 as implemented in
    google-research/federated `accounting_utils.py`);
  * per-round RDP of the distributed discrete Gaussian (notes §6, [grf-acct]), n = clients summed:
        eps(alpha) = min(alpha * Delta2^2 / (2 n v) + tau d,  alpha/2 * (Delta2 / sqrt(n v) + tau sqrt(d))^2)
        tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 v k/(k+1))
    We take n = n_min in the Gaussian terms (least noise) and n = max_participants in tau (tau grows
    with n), an upper bound over every survivor count the round accepts. The noise of the coordinator
    and of the job's `colluders` (participants besides it that may collude) is known to them, hence
    n_min = min_participants - colluders - 1: epsilon holds against any participant, with `colluders`
    others. Against an outsider, who knows no share, n = min_participants (`outsider_epsilon`);
  * conversion RDP -> (eps, delta) with CKS Prop. 12 / dp-accounting's `compute_epsilon`:
        eps = min_alpha [eps_tot(alpha) + log(1 - 1/alpha) - (log delta + log alpha) / (alpha - 1)]
    over a dense log grid of orders (reproduces the notes' vector: rho = 0.5, delta = 1e-5 -> 4.7284);
  * v is the smallest perfect square (so the sampler's sigma is an integer and its arithmetic exact)
    at or above the smallest variance whose per-round eps is <= the target; rounding up only adds
    noise, and the accounting uses the v actually sampled.

Accounting: RDP adds over releases, eps_tot(alpha) = R * eps_round(alpha), converted once at the job's
delta: the job's spent epsilon after R releases, which grows roughly like sqrt(R), not R. Every
release counts (a completed Unmasking is a release even if its result never arrives here); no
amplification by sampling (participation is not secretly Poisson-sampled). A round whose release
would push the spent epsilon above `budget_epsilon` is not started.

Overflow: the quantizer's no-wrap check includes the noise tail, max_clients * ceil(clip * s) +
K_SIGMA * sqrt(max_clients * v) < 2^(m-1) (K_SIGMA = 4, notes §5; all max_participants may add
noise). With privacy on, the default scale is the largest that satisfies this; both s and v move
together, so it is found by solving the linear zCDP approximation and then shrinking s until the
exact check passes. A spec that cannot fit is rejected naming the field.

Sampler: Canonne-Kamath-Steinke (NeurIPS '20) with exact integer arithmetic only (no floats touch a
decision), driven by a random-bytes source: `os.urandom` in the daemon, `protocol.crypto.
DeterministicRandom` in tests. Vectorised over numpy uint64 lanes (every Bernoulli decision is an
integer comparison against uniform integers drawn by rejection), see `sample_discrete_gaussian`.
Measured on the 2-core dev box with os.urandom: 4-5 x 10^5 samples/s at sigma ~ 4 x 10^6 (10^5
coordinates in 0.2 s; 0.4 s under heavy load), so noise is drawn inline in `client_input`.
Skellam is not offered: it needs an exact CSPRNG-driven Poisson sampler (notes §6), not written.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from protocol.errors import ParameterError
from protocol.quantize import K_SIGMA

MECHANISMS = ("discrete_gaussian",)
#: The neighbouring relation epsilon is stated for. Under replace-one, epsilon roughly doubles.
NEIGHBOURING = "add or remove one client's vector (replace-one: about twice epsilon)"
#: RDP orders for the conversion: log-spaced, dense enough that the minimum is within 1e-5 of exact.
ORDERS = np.exp(np.linspace(math.log(1.0 + 1e-4), math.log(1e6), 8000))

RandomBytes = Callable[[int], bytes]


# --- spec section -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrivacySpec:
    """The optional `privacy` section of a job spec."""

    epsilon: float  # per round (per release)
    delta: float  # per round and for the job's total
    budget_epsilon: float  # total epsilon the job may spend; rounds beyond it are not started
    mechanism: str = "discrete_gaussian"
    l2_clip: float | None = None  # None: the quantization clip

    @classmethod
    def from_dict(cls, raw: Any) -> PrivacySpec:
        if not isinstance(raw, dict):
            raise ParameterError("privacy", "must be an object {epsilon, delta, budget_epsilon, ...}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(f"privacy.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        for required in ("epsilon", "delta", "budget_epsilon"):
            if required not in raw:
                raise ParameterError(f"privacy.{required}", "is required")
        values = dict(raw)
        for key in ("epsilon", "delta", "budget_epsilon", "l2_clip"):
            if type(values.get(key)) is int:
                values[key] = float(values[key])
        spec = cls(**values)
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        _positive("privacy.epsilon", self.epsilon, 100.0)
        if not (type(self.delta) is float and 0.0 < self.delta < 0.1):
            raise ParameterError("privacy.delta", f"must be a number in (0, 0.1), got {self.delta!r}")
        _positive("privacy.budget_epsilon", self.budget_epsilon, 1e4)
        if self.budget_epsilon < self.epsilon:
            raise ParameterError("privacy.budget_epsilon", f"{self.budget_epsilon:g} is below one round's epsilon {self.epsilon:g}")
        if self.mechanism not in MECHANISMS:
            raise ParameterError("privacy.mechanism", f"must be one of {', '.join(MECHANISMS)} (Skellam needs an exact "
                                                      f"CSPRNG Poisson sampler, not implemented), got {self.mechanism!r}")
        if self.l2_clip is not None:
            _positive("privacy.l2_clip", self.l2_clip, 1e12)


def _positive(name: str, value: object, high: float) -> None:
    if not (type(value) is float and math.isfinite(value) and 0.0 < value <= high):
        raise ParameterError(name, f"must be a number in (0, {high:g}], got {value!r}")


# --- accounting ---------------------------------------------------------------------------------


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> float:
    """(eps, delta)-DP from RDP values at `orders` (CKS Prop. 12, as dp-accounting's compute_epsilon)."""
    eps = rdp + np.log1p(-1.0 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1.0)
    return max(0.0, float(np.min(eps)))


def zcdp_epsilon(rho: float, delta: float, xi: float = 0.0) -> float:
    """(eps, delta) of (xi, rho)-zCDP, i.e. RDP(alpha) = xi + rho * alpha."""
    return epsilon_from_rdp(xi + rho * ORDERS, delta)


def simple_zcdp_epsilon(rho: float, delta: float) -> float:
    """The looser closed form eps = rho + 2 sqrt(rho log(1/delta)) (Bun-Steinke)."""
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


@functools.lru_cache(maxsize=4096)
def _tau(variance: float, clients: int) -> float:
    k = np.arange(1, max(clients, 1), dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * variance * k / (k + 1.0))))


def round_rdp(delta2: float, dimension: int, n_min: int, n_max: int, variance: float,
              orders: np.ndarray = ORDERS) -> np.ndarray:
    """Per-release RDP curve of the distributed discrete Gaussian (notes §6), integer units."""
    tau = _tau(variance, n_max)
    central = n_min * variance
    first = orders * delta2**2 / (2.0 * central) + tau * dimension
    second = orders / 2.0 * (delta2 / math.sqrt(central) + tau * math.sqrt(dimension)) ** 2
    return np.minimum(first, second)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The zCDP rho whose (eps, delta) conversion equals `epsilon` (bisection; eps grows with rho)."""
    low, high = 1e-12, 1e4
    for _ in range(200):
        mid = math.sqrt(low * high)
        if zcdp_epsilon(mid, delta) > epsilon:
            high = mid
        else:
            low = mid
    return low


@functools.lru_cache(maxsize=1024)
def local_variance(delta2: float, dimension: int, n_min: int, n_max: int, epsilon: float, delta: float) -> int:
    """Smallest integer per-client variance v with per-release eps <= epsilon at delta."""
    start = max(1, math.ceil(delta2**2 / (2.0 * n_min * rho_for_epsilon(epsilon, delta))))

    def ok(v: int) -> bool:
        return epsilon_from_rdp(round_rdp(delta2, dimension, n_min, n_max, float(v)), delta) <= epsilon

    high = start
    while not ok(high):  # tau's slack: usually 0 extra steps once v >= 4
        high = high * 2
        if high > 1 << 80:
            raise ParameterError("privacy.epsilon", "no noise level reaches this epsilon")
    low = max(0, start - 1)
    while high - low > 1 and (high - low) > high * 1e-9:
        mid = (low + high) // 2
        if mid >= 1 and ok(mid):
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True, slots=True)
class NoisePlan:
    """Everything a job's noise and accounting follow from; identical on every node."""

    scale: float  # quantization scale s
    variance: int  # per-client discrete Gaussian variance v (integer units, a perfect square)
    delta2: float  # L2 sensitivity after rounding, integer units
    l2_clip: float
    dimension: int
    n_min: int  # noise shares the adversary (a participant and its colluders) does not know
    n_outside: int  # noise shares in the smallest released sum: what an outsider does not know
    n_max: int
    epsilon: float
    delta: float
    budget_epsilon: float

    @property
    def sigma(self) -> int:
        return math.isqrt(self.variance)

    @property
    def noise_std_max(self) -> float:
        """Std of the summed noise when all max_participants add theirs (the overflow check's)."""
        return math.sqrt(self.n_max * self.variance)

    def noise_std(self, survivors: int) -> float:
        """Std, in real units, of the noise in a released sum of `survivors` inputs."""
        return math.sqrt(survivors * self.variance) / self.scale

    def round_rdp(self) -> np.ndarray:
        return round_rdp(self.delta2, self.dimension, self.n_min, self.n_max, float(self.variance))

    def spent(self, releases: int) -> float:
        """Job-level epsilon (at `delta`) after `releases` releases, by RDP composition, against a
        participant (the coordinator included) and the job's colluders."""
        if releases <= 0:
            return 0.0
        return epsilon_from_rdp(releases * self.round_rdp(), self.delta)

    def spent_against_outsiders(self, releases: int) -> float:
        """The same against a node that took part in no round (it knows no noise share)."""
        if releases <= 0:
            return 0.0
        rdp = round_rdp(self.delta2, self.dimension, self.n_outside, self.n_max, float(self.variance))
        return epsilon_from_rdp(releases * rdp, self.delta)

    def wrap_probability_bound(self) -> float:
        """An upper bound on the chance that one round's sum wraps in some coordinate: the no-wrap check
        leaves K_SIGMA noise stds above every client at +-clip, so a wrap needs that worst-case signal
        and a noise excursion beyond K_SIGMA stds (union bound over the coordinates)."""
        return min(1.0, self.dimension * math.erfc(K_SIGMA / math.sqrt(2.0)))

    def affordable_releases(self, limit: int = 1_000_000) -> int:
        """How many releases fit in `budget_epsilon` (spent is increasing in releases)."""
        low, high = 0, 1
        while high <= limit and self.spent(high) <= self.budget_epsilon:
            low, high = high, high * 2
        high = min(high, limit + 1)
        while high - low > 1:
            mid = (low + high) // 2
            if self.spent(mid) <= self.budget_epsilon:
                low = mid
            else:
                high = mid
        return low

    def view(self, releases: int) -> dict[str, Any]:
        spent = self.spent(releases)
        return {
            "mechanism": "discrete_gaussian", "neighbouring": NEIGHBOURING,
            "epsilon_per_round": self.epsilon, "delta": self.delta, "budget_epsilon": self.budget_epsilon,
            "releases": releases, "epsilon_spent": round(spent, 6),
            "epsilon_remaining": round(max(0.0, self.budget_epsilon - spent), 6),
            "epsilon_spent_against_outsiders": round(self.spent_against_outsiders(releases), 6),
            "guarantee": f"epsilon_spent holds against any participant, the coordinator included, and the job's "
                         f"colluders: at least {self.n_min} noise shares of every released sum are unknown to them",
            "rounds_affordable": self.affordable_releases(), "local_variance": self.variance,
            "noise_clients_min": self.n_min, "noise_clients_against_outsiders": self.n_outside,
            "sensitivity_int": self.delta2, "scale": self.scale,
            "wrap_probability_bound_per_round": self.wrap_probability_bound(),
        }


def plan_noise(privacy: PrivacySpec, clip: float, scale: float | None, dimension: int, min_participants: int,
               max_participants: int, bits: int, colluders: int = 0) -> NoisePlan:
    """Scale and per-client variance for a job; raises ParameterError naming the field that cannot fit."""
    n_min = min_participants - colluders - 1  # the coordinator and the colluders know their own shares
    if n_min < 1:
        raise ParameterError("colluders", f"the coordinator and {colluders} colluders know every noise share of "
                                          f"a round of min_participants={min_participants}: no noise is left unknown")
    l2 = privacy.l2_clip if privacy.l2_clip is not None else clip
    return _plan(privacy.epsilon, privacy.delta, privacy.budget_epsilon, l2, clip, scale, dimension, n_min,
                 min_participants, max_participants, bits)


@functools.lru_cache(maxsize=256)
def _plan(epsilon: float, delta: float, budget: float, l2: float, clip: float, scale: float | None, d: int,
          n_min: int, n_outside: int, n_max: int, bits: int) -> NoisePlan:
    half = float(1 << (bits - 1))
    root_d = math.sqrt(d)

    def fits(s: float) -> tuple[bool, int, float]:
        delta2 = s * l2 + root_d
        v = local_sigma(local_variance(delta2, d, n_min, n_max, epsilon, delta)) ** 2
        return n_max * math.ceil(clip * s) + K_SIGMA * math.sqrt(n_max * v) < half, v, delta2

    if scale is not None:
        ok, v, delta2 = fits(scale)
        if not ok:
            raise ParameterError("quantization.scale", f"{n_max} clients x ceil(clip x scale) plus {K_SIGMA:g} sigma of "
                                                       f"the DP noise (per-client variance {v}) overflow Z_(2^{bits}); "
                                                       "lower the scale or leave it unset")
        return _checked(NoisePlan(scale, v, delta2, l2, d, n_min, n_outside, n_max, epsilon, delta, budget))
    # Linear zCDP approximation: sqrt(v) ~ (s l2 + sqrt d) k0 with k0 = 1/sqrt(2 n_min rho), then shrink to fit.
    k0 = 1.0 / math.sqrt(2.0 * n_min * rho_for_epsilon(epsilon, delta))
    tail = K_SIGMA * math.sqrt(n_max) * k0
    room = half - n_max - tail * root_d - 1.0
    if room <= 0:
        raise ParameterError("privacy.epsilon", f"the DP noise alone ({K_SIGMA:g} sigma for {n_max} clients, "
                             f"dimension {d}) overflows Z_(2^{bits}); raise epsilon, lower max_participants or dimension")
    s = room / (n_max * clip + tail * l2)
    for _ in range(2000):
        ok, v, delta2 = fits(s)
        if ok:
            return _checked(NoisePlan(s, v, delta2, l2, d, n_min, n_outside, n_max, epsilon, delta, budget))
        s *= 0.995
    raise ParameterError("privacy.epsilon", "no quantization scale fits the DP noise; raise epsilon or bits")


def _checked(plan: NoisePlan) -> NoisePlan:
    if plan.sigma > MAX_SIGMA:
        raise ParameterError("max_participants", f"per-client noise std {plan.sigma} exceeds the sampler's 2^27; "
                                                 "use more participants or a larger epsilon")
    if plan.spent(1) > plan.budget_epsilon:
        raise ParameterError("privacy.budget_epsilon", f"one round spends {plan.spent(1):.4g}, over the budget")
    return plan


# --- sampling -----------------------------------------------------------------------------------


#: Largest per-client std the 64-bit sampler lanes take (2 sigma^2 * K < 2^64 for K <= 500).
MAX_SIGMA = 1 << 27


def _words(random_bytes: RandomBytes, n: int) -> np.ndarray:
    return np.frombuffer(random_bytes(8 * n), dtype="<u8")


def _below(random_bytes: RandomBytes, m: np.ndarray) -> np.ndarray:
    """Uniform integers in [0, m) per lane (uint64, m >= 1): w mod m, rejecting w < 2^64 mod m."""
    out = np.empty(m.shape, dtype=np.uint64)
    todo = np.arange(m.size)
    while todo.size:
        mm = m[todo]
        w = _words(random_bytes, todo.size)
        floor = (np.uint64(0) - mm) % mm  # 2^64 mod m
        ok = w >= floor
        out[todo[ok]] = w[ok] % mm[ok]
        todo = todo[~ok]
    return out


def _bernoulli_exp_lanes(random_bytes: RandomBytes, num: np.ndarray, den: int) -> np.ndarray:
    """Per lane Bernoulli(exp(-num/den)) for 0 <= num <= den (CKS Alg. 1 on arrays, exact):
    K = 1, 2, ... while Bernoulli(num/(den K)) succeeds; the result is whether K stopped odd."""
    result = np.zeros(num.shape, dtype=bool)
    active = np.arange(num.size)
    k = 1
    while active.size:
        if k > 500:  # P(K > 500) < 1/500!; never reached, but den * K must stay below 2^64
            raise ArithmeticError("Bernoulli(exp) loop ran past 500 steps")
        draws = _below(random_bytes, np.full(active.size, den * k, dtype=np.uint64))
        go_on = draws < num[active].astype(np.uint64)
        result[active[~go_on]] = k % 2 == 1
        active = active[go_on]
        k += 1
    return result


def _bernoulli_exp_whole_lanes(random_bytes: RandomBytes, num: np.ndarray, den: int) -> np.ndarray:
    """Per lane Bernoulli(exp(-num/den)) for any num >= 0 (< 2^63): floor(num/den) Bernoulli(e^-1)
    successes in a row, then Bernoulli(exp(-(num mod den)/den))."""
    whole, rest = np.divmod(num, den)
    alive = np.ones(num.shape, dtype=bool)
    remaining = whole.copy()
    while True:
        lanes = np.flatnonzero(alive & (remaining > 0))
        if not lanes.size:
            break
        hit = _bernoulli_exp_lanes(random_bytes, np.ones(lanes.size, dtype=np.int64), 1)
        alive[lanes[~hit]] = False
        remaining[lanes] -= 1
    lanes = np.flatnonzero(alive)
    alive[lanes] = _bernoulli_exp_lanes(random_bytes, rest[lanes], den)
    return alive


def _discrete_laplace_lanes(random_bytes: RandomBytes, t: int, count: int) -> np.ndarray:
    """`count` draws with P(Y = y) proportional to exp(-|y|/t) (CKS Alg. 2, vectorised, exact)."""
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        n = todo.size
        u = _below(random_bytes, np.full(n, t, dtype=np.uint64)).astype(np.int64)
        keep = _bernoulli_exp_lanes(random_bytes, u, t)
        v = np.zeros(n, dtype=np.int64)
        counting = np.arange(n)
        while counting.size:  # v ~ Geometric(1 - e^-1): count Bernoulli(e^-1) successes
            hit = _bernoulli_exp_lanes(random_bytes, np.ones(counting.size, dtype=np.int64), 1)
            v[counting[hit]] += 1
            counting = counting[hit]
        x = u + t * v
        negative = (_words(random_bytes, n) & np.uint64(1)).astype(bool)
        good = keep & ~(negative & (x == 0))
        y = np.where(negative, -x, x)
        out[todo[good]] = y[good]
        todo = todo[~good]
    return out


def sample_discrete_gaussian(sigma: int, count: int, random_bytes: RandomBytes) -> np.ndarray:
    """`count` i.i.d. draws of N_Z(0, sigma^2) as int64: CKS Alg. 3, exact integer arithmetic, vectorised.

    sigma is an integer (village rounds the variance up to a perfect square), so with t = sigma
    (CKS is correct for any t > 0) the acceptance probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))
    is exp(-(|Y| - sigma)^2 / (2 sigma^2)): numerator and denominator fit 64-bit lanes for
    sigma <= 2^27. Candidates beyond |Y| - sigma >= 2^31 (probability ~exp(-2^31/sigma)) are
    accepted with probability < e^-64 and are decided in Python ints, still exactly.
    """
    if type(sigma) is not int or not 1 <= sigma <= MAX_SIGMA:
        raise ParameterError("sigma", f"must be an integer in [1, 2^27], got {sigma!r}")
    den = 2 * sigma * sigma
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        batch = max(64, int((count - filled) * 1.4))  # acceptance is about 1/1.2 with t = sigma
        y = _discrete_laplace_lanes(random_bytes, sigma, batch)
        gap = np.abs(np.abs(y) - sigma)
        small = gap < (1 << 31)
        accept = np.zeros(batch, dtype=bool)
        accept[small] = _bernoulli_exp_whole_lanes(random_bytes, gap[small] * gap[small], den)
        for i in np.flatnonzero(~small).tolist():  # astronomically rare: exact in Python ints
            accept[i] = _bernoulli_exp_int(random_bytes, int(gap[i]) ** 2, den)
        taken = y[accept][: count - filled]
        out[filled:filled + taken.size] = taken
        filled += taken.size
    return out


def _bernoulli_exp_int(random_bytes: RandomBytes, num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) in Python ints (the sampler's fallback for huge num)."""

    def below(n: int) -> int:
        nbytes = (n.bit_length() + 7) // 8 + 8  # 64 spare bits: bias < 2^-64, then reject exactly
        while True:
            value = int.from_bytes(random_bytes(nbytes), "little")
            limit = (1 << (8 * nbytes)) - (1 << (8 * nbytes)) % n
            if value < limit:
                return value % n

    def frac(p: int, q: int) -> bool:
        k = 1
        while below(q * k) < p:
            k += 1
        return k % 2 == 1

    whole, rest = divmod(num, den)
    return all(frac(1, 1) for _ in range(whole)) and frac(rest, den)


def local_sigma(variance: int) -> int:
    """The integer std the sampler uses for a per-client variance (variance rounded up to a square)."""
    root = math.isqrt(variance)
    return root if root * root == variance else root + 1


def discrete_gaussian_variance(variance: float) -> float:
    """The variance of N_Z(0, sigma^2) (below sigma^2 for sigma < 1), by summation over +-40 sigma.

    For sigma >= 50 it equals sigma^2 to double precision (Poisson summation: the gap is of order
    sigma^2 exp(-2 pi^2 sigma^2)), so the sum is skipped."""
    sigma = math.sqrt(variance)
    if sigma >= 50:
        return float(variance)
    y = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41, dtype=np.float64)
    weights = np.exp(-(y**2) / (2.0 * variance))
    return float(np.sum(y**2 * weights) / np.sum(weights))


# --- client side ----------------------------------------------------------------------------------


def clip_l2(values: np.ndarray, bound: float) -> np.ndarray:
    """Scale `values` down so that its L2 norm is at most `bound` (unchanged if already within)."""
    norm = float(np.linalg.norm(values))
    return values if norm <= bound else values * (bound / norm)


def add_noise(words: np.ndarray, noise: np.ndarray, bits: int) -> np.ndarray:
    """Quantized words (uint32 mod 2^bits) plus integer noise, mod 2^bits."""
    if words.dtype != np.uint32 or noise.shape != words.shape:
        raise ParameterError("noise", "expects uint32 words and one noise value per coordinate")
    total = words.astype(np.int64) + noise.astype(np.int64)
    return (total & ((1 << bits) - 1)).astype(np.uint32)
