"""The read cache (store/cache.py) stays within its memory bound, however many keys are read."""

from __future__ import annotations

import gc
import tracemalloc

from shareddb.record import Record, make_version
from shareddb.store.cache import RecordCache


def record(n: int, value_bytes: int = 100) -> Record:
    value = f"{n:08d}".ljust(value_bytes, "v")  # a string of its own per record, as a read makes
    return Record(f"key-{n:08d}", value, make_version(n, "node1~0123456789ab"))


def test_the_cache_holds_no_more_memory_than_its_bound_after_many_more_keys_were_read() -> None:
    bound = 2 * 1024 * 1024
    cache = RecordCache(bound)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(40_000):  # about 18 MiB of records, were they all kept
            cache.put(record(n))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before  # the records kept, and the cache
    finally:
        tracemalloc.stop()
    assert 0 < len(cache) < 40_000
    assert held <= bound * 1.05, f"{held} bytes held for a bound of {bound}"
    assert held >= bound * 0.7, f"{held} bytes: the estimate is far above what records take"


def test_the_least_recently_filled_records_go_first() -> None:
    cache = RecordCache(3 * (len(record(0).key) + 100 + len(record(0).version) + 330))
    for n in range(5):
        cache.put(record(n))
    assert [cache.get(f"key-{n:08d}") is not None for n in range(5)] == [False, False, True, True, True]


def test_a_full_cache_gives_the_garbage_collector_nothing_to_walk() -> None:
    """A full collection walks every object the collector tracks: a cache of tens of thousands
    of records it had to walk made each one a pause of ~45 ms on the event loop."""
    cache = RecordCache(16 * 1024 * 1024)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(20_000):
        cache.put(record(n))
    gc.collect()
    assert len(cache) == 20_000
    grown = len(gc.get_objects()) - before
    assert grown < 100, f"{grown} more objects for the collector to walk"
    assert cache.get("key-00000042") == record(42)
