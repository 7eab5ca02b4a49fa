"""The boundary between the control API and the daemon: `NodeControl` and the errors it raises.

`villaged/api.py` knows nothing about rounds, libp2p or SQLite; it calls a `NodeControl` and
turns its answers into HTTP. The daemon implements this protocol (structural typing: no base
class needed). Every method returns plain JSON data (dict / list / str / int / float / bool /
None, no NaN, bytes as hex strings), because the API serializes it as is; returning anything
else is a bug that the API reports as a JSON 500 and logs.

Expected failures are the three `ControlError` subclasses below; the API maps each to its
status code. Anything else a method raises is treated as a bug.
"""

from __future__ import annotations

from typing import Any, Protocol

from villaged.errors import VillagedError

__all__ = ["Conflict", "ControlError", "InvalidRequest", "NodeControl", "NotFound"]

JSON = Any  # JSON data as produced by json.loads; see the module docstring.


class ControlError(VillagedError):
    """A control request the daemon refused for a reason the caller can fix."""

    status: int = 400
    code: str = "bad_request"


class InvalidRequest(ControlError):
    """A job spec or data payload is invalid. ``field`` is a dotted path (``"rounds"``,
    ``"vector.length"``), ``reason`` says what is wrong and what is allowed."""

    status = 422
    code = "invalid_field"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(ControlError):
    """The job or data item does not exist. ``what`` names it, e.g. ``"job 'j1'"``."""

    status = 404
    code = "not_found"

    def __init__(self, what: str) -> None:
        super().__init__(f"no {what}")
        self.what = what


class Conflict(ControlError):
    """The request is valid but not in the current state, e.g. cancelling a finished job."""

    status = 409
    code = "conflict"


class NodeControl(Protocol):
    """What the control API needs from a running daemon. All methods are async and return JSON data."""

    async def status(self) -> dict[str, JSON]:
        """Snapshot of this node: member id, peer id, village id, listen addresses, uptime, counts."""
        ...

    async def peers(self) -> list[dict[str, JSON]]:
        """Connected peers: peer id, member id, address, whether their certificate is valid."""
        ...

    async def members(self) -> list[dict[str, JSON]]:
        """Known members and their certificate expiry."""
        ...

    async def create_job(self, spec: dict[str, JSON]) -> dict[str, JSON]:
        """Validate and submit a job; returns the job (with its ``"id"``). Raises InvalidRequest."""
        ...

    async def list_jobs(self) -> list[dict[str, JSON]]:
        ...

    async def get_job(self, job_id: str) -> dict[str, JSON]:
        """Raises NotFound."""
        ...

    async def create_training_job(self, body: JSON) -> dict[str, JSON]:
        """A training job from the seed's create_job body: ``{job_id, status, estimated_start_time}``."""
        ...

    async def join_training(self, job_id: str, body: JSON) -> dict[str, JSON]:
        """Join with capabilities; raises Forbidden (403) naming the requirement this node does not meet."""
        ...

    async def list_training(self) -> list[dict[str, JSON]]:
        ...

    async def training_status(self, job_id: str) -> dict[str, JSON]:
        """Round, participants, model version and digest, and the per-round accuracy and loss."""
        ...

    async def training_model(self, job_id: str, version: int | None) -> tuple[bytes, str, int]:
        """(safetensors bytes, hex digest, version) of a model this node derived."""
        ...

    async def join_job(self, job_id: str) -> dict[str, JSON]:
        """Contribute this node's local input to a job; returns the job. Raises NotFound, InvalidRequest
        (field ``data``: the local input is missing or does not fit the spec), or Conflict if it finished
        or the input's policy forbids the job (the message says why)."""
        ...

    async def job_progress(self, job_id: str) -> dict[str, JSON]:
        """Where a job is now, for `villagectl jobs watch`: state, ``rounds``/``rounds_completed``,
        joined ``members``; the current ``round``, ``attempt`` and elected ``coordinator``; this node's
        ``role`` and ``phase`` in it (None if it runs no machine for the attempt); ``participants``
        invited (known when this node coordinates); ``last_result`` ({round, participants, dropped}
        counts) or None. Raises NotFound."""
        ...

    async def cancel_job(self, job_id: str) -> dict[str, JSON]:
        """Returns the job after cancelling. Raises NotFound, or Conflict if it already finished."""
        ...

    async def rounds(self, job_id: str) -> list[dict[str, JSON]]:
        """Every round attempt of a job with phase timings. Raises NotFound."""
        ...

    async def results(self, job_id: str) -> list[dict[str, JSON]]:
        """Committed results of a job, one per round. Raises NotFound."""
        ...

    async def priors(self, job_id: str) -> dict[str, JSON]:
        """A routing-priors job's applied priors: ``round`` (None before the first result), ``priors``
        ({models, request_patterns, carbon}), ``validation`` ({stability_score, diversity_score,
        round_quality}), ``error_bound``. Raises NotFound, or Conflict for another kind of job."""
        ...

    async def put_data(self, name: str, payload: JSON) -> dict[str, JSON]:
        """Store this node's local input ``name``. Raises InvalidRequest naming the bad field."""
        ...

    async def put_data_policy(self, name: str, policy: JSON) -> dict[str, JSON]:
        """Set what the local input ``name`` may be used for (protocol/policy.py). Raises InvalidRequest
        naming the bad field."""
        ...

    async def publish_revocations(self, listed: bytes) -> dict[str, JSON]:
        """Adopt an admin-signed revocation list and spread it; returns its ``serial`` and the ``revoked``
        member ids. Raises InvalidRequest (field ``revocations``: malformed, another village's) or Conflict
        (not newer than the list held)."""
        ...

    async def reload_certificate(self) -> dict[str, JSON]:
        """Re-read this node's certificate file; returns ``renewed`` and ``expires_at``. Raises
        InvalidRequest (field ``certificate``) if the file is bad, expired, older, or this node is revoked."""
        ...

    async def get_data(self, name: str) -> dict[str, JSON]:
        """The input, its ``updated_at`` and ``policy``. Raises NotFound."""
        ...
