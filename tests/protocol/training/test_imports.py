"""Importing the training core loads neither scikit-learn nor any I/O module.

scikit-learn is imported where it is used (protocol/training/__init__.py says why): its joblib
pulls in asyncio and socket, which protocol/ keeps out of every import, and it costs villagectl
and villaged most of a second to start. importlib.metadata (for installed trainers) is imported
where it is used for the same reason: it loads the email package, which imports socket. Checked in
a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CORE = ["protocol.training.model", "protocol.training.data", "protocol.training.trainers",
        "protocol.training.optimizers"]
FORBIDDEN = ["trio", "libp2p", "socket", "sqlite3", "asyncio", "sklearn", "joblib"]


def test_importing_the_training_core_loads_no_io_modules_and_no_sklearn() -> None:
    code = (
        "import sys\n"
        f"before = {{m for m in {FORBIDDEN!r} if m in sys.modules}}\n"
        f"for name in {CORE!r}:\n"
        "    __import__(name)\n"
        f"print(sorted({{m for m in {FORBIDDEN!r} if m in sys.modules}} - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert ast.literal_eval(out.stdout.strip()) == []
