"""The control API: versioned JSON over HTTP for villagectl and scripts.

* Local only by default (127.0.0.1). The bound address goes to ``data_dir/api.json``, which is
  how villagectl finds the daemon (port 0 picks a free port).
* Authenticated by a bearer token in ``data_dir/api.token`` (mode 0600, created on first start).
  ``/v1/health``, ``/metrics`` and ``/v1/openapi.json`` need no token: they reveal nothing
  private, and monitoring systems should not need the key to the node.
* Every route lives in `ROUTES`; the router, the auth check and the OpenAPI document are all
  generated from that one table, so a route cannot exist undocumented.
* Errors are always ``{"error": {"code", "message"}}`` with a 4xx status saying what was wrong
  and where (see `villaged/http_server.py` for the HTTP-level ones).

The API does not know daemon internals; it calls a `villaged.control.NodeControl`.
Next: `villaged/control.py` for that interface, `cli/client.py` for the other end.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

import structlog
import trio

from villaged.control import ControlError, NodeControl
from villaged.errors import ConfigError
from villaged.http_server import (
    MAX_BODY_BYTES,
    Request,
    Response,
    json_error,
    json_response,
    serve_http,
)
from villaged.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from villaged.metrics import Metrics

__all__ = [
    "API_FILENAME",
    "API_VERSION",
    "ROUTES",
    "TOKEN_FILENAME",
    "ApiEndpoint",
    "ControlApi",
    "ensure_token",
    "openapi_document",
    "serve_api",
]

log = structlog.get_logger("villaged.api")

API_VERSION: Final = "v1"
API_FILENAME: Final = "api.json"
TOKEN_FILENAME: Final = "api.token"
# 32 random bytes -> 43 url-safe characters; anything shorter on disk was not made by us.
_TOKEN_BYTES: Final = 32
_MIN_TOKEN_CHARS: Final = 32
# Job ids and data names appear in URLs and file-ish contexts: keep them plain.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE: Final = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class ApiEndpoint:
    """Where the API listens; what `serve_api` reports via ``task_status.started``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# --- route table ---------------------------------------------------------------------------

Params = Mapping[str, str]
Call = Callable[["ControlApi", Params, Any], Awaitable[Response]]

