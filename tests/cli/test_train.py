"""villagectl train against a real control API over the fake NodeControl's training answers."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

from cli.train import sparkline
from tests.cli.helpers import assert_one_line_error, villagectl
from tests.villaged.fake_control import FakeControl, fake_model


async def _create(data_dir: Path, *flags: str) -> str:
    created = await villagectl("train", "create", "--name", "digits", *flags, "--data-dir", str(data_dir))
    assert created.exit_code == 0, created.output
    return created.stdout.strip()


async def test_create_posts_the_seeds_body_from_flags(data_dir: Path, control: FakeControl) -> None:
    created = await villagectl(
        "train", "create", "--name", "digits", "--architecture", "mlp", "--features", "64", "--classes", "10",
        "--hidden", "32", "--hidden", "16", "--seed", "7", "--rounds", "30", "--min-participants", "3",
        "--max-participants", "8", "--local-epochs", "2", "--learning-rate", "0.05", "--batch-size", "16",
        "--optimizer", "fedadam", "--server-lr", "0.01", "--data", "digits-local", "--round-interval", "5",
        "--start-delay", "10", "--dp", "--epsilon", "1", "--delta", "1e-5", "--l2-clip", "0.5",
        "--no-secure-aggregation", "--min-battery", "40", "--node-type", "laptop", "--node-type", "mobile",
        "--min-gflops", "2.5", "--min-memory-gb", "4", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert created.stdout == "train-1\n"
    assert control.training["train-1"]["body"] == {
        "job_name": "digits",
        "model_config": {"architecture": "mlp", "features": 64, "classes": 10, "hidden": [32, 16], "seed": 7},
        "training_config": {
            "rounds": 30, "min_participants": 3, "max_participants": 8, "local_epochs": 2, "learning_rate": 0.05,
            "batch_size": 16, "server_optimizer": {"name": "fedadam", "learning_rate": 0.01}, "data": "digits-local",
            "round_interval": 5.0, "start_delay": 10.0,
        },
        "privacy_config": {"differential_privacy": True, "epsilon": 1.0, "delta": 1e-5, "l2_clip": 0.5,
                           "secure_aggregation": False},
        "participant_requirements": {"min_battery_percent": 40, "allowed_node_types": ["laptop", "mobile"],
                                     "min_compute_gflops": 2.5, "min_memory_gb": 4.0},
    }  # fmt: skip


async def test_create_from_a_body_file_with_flags_over_it_and_weights(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    body = tmp_path / "job.json"
    body.write_text(json.dumps({
        "job_name": "from-file", "model_config": {"architecture": "logistic", "features": 4, "classes": 3},
        "training_config": {"rounds": 5, "server_optimizer": {"name": "fedavgm", "momentum": 0.8}},
        "privacy_config": {"differential_privacy": True, "epsilon": 3, "delta": 1e-6},
    }))  # fmt: skip
    weights = tmp_path / "init.safetensors"
    weights.write_bytes(fake_model("any", 3))
    created = await villagectl("train", "create", "--body", str(body), "--rounds", "2", "--server-lr", "0.5",
                               "--epsilon", "2", "--weights", str(weights), "--json", "--data-dir", str(data_dir))  # fmt: skip
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout) == {"job_id": "train-1", "status": "pending", "estimated_start_time": 1_700_000_030.0,
                                          "rounds": 2, "model_parameters": 650}  # fmt: skip
    posted = control.training["train-1"]["body"]
    assert posted["training_config"] == {"rounds": 2, "server_optimizer": {"name": "fedavgm", "momentum": 0.8, "learning_rate": 0.5}}
    assert posted["privacy_config"] == {"differential_privacy": True, "epsilon": 2.0, "delta": 1e-6}
    assert base64.b64decode(posted["model_config"].pop("initial_weights")) == weights.read_bytes()
    assert posted["model_config"] == {"architecture": "logistic", "features": 4, "classes": 3}
    # --no-dp over a file that turned DP on leaves its epsilon to the daemon, which then ignores it.
    again = await villagectl("train", "create", "--body", str(body), "--no-dp", "--data-dir", str(data_dir))
    assert again.exit_code == 0, again.output
    assert control.training["train-2"]["body"]["privacy_config"]["differential_privacy"] is False


async def test_the_posted_body_is_one_the_daemons_parser_takes_field_for_field(data_dir: Path, control: FakeControl,
                                                                               tmp_path: Path) -> None:
    from protocol.training.model import Architecture, initial_weights, to_safetensors
    from protocol.training.request import job_from_request

    architecture = Architecture.from_dict({"architecture": "mlp", "features": 8, "classes": 3, "hidden": [4]})
    weights = tmp_path / "init.safetensors"
    weights.write_bytes(to_safetensors(architecture, initial_weights(architecture, 3)))
    job = await _create(data_dir, "--architecture", "mlp", "--features", "8", "--classes", "3", "--hidden", "4",
                        "--weights", str(weights), "--rounds", "4", "--min-participants", "10", "--max-participants", "20",
                        "--optimizer", "fedavgm", "--server-lr", "0.5", "--dp", "--epsilon", "8", "--delta", "1e-5",
                        "--l2-clip", "0.5", "--no-secure-aggregation", "--node-type", "laptop", "--min-battery", "30")  # fmt: skip
    spec, blob = job_from_request(control.training[job]["body"])
    assert blob == weights.read_bytes()
    training = spec.training
    assert training is not None and spec.privacy is not None
    assert (spec.name, spec.rounds, spec.min_participants, spec.max_participants) == ("digits", 5, 10, 20)
    assert (training.server_optimizer.name, training.server_optimizer.learning_rate) == ("fedavgm", 0.5)
    assert (spec.privacy.budget_epsilon, spec.privacy.l2_clip, training.secure_aggregation) == (8.0, 0.5, False)
    assert (training.requirements.allowed_node_types, training.requirements.min_battery_percent) == (("laptop",), 30)


async def test_weights_beyond_the_usual_body_limit_are_sent(data_dir: Path, tmp_path: Path) -> None:
    """A model of 100,000 float64 parameters is 1.07 MB in base64, beyond the API's usual 1 MiB: the
    create_job route takes it from a caller with the token."""
    header = json.dumps({"w": {"dtype": "F64", "shape": [100_000], "data_offsets": [0, 800_000]}}).encode()
    weights = tmp_path / "big.safetensors"
    weights.write_bytes(struct.pack("<Q", len(header)) + header + bytes(800_000))
    result = await villagectl("train", "create", "--name", "x", "--weights", str(weights), "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().startswith("train-")


async def test_create_refusals_name_the_field_and_its_flag(data_dir: Path, tmp_path: Path) -> None:
    bad_rounds = await villagectl("train", "create", "--name", "x", "--rounds", "0", "--data-dir", str(data_dir))
    assert_one_line_error(bad_rounds, 1, "error: invalid training job: field 'training_config.rounds' (--rounds): "
                                         "must be an integer in [1, 1000], got 0")  # fmt: skip
    no_name = await villagectl("train", "create", "--rounds", "3", "--data-dir", str(data_dir))
    assert_one_line_error(no_name, 1, "error: invalid training job: field 'job_name' (--name): is required")
    bad_type = await villagectl("train", "create", "--name", "x", "--node-type", "toaster", "--data-dir", str(data_dir))
    assert_one_line_error(bad_type, 1, "error: invalid training job: field 'participant_requirements.allowed_node_types[0]' "
                                       "(--node-type): must be one of server, desktop, laptop, mobile, edge, got 'toaster'")
    no_dp = await villagectl("train", "create", "--name", "x", "--epsilon", "1", "--data-dir", str(data_dir))
    assert_one_line_error(no_dp, 1, "error: --epsilon sets differential privacy's budget: add --dp")
    not_weights = tmp_path / "w.safetensors"
    not_weights.write_bytes(b"\xff" * 40)
    result = await villagectl("train", "create", "--name", "x", "--weights", str(not_weights), "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "w.safetensors is not a safetensors file (its first 8 bytes must give the header's length)")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1]")
    result = await villagectl("train", "create", "--body", str(not_object), "--data-dir", str(data_dir))
    assert_one_line_error(result, 1, "list.json: a create_job body must be a JSON object")
    unknown = await villagectl("train", "create", "--architecture", "cnn", "--data-dir", str(data_dir))
    assert unknown.exit_code == 2 and "cnn" in unknown.stderr


async def test_join_declares_capabilities_and_a_403_names_the_requirement(data_dir: Path, control: FakeControl) -> None:
    job = await _create(data_dir, "--min-battery", "50")
    refused = await villagectl("train", "join", job, "--device-type", "mobile", "--battery", "12", "--data-dir", str(data_dir))
    assert_one_line_error(refused, 1, f"error: cannot join training job {job}: this node does not meet the job's "
                                      "participant_requirements: min_battery_percent: this node reports 12 % and is not "
                                      "charging, the job needs 50")  # fmt: skip
    joined = await villagectl("train", "join", job, "--device-type", "mobile", "--battery", "12", "--charging",
                              "--data-dir", str(data_dir))  # fmt: skip
    assert joined.exit_code == 0, joined.output
    assert joined.stdout.startswith(f"joined training job {job} (pending); capabilities: device_type mobile, battery_percent 12")
    assert control.training[job]["joined"] == {"capabilities": {"device_type": "mobile", "battery_percent": 12, "charging": True}}
    as_json = await villagectl("train", "join", job, "--json", "--data-dir", str(data_dir))
    assert json.loads(as_json.stdout)["capabilities"]["device_type"] == "server"
    assert control.training[job]["joined"] == {"capabilities": {}}
    out_of_range = await villagectl("train", "join", job, "--battery", "120", "--data-dir", str(data_dir))
    assert out_of_range.exit_code == 2


async def test_unknown_training_job_is_one_line_for_every_command(data_dir: Path) -> None:
    for command in (("join",), ("show",), ("watch",), ("model",)):
        result = await villagectl("train", *command, "nope", "--data-dir", str(data_dir))
        assert_one_line_error(result, 1, "error: no training job 'nope' on this node; list the training jobs it knows "
                                         "with: villagectl train list")  # fmt: skip


async def test_list_table_and_json(data_dir: Path, control: FakeControl) -> None:
    empty = await villagectl("train", "list", "--data-dir", str(data_dir))
    assert empty.exit_code == 0 and empty.stdout.startswith("no training jobs; create one with: villagectl train create")
    job = await _create(data_dir, "--rounds", "3")
    for _ in range(2):
        control.advance_training(job)
    listed = await villagectl("train", "list", "--data-dir", str(data_dir))
    assert listed.exit_code == 0, listed.output
    text = listed.stdout
    assert "1 training jobs" in text and "train-1" in text and "digits" in text and "2/3" in text and "running" not in text
    assert "70.00%" in text and "0.8400" in text  # accuracy and loss of the newest point (round 1)
    assert json.loads((await villagectl("train", "list", "--json", "--data-dir", str(data_dir))).stdout) == await control.list_training()


async def test_show_prints_the_summary_the_curve_and_a_sparkline(data_dir: Path, control: FakeControl) -> None:
    job = await _create(data_dir, "--rounds", "3", "--no-secure-aggregation")
    fresh = await villagectl("train", "show", job, "--data-dir", str(data_dir))
    assert fresh.exit_code == 0, fresh.output
    assert f"no rounds finished yet; follow the job with: villagectl train watch {job}" in fresh.stdout
    assert "secure aggregation is off" in fresh.stderr
    control.training[job]["state"] = "completed"
    for _ in range(4):
        control.advance_training(job)
    control.training[job]["curve"][1]["accuracy"] = None  # a round nobody evaluated
    control.training[job]["curve"][2]["agrees"] = False
    shown = await villagectl("train", "show", job, "--data-dir", str(data_dir))
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert any("architecture.architecture" in line and "logistic" in line for line in lines)
    assert any("rounds_done" in line and "3/3 (final model evaluated)" in line for line in lines)
    assert any("trainer" in line and "built-in" in line for line in lines)
    curve = [[text.strip() for text in line.split("│")[1:-1]] for line in lines if line.count("│") == 11]
    assert [row[:4] for row in curve] == [["0", "0", "50.00%", "1.2000"], ["1", "1", "-", "0.8400"],
                                          ["2", "2", "80.00%", "0.5880"], ["3 final", "3", "85.00%", "0.4116"]]
    assert [row[-1].endswith("DIFFERS") for row in curve] == [False, False, True, False] and curve[3][-1] == "-"
    assert "accuracy ▁ ▇█  50.00% -> 85.00% (best 85.00% at round 3)" in lines
    assert "warning: round 2: this node's next model differs from the digest the coordinator announced" in shown.stderr
    as_json = await villagectl("train", "show", job, "--json", "--data-dir", str(data_dir))
    assert json.loads(as_json.stdout) == await control.training_status(job)


async def test_watch_follows_the_rounds_and_prints_the_final_curve(data_dir: Path) -> None:
    job = await _create(data_dir, "--rounds", "2")
    watched = await villagectl("train", "watch", job, "--interval", "0", "--data-dir", str(data_dir))
    assert watched.exit_code == 0, watched.output
    lines = watched.stdout.splitlines()
    assert lines[0] == f"training job {job} is running"
    assert "round 0: accuracy 50.00%, loss 1.2000, 4 participants, 0 dropped" in lines
    assert "round 1: accuracy 70.00%, loss 0.8400, 4 participants, 1 dropped" in lines
    assert "final model: accuracy 80.00%, loss 0.5880, 4 participants, 0 dropped" in lines
    assert f"training job {job} is completed" in lines
    assert "2/2" in watched.stdout and "\x1b[" not in watched.stdout
    assert any(line.startswith("│") and "2 final" in line for line in lines)
    assert lines[-1] == "accuracy ▁▆█  50.00% -> 80.00% (best 80.00% at round 2)"


async def test_watch_json_lines_carry_each_point_once(data_dir: Path, control: FakeControl) -> None:
    job = await _create(data_dir, "--rounds", "3")
    watched = await villagectl("train", "watch", job, "--interval", "0", "--json", "--data-dir", str(data_dir))
    assert watched.exit_code == 0, watched.output
    snapshots = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(s["state"], s["rounds_done"]) for s in snapshots] == [
        ("running", 0), ("running", 1), ("running", 2), ("running", 3), ("completed", 4)
    ]
    assert [point for s in snapshots for point in s["curve"]] == control.training[job]["curve"]


async def test_watch_a_cancelled_job_exits_4(data_dir: Path, control: FakeControl) -> None:
    job = await _create(data_dir, "--rounds", "3")
    control.training[job]["state"] = "cancelled"
    watched = await villagectl("train", "watch", job, "--data-dir", str(data_dir))
    assert_one_line_error(watched, 4, f"error: training job {job} ended cancelled after 0/3 rounds; see: villagectl train show {job}")


async def test_model_is_written_only_when_its_digest_matches(data_dir: Path, control: FakeControl, tmp_path: Path) -> None:
    job = await _create(data_dir, "--rounds", "3")
    for _ in range(2):
        control.advance_training(job)
    out = tmp_path / "m.safetensors"
    newest = await villagectl("train", "model", job, "--out", str(out), "--data-dir", str(data_dir))
    assert newest.exit_code == 0, newest.output
    digest = hashlib.sha256(fake_model(job, 2)).hexdigest()
    assert out.read_bytes() == fake_model(job, 2)
    assert newest.stdout == f"model version 2 of training job {job}: {out.stat().st_size} bytes, sha256 {digest} -> {out}\n"
    first = await villagectl("train", "model", job, "--version", "0", "--out", str(out), "--json", "--data-dir", str(data_dir))
    assert json.loads(first.stdout) == {"job_id": job, "version": 0, "digest": hashlib.sha256(fake_model(job, 0)).hexdigest(),
                                        "bytes": len(fake_model(job, 0)), "path": str(out)}  # fmt: skip
    assert out.read_bytes() == fake_model(job, 0)
    beyond = await villagectl("train", "model", job, "--version", "9", "--out", str(out), "--data-dir", str(data_dir))
    assert_one_line_error(beyond, 1, f"error: no model version 9 of job '{job}' (versions 0 to 2 are known here) on this node")
    control.wrong_model_digest = True
    fresh = tmp_path / "fresh.safetensors"
    lied = await villagectl("train", "model", job, "--out", str(fresh), "--data-dir", str(data_dir))
    assert_one_line_error(lied, 1, f"error: model of job {job}: the bytes hash to {digest}, the daemon named ")
    assert "nothing written" in lied.stderr
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "node"]


def test_sparkline_scales_averages_and_leaves_gaps() -> None:
    assert sparkline([0.1, 0.5, 0.9]) == "▁▅█"
    assert sparkline([0.2, None, 0.2]) == "█ █"
    assert sparkline([None, None]) == "  "
    assert sparkline([float(i) for i in range(120)], width=4) == "▁▃▆█"
    assert sparkline([0.0, 1.0], ramp="_.-=+*#@") == "_@"


async def test_training_job_ids_complete_from_the_daemon(data_dir: Path) -> None:
    await _create(data_dir)
    env = {"_VILLAGECTL_COMPLETE": "complete_bash", "COMP_WORDS": f"villagectl train show --data-dir {data_dir} t",
           "COMP_CWORD": "5"}
    assert (await villagectl(env=env)).stdout.split() == ["train-1"]
