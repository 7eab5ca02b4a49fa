"""Routing priors: the layout of the vector a node contributes, its encoding, the decoding of the sum,
and the spec's validation metrics (prior stability, model diversity, round quality).

Layout: the key space is declared in the job spec (`priors` section), never discovered from data:
    models            list of model ids                   (M)
    regions           list of region names                (R)
    tiers             list of quality tiers               (T)
    request_patterns  list of request hashes, or an int:  (P)
                      P hash buckets, bucket = SHA-256(hash) mod P
    carbon_regions    list of region names (default: regions)  (C)
    min_sample_count  records with fewer samples stay on the node (default 0; the spec's
                      aggregation.minimum_sample_size, protocol/spec_config.py)
Every node builds the identical layout from the spec, so masked vectors line up coordinate by
coordinate; data a node lacks is zeros, and entries outside the key space are skipped (they never
leave the node). With explicit hashes there are no collisions. With buckets, patterns that collide
share their per-model score slots (scores add), so a bucket's optimal model is the argmax over the
merged patterns: a collision policy of "merge", documented and visible (the result is keyed by
bucket). Dimension d = 6 M R T + P M + 3 C:

    cells     (model, region, tier), 6 slots: w p50, w p95, w p99, w, success, total
              w = min(sample_count / 1000, 1) (the spec's node weight)
    patterns  (pattern, model), 1 slot: confidence x sample_count x recency_factor
    carbon    region, 3 slots: intensity, routing_penalty_factor, 1 (a reporting node)

So 20 models x 5 regions x 3 tiers + 1,000 patterns + 5 carbon regions: 1,800 + 20,000 + 15 = 21,815.

From the sums the decoder computes exactly the spec's formulas: weighted percentiles
sum(w p)/sum(w), success rate sum(success)/sum(total), per pattern argmax over models of the summed
scores, carbon priors as the mean over reporting nodes. Nothing else leaves a node.

Privacy consequences: the layout reveals the key space (which models, regions, tiers and request
patterns the federation tracks) to every member, since it is in the spec; it reveals nothing about
which node holds which key, because a node's zeros and non-zeros are masked alike. The released
sums reveal, per cell, the total weight sum(w) (roughly how many nodes have >= 1000 samples there)
and the success/total counts; per carbon region, how many nodes reported it. A cell held by a single
node releases that node's numbers exactly (a sum of one): secure aggregation hides who, not what,
unless the job adds distributed DP noise (`privacy`, protocol/dp.py). Request hashes in the spec
are public: use salted hashes if the raw hash of a request would identify it.

Quantization: success and total counts are whole numbers and travel as integers in the ring,
unscaled (`count_slots`), so sum(success)/sum(total) is exactly the plaintext formula; a count
above `max_count` (default 10^6, an integer with max_participants x max_count < 2^(bits-1)) is
refused, naming the field. Every other slot is pre-scaled by the kind to [0, 1] with caps from the
spec (`max_latency_ms` default 60 000, `max_score` default 10^6, `max_carbon` default 2 000
gCO2/kWh, penalty factors in [0, 1]), so one Quantizer with clip 1 fits them all (a spec with
quantization.clip other than 1 is rejected for this kind); latencies and scores above their cap
are clipped to it. Error of a released sum per such slot, in the slot's units: < survivors x cap /
scale (stochastic rounding), e.g. scale 2^31/1000 ~ 2.1e6 with 1000 max participants gives < 0.03
ms per client for latencies. A job with distributed DP noise bounds every slot by the L2 clip, so
there the counts are pre-scaled by 1/max_count like the rest (and the noise makes them inexact).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.errors import ParameterError

CELL_SLOTS = ("w_p50", "w_p95", "w_p99", "w", "success", "total")
CARBON_SLOTS = ("intensity", "penalty", "reports")
WEIGHT_SAMPLES = 1000.0  # node weight = min(sample_count / 1000, 1), the spec's formula
MAX_KEYS = 100_000  # per list in the spec; keeps a spec announcement small


@dataclass(frozen=True, slots=True)
class PriorsLayout:
    models: tuple[str, ...]
    regions: tuple[str, ...]
    tiers: tuple[str, ...]
    patterns: tuple[str, ...] | None  # explicit hashes, or None for buckets
    buckets: int  # P
    carbon_regions: tuple[str, ...]
    max_latency_ms: float = 60_000.0
    max_count: int = 1_000_000
    max_score: float = 1e6
    max_carbon: float = 2_000.0
    min_sample_count: int = 0  # records with fewer samples stay on the node (the spec's minimum_sample_size)

    @property
    def cells(self) -> int:
        return len(self.models) * len(self.regions) * len(self.tiers)

    @property
    def pattern_offset(self) -> int:
        return len(CELL_SLOTS) * self.cells

    @property
    def carbon_offset(self) -> int:
        return self.pattern_offset + self.buckets * len(self.models)

    @property
    def dimension(self) -> int:
        return self.carbon_offset + len(CARBON_SLOTS) * len(self.carbon_regions)

    def cell_index(self, model: int, region: int, tier: int) -> int:
        return len(CELL_SLOTS) * ((model * len(self.regions) + region) * len(self.tiers) + tier)

    def count_slots(self) -> np.ndarray:
        """Indices of every cell's success and total counts (whole numbers, summed exactly)."""
        bases = np.arange(self.cells, dtype=np.int64) * len(CELL_SLOTS)
        return np.sort(np.concatenate([bases + CELL_SLOTS.index("success"), bases + CELL_SLOTS.index("total")]))

    def pattern_index(self, request_hash: str) -> int | None:
        """The pattern slot of a hash: its position when listed, its bucket otherwise (None: not tracked)."""
        if self.patterns is not None:
            return _positions(self.patterns).get(request_hash)
        digest = hashlib.sha256(request_hash.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.buckets

    def pattern_name(self, index: int) -> str:
        return self.patterns[index] if self.patterns is not None else f"bucket-{index}"


@functools.lru_cache(maxsize=64)
def _positions(names: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


# --- the spec's `priors` section ------------------------------------------------------------------


def parse_layout(raw: Any) -> PriorsLayout:
    """The layout from a spec's `priors` section; ParameterError names the field (`priors.models[2]`)."""
    if not isinstance(raw, dict):
        raise ParameterError("priors", "is required for kind routing-priors: {models, regions, tiers, request_patterns}")
    return _parse_layout(json.dumps(raw, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _parse_layout(text: str) -> PriorsLayout:
    raw = json.loads(text)
    known = {"models", "regions", "tiers", "request_patterns", "carbon_regions", "max_latency_ms", "max_count",
             "max_score", "max_carbon", "min_sample_count"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParameterError(f"priors.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
    models = _names(raw, "models", required=True)
    regions = _names(raw, "regions", required=True)
    tiers = _names(raw, "tiers", required=True)
    patterns_raw = raw.get("request_patterns", 0)
    if isinstance(patterns_raw, list):
        patterns: tuple[str, ...] | None = _names(raw, "request_patterns", required=False)
        buckets = len(patterns_raw)
    elif type(patterns_raw) is int and 0 <= patterns_raw <= MAX_KEYS:
        patterns, buckets = None, patterns_raw
    else:
        raise ParameterError("priors.request_patterns", f"must be a list of request hashes or a bucket count in [0, {MAX_KEYS}]")
    carbon = _names(raw, "carbon_regions", required=False) if "carbon_regions" in raw else regions
    caps: dict[str, Any] = {}
    for key in ("max_latency_ms", "max_score", "max_carbon"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1e15):
                raise ParameterError(f"priors.{key}", f"must be a positive number below 1e15, got {value!r}")
            caps[key] = float(value)
    if "max_count" in raw:
        value = raw["max_count"]
        if type(value) is not int or not 0 < value < 1 << 31:
            raise ParameterError("priors.max_count", f"must be a positive integer below 2^31, got {value!r}")
        caps["max_count"] = value
    if "min_sample_count" in raw:
        value = raw["min_sample_count"]
        if type(value) is not int or not 0 <= value < 1 << 31:
            raise ParameterError("priors.min_sample_count", f"must be a whole number in [0, 2^31), got {value!r}")
        caps["min_sample_count"] = value
    return PriorsLayout(models, regions, tiers, patterns, buckets, carbon, **caps)


def _names(raw: dict[str, Any], key: str, required: bool) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value) or len(value) > MAX_KEYS:
        raise ParameterError(f"priors.{key}", f"must be a list of 1 to {MAX_KEYS} distinct names")
    seen: dict[str, int] = {}
    for i, name in enumerate(value):
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ParameterError(f"priors.{key}[{i}]", f"must be a string of 1 to 200 characters, got {name!r}")
        if name in seen:
            raise ParameterError(f"priors.{key}[{i}]", f"{name!r} repeats priors.{key}[{seen[name]}]")
        seen[name] = i
    return tuple(value)


# --- encoding a node's local statistics -------------------------------------------------------------


def encode(layout: PriorsLayout, payload: Any, where: str = "data", exact_counts: bool = True) -> np.ndarray:
    """This node's vector: whole success and total counts (`exact_counts`; else pre-scaled by
    1/max_count), every other slot pre-scaled to [0, 1]. ParameterError names the exact field at fault.

    Payload (JSON): {"models": [...], "request_patterns": [...], "carbon": [...]}, each list optional:
      models[i]:           {model_id, region, quality_tier, latency_percentile: {p50, p95, p99},
                            sample_count, and success_count + total_count or success_rate
                            (the spec's record; see `model_counts`)}
      request_patterns[i]: {request_hash, optimal_model, confidence (0..1), sample_count,
                            recency_factor (0..1, default 1)}
      carbon[i]:           {region, carbon_intensity_gco2_per_kwh, routing_penalty_factor (0..1, default 0)}
    Other fields in an entry (energy_savings_pct, last_updated, ...) are ignored: they never leave the node.
    """
    if not isinstance(payload, dict):
        raise ParameterError(where, "must be a JSON object with models, request_patterns and/or carbon lists")
    unknown = sorted(set(payload) - {"models", "request_patterns", "carbon"})
    if unknown:
        raise ParameterError(f"{where}.{unknown[0]}", "unknown field (known: carbon, models, request_patterns)")
    vector = np.zeros(layout.dimension, dtype=np.float64)
    model_at = _positions(layout.models)
    region_at = _positions(layout.regions)
    tier_at = _positions(layout.tiers)
    carbon_at = _positions(layout.carbon_regions)
    seen: dict[tuple[str, ...], int] = {}

    for i, entry in enumerate(_entries(payload, "models", where)):
        at = f"{where}.models[{i}]"
        model = _string(entry, "model_id", at)
        region = _string(entry, "region", at)
        tier = _string(entry, "quality_tier", at)
        latency = entry.get("latency_percentile")
        if not isinstance(latency, dict):
            raise ParameterError(f"{at}.latency_percentile", "must be an object {p50, p95, p99} in milliseconds")
        p50, p95, p99 = (_number(latency, p, f"{at}.latency_percentile") for p in ("p50", "p95", "p99"))
        samples = _number(entry, "sample_count", at)
        success, total, _ = model_counts(entry, at, layout.max_count)
        _unique(seen, ("model", model, region, tier), i, at, "models", "same model_id, region and quality_tier")
        if model not in model_at or region not in region_at or tier not in tier_at or samples < layout.min_sample_count:
            continue
        w = min(samples / WEIGHT_SAMPLES, 1.0)
        cap = layout.max_latency_ms
        unit = 1.0 if exact_counts else float(layout.max_count)
        base = layout.cell_index(model_at[model], region_at[region], tier_at[tier])
        vector[base:base + 6] = (w * min(p50, cap) / cap, w * min(p95, cap) / cap, w * min(p99, cap) / cap, w,
                                 success / unit, total / unit)

    for i, entry in enumerate(_entries(payload, "request_patterns", where)):
        at = f"{where}.request_patterns[{i}]"
        request_hash = _string(entry, "request_hash", at)
        model = _string(entry, "optimal_model", at)
        confidence = _number(entry, "confidence", at, high=1.0)
        samples = _number(entry, "sample_count", at)
        recency = _number(entry, "recency_factor", at, high=1.0) if "recency_factor" in entry else 1.0
        _unique(seen, ("pattern", request_hash), i, at, "request_patterns", "same request_hash")
        slot = layout.pattern_index(request_hash)
        if slot is None or model not in model_at or samples < layout.min_sample_count:
            continue
        score = min(confidence * samples * recency, layout.max_score) / layout.max_score
        index = layout.pattern_offset + slot * len(layout.models) + model_at[model]
        vector[index] = min(1.0, vector[index] + score)  # buckets: colliding patterns merge

    for i, entry in enumerate(_entries(payload, "carbon", where)):
        at = f"{where}.carbon[{i}]"
        region = _string(entry, "region", at)
        intensity = _number(entry, "carbon_intensity_gco2_per_kwh", at)
        penalty = _number(entry, "routing_penalty_factor", at, high=1.0) if "routing_penalty_factor" in entry else 0.0
        _unique(seen, ("carbon", region), i, at, "carbon", "same region")
        if region not in carbon_at:
            continue
        base = layout.carbon_offset + 3 * carbon_at[region]
        vector[base:base + 3] = (min(intensity, layout.max_carbon) / layout.max_carbon, penalty, 1.0)
    return vector


def _entries(payload: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = payload.get(key, [])
    if not isinstance(value, list):
        raise ParameterError(f"{where}.{key}", "must be a list of objects")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ParameterError(f"{where}.{key}[{i}]", f"must be an object, got {type(entry).__name__}")
    return value


def _string(entry: dict[str, Any], key: str, at: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ParameterError(f"{at}.{key}", "is required: a non-empty string" if value is None else
                             f"must be a non-empty string, got {value!r}")
    return value


def _number(entry: dict[str, Any], key: str, at: str, high: float = math.inf) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= high:
        limit = "a non-negative number" if high == math.inf else f"a number in [0, {high:g}]"
        raise ParameterError(f"{at}.{key}", f"must be {limit}, got {value!r}")
    return float(value)


def _count(entry: dict[str, Any], key: str, at: str, cap: float) -> int:
    """A whole count in [0, cap]: counts are summed exactly, so a fraction or a count above the
    job's `priors.max_count` is refused rather than rounded or clipped."""
    value = _number(entry, key, at)
    if value != int(value) or value > cap:
        raise ParameterError(f"{at}.{key}", f"must be a whole number in [0, {cap:g}] (the job's priors.max_count), got {value:g}")
    return int(value)


def model_counts(entry: dict[str, Any], at: str, cap: float = math.inf) -> tuple[int, int, bool]:
    """(success_count, total_count, derived) of a model record.

    Counts given are kept. The spec's own record carries success_rate and sample_count instead: then
    total_count = sample_count and success_count = round(success_rate x total_count), half up, so the
    released sums stay whole numbers (`derived` is True). Refused, naming the field: a record with
    neither counts nor a rate, one count without the other and no rate to complete it, and a rate
    that contradicts the counts given by more than both roundings allow: the digits the rate is
    written with (0.987: 0.0005) plus half a count (0.5 / total)."""
    rate = _number(entry, "success_rate", at, high=1.0) if "success_rate" in entry else None
    has_success, has_total = "success_count" in entry, "total_count" in entry
    if rate is None and not (has_success and has_total):
        missing = "total_count" if has_success else "success_count"
        raise ParameterError(f"{at}.{missing}", "is required: give success_count and total_count, or the spec's "
                                                "success_rate with sample_count")
    if has_total:
        total = _count(entry, "total_count", at, cap)
    else:
        samples = _number(entry, "sample_count", at)
        if samples != int(samples) or samples > cap:
            raise ParameterError(f"{at}.sample_count", f"must be a whole number in [0, {cap:g}] to serve as total_count "
                                                       f"(derived from success_rate x sample_count), got {samples:g}")
        total = int(samples)
    if not has_success:
        assert rate is not None
        return math.floor(rate * total + 0.5), total, True
    success = _count(entry, "success_count", at, cap)
    if success > total:
        raise ParameterError(f"{at}.success_count", f"{success} exceeds total_count {total}")
    if rate is not None and total > 0 and abs(success / total - rate) > _stated_precision(rate) + 0.5 / total:
        raise ParameterError(f"{at}.success_rate", f"{rate!r} contradicts success_count / total_count = "
                                                   f"{success}/{total} = {success / total:.6g}: give one or make them agree")
    return success, total, not has_total


def _stated_precision(rate: float) -> float:
    """Half a unit of the last decimal `rate` is written with (0.987 -> 0.0005), plus float slack."""
    text = repr(rate)
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 15
    return 0.5 * 10.0 ** -decimals + 1e-12


# No keys, and the largest count any job may allow: `encode` with it checks every field and keeps nothing.
_ANY_JOB = PriorsLayout((), (), (), (), 0, (), max_count=(1 << 31) - 1)


def describe_statistics(payload: Any, where: str) -> str:
    """One line on what a node's statistics hold, checked field by field as `encode` checks them
    (counts against the largest cap a job may set): how many records of each list, and whose counts
    were derived from success_rate. ParameterError names the field at fault."""
    encode(_ANY_JOB, payload, where)
    derived = [i for i, entry in enumerate(payload.get("models") or []) if model_counts(entry, f"{where}.models[{i}]")[2]]
    line = "routing-priors statistics: " + ", ".join(f"{key} {len(payload.get(key) or [])}"
                                                     for key in ("models", "request_patterns", "carbon"))
    if derived:
        shown = ", ".join(f"models[{i}]" for i in derived[:5]) + (", ..." if len(derived) > 5 else "")
        line += (f"; success_count and total_count of {len(derived)} model record(s) ({shown}) derived from "
                 "success_rate x sample_count, rounded to whole numbers")
    return line


def _unique(seen: dict[tuple[str, ...], int], key: tuple[str, ...], i: int, at: str, listing: str, what: str) -> None:
    if key in seen:
        raise ParameterError(at, f"duplicate of {listing}[{seen[key]}] ({what})")
    seen[key] = i


# --- decoding the sum --------------------------------------------------------------------------------


def decode(layout: PriorsLayout, total: np.ndarray, floor: float = 1e-9, count_floor: float = 0.5) -> dict[str, Any]:
    """Aggregated priors from the dequantized sum, whose count slots hold counts. `floor` is the
    absolute error of one pre-scaled slot of the sum (quantization plus noise), `count_floor` that
    of a count: weights or counts at or below them are treated as absent."""
    cap = layout.max_latency_ms
    cells = []
    for m, model in enumerate(layout.models):
        for r, region in enumerate(layout.regions):
            for t, tier in enumerate(layout.tiers):
                base = layout.cell_index(m, r, t)
                w_p50, w_p95, w_p99, w, success, count = (float(x) for x in total[base:base + 6])
                has_latency, has_counts = w > floor, count > count_floor
                if not (has_latency or has_counts):
                    continue
                cells.append({
                    "model_id": model, "region": region, "quality_tier": tier,
                    "latency_percentile": None if not has_latency else {
                        "p50": _clamp(w_p50 / w * cap, 0, cap), "p95": _clamp(w_p95 / w * cap, 0, cap),
                        "p99": _clamp(w_p99 / w * cap, 0, cap)},
                    "weight": w,
                    "success_rate": None if not has_counts else _clamp(success / count, 0.0, 1.0),
                    "success_count": success, "total_count": count,
                })
    patterns = {}
    m_count = len(layout.models)
    if m_count:
        scores = total[layout.pattern_offset:layout.carbon_offset].reshape(layout.buckets, m_count)
        for p in range(layout.buckets):
            row = np.maximum(scores[p], 0.0)
            best = int(np.argmax(row))
            if row[best] <= floor:
                continue
            patterns[layout.pattern_name(p)] = {
                "optimal_model": layout.models[best], "score": float(row[best]) * layout.max_score,
                "share": float(row[best] / row.sum()),
            }
    carbon = {}
    for c, region in enumerate(layout.carbon_regions):
        intensity, penalty, reports = (float(x) for x in total[layout.carbon_offset + 3 * c:layout.carbon_offset + 3 * c + 3])
        if reports <= max(floor, 0.5):
            continue
        carbon[region] = {"carbon_intensity_gco2_per_kwh": _clamp(intensity / reports * layout.max_carbon, 0, layout.max_carbon),
                          "routing_penalty_factor": _clamp(penalty / reports, 0.0, 1.0), "reports": round(reports)}
    return {"models": cells, "request_patterns": patterns, "carbon": carbon}


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# --- validation metrics (spec "Convergence Metrics" / "Validation Protocol") -------------------------


def routing_decisions(priors: dict[str, Any]) -> dict[str, str]:
    """The decisions the priors drive: each request pattern's optimal model, and per (region, tier)
    the model with the highest success rate (ties: lower p95)."""
    decisions = {f"pattern:{name}": entry["optimal_model"] for name, entry in priors.get("request_patterns", {}).items()}
    best: dict[str, tuple[float, float, str]] = {}
    for cell in priors.get("models", []):
        if cell.get("success_rate") is None:
            continue
        p95 = (cell.get("latency_percentile") or {}).get("p95", math.inf)
        key = f"cell:{cell['region']}/{cell['quality_tier']}"
        candidate = (-cell["success_rate"], p95, cell["model_id"])
        if key not in best or candidate < best[key]:
            best[key] = candidate
    decisions.update({key: value[2] for key, value in best.items()})
    return decisions


def prior_stability(previous: dict[str, Any] | None, current: dict[str, Any]) -> float:
    """1 - the fraction of routing decisions that changed (appeared, vanished or switched model), 0..1.
    The first round has nothing to change from: 1.0. The spec's target is > 0.95 (< 5 % change)."""
    if previous is None:
        return 1.0
    before, after = routing_decisions(previous), routing_decisions(current)
    keys = set(before) | set(after)
    if not keys:
        return 1.0
    changed = sum(1 for k in keys if before.get(k) != after.get(k))
    return 1.0 - changed / len(keys)


def model_diversity(current: dict[str, Any], models: int | None = None) -> float:
    """Normalized entropy (0..1) of how request patterns' optimal models spread over the `models`
    of the key space: 0 = every pattern routes to one model (collapse), 1 = evenly spread."""
    chosen = [entry["optimal_model"] for entry in current.get("request_patterns", {}).values()]
    total = len(chosen)
    k = models if models is not None else len(set(chosen))
    if total == 0 or k <= 1:
        return 0.0
    counts = np.unique(np.asarray(chosen), return_counts=True)[1].astype(np.float64) / total
    return float(-np.sum(counts * np.log(counts)) / math.log(k))


def prior_values(priors: dict[str, Any]) -> dict[str, float]:
    """The figures routing reads from the priors, by name: each cell's success rate and latency
    percentiles, each pattern's winning share, each carbon region's intensity and penalty."""
    values: dict[str, float] = {}
    for cell in priors.get("models", []):
        key = f"{cell['model_id']}/{cell['region']}/{cell['quality_tier']}"
        if cell.get("success_rate") is not None:
            values[f"{key}:success_rate"] = cell["success_rate"]
        for p, latency in (cell.get("latency_percentile") or {}).items():
            values[f"{key}:{p}"] = latency
    for name, entry in priors.get("request_patterns", {}).items():
        values[f"pattern:{name}:{entry['optimal_model']}"] = entry["share"]
    for region, entry in priors.get("carbon", {}).items():
        values[f"carbon:{region}:intensity"] = entry["carbon_intensity_gco2_per_kwh"]
        values[f"carbon:{region}:penalty"] = entry["routing_penalty_factor"]
    return values


def convergence_rate(previous: dict[str, Any] | None, current: dict[str, Any]) -> float:
    """1 - the mean relative change (0..1) of `prior_values` from the previous round: each figure
    moves by |a - b| / max(|a|, |b|), a figure present in only one round (or a pattern that switched
    model) by 1. Where prior stability counts switched decisions, this sees the numbers behind them
    settle: it rises to 1 as successive rounds agree. The first round: 1.0, as for stability."""
    if previous is None:
        return 1.0
    before, after = prior_values(previous), prior_values(current)
    keys = set(before) | set(after)
    if not keys:
        return 1.0
    change = 0.0
    for key in keys:
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            change += 1.0
        elif a != b:
            change += abs(a - b) / max(abs(a), abs(b))
    return 1.0 - change / len(keys)


def validate_round(previous: dict[str, Any] | None, current: dict[str, Any], models: int | None = None) -> dict[str, float]:
    """The spec's validate_aggregation_round without performance_delta (needs live traffic), plus the
    convergence rate the spec's metrics name."""
    stability = prior_stability(previous, current)
    diversity = model_diversity(current, models)
    return {"stability_score": stability, "diversity_score": diversity, "round_quality": (stability + diversity) / 2,
            "convergence_rate": convergence_rate(previous, current)}
