"""netsim's `training` workload: a federated training job over a data set scikit-learn ships, every
round's aggregate and every model checked by replaying the members' local training.

Each peer holds one partition (IID, or Dirichlet(alpha) label skew) of the training split of
`digits`, `wine` or `breast_cancer` as its local input {"features", "labels"}; the test split
stays with netsim. The job has R training rounds and one more that only evaluates the final
model (protocol/training/rounds.py). Checks:

  * every round's aggregate, exactly: with nearest rounding a member's words are a pure function
    of the round's model and its data, quantize_input(spec, contribution(spec, r, member, model_r,
    data), None), so the result's digest must be the digest of their sum over exactly the result's
    participants. model_r is replayed by netsim alone: the seeded initial model, then
    rounds.advance over every earlier round's result (a round without one changes nothing);
  * every model: each live node's training status must report, for every round it holds, the
    digest of netsim's model_r and, as the coordinator's signed next_model_digest, the digest of
    netsim's model_(r+1), with `agrees`; every node the same digests;
  * at the end: the final model downloaded from every live node hashes to netsim's digest; its
    accuracy on the common test split, against the centralized baseline (the same trainer on the
    union of the partitions for R * local_epochs epochs, protocol/training/datasets.py).

With differential privacy the daemons add noise netsim cannot know, so the aggregate and the
model chain cannot be replayed: netsim then checks that every node reports the same digests and
agrees with its coordinators, that every downloaded model hashes to the digest the nodes report,
and takes the accuracy of the downloaded models.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol.jobs import JobSpec
from protocol.kinds import quantize_input
from netsim import datasets
from protocol.training import rounds
from protocol.training.data import LocalData, parse_local_data
from protocol.training.model import Architecture, from_safetensors
from protocol.training.optimizers import ServerState
from protocol.training.request import job_from_request
from protocol.training.trainers import TrainConfig, trainer_named
from netsim.workloads import Workload

if TYPE_CHECKING:
    from netsim.run import Scenario

ARCHITECTURES = ("logistic", "mlp")
OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
#: How long a model download may take (a 100,000-parameter model is 800 kB).
DOWNLOAD_TIMEOUT = 30.0


@dataclass
class TrainingOptions:
    """What `netsim run --workload training` trains, on what, and how."""

    dataset: str = "digits"  # protocol/training/datasets.py NAMES
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration (partition dirichlet)
    architecture: str = "logistic"  # logistic | mlp
    hidden: tuple[int, ...] = (32,)  # mlp hidden widths
    local_epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    optimizer: str = "fedavg"  # fedavg | fedavgm | fedadam (their default settings)
    server_learning_rate: float | None = None  # None: the optimizer's default
    update_clip: float = 1.0  # the job's quantization clip: the largest coordinate an update may move
    max_examples: int = 1000
    test_fraction: float = 0.2
    epsilon: float | None = None  # set: differential privacy, the whole job's epsilon
    delta: float = 1e-5
    l2_clip: float = 1.0
    model_seed: int = 0  # the job's training.seed (initial weights, local shuffles)


def _digest_hex(spec: JobSpec, weights: np.ndarray) -> str:
    return rounds.digest(spec, weights).hex()


class TrainingWorkload(Workload):
    """Partitions of a bundled data set as local inputs; every aggregate and model replayed."""

    name = "training"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.options: TrainingOptions = getattr(config, "training", None) or TrainingOptions()
        o = self.options
        if o.dataset not in datasets.NAMES:
            raise ValueError(f"unknown data set {o.dataset!r} (known: {', '.join(datasets.NAMES)})")
        if o.partition not in datasets.SCHEMES:
            raise ValueError(f"partition must be one of {', '.join(datasets.SCHEMES)}")
        if o.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}")
        if o.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        self.X, self.y = datasets.load(o.dataset)
        self.architecture = Architecture(o.architecture, int(self.X.shape[1]), int(self.y.max()) + 1,
                                         tuple(o.hidden) if o.architecture == "mlp" else ())
        self.split: datasets.Split | None = None
        self.parts: list[np.ndarray] = []
        self.local: dict[str, LocalData] = {}
        self._reset_chain()

    def _reset_chain(self) -> None:
        #: round -> the participants of the result netsim accepted for it (the model chain follows them)
        self.held: dict[int, tuple[str, ...]] = {}
        self._chain: list[tuple[np.ndarray, ServerState]] = []  # versions 0..k replayed so far
        self._round_words: dict[tuple[int, str, str], np.ndarray] = {}  # (round, member, model digest) -> words
        self._checked: dict[tuple[int, tuple[str, ...], str], list[str]] = {}
        self.train_seconds: list[float] = []  # netsim's own replay: seconds per member's local training

    @property
    def private(self) -> bool:
        return self.options.epsilon is not None

    @property  # type: ignore[override]
    def replayable(self) -> bool:
        return not self.private

    @property
    def training_rounds(self) -> int:
        return int(self.config.rounds)

    # --- the spec ------------------------------------------------------------------------------

    def training_section(self) -> dict[str, Any]:
        o = self.options
        optimizer: dict[str, Any] = {"name": o.optimizer}
        if o.server_learning_rate is not None:
            optimizer["learning_rate"] = o.server_learning_rate
        return {"architecture": self.architecture.to_dict(), "local_epochs": o.local_epochs,
                "learning_rate": o.learning_rate, "batch_size": o.batch_size, "server_optimizer": optimizer,
                "max_examples": o.max_examples, "seed": o.model_seed}

    def spec_fields(self) -> dict[str, Any]:
        return {"kind": "training", "rounds": self.training_rounds + 1, "training": self.training_section(),
                "quantization": {"clip": float(self.options.update_clip), "rounding": "nearest"}}

    def complete(self, spec: dict[str, Any]) -> None:
        """Add the privacy section, which depends on the participant bounds: the per-round epsilon
        whose composition over the job's rounds fits the whole job's epsilon, as the training API's
        create_job computes it (protocol/training/request.py)."""
        o = self.options
        if o.epsilon is None:
            return
        body = {
            "job_name": spec["name"],
            "model_config": {**self.architecture.to_dict(), "seed": o.model_seed},
            "training_config": {"rounds": self.training_rounds, "min_participants": spec["min_participants"],
                                "max_participants": spec["max_participants"], "update_clip": float(o.update_clip),
                                "max_examples": o.max_examples},
            "privacy_config": {"differential_privacy": True, "epsilon": float(o.epsilon), "delta": float(o.delta),
                               "l2_clip": float(o.l2_clip)},
        }
        parsed, _ = job_from_request(body)
        assert parsed.privacy is not None
        spec["privacy"] = asdict(parsed.privacy)

    def bind(self, spec: dict[str, Any]) -> None:
        """Parse the spec as the daemon does; nearest rounding keeps every contribution exact."""
        self.spec = JobSpec.from_dict(spec)
        if self.spec.quantization.rounding != "nearest":
            raise ValueError("netsim's exact check needs quantization.rounding = 'nearest'")
        self.quantizer = self.spec.quantizer()
        self._reset_chain()

    # --- inputs --------------------------------------------------------------------------------

    def make_payload(self, rng: random.Random, np_rng: np.random.Generator, index: int) -> Any:
        assert self.split is not None
        rows = self.parts[index]
        return {"features": self.split.X_train[rows].tolist(), "labels": self.split.y_train[rows].tolist()}

    def make_inputs(self, members: list[str], seed: int) -> dict[str, Any]:
        """The test split and one partition of the rest per member, both fixed by `seed`."""
        o = self.options
        self.split = datasets.train_test(self.X, self.y, float(o.test_fraction), seed % (1 << 32))
        self.parts = datasets.partition(self.split.y_train, len(members), o.partition, float(o.alpha), seed)
        payloads = super().make_inputs(members, seed)
        # As the daemon reads them: from the JSON it stored (floats round-trip exactly).
        self.local = {m: parse_local_data(json.loads(json.dumps(p)), self.architecture) for m, p in payloads.items()}
        self._reset_chain()
        return payloads

    # --- the replayed model chain ----------------------------------------------------------------

    def model(self, version: int) -> tuple[np.ndarray, ServerState]:
        """The model round `version` starts from, replayed from the results netsim accepted."""
        assert self.spec is not None
        if not self._chain:
            self._chain.append((rounds.default_initial(self.spec), {}))
        while len(self._chain) <= version:
            r = len(self._chain) - 1
            weights, state = self._chain[r]
            if r in self.held:
                participants = self.held[r]
                words = self.aggregate(r, list(participants))
                weights, state = rounds.advance(self.spec, r, weights, state, words, len(participants))
            self._chain.append((weights, state))
        return self._chain[version]

    def model_digest(self, version: int) -> str:
        assert self.spec is not None
        return _digest_hex(self.spec, self.model(version)[0])

    def member_words(self, r: int, member: str) -> np.ndarray:
        """`member`'s quantized contribution to round r, replayed (nearest rounding: no seed)."""
        assert self.spec is not None
        weights, _ = self.model(r)
        key = (r, member, _digest_hex(self.spec, weights))
        if key not in self._round_words:
            started = time.perf_counter()
            vector = rounds.contribution(self.spec, r, bytes.fromhex(member), weights, self.local[member])
            self.train_seconds.append(time.perf_counter() - started)
            self._round_words[key] = quantize_input(self.spec, vector, None)
        return self._round_words[key]

    def aggregate(self, r: int, participants: list[str]) -> np.ndarray:
        """Round r's aggregate words over `participants`: their sum mod 2^bits."""
        assert self.spec is not None
        total = np.zeros(self.dimension, dtype=np.uint64)
        for m in participants:
            total += self.member_words(r, m)
        return (total % (1 << self.spec.quantization.bits)).astype(np.uint32)

    def accept(self, r: int, participants: list[str]) -> None:
        """Round r's result is the one the chain follows; later models are replayed again."""
        key = tuple(participants)
        if self.held.get(r) == key:
            return
        self.held[r] = key
        del self._chain[r + 1:]

    # --- the checks ------------------------------------------------------------------------------

    def check_values(self, result: dict[str, Any], total: np.ndarray) -> list[str]:
        return []

    def check_result(self, result: dict[str, Any]) -> list[str]:
        participants = list(result["participants"])
        unknown = [m for m in participants if m not in self.local]
        if unknown:
            return [f"participants not in this village: {unknown}"]
        if len(set(participants)) != len(participants):
            return ["a participant is listed twice"]
        r = int(result["round"])
        if self.private:  # noise netsim cannot know: the aggregate is not replayable
            self.held.setdefault(r, tuple(participants))
            return []
        key = (r, tuple(participants), self.model_digest(r))
        if key not in self._checked:
            words = self.aggregate(r, participants)
            digest = hashlib.sha256(words.astype("<u4").tobytes()).hexdigest()
            problems = [] if result["digest"] == digest else [
                f"round {r}: digest {result['digest'][:16]} != replayed {digest[:16]} "
                f"(model {key[2][:16]}, {len(participants)} participants)"]
            self._checked[key] = problems
        problems = self._checked[key]
        if not problems:
            self.accept(r, participants)
        return list(problems)

    def check_statuses(self, r: int, statuses: dict[int, dict[str, Any] | None]) -> tuple[list[str], dict[str, Any]]:
        """Round r as every live node's training status reports it (peer index -> status, None: no
        answer): every holder reports the same model digests, netsim's if replayable, and agrees
        with the coordinator's signed digest. Returns (problems, the round's curve point)."""
        problems: list[str] = []
        points = {i: _point(s, r) for i, s in statuses.items() if s is not None}
        points = {i: p for i, p in points.items() if p is not None}
        if not points:
            return problems, {}
        for field in ("model_digest", "next_model_digest"):
            seen = {p.get(field) for p in points.values()}
            if len(seen) > 1:
                problems.append(f"round {r}: nodes report {len(seen)} different {field}s: "
                                + ", ".join(f"peer {i} {str(p.get(field))[:16]}" for i, p in sorted(points.items())))
        disagree = sorted(i for i, p in points.items() if not p.get("agrees", False))
        if disagree:
            problems.append(f"round {r}: peers {disagree} derived another model than the coordinator signed")
        point = dict(next(iter(points.values())))
        if not self.private and r in self.held:
            want = {"model_digest": self.model_digest(r), "next_model_digest": self.model_digest(min(r + 1, self.training_rounds))}
            for field, digest in want.items():
                wrong = sorted(i for i, p in points.items() if p.get(field) != digest)
                if wrong:
                    problems.append(f"round {r}: peers {wrong} report {field} "
                                    f"{str(points[wrong[0]].get(field))[:16]}, netsim replayed {digest[:16]}")
        return problems, point

    # --- accuracy --------------------------------------------------------------------------------

    def test_accuracy(self, weights: np.ndarray) -> float:
        assert self.split is not None and self.spec is not None and self.spec.training is not None
        trainer = trainer_named(self.spec.training.trainer_name)
        test = LocalData(self.split.X_test, self.split.y_test)
        return float(trainer.evaluate(self.architecture, weights, test).accuracy)

    def centralized_accuracy(self) -> float:
        """The same trainer on the union of the partitions, for as many passes over the data as
        every member made in the job (R rounds x local_epochs), from the same initial weights."""
        assert self.split is not None and self.spec is not None and self.spec.training is not None
        o = self.options
        union = np.sort(np.concatenate(self.parts))
        config = TrainConfig(o.local_epochs, o.learning_rate, o.batch_size, o.model_seed)
        return float(datasets.centralized_accuracy(
            self.architecture, self.spec.training.trainer_name, self.split.X_train[union], self.split.y_train[union],
            self.split.X_test, self.split.y_test, config, max(1, self.training_rounds * o.local_epochs)))

    def weights_of(self, blob: bytes) -> np.ndarray:
        return from_safetensors(self.architecture, blob, "downloaded model")

    def observe_round(self, scenario: Any, r: int, holders: list[int]) -> dict[str, Any] | None:
        return round_check(scenario, r, holders)

    def observe_end(self, scenario: Any) -> dict[str, Any] | None:
        return final_check(scenario)


