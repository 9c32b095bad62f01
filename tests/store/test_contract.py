"""The Store contract (store/base.py), run against every backend.

A backend joins the suite with one line in BACKENDS: a function that makes a not-yet-opened store at
a location (a fresh directory per store) with a given HLC high-water source and, optionally, wall
clock (what decides expiry). Opening the same location again must reopen the same data (the memory
store keeps its data per location here).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, cast

import pytest

from shareddb.clock import HybridClock, wall_millis
from shareddb.record import Record, make_version
from shareddb.store.base import (
    Applied,
    Change,
    Checkpoint,
    CopyPage,
    CopyPosition,
    CopyUnsupported,
    FeedPage,
    Outcome,
    SnapshotRead,
    Store,
    StoreUnavailable,
    change_size,
)
from shareddb.store.memory import MemoryData, MemoryStore
from shareddb.store.ops import Condition, Conflict
from shareddb.store.pipeline import PipelineStore
from shareddb.store.redis import RedisStore
from shareddb.store.sqlite import SQLiteStore
from tests.harness import eventually, store_url

ClockSource = Callable[[], int]

MEMORY: dict[Path, MemoryData] = {}  # what each location's memory store holds across reopens


class MakeStore(Protocol):
    def __call__(self, where: Path, clock: ClockSource, now: ClockSource = wall_millis) -> Store: ...


def _sqlite(where: Path, clock: ClockSource, now: ClockSource = wall_millis) -> Store:
    return SQLiteStore(where / "db.sqlite3", clock_high=clock, now=now)


def _redis(where: Path, clock: ClockSource, now: ClockSource = wall_millis) -> Store:
    return RedisStore(store_url(where), clock_high=clock, now=now)


def _memory(where: Path, clock: ClockSource, now: ClockSource = wall_millis) -> Store:
    return MemoryStore(MEMORY.setdefault(where, MemoryData()), clock_high=clock, now=now)


BACKENDS: dict[str, MakeStore] = {"sqlite": _sqlite, "redis": _redis, "memory": _memory}

WALL = 1_700_000_000_000


def v(hlc: int, node: str = "n1") -> str:
    """A version; tests pick small clock values so the order is easy to read."""
    return make_version(hlc, node)


def put(key: str, value: str, hlc: int, node: str = "n1") -> Record:
    return Record(key, value, v(hlc, node))


def tomb(key: str, hlc: int, node: str = "n1") -> Record:
    return Record(key, None, v(hlc, node))


class Stores:
    """Opens stores of one backend under tmp_path, and closes every one at the end of the test."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        self._open: list[Store] = []

    async def open(
        self, name: str = "a", clock: ClockSource = lambda: 0, now: ClockSource = wall_millis
    ) -> Store:
        where = self.root / name
        where.mkdir(exist_ok=True)
        store = BACKENDS[self.backend](where, clock, now)
        await store.open()
        self._open.append(store)
        return store

    async def close(self, store: Store) -> None:
        self._open.remove(store)
        await store.close()

    async def reopen(
        self,
        store: Store,
        name: str = "a",
        clock: ClockSource = lambda: 0,
        now: ClockSource = wall_millis,
    ) -> Store:
        await self.close(store)
        return await self.open(name, clock, now)

    async def close_all(self) -> None:
        opened, self._open = self._open, []
        await asyncio.gather(*(store.close() for store in opened))


@pytest.fixture(params=sorted(BACKENDS))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores(request.param, tmp_path)
    yield opened
    await opened.close_all()


@pytest.fixture
async def store(stores: Stores) -> Store:
    return await stores.open()


async def state(store: Store, keys: Sequence[str]) -> dict[str, Record | None]:
    return {key: await store.get(key) for key in keys}


async def feed(store: Store) -> list[Change]:
    return (await store.changes_since(0, 1_000_000)).changes


# --- local writes -----------------------------------------------------------------------------


async def test_write_of_a_new_key_is_created_and_readable(store: Store) -> None:
    assert await store.write(put("k", "v1", 1)) is Outcome.CREATED
    assert await store.get("k") == put("k", "v1", 1)


async def test_write_over_a_live_value_is_updated(store: Store) -> None:
    await store.write(put("k", "v1", 1))
    assert await store.write(put("k", "v2", 2)) is Outcome.UPDATED
    assert await store.get("k") == put("k", "v2", 2)


async def test_delete_of_a_live_value_leaves_a_tombstone(store: Store) -> None:
    await store.write(put("k", "v1", 1))
    assert await store.write(tomb("k", 2)) is Outcome.DELETED
    stored = await store.get("k")
    assert stored == tomb("k", 2)
    assert stored is not None
    assert stored.deleted


async def test_delete_of_a_never_written_key_is_not_found_and_writes_nothing(store: Store) -> None:
    before = store.digest()
    assert await store.write(tomb("k", 1)) is Outcome.NOT_FOUND
    assert await store.get("k") is None
    assert store.last_seq == 0
    assert store.digest() == before
    assert await feed(store) == []


async def test_delete_of_a_deleted_key_is_not_found_and_keeps_the_first_tombstone(store: Store) -> None:
    """Invariant 4: a deleted key stays deleted; the second delete writes nothing."""
    await store.write(put("k", "v1", 1))
    await store.write(tomb("k", 2))
    seq = store.last_seq
    assert await store.write(tomb("k", 3)) is Outcome.NOT_FOUND
    assert await store.get("k") == tomb("k", 2)
    assert store.last_seq == seq


async def test_write_over_a_tombstone_is_created(store: Store) -> None:
    await store.write(put("k", "v1", 1))
    await store.write(tomb("k", 2))
    assert await store.write(put("k", "v3", 3)) is Outcome.CREATED
    assert await store.get("k") == put("k", "v3", 3)


async def test_write_with_a_smaller_version_is_superseded_and_changes_nothing(store: Store) -> None:
    """Invariant 3: the stored value is the greatest version written."""
    await store.write(put("k", "new", 5))
    seq, digest = store.last_seq, store.digest()
    assert await store.write(put("k", "old", 4)) is Outcome.SUPERSEDED
    assert await store.write(tomb("k", 4)) is Outcome.SUPERSEDED
    assert await store.get("k") == put("k", "new", 5)
    assert (store.last_seq, store.digest()) == (seq, digest)


async def test_write_with_an_equal_version_is_superseded(store: Store) -> None:
    """Writing the same record twice changes nothing (idempotent)."""
    await store.write(put("k", "v", 5))
    seq = store.last_seq
    assert await store.write(put("k", "other", 5)) is Outcome.SUPERSEDED
    assert await store.get("k") == put("k", "v", 5)
    assert store.last_seq == seq


async def test_tombstone_blocks_an_older_write(store: Store) -> None:
    """Invariant 4: a deleted key never comes back through an older write."""
    await store.write(put("k", "v", 1))
    await store.write(tomb("k", 3))
    assert await store.write(put("k", "stale", 2)) is Outcome.SUPERSEDED
    assert await store.get("k") == tomb("k", 3)


async def test_empty_value_is_a_live_value(store: Store) -> None:
    assert await store.write(put("k", "", 1)) is Outcome.CREATED
    stored = await store.get("k")
    assert stored == put("k", "", 1)
    assert stored is not None
    assert not stored.deleted
    assert store.digest().count == 1
    assert await store.write(tomb("k", 2)) is Outcome.DELETED


