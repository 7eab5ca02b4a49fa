"""What this node brings to a training job: measured where it can be (cores, memory, a short numpy
GFLOPS probe), configured where it cannot (device type, battery, charging, network)."""

from __future__ import annotations

import os
import time

import numpy as np

from protocol.training.spec import Capabilities
from villaged.config import DaemonConfig

PROBE_SIZE = 256  # a 256 x 256 float64 matrix product: 33.5 MFLOP, a few milliseconds
PROBE_REPEATS = 5


def gflops_probe() -> float:
    """The best of a few timed matrix products (the best, not the mean: the machine is shared)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((PROBE_SIZE, PROBE_SIZE)), rng.random((PROBE_SIZE, PROBE_SIZE))
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * PROBE_SIZE**3 / max(best, 1e-9) / 1e9


def memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 0.0


def measure(config: DaemonConfig) -> Capabilities:
    return Capabilities(
        compute_gflops=round(gflops_probe(), 2), memory_gb=round(memory_gb(), 2), cores=os.cpu_count() or 1,
        device_type=config.device_type, battery_percent=config.battery_percent, charging=config.charging,
        network_type=config.network_type,
    )
