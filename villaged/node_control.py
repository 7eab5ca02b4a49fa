"""The control API's implementation (`villaged.control.NodeControl`): snapshots of the node as JSON data.

Each method reads the workers' state or asks one of them to act (create or join a job, adopt a
revocation list); villaged/api.py serves them over HTTP.
"""

from __future__ import annotations

import secrets
import time

import numpy as np
import structlog

from protocol.announcements import aggregate_digest
from protocol.errors import ParameterError
from protocol.jobs import JobSpec
from protocol.kinds import KINDS, InputError, dequantize_total, describe_input, out_of_range
from protocol.policy import InputPolicy
from protocol.priors import validate_round
from protocol.spec_config import translate_job
from villaged import election
from villaged.bulletin import Bulletin, JobStarter
from villaged.control import Conflict, InvalidRequest, NotFound
from villaged.jobs import Job, JobBook
from villaged.membership import Membership
from villaged.metrics import Metrics
from villaged.rounds import RoundDriver
from villaged.store import ResultRecord, Store
from villaged.training_control import TrainingControl
from villaged.transport import Node, peer_id_from_member_id

log = structlog.get_logger("villaged")

_JOB_STATES = ("pending", "running", "completed", "cancelled", "failed")


class Control(TrainingControl):
    """`NodeControl` over the node's workers. The node (villaged/daemon.py `Daemon`) is one: it builds
    the store, the membership and the job book first, and the network's workers once its node runs."""

    def __init__(self, membership: Membership, book: JobBook, store: Store, metrics: Metrics) -> None:
        self._membership, self._book, self._store, self._metrics = membership, book, store, metrics
        self._started_at = time.time()
        self.me = membership.me
        self._node: Node | None = None
        self._bulletin: Bulletin | None = None
        self._jobs: JobStarter | None = None
        self._driver: RoundDriver | None = None

    def _running(self, node: Node, bulletin: Bulletin, jobs: JobStarter, driver: RoundDriver) -> None:
        """The workers that exist while the node runs."""
        self._node, self._bulletin, self._jobs, self._driver = node, bulletin, jobs, driver

    async def publish_revocations(self, listed: bytes) -> dict[str, object]:
        return await self._membership.publish_revocations(listed)

    async def reload_certificate(self) -> dict[str, object]:
        return await self._membership.reload_certificate()

    async def status(self) -> dict[str, object]:
        node, registry = self._node, self._membership.registry
        jobs = list(self._book.jobs.values())
        return {
            "member_id": self.me.hex(),
            "peer_id": str(node.peer_id) if node else None,
            "village_id": registry.village_id.hex(),
            "addresses": node.listen_addrs if node else [],
            "uptime_seconds": round(time.time() - self._started_at, 1),
            "connected_peers": len(node.connected_peers()) if node else 0,
            "members_known": len(registry.members(time.time())),
            "routing_table_size": node.routing_table_size() if node else 0,
            "discovery_settled": node.discovery.settled if node else False,
            "jobs": {state: sum(1 for j in jobs if j.state == state) for state in _JOB_STATES},
            "certificate_expires_at": self._membership.expires_at,
            "revocation_serial": held.serial if (held := registry.revocations) is not None else 0,
            "warnings": [w for w in (self._membership.certificate_warning(),) if w is not None],
        }

    async def peers(self) -> list[dict[str, object]]:
        return [
            {"member_id": p.hex(), "peer_id": str(peer_id_from_member_id(p)), "member": self._membership.is_member(p)}
            for p in sorted(self._node.connected_peers() if self._node else [])
        ]

    async def members(self) -> list[dict[str, object]]:
        return [{"member_id": c.member_id.hex(), "issued_at": c.issued_at, "expires_at": c.expires_at,
                 "self": c.member_id == self.me}
                for c in self._membership.registry.members(time.time())]

    async def create_job(self, spec: dict[str, object]) -> dict[str, object]:
        try:
            parsed = JobSpec.from_dict(translate_job(spec))  # the spec's federation block, in village's terms
        except ParameterError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        except TypeError as exc:
            raise InvalidRequest("spec", str(exc)) from None
        job_id = secrets.token_hex(8)
        job = self._book.add_job(job_id, parsed, self.me, time.time())
        assert job is not None and self._bulletin is not None and self._jobs is not None
        await self._bulletin.announce_job(job)
        await self._bulletin.maybe_join(job)
        self._jobs.start(job)
        log.info("job_created", job=job_id, kind=parsed.kind, rounds=parsed.rounds)
        return self._job_view(job)

    async def join_job(self, job_id: str) -> dict[str, object]:
        job = self._job(job_id)
        try:
            self._book.check_input(job)
        except InputError as exc:
            raise InvalidRequest("data", str(exc)) from None
        if job.state not in ("pending", "running"):
            raise Conflict(f"job {job_id} is {job.state}")
        assert self._bulletin is not None
        refusal = self._bulletin.join_refusal(job)
        if refusal is not None:
            raise Conflict(f"input {job.spec.data!r} may not be used by job {job_id}: {refusal}")
        await self._bulletin.join(job)
        return self._job_view(job)

    async def list_jobs(self) -> list[dict[str, object]]:
        return [self._job_view(j) for j in sorted(self._book.jobs.values(), key=lambda j: j.created_at)]

    async def get_job(self, job_id: str) -> dict[str, object]:
        return self._job_view(self._job(job_id))

    async def job_progress(self, job_id: str) -> dict[str, object]:
        job = self._job(job_id)
        results = self._store.get_results(job_id)
        current = self._driver.progress(job_id) if self._driver is not None and job.state == "running" else None
        coordinator = None if current is None else election.coordinator(self._book, job_id, current.round,
                                                                          current.attempt)
        last = results[-1] if results else None
        return {
            "id": job.id, "state": job.state, "rounds": job.spec.rounds, "rounds_completed": len(results),
            "members": len(_members_of(job)), "start_at": job.start_at,
            "round": current.round if current else None, "attempt": current.attempt if current else None,
            "coordinator": coordinator.hex() if coordinator is not None else None,
            "role": current.role if current else None,
            "phase": current.phase if current else None,
            "participants": current.participants if current else None,
            "last_result": None if last is None else {
                "round": last.round, "participants": len(last.participants), "dropped": len(last.dropped)},
        }

    async def cancel_job(self, job_id: str) -> dict[str, object]:
        job = self._job(job_id)
        if job.state not in ("pending", "running"):
            raise Conflict(f"job {job_id} is already {job.state}")
        self._book.set_state(job_id, "cancelled")
        if job.creator == self.me and self._bulletin is not None:
            await self._bulletin.announce_cancel(job_id, "cancelled by its creator")
        return self._job_view(job)

    async def rounds(self, job_id: str) -> list[dict[str, object]]:
        self._job(job_id)
        return [
            {"round": r.round, "attempt": r.attempt, "coordinator": r.coordinator.hex(), "state": r.state,
             "participants": len(r.participants), "dropped": len(r.dropped), "phase_timings": r.phase_timings,
             "started_at": r.started_at, "ended_at": r.ended_at, "abort_reason": r.abort_reason}
            for r in self._store.rounds(job_id)
        ]

    async def results(self, job_id: str) -> list[dict[str, object]]:
        job = self._job(job_id)
        return [result_view(job, r) for r in self._store.get_results(job_id)]

    async def priors(self, job_id: str) -> dict[str, object]:
        """The routing priors this node applies: the latest round's decoded aggregate, with the
        spec's validation metrics against the round before."""
        job = self._job(job_id)
        if job.spec.kind != "routing-priors":
            raise Conflict(f"job {job_id} is a {job.spec.kind} job, not routing-priors")
        results = self._store.get_results(job_id)
        if not results:
            return {"job": job_id, "state": job.state, "round": None, "priors": None, "validation": None}
        view = result_view(job, results[-1])
        return {
            "job": job_id, "state": job.state, "round": view["round"], "participants": len(results[-1].participants),
            "error_bound": view["error_bound"], "validation": prior_validation(job, self._store),
            "priors": {key: view[key] for key in ("models", "request_patterns", "carbon")},
        }

    async def put_data(self, name: str, payload: object) -> dict[str, object]:
        _check_input_name(name)
        try:
            summary = describe_input(name, payload)
        except InputError as exc:
            self._metrics.malformed_messages.labels(kind="local_input").inc()
            log.info("local_input_refused", input=name, field=exc.field, reason=exc.reason)
            raise InvalidRequest(exc.field, exc.reason) from None
        await self._store.write(self._store.put_local_input, name, payload, time.time())
        return {"name": name, "updated_at": time.time(), "summary": summary,
                "policy": self._store.get_input_policy(name).to_dict()}

    async def put_data_policy(self, name: str, raw: object) -> dict[str, object]:
        _check_input_name(name)
        try:
            policy = InputPolicy.from_dict(raw)
        except ParameterError as exc:
            raise InvalidRequest(exc.field, exc.reason) from None
        await self._store.write(self._store.set_input_policy, name, policy)
        log.info("input_policy_set", input=name, policy=policy.to_dict())
        return {"name": name, "policy": policy.to_dict()}

    async def get_data(self, name: str) -> dict[str, object]:
        local = self._store.get_local_input(name)
        if local is None:
            raise NotFound(f"local input {name!r}")
        try:
            summary = describe_input(name, local.payload)
        except InputError as exc:  # stored before put checked it
            summary = f"no job can read it: {exc}"
        return {"name": local.name, "summary": summary, "payload": local.payload,
                "updated_at": local.updated_at, "policy": self._store.get_input_policy(name).to_dict()}

    def _job(self, job_id: str) -> Job:
        job = self._book.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r}")
        return job

    def _job_view(self, job: Job) -> dict[str, object]:
        return {
            "id": job.id, "state": job.state, "spec": job.spec.to_dict(), "creator": job.creator.hex(),
            "created_at": job.created_at, "start_at": job.start_at,
            "members": sorted(m.hex() for m in _members_of(job)),
            "joined": self.me in job.members, "results": len(self._store.result_rounds(job.id)),
            "privacy": self._book.privacy_view(job), "end_reason": self._book.end_reason(job.id),
        }