async def test_unicode_keys_and_values_round_trip(store: Store) -> None:
    key, value = "ключ/😀 \t+&=#%", "значение\n\x00😀" + "é" * 1000
    await store.write(Record(key, value, v(1)))
    assert await store.get(key) == Record(key, value, v(1))
    assert [r.key for r in await store.scan("", None, 10)] == [key]


async def test_get_of_a_never_written_key_is_none(store: Store) -> None:
    assert await store.get("nothing") is None


# --- apply: merging records from peers --------------------------------------------------------

HISTORY = [
    put("a", "a1", 1),
    put("a", "a2", 2, "n2"),
    tomb("a", 3),
    put("b", "b1", 1, "n2"),
    put("b", "b2", 1, "n3"),  # same clock, greater node id: wins
    put("c", "c1", 2),
    tomb("d", 4),  # a tombstone for a key this store never saw
    put("e", "e1", 5),
    put("e", "e0", 4),
]
FINAL = {
    "a": tomb("a", 3),
    "b": put("b", "b2", 1, "n3"),
    "c": put("c", "c1", 2),
    "d": tomb("d", 4),
    "e": put("e", "e1", 5),
}


async def test_apply_keeps_the_greatest_version_of_each_key(store: Store) -> None:
    """Invariant 3: the final value of a key is the greatest version written."""
    await store.apply(HISTORY)
    assert await state(store, sorted(FINAL)) == FINAL
    assert store.digest().count == 3  # b, c and e are live; a and d are tombstones
    assert {r.key for r in await store.scan("", None, 100)} == {"b", "c", "e"}


async def test_apply_returns_how_many_records_won(store: Store) -> None:
    # a1 wins, a2 wins, a3 wins; b1 wins, b2 wins; c1; d tomb; e1 wins; e0 loses.
    assert (await store.apply(HISTORY)).won == 8
    assert (await store.apply(HISTORY)).won == 0


async def test_apply_says_which_feed_positions_the_winners_took(store: Store) -> None:
    """The bus's publisher passes over those positions without reading them: they hold the
    peer's records and nothing else."""
    await store.apply([put("a", "1", 5), put("b", "1", 5)])
    applied = await store.apply([put("a", "old", 1), put("c", "1", 2), tomb("b", 9)])
    assert (applied.won, applied.first, applied.last) == (2, 3, 4)
    page = await store.changes_since(2, 10)
    assert [(c.seq, c.record) for c in page.changes] == [(3, put("c", "1", 2)), (4, tomb("b", 9))]
    nothing = await store.apply([put("a", "older", 2)])
    assert nothing.won == 0
    assert nothing.first > nothing.last


async def test_apply_in_any_order_and_with_duplicates_reaches_the_same_state(stores: Stores) -> None:
    """Invariant 2: applying is commutative and idempotent, so every delivery order converges."""
    reference = await stores.open("reference")
    await reference.apply(HISTORY)
    rng = random.Random(20240607)
    for attempt in range(6):
        records = HISTORY + rng.sample(HISTORY, 4)  # duplicates
        rng.shuffle(records)
        other = await stores.open(f"shuffled-{attempt}")
        cut = rng.randrange(1, len(records))
        await other.apply(records[:cut])
        await other.apply(records[cut:])
        assert await state(other, sorted(FINAL)) == FINAL, f"order {records}"
        assert other.digest() == reference.digest()


async def test_apply_of_a_tombstone_for_an_unknown_key_stores_it(store: Store) -> None:
    """Invariant 4: a delete is never undone by a store that missed the write before it."""
    assert (await store.apply([tomb("k", 5)])).won == 1
    assert await store.get("k") == tomb("k", 5)
    assert (await store.apply([put("k", "late", 4)])).won == 0
    assert await store.get("k") == tomb("k", 5)
    assert store.digest().count == 0


async def test_apply_with_a_checkpoint_saves_it(store: Store) -> None:
    assert await store.checkpoint("peer-a") is None
    await store.apply([put("k", "v", 1)], Checkpoint("peer-a", "inst-1", 7))
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst-1", 7)
    assert await store.get("k") == put("k", "v", 1)


async def test_a_checkpoint_keeps_the_epoch_it_was_read_in(store: Store) -> None:
    """The epoch of the peer's feed (replication/epochs.py) goes with the position, and a
    checkpoint without one (an earlier release's) stays without."""
    await store.apply([], Checkpoint("peer-a", "inst-1", 7, "0123456789abcdef"))
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst-1", 7, "0123456789abcdef")
    await store.apply([], Checkpoint("peer-a", "inst-1", 8))
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst-1", 8, "")


async def test_checkpoint_is_saved_even_when_no_record_wins(store: Store) -> None:
    await store.apply([put("k", "v", 5)])
    assert (await store.apply([put("k", "old", 1)], Checkpoint("peer-a", "inst-1", 9))).won == 0
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst-1", 9)
    assert (await store.apply([], Checkpoint("peer-a", "inst-2", 1))).won == 0
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst-2", 1)


async def test_checkpoints_of_different_peers_are_kept_apart(store: Store) -> None:
    await store.apply([], Checkpoint("peer-a", "ia", 3))
    await store.apply([], Checkpoint("peer-b", "ib", 8))
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "ia", 3)
    assert await store.checkpoint("peer-b") == Checkpoint("peer-b", "ib", 8)
    assert await store.checkpoint("peer-c") is None


async def test_failed_apply_changes_nothing_not_even_the_checkpoint(store: Store) -> None:
    """Invariant 6 at the store: a batch with an unstorable record is refused as a whole."""
    await store.apply([put("k", "v", 1)], Checkpoint("peer-a", "inst", 1))
    seq, digest = store.last_seq, store.digest()
    bad = Record("bad\ud800", "v", v(2))  # a lone surrogate cannot be encoded as UTF-8
    with pytest.raises(Exception):  # noqa: B017, PT011 - the contract only promises "an exception"
        await store.apply([put("k", "v2", 2), bad], Checkpoint("peer-a", "inst", 2))
    assert await store.get("k") == put("k", "v", 1)
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst", 1)
    assert (store.last_seq, store.digest()) == (seq, digest)
    # and the store keeps working
    assert (await store.apply([put("k", "v3", 3)], Checkpoint("peer-a", "inst", 3))).won == 1
    assert await store.checkpoint("peer-a") == Checkpoint("peer-a", "inst", 3)


# --- sequence numbers and the changes feed ----------------------------------------------------


async def test_each_accepted_record_gets_the_next_sequence_number(store: Store) -> None:
    """Invariant 5: the sequence never goes backwards; only accepted records move it."""
    assert store.last_seq == 0
    await store.write(put("a", "1", 1))
    assert store.last_seq == 1
    await store.write(put("a", "0", 0))  # superseded
    await store.write(tomb("zz", 2))  # not found
    assert store.last_seq == 1
    await store.apply([put("b", "1", 3), put("a", "old", 0), put("c", "1", 4)])
    assert store.last_seq == 3
    await store.write(tomb("a", 5))
    assert store.last_seq == 4


async def test_feed_holds_one_entry_per_key_at_its_latest_sequence(store: Store) -> None:
    await store.write(put("a", "1", 1))  # seq 1
    await store.write(put("b", "1", 2))  # seq 2
    await store.write(put("a", "2", 3))  # seq 3: a moves to the end
    await store.write(tomb("b", 4))  # seq 4: the tombstone is in the feed
    changes = await feed(store)
    assert changes == [Change(3, put("a", "2", 3)), Change(4, tomb("b", 4))]


