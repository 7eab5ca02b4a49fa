"""Training jobs on one node: the model of every round, derived alike on every node, and this node's
contribution to a round (local training in a worker thread, off the event loop).

The model of round r (version r) is the initial model with the server optimizer applied to the
stored result of every earlier round (a round without a result changes nothing). Nothing but the
initial model is ever transferred: each node derives the chain from the results it verified, and
the coordinator signs the digest of the model its round produced, so a node that derived another
model says so (`model_mismatch`) and sits out rounds until it agrees again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog
import trio

from protocol.announcements import ResultAnnouncement, open_announcement
from protocol.kinds import KINDS, InputError
from protocol.training import rounds
from protocol.training.data import LocalData
from protocol.training.model import from_safetensors, to_safetensors
from protocol.training.optimizers import ServerState
from protocol.training.spec import Capabilities
from protocol.training.trainers import TrainerMissing, trainer_named
from villaged.metrics import Metrics
from villaged.store import Store

if TYPE_CHECKING:
    from villaged.jobs import Job

log = structlog.get_logger("villaged.training")


@dataclass(frozen=True, slots=True)
class Model:
    version: int  # the round that starts from it
    weights: np.ndarray
    state: ServerState
    digest: bytes  # SHA-256 of its safetensors blob


@dataclass
class _Chain:
    latest: Model
    digests: list[bytes] = field(default_factory=list)  # digest of version v at index v


@dataclass
class Timings:
    """Where a training job's time goes on this node (the benchmark reads them from the status)."""

    train: dict[int, float] = field(default_factory=dict)  # round -> seconds of local training and evaluation
    derive: dict[int, float] = field(default_factory=dict)  # version -> seconds to apply its round's sum
    initial_fetch: float | None = None  # seconds to fetch the creator's initial model, if it was fetched

    def to_dict(self) -> dict[str, object]:
        return {"train_seconds": {str(r): round(s, 4) for r, s in sorted(self.train.items())},
                "derive_seconds": {str(v): round(s, 4) for v, s in sorted(self.derive.items())},
                "initial_model_fetch_seconds": None if self.initial_fetch is None else round(self.initial_fetch, 4)}


@dataclass
class _Prepared:
    done: trio.Event = field(default_factory=trio.Event)
    vector: np.ndarray | None = None
    refusal: str | None = None
    model: bytes = b""  # digest of the model it was trained from
    started: bool = False  # the job runner began preparing it (an invite may come first and wait)


