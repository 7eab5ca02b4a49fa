"""Benchmarks that print one JSON line each. Figures, never assertions: the machines are noisy."""

from __future__ import annotations

import random
import time

import numpy as np

from netsim.core import DROPOUT_PHASES, simulate_round, summarize
from protocol import crypto, masking
from protocol.params import RoundParams


def prg_throughput(dimension: int, repeats: int = 50) -> dict[str, float]:
    """Raw AES-CTR keystream speed against mask expansion into an accumulator (GB/s of mask)."""
    seed = crypto.sha256(b"bench")
    nbytes = 4 * dimension
    started = time.perf_counter()
    for _ in range(repeats):
        crypto.keystream(seed, nbytes)
    raw = nbytes * repeats / (time.perf_counter() - started) / 1e9
    accumulator = np.zeros(dimension, dtype=np.uint32)
    started = time.perf_counter()
    for _ in range(repeats):
        masking.add_mask(accumulator, seed, positive=True)
    expansion = nbytes * repeats / (time.perf_counter() - started) / 1e9
    return {"raw_gbps": round(raw, 2), "mask_expansion_gbps": round(expansion, 2), "ratio": round(raw / expansion, 2)}


def bench_core(n: int, dimension: int, neighbours: int, threshold: int | None, dropout: float, drop_phase: str, seed: int) -> dict[str, object]:
    if drop_phase not in DROPOUT_PHASES:
        raise ValueError(f"drop phase must be one of {', '.join(DROPOUT_PHASES)}")
    k = min(neighbours, n - 1)
    t = threshold if threshold is not None else (k + 1) // 2 + 1
    params = RoundParams(dimension, 32, neighbours, t, max(2, t), phase_timeout=30.0)
    rng = random.Random(seed)
    dropped = {i: drop_phase for i in rng.sample(range(n), round(dropout * n))}
    started = time.perf_counter()
    outcome = simulate_round(params, n, dropped, seed=seed.to_bytes(8, "big"))
    wall = time.perf_counter() - started
    line: dict[str, object] = {
        "bench": "core",
        "n": n, "d": dimension, "k": k, "t": t, "dropout": dropout, "drop_phase": drop_phase,
        "survivors": len(outcome.result.survivors) if outcome.result else 0,
        "aborted": outcome.abort.reason if outcome.abort else None,
        "exact_sum": outcome.exact,
        "wall_s": round(wall, 3),
    }
    line.update(summarize(outcome))
    vector_bytes = 4 * dimension
    line["client_overhead_bytes_per_neighbour"] = round((line["client_bytes_sent"]["median"] - vector_bytes) / k, 1)  # type: ignore[index]
    line["prg"] = prg_throughput(dimension)
    return line
