"""The pipeline's index of values with an expiry (store/expiry.py): what is due, and the count."""

from __future__ import annotations

from shareddb.record import Record
from shareddb.store.expiry import ExpiryIndex


def rec(key: str, version: str, expires: int | None, value: str | None = "v") -> Record:
    return Record(key, value, version, expires)


def test_values_fall_due_in_expiry_order_and_count_as_expired() -> None:
    index = ExpiryIndex()
    index.load([("a", "1", 300), ("b", "1", 100), ("c", "1", 200)])
    assert index.next_expiry() == 100
    assert index.expired(150) == 1
    assert index.due(250, 10) == [("b", "1"), ("c", "1")]
    assert index.due(250, 1) == [("b", "1")]
    assert index.expired(1000) == 3


def test_a_rewrite_replaces_the_old_expiry_and_a_tombstone_clears_it() -> None:
    index = ExpiryIndex()
    index.committed([rec("k", "1", 100), rec("j", "1", 100)])
    index.committed([rec("k", "2", None)])  # written again without a ttl
    index.committed([rec("j", "1", None, value=None)])  # expired into a tombstone
    assert index.expired(10_000) == 0
    assert index.next_expiry() is None
    assert len(index) == 0


def test_discard_forgets_only_what_is_still_due_at_that_version() -> None:
    index = ExpiryIndex()
    index.committed([rec("k", "1", 100)])
    assert index.due(100, 10) == [("k", "1")]
    index.discard([("k", "0")])
    assert index.expired(100) == 1
    index.discard([("k", "1")])
    assert index.expired(100) == 0


def test_a_hundred_thousand_values_expiring_at_once_are_counted_without_moving_them() -> None:
    index = ExpiryIndex()
    index.load((f"k{n:06d}", "1", 5000) for n in range(100_000))
    assert index.expired(4999) == 0
    assert index.expired(5000) == 100_000
    assert index.due(5000, 3) == [("k000000", "1"), ("k000001", "1"), ("k000002", "1")]
    index.committed(rec(f"k{n:06d}", "1", None, value=None) for n in range(1000))
    assert index.expired(5000) == 99_000
