"""The control API's route table: every route, its handler and its schema, and the OpenAPI document
generated from the table (so a route cannot exist undocumented). villaged/api.py routes requests
through `ROUTES`; a handler turns one route's call into a `NodeControl` call and its answer into a
response.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import unquote

from villaged.control import NodeControl
from villaged.http_server import MAX_BODY_BYTES, Response, json_error, json_response
from villaged.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from villaged.metrics import Metrics

API_VERSION: Final = "v1"
# A create_job body may carry initial weights: base64 of up to one transport frame (64 MiB), and the rest.
MAX_TRAINING_BODY_BYTES: Final = 96 * 1024 * 1024
# Job ids and data names appear in URLs and file-ish contexts: keep them plain.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ApiState(Protocol):
    """What a handler reads of the serving `villaged.api.ControlApi`."""

    control: NodeControl
    metrics: Metrics
    started: float  # time.monotonic() when serving began


Params = Mapping[str, str]
Call = Callable[[ApiState, Params, Any], Awaitable[Response]]

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
    max_body: int = MAX_BODY_BYTES  # more only for an authenticated caller (villaged/api.py `body_limit`)

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


async def _status(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.status())


async def _peers(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.peers())


async def _members(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.members())


async def _list_jobs(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.list_jobs())


async def _create_job(api: ApiState, params: Params, body: Any) -> Response:
    if not isinstance(body, dict):
        return json_error(422, "invalid_body", f"job spec must be a JSON object, got {_json_type(body)}")
    job = await api.control.create_job(body)
    location = f"/{API_VERSION}/jobs/{job['id']}" if isinstance(job.get("id"), str) else None
    return json_response(201, job, (("location", location),) if location else ())


def _job_call(method: str) -> Call:
    """A handler that answers 200 with one `NodeControl` method's view of the job in the path."""

    async def handler(api: ApiState, params: Params, body: Any) -> Response:
        return json_response(200, await getattr(api.control, method)(params["id"]))

    return handler


async def _create_training_job(api: ApiState, params: Params, body: Any) -> Response:
    job = await api.control.create_training_job(body)
    return json_response(201, job, (("location", f"/{API_VERSION}/training/status/{job['job_id']}"),))


async def _join_training(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.join_training(params["id"], body))


async def _list_training(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.list_training())


async def _training_model(api: ApiState, params: Params, body: Any) -> Response:
    version = params.get("version")
    if version is not None and not version.isdigit():
        return json_error(404, "not_found", f"no model version {version!r}: versions are whole numbers")
    blob, digest, number = await api.control.training_model(params["id"], None if version is None else int(version))
    return Response(200, blob, "application/octet-stream", (("x-model-digest", digest), ("x-model-version", str(number))))


async def _put_data(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.put_data(params["name"], body))


async def _put_data_policy(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.put_data_policy(params["name"], body))


async def _get_data(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.get_data(params["name"]))


async def _publish_revocations(api: ApiState, params: Params, body: Any) -> Response:
    listed = body.get("revocations") if isinstance(body, dict) else None
    try:
        data = bytes.fromhex(listed) if isinstance(listed, str) else None
    except ValueError:
        data = None
    if data is None:
        return json_error(422, "invalid_field", "request body: revocations: must be the hex of a revocation list "
                                                "(villagectl village revoke writes one)")
    return json_response(200, await api.control.publish_revocations(data))


async def _reload_certificate(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, await api.control.reload_certificate())


async def _health(api: ApiState, params: Params, body: Any) -> Response:
    return json_response(200, {"status": "ok", "uptime_seconds": round(time.monotonic() - api.started, 3)})


async def _metrics(api: ApiState, params: Params, body: Any) -> Response:
    return Response(200, api.metrics.render(), METRICS_CONTENT_TYPE)