def _point(status: dict[str, Any], r: int) -> dict[str, Any] | None:
    for point in status.get("curve") or []:
        if point.get("round") == r:
            return point
    return None


def download(api: Any, path: str) -> tuple[bytes, dict[str, str]]:
    """GET a binary resource (a model's safetensors) from a peer's control API: (body, headers).
    Raises OSError or http.client.HTTPException on failure, ValueError on a non-2xx status."""
    conn = http.client.HTTPConnection(api.host, api.port, timeout=DOWNLOAD_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {api.token}", "Accept": "application/octet-stream"})
        response = conn.getresponse()
        body = response.read()
        if not 200 <= response.status < 300:
            raise ValueError(f"GET {path}: {response.status} {body[:200]!r}")
        return body, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


# --- the run's training checks (called by netsim/run.py) ----------------------------------------------


def round_check(scenario: Scenario, r: int, holders: list[int]) -> dict[str, Any]:
    """After round r: every holder's training status, judged (see TrainingWorkload.check_statuses),
    and netsim's own test accuracy of the model the round started from."""
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload) and scenario.cluster is not None
    peers = [scenario.cluster.peers[i] for i in holders]
    statuses = dict(zip(holders, scenario.observe.training_statuses(peers, scenario.job["id"])))
    problems, point = workload.check_statuses(r, statuses)
    out: dict[str, Any] = {"problems": problems, "statuses": sum(1 for s in statuses.values() if s is not None)}
    for key in ("accuracy", "loss", "participants", "evaluated", "examples", "update_norm", "model_digest",
                "next_model_digest", "final_evaluation"):
        if key in point:
            out[key] = point[key]
    if not workload.private:
        out["test_accuracy"] = round(workload.test_accuracy(workload.model(r)[0]), 4)
    elif peers and point.get("model_digest"):
        # Not replayable under DP: the model the round started from, as a holder serves it.
        try:
            blob, _ = download(peers[0].api, f"/v1/training/model/{scenario.job['id']}/{r}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problems.append(f"round {r}: model download from peer {peers[0].index} failed: {exc}")
        else:
            if hashlib.sha256(blob).hexdigest() != point["model_digest"]:
                problems.append(f"round {r}: peer {peers[0].index} serves model {hashlib.sha256(blob).hexdigest()[:16]} "
                                f"for version {r}, its status reports {point['model_digest'][:16]}")
            out["test_accuracy"] = round(workload.test_accuracy(workload.weights_of(blob)), 4)
    return out


def final_check(scenario: Scenario) -> dict[str, Any]:
    """At the end: every live node's status curve against netsim's chain, the final model as every
    live node serves it, its accuracy on the test split and the centralized baseline."""
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload) and scenario.cluster is not None
    job_id = scenario.job["id"]
    live = scenario.live_peers
    statuses = dict(zip([p.index for p in live], scenario.observe.training_statuses(live, job_id)))
    problems: list[str] = []
    held_rounds = sorted({pt["round"] for s in statuses.values() if s for pt in s.get("curve") or []})
    for r in held_rounds:
        problems += workload.check_statuses(r, statuses)[0]
    final_version = workload.training_rounds
    # The newest version a node knows follows the results it holds (protocol: a lost round changes
    # nothing, so when the last rounds were lost the final model is served under an earlier version).
    newest = min(max(workload.held) + 1, final_version) if workload.held else 0
    versions = {i: s.get("model_version") for i, s in statuses.items() if s}
    behind = sorted(i for i, v in versions.items() if v != newest)
    if behind:
        problems.append(f"peers {behind} hold model versions {sorted({versions[i] for i in behind})}, not the final "
                        f"{newest}")
    unanswered = sorted(i for i, s in statuses.items() if s is None)
    if unanswered:
        problems.append(f"peers {unanswered} gave no training status")
    replayed = None if workload.private else workload.model_digest(final_version)
    served: dict[int, str] = {}
    final_weights: np.ndarray | None = None
    for peer in live:
        if versions.get(peer.index) != newest:
            continue
        try:
            blob, headers = download(peer.api, f"/v1/training/model/{job_id}/{newest}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problems.append(f"peer {peer.index}: final model download failed: {exc}")
            continue
        digest = hashlib.sha256(blob).hexdigest()
        served[peer.index] = digest
        if headers.get("x-model-digest") not in (None, digest):
            problems.append(f"peer {peer.index}: model {digest[:16]} served under digest {headers['x-model-digest'][:16]}")
        reported = (statuses.get(peer.index) or {}).get("model_digest")
        if reported != digest:
            problems.append(f"peer {peer.index}: status reports model {str(reported)[:16]}, serves {digest[:16]}")
        if replayed is not None and digest != replayed:
            problems.append(f"peer {peer.index}: final model {digest[:16]} != netsim's replayed {replayed[:16]}")
        if final_weights is None:
            final_weights = workload.weights_of(blob)
    if len(set(served.values())) > 1:
        problems.append(f"nodes serve {len(set(served.values()))} different final models")
    if not workload.private:
        final_weights = workload.model(final_version)[0]
    federated = None if final_weights is None else round(workload.test_accuracy(final_weights), 4)
    started = time.perf_counter()
    centralized = round(workload.centralized_accuracy(), 4)
    baseline_seconds = time.perf_counter() - started
    completed = sorted(workload.held)
    trained = [r for r in completed if r < final_version]
    timings = daemon_timings([s for s in statuses.values() if s])
    o = workload.options
    return {
        "ok": not problems, "problems": problems,
        "dataset": o.dataset, "partition": o.partition if o.partition == "iid" else f"dirichlet({o.alpha:g})",
        "architecture": o.architecture, "parameters": workload.architecture.parameters,
        "optimizer": o.optimizer, "privacy": None if o.epsilon is None else {"epsilon": o.epsilon, "delta": o.delta},
        "training_rounds": final_version, "rounds_with_result": len(trained),
        "test_rows": int(len(workload.split.y_test)) if workload.split is not None else None,
        "federated_accuracy": federated, "centralized_accuracy": centralized,
        "gap_points": None if federated is None else round(100 * (centralized - federated), 2),
        "final_model_digest": replayed or next(iter(served.values()), None), "nodes_serving_final_model": len(served),
        "replay_train_seconds_per_member": round(float(np.median(workload.train_seconds)), 4) if workload.train_seconds else None,
        "centralized_train_seconds": round(baseline_seconds, 3),
        "daemon_timings": timings,
    }


def daemon_timings(statuses: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the nodes' time went, from their training status `timings` (None: the daemons do not
    say): local training and evaluation per node and round, deriving each model, fetching the
    initial model; medians and maxima over every node and round."""
    train: list[float] = []
    derive: list[float] = []
    fetch: list[float] = []
    for status in statuses:
        t = status.get("timings")
        if not isinstance(t, dict):
            continue
        train += [float(x) for x in (t.get("train_seconds") or {}).values()]
        derive += [float(x) for x in (t.get("derive_seconds") or {}).values()]
        if t.get("initial_model_fetch_seconds") is not None:
            fetch.append(float(t["initial_model_fetch_seconds"]))
    if not (train or derive or fetch):
        return None

    def stats(xs: list[float]) -> dict[str, float] | None:
        return {"median": round(float(np.median(xs)), 4), "max": round(max(xs), 4), "count": len(xs)} if xs else None

    return {"train_s": stats(train), "derive_model_s": stats(derive), "initial_model_fetch_s": stats(fetch)}


def options_from(raw: dict[str, Any]) -> TrainingOptions:
    """TrainingOptions from a dict of its fields (a report's config, a test's table)."""
    known = {k: v for k, v in raw.items() if k in TrainingOptions.__dataclass_fields__}
    if "hidden" in known:
        known["hidden"] = tuple(known["hidden"])
    return replace(TrainingOptions(), **known)