class TrainingWorker:
    """Model chains and per-round contributions of this node's training jobs."""

    def __init__(self, store: Store, me: bytes, metrics: Metrics, capabilities: Capabilities) -> None:
        self._store, self.me, self._metrics, self.capabilities = store, me, metrics, capabilities
        self._chains: dict[str, _Chain] = {}
        self._prepared: dict[tuple[str, int], _Prepared] = {}
        self._fetch_blob: Callable[[str, list[bytes]], Awaitable[bool]] | None = None
        self.timings: dict[str, Timings] = {}

    def attach(self, fetch_blob: Callable[[str, list[bytes]], Awaitable[bool]]) -> None:
        """How to get a blob this node lacks from other members (villaged/blobs.py), once the node runs."""
        self._fetch_blob = fetch_blob

    async def fetch_initial_model(self, job: Job) -> bool:
        """Make sure the job's initial model is held: fetched from its creator, else from the roster."""
        training = job.spec.training
        assert training is not None
        if training.initial_model is None or self._store.get_blob(training.initial_model) is not None:
            return True
        if self._fetch_blob is None:
            return False
        others = [m for m in (job.roster or ()) if m not in (job.creator, self.me)]
        began = time.perf_counter()
        fetched = await self._fetch_blob(training.initial_model, [job.creator, *others])
        self.timings.setdefault(job.id, Timings()).initial_fetch = time.perf_counter() - began
        return fetched

    # --- the model chain ------------------------------------------------------------------------

    def initial_model(self, job: Job) -> Model | None:
        training = job.spec.training
        assert training is not None
        if training.initial_model is None:
            weights = rounds.default_initial(job.spec)
        else:
            blob = self._store.get_blob(training.initial_model)
            if blob is None:
                return None
            weights = from_safetensors(training.architecture, blob, f"model {training.initial_model[:16]}")
        return Model(0, weights, {}, rounds.digest(job.spec, weights))

    def model(self, job: Job, version: int) -> Model | None:
        """The model round `version` starts from; None while the initial model is not held here."""
        chain = self._chains.get(job.id)
        if chain is None or chain.latest.version > version:
            first = self.initial_model(job)
            if first is None:
                return None
            chain = _Chain(first, [first.digest])
        model = chain.latest
        while model.version < version:
            weights, state = model.weights, model.state
            record = self._store.get_result(job.id, model.version)
            began = time.perf_counter()
            if record is not None:  # a round without a result changes nothing
                words = np.frombuffer(record.aggregate, dtype="<u4").astype(np.uint32)
                weights, state = rounds.advance(job.spec, model.version, weights, state, words, len(record.participants))
            model = Model(model.version + 1, weights, state, rounds.digest(job.spec, weights))
            self.timings.setdefault(job.id, Timings()).derive[model.version] = time.perf_counter() - began
            del chain.digests[model.version:]
            chain.digests.append(model.digest)
        chain.latest = model
        self._chains[job.id] = chain
        return model

    def digest_after(self, job: Job, round_number: int, words: np.ndarray, survivors: int) -> bytes:
        """The digest of the model a round's sum produces (what its coordinator signs)."""
        model = self.model(job, round_number)
        if model is None:
            return b""
        weights, _ = rounds.advance(job.spec, round_number, model.weights, model.state, words, survivors)
        return rounds.digest(job.spec, weights)

    def check_announced(self, job: Job, round_number: int, announced: bytes) -> bool:
        """A round's result was stored: compare the model this node derives after it with the one its
        coordinator signed; a difference is logged loudly and counted, and this node sits the rounds out
        until they agree. (Models derived before the result arrived, without it, are dropped first.)"""
        chain = self._chains.get(job.id)
        if chain is not None and chain.latest.version > round_number:  # derived before this result was held
            del self._chains[job.id]
        model = self.model(job, round_number + 1)
        if model is None or not announced or model.digest == announced:
            return True
        self._metrics.training_model_mismatches.inc()
        log.error("model_mismatch", job=job.id, round=round_number, ours=model.digest.hex()[:16],
                  coordinator=announced.hex()[:16],
                  hint="this node derived another model from the results it holds: it sits rounds out")
        return False

    def agrees(self, job: Job, version: int) -> str | None:
        """Why this node may not train from its model of `version` (None: it may): the coordinator of
        the previous round signed another digest than the one derived here."""
        model = self.model(job, version)
        if model is None:
            return "the job's initial model is not held here"
        record = None if version == 0 else self._store.get_result(job.id, version - 1)
        if record is None:
            return None
        announced = announced_model(record.signed_announcement)
        if announced and announced != model.digest:
            return f"model {version} here differs from the one round {version - 1}'s coordinator signed"
        return None

    def digests(self, job: Job) -> list[bytes]:
        chain = self._chains.get(job.id)
        return [] if chain is None else list(chain.digests)

    def blob(self, job: Job, version: int) -> bytes | None:
        model = self.model(job, version)
        training = job.spec.training
        assert training is not None
        return None if model is None else to_safetensors(training.architecture, model.weights)

    def forget(self, job_id: str) -> None:
        """The job ended: its models and prepared updates go (its timings stay while the job is held)."""
        self._chains.pop(job_id, None)
        for key in [k for k in self._prepared if k[0] == job_id]:
            del self._prepared[key]

    # --- this node's contribution ---------------------------------------------------------------

    async def prepare(self, job: Job, round_number: int, data: LocalData) -> None:
        """Train from the round's model on this node's data (in a thread) and keep the vector for the
        round's invite; the reason is kept instead when this node sits the round out."""
        prepared = self._prepared.setdefault((job.id, round_number), _Prepared())
        if prepared.started:
            return
        prepared.started = True
        for old in [k for k in self._prepared if k[0] == job.id and k[1] < round_number - 1]:
            del self._prepared[old]
        try:
            await self.fetch_initial_model(job)
            prepared.refusal = self._refusal(job, round_number)
            if prepared.refusal is None:
                model = self.model(job, round_number)
                assert model is not None
                prepared.model = model.digest
                began = time.perf_counter()
                prepared.vector = await trio.to_thread.run_sync(rounds.contribution, job.spec, round_number, self.me,
                                                                model.weights, data)
                seconds = time.perf_counter() - began
                self.timings.setdefault(job.id, Timings()).train[round_number] = seconds
                log.info("training_prepared", job=job.id, round=round_number, seconds=round(seconds, 3))
                self._metrics.training_rounds_prepared.inc()
        except (InputError, TrainerMissing) as exc:
            prepared.refusal = str(exc)
        finally:
            if prepared.refusal is not None:
                log.warning("training_sits_out", job=job.id, round=round_number, reason=prepared.refusal)
            prepared.done.set()

    async def try_out(self, job: Job, data: LocalData) -> None:
        """Before the first round: evaluate the initial model on this node's held-out rows in a thread.
        It shows early that the trainer runs on this data, and loads the trainer's libraries while the
        job waits to start (scikit-learn takes about a second of CPU to import; twenty nodes importing
        it at round 0 on two cores delayed that round by 15 s)."""
        training = job.spec.training
        assert training is not None
        model = self.initial_model(job) if await self.fetch_initial_model(job) else None
        if model is None:
            return
        try:
            trainer = trainer_named(training.trainer_name)
            await trio.to_thread.run_sync(trainer.evaluate, training.architecture, model.weights, data)
        except (InputError, TrainerMissing) as exc:
            log.warning("training_unusable", job=job.id, reason=str(exc))

    def _refusal(self, job: Job, round_number: int) -> str | None:
        training = job.spec.training
        assert training is not None
        battery = training.requirements.battery_refusal(self.capabilities)
        return battery or self.agrees(job, round_number)

    async def contribution(self, job: Job, round_number: int, timeout: float) -> np.ndarray | None:
        """The vector prepared for the round, waiting up to `timeout` for the training to finish. The
        invite of a round that follows the last at once may come before this node's job runner has
        stored the last result and begun training: it waits for that too (the invite was checked:
        the round exists and has opened)."""
        prepared = self._prepared.setdefault((job.id, round_number), _Prepared())
        with trio.move_on_after(timeout):
            await prepared.done.wait()
        if not prepared.done.is_set():
            log.warning("training_not_ready", job=job.id, round=round_number, waited=timeout,
                        state="training" if prepared.started else "the job runner has not begun the round")
            return None
        model = self.model(job, round_number)
        if prepared.vector is not None and (model is None or model.digest != prepared.model):
            log.warning("training_sits_out", job=job.id, round=round_number,
                        reason="the previous round's result came after this node trained: its update is of another model")
            return None
        return prepared.vector

    def prepared(self, job: Job, round_number: int) -> bool:
        prepared = self._prepared.get((job.id, round_number))
        return prepared is not None and prepared.vector is not None


def announced_model(signed_announcement: bytes) -> bytes:
    """The model digest a stored result's coordinator signed (b"" for results of other kinds)."""
    body = open_announcement(signed_announcement).body
    return body.model_digest if isinstance(body, ResultAnnouncement) else b""


def check_trainer(job: Job) -> None:
    """Raise TrainerMissing when this node lacks the job's trainer (it cannot join)."""
    training = job.spec.training
    assert training is not None and KINDS[job.spec.kind].per_round
    trainer = trainer_named(training.trainer_name)
    if not trainer.supports(training.architecture):
        raise TrainerMissing("trainer", f"trainer {trainer.name!r} on this node cannot train a "
                                        f"{training.architecture.kind} model")

