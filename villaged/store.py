"""villaged's durable state: one SQLite file, ``data_dir/village.db``.

What lives here: membership certificates and the revocation list, jobs (with their roster and why
they ended), rounds with their phase timings, results, and the local inputs a node contributes. The round driver follows the
"save state, then send" rule (notes/style.md §2): it commits here before any message that
depends on the commit leaves the node.

Durability choices:

* ``journal_mode=WAL``: readers (the control API) never block the writer (the round driver),
  and a crash at any instant leaves either the old or the new state, never a mix.
* Two connections: reads on the trio thread's (``query_only``), writes on one of their own
  (villaged/store_writer.py). A running node awaits its writes through `Store.write`, which
  commits on a worker thread, so an fsync never stops the event loop; the write methods called
  directly (at startup, in tests) commit on the calling thread, one transaction at a time.
* ``synchronous=FULL``: every commit is fsynced before `commit` returns. In WAL mode NORMAL
  already survives a process crash (SIGKILL) because the WAL pages reached the OS, but it can
  lose the last commits on power loss or a kernel crash. A node writes a handful of rows per
  round (seconds to minutes apart), off the trio thread, so an fsync per commit costs the loop nothing and buys
  "a result the API reported is on disk" under every failure, not just process death.
* ``foreign_keys=ON``: rounds and results must belong to a known job.

Schema changes are an ordered list of migrations (villaged/store_schema.py); the records handed
out are in villaged/store_records.py.

Reads are for the thread that opened the store (the trio thread); writes are safe from any.

Next: `villaged/api.py` shows this state to villagectl.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar

import msgpack

from protocol.policy import InputPolicy
from villaged.errors import VillagedError
from villaged.store_records import (JOB_SELECT, JOB_STATES, RESULT_SELECT, ROUND_SELECT, ROUND_STATES, JobRecord, JobState,
                                    LocalInput, MemberRecord, ResultRecord, RoundRecord, ids_to_json, job_from_row,
                                    result_from_row, round_from_row, round_to_row, same_result)
from villaged.store_schema import MIGRATIONS, SCHEMA_VERSION
from villaged.store_writer import StoreWriter

__all__ = [
    "DB_FILENAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "JobRecord",
    "JobState",
    "LocalInput",
    "MemberRecord",
    "ResultRecord",
    "RoundRecord",
    "Store",
    "StoreError",
]

DB_FILENAME: Final = "village.db"
# How long a connection waits for another connection's write lock before giving up (ms).
# Writes are a few rows, so anything beyond a few seconds means something is stuck.
BUSY_TIMEOUT_MS: Final = 5_000

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StoreError(VillagedError):
    """The database refused an operation: unknown job, conflicting result, or an unusable file.

    The message names the database file or the record; a schema newer than this villaged means
    the data dir was used by a newer version: upgrade villaged rather than deleting the file.
    """


class Store:
    """Typed access to ``village.db``. Open with `Store.open`, close with `close` (or ``with``)."""

    def __init__(self, reader: sqlite3.Connection, writer: StoreWriter, path: Path) -> None:
        self._db = reader  # the opening thread's: reads only
        self._writer = writer
        self.path = path

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open (creating if needed) the database at ``path`` and migrate it to `SCHEMA_VERSION`.

        ``path`` is the database file itself; callers pass ``data_dir / DB_FILENAME``.

        Raises:
            StoreError: the file is not a SQLite database, or its schema is newer than ours.
        """
        path = Path(path)
        try:
            # Local inputs are private: create the file owner-only. SQLite gives the -wal and -shm
            # files the same permissions as the database file.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
            # the block inside `StoreWriter.transaction` (the sqlite3 module's implicit BEGINs are off).
            # The write connection is used from worker threads (one at a time), the reader from ours.
            writes = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open database: {exc}") from exc
        opened = [writes]
        try:
            writes.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = writes.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{path}: could not switch the database to WAL mode (got {mode!r})")
            writes.execute("PRAGMA synchronous = FULL")
            writes.execute("PRAGMA foreign_keys = ON")
            reads = sqlite3.connect(path, isolation_level=None)
            opened.append(reads)
            reads.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            reads.execute("PRAGMA query_only = ON")
            store = cls(reads, StoreWriter(writes), path)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            for connection in opened:
                connection.close()
            raise StoreError(f"{path}: not a usable village database: {exc}") from exc
        except BaseException:
            for connection in opened:
                connection.close()
            raise
        return store

    def close(self) -> None:
        self._db.close()
        self._writer.close()

    async def write(self, write: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call one of this store's write methods off the trio thread, after the writes asked for
        before it, and return once it committed: ``await store.write(store.put_result, record)``."""
        return await self._writer.run(write, *args, **kwargs)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's own consistency check; ``"ok"`` when the file is sound."""
        return "; ".join(str(row[0]) for row in self._db.execute("PRAGMA integrity_check"))

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this villaged understands "
                f"({SCHEMA_VERSION}); upgrade villaged"
            )
        for version in range(current, SCHEMA_VERSION):
            with self._writer.transaction() as db:
                for step in MIGRATIONS[version]:
                    if isinstance(step, str):
                        db.execute(step)
                    else:
                        step(db)
                # user_version is part of the database header, so it commits atomically with the DDL.
                db.execute(f"PRAGMA user_version = {version + 1}")

    # -- revocations -------------------------------------------------------------------------

    def put_revocation_list(self, listed: bytes) -> None:
        """Keep the revocation list this node adopted (as the admin signed it), replacing the held one."""
        with self._writer.transaction() as db:
            db.execute("INSERT INTO revocation_list (id, list) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET list = excluded.list",
                       (listed,))

    def revocation_list(self) -> bytes | None:
        row = self._db.execute("SELECT list FROM revocation_list WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    # -- members -----------------------------------------------------------------------------

    def put_member(self, member_id: bytes, certificate: bytes, expires_at: int) -> None:
        """Store (or replace) the certificate held for a member. Verify it before calling."""
        self.put_members([(member_id, certificate, expires_at)])

    def put_members(self, members: list[tuple[bytes, bytes, int]]) -> None:
        """`put_member` for many (member id, certificate, expires_at) in one transaction (one fsync)."""
        _check_member_ids(m for m, _, _ in members)
        with self._writer.transaction() as db:
            db.executemany(
                "INSERT INTO members (member_id, certificate, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(member_id) DO UPDATE SET certificate = excluded.certificate, "
                "expires_at = excluded.expires_at",
                members,
            )

    def members(self) -> list[MemberRecord]:
        """Every stored certificate, expired ones included (the caller judges validity)."""
        rows = self._db.execute("SELECT member_id, certificate, expires_at FROM members ORDER BY member_id")
        return [MemberRecord(bytes(m), bytes(c), int(e)) for m, c, e in rows]

    def put_addresses(self, entries: Sequence[tuple[bytes, Sequence[str]]], now: float) -> None:
        """Remember where members listen (latest word wins); entries without addresses are skipped."""
        rows = [(m, json.dumps(list(addrs)), now) for m, addrs in entries if addrs]
        _check_member_ids(m for m, _, _ in rows)
        with self._writer.transaction() as db:
            db.executemany(
                "INSERT INTO peer_addresses (member_id, addresses, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(member_id) DO UPDATE SET addresses = excluded.addresses, updated_at = excluded.updated_at",
                rows,
            )

    def peer_addresses(self) -> dict[bytes, list[str]]:
        """Every member's last known addresses."""
        rows = self._db.execute("SELECT member_id, addresses FROM peer_addresses")
        return {bytes(m): [str(a) for a in json.loads(addrs)] for m, addrs in rows}

    # -- jobs --------------------------------------------------------------------------------

    def put_job(self, job: JobRecord) -> bool:
        """Store a new job; returns False (and changes nothing) if that id is already stored."""
        _check_state("job", job.state, JOB_STATES)
        spec = json.dumps(job.spec, sort_keys=True, allow_nan=False)
        with self._writer.transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (id, spec, creator, state, created_at, updated_at, roster, end_reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                (job.id, spec, job.creator, job.state, job.created_at, job.updated_at,
                 None if job.roster is None else b"".join(job.roster), job.end_reason),
            )
            return cursor.rowcount == 1

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(JOB_SELECT + " WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def list_jobs(self, state: JobState | None = None) -> list[JobRecord]:
        """Jobs oldest first, optionally only those in ``state``."""
        query = JOB_SELECT
        params: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            params = (state,)
        return [job_from_row(row) for row in self._db.execute(query + " ORDER BY created_at, id", params)]

    def set_job_state(self, job_id: str, state: JobState, updated_at: float) -> None:
        """Raises StoreError if the job is unknown."""
        _check_state("job", state, JOB_STATES)
        with self._writer.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?", (state, updated_at, job_id)
            )
            if cursor.rowcount == 0:
                raise StoreError(f"no job {job_id!r} in {self.path}")

    def set_roster(self, job_id: str, members: Sequence[bytes]) -> None:
        """Keep the job's frozen roster. Raises StoreError if the job is unknown."""
        _check_member_ids(members)
        with self._writer.transaction() as db:
            if db.execute("UPDATE jobs SET roster = ? WHERE id = ?", (b"".join(members), job_id)).rowcount == 0:
                raise StoreError(f"no job {job_id!r} in {self.path}")

    def end_job(self, job_id: str, state: JobState, reason: str, updated_at: float) -> None:
        """Set a job's final state and why it ended before its last round, in one commit."""
        _check_state("job", state, JOB_STATES)
        with self._writer.transaction() as db:
            cursor = db.execute("UPDATE jobs SET state = ?, end_reason = ?, updated_at = ? WHERE id = ?",
                                (state, reason, updated_at, job_id))
            if cursor.rowcount == 0:
                raise StoreError(f"no job {job_id!r} in {self.path}")

    # -- rounds ------------------------------------------------------------------------------

    def record_round(self, record: RoundRecord) -> None:
        """Insert or update one (job, round, attempt): call at start and again when it ends."""
        _check_state("round", record.state, ROUND_STATES)
        values = round_to_row(record)
        with self._writer.transaction() as db:
            try:
                db.execute(
                    "INSERT INTO rounds (job_id, round, attempt, coordinator, state, participants, dropped, "
                    "phase_timings, started_at, ended_at, abort_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(job_id, round, attempt) DO UPDATE SET coordinator = excluded.coordinator, "
                    "state = excluded.state, participants = excluded.participants, dropped = excluded.dropped, "
                    "phase_timings = excluded.phase_timings, started_at = excluded.started_at, "
                    "ended_at = excluded.ended_at, abort_reason = excluded.abort_reason",
                    values,
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"round {record.round} of job {record.job_id!r}: {_integrity_reason(exc)}") from exc

    def rounds(self, job_id: str) -> list[RoundRecord]:
        rows = self._db.execute(ROUND_SELECT + " WHERE job_id = ? ORDER BY round, attempt", (job_id,))
        return [round_from_row(row) for row in rows]

    # -- results -----------------------------------------------------------------------------

    def put_result(self, result: ResultRecord) -> Literal["stored", "duplicate", "superseded"]:
        """Commit a round result; durable (fsynced) when this returns.

        A round's result is that of its lowest completed attempt. Two attempts of one round can
        both complete when the later one starts at nodes the earlier one's result had not reached
        yet (their survivors are disjoint: a node that unmasked in one attempt joins no other).
        Keeping the lowest attempt everywhere makes every node end up with the same result.

        Returns ``"stored"`` (new, or it replaced a later attempt's result), ``"duplicate"`` (this
        result is already stored) or ``"superseded"`` (an earlier attempt's result is stored).

        Raises:
            StoreError: the job is unknown, or a *different* result of the same attempt is already
                stored -- two conflicting signed results of one attempt mean a coordinator equivocated.
        """
        values = (
            result.job_id,
            result.round,
            result.attempt,
            result.coordinator,
            result.aggregate,
            ids_to_json(result.participants),
            ids_to_json(result.dropped),
            result.signed_announcement,
            result.received_at,
        )
        with self._writer.transaction() as db:
            try:
                cursor = db.execute(
                    "INSERT INTO results (job_id, round, attempt, coordinator, aggregate, participants, dropped, "
                    "signed_announcement, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id, round) DO UPDATE SET "
                    "attempt = excluded.attempt, coordinator = excluded.coordinator, aggregate = excluded.aggregate, "
                    "participants = excluded.participants, dropped = excluded.dropped, "
                    "signed_announcement = excluded.signed_announcement, "
                    "received_at = excluded.received_at WHERE excluded.attempt < results.attempt",
                    values,
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"result for round {result.round} of job {result.job_id!r}: {_integrity_reason(exc)}") from exc
            if cursor.rowcount == 1:
                db.execute(
                    "INSERT INTO result_votes (job_id, round, votes) VALUES (?, ?, ?) "
                    "ON CONFLICT(job_id, round) DO UPDATE SET votes = excluded.votes",
                    (result.job_id, result.round, msgpack.packb(list(result.votes))),
                )
                return "stored"
            row = db.execute(RESULT_SELECT + " WHERE job_id = ? AND round = ?", (result.job_id, result.round)).fetchone()
            existing = result_from_row(row)
            if same_result(existing, result):
                return "duplicate"
            if existing.attempt < result.attempt:
                return "superseded"
            raise StoreError(
                f"a different result for round {result.round} of job {result.job_id!r} is already stored "
                f"(attempt {existing.attempt}, coordinator {existing.coordinator.hex()[:16]})"
            )

    def result_attempt(self, job_id: str, round_: int) -> int | None:
        """The attempt whose result is stored for that round, without loading the aggregate."""
        row = self._db.execute("SELECT attempt FROM results WHERE job_id = ? AND round = ?", (job_id, round_)).fetchone()
        return None if row is None else int(row[0])

    def result_rounds(self, job_id: str) -> list[int]:
        """Rounds of a job that have a stored result, without loading the aggregates."""
        rows = self._db.execute("SELECT round FROM results WHERE job_id = ? ORDER BY round", (job_id,))
        return [r for (r,) in rows]

    def get_results(self, job_id: str) -> list[ResultRecord]:
        rows = self._db.execute(RESULT_SELECT + " WHERE job_id = ? ORDER BY round", (job_id,))
        return [result_from_row(row) for row in rows]

    def get_result(self, job_id: str, round_: int) -> ResultRecord | None:
        row = self._db.execute(RESULT_SELECT + " WHERE job_id = ? AND round = ?", (job_id, round_)).fetchone()
        return None if row is None else result_from_row(row)

    # -- local inputs ------------------------------------------------------------------------

    def put_local_input(self, name: str, payload: Any, updated_at: float) -> None:
        """Store (or replace) the JSON-serializable input this node contributes under ``name``
        (its policy, `set_input_policy`, is kept)."""
        try:
            text = json.dumps(payload, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"local input {name!r} is not JSON-serializable: {exc}") from exc
        with self._writer.transaction() as db:
            db.execute(
                "INSERT INTO local_inputs (name, payload, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) "
                "DO UPDATE SET payload = excluded.payload, updated_at = excluded.updated_at",
                (name, text, updated_at),
            )

    def set_input_policy(self, name: str, policy: InputPolicy) -> None:
        """Set what the local input ``name`` may be used for. It may precede the input itself, so
        that an input never exists under a policy its owner did not mean."""
        with self._writer.transaction() as db:
            db.execute(
                "INSERT INTO input_policies (name, policy) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET policy = excluded.policy",
                (name, json.dumps(policy.to_dict(), sort_keys=True)),
            )

    def get_input_policy(self, name: str) -> InputPolicy:
        """The named input's policy; the default one when none was set."""
        row = self._db.execute("SELECT policy FROM input_policies WHERE name = ?", (name,)).fetchone()
        return InputPolicy() if row is None else InputPolicy.from_dict(json.loads(row[0]))

    # -- one attempt per round, one survivor set per unchanged input ---------------------------

    def record_spent(self, job_id: str, round_: int, attempt: int, now: float) -> None:
        """Commit that this node's masked input for the round leaves in `attempt`, before it leaves.
        Raises StoreError if another attempt of the round has it already: the caller must not send."""
        with self._writer.transaction() as db:
            held = db.execute("SELECT attempt FROM spent_rounds WHERE job_id = ? AND round = ?", (job_id, round_)).fetchone()
            if held is not None and held[0] != attempt:
                raise StoreError(f"round {round_} of job {job_id} already has this node's input in attempt {held[0]}")
            db.execute("INSERT OR IGNORE INTO spent_rounds (job_id, round, attempt, spent_at) VALUES (?, ?, ?, ?)",
                       (job_id, round_, attempt, now))

    def spent_attempt(self, job_id: str, round_: int) -> int | None:
        """The attempt of the round that has this node's masked input, if any."""
        row = self._db.execute("SELECT attempt FROM spent_rounds WHERE job_id = ? AND round = ?", (job_id, round_)).fetchone()
        return None if row is None else int(row[0])

    def spent_count(self, job_id: str) -> int:
        """Rounds of the job whose sums may hold this node's input: the releases of its input (with
        those an older villaged counted before `spent_rounds` existed)."""
        row = self._db.execute(
            "SELECT (SELECT count(*) FROM spent_rounds WHERE job_id = ?) + "
            "coalesce((SELECT releases_before_spent_rounds FROM jobs WHERE id = ?), 0)", (job_id, job_id)).fetchone()
        return int(row[0])

    def record_input_use(self, name: str, version: float, survivors_digest: bytes) -> None:
        """Commit the survivor set a version of an input is signed over, before the signature leaves.
        Raises StoreError if that version was signed over another set."""
        with self._writer.transaction() as db:
            held = self._input_survivors(db, name, version)
            if held is not None and held != survivors_digest:
                raise StoreError(f"input {name!r} (unchanged) was already summed with another survivor set")
            db.execute("INSERT OR IGNORE INTO input_uses (name, version, survivors_digest) VALUES (?, ?, ?)",
                       (name, version, survivors_digest))

    def input_survivors(self, name: str, version: float) -> bytes | None:
        """The survivor-set digest this version of the input was first signed over, if it was."""
        return self._input_survivors(self._db, name, version)

    @staticmethod
    def _input_survivors(db: sqlite3.Connection, name: str, version: float) -> bytes | None:
        row = db.execute("SELECT survivors_digest FROM input_uses WHERE name = ? AND version = ?", (name, version)).fetchone()
        return None if row is None else bytes(row[0])

    def local_input_version(self, name: str) -> float | None:
        """When the named input was last put (None if there is none), without loading it."""
        row = self._db.execute("SELECT updated_at FROM local_inputs WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    def get_local_input(self, name: str) -> LocalInput | None:
        row = self._db.execute("SELECT name, payload, updated_at FROM local_inputs WHERE name = ?", (name,)).fetchone()
        return None if row is None else LocalInput(row[0], json.loads(row[1]), row[2])

    # -- blobs -------------------------------------------------------------------------------

    def put_blob(self, data: bytes, now: float) -> str:
        """Keep bytes under their hex SHA-256 (idempotent); returns the digest."""
        digest = hashlib.sha256(data).hexdigest()
        with self._writer.transaction() as db:
            db.execute("INSERT INTO blobs (digest, data, stored_at) VALUES (?, ?, ?) ON CONFLICT(digest) DO NOTHING",
                       (digest, data, now))
        return digest

    def get_blob(self, digest: str) -> bytes | None:
        """The bytes named `digest`, if held and still matching it (a damaged row reads as absent)."""
        row = self._db.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None or hashlib.sha256(row[0]).hexdigest() != digest:
            return None
        return bytes(row[0])

    # -- job members -------------------------------------------------------------------------

    def add_job_member(self, job_id: str, member_id: bytes, joined_at: float) -> None:
        """Record that a member joined a job (idempotent)."""
        with self._writer.transaction() as db:
            try:
                db.execute(
                    "INSERT INTO job_members (job_id, member_id, joined_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(job_id, member_id) DO NOTHING",
                    (job_id, member_id, joined_at),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"member of job {job_id!r}: {_integrity_reason(exc)}") from exc

    def job_members(self, job_id: str) -> list[bytes]:
        rows = self._db.execute("SELECT member_id FROM job_members WHERE job_id = ? ORDER BY member_id", (job_id,))
        return [bytes(m) for (m,) in rows]


def _check_member_ids(member_ids: Iterable[bytes]) -> None:
    for member_id in member_ids:
        if len(member_id) != 32:
            raise StoreError(f"member_id must be 32 bytes, got {len(member_id)}")


def _check_state(kind: str, state: str, allowed: frozenset[str]) -> None:
    if state not in allowed:
        raise StoreError(f"{kind} state {state!r} is not one of {sorted(allowed)}")


def _integrity_reason(exc: sqlite3.IntegrityError) -> str:
    if "FOREIGN KEY" in str(exc):
        return "unknown job (store the job first)"
    return str(exc)