async def _openapi(api: ApiState, params: Params, body: Any) -> Response:
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
    Route("GET", "/v1/jobs/{id}", "getJob", "One job", _job_call("get_job"), _OBJECT, errors=(404,)),
    Route(
        "POST", "/v1/jobs/{id}/cancel", "cancelJob", "Cancel a job", _job_call("cancel_job"), _OBJECT, errors=(404, 409)
    ),
    Route(
        "POST", "/v1/jobs/{id}/join", "joinJob",
        "Contribute this node's local input to a job (409 with the reason when the input's policy forbids it)",
        _job_call("join_job"), _OBJECT, errors=(404, 409, 422),
    ),
    Route(
        "GET", "/v1/jobs/{id}/progress", "getJobProgress",
        "Current round, attempt, coordinator and this node's phase; rounds completed", _job_call("job_progress"), _OBJECT,
        errors=(404,),
    ),
    Route(
        "GET", "/v1/jobs/{id}/rounds", "listRounds", "Round attempts with phase timings", _job_call("rounds"), _OBJECT_LIST,
        errors=(404,),
    ),
    Route("GET", "/v1/jobs/{id}/results", "listResults", "Committed results", _job_call("results"), _OBJECT_LIST, errors=(404,)),
    Route(
        "GET", "/v1/jobs/{id}/priors", "getPriors",
        "Routing priors this node applies (latest round) with stability, diversity and round quality", _job_call("priors"),
        _OBJECT, errors=(404, 409),
    ),
    Route(
        "POST", "/v1/training/create_job", "createTrainingJob",
        "Create a federated training job (the seed's body: job_name, model_config, training_config, privacy_config, "
        "participant_requirements)", _create_training_job,
        {"type": "object", "properties": {"job_id": {"type": "string"}, "status": {"type": "string"},
                                          "estimated_start_time": {"type": "number"}}},
        request_schema={
            "type": "object", "required": ["job_name", "model_config", "training_config"],
            "description": "An invalid field gives a 422 naming it (model_config.features, training_config.rounds, ...).",
            "properties": {
                "job_name": {"type": "string"},
                "model_config": {"type": "object", "description": "architecture (logistic | mlp), features, classes, "
                                 "hidden (mlp), trainer (an installed village.trainers entry point), seed, "
                                 "initial_weights (base64 of a safetensors file; absent: the seeded default)"},
                "training_config": {"type": "object", "description": "rounds, min_participants, max_participants, "
                                    "local_epochs, learning_rate, batch_size, server_optimizer {name: fedavg | fedavgm "
                                    "| fedadam, ...}, update_clip, max_examples, data (local input name), "
                                    "round_interval, start_delay, phase_timeout"},
                "privacy_config": {"type": "object", "description": "differential_privacy, epsilon (the whole job's), "
                                   "delta, l2_clip, secure_aggregation"},
                "participant_requirements": {"type": "object", "description": "min_compute_gflops, min_memory_gb, "
                                             "min_battery_percent, allowed_node_types"},
            },
        },
        success_status=201, errors=(400, 409, 413, 415, 422), max_body=MAX_TRAINING_BODY_BYTES,
    ),
    Route(
        "POST", "/v1/training/join/{id}", "joinTrainingJob",
        "Join a training job with this node's capabilities (403 naming the requirement it does not meet)",
        _join_training, _OBJECT,
        request_schema={"type": "object", "description": "node_id, capabilities {compute_gflops, memory_gb, "
                        "device_type, battery_percent, charging, network_type}, availability. Cores, memory and "
                        "GFLOPS are measured; the rest is this node's word."},
        errors=(403, 409, 413, 415, 422),
    ),
    Route("GET", "/v1/training/jobs", "listTrainingJobs", "Training jobs with their model version and accuracy",
          _list_training, _OBJECT_LIST),
    Route(
        "GET", "/v1/training/status/{id}", "getTrainingStatus",
        "Round, participants, model version and digest, and the accuracy and loss curve", _job_call("training_status"),
        _OBJECT, errors=(404,),
    ),
    Route(
        "GET", "/v1/training/model/{id}", "getTrainingModel", "The newest model this node derived, as safetensors",
        _training_model, {"type": "string", "format": "binary"}, errors=(404, 409), content_type="application/octet-stream",
    ),
    Route(
        "GET", "/v1/training/model/{id}/{version}", "getTrainingModelVersion",
        "The model a round started from (version r; the last is the final model), as safetensors", _training_model,
        {"type": "string", "format": "binary"}, errors=(404, 409), content_type="application/octet-stream",
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
    403: "This node does not meet a training job's participant requirements",
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
                f"Request bodies are limited to {MAX_BODY_BYTES} bytes ({MAX_TRAINING_BODY_BYTES} for createTrainingJob "
                "with a valid token)."
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


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__
