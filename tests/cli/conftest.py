"""Fixtures for villagectl tests: a real control API on loopback over the fake NodeControl.

CliRunner swaps sys.stdout process-wide while a command runs, and these tests run the API
server in the same process: keep the server's info/debug logs out of the captured CLI output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import structlog
import trio

from tests.villaged.fake_control import FakeControl
from villaged.api import serve_api
from villaged.metrics import Metrics


@pytest.fixture(autouse=True)
def quiet_server_logs() -> Iterator[None]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
async def data_dir(nursery: trio.Nursery, tmp_path: Path, control: FakeControl) -> Path:
    """The data dir of a running API server (api.json and api.token inside)."""
    await nursery.start(partial(serve_api, control, Metrics(), tmp_path / "node"))
    return tmp_path / "node"
