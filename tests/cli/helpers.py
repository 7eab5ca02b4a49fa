"""Running villagectl in tests: CliRunner in a worker thread, so the API server can keep serving in
the test's trio loop, and the check every failure must pass (one line, an exit code, no traceback)."""

from __future__ import annotations

from functools import partial

import trio
from typer.testing import CliRunner, Result

from cli.main import app

runner = CliRunner()


async def villagectl(*args: str, env: dict[str, str] | None = None) -> Result:
    return await trio.to_thread.run_sync(partial(runner.invoke, app, list(args), env=env, prog_name="villagectl"))


def assert_one_line_error(result: Result, exit_code: int, fragment: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
