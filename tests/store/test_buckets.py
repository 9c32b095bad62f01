"""Listing one digest bucket (`Store.bucket_versions`, GET /v1/digest?bucket=N) reads an index of keys
by bucket, kept up by every commit: what it lists is exactly the keys of that bucket, tombstones
included, after any kind of write, purge and reopen, on every backend. An SQLite store made before
the index gains it when it opens (docs/design.md, "Keys at scale").
"""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from shareddb.record import Record, make_version
from shareddb.store.base import DIGEST_BUCKETS, CopyPosition, Store, bucket_of, record_hash
from shareddb.store.sqlite import SQLiteStore
from shareddb.store.sqlite_schema import BUCKET, SETTLE, SETTLE_EVERY
from tests.store.test_contract import BACKENDS, read_all

CROWDED = 7  # a bucket given more keys than one page of a Redis listing (redis_buckets.PAGE)


def v(hlc: int, node: str = "n1") -> str:
    return make_version(hlc, node)


def keys_in(bucket: int, count: int, prefix: str = "c") -> list[str]:
    found = (f"{prefix}{i}" for i in itertools.count())
    return list(itertools.islice((k for k in found if bucket_of(k) == bucket), count))


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_store(backend: str, where: Path) -> Store:
    where.mkdir(exist_ok=True)
    return BACKENDS[backend](where, lambda: 0)


async def open_store(backend: str, where: Path) -> Store:
    store = new_store(backend, where)
    await store.open()
    return store


async def assert_buckets_list_exactly_their_keys(store: Store) -> dict[str, str]:
    """Every bucket's listing is the filter, by `bucket_of`, of every record the store holds."""
    read = await store.snapshot()
    records = await read_all(read)
    expected: dict[int, dict[str, str]] = {b: {} for b in range(DIGEST_BUCKETS)}
    for record in records:
        expected[bucket_of(record.key)][record.key] = record.version
    for bucket in range(DIGEST_BUCKETS):
        assert await store.bucket_versions(bucket) == expected[bucket], f"bucket {bucket}"
    return {record.key: record.version for record in records}


async def test_a_bucket_lists_exactly_its_keys_after_every_kind_of_write(
    backend: str, tmp_path: Path
) -> None:
    store = await open_store(backend, tmp_path / "a")
    try:
        crowded = keys_in(CROWDED, 1100)
        await store.apply([Record(k, "x", v(10)) for k in crowded])
        await store.apply([Record(f"k{i}", str(i), v(20 + i)) for i in range(600)])
        for i in range(0, 600, 7):  # tombstones are listed too
            await store.write(Record(f"k{i}", None, v(1000 + i)))
        await store.write(Record("gone", None, v(5)))  # a delete of an absent key writes nothing
        await store.transact([], [Record("t1", "a", v(2000)), Record("t2", "b", v(2000))])
        await store.bulk_load(
            [Record(f"copied{i}", "y", v(3000 + i)) for i in range(50)],
            CopyPosition("peer", "instance", 9, "copied49"),
        )
        await store.apply([Record(k, None, v(50)) for k in crowded[:300]])  # old tombstones
        listed = await assert_buckets_list_exactly_their_keys(store)
        assert len(listed) == 1100 + 600 + 2 + 50
        assert len(await store.bucket_versions(CROWDED)) >= 1100

        assert await store.purge_tombstones(store.last_seq, v(100, "")) == 300
        listed = await assert_buckets_list_exactly_their_keys(store)
        assert not set(crowded[:300]) & set(listed), "a purged key is still listed"
        assert "k7" in listed  # a tombstone newer than the purge's bound stays
    finally:
        await store.close()

    store = await open_store(backend, tmp_path / "a")
    try:
        await store.write(Record("after-reopen", "z", v(9000)))
        listed = await assert_buckets_list_exactly_their_keys(store)
        assert listed["after-reopen"] == v(9000)
    finally:
        await store.close()


# -- an SQLite store made before the bucket column ------------------------------------------------

