"""An in-memory implementation of OUR `NodeControl` interface, plus a tiny HTTP client for tests.

Shared by tests/villaged/test_api.py and tests/cli/ so both drive a real API server over loopback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from protocol.errors import ParameterError
from protocol.kinds import InputError, describe_input
from protocol.policy import InputPolicy
from villaged.control import Conflict, InvalidRequest, NotFound


@dataclass
class FakeControl:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, InputPolicy] = field(default_factory=dict)
    explode: bool = False  # make status() raise, to test the 500 path

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