_OBJECT: Final = {"type": "object"}
_OBJECT_LIST: Final = {"type": "array", "items": {"type": "object"}}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    operation_id: str
    summary: str
    call: Call
    response_schema: Mapping[str, Any]
    auth: bool = True
    request_schema: Mapping[str, Any] | None = None
    success_status: int = 200
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"

    @property
    def segments(self) -> list[str]:
        return self.pattern.strip("/").split("/")

    @property
    def param_names(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]

    def match(self, segments: list[str]) -> dict[str, str] | None:
        mine = self.segments
        if len(mine) != len(segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(mine, segments, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = unquote(got, errors="replace")
            elif want != got:
                return None
        return params


async def _status(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.status())


async def _peers(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.peers())


async def _members(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.members())


async def _list_jobs(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.list_jobs())


async def _create_job(api: ControlApi, params: Params, body: Any) -> Response:
    if not isinstance(body, dict):
        return json_error(422, "invalid_body", f"job spec must be a JSON object, got {_json_type(body)}")
    job = await api.control.create_job(body)
    location = f"/{API_VERSION}/jobs/{job['id']}" if isinstance(job.get("id"), str) else None
    return json_response(201, job, (("location", location),) if location else ())


async def _get_job(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.get_job(params["id"]))


async def _join_job(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.join_job(params["id"]))


async def _job_progress(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.job_progress(params["id"]))


async def _cancel_job(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.cancel_job(params["id"]))


async def _rounds(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.rounds(params["id"]))


async def _results(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.results(params["id"]))


async def _priors(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.priors(params["id"]))


async def _put_data(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.put_data(params["name"], body))


async def _put_data_policy(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.put_data_policy(params["name"], body))


async def _get_data(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.get_data(params["name"]))


async def _publish_revocations(api: ControlApi, params: Params, body: Any) -> Response:
    listed = body.get("revocations") if isinstance(body, dict) else None
    try:
        data = bytes.fromhex(listed) if isinstance(listed, str) else None
    except ValueError:
        data = None
    if data is None:
        return json_error(422, "invalid_field", "request body: revocations: must be the hex of a revocation list "
                                                "(villagectl village revoke writes one)")
    return json_response(200, await api.control.publish_revocations(data))


async def _reload_certificate(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.reload_certificate())


async def _health(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, {"status": "ok", "uptime_seconds": round(time.monotonic() - api.started, 3)})


async def _metrics(api: ControlApi, params: Params, body: Any) -> Response:
    return Response(200, api.metrics.render(), METRICS_CONTENT_TYPE)


async def _openapi(api: ControlApi, params: Params, body: Any) -> Response:
    return json_response(200, openapi_document())


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/v1/status", "getStatus", "This node's status snapshot", _status, _OBJECT),
    Route("GET", "/v1/peers", "listPeers", "Connected peers", _peers, _OBJECT_LIST),
    Route("GET", "/v1/members", "listMembers", "Known village members and certificate expiry", _members, _OBJECT_LIST),
    Route(
        "POST", "/v1/revocations", "publishRevocations",
        "Adopt an admin-signed revocation list newer than the one held, and spread it to the village",
        _publish_revocations, _OBJECT,
        request_schema={"type": "object", "description": '{"revocations": hex of the list file}; a list that is '
                        "malformed, another village's or not newer is refused naming why."},
        errors=(409, 413, 415, 422),
    ),
    Route(
        "POST", "/v1/certificate/reload", "reloadCertificate",
        "Re-read this node's certificate file (a renewed certificate), without a restart",
        _reload_certificate, _OBJECT, errors=(422,),
    ),
    Route("GET", "/v1/jobs", "listJobs", "All jobs, oldest first", _list_jobs, _OBJECT_LIST),
    Route(
        "POST",
        "/v1/jobs",
        "createJob",
        "Submit a job; the spec is validated by the daemon",
        _create_job,
        _OBJECT,
        request_schema={"type": "object", "description": "Job spec; an invalid field gives a 422 naming it."},
        success_status=201,
        errors=(400, 413, 415, 422),
    ),
    Route("GET", "/v1/jobs/{id}", "getJob", "One job", _get_job, _OBJECT, errors=(404,)),
    Route(
        "POST", "/v1/jobs/{id}/cancel", "cancelJob", "Cancel a job", _cancel_job, _OBJECT, errors=(404, 409)
    ),
    Route(
        "POST", "/v1/jobs/{id}/join", "joinJob",
        "Contribute this node's local input to a job (409 with the reason when the input's policy forbids it)",
        _join_job, _OBJECT, errors=(404, 409, 422),
    ),
    Route(
        "GET", "/v1/jobs/{id}/progress", "getJobProgress",
        "Current round, attempt, coordinator and this node's phase; rounds completed", _job_progress, _OBJECT,
        errors=(404,),
    ),
    Route(
        "GET", "/v1/jobs/{id}/rounds", "listRounds", "Round attempts with phase timings", _rounds, _OBJECT_LIST,
        errors=(404,),
    ),
    Route("GET", "/v1/jobs/{id}/results", "listResults", "Committed results", _results, _OBJECT_LIST, errors=(404,)),
    Route(
        "GET", "/v1/jobs/{id}/priors", "getPriors",
        "Routing priors this node applies (latest round) with stability, diversity and round quality", _priors,
        _OBJECT, errors=(404, 409),
    ),
    Route(
        "PUT",
        "/v1/data/{name}",
        "putData",
        "Store this node's local input under a name",
        _put_data,
        _OBJECT,
        request_schema={"description": "Any JSON value; the daemon validates it for the job kind."},
        errors=(400, 413, 415, 422),
    ),
    Route(
        "PUT",
        "/v1/data/{name}/policy",
        "putDataPolicy",
        "Set what a local input may be used for (it may precede the input, which keeps it)",
        _put_data_policy,
        _OBJECT,
        request_schema={
            "type": "object",
            "description": "Input policy; an invalid field gives a 422 naming it (policy.creators[1], ...).",
            "properties": {
                "jobs": {"type": "array", "items": {"type": "string"}, "description": "job ids allowed; empty: any"},
                "creators": {"type": "array", "items": {"type": "string"},
                             "description": "hex member ids whose jobs may use it; empty: any"},
                "min_participants": {"type": ["integer", "null"],
                                     "description": "fewest participants a round may have; null: the node's floor"},
                "require_dp": {"type": "boolean", "description": "only jobs with a privacy section"},
                "repeat": {"enum": ["same-survivors", "allow"],
                           "description": "an unchanged input summed again only with the same survivors, or always"},
            },
        },
        errors=(400, 413, 415, 422),
    ),
    Route("GET", "/v1/data/{name}", "getData", "Read back a local input and its policy", _get_data, _OBJECT,
          errors=(404,)),
    Route(
        "GET",
        "/v1/health",
        "getHealth",
        "Liveness: answers while the daemon's event loop runs",
        _health,
        {"type": "object", "properties": {"status": {"const": "ok"}, "uptime_seconds": {"type": "number"}}},
        auth=False,
    ),
    Route(
        "GET",
        "/v1/openapi.json",
        "getOpenApi",
        "This OpenAPI document",
        _openapi,
        _OBJECT,
        auth=False,
    ),
    Route(
        "GET",
        "/metrics",
        "getMetrics",
        "Prometheus metrics (text exposition format)",
        _metrics,
        {"type": "string"},
        auth=False,
        content_type="text/plain",
    ),
)

_ERROR_TEXT: Final = {
    400: "Malformed request or invalid JSON",
    401: "Missing or invalid bearer token",
    404: "Unknown route, job or data name",
    405: "Method not allowed on this path",
    408: "Request not received in time",
    409: "Not possible in the current state",
    413: "Request body too large",
    415: "Body is not application/json",
    422: "Invalid field in the request body",
    500: "Daemon bug; details are in its log",
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of `ROUTES`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        statuses = sorted({400, 500, *route.errors, *((401,) if route.auth else ())})
        if route.param_names:
            statuses = sorted({*statuses, 404})
        responses: dict[str, Any] = {
            str(route.success_status): {
                "description": route.summary,
                "content": {route.content_type: {"schema": dict(route.response_schema)}},
            }
        }
        for status in statuses:
            responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "responses": responses,
            "security": [{"bearerAuth": []}] if route.auth else [],
        }
        if route.param_names:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN}}
                for name in route.param_names
            ]
        if route.request_schema is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": dict(route.request_schema)}},
            }
        paths.setdefault(route.pattern, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "villaged control API",
            "version": API_VERSION,
            "description": (
                "Local control API of a village daemon. Bearer token: the contents of DATA_DIR/api.token. "
                f"Request bodies are limited to {MAX_BODY_BYTES} bytes."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                }
            },
            "responses": {
                f"E{status}": {
                    "description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                for status, text in _ERROR_TEXT.items()
            },
        },
        "security": [{"bearerAuth": []}],
    }