async def test_feed_sequence_numbers_strictly_increase(store: Store) -> None:
    await store.apply([put(f"k{i:03}", "v", i) for i in range(50)])
    for i in range(0, 50, 3):
        await store.write(put(f"k{i:03}", "w", 100 + i))
    seqs = [change.seq for change in await feed(store)]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == store.last_seq == 50 + len(range(0, 50, 3))


async def test_changes_since_returns_records_after_seq_in_order_up_to_limit(store: Store) -> None:
    await store.apply([put(f"k{i}", "v", i) for i in range(1, 11)])
    page = await store.changes_since(3, 4)
    assert [c.seq for c in page.changes] == [4, 5, 6, 7]
    assert [c.record.key for c in page.changes] == ["k4", "k5", "k6", "k7"]
    assert page.until == 7
    page = await store.changes_since(7, 100)
    assert ([c.seq for c in page.changes], page.until) == ([8, 9, 10], 10)
    assert await store.changes_since(10, 100) == FeedPage([], 10)
    assert await store.changes_since(100, 100) == FeedPage([], 100)


async def test_paging_through_the_feed_yields_every_key_once(store: Store) -> None:
    await store.apply([put(f"k{i:03}", "v", i) for i in range(1, 101)])
    seen: list[str] = []
    seq = 0
    while (page := await store.changes_since(seq, 7)).changes:
        seen.extend(c.record.key for c in page.changes)
        seq = page.until
    assert seen == [f"k{i:03}" for i in range(1, 101)]
    assert seq == store.last_seq


async def test_a_feed_read_covers_purged_tombstones_at_its_end(store: Store) -> None:
    # k1..k5 at sequences 1..5; k4 and k5 deleted (6, 7) and those tombstones purged: the feed's
    # last rows are gone, and a reader must still be told it has read up to 7, or it would ask
    # for the same empty stretch for ever.
    await store.apply([put(f"k{i}", "v", i) for i in range(1, 6)])
    await store.apply([tomb("k4", 10), tomb("k5", 11)])
    assert await store.purge_tombstones(store.last_seq, v(100, "")) == 2
    assert store.last_seq == 7
    assert await store.changes_since(3, 100) == FeedPage([], 7)
    page = await store.changes_since(0, 100)
    assert ([c.seq for c in page.changes], page.until) == ([1, 2, 3], 7)
    # A read cut by its limit covers only the changes it returned.
    page = await store.changes_since(0, 3)
    assert ([c.seq for c in page.changes], page.until) == ([1, 2, 3], 3)
    assert await store.changes_since(7, 100) == FeedPage([], 7)


async def test_a_feed_read_stops_at_its_byte_budget_and_covers_only_what_it_returned(
    store: Store,
) -> None:
    value = "x" * 1000
    await store.apply([put(f"k{i}", value, i) for i in range(1, 11)])
    page = await store.changes_since(0, 100, max_bytes=3500)
    assert ([c.seq for c in page.changes], page.until) == ([1, 2, 3], 3)
    # The first change is always returned, however large.
    page = await store.changes_since(3, 100, max_bytes=10)
    assert ([c.seq for c in page.changes], page.until) == ([4], 4)
    page = await store.changes_since(4, 100, max_bytes=10**9)
    assert ([c.seq for c in page.changes], page.until) == ([5, 6, 7, 8, 9, 10], 10)


async def test_a_feed_read_never_covers_a_write_it_did_not_return(store: Store) -> None:
    # Reads race with commits: whatever a read returns, a write acknowledged after it started
    # is either in the answer or above its `until`, so a reader that continues from `until`
    # sees it. Invariant 1: no acknowledged write is lost.
    await store.apply([put("seed", "v", 1)])
    seen: set[str] = set()
    written: list[str] = []

    async def writer() -> None:
        for i in range(200):
            await store.write(put(f"w{i:03}", "v", 10 + i))
            written.append(f"w{i:03}")

    writing = asyncio.create_task(writer())
    seq = 0
    while not writing.done() or seq < store.last_seq:
        page = await store.changes_since(seq, 1000)
        seen.update(c.record.key for c in page.changes)
        assert page.until >= seq
        seq = page.until
    await writing
    assert set(written) <= seen


# --- scan -------------------------------------------------------------------------------------

SCAN_KEYS = [
    "a",
    "a/b",
    "ab",
    "b",
    "B",
    "é",
    "\ud7ffx",  # the last code point before the surrogates
    "\ue000",  # the first one after them
    "\uffff",
    "😀",  # U+1F600: after U+FFFF by code point (before it in UTF-16 order)
    "😀a",
    "\U0010ffff",
    "\U0010ffffz",
]


async def scan_keys(store: Store, prefix: str, after: str | None = None, limit: int = 1000) -> list[str]:
    return [record.key for record in await store.scan(prefix, after, limit)]


@pytest.fixture
async def filled(store: Store) -> Store:
    await store.apply([put(key, f"value of {key}", i + 1) for i, key in enumerate(SCAN_KEYS)])
    await store.apply([put("gone", "x", 100), tomb("gone", 101), put("a/gone", "x", 100)])
    await store.write(tomb("a/gone", 102))
    return store


async def test_scan_sorts_by_code_point_and_skips_tombstones(filled: Store) -> None:
    keys = await scan_keys(filled, "")
    assert keys == sorted(SCAN_KEYS)
    assert keys.index("\uffff") < keys.index("😀")
    assert "gone" not in keys
    assert "a/gone" not in keys


async def test_scan_returns_records_with_their_values_and_versions(filled: Store) -> None:
    records = await filled.scan("a/", None, 10)
    assert records == [put("a/b", "value of a/b", 2)]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a", ["a", "a/b", "ab"]),
        ("a/", ["a/b"]),
        ("B", ["B"]),
        ("é", ["é"]),
        ("\ud7ff", ["\ud7ffx"]),
        ("😀", ["😀", "😀a"]),
        ("\U0010ffff", ["\U0010ffff", "\U0010ffffz"]),  # a prefix ending in U+10FFFF
        ("c", []),
        ("abc", []),
    ],
)
async def test_scan_with_prefix_returns_only_keys_starting_with_it(
    filled: Store, prefix: str, expected: list[str]
) -> None:
    assert await scan_keys(filled, prefix) == expected


async def test_scan_with_a_multi_char_prefix_ending_in_the_last_code_point(store: Store) -> None:
    keys = ["a\U0010ffff", "a\U0010ffff\U0010ffff", "a\U0010ffffb", "b", "a\U0010fffe"]
    await store.apply([put(key, "v", i + 1) for i, key in enumerate(keys)])
    assert await scan_keys(store, "a\U0010ffff") == [
        "a\U0010ffff",
        "a\U0010ffffb",
        "a\U0010ffff\U0010ffff",
    ]


async def test_scan_after_starts_strictly_after_that_key(filled: Store) -> None:
    assert await scan_keys(filled, "a", after="a") == ["a/b", "ab"]
    assert await scan_keys(filled, "a", after="a/a") == ["a/b", "ab"]  # not itself a key
    assert await scan_keys(filled, "a", after="ab") == []
    assert await scan_keys(filled, "a", after="zzz") == []


