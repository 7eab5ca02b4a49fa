"""netsim/observe.py: the figures read from a peer's /metrics and /proc, and a peer that does not answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli.errors import DaemonNotRunning
from netsim.cluster import Peer
from netsim.observe import parallel, parse_bytes_metrics, process_cpu_seconds, quiet


def test_bytes_are_summed_over_protocols_and_other_metrics_ignored() -> None:
    text = "\n".join([
        "# TYPE village_bytes_sent_total counter",
        'village_bytes_sent_total{protocol="/village/round/1"} 1500.0',
        'village_bytes_sent_total{protocol="/village/result/1"} 2.5e3',
        'village_bytes_received_total{protocol="/village/round/1"} 700.0',
        'village_bytes_sent_created{protocol="/village/round/1"} 1.7e9',
        "village_rounds_total 3.0",
    ])
    assert parse_bytes_metrics(text) == {"sent": 4000, "received": 700}
    assert parse_bytes_metrics("") == {"sent": 0, "received": 0}


def test_cpu_of_a_live_process_and_of_none() -> None:
    seconds = process_cpu_seconds(os.getpid())
    assert seconds is not None and seconds > 0
    assert process_cpu_seconds(2**22 + 7) is None  # above the kernel's pid limit: no such process


def test_a_peer_without_its_api_is_no_answer_in_order(tmp_path: Path) -> None:
    down = Peer(0, tmp_path, b"\0" * 32, "peer", "127.0.0.1", 1)
    with pytest.raises(DaemonNotRunning, match="node000 does not serve its control API yet"):
        down.api.get("/v1/status")
    assert parallel(quiet(lambda x: x if x else down.api.get("/v1/status")), [1, 0, 2]) == [1, None, 2]
