"""villagectl data put/show: JSON, .npy and .csv files, and one-line errors for broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.helpers import assert_one_line_error, villagectl
from tests.villaged.fake_control import FakeControl


async def test_put_json_npy_csv_and_show(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    (tmp_path / "stats.json").write_text('{"values": [1.5, 2]}')
    np.save(tmp_path / "vector.npy", np.array([1, 2, 3], dtype=np.int32))
    (tmp_path / "column.csv").write_text("0.5\n-2\n\n1e3\n")
    (tmp_path / "row.csv").write_text("1, 2.25 ,3\n")
    for name, file, expected in [
        ("stats", "stats.json", {"values": [1.5, 2]}),
        ("vec", "vector.npy", [1.0, 2.0, 3.0]),
        ("col", "column.csv", [0.5, -2.0, 1000.0]),
        ("row", "row.csv", [1.0, 2.25, 3.0]),
    ]:
        put = await villagectl("data", "put", name, str(tmp_path / file), "--data-dir", str(data_dir))
        assert put.exit_code == 0, put.output
        assert put.stdout.startswith(f"stored local input {name!r}")
        assert control.data[name] == expected
    shown = await villagectl("data", "show", "vec", "--data-dir", str(data_dir))
    assert shown.exit_code == 0, shown.output
    assert "[1, 2, 3]" in shown.stdout and "local input vec" in shown.stdout
    as_json = await villagectl("data", "show", "stats", "--json", "--data-dir", str(data_dir))
    assert json.loads(as_json.stdout) == {"name": "stats", "summary": "a list of 2 values (kind vector)",
                                          "payload": {"values": [1.5, 2]}, "policy": {
        "jobs": [], "creators": [], "min_participants": None, "require_dp": False, "repeat": "same-survivors"}}
    put_json = await villagectl("data", "put", "vec", str(tmp_path / "vector.npy"), "--json", "--data-dir", str(data_dir))
    assert json.loads(put_json.stdout)["name"] == "vec"


SPEC_RECORD = {"model_id": "gpt-4", "region": "us-west", "quality_tier": "high",
               "latency_percentile": {"p50": 850, "p95": 1200, "p99": 1800}, "success_rate": 0.987, "sample_count": 15420}


async def test_put_the_specs_model_performance_record(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    """The spec's record as written (success_rate and sample_count, no counts) is stored, and the
    reply says its counts are derived."""
    (tmp_path / "spec.json").write_text(json.dumps({"models": [SPEC_RECORD]}))
    put = await villagectl("data", "put", "stats", str(tmp_path / "spec.json"), "--data-dir", str(data_dir))
    assert put.exit_code == 0, put.output
    assert put.stdout.strip() == (
        "stored local input 'stats': routing-priors statistics: models 1, request_patterns 0, carbon 0; success_count "
        "and total_count of 1 model record(s) (models[0]) derived from success_rate x sample_count, rounded to whole numbers")
    assert control.data["stats"] == {"models": [SPEC_RECORD]}


async def test_put_refuses_a_rate_that_contradicts_the_counts(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    record = dict(SPEC_RECORD, success_count=100, total_count=200)  # 0.5, not 0.987
    (tmp_path / "spec.json").write_text(json.dumps({"models": [record]}))
    put = await villagectl("data", "put", "stats", str(tmp_path / "spec.json"), "--data-dir", str(data_dir))
    assert_one_line_error(put, 1, "villaged refused")
    assert "as input 'stats': stats.models[0].success_rate: 0.987 contradicts success_count / total_count" in put.stderr
    assert "stats" not in control.data


async def test_show_missing_input(data_dir: Path) -> None:
    result = await villagectl("data", "show", "nothing", "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "error: no data 'nothing' on this node; store one with: villagectl data put nothing FILE")


async def test_daemon_refuses_the_payload(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "text.json").write_text('"just text"')
    result = await villagectl("data", "put", "x", str(tmp_path / "text.json"), "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "villaged refused")
    assert "as input 'x': payload: must be a JSON object or array" in result.stderr


@pytest.mark.parametrize(
    ("file", "content", "fragment"),
    [
        ("bad.json", '{"values": [1, 2,]}', "bad.json is not valid JSON: Expecting value at line 1 column 18"),
        ("lines.json", '[1,\n 2\n 3]', "lines.json is not valid JSON: Expecting ',' delimiter at line 3 column 2"),
        ("nan.json", "[1, NaN]", "NaN is not valid JSON"),
        ("latin1.json", b"[\xe9]", "latin1.json is not UTF-8 text"),
        ("bad.csv", "1\n2\nabc\n", "bad.csv: line 3 column 1: 'abc' is not a number"),
        ("inf.csv", "1,inf", "inf.csv: line 1 column 2: 'inf' is not a finite number"),
        ("table.csv", "1,2\n3,4\n", "expected one vector (one row, or one value per line), got a table"),
        ("empty.csv", "\n", "no numbers in the file"),
        ("garbage.npy", b"not numpy at all", "garbage.npy is not a readable .npy array"),
        ("matrix.npy", np.zeros((2, 3)), "expected one vector (1 dimension), got shape (2, 3)"),
        ("strings.npy", np.array(["a"]), "expected an array of numbers, got dtype <U1"),
        ("nan.npy", np.array([1.0, np.nan]), "value 1 is nan, not a finite number"),
        ("data.txt", "1", "expected a .json, .npy or .csv file"),
        ("missing.json", None, "missing.json: no such file"),
    ],
)
async def test_broken_data_files_are_one_line(
    data_dir: Path, tmp_path: Path, file: str, content: str | bytes | np.ndarray | None, fragment: str
) -> None:
    path = tmp_path / file
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = await villagectl("data", "put", "x", str(path), "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, fragment)


async def test_put_sets_the_policy_and_policy_changes_it(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    (tmp_path / "stats.json").write_text("[1, 2]")
    creator = "ab" * 32
    put = await villagectl("data", "put", "stats", str(tmp_path / "stats.json"), "--allow-creator", creator,
                           "--allow-job", "j1", "--min-participants", "8", "--require-dp", "--data-dir", str(data_dir))
    assert put.exit_code == 0, put.output
    policy = control.policies["stats"]
    assert (policy.creators, policy.jobs, policy.min_participants, policy.require_dp, policy.repeat) == (
        (bytes.fromhex(creator),), ("j1",), 8, True, "same-survivors")
    changed = await villagectl("data", "policy", "stats", "--repeat", "allow", "--json", "--data-dir", str(data_dir))
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.stdout)["policy"] == {"jobs": [], "creators": [], "min_participants": None,
                                                    "require_dp": False, "repeat": "allow"}
    assert control.data["stats"] == [1, 2]  # the input itself is untouched


async def test_a_bad_policy_is_refused_before_the_data_is_stored(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    (tmp_path / "stats.json").write_text("[1, 2]")
    result = await villagectl("data", "put", "stats", str(tmp_path / "stats.json"), "--allow-creator", "zz",
                              "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "villaged refused the policy of 'stats': policy.creators[0]: must be a hex member id")
    assert "stats" not in control.data
    result = await villagectl("data", "policy", "stats", "--repeat", "never", "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "policy.repeat: must be one of same-survivors, allow, got 'never'")
