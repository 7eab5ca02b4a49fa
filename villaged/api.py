"""The control API: versioned JSON over HTTP for villagectl and scripts.

* Local only by default (127.0.0.1). The bound address goes to ``data_dir/api.json``, which is
  how villagectl finds the daemon (port 0 picks a free port).
* Authenticated by a bearer token in ``data_dir/api.token`` (mode 0600, created on first start).
  ``/v1/health``, ``/metrics`` and ``/v1/openapi.json`` need no token: they reveal nothing
  private, and monitoring systems should not need the key to the node.
* Every route lives in `ROUTES` (villaged/api_routes.py); the router, the auth check and the
  OpenAPI document are all generated from that one table, so a route cannot exist undocumented.
* Errors are always ``{"error": {"code", "message"}}`` with a 4xx status saying what was wrong
  and where (see `villaged/http_server.py` for the HTTP-level ones).

The API does not know daemon internals; it calls a `villaged.control.NodeControl`.
Next: `villaged/control.py` for that interface, `cli/client.py` for the other end.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from villaged.api_routes import API_VERSION, NAME_PATTERN, ROUTES, Route, openapi_document
from villaged.control import ControlError, NodeControl
from villaged.errors import ConfigError
from villaged.http_server import MAX_BODY_BYTES, Request, Response, json_error, serve_http
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

API_FILENAME: Final = "api.json"
TOKEN_FILENAME: Final = "api.token"
# 32 random bytes -> 43 url-safe characters; anything shorter on disk was not made by us.
_TOKEN_BYTES: Final = 32
_MIN_TOKEN_CHARS: Final = 32
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

    def body_limit(self, head: Request) -> int:
        """A route's larger body allowance (a training job's initial weights) holds only for a caller
        with the token: nobody else makes the daemon buffer more than MAX_BODY_BYTES."""
        segments = head.path.strip("/").split("/")
        for route in ROUTES:
            if route.method == head.method and route.match(segments) is not None and route.max_body > MAX_BODY_BYTES:
                return route.max_body if self._auth_problem(head) is None else MAX_BODY_BYTES
        return MAX_BODY_BYTES

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
            await nursery.start(functools.partial(serve_http, body_limit=api.body_limit), api.handle, listeners)
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
