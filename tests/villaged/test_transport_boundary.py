"""py-libp2p stays inside villaged/transport/: no other module of villaged, cli or netsim imports it.

Checked on the source (every import statement, at any depth, with tests/imports.py, the checker
tests/protocol/test_sans_io.py uses); names from the network (peer ids, hosts, streams) reach
the rest of the daemon only through `villaged.transport`'s own names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imports import imported_modules

ROOT = Path(__file__).resolve().parents[2]
TRANSPORT = ROOT / "villaged" / "transport"
NETWORK_LIBRARIES = {"libp2p", "multiaddr"}
OUTSIDE = sorted(
    p for folder in ("villaged", "cli", "netsim") for p in (ROOT / folder).rglob("*.py") if TRANSPORT not in p.parents
)


def test_the_transport_package_is_where_libp2p_is() -> None:
    inside = [p for p in TRANSPORT.rglob("*.py") if {m.split(".")[0] for m in imported_modules(p)} & NETWORK_LIBRARIES]
    assert {p.name for p in inside} >= {"__init__.py", "host.py", "framing.py", "gossip.py", "discovery.py"}


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_libp2p_import_outside_transport(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in NETWORK_LIBRARIES}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: keep it in villaged/transport/"
