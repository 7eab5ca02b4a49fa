"""Where the tests find promtool (Debian's `prometheus` package; .ci/run installs it when missing)."""

from __future__ import annotations

import shutil


def promtool() -> str:
    """The promtool on PATH. Missing is a failure, not a skip: CI installs it, and so must a developer
    (`apt-get install prometheus`), or the shipped alert rules go untested."""
    found = shutil.which("promtool")
    assert found is not None, "promtool not found: apt-get install prometheus (what .ci/run does)"
    return found