# The schema as shareddb wrote it before kv had its bucket column (sqlite_schema.py at that time).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   TEXT,               -- NULL: a tombstone left by a delete
    version TEXT NOT NULL,
    seq     INTEGER NOT NULL,   -- position in this node's changes feed
    expires INTEGER,            -- wall-clock ms when the value expires; NULL: never
    txn     INTEGER             -- the seq of the transaction entry that covers it in the feed
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_by_seq ON kv (seq);
CREATE TABLE IF NOT EXISTS txns (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS digest (bucket INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    peer     TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiring ON kv (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS kv_by_txn ON kv (txn) WHERE txn IS NOT NULL;
"""
OLD_ROWS = 2500


def make_old_store(path: Path) -> dict[str, str]:
    """A store file as the code before the bucket column left it: rows (every tenth a
    tombstone), with its live count, sequence and digest. Returns key -> version."""
    rows = [
        (f"old{i:05d}", None if i % 10 == 0 else f"value {i}", v(i + 1), i + 1) for i in range(OLD_ROWS)
    ]
    buckets = [0] * DIGEST_BUCKETS
    for key, _, version, _ in rows:
        buckets[bucket_of(key)] ^= record_hash(key, version)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(OLD_SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT INTO kv (key, value, version, seq) VALUES (?, ?, ?, ?)", rows)
        live = sum(value is not None for _, value, _, _ in rows)
        db.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [("instance", "0" * 32), ("seq", str(OLD_ROWS)), ("live", str(live)), ("hlc", "0")],
        )
        db.executemany(
            "INSERT INTO digest (bucket, hash) VALUES (?, ?)",
            [(b, h.to_bytes(16, "big")) for b, h in enumerate(buckets) if h],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return {key: version for key, _, version, _ in rows}


def bucket_column(path: Path) -> list[tuple[str, int | None, int | None]]:
    """Each row's key, indexed bucket and fresh bucket (sqlite_schema.SETTLE)."""
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT key, bucket, fresh FROM kv ORDER BY key"))


def query_plan(path: Path, sql: str, *args: object) -> str:
    with sqlite3.connect(path) as db:
        return " ".join(str(row) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))


@pytest.mark.parametrize("cut_off", [False, True], ids=["whole", "resumed"])
async def test_an_sqlite_store_made_before_the_bucket_column_gets_it_when_it_opens(
    tmp_path: Path, cut_off: bool
) -> None:
    path = tmp_path / "old.sqlite3"
    versions = make_old_store(path)
    if cut_off:  # an upgrade cut off half way: the column there, some rows filled, no index yet
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE kv ADD COLUMN bucket INTEGER")
            first = sorted(versions)[:1000]
            db.executemany("UPDATE kv SET bucket = ? WHERE key = ?", [(bucket_of(k), k) for k in first])
    store = SQLiteStore(path)
    await store.open()
    try:
        before = store.digest()
        assert before.count == OLD_ROWS - OLD_ROWS // 10
        listed = await assert_buckets_list_exactly_their_keys(store)
        assert listed == versions
        await store.write(Record("new", "n", v(10_000)))
        assert (await store.bucket_versions(bucket_of("new")))["new"] == v(10_000)
    finally:
        await store.close()
    stored = bucket_column(path)
    assert len(stored) == OLD_ROWS + 1
    wrong = [row for row in stored if row[1:] != (bucket_of(row[0]), None) and row[0] != "new"]
    assert not wrong, f"rows with a wrong bucket: {wrong[:5]}"
    assert ("new", None, bucket_of("new")) in stored
    plan = query_plan(path, BUCKET, 3)
    assert "kv_by_bucket" in plan, f"a bucket listing does not read along its index: {plan}"
    assert "kv_by_seq" in plan, f"a bucket listing reads every row for the fresh ones: {plan}"


async def test_new_keys_go_into_the_bucket_index_together_and_are_listed_before_and_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.apply([Record(f"a{i}", "x", v(i + 1)) for i in range(100)])
        assert {row[1] for row in bucket_column(path)} == {None}, "indexed one commit at a time"
        await assert_buckets_list_exactly_their_keys(store)
        await store.apply([Record(f"b{i}", "x", v(1000 + i)) for i in range(SETTLE_EVERY)])
        await store.apply([Record("a1", "again", v(9000)), Record("c", "x", v(9001))])
        listed = await assert_buckets_list_exactly_their_keys(store)
        assert listed["a1"] == v(9000)
    finally:
        await store.close()
    rows = {key: (bucket, fresh) for key, bucket, fresh in bucket_column(path)}
    settled_rows = [key for key in rows if key != "c"]
    assert all(rows[key] == (bucket_of(key), None) for key in settled_rows)
    assert rows["c"] == (None, bucket_of("c"))
    plan = query_plan(path, SETTLE, 0)
    assert "kv_by_seq" in plan, f"settling reads every row: {plan}"


async def test_an_update_of_a_key_keeps_its_row_in_its_bucket(tmp_path: Path) -> None:
    """The upsert leaves the bucket column out of its update: a row written again keeps it."""
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        for hlc in (1, 2, 3):
            await store.write(Record("key", str(hlc), v(hlc)))
        await store.write(Record("key", None, v(4)))
        assert await store.bucket_versions(bucket_of("key")) == {"key": v(4)}
    finally:
        await store.close()
    assert bucket_column(path) == [("key", None, bucket_of("key"))]
