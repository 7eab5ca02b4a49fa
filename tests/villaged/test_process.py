"""`villaged start` as real processes: start, find each other, shut down cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from protocol.membership import AdminKeyPair
from tests.villaged.village import admit

pytestmark = pytest.mark.slow
VILLAGED = [sys.executable, "-m", "villaged.main"]


def spawn(data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start villaged and return it with the address it printed."""
    process = subprocess.Popen(
        [*VILLAGED, "start", "--data-dir", str(data_dir), "--log-level", "warning", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("listening "), (line, process.stderr.read() if process.poll() is not None else "")
    return process, line.split()[1]


def api(data_dir: Path, path: str) -> object:
    info = json.loads((data_dir / "api.json").read_text())
    token = (data_dir / "api.token").read_text().strip()
    request = urllib.request.Request(info["url"] + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_two_daemons_connect_and_stop_within_five_seconds(tmp_path: Path, signum: int) -> None:
    admin = AdminKeyPair(os.urandom(32))
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        admit(admin, d)
    first, address = spawn(dirs[0])
    second, _ = spawn(dirs[1], "--bootstrap", address)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(api(dirs[0], "/v1/members")) == 2 and len(api(dirs[1], "/v1/peers")) >= 1:  # type: ignore[arg-type]
                break
            time.sleep(0.2)
        else:
            pytest.fail("the two daemons never admitted each other")
        for process in (first, second):
            started = time.monotonic()
            process.send_signal(signum)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - started < 5.0
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
            process.communicate()  # reaps it and closes its pipes
    assert not (dirs[0] / "api.json").exists()


def test_missing_certificate_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run([*VILLAGED, "start", "--data-dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "membership.cert: certificate: missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "village.toml"
    config.write_text('data_dir = "x"\njoin_policy = "sometimes"\n')
    result = subprocess.run([*VILLAGED, "start", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "join_policy" in result.stderr and "sometimes" in result.stderr
    assert "Traceback" not in result.stderr


def test_certificate_from_another_admin_is_refused_when_the_village_is_pinned(tmp_path: Path) -> None:
    admit(AdminKeyPair(os.urandom(32)), tmp_path / "n")
    pinned = AdminKeyPair(os.urandom(32)).public_key.hex()
    result = subprocess.run([*VILLAGED, "start", "--data-dir", str(tmp_path / "n"), "--admin-public-key", pinned],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "different admin key" in result.stderr
