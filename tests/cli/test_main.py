"""Tests for cli/main.py and cli/client.py: villagectl against a real control API on loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio
import typer

from protocol.membership import AdminKeyPair, verify_certificate
from tests.cli.helpers import runner, villagectl
from cli.main import app


async def test_status_table_and_json(data_dir: Path) -> None:
    table = await villagectl("status", "--data-dir", str(data_dir))
    assert table.exit_code == 0, table.output
    assert "12D3KooWFake" in table.stdout and "village_id" in table.stdout
    assert "[/ip4/127.0.0.1/tcp/4001]" in table.stdout  # a value that looks like rich markup is printed as is
    as_json = await villagectl("status", "--json", env={"VILLAGE_DATA_DIR": str(data_dir)})
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["peer_id"] == "12D3KooWFake"


async def test_peers_table_and_json(data_dir: Path) -> None:
    table = await villagectl("peers", "--data-dir", str(data_dir))
    assert table.exit_code == 0, table.output
    assert "12D3KooWPeerOne" in table.stdout and "2 peers" in table.stdout
    as_json = await villagectl("peers", "--data-dir", str(data_dir), "--json")
    assert [p["peer_id"] for p in json.loads(as_json.stdout)] == ["12D3KooWPeerOne", "12D3KooWPeerTwo"]


async def test_explicit_api_and_wrong_token(data_dir: Path) -> None:
    info = json.loads((data_dir / "api.json").read_text())
    result = await villagectl("status", "--api", info["url"], "--token", "not-the-token", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: villaged refused the request (401 unauthorized): invalid bearer token")
    assert "Traceback" not in result.output


async def test_daemon_not_running(tmp_path: Path) -> None:
    missing = await villagectl("status", "--data-dir", str(tmp_path))
    assert missing.exit_code == 3
    assert missing.stderr == f"error: villaged is not running for {tmp_path} (no api.json); start it with: villaged start --data-dir {tmp_path}\n"
    # A stale api.json (daemon was SIGKILLed): nothing listens on that port any more.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    (tmp_path / "api.json").write_text(json.dumps({"host": "127.0.0.1", "port": free_port}))
    (tmp_path / "api.token").write_text("x" * 43)
    stale = await villagectl("peers", "--data-dir", str(tmp_path))
    assert stale.exit_code == 3
    assert "villaged is not running (nothing listens on" in stale.stderr and stale.stderr.count("\n") == 1


async def test_corrupt_api_file(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text("{half")
    result = await villagectl("status", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "api.json is not valid JSON" in result.stderr


def test_village_init_and_admit(tmp_path: Path) -> None:
    admin_dir = tmp_path / "admin"
    init = runner.invoke(app, ["village", "init", "--admin-dir", str(admin_dir)])
    assert init.exit_code == 0, init.output
    village_id = next(line.split()[-1] for line in init.stdout.splitlines() if line.startswith("village id:"))
    public_key = next(line.split()[-1] for line in init.stdout.splitlines() if line.startswith("admin public key:"))
    member = AdminKeyPair(seed=b"m" * 32).public_key  # any Ed25519 public key serves as a member id
    cert_path = tmp_path / "m.cert"
    admit = runner.invoke(
        app, ["village", "admit", member.hex(), "--admin-dir", str(admin_dir), "--expires", "2d", "--out", str(cert_path)]
    )
    assert admit.exit_code == 0, admit.output
    cert = verify_certificate(
        cert_path.read_bytes(), bytes.fromhex(public_key), bytes.fromhex(village_id), now=time.time(), member_id=member
    )
    assert 2 * 86_400 - 5 <= cert.expires_at - time.time() <= 2 * 86_400
    again = runner.invoke(app, ["village", "init", "--data-dir", str(admin_dir)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.stderr


def test_admit_takes_what_villaged_id_prints(tmp_path: Path) -> None:
    """`villaged id` output, plain, --json or --quiet, as text or as a file, admits that member."""
    from villaged.main import app as villaged_app

    admin_dir = tmp_path / "admin"
    assert runner.invoke(app, ["village", "init", "--admin-dir", str(admin_dir)]).exit_code == 0
    node = tmp_path / "node"
    printed = {form: runner.invoke(villaged_app, ["id", "--data-dir", str(node), *flags])
               for form, flags in (("plain", []), ("json", ["--json"]), ("quiet", ["-q"]))}
    assert all(result.exit_code == 0 for result in printed.values())
    member = printed["quiet"].stdout.strip()
    assert len(member) == 64 and json.loads(printed["json"].stdout)["member_id"] == member
    assert printed["plain"].stdout.startswith(f"member_id {member}\npeer_id 12D3KooW")
    for form, result in printed.items():
        id_file = tmp_path / f"{form}.id"
        id_file.write_text(result.stdout)
        for i, given in enumerate((str(id_file), result.stdout)):
            admit = runner.invoke(app, ["village", "admit", given, "--admin-dir", str(admin_dir),
                                        "--out", str(tmp_path / f"{form}-{i}.cert")])
            assert admit.exit_code == 0, admit.output
            assert f"member:      {member}" in admit.stdout


def test_admit_errors_are_one_line(tmp_path: Path) -> None:
    no_key = runner.invoke(app, ["village", "admit", "ab" * 32, "--admin-dir", str(tmp_path)])
    assert no_key.exit_code == 1 and no_key.stderr.startswith("error: no admin key at")
    runner.invoke(app, ["village", "init", "--admin-dir", str(tmp_path)])
    bad_expiry = runner.invoke(app, ["village", "admit", "ab" * 32, "--admin-dir", str(tmp_path), "--expires", "later"])
    assert bad_expiry.exit_code == 1 and "--expires 'later'" in bad_expiry.stderr
    assert bad_expiry.stderr.count("\n") == 1


async def test_members_table_and_json(data_dir: Path) -> None:
    table = await villagectl("village", "members", "--data-dir", str(data_dir))
    assert table.exit_code == 0, table.output
    assert "1 members" in table.stdout and "b0b0b0b0b0b0b0b0" in table.stdout and "2027-01-15" in table.stdout
    assert "12D3KooW" in table.stdout  # the peer id derived from the member id
    as_json = await villagectl("village", "members", "--data-dir", str(data_dir), "--json")
    assert json.loads(as_json.stdout) == [{"member_id": "b0" * 32, "expires_at": 1_800_000_000}]


async def test_tables_have_no_colour_codes_off_a_tty(data_dir: Path) -> None:
    result = await villagectl("status", "--data-dir", str(data_dir))
    assert result.exit_code == 0 and "\x1b[" not in result.stdout


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands if c.callback]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None and sub.name is not None
        found += _commands(sub.typer_instance, (*prefix, sub.name))
    return found


def test_every_command_has_help_with_an_example() -> None:
    commands = _commands(app)
    expected = {
        ("status",), ("peers",), ("rounds",), ("priors",), ("village", "init"), ("village", "admit"), ("village", "members"),
        ("village", "revoke"), ("village", "publish-revocations"), ("village", "reload-certificate"),
        ("jobs", "create"), ("jobs", "list"), ("jobs", "show"), ("jobs", "result"), ("jobs", "cancel"),
        ("jobs", "join"), ("jobs", "watch"), ("data", "put"), ("data", "show"), ("data", "policy"),
        ("train", "create"), ("train", "join"), ("train", "list"), ("train", "show"), ("train", "watch"), ("train", "model"),
    }  # fmt: skip
    assert set(commands) == expected
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], prog_name="villagectl")
        assert result.exit_code == 0, (command, result.output)
        assert "Example" in result.stdout and f"villagectl {' '.join(command)}" in result.stdout, command


def test_shell_completion() -> None:
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="villagectl")
    assert script.exit_code == 0, (script.output, script.exception)
    assert "complete -o default -F _villagectl_completion villagectl" in script.stdout
    env = {"_VILLAGECTL_COMPLETE": "complete_bash", "COMP_WORDS": "villagectl jobs w", "COMP_CWORD": "2"}
    assert runner.invoke(app, [], prog_name="villagectl", env=env).stdout.split() == ["watch"]


async def test_job_ids_complete_from_the_daemon(data_dir: Path) -> None:
    await villagectl("jobs", "create", "--rounds", "1", "--data-dir", str(data_dir))
    env = {"_VILLAGECTL_COMPLETE": "complete_bash", "COMP_WORDS": f"villagectl jobs show --data-dir {data_dir} j",
           "COMP_CWORD": "5"}
    assert (await villagectl(env=env)).stdout.split() == ["job-1"]