async def test_scan_after_below_the_prefix_starts_at_the_prefix(filled: Store) -> None:
    assert await scan_keys(filled, "b", after="a") == ["b"]
    assert await scan_keys(filled, "😀", after="") == ["😀", "😀a"]


async def test_scan_limit_caps_the_page_and_paging_reaches_every_key(filled: Store) -> None:
    assert await scan_keys(filled, "", limit=3) == sorted(SCAN_KEYS)[:3]
    seen: list[str] = []
    after: str | None = None
    while page := await scan_keys(filled, "", after, limit=4):
        seen.extend(page)
        after = page[-1]
    assert seen == sorted(SCAN_KEYS)


# --- digest -----------------------------------------------------------------------------------


async def test_digest_of_an_empty_store(stores: Stores) -> None:
    one, two = await stores.open("one"), await stores.open("two")
    assert one.digest().count == 0
    assert one.digest().digest == two.digest().digest
    assert len(one.digest().digest) == 32
    int(one.digest().digest, 16)


async def test_digest_is_equal_for_the_same_records_in_other_orders_and_batchings(
    stores: Stores,
) -> None:
    """Invariant 2: equal data gives equal digests whatever the delivery order."""
    one, two = await stores.open("one"), await stores.open("two")
    records = [put(f"k{i % 37}", f"v{i}", i, f"n{i % 3}") for i in range(200)]
    records += [tomb(f"k{i}", 1000 + i) for i in range(0, 37, 5)]
    await one.apply(records)
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    for start in range(0, len(shuffled), 13):
        await two.apply(shuffled[start : start + 13])
    assert one.digest() == two.digest()
    assert one.digest().count == 37 - len(range(0, 37, 5))


async def test_digest_of_local_writes_equals_digest_of_the_same_records_applied(
    stores: Stores,
) -> None:
    one, two = await stores.open("one"), await stores.open("two")
    await one.write(put("k", "v", 1))
    await one.write(put("j", "w", 2))
    await one.write(tomb("k", 3))
    await two.apply([tomb("k", 3), put("j", "w", 2)])
    assert one.digest() == two.digest()


async def test_digest_differs_when_one_version_differs(stores: Stores) -> None:
    one, two = await stores.open("one"), await stores.open("two")
    await one.apply([put("a", "v", 1), put("b", "v", 2)])
    await two.apply([put("a", "v", 1), put("b", "v", 3)])
    assert one.digest().digest != two.digest().digest
    assert one.digest().count == two.digest().count == 2
    await one.apply([put("b", "v", 3)])
    assert one.digest() == two.digest()


async def test_digest_counts_tombstones_in_the_hash_but_not_in_the_count(stores: Stores) -> None:
    one, two = await stores.open("one"), await stores.open("two")
    await one.apply([put("a", "v", 1)])
    await two.apply([put("a", "v", 1), tomb("gone", 2)])
    assert one.digest().count == two.digest().count == 1
    assert one.digest().digest != two.digest().digest


async def test_digest_count_is_the_number_of_live_keys(store: Store) -> None:
    for i in range(5):
        await store.write(put(f"k{i}", "v", i + 1))
    await store.write(put("k0", "again", 10))
    await store.write(tomb("k1", 11))
    await store.write(tomb("missing", 12))
    assert store.digest().count == 4


# --- durability across reopen -----------------------------------------------------------------


async def test_reopened_store_keeps_data_sequence_digest_and_instance(stores: Stores) -> None:
    """Invariant 1 and 5: acknowledged writes and the sequence survive a restart."""
    store = await stores.open()
    await store.apply([put(f"k{i}", f"v{i}", i + 1) for i in range(20)], Checkpoint("p", "i", 4))
    await store.write(tomb("k3", 100))
    await store.set_meta("name", "value")
    before = (store.instance_id, store.last_seq, store.digest(), await feed(store))
    reopened = await stores.reopen(store)
    after = (reopened.instance_id, reopened.last_seq, reopened.digest(), await feed(reopened))
    assert after == before
    assert await reopened.get("k3") == tomb("k3", 100)
    assert await reopened.get("k7") == put("k7", "v7", 8)
    assert await reopened.checkpoint("p") == Checkpoint("p", "i", 4)
    assert await reopened.get_meta("name") == "value"
    assert await reopened.write(put("new", "v", 200)) is Outcome.CREATED
    assert reopened.last_seq == before[1] + 1


async def test_clock_high_is_persisted_with_each_write_and_survives_reopen(stores: Stores) -> None:
    """Invariant 5: a node's clock never goes backwards across restarts."""
    clock = HybridClock()
    store = await stores.open(clock=lambda: clock.last)
    assert store.clock_high == 0
    await store.write(Record("k", "v", make_version(clock.now(WALL), "n1")))
    assert store.clock_high == clock.last
    clock.observe(clock.last + 1000, WALL)  # the clock moves on before the next write
    await store.write(Record("k", "w", make_version(clock.now(WALL), "n1")))
    high = clock.last
    assert store.clock_high == high
    reopened = await stores.reopen(store, clock=lambda: 0)
    assert reopened.clock_high == high
    restored = HybridClock()
    restored.restore(reopened.clock_high)
    assert restored.now(WALL) > high


async def test_clock_high_never_goes_backwards_when_the_source_does(stores: Stores) -> None:
    """Invariant 5: a node's clock never goes backwards."""
    source = [5_000]
    store = await stores.open(clock=lambda: source[0])
    await store.write(put("k", "v", 1))
    assert store.clock_high == 5_000
    source[0] = 10
    await store.write(put("k", "w", 2))
    assert store.clock_high == 5_000


async def test_a_new_store_gets_a_new_instance_id(stores: Stores) -> None:
    one, two = await stores.open("one"), await stores.open("two")
    assert one.instance_id
    assert two.instance_id
    assert one.instance_id != two.instance_id


# --- metadata ---------------------------------------------------------------------------------


async def test_get_meta_of_an_unset_name_is_none(store: Store) -> None:
    assert await store.get_meta("peer-list") is None


async def test_set_meta_then_get_meta_and_overwrite(store: Store) -> None:
    await store.set_meta("peer-list", "http://a,http://b")
    assert await store.get_meta("peer-list") == "http://a,http://b"
    await store.set_meta("peer-list", "ключ 😀")
    assert await store.get_meta("peer-list") == "ключ 😀"
    await store.set_meta("other", "")
    assert await store.get_meta("other") == ""
    assert await store.get_meta("peer-list") == "ключ 😀"


async def test_set_meta_writes_no_record_and_no_sequence(store: Store) -> None:
    before = (store.last_seq, store.digest())
    await store.set_meta("peer-list", "x")
    assert (store.last_seq, store.digest()) == before
    assert await feed(store) == []


async def test_set_meta_names_never_touch_the_store_own_bookkeeping(stores: Stores) -> None:
    """Invariant 5: no metadata a caller writes can move the sequence or change the instance."""
    store = await stores.open()
    await store.write(put("k", "v", 1))
    before = (store.instance_id, store.last_seq, store.clock_high, store.digest())
    for name in ("instance", "seq", "live", "hlc"):
        await store.set_meta(name, "999")
    assert (store.instance_id, store.last_seq, store.clock_high, store.digest()) == before
    reopened = await stores.reopen(store)
    after = (reopened.instance_id, reopened.last_seq, reopened.clock_high, reopened.digest())
    assert after == before
    assert await reopened.get_meta("seq") == "999"


# --- concurrency ------------------------------------------------------------------------------


