"""villagectl's HTTP client for the villaged control API (stdlib http.client, JSON in and out).

Finding the daemon: ``--api URL`` and ``--token`` win; otherwise the data dir (``--data-dir``,
else ``$VILLAGE_DATA_DIR``, else `DEFAULT_DATA_DIR`) holds ``api.json`` (address, written by
villaged when its API is listening) and ``api.token`` (the bearer token).
Every failure is a `CliError` whose message is one line that says what to do next.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cli.errors import ApiError, CliError, DaemonNotRunning

__all__ = ["DATA_DIR_ENV", "DEFAULT_DATA_DIR", "ApiClient", "resolve_data_dir"]

DATA_DIR_ENV: Final = "VILLAGE_DATA_DIR"
DEFAULT_DATA_DIR: Final = Path.home() / ".village"
API_FILENAME: Final = "api.json"  # must match villaged.api.API_FILENAME
TOKEN_FILENAME: Final = "api.token"  # must match villaged.api.TOKEN_FILENAME
# The API answers from memory; ten seconds means the daemon is wedged, not busy.
TIMEOUT_SECONDS: Final = 10.0


def resolve_data_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


def _start_hint(data_dir: Path) -> str:
    return f"start it with: villaged start --data-dir {data_dir}"


@dataclass(frozen=True)
class ApiClient:
    host: str
    port: int
    token: str
    data_dir: Path | None = None
    timeout: float = field(default=TIMEOUT_SECONDS)

    @classmethod
    def discover(cls, data_dir: Path | None = None, api_url: str | None = None, token: str | None = None) -> ApiClient:
        """Build a client from flags, falling back to the data dir's api.json / api.token."""
        directory = resolve_data_dir(data_dir)
        if api_url is not None:
            host, port = _parse_url(api_url)
        else:
            host, port = _read_api_file(directory)
        if token is None:
            token = _read_token(directory)
        return cls(host, port, token, directory)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def get_text(self, path: str) -> str:
        """GET a plain-text resource (``/metrics``); raises `CliError` unless the status is 2xx."""
        status, _, raw = self._exchange("GET", path, None, "text/plain")
        if not 200 <= status < 300:
            raise _error_of(status, _json_or_none(raw), "GET", path)
        return raw.decode(errors="replace")

    def get_bytes(self, path: str) -> tuple[bytes, dict[str, str]]:
        """GET a binary resource (a model's safetensors): its bytes and its headers (names in lower case);
        raises `CliError` unless the status is 2xx."""
        status, headers, raw = self._exchange("GET", path, None, "application/octet-stream")
        if not 200 <= status < 300:
            raise _error_of(status, _json_or_none(raw), "GET", path)
        return raw, headers

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; returns the decoded JSON on 2xx, raises `CliError` otherwise."""
        status, _, raw = self._exchange(method, path, body, "application/json")
        decoded = _json_or_none(raw)
        if 200 <= status < 300:
            if decoded is None and raw:
                raise CliError(f"villaged at {self._where} sent a non-JSON reply to {method} {path}")
            return decoded
        raise _error_of(status, decoded, method, path)

    @property
    def _where(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _exchange(self, method: str, path: str, body: Any, accept: str) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange: the status, the headers and the raw body. Every transport failure is a `CliError`."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": accept}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, {name.lower(): value for name, value in response.getheaders()}, raw
        except ConnectionRefusedError:
            hint = _start_hint(self.data_dir) if self.data_dir else "check --api"
            raise DaemonNotRunning(f"villaged is not running (nothing listens on {self._where}); {hint}") from None
        except (TimeoutError, socket.timeout):
            raise CliError(f"villaged at {self._where} did not answer within {self.timeout:.0f} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"cannot talk to villaged at {self._where}: {exc}") from None
        finally:
            conn.close()


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _error_of(status: int, decoded: Any, method: str, path: str) -> ApiError:
    """The `ApiError` for a non-2xx reply, from villaged's JSON error body when there is one."""
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, dict):
        return ApiError(status, str(error.get("code")), str(error.get("message")))
    return ApiError(status, "unknown", f"{method} {path} failed without a JSON error body")


def _parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise CliError(f"--api {url!r}: expected http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise CliError(f"--api {url!r}: the port is missing or invalid")
    return parts.hostname, port


def _read_api_file(data_dir: Path) -> tuple[str, int]:
    path = data_dir / API_FILENAME
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        if not data_dir.is_dir():
            raise DaemonNotRunning(
                f"data dir {data_dir} does not exist; pass --data-dir or set {DATA_DIR_ENV}, or {_start_hint(data_dir)}"
            ) from None
        raise DaemonNotRunning(f"villaged is not running for {data_dir} (no {API_FILENAME}); {_start_hint(data_dir)}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise CliError(f"{path} is not valid JSON; restart villaged to rewrite it") from None
    host, port = info.get("host") if isinstance(info, dict) else None, info.get("port") if isinstance(info, dict) else None
    if not isinstance(host, str) or not isinstance(port, int):
        raise CliError(f"{path}: fields 'host' (string) and 'port' (integer) are required")
    return host, port


def _read_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILENAME
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise DaemonNotRunning(f"no API token at {path}; {_start_hint(data_dir)}") from None
    except PermissionError:
        raise CliError(f"cannot read {path}: permission denied; run villagectl as the user that runs villaged") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise CliError(f"{path} is empty; delete it and restart villaged to create a new token")
    return token
