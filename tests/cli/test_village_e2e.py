"""villagectl end to end: a real 3-daemon village in this process, driven only through the CLI.

Data goes in as JSON, .npy and .csv; the job is created from a spec file, watched to the end,
and its results (read through every node's API) must equal the plaintext sum within error_bound.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import structlog

from tests.cli.helpers import villagectl
from tests.villaged.village import running_village, village_configs, wait_for

pytestmark = pytest.mark.slow

SPEC = {
    "kind": "vector", "data": "stats", "dimension": 4, "rounds": 2, "round_interval": 0.5, "start_delay": 4.0,
    "min_participants": 3, "neighbours": 2, "phase_timeout": 3.0,
    "quantization": {"clip": 1000.0, "scale": 100.0, "rounding": "nearest"},
}
INPUTS = [[1.5, -2.0, 3.25, 10.0], [0.0, 7.0, -1.5, 2.5], [100.0, 0.25, 0.5, -0.75]]


def _drop(logger: object, method: str, event: object) -> NoReturn:
    raise structlog.DropEvent


@pytest.fixture(autouse=True)
def silent_daemons() -> Iterator[None]:
    """CliRunner captures the process's stdout and stderr: the daemons must not write into a command's output."""
    structlog.configure(processors=[_drop])
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def write_inputs(directory: Path) -> list[Path]:
    files = [directory / "stats.json", directory / "stats.npy", directory / "stats.csv"]
    files[0].write_text(json.dumps(INPUTS[0]))
    np.save(files[1], np.array(INPUTS[1]))
    files[2].write_text("\n".join(str(v) for v in INPUTS[2]))
    return files


async def test_three_daemons_through_villagectl(tmp_path: Path) -> None:
    configs = village_configs(tmp_path, 3)
    async with running_village(configs) as nodes:
        dirs = [str(config.data_dir) for config in configs]
        for data_dir, file in zip(dirs, write_inputs(tmp_path), strict=True):
            put = await villagectl("data", "put", "stats", str(file), "--data-dir", data_dir)
            assert put.exit_code == 0, put.output

        async def meshed() -> bool:
            members = [json.loads((await villagectl("village", "members", "--json", "--data-dir", d)).stdout) for d in dirs]
            return min(len(m) for m in members) == 3 and min([len(await daemon.peers()) for daemon, _, _ in nodes]) == 2

        await wait_for(meshed, timeout=30, interval=0.5)
        (tmp_path / "job.json").write_text(json.dumps(SPEC))
        created = await villagectl("jobs", "create", "--spec", str(tmp_path / "job.json"), "--data-dir", dirs[0])
        assert created.exit_code == 0, created.output
        job_id = created.stdout.strip()

        watched = await villagectl("jobs", "watch", job_id, "--interval", "0.2", "--data-dir", dirs[0])
        assert watched.exit_code == 0, watched.output
        lines = watched.stdout.splitlines()
        assert "round 0 attempt 0: coordinator" in watched.stdout
        assert lines.index("round 1 done: 3 participants, 0 dropped") < lines.index(f"job {job_id} is completed")
        assert lines[-1] == f"job {job_id} completed 2/2 rounds; results: villagectl jobs result {job_id}"

        async def results_everywhere() -> bool:
            counts = [json.loads((await villagectl("jobs", "show", job_id, "--json", "--data-dir", d)).stdout)["results"]
                      for d in dirs]  # fmt: skip
            return counts == [2, 2, 2]

        await wait_for(results_everywhere, timeout=30, interval=0.5)
        expected = np.sum(INPUTS, axis=0)
        for data_dir in dirs:
            result = await villagectl("jobs", "result", job_id, "--json", "--data-dir", data_dir)
            assert result.exit_code == 0, result.output
            results = json.loads(result.stdout)
            assert [r["round"] for r in results] == [0, 1]
            for r in results:
                assert len(r["participants"]) == 3 and r["dropped"] == []
                assert np.allclose(r["values"], expected, rtol=0, atol=r["error_bound"])
            history = json.loads((await villagectl("rounds", job_id, "--json", "--data-dir", data_dir)).stdout)
            completed = [h for h in history if h["state"] == "completed"]
            assert [h["round"] for h in completed] == [0, 1]
            assert all(h["participants"] == 3 and h["phase_timings"] for h in completed)
        status = await villagectl("status", "--data-dir", dirs[1])
        assert status.exit_code == 0 and "/ip4/127.0.0.1/tcp/" in status.stdout, status.output
        table = await villagectl("rounds", job_id, "--data-dir", dirs[1])
        assert table.exit_code == 0 and "completed" in table.stdout and "unmask=" in table.stdout
