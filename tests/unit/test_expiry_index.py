"""The pipeline's index of values with an expiry (store/expiry.py): what is due, the count, and
the bounded window onto a store with more values with a TTL than it holds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable

from shareddb.record import Record
from shareddb.store.expiry import Expiring, ExpiryIndex, ReadExpiring


def rec(key: str, version: str, expires: int | None, value: str | None = "v") -> Record:
    return Record(key, value, version, expires)


def reader(stored: dict[str, tuple[str, int]]) -> ReadExpiring:
    """A store's `expiring` over `stored` (key -> (version, expires)), read when called."""

    async def read(after: int, limit: int) -> list[Expiring]:
        found = [(k, v, e) for k, (v, e) in stored.items() if e > after]
        return sorted(found, key=lambda item: item[2])[:limit]

    return read


def filled(values: Iterable[Expiring], now: int = 0, **window: int) -> ExpiryIndex:
    index = ExpiryIndex(**window)
    asyncio.run(index.fill(reader({k: (v, e) for k, v, e in values}), now))
    return index


def test_values_fall_due_in_expiry_order_and_count_as_expired() -> None:
    index = filled([("a", "1", 300), ("b", "1", 100), ("c", "1", 200)])
    assert index.next_expiry() == 100
    assert index.expired(150) == 1
    assert index.due(250, 10) == [("b", "1"), ("c", "1")]
    assert index.due(250, 1) == [("b", "1")]
    assert index.expired(1000) == 3


def test_a_rewrite_replaces_the_old_expiry_and_a_tombstone_clears_it() -> None:
    index = filled([])
    index.committed([rec("k", "1", 100), rec("j", "1", 100)], 0)
    index.committed([rec("k", "2", None)], 0)  # written again without a ttl
    index.committed([rec("j", "1", None, value=None)], 0)  # expired into a tombstone
    assert index.expired(10_000) == 0
    assert index.next_expiry() is None
    assert len(index) == 0


def test_discard_forgets_only_what_is_still_due_at_that_version() -> None:
    index = filled([])
    index.committed([rec("k", "1", 100)], 0)
    assert index.due(100, 10) == [("k", "1")]
    index.discard([("k", "0")])
    assert index.expired(100) == 1
    index.discard([("k", "1")])
    assert index.expired(100) == 0


def test_a_hundred_thousand_values_expiring_at_once_are_counted_without_moving_them() -> None:
    index = filled((f"k{n:06d}", "1", 5000) for n in range(100_000))
    assert index.expired(4999) == 0
    assert index.expired(5000) == 100_000
    assert index.due(5000, 3) == [("k000000", "1"), ("k000001", "1"), ("k000002", "1")]
    index.committed([rec(f"k{n:06d}", "1", None, value=None) for n in range(1000)], 0)
    assert index.expired(5000) == 99_000


def test_a_store_with_more_values_than_the_window_is_held_a_window_at_a_time() -> None:
    stored = {f"k{n:05d}": ("1", 1000 + n) for n in range(10_000)}
    index = ExpiryIndex(limit=100, lookahead_ms=50)
    asyncio.run(index.fill(reader(stored), 0))
    assert 100 <= len(index) <= 110
    assert not index.whole
    assert index.expired(1099) == 100
    # The clock nears the horizon: the next fill takes the following values, not all of them.
    assert index.needs_fill(1060)
    asyncio.run(index.fill(reader(stored), 1060))
    assert 100 <= len(index) <= 121
    assert index.expired(1110) == 111


def test_the_window_stays_bounded_and_the_count_exact_under_writes_expiry_and_time() -> None:
    """A model run: a store of values with a TTL, written, deleted and reaped at random while the
    clock moves; after every step the count is exact and the window within its bound."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    limit, lookahead = 50, 100
    stored: dict[str, tuple[str, int | None]] = {}  # key -> (version, expires) of live values
    with_ttl: dict[str, tuple[str, int]] = {}
    index = ExpiryIndex(limit=limit, lookahead_ms=lookahead)
    read = reader(with_ttl)

    def commit(records: list[Record], now: int) -> None:
        for record in records:
            if record.value is None:
                stored.pop(record.key, None)
            else:
                stored[record.key] = (record.version, record.expires)
        with_ttl.clear()
        with_ttl.update({k: (v, e) for k, (v, e) in stored.items() if e is not None})
        index.committed(records, now)

    now = 0
    asyncio.run(index.fill(read, now))
    for step in range(3000):
        action = rng.random()
        if action < 0.5:
            key = f"k{rng.randrange(400)}"
            expires = None if rng.random() < 0.2 else now + rng.randrange(1, 2000)
            commit([rec(key, str(step), expires)], now)
        elif action < 0.6:
            commit([rec(f"k{rng.randrange(400)}", str(step), None, value=None)], now)
        elif action < 0.9:
            now += rng.randrange(0, 30)
        else:
            due = index.due(now, 20)
            commit([rec(key, version, None, value=None) for key, version in due], now)
            index.discard(due)
        if index.needs_fill(now):  # the pipeline's reaper does this at least once a second
            asyncio.run(index.fill(read, now))
        expired = sum(1 for _, e in with_ttl.values() if e <= now)
        assert index.expired(now) == expired, f"seed {seed}, step {step}"
        soon = sum(1 for _, e in with_ttl.values() if e <= now + lookahead)
        assert len(index) <= max(limit, soon) + limit // 10, f"seed {seed}, step {step}"


def test_values_committed_while_the_window_is_read_are_neither_lost_nor_stale() -> None:
    index = ExpiryIndex(limit=10, lookahead_ms=10)
    asyncio.run(index.fill(reader({}), 0))
    for n in range(20):  # past the limit: the latest are left to the store
        index.committed([rec(f"k{n:02d}", "1", 100 + n)], 0)
    assert len(index) == 10
    assert not index.whole
    stored = {f"k{n:02d}": ("1", 100 + n) for n in range(20)}

    writes = [rec("k15", "2", None), rec("k16", "2", 500), rec("new", "1", 112)]

    async def read_while_writing(after: int, limit: int) -> list[Expiring]:
        page = await reader(stored)(after, limit)  # read before these commits land
        for record in writes:  # rewritten without a ttl, a later expiry, a new value
            index.committed([record], 0)
            stored.pop(record.key, None)
            if record.expires is not None:
                stored[record.key] = (record.version, record.expires)
        writes.clear()
        return page

    asyncio.run(index.fill(read_while_writing, 200))
    assert index.due(210, 100) == [
        *((f"k{n:02d}", "1") for n in range(13)),
        ("new", "1"),
        *((f"k{n:02d}", "1") for n in (13, 14, 17, 18, 19)),
    ]
    assert index.expired(210) == 19  # k16 expires at 500 now: past the window, in the store