async def test_concurrent_writes_all_land_each_with_its_own_outcome(store: Store) -> None:
    """Invariant 1: no acknowledged write is lost, however many arrive together."""
    await store.write(put("existing", "v", 1))
    await store.write(put("newer", "v", 1000))
    writes = [put(f"k{i:04}", f"v{i}", 10 + i) for i in range(300)]
    writes += [put("existing", "w", 5), put("newer", "stale", 2), tomb("absent", 3)]
    outcomes = await asyncio.gather(*(store.write(record) for record in writes))
    assert outcomes == [Outcome.CREATED] * 300 + [
        Outcome.UPDATED,
        Outcome.SUPERSEDED,
        Outcome.NOT_FOUND,
    ]
    assert store.last_seq == 2 + 301
    for record in writes[:300]:
        assert await store.get(record.key) == record
    assert await store.get("existing") == put("existing", "w", 5)
    assert await store.get("newer") == put("newer", "v", 1000)
    assert store.digest().count == 302


async def test_concurrent_writes_to_one_key_keep_the_greatest_version(store: Store) -> None:
    """Invariant 3: the final value is the greatest version written, whatever the interleaving."""
    versions = list(range(1, 101))
    random.Random(3).shuffle(versions)
    outcomes = await asyncio.gather(*(store.write(put("k", f"v{h}", h)) for h in versions))
    assert await store.get("k") == put("k", "v100", 100)
    assert outcomes.count(Outcome.CREATED) == 1
    assert Outcome.NOT_FOUND not in outcomes
    # exactly the writes that beat everything queued before them were accepted
    running_max = list(itertools.accumulate(versions, max))
    accepted = sum(1 for h, m in zip(versions, running_max, strict=True) if h == m)
    assert len(outcomes) - outcomes.count(Outcome.SUPERSEDED) == accepted
    assert store.last_seq == accepted


async def test_concurrent_applies_and_writes_all_land(store: Store) -> None:
    batches = [[put(f"b{b}-{i}", "v", 1) for i in range(20)] for b in range(10)]
    results = await asyncio.gather(
        *(store.apply(batch, Checkpoint(f"peer{b}", "i", 20)) for b, batch in enumerate(batches)),
        *(store.write(put(f"w{i}", "v", 2)) for i in range(50)),
    )
    applied = cast(list[Applied], results[:10])
    assert [a.won for a in applied] == [20] * 10
    positions = sorted(p for a in applied for p in range(a.first, a.last + 1))
    assert len(positions) == len(set(positions)) == 200  # each batch's range its own
    assert results[10:] == [Outcome.CREATED] * 50
    assert store.digest().count == 250
    assert store.last_seq == 250
    assert await store.checkpoint("peer9") == Checkpoint("peer9", "i", 20)


# --- waiting for changes ----------------------------------------------------------------------


async def test_wait_for_changes_returns_promptly_when_a_write_lands(store: Store) -> None:
    started = time.monotonic()
    waiter = asyncio.create_task(store.wait_for_changes(store.last_seq, 30))
    await asyncio.sleep(0)  # let the waiter start waiting
    assert not waiter.done()
    await store.write(put("k", "v", 1))
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < 5
    assert store.last_seq == 1


async def test_wait_for_changes_wakes_every_waiter(store: Store) -> None:
    waiters = [asyncio.create_task(store.wait_for_changes(0, 30)) for _ in range(5)]
    await asyncio.sleep(0)
    await store.apply([put("k", "v", 1)])
    await asyncio.wait_for(asyncio.gather(*waiters), 5)


async def test_wait_for_changes_returns_at_once_when_already_past(store: Store) -> None:
    await store.write(put("k", "v", 1))
    started = time.monotonic()
    await asyncio.wait_for(store.wait_for_changes(0, 30), 5)
    assert time.monotonic() - started < 5


async def test_wait_for_changes_returns_after_the_timeout_without_writes(store: Store) -> None:
    started = time.monotonic()
    await asyncio.wait_for(store.wait_for_changes(store.last_seq, 0.2), 5)
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 5
    assert store.last_seq == 0


async def test_wait_for_changes_ignores_writes_that_were_not_accepted(store: Store) -> None:
    await store.write(put("k", "v", 5))
    waiter = asyncio.create_task(store.wait_for_changes(store.last_seq, 10))
    try:
        await asyncio.sleep(0)
        assert await store.write(put("k", "old", 1)) is Outcome.SUPERSEDED
        assert await store.write(tomb("absent", 6)) is Outcome.NOT_FOUND
        await store.set_meta("name", "value")
        done, _ = await asyncio.wait({waiter}, timeout=0.3)
        assert waiter not in done, "returned although last_seq did not pass seq"
    finally:
        waiter.cancel()


# --- a closed store ---------------------------------------------------------------------------

CLOSED_STORE_CALLS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "get": lambda s: s.get("k"),  # a key the store has in its cache
    "write": lambda s: s.write(put("k", "v", 2)),
    "apply": lambda s: s.apply([put("k", "v", 2)]),
    "set_meta": lambda s: s.set_meta("name", "v"),
    "scan": lambda s: s.scan("", None, 10),
    "changes_since": lambda s: s.changes_since(0, 10),
    "checkpoint": lambda s: s.checkpoint("peer"),
    "get_meta": lambda s: s.get_meta("name"),
    "snapshot": lambda s: s.snapshot(),
}


@pytest.mark.parametrize("call", sorted(CLOSED_STORE_CALLS))
async def test_every_call_on_a_closed_store_raises_store_unavailable(stores: Stores, call: str) -> None:
    """The API turns StoreUnavailable into 503; any other exception would be a 500."""
    store = await stores.open()
    await store.write(put("k", "v", 1))
    assert await store.get("k") == put("k", "v", 1)
    await stores.close(store)
    with pytest.raises(StoreUnavailable):
        await CLOSED_STORE_CALLS[call](store)


# --- expiry: the store's wall clock is a FakeClock, which moves only when a test moves it --------

FAR = 4_000_000_000_000  # an expiry in the 2090s: never reached by any clock of these tests


class FakeClock:
    """Wall-clock milliseconds that move only when a test says so."""

    def __init__(self, start: int = WALL) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def expiring(key: str, value: str, hlc: int, expires: int) -> Record:
    return Record(key, value, v(hlc), expires)


def pipeline(store: Store) -> PipelineStore:
    assert isinstance(store, PipelineStore)
    return store


async def test_a_value_keeps_its_expiry_and_get_returns_it(stores: Stores) -> None:
    clock = FakeClock()
    store = await stores.open(now=clock)
    record = expiring("k", "v", 1, WALL + 60_000)
    assert await store.write(record) is Outcome.CREATED
    assert await store.get("k") == record
    assert await store.scan("", None, 10) == [record]
    reopened = await stores.reopen(store, now=clock)
    assert await reopened.get("k") == record
    # A write without an expiry takes it away: the value no longer expires.
    assert await reopened.write(put("k", "w", 2)) is Outcome.UPDATED
    assert await reopened.get("k") == put("k", "w", 2)
    clock.now = WALL + 120_000
    assert await reopened.scan("", None, 10) == [put("k", "w", 2)]


