"""The control API's training endpoints (the seed's section 5.2): create a training job from the
seed's body, join one with this node's capabilities, read its status and curve, download a model.

A training job is an ordinary job of kind training (protocol/kinds.py); these methods translate
the seed's shapes and add the model's view. `Control` (villaged/node_control.py) mixes them in.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from protocol.errors import ParameterError
from protocol.training import rounds
from protocol.training.request import job_from_request
from protocol.training.spec import NODE_TYPES, Capabilities
from villaged.control import Conflict, InvalidRequest, NotFound
from villaged.jobs import Job, JobBook
from villaged.store import Store
from villaged.training import Timings, TrainingWorker, announced_model

DECLARED = {"device_type": str, "battery_percent": int, "charging": bool, "network_type": str}


class Forbidden(Conflict):
    """The node does not meet a training job's participant requirements (403, naming the requirement)."""

    status = 403
    code = "requirement_not_met"


class TrainingControl:
    """Training endpoints over the job book, the store and the training worker."""

    _book: JobBook
    _store: Store
    me: bytes
    create_job: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]  # Control's
    join_job: Callable[[str], Awaitable[dict[str, Any]]]

    @property
    def _training(self) -> TrainingWorker:
        assert self._book.training is not None
        return self._book.training

    async def create_training_job(self, body: Any) -> dict[str, Any]:
        try:
            spec, blob = job_from_request(body)
        except ParameterError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        if blob is not None:
            await self._store.write(self._store.put_blob, blob, time.time())
        job = await self.create_job(spec.to_dict())
        return {"job_id": job["id"], "status": job["state"], "estimated_start_time": job["start_at"],
                "rounds": spec.rounds - 1, "model_parameters": spec.training.architecture.parameters if spec.training else 0}

    async def join_training(self, job_id: str, body: Any) -> dict[str, Any]:
        job = self._training_job(job_id)
        training = job.spec.training
        assert training is not None
        capabilities = _declared(self._training.capabilities, body)
        unmet = training.requirements.unmet(capabilities)
        if unmet is not None:
            raise Forbidden(f"this node does not meet the job's participant_requirements: {unmet}")
        self._training.capabilities = capabilities
        joined = await self.join_job(job_id)
        return {"job_id": job_id, "joined": bool(joined.get("joined")), "capabilities": capabilities.to_dict(),
                "state": job.state}

    async def list_training(self) -> list[dict[str, Any]]:
        jobs = [j for j in self._book.jobs.values() if j.spec.kind == "training"]
        return [self._summary(j) for j in sorted(jobs, key=lambda j: j.created_at)]

    async def training_status(self, job_id: str) -> dict[str, Any]:
        job = self._training_job(job_id)
        training = job.spec.training
        assert training is not None
        view = self._summary(job)
        view.update({
            "architecture": training.architecture.to_dict(), "trainer": training.trainer_name,
            "server_optimizer": dataclasses.asdict(training.server_optimizer),
            "local_epochs": training.local_epochs, "learning_rate": training.learning_rate,
            "batch_size": training.batch_size, "secure_aggregation": training.secure_aggregation,
            "privacy": self._book.privacy_view(job), "requirements": dataclasses.asdict(training.requirements),
            "curve": self._curve(job), "capabilities": self._training.capabilities.to_dict(),
            "timings": self._training.timings.get(job.id, Timings()).to_dict(),
        })
        return view

    async def training_model(self, job_id: str, version: int | None) -> tuple[bytes, str, int]:
        """A model's safetensors bytes, digest and version (None: the newest this node derived)."""
        job = self._training_job(job_id)
        newest = self._newest_version(job)
        version = newest if version is None else version
        if not 0 <= version <= newest:
            raise NotFound(f"model version {version} of job {job_id!r} (versions 0 to {newest} are known here)")
        blob = self._training.blob(job, version)
        if blob is None:
            raise Conflict(f"the initial model of job {job_id} is not held on this node")
        model = self._training.model(job, version)
        assert model is not None
        return blob, model.digest.hex(), version

    def _training_job(self, job_id: str) -> Job:
        job = self._book.jobs.get(job_id)
        if job is None or job.spec.kind != "training":
            raise NotFound(f"training job {job_id!r}")
        return job

    def _newest_version(self, job: Job) -> int:
        """Versions 0..R exist for R training rounds; the newest here follows the results held."""
        rounds = self._store.result_rounds(job.id)
        return min(max(rounds) + 1, job.spec.rounds - 1) if rounds else 0

    def _summary(self, job: Job) -> dict[str, Any]:
        curve = self._curve(job)
        last = curve[-1] if curve else None
        version = self._newest_version(job)
        model = self._training.model(job, version)
        return {
            "job_id": job.id, "name": job.spec.name, "state": job.state, "rounds": job.spec.rounds - 1,
            "rounds_done": len(curve), "model_version": version,
            "model_digest": None if model is None else model.digest.hex(),
            "participants": None if last is None else last["participants"],
            "accuracy": None if last is None else last["accuracy"], "loss": None if last is None else last["loss"],
            "joined": self.me in job.members, "end_reason": self._book.end_reason(job.id),
        }

    def _curve(self, job: Job) -> list[dict[str, Any]]:
        """Per round: the evaluation of the model the round started from, and what the round did."""
        points = []
        for record in self._store.get_results(job.id):
            words = np.frombuffer(record.aggregate, dtype="<u4").astype(np.uint32)
            read = rounds.read_sum(job.spec, words, len(record.participants))
            model = self._training.model(job, record.round)
            announced = announced_model(record.signed_announcement)
            after = self._training.model(job, min(record.round + 1, job.spec.rounds - 1))
            points.append({
                "round": record.round, "model_version": record.round, "accuracy": read.accuracy, "loss": read.loss,
                "evaluated": round(read.evaluated, 3), "examples": round(read.examples, 3),
                "participants": len(record.participants), "dropped": len(record.dropped),
                "update_norm": float(np.linalg.norm(read.mean_update)),
                "model_digest": None if model is None else model.digest.hex(),
                "next_model_digest": announced.hex() or None,
                "agrees": after is None or not announced or after.digest == announced,
                "final_evaluation": record.round == job.spec.rounds - 1,
                "secure_aggregation": job.spec.masked,  # false: a plain sum, the coordinator saw every update
            })
        return points


def _declared(measured: Capabilities, body: Any) -> Capabilities:
    """The node's capabilities with what the join body declares of the values it cannot measure."""
    if body is None:
        return measured
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object {node_id, capabilities, availability}")
    raw = body.get("capabilities", {})
    if not isinstance(raw, dict):
        raise InvalidRequest("capabilities", "must be an object")
    declared: dict[str, Any] = {}
    for key, kind in DECLARED.items():
        if key in raw:
            value = raw[key]
            if type(value) is not kind or (key == "battery_percent" and not 0 <= value <= 100):
                raise InvalidRequest(f"capabilities.{key}", f"must be a {kind.__name__}, got {value!r}")
            declared[key] = value
    if declared.get("device_type", measured.device_type) not in NODE_TYPES:
        raise InvalidRequest("capabilities.device_type", f"must be one of {', '.join(NODE_TYPES)}")
    return dataclasses.replace(measured, **declared)

