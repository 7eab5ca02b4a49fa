"""What a netsim village computes: each member's local input, the job spec's kind-specific part, and
the exact check of every stored result against the plaintext.

A workload fills in the kind-specific fields of the job spec (`spec_fields`), makes each member's
local input (`make_inputs`, seeded), and, once the full spec is known (`bind`), computes what the
daemon must have released. The check is exact because every netsim job uses `quantization.rounding
= "nearest"`: the daemon's quantized contribution of a member is then a pure function of its input,

    words_i = quantize_input(spec, KINDS[kind].encode(spec, payload_i), None)

(`villaged/jobs.py` `client_input`; the rounding seed only matters for stochastic rounding), so the
aggregate of a round is sum(words_i) mod 2^32 over exactly the result's `participants`, and the
result's `digest` (SHA-256 of the little-endian words, `protocol/announcements.py`) must equal the
digest of that. On top, the decoded values the daemon shows must be within its `error_bound` of the
kind's decoding of the float plaintext sum.

Workloads:
    vector          integer-valued vectors in [-clip, clip] of length d (netsim's original workload);
                    the result's `values` must be within error_bound of the plaintext sum.
    routing-priors  per-node routing statistics (protocol/priors.py) over a small key space:
                    4 models x 2 regions x 2 tiers, 20 request patterns, 3 carbon regions
                    (d = 6*16 + 20*4 + 3*3 = 185). Each node holds a random subset of the cells
                    and patterns, with plausible latencies, success counts and pattern scores.
                    The decoded priors (percentiles, success rates, counts, per-pattern optimal
                    model, carbon means) must match `KINDS["routing-priors"].decode` of the float
                    plaintext within the bounds the error_bound implies for each ratio.
    training        a federated training job on partitions of a data set scikit-learn ships; every
                    aggregate and model replayed from the members' local training
                    (netsim/training_workload.py).
"""

from __future__ import annotations

import hashlib
import math
import random
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from protocol.jobs import JobSpec
from protocol.kinds import KINDS, quantize_input
from protocol.quantize import Quantizer


class Workload(ABC):
    """The shared machinery: inputs per member id (hex), their quantized words, expected digests."""

    name = ""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.payloads: dict[str, Any] = {}  # member id hex -> the JSON put as the member's local input
        self.spec: JobSpec | None = None
        self.quantizer: Quantizer | None = None
        self._vectors: dict[str, np.ndarray] = {}
        self._words: dict[str, np.ndarray] = {}

    # --- what each workload defines -----------------------------------------------------------------

    @abstractmethod
    def spec_fields(self) -> dict[str, Any]:
        """The kind-specific part of the job spec (kind, dimension or kind section, quantization)."""

    @abstractmethod
    def make_payload(self, rng: random.Random, np_rng: np.random.Generator, index: int) -> Any:
        """The local input JSON of peer `index`."""

    @abstractmethod
    def check_values(self, result: dict[str, Any], total: np.ndarray) -> list[str]:
        """Problems with the decoded part of a result, against the float plaintext sum `total`."""

    # --- shared ---------------------------------------------------------------------------------------

    #: False when the daemons' sums carry noise netsim cannot know (its check is then of the rest).
    replayable = True

    def complete(self, spec: dict[str, Any]) -> None:
        """Add what depends on the whole spec (the participant bounds) to it; most workloads add nothing."""

    def observe_round(self, scenario: Any, r: int, holders: list[int]) -> dict[str, Any] | None:
        """Checks of round r beyond its results (asking the live `holders` over their API); a dict
        with a "problems" list goes into the round's record under the workload's name. None: none."""
        return None

    def observe_end(self, scenario: Any) -> dict[str, Any] | None:
        """Checks and figures at the end of the run, with an "ok"; they go into the report under the
        workload's name. None: none."""
        return None

    def bind(self, spec: dict[str, Any]) -> None:
        """Parse the job spec exactly as the daemon does; only nearest rounding gives exact digests."""
        self.spec = JobSpec.from_dict(spec)
        if self.spec.quantization.rounding != "nearest" or self.spec.privacy is not None:
            raise ValueError("netsim's exact check needs quantization.rounding = 'nearest' and no privacy noise")
        self.quantizer = self.spec.quantizer()
        self._vectors.clear()
        self._words.clear()

    @property
    def dimension(self) -> int:
        assert self.spec is not None
        return self.spec.dimension

    def make_inputs(self, members: list[str], seed: int) -> dict[str, Any]:
        """One payload per member (hex ids in peer order), from the seed alone."""
        rng = random.Random(seed)
        np_rng = np.random.default_rng(seed)
        self.payloads = {m: self.make_payload(rng, np_rng, i) for i, m in enumerate(members)}
        self._vectors.clear()
        self._words.clear()
        return self.payloads

    def vector(self, member: str) -> np.ndarray:
        """The float vector the member's daemon encodes, clipped as its quantizer clips."""
        if member not in self._vectors:
            assert self.spec is not None and self.quantizer is not None
            encoded = KINDS[self.spec.kind].encode(self.spec, self.payloads[member])
            clipped = np.clip(encoded, -self.quantizer.clip, self.quantizer.clip)
            exact = KINDS[self.spec.kind].exact_slots(self.spec)  # whole numbers, never clipped
            clipped[exact] = encoded[exact]
            self._vectors[member] = clipped
        return self._vectors[member]

    def words(self, member: str) -> np.ndarray:
        """The member's contribution in Z_(2^32), as its daemon quantizes it (nearest rounding)."""
        if member not in self._words:
            assert self.spec is not None
            self._words[member] = quantize_input(self.spec, self.vector(member), None)
        return self._words[member]

    def expected(self, participants: list[str]) -> tuple[np.ndarray, str]:
        """Float plaintext sum over `participants` and the digest of their exact quantized aggregate."""
        assert self.spec is not None
        total = np.zeros(self.dimension, dtype=np.float64)
        words = np.zeros(self.dimension, dtype=np.uint64)
        for m in participants:
            total += self.vector(m)
            words += self.words(m)
        aggregate = (words % (1 << self.spec.quantization.bits)).astype("<u4")
        return total, hashlib.sha256(aggregate.tobytes()).hexdigest()

    def check_result(self, result: dict[str, Any]) -> list[str]:
        unknown = [m for m in result["participants"] if m not in self.payloads]
        if unknown:
            return [f"participants not in this village: {unknown}"]
        if len(set(result["participants"])) != len(result["participants"]):
            return ["a participant is listed twice"]
        total, digest = self.expected(result["participants"])
        problems = []
        if result["digest"] != digest:
            problems.append(f"digest {result['digest'][:16]} != expected {digest[:16]}")
        return problems + self.check_values(result, total)


