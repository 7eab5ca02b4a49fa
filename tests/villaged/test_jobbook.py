"""JobBook's view of this node's own input: encoded once per version of the stored data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.jobs import JobSpec
from protocol.kinds import InputError
from villaged.jobs import JobBook
from villaged.store import Store

SPEC = JobSpec.from_dict({
    "kind": "vector", "data": "stats", "dimension": 4, "rounds": 1, "min_participants": 3, "neighbours": 2,
    "quantization": {"clip": 100.0, "scale": 10.0, "rounding": "nearest"},
})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "village.db")


@pytest.fixture
def book(store: Store) -> JobBook:
    book = JobBook(store, b"\x01" * 32, lambda member: True)
    book.add_job("job-1", SPEC, b"\x01" * 32, 1000.0)
    return book


def test_the_input_is_encoded_once_per_version_and_again_after_a_new_put(book: JobBook, store: Store) -> None:
    job = book.jobs["job-1"]
    store.put_local_input("stats", [1, 2, 3, 4], 10.0)
    first = book.check_input(job)
    assert first is book.check_input(job)  # no second parse
    assert not first.flags.writeable  # shared: nobody may change it in place
    store.put_local_input("stats", [5, 6, 7, 8], 11.0)
    assert np.array_equal(book.check_input(job), [5, 6, 7, 8])


def test_a_broken_new_version_is_refused_rather_than_served_from_the_cache(book: JobBook, store: Store) -> None:
    job = book.jobs["job-1"]
    store.put_local_input("stats", [1, 2, 3, 4], 10.0)
    book.check_input(job)
    store.put_local_input("stats", [1, 2, 3], 11.0)
    with pytest.raises(InputError, match="has 3 values"):
        book.check_input(job)
    assert book.client_input("job-1") is None  # not joined: takes no part either way
