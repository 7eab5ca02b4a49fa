"""CliRunner swaps sys.stdout process-wide while a command runs, and these tests run the API
server in the same process: keep the server's info/debug logs out of the captured CLI output."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def quiet_server_logs() -> Iterator[None]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()