class VectorWorkload(Workload):
    """Integer-valued vectors: with an integer scale every quantized coordinate is exactly v * scale."""

    name = "vector"

    def spec_fields(self) -> dict[str, Any]:
        c = self.config
        return {"kind": "vector", "dimension": c.d,
                "quantization": {"clip": float(c.clip), "scale": float(c.scale), "rounding": "nearest"}}

    def make_payload(self, rng: random.Random, np_rng: np.random.Generator, index: int) -> Any:
        # The same draws as netsim always made: one numpy generator, d integers per peer in order.
        c = self.config
        return {"values": np_rng.integers(-c.clip, c.clip + 1, c.d, dtype=np.int64).tolist()}

    def check_values(self, result: dict[str, Any], total: np.ndarray) -> list[str]:
        values = np.array([np.nan if v is None else v for v in result.get("values", [])], dtype=np.float64)
        error = float(np.max(np.abs(values - total))) if len(values) == len(total) else float("inf")
        if not error <= result["error_bound"]:
            return [f"max error {error} > bound {result['error_bound']}"]
        return []


# --- routing priors -------------------------------------------------------------------------------

#: model -> (p50 ms at the premium tier, success rate): big models are slower and a little better.
MODELS = {"llama-3-70b": (820.0, 0.992), "mixtral-8x22b": (610.0, 0.987), "llama-3-8b": (190.0, 0.971),
          "phi-3-mini": (95.0, 0.955)}
REGIONS = {"us-west": 1.0, "eu-central": 1.18}  # region -> latency factor
TIERS = {"premium": 1.0, "standard": 1.6}  # tier -> latency factor (standard shares busier GPUs)
CARBON = {"us-west": 240.0, "eu-central": 310.0, "eu-north": 45.0}  # gCO2/kWh
PATTERNS = 20


def priors_section() -> dict[str, Any]:
    return {"models": list(MODELS), "regions": list(REGIONS), "tiers": list(TIERS),
            "request_patterns": [hashlib.sha256(f"village-demo-pattern-{i}".encode()).hexdigest()[:16] for i in range(PATTERNS)],
            "carbon_regions": list(CARBON)}


