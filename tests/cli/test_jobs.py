"""villagectl jobs and rounds against a real control API over the fake NodeControl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.errors import CliError
from cli.jobs import build_spec
from protocol.jobs import JobSpec
from protocol.spec_config import translate_job
from tests.cli.helpers import assert_one_line_error, villagectl
from tests.villaged.fake_control import FakeControl


async def test_create_from_flags_spec_file_and_set(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    created = await villagectl("jobs", "create", "--kind", "vector", "--data", "stats", "--dimension", "4",
                               "--rounds", "2", "--data-dir", str(data_dir))  # fmt: skip
    assert created.exit_code == 0, created.output
    assert created.stdout == "job-1\n"
    assert control.jobs["job-1"]["spec"] == {"kind": "vector", "data": "stats", "dimension": 4, "rounds": 2}
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"kind": "vector", "data": "stats", "dimension": 4, "rounds": 5, "name": "x"}))
    from_file = await villagectl("jobs", "create", "--spec", str(spec), "--rounds", "3", "--set", "quantization.clip=100",
                                 "--set", "name=weekly", "--data-dir", str(data_dir), "--json")  # fmt: skip
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout)["spec"] == {
        "kind": "vector", "data": "stats", "dimension": 4, "rounds": 3, "name": "weekly", "quantization": {"clip": 100},
    }


async def test_invalid_spec_names_the_field(data_dir: Path, tmp_path: Path) -> None:
    bad = await villagectl("jobs", "create", "--rounds", "-1", "--data-dir", str(data_dir))
    assert_one_line_error(bad, 1, "error: invalid job spec: field 'rounds': must be a positive integer, got -1")
    broken = tmp_path / "job.json"
    broken.write_text('{"rounds": 2,\n  "kind": vector}')
    result = await villagectl("jobs", "create", "--spec", str(broken), "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "job.json is not valid JSON: Expecting value at line 2 column 11")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1]")
    result = await villagectl("jobs", "create", "--spec", str(not_object), "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "a job spec must be a JSON object")
    result = await villagectl("jobs", "create", "--set", "rounds", "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "--set 'rounds': expected KEY=VALUE")


async def test_list_show_result_rounds(data_dir: Path) -> None:
    empty = await villagectl("jobs", "list", "--data-dir", str(data_dir))
    assert empty.exit_code == 0 and "no jobs" in empty.stdout
    await villagectl("jobs", "create", "--kind", "vector", "--data", "stats", "--rounds", "2", "--name", "lat",
                     "--data-dir", str(data_dir))  # fmt: skip
    listed = await villagectl("jobs", "list", "--data-dir", str(data_dir))
    assert listed.exit_code == 0, listed.output
    assert "1 jobs" in listed.stdout and "job-1" in listed.stdout and "pending" in listed.stdout and "0/2" in listed.stdout
    assert [j["id"] for j in json.loads((await villagectl("jobs", "list", "--json", "--data-dir", str(data_dir))).stdout)] == ["job-1"]
    shown = await villagectl("jobs", "show", "job-1", "--data-dir", str(data_dir))
    assert shown.exit_code == 0, shown.output
    assert "spec.kind" in shown.stdout and "spec.rounds" in shown.stdout and "vector" in shown.stdout
    assert json.loads((await villagectl("jobs", "show", "job-1", "--json", "--data-dir", str(data_dir))).stdout)["id"] == "job-1"
    result = await villagectl("jobs", "result", "job-1", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert "1 results" in result.stdout and "00ff" in result.stdout
    assert json.loads((await villagectl("jobs", "result", "job-1", "--json", "--data-dir", str(data_dir))).stdout)[0]["round"] == 0
    history = await villagectl("rounds", "job-1", "--data-dir", str(data_dir))
    assert history.exit_code == 0, history.output
    assert "unmask=0.500" in history.stdout and "completed" in history.stdout
    as_json = await villagectl("rounds", "job-1", "--json", "--data-dir", str(data_dir))
    assert json.loads(as_json.stdout)[0]["phase_timings"] == {"unmask": 0.5}


async def test_unknown_job_is_one_line_for_every_job_command(data_dir: Path) -> None:
    for command in (("jobs", "show"), ("jobs", "result"), ("jobs", "cancel"), ("jobs", "join"), ("jobs", "watch"), ("rounds",)):
        result = await villagectl(*command, "nope", "--data-dir", str(data_dir))
        assert_one_line_error(result, 1, "error: no job 'nope' on this node; list the jobs it knows with: villagectl jobs list")


async def test_join_and_cancel(data_dir: Path, control: FakeControl) -> None:
    await villagectl("jobs", "create", "--data", "stats", "--rounds", "1", "--data-dir", str(data_dir))
    no_input = await villagectl("jobs", "join", "job-1", "--data-dir", str(data_dir))
    assert_one_line_error(no_input, 1, "cannot join job job-1: data: no local input named 'stats'")
    control.data["stats"] = [1.0]
    joined = await villagectl("jobs", "join", "job-1", "--data-dir", str(data_dir))
    assert joined.exit_code == 0 and joined.stdout == "joined job job-1\n"
    cancelled = await villagectl("jobs", "cancel", "job-1", "--data-dir", str(data_dir))
    assert cancelled.exit_code == 0 and cancelled.stdout == "job job-1 is cancelled\n"
    again = await villagectl("jobs", "cancel", "job-1", "--data-dir", str(data_dir), "--json")
    assert_one_line_error(again, 1, "error: job 'job-1' is already cancelled")


async def test_watch_until_completed(data_dir: Path) -> None:
    await villagectl("jobs", "create", "--rounds", "3", "--data-dir", str(data_dir))
    watched = await villagectl("jobs", "watch", "job-1", "--interval", "0", "--data-dir", str(data_dir))
    assert watched.exit_code == 0, watched.output
    lines = watched.stdout.splitlines()
    assert lines[0] == "job job-1 is running"
    assert "round 0 attempt 0: coordinator b0b0b0b0b0b0b0b0" in lines
    assert "round 1 done: 3 participants, 1 dropped" in lines
    assert "3/3" in watched.stdout and "\x1b[" not in watched.stdout
    assert lines[-1] == "job job-1 completed 3/3 rounds; results: villagectl jobs result job-1"


async def test_watch_json_lines(data_dir: Path) -> None:
    await villagectl("jobs", "create", "--rounds", "2", "--data-dir", str(data_dir))
    watched = await villagectl("jobs", "watch", "job-1", "--interval", "0", "--json", "--data-dir", str(data_dir))
    assert watched.exit_code == 0, watched.output
    snapshots = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(s["state"], s["rounds_completed"], s["round"]) for s in snapshots] == [
        ("running", 0, 0), ("running", 1, 1), ("completed", 2, None)
    ]


async def test_watch_a_cancelled_job_exits_4(data_dir: Path) -> None:
    await villagectl("jobs", "create", "--rounds", "2", "--data-dir", str(data_dir))
    await villagectl("jobs", "cancel", "job-1", "--data-dir", str(data_dir))
    watched = await villagectl("jobs", "watch", "job-1", "--data-dir", str(data_dir))
    assert_one_line_error(watched, 4, "error: job job-1 ended cancelled after 0/2 rounds; see: villagectl rounds job-1")


async def test_daemon_not_running_and_bad_token(data_dir: Path, tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for command in (("jobs", "list"), ("jobs", "watch", "j"), ("jobs", "create", "--rounds", "1"), ("rounds", "j"),
                    ("data", "show", "x"), ("village", "members")):  # fmt: skip
        result = await villagectl(*command, "--data-dir", str(stopped))
        assert_one_line_error(result, 3, f"villaged is not running for {stopped} (no api.json); start it with: villaged start")
    wrong = await villagectl("jobs", "create", "--rounds", "1", "--data-dir", str(data_dir), "--token", "x" * 43)
    assert_one_line_error(wrong, 1, "(401 unauthorized): invalid bearer token; use the token in DATA_DIR/api.token")


async def test_odd_job_ids_and_names_stay_in_their_path_segment(data_dir: Path) -> None:
    result = await villagectl("jobs", "show", "../status", "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "path parameter 'id' = '../status' must match")
    result = await villagectl("data", "show", "a/b", "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "path parameter 'name' = 'a/b' must match")


async def test_show_prints_the_privacy_guarantee_against_participants_and_outsiders(data_dir: Path, control: FakeControl) -> None:
    created = await villagectl("jobs", "create", "--kind", "vector", "--data", "stats", "--dimension", "4", "--rounds", "2", "--data-dir", str(data_dir))
    assert created.exit_code == 0, created.output
    spec = JobSpec.from_dict({"kind": "vector", "data": "stats", "dimension": 100, "min_participants": 5,
                              "privacy": {"epsilon": 1.0, "delta": 1e-5, "budget_epsilon": 3.0}})
    plan = spec.noise_plan()
    assert plan is not None
    control.jobs["job-1"]["privacy"] = plan.view(2)  # what the daemon's job view holds after two releases
    shown = await villagectl("jobs", "show", "job-1", "--data-dir", str(data_dir))
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    for field in ("epsilon_spent", "epsilon_remaining", "epsilon_spent_against_outsiders", "neighbouring"):
        assert field in text
    assert "add or remove one client's vector" in text and "differential privacy" in text
    assert f"{plan.spent(2):.3g}" in text


def test_spec_file_may_be_toml_with_the_specs_federation_table(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('kind = "vector"\ndata = "stats"\ndimension = 4\n\n[federation]\nround_interval_minutes = 30\n'
                    "max_round_duration_seconds = 300\n")
    spec = build_spec(path, {"rounds": 2}, [])
    assert spec == {"kind": "vector", "data": "stats", "dimension": 4, "rounds": 2,
                    "federation": {"round_interval_minutes": 30, "max_round_duration_seconds": 300}}
    parsed = JobSpec.from_dict(translate_job(spec))  # what villaged does with it
    assert (parsed.round_interval, parsed.phase_timeout) == (1800.0, 60.0)
    path.write_text("kind = \n")
    with pytest.raises(CliError, match="job.toml is not valid TOML"):
        build_spec(path, {}, [])
