"""A minimal HTTP/1.1 server: h11 parses, trio moves bytes, a handler maps Request -> Response.

Only what the local control API needs: Content-Length and chunked request bodies, keep-alive,
and hard limits on everything a client controls (header size, body size, time, connections).
It is the adapter pattern of h11's ``examples/trio-server.py``: h11 is the sans-IO machine,
this module is the thin loop that feeds it bytes and writes out what it returns.

Every error this layer produces is a JSON body ``{"error": {"code": ..., "message": ...}}`` with
a 4xx status (5xx only for a handler bug or overload), never a stack trace. A handler that
raises is logged with its traceback and answered with a JSON 500.

Why h11 and not hypercorn + an ASGI framework: h11 is already in the venv (httpx and wsproto
depend on it), is tiny, sans-IO and well kept; the API has a dozen routes, so a router is
~40 lines while a framework would add several dependencies and its own error pages.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import urlsplit

import h11
import structlog
import trio

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MAX_HEADER_BYTES",
    "Handler",
    "Request",
    "Response",
    "json_error",
    "json_response",
    "serve_http",
]

log = structlog.get_logger("villaged.http")

# Request line + headers. h11's own default (16 KiB) is also what most servers allow per header block.
MAX_HEADER_BYTES: Final = 16 * 1024
# Job specs and local-data payloads are small JSON documents (per-model statistics); 1 MiB is
# generous and bounds what one request can make us buffer and parse.
MAX_BODY_BYTES: Final = 1024 * 1024
RECEIVE_CHUNK: Final = 64 * 1024
# A client has HEADER_TIMEOUT to send a request's complete headers (on a new or kept-alive
# connection) and then REQUEST_TIMEOUT for its body; slow-loris clients cannot pin a task for long
# (with 60 s for headers, 64 half-open connections held every slot for a minute).
REQUEST_TIMEOUT_SECONDS: Final = 30.0
HEADER_TIMEOUT_SECONDS: Final = 10.0
SEND_TIMEOUT_SECONDS: Final = 30.0
# villagectl and scripts open a few connections; more than this at once is a runaway script. When
# a cap is reached, the connection that has waited longest for headers is closed to make room
# (a client that is sending nothing loses its slot to one that has a request), and only if every
# connection is busy with a request is the new one refused.
MAX_CONNECTIONS: Final = 64
MAX_CONNECTIONS_PER_ADDRESS: Final = 16  # so one client address cannot take every slot
# After an error response we half-close and read the client's leftovers for a moment, so the
# kernel does not answer unread data with a RST that would destroy our error response in flight.
_LINGER_SECONDS: Final = 0.5
_LINGER_MAX_BYTES: Final = 4 * MAX_BODY_BYTES


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request. Header names are lower-case; repeated headers are joined with ", "."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Awaitable[Response]]
# The largest body a request may have, decided from its line and headers (a Request without body)
# before a byte of the body is read.
BodyLimit = Callable[[Request], int]


def _default_limit(head: Request) -> int:
    return MAX_BODY_BYTES


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """Serialize ``payload`` as JSON; raises ValueError/TypeError if it is not JSON data."""
    body = json.dumps(payload, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body + b"\n", "application/json", headers)


def json_error(status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


async def serve_http(
    handler: Handler,
    listeners: list[trio.SocketListener],
    *,
    body_limit: BodyLimit = _default_limit,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on already-bound ``listeners`` until cancelled."""
    server = _Server(handler, body_limit)
    await trio.serve_listeners(server.serve_connection, listeners, task_status=task_status)


@dataclass(eq=False)
class _Connection:
    address: str  # the client's IP address
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    waiting: bool = True  # for a request's headers: its slot is the first to go when a cap is reached


