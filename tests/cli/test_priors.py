"""villagectl priors JOB against a real control API over the fake NodeControl."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.helpers import villagectl
from tests.villaged.fake_control import FakeControl


async def test_priors_table_and_json(data_dir: Path, control: FakeControl) -> None:
    job = await control.create_job({"kind": "routing-priors", "data": "stats", "rounds": 2})
    table = await villagectl("priors", job["id"], "--data-dir", str(data_dir))
    assert table.exit_code == 0, table.output
    assert "round quality 0.500" in table.stdout and "h1" in table.stdout and "m1" in table.stdout
    as_json = await villagectl("priors", job["id"], "--data-dir", str(data_dir), "--json")
    assert json.loads(as_json.stdout)["validation"]["stability_score"] == 1.0
    missing = await villagectl("priors", "nope", "--data-dir", str(data_dir))
    assert missing.exit_code != 0 and "error:" in missing.output