class RoutingPriorsWorkload(Workload):
    """Plausible routing statistics: each node saw part of the traffic, so it holds a random subset
    of the (model, region, tier) cells and of the request patterns, with noisy measurements around
    a per-model profile; each pattern has a model that is usually, not always, reported optimal."""

    name = "routing-priors"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.section = priors_section()
        self.favourites: dict[str, str] = {}

    def make_inputs(self, members: list[str], seed: int) -> dict[str, Any]:
        favourite = random.Random(f"patterns-{seed}")  # the model each pattern is usually best served by
        self.favourites = {h: favourite.choice(list(MODELS)) for h in self.section["request_patterns"]}
        return super().make_inputs(members, seed)

    def spec_fields(self) -> dict[str, Any]:
        return {"kind": "routing-priors", "priors": self.section, "quantization": {"clip": 1.0, "rounding": "nearest"}}

    def make_payload(self, rng: random.Random, np_rng: np.random.Generator, index: int) -> Any:
        cells = [(m, r, t) for m in MODELS for r in REGIONS for t in TIERS]
        held = rng.sample(cells, rng.randint(len(cells) // 3, len(cells)))
        models = []
        for m, r, t in sorted(held, key=cells.index):
            base, success = MODELS[m]
            p50 = base * REGIONS[r] * TIERS[t] * rng.lognormvariate(0, 0.08)
            total = rng.randint(200, 20_000)
            rate = min(1.0, max(0.0, rng.gauss(success - (0.01 if t == "standard" else 0.0), 0.006)))
            record = {
                "model_id": m, "region": r, "quality_tier": t,
                "latency_percentile": {"p50": round(p50, 1), "p95": round(p50 * rng.uniform(1.9, 2.6), 1),
                                       "p99": round(p50 * rng.uniform(3.2, 4.8), 1)},
                "success_count": round(total * rate), "total_count": total, "sample_count": rng.randint(150, 3000),
                "success_rate": round(rate, 4),  # checked against the counts
            }
            if index % 2:  # every other node sends the spec's own record: rate and samples, counts derived
                record["sample_count"] = total
                del record["success_count"], record["total_count"]
            models.append(record)
        hashes = self.section["request_patterns"]
        patterns = []
        for h in rng.sample(hashes, rng.randint(len(hashes) // 4, len(hashes))):
            optimal = self.favourites[h] if rng.random() < 0.8 else rng.choice(list(MODELS))
            patterns.append({"request_hash": h, "optimal_model": optimal, "confidence": round(rng.uniform(0.5, 1.0), 3),
                             "sample_count": rng.randint(20, 800), "recency_factor": round(rng.uniform(0.4, 1.0), 3),
                             "energy_savings_pct": round(rng.uniform(0, 30), 1)})
        carbon = [{"region": r, "carbon_intensity_gco2_per_kwh": round(CARBON[r] * rng.uniform(0.85, 1.15), 1),
                   "routing_penalty_factor": round(rng.uniform(0.0, 0.2), 3), "last_updated": 1_700_000_000 + index}
                  for r in rng.sample(list(CARBON), rng.randint(1, len(CARBON)))]
        return {"models": models, "request_patterns": patterns, "carbon": carbon}

    def check_values(self, result: dict[str, Any], total: np.ndarray) -> list[str]:
        """Every decoded figure against the decoding of the float plaintext, within what the
        per-slot error e = error_bound allows: a ratio a/b of two slots is off by at most
        e (1 + a/b) / (b - e); sums are off by at most e (in slot units, times the slot's cap).
        Success and total counts are summed as integers: they and the success rate must be exact."""
        assert self.spec is not None
        layout_caps = self.spec.priors or {}
        cap = float(layout_caps.get("max_latency_ms", 60_000.0))
        max_score = float(layout_caps.get("max_score", 1e6))
        max_carbon = float(layout_caps.get("max_carbon", 2_000.0))
        e = float(result["error_bound"])
        want = KINDS["routing-priors"].decode(self.spec, total, len(result["participants"]))
        problems: list[str] = []

        def ratio_tol(ratio: float, denominator: float) -> float:
            return e * (1 + abs(ratio)) / max(denominator - e, 1e-300) + 1e-9 * max(1.0, abs(ratio))

        def near(name: str, got: Any, expected: float, tol: float) -> None:
            if got is None or not math.isfinite(got) or abs(got - expected) > tol:
                problems.append(f"{name}: {got} vs plaintext {expected:.9g} (tolerance {tol:.3g})")

        got_cells = {(c["model_id"], c["region"], c["quality_tier"]): c for c in result.get("models", [])}
        want_cells = {(c["model_id"], c["region"], c["quality_tier"]): c for c in want["models"]}
        if set(got_cells) != set(want_cells):
            problems.append(f"cells {sorted(set(got_cells) ^ set(want_cells))} present on one side only")
        for key in set(got_cells) & set(want_cells):
            g, w = got_cells[key], want_cells[key]
            name = "/".join(key)
            near(f"{name} weight", g["weight"], w["weight"], e)
            if (g["latency_percentile"] is None) != (w["latency_percentile"] is None):
                problems.append(f"{name}: latency present on one side only")
            elif w["latency_percentile"] is not None:
                for p in ("p50", "p95", "p99"):
                    expected = w["latency_percentile"][p]
                    near(f"{name} {p}", g["latency_percentile"][p], expected, cap * ratio_tol(expected / cap, w["weight"]))
            for field in ("total_count", "success_count", "success_rate"):
                if g[field] != w[field]:
                    problems.append(f"{name} {field}: {g[field]} vs plaintext {w[field]} (must be exact)")
        got_patterns, want_patterns = result.get("request_patterns", {}), want["request_patterns"]
        if set(got_patterns) != set(want_patterns):
            problems.append(f"patterns {sorted(set(got_patterns) ^ set(want_patterns))} present on one side only")
        m_count = len(self.section["models"])
        scores = self._pattern_scores(total)
        for h in set(got_patterns) & set(want_patterns):
            g, w = got_patterns[h], want_patterns[h]
            near(f"pattern {h} score", g["score"], w["score"], e * max_score + 1e-6)
            if g["optimal_model"] != w["optimal_model"]:
                row = scores.get(h)
                tie = row is not None and abs(row[self.section["models"].index(g["optimal_model"])] -
                                              row[self.section["models"].index(w["optimal_model"])]) <= 2 * e
                if not tie:
                    problems.append(f"pattern {h}: optimal model {g['optimal_model']} vs plaintext {w['optimal_model']}")
            row_sum = float(np.sum(np.maximum(scores[h], 0.0))) if h in scores else 0.0
            share_tol = e * (1 + m_count * w["share"]) / max(row_sum - m_count * e, 1e-300) + 1e-9
            near(f"pattern {h} share", g["share"], w["share"], share_tol)
        got_carbon, want_carbon = result.get("carbon", {}), want["carbon"]
        if set(got_carbon) != set(want_carbon):
            problems.append(f"carbon regions {sorted(set(got_carbon) ^ set(want_carbon))} present on one side only")
        for region in set(got_carbon) & set(want_carbon):
            g, w = got_carbon[region], want_carbon[region]
            if g["reports"] != w["reports"]:
                problems.append(f"carbon {region}: {g['reports']} reports vs plaintext {w['reports']}")
            intensity = w["carbon_intensity_gco2_per_kwh"]
            near(f"carbon {region} intensity", g["carbon_intensity_gco2_per_kwh"], intensity,
                 max_carbon * ratio_tol(intensity / max_carbon, w["reports"]))
            near(f"carbon {region} penalty", g["routing_penalty_factor"], w["routing_penalty_factor"],
                 ratio_tol(w["routing_penalty_factor"], w["reports"]))
        return problems

    def _pattern_scores(self, total: np.ndarray) -> dict[str, np.ndarray]:
        """Per listed pattern, its per-model score slots of the plaintext sum (slot units)."""
        from protocol.priors import parse_layout

        assert self.spec is not None
        layout = parse_layout(self.spec.priors)
        rows = total[layout.pattern_offset:layout.carbon_offset].reshape(layout.buckets, len(layout.models))
        return {layout.pattern_name(p): rows[p] for p in range(layout.buckets)}


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (VectorWorkload, RoutingPriorsWorkload)}
#: Every workload `netsim run --workload` takes; `training` lives in netsim/training_workload.py
#: (it subclasses Workload, so it is imported when chosen).
WORKLOAD_NAMES = (*WORKLOADS, "training")


def make_workload(name: str, config: Any) -> Workload:
    if name == "training":
        from netsim.training_workload import TrainingWorkload

        return TrainingWorkload(config)
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOAD_NAMES)})")
    return WORKLOADS[name](config)
