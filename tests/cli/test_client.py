"""Tests for cli/client.py against a real control API on loopback (the CLI's other commands will use these calls)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from cli.client import ApiClient
from cli.errors import ApiError, CliError
from tests.villaged.fake_control import FakeControl
from villaged.api import serve_api
from villaged.metrics import Metrics


async def test_post_put_get_and_error_mapping(nursery: trio.Nursery, tmp_path: Path) -> None:
    await nursery.start(partial(serve_api, FakeControl(), Metrics(), tmp_path))
    client = ApiClient.discover(tmp_path)
    job = await trio.to_thread.run_sync(client.post, "/v1/jobs", {"rounds": 2})
    assert job["id"] == "job-1"
    assert (await trio.to_thread.run_sync(client.put, "/v1/data/lat", {"m": 1}))["name"] == "lat"
    assert (await trio.to_thread.run_sync(client.get, "/v1/data/lat"))["payload"] == {"m": 1}
    with pytest.raises(ApiError) as info:
        await trio.to_thread.run_sync(client.post, "/v1/jobs", {"rounds": -1})
    assert (info.value.status, info.value.code) == (422, "invalid_field")
    assert info.value.message == "request body: rounds: must be a positive integer, got -1"
    with pytest.raises(ApiError, match=r"\(404 not_found\): no job 'zzz'"):
        await trio.to_thread.run_sync(client.get, "/v1/jobs/zzz")


@pytest.mark.parametrize(("url", "fragment"), [("ftp://x:1", "expected http://HOST:PORT"), ("http://127.0.0.1", "port is missing")])
def test_bad_api_flag(url: str, fragment: str) -> None:
    with pytest.raises(CliError, match=fragment):
        ApiClient.discover(Path("/nonexistent"), api_url=url, token="t")


def test_empty_token_file(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text('{"host": "127.0.0.1", "port": 1}')
    (tmp_path / "api.token").write_text("\n")
    with pytest.raises(CliError, match="api.token is empty"):
        ApiClient.discover(tmp_path)


async def test_get_text_reads_the_metrics_exposition(nursery: trio.Nursery, tmp_path: Path) -> None:
    await nursery.start(partial(serve_api, FakeControl(), Metrics(), tmp_path))
    client = ApiClient.discover(tmp_path)
    text = await trio.to_thread.run_sync(client.get_text, "/metrics")
    assert "# TYPE village_bytes_sent_total counter" in text.splitlines()
    with pytest.raises(ApiError, match=r"\(404 no_route\): no route GET /no/such/page"):
        await trio.to_thread.run_sync(client.get_text, "/no/such/page")