async def test_scan_leaves_out_values_expired_by_now_and_still_fills_the_page(stores: Stores) -> None:
    clock = FakeClock()
    store = await stores.open(now=clock)
    # 50 values that expire, sorting before 10 that do not: a page must read past them all.
    await store.apply([expiring(f"s{i:02}", "gone", 1, WALL + 1000) for i in range(50)])
    kept = [put(f"s{i:02}", "kept", 1) for i in range(50, 60)]
    await store.apply(kept)
    await store.write(put("t", "other prefix", 1))
    assert len(await store.scan("s", None, 100)) == 60  # not expired yet
    clock.now = WALL + 1000  # expired: the expiry is the first millisecond without the value
    assert await store.scan("s", None, 5) == kept[:5]
    assert await store.scan("s", "s03", 3) == kept[:3]
    assert await store.scan("s", "s52", 3) == kept[3:6]
    assert await store.scan("s", None, 100) == kept
    assert [r.key for r in await store.scan("", None, 11)] == [r.key for r in kept] + ["t"]
    assert store.digest().count == 11


async def test_a_write_plans_from_the_stored_expiry(stores: Stores) -> None:
    """An expired value is absent to a condition and to a write's outcome, reaped or not."""
    clock = FakeClock()
    store = await stores.open(now=clock)
    await store.write(expiring("k", "v", 1, WALL + 1000))
    assert await store.write(put("k", "w", 2), Condition("k", None)) == Conflict([Condition("k", v(1))])
    clock.now = WALL + 1000
    assert await store.write(put("k", "w", 2), Condition("k", v(1))) == Conflict([Condition("k", None)])
    assert await store.write(put("k", "w", 2), Condition("k", None)) is Outcome.CREATED
    assert await store.get("k") == put("k", "w", 2)


async def test_values_that_expire_are_known_again_after_reopen(stores: Stores) -> None:
    """A store reads which values expire when it opens: the count and the reaper use it."""
    clock = FakeClock()
    store = await stores.open(now=clock)
    await store.write(expiring("k", "v", 1, WALL + 1000))
    await store.write(put("p", "v", 2))
    reopened = pipeline(await stores.reopen(store, now=clock))
    assert reopened.digest().count == 2
    clock.now = WALL + 1000
    assert reopened.digest().count == 1
    await reopened.reap()
    assert await reopened.get("k") == Record("k", None, v(1))
    assert reopened.digest().count == 1


async def test_the_reaper_turns_an_expired_value_into_a_tombstone_of_the_same_version(
    stores: Stores,
) -> None:
    """docs/design.md, "Expiry": expiry never mints a version, so the digest does not change."""
    clock = FakeClock()
    store = await stores.open(now=clock)
    await store.write(expiring("k", "v", 1, WALL + 500))
    await store.write(put("p", "v", 2))
    before = store.digest()
    assert before.count == 2
    clock.now = WALL + 500
    await eventually(lambda: store.last_seq == 3, "the reaper to write the tombstone")
    assert await store.get("k") == Record("k", None, v(1))
    after = store.digest()
    assert after.count == 1
    assert (after.digest, after.buckets) == (before.digest, before.buckets)
    assert (await feed(store))[-1] == Change(3, Record("k", None, v(1)))
    # A later write of the key wins over the tombstone as over any other.
    assert await store.write(put("k", "again", 3)) is Outcome.CREATED


# --- transactions in the feed ---------------------------------------------------------------


async def test_a_transaction_is_one_unit_of_the_feed_never_split(stores: Stores) -> None:
    store = await stores.open()
    await store.write(put("x", "v", 1))  # seq 1
    a, b = put("a", "1", 2), Record("b", "2", v(3), FAR)
    outcomes = await store.transact([], [a, b, tomb("x", 4)])  # seqs 2, 3, 4; the entry at 4
    assert outcomes == [Outcome.CREATED, Outcome.CREATED, Outcome.DELETED]
    await store.write(put("y", "v", 5))  # seq 5
    entry = [Change(2, a, 4), Change(3, b, 4), Change(4, tomb("x", 4), 4)]
    assert await feed(store) == [*entry, Change(5, put("y", "v", 5))]
    # A limit counts the entry as one; a byte budget never splits it.
    assert await store.changes_since(0, 1) == FeedPage(entry, 4)
    assert await store.changes_since(0, 1, max_bytes=1) == FeedPage(entry, 4)
    first = change_size("a", "1")
    assert await store.changes_since(0, 100, max_bytes=first) == FeedPage(entry, 4)
    assert await store.changes_since(0, 2, max_bytes=10**6) == FeedPage(
        [*entry, Change(5, put("y", "v", 5))], 5
    )
    assert await store.changes_since(4, 100) == FeedPage([Change(5, put("y", "v", 5))], 5)
    reopened = await stores.reopen(store)
    assert await reopened.changes_since(0, 1) == FeedPage(entry, 4)


async def test_a_row_before_a_transaction_fills_a_page_the_entry_does_not_fit(
    stores: Stores,
) -> None:
    store = await stores.open()
    await store.write(put("x", "v" * 100, 1))
    await store.transact([], [put("a", "1", 2), put("b", "2", 3)])
    page = await store.changes_since(0, 100, max_bytes=change_size("x", "v" * 100) + 10)
    assert page == FeedPage([Change(1, put("x", "v" * 100, 1))], 1)
    page = await store.changes_since(page.until, 100, max_bytes=1)
    assert page == FeedPage([Change(2, put("a", "1", 2), 3), Change(3, put("b", "2", 3), 3)], 3)


async def test_a_key_written_again_after_its_transaction_is_no_longer_current_there(
    stores: Stores,
) -> None:
    store = await stores.open()
    a, b = put("a", "1", 1), put("b", "2", 2)
    await store.transact([], [a, b])  # seqs 1, 2; the entry at 2
    await store.write(put("a", "again", 3))  # seq 3
    # The entry serves the key's current row (never the older value the transaction wrote).
    expected = [
        Change(3, put("a", "again", 3), 2, current=False),
        Change(2, b, 2),
        Change(3, put("a", "again", 3)),
    ]
    assert await feed(store) == expected
    assert await store.changes_since(2, 100) == FeedPage(expected[2:], 3)
    reopened = await stores.reopen(store)
    assert await feed(reopened) == expected


async def test_a_peer_transaction_keeps_a_key_this_store_did_not_take(stores: Stores) -> None:
    """The entry names the key, and serves it at the newer state this store holds."""
    store = await stores.open()
    await store.apply([put("b", "newer", 9)])  # seq 1
    assert (await store.apply([put("a", "1", 1), put("b", "older", 2)], groups=[(0, 2)])).won == 1
    assert await feed(store) == [
        Change(1, put("b", "newer", 9)),
        Change(2, put("a", "1", 1), 2),
        Change(1, put("b", "newer", 9), 2, current=False),
    ]