def _check_input_name(name: str) -> None:
    if not (0 < len(name) <= 128):
        raise InvalidRequest("name", "must be 1 to 128 characters")


def _members_of(job: Job) -> tuple[bytes, ...] | set[bytes]:
    """The roster once it is fixed; before, the joins this node knows (all of them on the creator)."""
    return job.roster if job.roster is not None else job.members


def result_view(job: Job, record: ResultRecord) -> dict[str, object]:
    """A stored result decoded for its job's kind, with its error bound and noise."""
    words = np.frombuffer(record.aggregate, dtype="<u4").astype(np.uint32)
    survivors = len(record.participants)
    quantizer = job.spec.quantizer()
    view = KINDS[job.spec.kind].decode(job.spec, dequantize_total(job.spec, words), survivors)
    per_input = survivors if job.spec.aggregate == "mean" else 1
    view.update({
        "round": record.round, "attempt": record.attempt, "coordinator": record.coordinator.hex(),
        "participants": [p.hex() for p in record.participants], "dropped": [d.hex() for d in record.dropped],
        "error_bound": quantizer.error_bound(survivors) / per_input,
        "noise_std": 0.0 if (plan := job.spec.noise_plan()) is None else plan.noise_std(survivors) / per_input,
        "digest": aggregate_digest(record.aggregate).hex(), "received_at": record.received_at,
        "secure_aggregation": job.spec.masked,  # false: a plain sum, the coordinator saw every input
        # > 0: those coordinates wrapped (a noise tail) or a participant sent words outside the range
        "coordinates_out_of_range": out_of_range(job.spec, words, survivors),
    })
    return view


def prior_validation(job: Job, store: Store) -> dict[str, float] | None:
    """The spec's validation metrics of a routing-priors job's latest round against the one before."""
    results = store.get_results(job.id)
    if not results:
        return None
    current = result_view(job, results[-1])
    previous = result_view(job, results[-2]) if len(results) > 1 else None
    models = len((job.spec.priors or {}).get("models", []))
    return validate_round(previous, current, models)
