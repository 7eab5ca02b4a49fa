"""The store's one write connection, and the way to it off the trio thread.

An fsynced commit (``synchronous=FULL``) takes about a millisecond on a good disk and far more on
a slow one; made on the trio thread, it stops every task for that long. So the node's writes run
on a worker thread (`StoreWriter.run`), one at a time and in the order they were asked for (a
``trio.CapacityLimiter(1)`` is fair: first come, first served), and the task that asked waits for
the commit: a record made before a frame leaves is still on disk before it leaves.

The writes have a connection of their own: one sqlite3 connection used by two threads at once
interleaves their transactions ("cannot start a transaction within a transaction"). Reads stay on
the trio thread's connection; in WAL mode they go on while the writer commits, and a read that
starts after `run` returned sees the commit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import trio

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StoreWriter:
    """Owns the write connection: transactions on it never overlap, whichever thread opens them."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        # Serializes transactions across threads: a synchronous write (before the node serves, or
        # in a test) waits for a worker thread's commit rather than interleave with it.
        self._lock = threading.Lock()
        # One worker thread at a time, in arrival order: the writes of one round keep their order.
        self._lane = trio.CapacityLimiter(1)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the write connection (``ROLLBACK`` on error).

        IMMEDIATE takes the write lock up front, so two writers fail fast (busy_timeout) instead
        of deadlocking when both try to upgrade a read lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    async def run(self, write: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call one of the store's write methods on a worker thread and wait until it committed.

        A cancelled caller still waits for the commit (the thread cannot be stopped mid-write, and
        whoever asked must not act as if the write had not happened); its exception, a
        `StoreError` included, is raised here."""
        return await trio.to_thread.run_sync(lambda: write(*args, **kwargs), limiter=self._lane)

    def close(self) -> None:
        with self._lock:
            self._db.close()