async def test_an_entry_marks_known_what_its_reader_has_applied_already(stores: Stores) -> None:
    """A row the feed served at or below the reader's position is `known` when a later entry
    names its key, and the entry covering it does not come along: a peer takes only the key, to
    name it. Served again, a tombstone the reader had purged meanwhile would come back to it at a
    new sequence, and go round the cluster for ever (invariant 2)."""
    store = await stores.open()
    await store.apply([tomb("b", 9)])  # seq 1
    await store.transact([], [put("c", "1", 10), put("d", "1", 11)])  # seqs 2, 3; entry at 3
    await store.apply([put("a", "1", 1), put("b", "older", 2)], groups=[(0, 2)])  # seq 4
    await store.apply([put("e", "1", 1), put("c", "older", 2)], groups=[(0, 2)])  # seq 5
    assert (await store.changes_since(3, 10)).changes == [
        Change(4, put("a", "1", 1), 4),
        Change(1, tomb("b", 9), 4, current=False, known=True),
        Change(5, put("e", "1", 1), 5),
        Change(2, put("c", "1", 10), 5, current=False, known=True),
    ]
    # A reader from before those rows still gets them with the later entries, whole.
    assert (await store.changes_since(0, 10)).changes == [
        Change(1, tomb("b", 9)),
        Change(2, put("c", "1", 10), 3),
        Change(3, put("d", "1", 11), 3),
        Change(4, put("a", "1", 1), 4),
        Change(1, tomb("b", 9), 4, current=False),
        Change(5, put("e", "1", 1), 5),
        Change(2, put("c", "1", 10), 5, current=False),
        Change(3, put("d", "1", 11), 5, current=False),
    ]


async def test_an_entry_brings_along_the_transaction_that_wrote_its_key_again(
    stores: Stores,
) -> None:
    """A key of one transaction written again by a second: the first is served with the second
    whole, so a reader never holds the second's write of that key without its other writes."""
    store = await stores.open()
    await store.transact([], [put("a", "1", 1), put("b", "1", 2)])  # seqs 1, 2; entry at 2
    await store.transact([], [put("b", "2", 3), put("c", "2", 4)])  # seqs 3, 4; entry at 4
    page = await store.changes_since(0, 1)
    assert page == FeedPage(
        [
            Change(1, put("a", "1", 1), 2),
            Change(3, put("b", "2", 3), 2, current=False),
            Change(4, put("c", "2", 4), 2, current=False),
        ],
        2,
    )


async def test_an_entry_lives_while_it_covers_a_row_and_a_purge_drops_it_after(
    stores: Stores,
) -> None:
    store = await stores.open()
    a, b, c, d = put("a", "1", 1), put("b", "2", 2), put("c", "3", 3), put("d", "4", 4)
    await store.transact([], [a, b])  # the entry at 2
    await store.transact([], [c, d])  # the entry at 4
    assert await store.purge_tombstones(4, v(100, "")) == 0
    expected = [Change(1, a, 2), Change(2, b, 2), Change(3, c, 4), Change(4, d, 4)]
    assert await feed(store) == expected  # both still cover their rows
    await store.write(put("a", "again", 5))
    await store.write(put("b", "again", 6))
    assert await store.purge_tombstones(store.last_seq, v(100, "")) == 0
    reopened = await stores.reopen(store)
    # The first entry covers nothing any more: gone; its keys are served as plain rows.
    assert await feed(reopened) == [
        *expected[2:],
        Change(5, put("a", "again", 5)),
        Change(6, put("b", "again", 6)),
    ]


async def test_the_feed_floor_moves_with_a_purge_and_survives_reopen(stores: Stores) -> None:
    store = await stores.open()
    assert store.feed_floor == 0
    await store.write(put("k", "v", 1))
    await store.write(tomb("k", 2))
    await store.write(put("j", "v", 3))
    assert await store.purge_tombstones(2, v(100, "")) == 1
    assert store.feed_floor == 2
    assert await store.purge_tombstones(3, v(100, "")) == 0  # nothing purged: the floor stays
    assert store.feed_floor == 2
    reopened = await stores.reopen(store)
    assert reopened.feed_floor == 2
    assert reopened.last_seq == 3


async def test_what_a_purge_dropped_is_noted_in_its_commit_and_survives_reopen(
    stores: Stores,
) -> None:
    """`purged_before`: what a snapshot restore must not bring back (invariant 4). Raised only by
    a purge that drops a tombstone, never lowered."""
    store = await stores.open()
    assert store.purged_before == ""
    await store.write(put("k", "v", 1))
    await store.write(tomb("k", 2))
    assert await store.purge_tombstones(store.last_seq, v(100, "")) == 1
    assert store.purged_before == v(100, "")
    assert await store.purge_tombstones(store.last_seq, v(500, "")) == 0  # nothing went
    assert store.purged_before == v(100, "")
    await store.write(tomb("j", 3))  # a delete of an absent key writes nothing
    await store.write(put("j", "v", 4))
    await store.write(tomb("j", 5))
    assert await store.purge_tombstones(store.last_seq, v(50, "")) == 1  # a clock stepped back
    assert store.purged_before == v(100, "")
    reopened = await stores.reopen(store)
    assert reopened.purged_before == v(100, "")


async def test_a_transaction_whose_tombstone_was_purged_serves_nothing_for_that_key(
    stores: Stores,
) -> None:
    """A purged deletion is never served again, from an entry either (no key comes back)."""
    store = await stores.open()
    await store.write(put("k", "v", 1))  # seq 1
    await store.transact([], [tomb("k", 2), put("j", "w", 3)])  # seqs 2, 3; the entry at 3
    assert await store.purge_tombstones(2, v(100, "")) == 1
    assert await store.get("k") is None
    assert await feed(store) == [Change(3, put("j", "w", 3), 3)]


# --- snapshot reads (GET /v1/snapshot) --------------------------------------------------------


async def read_all(read: SnapshotRead, limit: int = 1000, max_bytes: int = 1 << 20) -> list[Record]:
    records: list[Record] = []
    try:
        while chunk := await read.next(limit, max_bytes):
            records.extend(chunk)
    finally:
        await read.close()
    return records


async def test_a_snapshot_holds_every_record_with_its_tombstone_version_and_expiry(
    store: Store,
) -> None:
    await store.write(put("a", "1", 1))
    await store.write(put("b", "", 2))
    await store.write(put("c", "3", 3))
    await store.write(tomb("c", 4))
    await store.write(expiring("d", "soon", 5, FAR))
    await store.transact([], [put("t1", "x", 6), put("t2", "y", 6)])
    read = await store.snapshot()
    assert (read.seq, read.count) == (store.last_seq, 6)
    records = await read_all(read)
    assert len(records) == 6, "each key once"
    assert sorted(records, key=lambda r: r.key) == [
        put("a", "1", 1),
        put("b", "", 2),
        tomb("c", 4),
        expiring("d", "soon", 5, FAR),
        put("t1", "x", 6),
        put("t2", "y", 6),
    ]


async def test_a_snapshot_is_one_point_in_time_while_writes_go_on(store: Store) -> None:
    await store.apply([put(f"k{i:03}", "before", 10) for i in range(300)])
    read = await store.snapshot()
    seq = read.seq
    first = await read.next(50, 1 << 20)
    # Rewritten, deleted and new keys, committed while the read is half-way: none of it shows.
    await store.apply([put(f"k{i:03}", "after", 20) for i in range(0, 300, 2)])
    await store.apply([tomb(f"k{i:03}", 21) for i in range(1, 300, 4)])
    await store.apply([put(f"new{i}", "after", 22) for i in range(50)])
    rest = await read_all(read, 50)
    records = first + rest
    assert read.seq == seq
    assert len(records) == 300
    assert {r.key for r in records} == {f"k{i:03}" for i in range(300)}
    assert all(r == put(r.key, "before", 10) for r in records)
    # A read begun now sees all of it.
    after = {r.key: r for r in await read_all(await store.snapshot())}
    assert len(after) == 350
    assert after["k000"] == put("k000", "after", 20)
    assert after["k001"] == tomb("k001", 21)


