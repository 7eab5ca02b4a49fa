"""Tests for villaged/logs.py: JSON lines off a TTY, console otherwise, stdlib routed through."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from villaged.logs import configure_logging, log_round


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libp2p_state = (logging.getLogger("libp2p").level, logging.getLogger("libp2p").propagate)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.setLevel(libp2p_state[0])
    libp2p_logger.propagate = libp2p_state[1]
    structlog.reset_defaults()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty_and_stdlib_is_routed() -> None:
    # What `import libp2p` does to its logger (py-libp2p 0.8.1, without LIBP2P_DEBUG).
    logging.getLogger("libp2p").propagate = False
    out = io.StringIO()
    configure_logging("info", stream=out)
    structlog.get_logger("villaged.test").info("job_created", job="j1")
    logging.getLogger("libp2p.pubsub").warning("peer %s misbehaved", "QmX")
    logging.getLogger("libp2p.pubsub").info("too chatty to show")
    structlog.get_logger("villaged.test").debug("below level")
    records = lines(out)
    assert [r["event"] for r in records] == ["job_created", "peer QmX misbehaved"]
    assert records[0]["job"] == "j1" and records[0]["level"] == "info" and "timestamp" in records[0]
    assert records[1]["logger"] == "libp2p.pubsub" and records[1]["level"] == "warning"


def test_console_on_a_tty() -> None:
    out = FakeTTY()
    configure_logging("debug", stream=out)
    structlog.get_logger().debug("hello", peer="abc")
    text = out.getvalue()
    assert "hello" in text and "peer=abc" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_round_log_has_the_standard_keys() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    log_round(
        structlog.get_logger(),
        "round_completed",
        job="j1",
        round=3,
        attempt=1,
        coordinator=b"\xc0" * 32,
        participants=[b"\xa1" * 32, b"\xb0" * 32],
        phase_timings={"advertise_keys": 0.123456, "unmask": 1.0},
        dropped=0,
    )
    (record,) = lines(out)
    assert record["job"] == "j1" and record["round"] == 3 and record["attempt"] == 1
    assert record["coordinator"] == "c0" * 8
    assert record["participants"] == ["a1" * 8, "b0" * 8] and record["n_participants"] == 2
    assert record["phase_timings"] == {"advertise_keys": 0.1235, "unmask": 1.0}
    assert record["dropped"] == 0


def test_bad_level_is_named() -> None:
    with pytest.raises(ValueError, match="'loud' is not one of debug, info, warning, error"):
        configure_logging("loud")


def test_libp2p_auto_connector_start_line_is_silenced_at_info_and_kept_at_debug() -> None:
    """py-libp2p's auto-connector pins its logger to INFO on import and logs "initiating 500000 new
    dials" at every start; villaged's floor for third-party loggers covers it."""
    import libp2p.network.auto_connector  # noqa: F401 (the import pins the level)

    connector = logging.getLogger("libp2p.network.auto_connector")
    for level, shown in (("info", False), ("debug", True)):
        out = io.StringIO()
        configure_logging(level, stream=out, json=True)
        connector.info("Connections below target; initiating %s new dials", 500000)
        connector.warning("a real problem")
        lines = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
        assert ("Connections below target; initiating 500000 new dials" in lines) is shown
        assert "a real problem" in lines
    connector.setLevel(logging.INFO)
