"""structlog setup for villaged: JSON lines for machines, a readable console for people.

Call `configure_logging` once at startup. Output goes to stderr: one JSON object per line when
stderr is not a terminal (systemd, netsim, log shippers), colourless key=value console lines
when it is. Records from the stdlib `logging` module -- py-libp2p logs through it -- pass
through the same renderer, so one stream carries both, in one format.

Round logs use `log_round` so every round line has the same keys (job, round, attempt,
coordinator, participants, phase timings), which makes them greppable and easy to chart.

(Named ``logs``, not ``logging``: it must not shadow the stdlib module it configures.)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TextIO

import structlog

__all__ = ["LEVELS", "configure_logging", "log_round"]

Level = Literal["debug", "info", "warning", "error"]
LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# py-libp2p is chatty at DEBUG/INFO; keep it one notch quieter than our own level unless we are
# debugging, so `--log-level info` shows village's events rather than libp2p's stream churn.
_THIRD_PARTY_FLOOR: Final = logging.WARNING


def configure_logging(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stderr) at ``level``.

    Call it once at startup, after libp2p has been imported (see the comment at the end).

    Args:
        level: one of `LEVELS` (case-insensitive).
        json: force JSON (True) or console (False) output; by default JSON unless ``stream`` is a TTY.

    Raises:
        ValueError: ``level`` is not one of `LEVELS`; the message lists the valid ones.
    """
    numeric = LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # foreign_pre_chain runs on records that did not come from structlog (libp2p, trio).
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    third_party = numeric if numeric == logging.DEBUG else max(numeric, _THIRD_PARTY_FLOOR)
    # libp2p.network.auto_connector pins itself to INFO on import and then logs "initiating 500000 new
    # dials" on every start (its target is the default watermark, not a real dial count): it gets the floor too.
    for name in ("libp2p", "libp2p.network.auto_connector", "multiaddr", "trio", "asyncio"):
        logging.getLogger(name).setLevel(third_party)
    # Importing py-libp2p (0.8.1, libp2p/utils/logging.py) clears the "libp2p" logger's handlers
    # and sets propagate=False, which silences it unless LIBP2P_DEBUG is set (and then it logs to
    # its own stderr handler and a temp file). Undo that so libp2p records reach our handler.
    # This is why configure_logging must run *after* libp2p is imported.
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers.clear()
    libp2p_logger.propagate = True


def log_round(
    logger: Any,
    event: str,
    *,
    job: str,
    round: int,
    attempt: int,
    coordinator: bytes,
    participants: Sequence[bytes],
    phase_timings: Mapping[str, float],
    **extra: Any,
) -> None:
    """Log one round event with the standard keys; member ids are shortened hex for readability."""
    logger.info(
        event,
        job=job,
        round=round,
        attempt=attempt,
        coordinator=coordinator.hex()[:16],
        participants=[p.hex()[:16] for p in participants],
        n_participants=len(participants),
        phase_timings={name: round_seconds(value) for name, value in phase_timings.items()},
        **extra,
    )


def round_seconds(value: float) -> float:
    return float(f"{value:.4f}")