async def test_a_snapshot_hands_over_chunks_of_at_most_limit_and_about_max_bytes(store: Store) -> None:
    await store.apply([put(f"k{i}", "x" * 1000, 1) for i in range(20)])
    await store.apply([put("big", "y" * 50_000, 2)])
    read = await store.snapshot()
    sizes: list[int] = []
    try:
        while chunk := await read.next(7, 5_000):
            assert len(chunk) <= 7
            assert len(chunk) == 1 or sum(change_size(r.key, r.value) for r in chunk) <= 5_000
            sizes.append(len(chunk))
    finally:
        await read.close()
    assert sum(sizes) == 21
    assert await read.next() == [], "a closed read hands over nothing more"


async def test_an_empty_store_snapshots_to_nothing(store: Store) -> None:
    read = await store.snapshot()
    assert (read.seq, read.count) == (0, 0)
    assert await read_all(read) == []


# --- bulk copies (replication/copy.py) --------------------------------------------------------


async def test_bulk_load_merges_by_lww_and_saves_its_position_in_the_same_commit(
    store: Store,
) -> None:
    await store.write(put("b", "newer here", 9))
    position = CopyPosition("p", "inst", 42, "c")
    applied = await store.bulk_load([put("a", "1", 1), put("b", "older", 2), tomb("c", 3)], position)
    # The winners took the feed positions after the write, and nothing else took them.
    assert applied == Applied(2, 2, 3)
    page = await store.changes_since(1, 10)
    assert [(c.seq, c.record) for c in page.changes] == [(2, put("a", "1", 1)), (3, tomb("c", 3))]
    assert await state(store, ["a", "b", "c"]) == {
        "a": put("a", "1", 1),
        "b": put("b", "newer here", 9),
        "c": tomb("c", 3),
    }
    assert CopyPosition.decode("p", await store.get_meta(position.meta_name)) == position
    assert await store.checkpoint("p") is None  # the feed is read from `seq` only once it ends
    # Applied again (a resumed copy repeats nothing it need not): nothing more wins.
    assert (await store.bulk_load([put("a", "1", 1)], position)).won == 0


async def test_bulk_load_that_ends_a_copy_clears_its_position_and_sets_the_checkpoint(
    stores: Stores,
) -> None:
    store = await stores.open()
    position = CopyPosition("p", "inst", 42, "z")
    await store.bulk_load([put("a", "1", 1)], position)
    assert (await store.bulk_load([], position, done=True)).won == 0
    assert CopyPosition.decode("p", await store.get_meta(position.meta_name)) is None
    assert await store.checkpoint("p") == Checkpoint("p", "inst", 42)
    reopened = await stores.reopen(store)
    assert await reopened.checkpoint("p") == Checkpoint("p", "inst", 42)
    assert await reopened.get("a") == put("a", "1", 1)


async def test_failed_bulk_load_changes_nothing_not_even_the_position(stores: Stores) -> None:
    if stores.backend != "memory":
        pytest.skip("the memory backend is the one a test can make refuse a commit")
    store = await stores.open()
    data = MEMORY[stores.root / "a"]
    data.refuse = StoreUnavailable("no")
    with pytest.raises(StoreUnavailable):
        await store.bulk_load([put("a", "1", 1)], CopyPosition("p", "inst", 1, "a"))
    data.refuse = None
    assert await store.get("a") is None
    assert await store.get_meta("copy:p") is None


async def copy_all(store: Store, limit: int) -> list[list[Change]]:
    """Every page of a copy of `store`, passing on what each served as `skip`."""
    pages: list[list[Change]] = []
    after, served = "", set[int]()
    while True:
        page = await store.copy_page(after, limit, 10**6, served)
        pages.append(page.changes)
        served |= page.served
        after = page.after
        if page.done:
            return pages


async def test_copy_pages_hand_over_every_record_in_key_order_tombstones_too(
    stores: Stores,
) -> None:
    store = await stores.open()
    if stores.backend == "redis":
        with pytest.raises(CopyUnsupported):
            await store.copy_page("", 10, 10**6)
        return
    records = [put(f"k{i:02d}", f"v{i}", i + 1) for i in range(25)]
    await store.apply(random.Random(7).sample(records, len(records)))
    await store.write(tomb("k03", 90))
    await store.write(Record("k04", "ttl", v(91), FAR))
    pages = await copy_all(store, 10)
    assert [len(page) for page in pages] == [10, 10, 5]
    got = [change.record for page in pages for change in page]
    assert [r.key for r in got] == sorted(r.key for r in records)
    assert got[3] == tomb("k03", 90)
    assert got[4] == Record("k04", "ttl", v(91), FAR)
    # A page starts after the key the one before ended on; past the last key, an empty last page.
    page = await store.copy_page("k19", 100, 10**6)
    assert [c.record.key for c in page.changes] == [f"k{i:02d}" for i in range(20, 25)]
    assert page.done
    assert page.after == "k24"
    assert await store.copy_page("k24", 100, 10**6) == CopyPage([], "k24", True, set())
    # A byte budget ends a page early (after at least one record).
    small = await store.copy_page("", 100, 1)
    assert [c.record.key for c in small.changes] == ["k00"]
    assert not small.done


async def test_copy_pages_serve_a_transaction_whole_where_its_first_key_is_met(
    stores: Stores,
) -> None:
    store = await stores.open()
    if stores.backend == "redis":
        pytest.skip("a Redis store serves no copies (see the test above)")
    await store.apply([put(k, "old", 1) for k in "abcdefgh"])
    await store.transact([], [put("b", "txn", 10), put("g", "txn", 11)])
    pages = await copy_all(store, 2)
    # "b" brings "g" with it, in the same page; "g" is not met again on its own.
    assert [c.record.key for c in pages[0]] == ["a", "b", "g"]
    assert [c.record.key for page in pages[1:] for c in page] == ["c", "d", "e", "f", "h"]
    entry = pages[0][1:]
    assert {c.txn for c in entry} == {entry[0].txn}
    assert entry[0].txn != 0
    assert [c.record for c in entry] == [put("b", "txn", 10), put("g", "txn", 11)]


async def test_bulk_loading_every_page_of_a_copy_gives_the_same_digest(stores: Stores) -> None:
    source = await stores.open("source")
    if stores.backend == "redis":
        pytest.skip("a Redis store serves no copies")
    target = await stores.open("target")
    await source.apply([put(f"k{i:03d}", "v", i + 1) for i in range(60)])
    await source.write(tomb("k007", 100))
    await source.transact([], [put("k001", "t", 101), put("k050", "t", 102)])
    await target.write(put("k002", "target's newer", 500))
    await source.write(put("k002", "source's", 400))
    position = CopyPosition("source", source.instance_id, source.last_seq)
    for page in await copy_all(source, 7):
        records = [c.record for c in page]
        groups: list[tuple[int, int]] = []
        for index, change in enumerate(page):
            if change.txn and (not groups or page[groups[-1][0]].txn != change.txn):
                groups.append((index, index + 1))
            elif change.txn:
                groups[-1] = (groups[-1][0], index + 1)
        await target.bulk_load(records, position, groups)
    await target.bulk_load([], position, done=True)
    assert target.digest() != source.digest()  # the target's own newer write of k002 stays
    assert await target.get("k002") == put("k002", "target's newer", 500)
    await source.write(put("k002", "target's newer", 500))
    assert target.digest() == source.digest()
