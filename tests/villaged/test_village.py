"""Real daemons on loopback in one trio process: discovery, a 3-round job, results everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from villaged.control import NotFound
from villaged.daemon import Daemon
from tests.villaged.village import running_village, village_configs, wait_for

pytestmark = pytest.mark.slow

SPEC = {
    "kind": "vector", "data": "stats", "dimension": 8, "rounds": 3, "round_interval": 0.5, "start_delay": 2.0,
    "min_participants": 3, "neighbours": 4, "phase_timeout": 3.0,
    "quantization": {"clip": 1000.0, "scale": 100.0, "rounding": "nearest"},
}


async def result_count(daemon: Daemon, job_id: str) -> int:
    try:
        return len(await daemon.results(job_id))
    except NotFound:  # the job announcement has not reached this node yet
        return 0


async def test_five_nodes_mesh_and_agree_on_three_rounds(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 5)
    async with running_village(configs) as nodes:
        daemons = [d for d, _, _ in nodes]
        inputs = {}
        for i, daemon in enumerate(daemons):
            inputs[i] = [float(i * 10 + j) for j in range(8)]
            await daemon.put_data("stats", inputs[i])

        async def meshed() -> bool:
            peers = [len(await d.peers()) for d in daemons]
            members = [len(await d.members()) for d in daemons]
            return min(peers) >= 2 and min(members) == 5

        await wait_for(meshed, timeout=30)
        job = await daemons[1].create_job(SPEC)

        async def all_done() -> bool:
            return min([await result_count(d, job["id"]) for d in daemons]) == 3

        await wait_for(all_done, timeout=60)
        expected = np.sum([inputs[i] for i in range(5)], axis=0)
        for daemon in daemons:
            results = await daemon.results(job["id"])
            assert [r["round"] for r in results] == [0, 1, 2]
            for result in results:
                assert len(result["participants"]) == 5
                assert np.allclose(result["values"], expected, atol=result["error_bound"])
            digests = {r["digest"] for r in results}
            assert len(digests) == 1  # the same inputs each round give the same exact aggregate
        assert {(await d.get_job(job["id"]))["state"] for d in daemons} == {"completed"}
