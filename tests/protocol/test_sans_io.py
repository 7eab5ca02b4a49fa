"""protocol/ is sans-IO: no network, no clock, no filesystem, no OS randomness, no event loop.

Checked on the source (every import statement, at any depth, including function-local and
`importlib` by name) and on the running interpreter (importing every protocol module pulls in
none of the forbidden modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imports import imported_modules

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
FORBIDDEN = {"trio", "libp2p", "socket", "sqlite3", "time", "os", "random", "asyncio"}
SOURCES = sorted(PROTOCOL.rglob("*.py"))


def test_there_are_protocol_sources() -> None:
    names = {p.name for p in SOURCES}
    assert {"client.py", "coordinator.py", "wire.py", "crypto.py", "shamir.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_forbidden_imports(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_checker_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport trio.lowlevel\nfrom time import monotonic\nimport importlib\n"
        "def f():\n    import socket\n    return importlib.import_module('sqlite3')\n"
    )
    assert {m.split(".")[0] for m in imported_modules(sample)} >= {"os", "trio", "time", "socket", "sqlite3"}


def test_importing_protocol_loads_no_io_modules() -> None:
    # In a fresh interpreter: which forbidden modules does importing every protocol module add?
    # (the interpreter itself preloads some, e.g. os, so compare against a baseline)
    modules = sorted(".".join(p.relative_to(PROTOCOL.parent).with_suffix("").parts) for p in SOURCES
                     if p.stem != "__init__")
    code = (
        "import sys\n"
        f"forbidden = {sorted(FORBIDDEN)!r}\n"
        "before = {m for m in forbidden if m in sys.modules}\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "after = {m for m in forbidden if m in sys.modules}\n"
        "print(sorted(after - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROTOCOL.parent)
    added = out.stdout.strip()
    # numpy and cryptography are allowed dependencies; they may import `os`, but never a network or event loop
    assert not {"trio", "libp2p", "socket", "sqlite3", "asyncio"} & set(ast.literal_eval(added)), added
