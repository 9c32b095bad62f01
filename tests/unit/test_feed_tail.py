"""The feed's tail in memory (store/feed_tail.py): every read it answers is the read the store
would answer, through writes, rewrites, deletes, purges, expiries and transactions, also with
changes left out for the reader (`leave_out`).
Invariant 1 rests on it: a puller that reads the tail misses no change the store's feed has."""

from __future__ import annotations

import gc
import random

import pytest

from shareddb.record import Record, make_version, version_hlc, version_origin
from shareddb.store.base import Change, FeedPage
from shareddb.store.feed_tail import FeedTail
from shareddb.store.memory import MemoryBackend, MemoryData
from shareddb.store.pipeline import PipelineStore

SEEDS = range(20)


def as_tuples(page: FeedPage) -> tuple[list[Change], int]:
    return page.changes, page.until


def unwanted(version: str) -> bool:
    """A reader that does not want what "b" wrote, nor every third timestamp."""
    return version_origin(version) == "b" or version_hlc(version) % 3 == 0


@pytest.mark.parametrize("seed", SEEDS)
async def test_the_tail_answers_every_read_as_the_store_does(seed: int) -> None:
    rng = random.Random(seed)
    print(f"seed {seed}")
    now = [1_000_000]
    backend = MemoryBackend(MemoryData())
    store = PipelineStore(backend, now=lambda: now[0], reap=False)
    # A small tail, so that reads both inside and before it happen.
    store._tail = FeedTail(max_changes=rng.choice([5, 20, 1000]), max_bytes=rng.choice([600, 10**6]))
    await store.open()
    hlc = 1
    keys = [f"k{i}" for i in range(12)]
    served_from_tail = 0
    try:
        for _ in range(300):
            hlc += 1
            action = rng.random()
            key = rng.choice(keys)
            if action < 0.45:
                ttl = rng.choice([None, None, now[0] + rng.randint(1, 50)])
                await store.write(Record(key, "v" * rng.randint(0, 40), make_version(hlc, "a"), ttl))
            elif action < 0.6:
                await store.write(Record(key, None, make_version(hlc, "a")))
            elif action < 0.7:
                records = [
                    Record(k, f"t{hlc}", make_version(hlc, "b"))
                    for k in rng.sample(keys, rng.randint(1, 3))
                ]
                await store.apply(records, None, [(0, len(records))] if rng.random() < 0.3 else [])
            elif action < 0.75:
                await store.purge_tombstones(rng.randint(0, store.last_seq), make_version(hlc, ""))
            elif action < 0.8:
                now[0] += rng.randint(1, 60)
                await store.reap()
            for _ in range(3):
                since = rng.randint(max(0, store.last_seq - 30), store.last_seq)
                limit = rng.choice([1, 3, 1000])
                budget = rng.choice([None, 80, 300])
                covered = store._tail.read(since, limit, budget) is not None
                served_from_tail += covered
                got = await store.changes_since(since, limit, budget)
                expected = await backend.changes_since(since, limit, budget, since)
                assert as_tuples(got) == as_tuples(expected), (since, limit, budget)
                # Left out: that read, less the plain changes the predicate names.
                got = await store.changes_since(since, limit, budget, leave_out=unwanted)
                kept = [c for c in expected.changes if c.txn or not unwanted(c.record.version)]
                assert as_tuples(got) == (kept, expected.until), (since, limit, budget)
    finally:
        await store.close()
    assert served_from_tail > 0


async def test_a_full_tail_that_was_read_gives_the_garbage_collector_nothing_to_walk() -> None:
    """A busy node's tail holds tens of thousands of changes, read by every puller and watcher:
    held as objects the collector walks, they made each full collection a pause of 40-150 ms."""
    store = PipelineStore(MemoryBackend(MemoryData()), reap=False)
    await store.open()
    try:
        await store.changes_since(0, 1)  # a reader: the tail covers what comes next
        for batch in range(20):
            records = [
                Record(f"k{batch}-{n}", "v" * 20, make_version(1 + batch * 1000 + n, "b"))
                for n in range(1000)
            ]
            await store.apply(records)
        gc.collect()
        before = len(gc.get_objects())
        page = await store.changes_since(0, 50_000)
        assert len(page.changes) == 20_000
        del page
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert grown < 100, f"{grown} more objects for the collector to walk"
    finally:
        await store.close()
