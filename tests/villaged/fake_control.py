"""An in-memory implementation of OUR `NodeControl` interface, plus a tiny HTTP client for tests.

Shared by tests/villaged/test_api.py and tests/cli/ so both drive a real API server over loopback.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from protocol.errors import ParameterError
from protocol.kinds import InputError, describe_input
from protocol.policy import InputPolicy
from villaged.control import Conflict, InvalidRequest, NotFound


class RequirementNotMet(Conflict):
    """What the daemon's join answers a node that misses a participant requirement (403, naming it)."""

    status = 403
    code = "requirement_not_met"


def fake_model(job_id: str, version: int) -> bytes:
    """A tiny well-formed safetensors file (one float64 tensor), different for every job and version."""
    header = json.dumps({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
                         "__metadata__": {"job": job_id, "version": str(version)}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack("<2d", float(version), -float(version))


@dataclass
class FakeControl:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, InputPolicy] = field(default_factory=dict)
    explode: bool = False  # make status() raise, to test the 500 path
    # Training jobs (the /v1/training routes): canned answers in the daemon's shapes, not its logic.
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    wrong_model_digest: bool = False  # training_model() names a digest its bytes do not have

    async def status(self) -> dict[str, Any]:
        if self.explode:
            raise RuntimeError("secret internal detail")
        return {"member_id": "a1" * 32, "peer_id": "12D3KooWFake", "village_id": "0f" * 16, "peers": 2, "jobs": len(self.jobs),
                "addresses": ["/ip4/127.0.0.1/tcp/4001"]}

    async def peers(self) -> list[dict[str, Any]]:
        return [
            {"peer_id": "12D3KooWPeerOne", "member_id": "b0" * 32, "address": "/ip4/127.0.0.1/tcp/4001", "member": True},
            {"peer_id": "12D3KooWPeerTwo", "member_id": "c0" * 32, "address": "/ip4/127.0.0.1/tcp/4002", "member": False},
        ]

    async def members(self) -> list[dict[str, Any]]:
        return [{"member_id": "b0" * 32, "expires_at": 1_800_000_000}]

    async def create_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        rounds = spec.get("rounds")
        if not isinstance(rounds, int) or rounds < 1:
            raise InvalidRequest("rounds", f"must be a positive integer, got {rounds!r}")
        job_id = f"job-{len(self.jobs) + 1}"
        self.jobs[job_id] = {"id": job_id, "spec": spec, "state": "pending", "joined": False, "results": 0}
        return self.jobs[job_id]

    async def join_job(self, job_id: str) -> dict[str, Any]:
        job = await self.get_job(job_id)
        if job["state"] not in ("pending", "running"):
            raise Conflict(f"job {job_id} is {job['state']}")
        if job["spec"].get("data") not in self.data:
            raise InvalidRequest("data", f"no local input named {job['spec'].get('data')!r}")
        job["joined"] = True
        return job

    async def job_progress(self, job_id: str) -> dict[str, Any]:
        """A job that runs as fast as it is watched: every call finishes one more round."""
        job = await self.get_job(job_id)
        if job["state"] == "pending":
            job["state"] = "running"
        elif job["state"] == "running":
            job["results"] += 1
            if job["results"] == job["spec"]["rounds"]:
                job["state"] = "completed"
        running = job["state"] == "running"
        return {
            "id": job_id, "state": job["state"], "rounds": job["spec"]["rounds"], "rounds_completed": job["results"],
            "members": 3, "start_at": 1_700_000_000.0,
            "round": job["results"] if running else None, "attempt": 0 if running else None,
            "coordinator": "b0" * 32 if running else None, "role": "client" if running else None,
            "phase": "masked" if running else None, "participants": None,
            "last_result": {"round": job["results"] - 1, "participants": 3, "dropped": 1} if job["results"] else None,
        }

    async def list_jobs(self) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    async def get_job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.jobs:
            raise NotFound(f"job {job_id!r}")
        return self.jobs[job_id]

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        job = await self.get_job(job_id)
        if job["state"] == "cancelled":
            raise Conflict(f"job {job_id!r} is already cancelled")
        job["state"] = "cancelled"
        return job

    async def rounds(self, job_id: str) -> list[dict[str, Any]]:
        await self.get_job(job_id)
        return [{"round": 0, "attempt": 0, "state": "completed", "phase_timings": {"unmask": 0.5}}]

    async def results(self, job_id: str) -> list[dict[str, Any]]:
        await self.get_job(job_id)
        return [{"round": 0, "aggregate": "00ff", "participants": ["b0" * 32]}]

    async def priors(self, job_id: str) -> dict[str, Any]:
        await self.get_job(job_id)
        return {"job": job_id, "round": 0, "priors": {"models": [], "request_patterns": {"h1": {"optimal_model": "m1", "share": 0.8}},
                "carbon": {}}, "validation": {"stability_score": 1.0, "diversity_score": 0.0, "round_quality": 0.5}}

    # --- training: a test double of the control API's answers, not of training itself -------------

    async def create_training_job(self, body: Any) -> dict[str, Any]:
        """Keeps the body as posted; refuses only what the CLI's tests need refused, naming the field."""
        if not isinstance(body, dict) or "job_name" not in body:
            raise InvalidRequest("job_name", "is required")
        rounds = (body.get("training_config") or {}).get("rounds", 10)
        if type(rounds) is not int or not 1 <= rounds <= 1000:
            raise InvalidRequest("training_config.rounds", f"must be an integer in [1, 1000], got {rounds!r}")
        types = (body.get("participant_requirements") or {}).get("allowed_node_types") or []
        for i, kind in enumerate(types):
            if kind not in ("server", "desktop", "laptop", "mobile", "edge"):
                raise InvalidRequest(f"participant_requirements.allowed_node_types[{i}]",
                                     f"must be one of server, desktop, laptop, mobile, edge, got {kind!r}")
        job_id = f"train-{len(self.training) + 1}"
        self.training[job_id] = {"body": body, "state": "pending", "rounds": rounds, "curve": [], "joined": None}
        return {"job_id": job_id, "status": "pending", "estimated_start_time": 1_700_000_030.0, "rounds": rounds,
                "model_parameters": 650}

    async def join_training(self, job_id: str, body: Any) -> dict[str, Any]:
        job = self._training_job(job_id)
        declared = (body or {}).get("capabilities") or {}
        capabilities = {"compute_gflops": 12.5, "memory_gb": 16.0, "cores": 2, "device_type": "server",
                        "battery_percent": None, "charging": False, "network_type": "ethernet", **declared}
        needs = job["body"].get("participant_requirements") or {}
        battery = capabilities["battery_percent"]
        if battery is not None and not capabilities["charging"] and battery < needs.get("min_battery_percent", 0):
            raise RequirementNotMet(f"this node does not meet the job's participant_requirements: min_battery_percent: "
                                    f"this node reports {battery} % and is not charging, the job needs "
                                    f"{needs['min_battery_percent']}")
        job["joined"] = body
        return {"job_id": job_id, "joined": True, "capabilities": capabilities, "state": job["state"]}

    async def list_training(self) -> list[dict[str, Any]]:
        return [self._training_summary(job_id) for job_id in self.training]

    async def training_status(self, job_id: str) -> dict[str, Any]:
        """A job that trains as fast as it is watched: every call while running adds a point to the curve."""
        job = self._training_job(job_id)
        if job["state"] == "pending":
            job["state"] = "running"
        elif job["state"] == "running":
            self.advance_training(job_id)
        return {
            **self._training_summary(job_id),
            "architecture": {"architecture": "logistic", "features": 64, "classes": 10, "hidden": []}, "trainer": "",
            "server_optimizer": {"name": "fedavg", "learning_rate": 1.0, "momentum": 0.9, "beta1": 0.9, "beta2": 0.99,
                                 "tau": 0.001},
            "local_epochs": 1, "learning_rate": 0.1, "batch_size": 32,
            "secure_aggregation": (job["body"].get("privacy_config") or {}).get("secure_aggregation", True),
            "privacy": None, "requirements": {"min_compute_gflops": 0.0, "min_memory_gb": 0.0, "min_battery_percent": 0,
                                              "allowed_node_types": []},
            "capabilities": {"compute_gflops": 12.5, "memory_gb": 16.0, "cores": 2, "device_type": "server"},
            "curve": list(job["curve"]),
        }

    def advance_training(self, job_id: str) -> None:
        """One more point on the curve (round r: accuracy 0.5 + 0.4 (1 - 2^-r)); after R + 1, completed."""
        job = self._training_job(job_id)
        r = len(job["curve"])
        job["curve"].append({
            "round": r, "model_version": r, "accuracy": round(0.5 + 0.4 * (1 - 0.5 ** r), 4),
            "loss": round(1.2 * 0.7 ** r, 4), "evaluated": 120.0, "examples": 600.0, "participants": 4, "dropped": r % 2,
            "update_norm": 0.25 / (r + 1), "model_digest": hashlib.sha256(fake_model(job_id, r)).hexdigest(),
            "next_model_digest": hashlib.sha256(fake_model(job_id, r + 1)).hexdigest() if r < job["rounds"] else None,
            "agrees": True, "final_evaluation": r == job["rounds"],
        })
        if len(job["curve"]) == job["rounds"] + 1:
            job["state"] = "completed"

    async def training_model(self, job_id: str, version: int | None) -> tuple[bytes, str, int]:
        job = self._training_job(job_id)
        newest = min(len(job["curve"]), job["rounds"])
        version = newest if version is None else version
        if version > newest:
            raise NotFound(f"model version {version} of job {job_id!r} (versions 0 to {newest} are known here)")
        blob = fake_model(job_id, version)
        digest = hashlib.sha256(blob + b"!" if self.wrong_model_digest else blob).hexdigest()
        return blob, digest, version

    def _training_job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.training:
            raise NotFound(f"training job {job_id!r}")
        return self.training[job_id]

    def _training_summary(self, job_id: str) -> dict[str, Any]:
        job = self.training[job_id]
        last = job["curve"][-1] if job["curve"] else None
        version = min(len(job["curve"]), job["rounds"])
        return {
            "job_id": job_id, "name": job["body"]["job_name"], "state": job["state"], "rounds": job["rounds"],
            "rounds_done": len(job["curve"]), "model_version": version,
            "model_digest": hashlib.sha256(fake_model(job_id, version)).hexdigest(),
            "participants": None if last is None else last["participants"],
            "accuracy": None if last is None else last["accuracy"], "loss": None if last is None else last["loss"],
            "joined": job["joined"] is not None, "end_reason": None,
        }

    async def put_data(self, name: str, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, (dict, list)):
            raise InvalidRequest("payload", "must be a JSON object or array")
        try:
            summary = describe_input(name, payload)
        except InputError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        self.data[name] = payload
        return {"name": name, "summary": summary, "payload": payload}

    async def put_data_policy(self, name: str, raw: Any) -> dict[str, Any]:
        try:
            self.policies[name] = InputPolicy.from_dict(raw)
        except ParameterError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        return {"name": name, "policy": self.policies[name].to_dict()}

    async def get_data(self, name: str) -> dict[str, Any]:
        if name not in self.data:
            raise NotFound(f"data {name!r}")
        return {"name": name, "summary": describe_input(name, self.data[name]), "payload": self.data[name],
                "policy": self.policies.get(name, InputPolicy()).to_dict()}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def receive_reply(conn: h11.Connection, stream: trio.abc.ReceiveStream) -> Reply:
    status, headers, body = 0, {}, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Reply(status, headers, bytes(body))
        else:
            raise AssertionError(f"unexpected {event!r}")


async def http(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """One request over a fresh loopback connection, parsed with h11 in client mode."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        hdrs = [("host", f"127.0.0.1:{port}"), ("connection", "close"), *headers]
        if token is not None:
            hdrs.append(("authorization", f"Bearer {token}"))
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
        return await receive_reply(conn, stream)
