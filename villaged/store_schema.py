"""The schema of ``village.db`` as an ordered list of migrations (`villaged.store.Store` applies them).

``PRAGMA user_version`` records how many have been applied. Each migration runs in one transaction
together with its version bump, so a crash in the middle of an upgrade leaves the previous version
intact. Never edit a released migration: append a new one. A migration step is SQL, or a function
of the connection when rows must be rewritten in Python (this SQLite has no ``unhex``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Final


def _move_meta_into_columns(db: sqlite3.Connection) -> None:
    """Version 6 -> 7: the strings that lived in ``meta`` move into typed columns, and ``meta`` goes.

    ``roster/<job>`` (comma-separated hex ids) -> ``jobs.roster`` (the ids concatenated, in order);
    ``job_end_reason/<job>`` -> ``jobs.end_reason``; ``revocations`` (hex) -> ``revocation_list``;
    ``privacy_releases/<job>`` (the release counter of villaged before ``spent_rounds``) ->
    ``jobs.releases_before_spent_rounds``, so that an old node's budget still counts them. Rows of
    jobs this node no longer stores are dropped with the table.
    """
    for key, value in db.execute("SELECT key, value FROM meta").fetchall():
        kind, _, job_id = key.partition("/")
        if kind == "roster":
            ids = b"".join(bytes.fromhex(m) for m in value.split(",") if m)
            db.execute("UPDATE jobs SET roster = ? WHERE id = ?", (ids, job_id))
        elif kind == "job_end_reason":
            db.execute("UPDATE jobs SET end_reason = ? WHERE id = ?", (value, job_id))
        elif kind == "privacy_releases":
            db.execute("UPDATE jobs SET releases_before_spent_rounds = ? WHERE id = ?", (int(value), job_id))
        elif key == "revocations":
            db.execute("INSERT INTO revocation_list (id, list) VALUES (1, ?)", (bytes.fromhex(value),))
    db.execute("DROP TABLE meta")


MigrationStep = str | Callable[[sqlite3.Connection], None]

# Ordered; index i holds the steps that take the schema from version i to i + 1.
MIGRATIONS: Final[Sequence[Sequence[MigrationStep]]] = (
    (
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE members (
            member_id BLOB PRIMARY KEY CHECK (length(member_id) = 32),
            certificate BLOB NOT NULL,
            expires_at INTEGER NOT NULL
        ) STRICT""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            creator BLOB NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending','running','completed','cancelled','failed')),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) STRICT""",
        """CREATE TABLE rounds (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            round INTEGER NOT NULL CHECK (round >= 0),
            attempt INTEGER NOT NULL CHECK (attempt >= 0),
            coordinator BLOB NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('running','completed','aborted')),
            participants TEXT NOT NULL,
            dropped TEXT NOT NULL,
            phase_timings TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            abort_reason TEXT,
            PRIMARY KEY (job_id, round, attempt)
        ) STRICT""",
        """CREATE TABLE results (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            round INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            coordinator BLOB NOT NULL,
            aggregate BLOB NOT NULL,
            participants TEXT NOT NULL,
            dropped TEXT NOT NULL,
            signature BLOB NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (job_id, round)
        ) STRICT""",
        """CREATE TABLE local_inputs (
            name TEXT PRIMARY KEY,
            payload TEXT NOT NULL,
            updated_at REAL NOT NULL
        ) STRICT""",
        "CREATE INDEX jobs_by_created ON jobs (created_at, id)",
    ),
    (
        # Who joined which job: the election's candidates, needed again after a restart.
        """CREATE TABLE job_members (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            member_id BLOB NOT NULL CHECK (length(member_id) = 32),
            joined_at REAL NOT NULL,
            PRIMARY KEY (job_id, member_id)
        ) STRICT""",
    ),
    (
        # Where members were last known to listen (from rosters and job announcements): a restarted
        # node dials its village at once instead of finding each peer through the DHT again.
        """CREATE TABLE peer_addresses (
            member_id BLOB PRIMARY KEY CHECK (length(member_id) = 32),
            addresses TEXT NOT NULL,
            updated_at REAL NOT NULL
        ) STRICT""",
    ),
    (
        # What each local input may be used for (protocol/policy.py), as JSON; an input without a
        # row (every input of an older village.db) has the default policy.
        """CREATE TABLE IF NOT EXISTS input_policies (
            name TEXT PRIMARY KEY,
            policy TEXT NOT NULL
        ) STRICT""",
    ),
    (
        # Each round's input goes into one attempt, durably: the attempt in which this node's masked
        # input left, committed before it left. A node restarted afterwards refuses every other attempt
        # (so also unmask-once), and each row is one release of its input (the privacy budget).
        """CREATE TABLE IF NOT EXISTS spent_rounds (
            job_id TEXT NOT NULL,
            round INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            spent_at REAL NOT NULL,
            PRIMARY KEY (job_id, round)
        ) STRICT""",
        # The survivor set each version of an input was signed over (protocol/client.py
        # `same_survivors_as`): an unchanged input is summed again only over the same set.
        """CREATE TABLE IF NOT EXISTS input_uses (
            name TEXT NOT NULL,
            version REAL NOT NULL,
            survivors_digest BLOB NOT NULL CHECK (length(survivors_digest) = 32),
            PRIMARY KEY (name, version)
        ) STRICT""",
    ),
    (
        # The consistency votes a stored result carries (protocol/evidence.py), served with its
        # aggregate so that every node that fetches it can check that the round really ran.
        """CREATE TABLE IF NOT EXISTS result_votes (
            job_id TEXT NOT NULL,
            round INTEGER NOT NULL,
            votes BLOB NOT NULL,
            PRIMARY KEY (job_id, round)
        ) STRICT""",
    ),
    (
        # The job's roster as the creator froze it (member ids concatenated, in the creator's order;
        # NULL until it is known) and why the job ended before its last round.
        "ALTER TABLE jobs ADD COLUMN roster BLOB CHECK (length(roster) % 32 = 0)",
        "ALTER TABLE jobs ADD COLUMN end_reason TEXT",
        "ALTER TABLE jobs ADD COLUMN releases_before_spent_rounds INTEGER NOT NULL DEFAULT 0",
        # The newest revocation list this node adopted, as the admin signed it (one row).
        """CREATE TABLE revocation_list (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            list BLOB NOT NULL
        ) STRICT""",
        _move_meta_into_columns,
        # The results column holds the coordinator's whole signed result announcement, not a signature.
        "ALTER TABLE results RENAME COLUMN signature TO signed_announcement",
    ),
    (
        # Content-addressed blobs (a training job's initial model, as safetensors), named by the
        # hex SHA-256 of their bytes, which every reader checks again.
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY CHECK (length(digest) = 64),
            data BLOB NOT NULL,
            stored_at REAL NOT NULL
        ) STRICT""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