class _Server:
    def __init__(self, handler: Handler, body_limit: BodyLimit) -> None:
        self._handler = handler
        self._body_limit = body_limit
        self._open: list[_Connection] = []  # oldest first

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        connection = _Connection(_client_address(stream))
        try:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
            refusal = self._make_room(connection.address)
            if refusal is not None:
                log.warning("http_connection_refused", client=connection.address, reason=refusal)
                await _send(conn, stream, json_error(503, "overloaded", refusal), close=True)
                await _linger(stream)
                return
            self._open.append(connection)
            with connection.scope:
                await self._serve(conn, stream, connection)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to answer
        finally:
            if connection in self._open:
                self._open.remove(connection)
            with trio.move_on_after(1):
                await stream.aclose()

    def _make_room(self, address: str) -> str | None:
        """Make room for one more connection from `address` under both caps, closing the connection
        that has waited longest for headers where a cap is full; why not, if every one is busy."""
        same_address = [c for c in self._open if c.address == address]
        for cap, group, where in ((MAX_CONNECTIONS_PER_ADDRESS, same_address, f" from {address}"),
                                  (MAX_CONNECTIONS, self._open, "")):
            if len(group) < cap:
                continue
            idle = next((c for c in group if c.waiting), None)
            if idle is None:
                return f"{cap} connections{where} are busy with requests already"
            log.info("http_connection_evicted", client=idle.address, reason=f"{cap} connections{where}, this one idle")
            self._open.remove(idle)
            idle.scope.cancel()
        return None

    async def _serve(self, conn: h11.Connection, stream: trio.SocketStream, connection: _Connection) -> None:
        while True:
            outcome = await _read_request(conn, stream, connection, self._body_limit)
            if outcome is None:
                return
            if isinstance(outcome, Response):
                await _send(conn, stream, outcome, close=True)
                await _linger(stream)
                return
            response = await self._call_handler(outcome)
            await _send(conn, stream, response, close=False, head=outcome.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _call_handler(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception:
            # A bug, not a client error: keep the traceback in our log, not in the response.
            log.exception("http_handler_failed", method=request.method, path=request.path)
            return json_error(500, "internal_error", "the daemon failed to handle this request; see its log")


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_CHUNK))
            continue
        return event


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, connection: _Connection, body_limit: BodyLimit
) -> Request | Response | None:
    """The next request, an error Response to send before closing, or None to just close."""
    try:
        connection.waiting = True
        with trio.move_on_after(HEADER_TIMEOUT_SECONDS) as headers_wait:
            event = await _next_event(conn, stream)
        connection.waiting = False
        if headers_wait.cancelled_caught:
            if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                return None  # an idle kept-alive connection (no partial request buffered): close quietly
            return json_error(408, "request_timeout",
                              f"request headers not received within {HEADER_TIMEOUT_SECONDS:.0f} s")
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        size = _header_bytes(event)
        if size > MAX_HEADER_BYTES:  # h11 checks only headers that arrive in several reads
            return json_error(431, "headers_too_large",
                              f"request line and headers are {size} bytes; the limit is {MAX_HEADER_BYTES}")
        return await _read_body(conn, stream, event, body_limit)
    except h11.RemoteProtocolError as exc:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return None
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
        return json_error(status, "bad_http", f"malformed HTTP request: {exc}")


def _header_bytes(request: h11.Request) -> int:
    """The size of a request's line and header block as sent, less any whitespace h11 stripped."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + len(b": \r\n") for name, value in request.headers) + len(b"\r\n")


def _client_address(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:  # the client is gone already
        return "unknown"


async def _read_body(
    conn: h11.Connection, stream: trio.SocketStream, start: h11.Request, body_limit: BodyLimit
) -> Request | Response | None:
    headers: dict[str, str] = {}
    for name, value in start.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    method = start.method.decode("ascii", "replace")
    target = start.target.decode("ascii", "replace")
    limit = body_limit(Request(method, target, headers))
    declared = headers.get("content-length")
    if declared is not None and int(declared) > limit:  # h11 already checked it is an integer
        return json_error(413, "body_too_large", f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    with trio.move_on_after(REQUEST_TIMEOUT_SECONDS):
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.EndOfMessage):
                return Request(method, target, headers, bytes(body))
            if isinstance(event, h11.ConnectionClosed):
                return None
            assert isinstance(event, h11.Data), event
            body += event.data
            if len(body) > limit:
                return json_error(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
    return json_error(408, "request_timeout", f"request body not received within {REQUEST_TIMEOUT_SECONDS:.0f} s")


async def _send(
    conn: h11.Connection, stream: trio.SocketStream, response: Response, *, close: bool, head: bool = False
) -> None:
    """Write one response. For HEAD, the headers describe the body but the body is not sent."""
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        *response.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    try:
        reason = HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    assert data is not None
    if response.body and not head:
        data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.move_on_after(SEND_TIMEOUT_SECONDS):
        await stream.send_all(data)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client still sends, briefly; see `_LINGER_SECONDS`."""
    try:
        await stream.send_eof()
        discarded = 0
        with trio.move_on_after(_LINGER_SECONDS):
            while discarded < _LINGER_MAX_BYTES:
                chunk = await stream.receive_some(RECEIVE_CHUNK)
                if not chunk:
                    return
                discarded += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