# --- request handling ----------------------------------------------------------------------


class ControlApi:
    """Maps HTTP requests to `NodeControl` calls: routing, auth, body parsing, error mapping."""

    def __init__(self, control: NodeControl, metrics: Metrics, token: str) -> None:
        self.control = control
        self.metrics = metrics
        self._token = token.encode()
        self.started = time.monotonic()

    async def handle(self, request: Request) -> Response:
        began = time.monotonic()
        response = await self._dispatch(request)
        log.debug(
            "api_request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.monotonic() - began) * 1000, 2),
        )
        return response

    async def _dispatch(self, request: Request) -> Response:
        path = request.path
        segments = path.strip("/").split("/")
        candidates = [(route, params) for route in ROUTES if (params := route.match(segments)) is not None]
        if not candidates:
            return json_error(404, "no_route", f"no route {request.method} {path}; see GET /v1/openapi.json")
        # HEAD is GET without the body (http_server drops the body).
        method = "GET" if request.method == "HEAD" else request.method
        chosen = [(r, p) for r, p in candidates if r.method == method]
        if not chosen:
            allowed = ", ".join(sorted({r.method for r, _ in candidates}))
            return json_error(
                405, "method_not_allowed", f"{request.method} is not allowed on {path}; allowed: {allowed}",
                (("allow", allowed),),
            )
        route, params = chosen[0]
        if route.auth and (problem := self._auth_problem(request)) is not None:
            return json_error(401, "unauthorized", problem, (("www-authenticate", 'Bearer realm="villaged"'),))
        for name, value in params.items():
            if not _NAME_RE.fullmatch(value):  # match() lets a trailing newline through `$`
                return json_error(
                    400, "invalid_path", f"path parameter '{name}' = {value!r} must match {NAME_PATTERN}"
                )
        body: Any = None
        if route.request_schema is not None:
            parsed = _parse_json_body(request)
            if isinstance(parsed, Response):
                return parsed
            body = parsed.value
        try:
            return await route.call(self, params, body)
        except ControlError as exc:
            return _control_error(exc, route)

    def _auth_problem(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is None:
            return f"missing bearer token: send 'Authorization: Bearer <token>' with the token from DATA_DIR/{TOKEN_FILENAME}"
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "Authorization header must be 'Bearer <token>'"
        # Constant-time: the comparison must not reveal how many leading characters matched.
        if not hmac.compare_digest(presented.strip().encode("utf-8", "replace"), self._token):
            return f"invalid bearer token; use the token in DATA_DIR/{TOKEN_FILENAME}"
        return None


@dataclass(frozen=True, slots=True)
class _Parsed:
    value: Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json_body(request: Request) -> _Parsed | Response:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        return json_error(415, "unsupported_media_type", f"request body must be application/json, got {content_type!r}")
    if not request.body.strip():
        return json_error(400, "empty_body", f"{request.method} {request.path} needs a JSON request body")
    try:
        text = request.body.decode("utf-8")
        return _Parsed(json.loads(text, parse_constant=_reject_constant))
    except UnicodeDecodeError as exc:
        return json_error(400, "invalid_json", f"request body is not UTF-8: byte {exc.start}")
    except json.JSONDecodeError as exc:
        return json_error(
            400, "invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        )
    except ValueError as exc:  # NaN / Infinity
        return json_error(400, "invalid_json", f"request body is not valid JSON: {exc}")
    except RecursionError:
        return json_error(400, "invalid_json", "request body is nested too deeply")


def _control_error(exc: ControlError, route: Route) -> Response:
    status = exc.status if 400 <= exc.status < 500 else 400
    message = str(exc)
    if route.request_schema is not None and exc.code == "invalid_field":
        message = f"request body: {message}"
    return json_error(status, exc.code, message)


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


# --- files and serving ---------------------------------------------------------------------


def ensure_token(data_dir: Path) -> str:
    """Read ``data_dir/api.token``, creating it (0600) with a fresh random token if absent.

    Raises:
        ConfigError: the file exists but is empty or too short to be one of ours.
    """
    path = data_dir / TOKEN_FILENAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if len(token) < _MIN_TOKEN_CHARS:
            raise ConfigError(path, "token", f"shorter than {_MIN_TOKEN_CHARS} characters; delete the file to regenerate") from None
        if path.stat().st_mode & 0o077:
            log.warning("api_token_permissions_fixed", path=str(path))
            path.chmod(0o600)
        return token
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def _write_api_file(data_dir: Path, endpoint: ApiEndpoint) -> Path:
    path = data_dir / API_FILENAME
    tmp = path.with_name(f".{API_FILENAME}.{os.getpid()}.tmp")
    info = {"version": 1, "host": endpoint.host, "port": endpoint.port, "url": endpoint.url, "pid": os.getpid()}
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, path)  # atomic: villagectl never reads half a file
    return path


async def serve_api(
    control: NodeControl,
    metrics: Metrics,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[ApiEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API until cancelled; reports the bound `ApiEndpoint` via ``nursery.start``.

    Writes ``data_dir/api.token`` (first start) and ``data_dir/api.json``, and removes api.json
    on the way out so villagectl can tell "not running" from "not answering".
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = ensure_token(data_dir)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    endpoint = ApiEndpoint(str(bound_host), int(bound_port))
    if not _is_loopback(endpoint.host):
        log.warning("api_not_loopback", host=endpoint.host, hint="anyone who can reach this port may try the token")
    api = ControlApi(control, metrics, token)
    api_file = _write_api_file(data_dir, endpoint)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_http, api.handle, listeners)
            log.info("api_listening", url=endpoint.url)
            task_status.started(endpoint)
    finally:
        try:
            if json.loads(api_file.read_text()).get("pid") == os.getpid():
                api_file.unlink()
        except (OSError, ValueError):
            pass


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")
