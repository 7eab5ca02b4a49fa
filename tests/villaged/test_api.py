"""Tests for villaged/api.py + http_server.py: a real server on loopback, real HTTP requests."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from tests.villaged.fake_control import FakeControl, Reply, http, receive_reply
from villaged.api import API_FILENAME, ROUTES, TOKEN_FILENAME, ApiEndpoint, ensure_token, serve_api
from villaged.errors import ConfigError
from villaged.http_server import HEADER_TIMEOUT_SECONDS, MAX_BODY_BYTES, MAX_CONNECTIONS_PER_ADDRESS
from villaged.metrics import Metrics


@dataclass
class Server:
    endpoint: ApiEndpoint
    token: str
    control: FakeControl
    metrics: Metrics
    data_dir: Path

    async def get(self, path: str, token: str | None = "default") -> Reply:
        return await http(self.endpoint.port, "GET", path, token=self.token if token == "default" else token)


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    control, metrics = FakeControl(), Metrics()
    endpoint = await nursery.start(partial(serve_api, control, metrics, tmp_path, port=0))
    token = (tmp_path / TOKEN_FILENAME).read_text().strip()
    return Server(endpoint, token, control, metrics, tmp_path)


def error_of(reply: Reply) -> dict[str, str]:
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]  # type: ignore[no-any-return]


async def test_files_written_on_start(server: Server) -> None:
    info = json.loads((server.data_dir / API_FILENAME).read_text())
    assert info["host"] == "127.0.0.1" and info["port"] == server.endpoint.port > 0
    assert info["url"] == f"http://127.0.0.1:{server.endpoint.port}"
    token_file = server.data_dir / TOKEN_FILENAME
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(server.token) >= 40
    assert ensure_token(server.data_dir) == server.token, "second start reuses the token"


async def test_api_file_removed_on_shutdown(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_api, FakeControl(), Metrics(), tmp_path))
        assert (tmp_path / API_FILENAME).exists()
        nursery.cancel_scope.cancel()
    assert not (tmp_path / API_FILENAME).exists()


def test_short_token_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILENAME).write_text("abc\n")
    with pytest.raises(ConfigError, match="api.token: token: shorter than"):
        ensure_token(tmp_path)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [(None, "missing bearer token"), ("wrong-token", "invalid bearer token")],
)
async def test_auth_failures(server: Server, token: str | None, fragment: str) -> None:
    reply = await http(server.endpoint.port, "GET", "/v1/status", token=token)
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert fragment in error_of(reply)["message"]


async def test_malformed_authorization_header(server: Server) -> None:
    reply = await http(server.endpoint.port, "GET", "/v1/status", headers=(("authorization", "Basic Zm9vOmJhcg=="),))
    assert reply.status == 401 and "must be 'Bearer <token>'" in error_of(reply)["message"]


async def test_authenticated_reads(server: Server) -> None:
    status = await server.get("/v1/status")
    assert status.status == 200 and status.json()["peer_id"] == "12D3KooWFake"
    peers = await server.get("/v1/peers")
    assert [p["peer_id"] for p in peers.json()] == ["12D3KooWPeerOne", "12D3KooWPeerTwo"]
    members = await server.get("/v1/members")
    assert members.json()[0]["member_id"] == "b0" * 32


async def test_public_routes_need_no_token(server: Server) -> None:
    health = await server.get("/v1/health", token=None)
    assert health.status == 200 and health.json()["status"] == "ok"
    server.metrics.rounds_completed.inc()
    metrics = await server.get("/metrics", token=None)
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"federation_rounds_completed_total 1.0" in metrics.body


async def test_job_lifecycle(server: Server) -> None:
    port = server.endpoint.port
    created = await http(port, "POST", "/v1/jobs", token=server.token, body=b'{"kind": "latency", "rounds": 3}')
    assert created.status == 201 and created.headers["location"] == "/v1/jobs/job-1"
    assert (await server.get("/v1/jobs")).json()[0]["id"] == "job-1"
    assert (await server.get("/v1/jobs/job-1")).json()["state"] == "pending"
    rounds = await server.get("/v1/jobs/job-1/rounds")
    assert rounds.json()[0]["phase_timings"] == {"unmask": 0.5}
    results = await server.get("/v1/jobs/job-1/results")
    assert results.json()[0]["aggregate"] == "00ff"
    cancelled = await http(port, "POST", "/v1/jobs/job-1/cancel", token=server.token)
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"
    again = await http(port, "POST", "/v1/jobs/job-1/cancel", token=server.token)
    assert again.status == 409 and "already cancelled" in error_of(again)["message"]
    join = await http(port, "POST", "/v1/jobs/job-1/join", token=server.token)
    assert join.status == 409 and error_of(join)["message"] == "job job-1 is cancelled"
    assert (await server.get("/v1/jobs/job-1/progress")).json()["state"] == "cancelled"
    assert (await server.get("/v1/jobs/ghost/progress")).status == 404


async def test_join_and_progress(server: Server) -> None:
    port = server.endpoint.port
    await http(port, "POST", "/v1/jobs", token=server.token, body=b'{"data": "stats", "rounds": 2}')
    no_input = await http(port, "POST", "/v1/jobs/job-1/join", token=server.token)
    assert no_input.status == 422 and error_of(no_input)["message"] == "data: no local input named 'stats'"
    await http(port, "PUT", "/v1/data/stats", token=server.token, body=b"[1.0, 2.0]")
    joined = await http(port, "POST", "/v1/jobs/job-1/join", token=server.token)
    assert joined.status == 200 and joined.json()["joined"] is True
    states = [(await server.get("/v1/jobs/job-1/progress")).json()["state"] for _ in range(3)]
    assert states == ["running", "running", "completed"]


async def test_data_put_and_get(server: Server) -> None:
    port = server.endpoint.port
    put = await http(port, "PUT", "/v1/data/latency", token=server.token, body=b'{"gpt": [1.5]}')
    assert put.status == 200
    got = await server.get("/v1/data/latency")
    assert got.json()["payload"] == {"gpt": [1.5]} and got.json()["policy"]["repeat"] == "same-survivors"
    bad = await http(port, "PUT", "/v1/data/latency", token=server.token, body=b'"text"')
    assert bad.status == 422 and error_of(bad)["message"] == "request body: payload: must be a JSON object or array"


async def test_data_policy_put_names_the_bad_field(server: Server) -> None:
    port = server.endpoint.port
    policy = await http(port, "PUT", "/v1/data/latency/policy", token=server.token,
                        body=b'{"min_participants": 7, "require_dp": true}')
    assert policy.status == 200 and policy.json()["policy"]["min_participants"] == 7
    bad = await http(port, "PUT", "/v1/data/latency/policy", token=server.token, body=b'{"jobs": ["a", 3]}')
    assert bad.status == 422
    assert error_of(bad)["message"] == "request body: policy.jobs[1]: must be a job id of 1 to 128 characters, got 3"


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "fragment"),
    [
        ("GET", "/v1/nope", 404, "no_route", "no route GET /v1/nope"),
        ("GET", "/v2/status", 404, "no_route", "no route"),
        ("GET", "/v1/jobs/ghost", 404, "not_found", "no job 'ghost'"),
        ("GET", "/v1/jobs/ghost/results", 404, "not_found", "no job 'ghost'"),
        ("GET", "/v1/data/missing", 404, "not_found", "no data 'missing'"),
        ("DELETE", "/v1/jobs", 405, "method_not_allowed", "allowed: GET, POST"),
        ("GET", "/v1/jobs/..%2Fetc", 400, "invalid_path", "path parameter 'id'"),
        ("PUT", "/v1/data/stats%0A", 400, "invalid_path", "path parameter 'name' = 'stats\\n'"),
        ("GET", "/v1/data/stats%0A", 400, "invalid_path", "path parameter 'name'"),
    ],
)
async def test_client_errors(server: Server, method: str, path: str, status: int, code: str, fragment: str) -> None:
    reply = await http(server.endpoint.port, method, path, token=server.token)
    assert reply.status == status
    error = error_of(reply)
    assert error["code"] == code and fragment in error["message"]
    if status == 405:
        assert reply.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{not json", (), 400, "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b"", (), 400, "needs a JSON request body"),
        (b'{"rounds": NaN}', (), 400, "NaN is not valid JSON"),
        (b"\xff\xfe", (), 400, "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, (), 400, "nested too deeply"),
        (b'["a list"]', (), 422, "job spec must be a JSON object, got array"),
        (b'{"rounds": 0}', (), 422, "request body: rounds: must be a positive integer, got 0"),
        (b'{"rounds": 1}', (("content-type", "text/plain"),), 415, "must be application/json"),
    ],
)
async def test_bad_job_bodies(
    server: Server, body: bytes, headers: tuple[tuple[str, str], ...], status: int, fragment: str
) -> None:
    reply = await http(server.endpoint.port, "POST", "/v1/jobs", token=server.token, body=body, headers=headers)
    assert reply.status == status, reply.body
    assert fragment in error_of(reply)["message"]


async def test_oversize_body_declared(server: Server) -> None:
    # Only the headers: the server must answer from Content-Length alone, without reading a body.
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        await stream.send_all(
            b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
        )
        reply = await receive_reply(h11_client_after_request(), stream)
    assert reply.status == 413 and "limit is 1048576" in error_of(reply)["message"]


async def test_only_a_caller_with_the_token_may_send_initial_weights_beyond_the_usual_limit(server: Server) -> None:
    """createTrainingJob takes up to MAX_TRAINING_BODY_BYTES (a model's base64) from a caller with the
    token; without it, or on any other route, the usual limit holds before a body byte is read."""
    weights = "A" * (2 * MAX_BODY_BYTES)
    body = json.dumps({"job_name": "big", "model_config": {"initial_weights": weights}, "training_config": {}}).encode()
    port = server.endpoint.port
    accepted = await http(port, "POST", "/v1/training/create_job", token=server.token, body=body)
    assert accepted.status == 201, accepted.body
    assert server.control.training["train-1"]["body"]["model_config"]["initial_weights"] == weights
    for path, token in (("/v1/training/create_job", None), ("/v1/training/create_job", "wrong"), ("/v1/jobs", server.token)):
        refused = await http(port, "POST", path, token=token, body=body)
        assert refused.status == 413 and "limit is 1048576" in error_of(refused)["message"], (path, token)


async def test_oversize_body_chunked(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        head = conn.send(
            h11.Request(method="PUT", target="/v1/data/x", headers=[("host", "x"), ("transfer-encoding", "chunked")])
        )
        await stream.send_all(head or b"")

        async def send_body() -> None:
            chunk = b"x" * 65536
            try:
                for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                    await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
            except trio.BrokenResourceError:
                pass  # the server may stop reading once it has answered

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_body)
            reply = await receive_reply(conn, stream)
    assert reply.status == 413 and "exceeds the limit" in error_of(reply)["message"]


def h11_client_after_request() -> h11.Connection:
    """A client-side h11 machine that believes it sent a request (we sent raw bytes ourselves)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    return conn


async def test_garbage_http_gets_json_400(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
        reply = await receive_reply(h11_client_after_request(), stream)
    assert reply.status == 400 and error_of(reply)["code"] == "bad_http"


async def test_keep_alive_serves_several_requests(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        for _ in range(3):
            request = h11.Request(method="GET", target="/v1/health", headers=[("host", "x")])
            await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            reply = await receive_reply(conn, stream)
            assert reply.status == 200
            conn.start_next_cycle()


async def test_handler_bug_gives_json_500_without_details(server: Server) -> None:
    server.control.explode = True
    reply = await server.get("/v1/status")
    assert reply.status == 500
    error = error_of(reply)
    assert error["code"] == "internal_error"
    assert b"secret internal detail" not in reply.body and b"Traceback" not in reply.body


async def test_openapi_document_lists_every_route(server: Server) -> None:
    reply = await server.get("/v1/openapi.json", token=None)
    assert reply.status == 200
    doc = reply.json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"] == "v1"
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(r.method, r.pattern) for r in ROUTES}
    expected = {
        ("GET", "/v1/status"), ("GET", "/v1/peers"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/{id}"), ("POST", "/v1/jobs/{id}/cancel"), ("GET", "/v1/jobs/{id}/rounds"),
        ("POST", "/v1/jobs/{id}/join"), ("GET", "/v1/jobs/{id}/progress"),
        ("GET", "/v1/jobs/{id}/results"), ("GET", "/v1/jobs/{id}/priors"), ("PUT", "/v1/data/{name}"), ("GET", "/v1/data/{name}"),
        ("PUT", "/v1/data/{name}/policy"),
        ("GET", "/v1/members"), ("GET", "/v1/health"), ("GET", "/metrics"), ("GET", "/v1/openapi.json"),
        ("POST", "/v1/revocations"), ("POST", "/v1/certificate/reload"),
        ("POST", "/v1/training/create_job"), ("POST", "/v1/training/join/{id}"), ("GET", "/v1/training/jobs"),
        ("GET", "/v1/training/status/{id}"), ("GET", "/v1/training/model/{id}"), ("GET", "/v1/training/model/{id}/{version}"),
    }  # fmt: skip
    assert documented == expected
    # Every $ref resolves, every path parameter is declared, public routes say so.
    refs = {ref for ref in _walk_refs(doc)}
    for ref in refs:
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", [])}
            assert declared == {s[1:-1] for s in path.split("/") if s.startswith("{")}
            assert op["operationId"] and op["responses"]
    assert doc["paths"]["/v1/health"]["get"]["security"] == []


def _walk_refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _walk_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _walk_refs(value)]
    return []


async def test_head_describes_the_body_without_sending_it(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        await stream.send_all(b"HEAD /v1/openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    get = await server.get("/v1/openapi.json", token=None)
    assert f"content-length: {len(get.body)}".encode() in head


async def test_incomplete_request_times_out_with_408(server: Server, mock_clock: trio.testing.MockClock) -> None:
    # Small threshold, not 0: real loopback I/O is in flight (see notes/style.md §5).
    mock_clock.autojump_threshold = 0.01
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        started = trio.current_time()
        await stream.send_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n")  # headers never finished
        reply = await receive_reply(h11_client_after_request(), stream)
    assert reply.status == 408 and error_of(reply)["code"] == "request_timeout"
    assert HEADER_TIMEOUT_SECONDS <= trio.current_time() - started < HEADER_TIMEOUT_SECONDS + 1


async def test_half_open_connections_do_not_lock_out_a_client_with_a_request(server: Server) -> None:
    """The attack of issue #15 item 8: 64 connections that never finish their headers held every slot
    (villagectl got 503). Each new connection past the per-address cap takes the slot of the one that
    has waited longest for headers, so a client with a request is served."""
    async with trio.open_nursery() as nursery:
        half_open = []
        for _ in range(64):
            stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
            await stream.send_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n")
            half_open.append(stream)
        reply = await server.get("/v1/health", token=None)
        assert reply.status == 200
        closed: list[trio.SocketStream] = []

        async def watch(stream: trio.SocketStream) -> None:
            with trio.move_on_after(2):
                if await stream.receive_some(1024) == b"":
                    closed.append(stream)

        for stream in half_open:
            nursery.start_soon(watch, stream)
    assert len(closed) == 64 - MAX_CONNECTIONS_PER_ADDRESS + 1  # all but the newest 15 (one slot went to the client)
    assert set(half_open[-(MAX_CONNECTIONS_PER_ADDRESS - 1):]).isdisjoint(closed)
    for stream in half_open:
        await stream.aclose()


@pytest.mark.parametrize("packets", [1, 20])
async def test_headers_over_16_kib_are_refused_however_they_arrive(server: Server, packets: int) -> None:
    head = b"GET /v1/health HTTP/1.1\r\nhost: x\r\nx-padding: " + b"p" * (20 * 1024) + b"\r\n\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
    async with stream:
        size = -(-len(head) // packets)
        for start in range(0, len(head), size):
            await stream.send_all(head[start:start + size])
            await trio.sleep(0.01 if packets > 1 else 0)
        reply = await receive_reply(h11_client_after_request(), stream)
    assert reply.status == 431, reply.body


async def test_priors_route_returns_the_applied_priors(server: Server) -> None:
    job = await server.control.create_job({"kind": "routing-priors", "data": "x", "rounds": 1})
    reply = await server.get(f"/v1/jobs/{job['id']}/priors")
    assert reply.status == 200
    assert reply.json()["validation"]["round_quality"] == 0.5
    assert (await server.get("/v1/jobs/nope/priors")).status == 404
