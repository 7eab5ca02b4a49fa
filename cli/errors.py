"""villagectl's errors: each one becomes a single line on stderr and a non-zero exit code.

Everything derives from `CliError`; `cli/main.py` catches it, prints ``error: <message>`` and
exits with ``exit_code``. Messages say what went wrong and what to do about it.
"""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on; ``str(self)`` is the one line we print."""

    exit_code: int = 1


class DaemonNotRunning(CliError):
    """No villaged answers for this data dir. The message says how to start one."""

    exit_code = 3


class ApiError(CliError):
    """villaged answered with an error. ``status``/``code`` come from its JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"villaged refused the request ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class JobNotCompleted(CliError):
    """``jobs watch`` saw the job end cancelled or failed (or in any state other than completed)."""

    exit_code = 4
