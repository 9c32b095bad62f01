"""The SQLite store's tables, the statements its hot paths run, and the upgrade of older files."""

from __future__ import annotations

import logging
import sqlite3
import time

from shareddb.store.base import bucket_of

log = logging.getLogger("shareddb.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   TEXT,               -- NULL: a tombstone left by a delete
    version TEXT NOT NULL,
    seq     INTEGER NOT NULL,   -- position in this node's changes feed
    expires INTEGER,            -- wall-clock ms when the value expires; NULL: never
    txn     INTEGER,            -- the seq of the transaction entry that covers it in the feed
    bucket  INTEGER,            -- the key's digest bucket (base.bucket_of), in kv_by_bucket
    fresh   INTEGER             -- the bucket of a key new since the last settling, not indexed yet
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_by_seq ON kv (seq);
-- A transaction of the feed, kept while it covers a row of kv (store/entries.py).
CREATE TABLE IF NOT EXISTS txns (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS digest (bucket INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    peer     TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    epoch    TEXT NOT NULL DEFAULT ''  -- the epoch of the peer's feed (replication/epochs.py)
) WITHOUT ROWID;
"""

# Rows go in as `UPSERT_HEAD VALUES (...), (...) UPSERT_TAIL` (sqlite_rows.insert_rows). A new
# key's bucket goes into `fresh`, which no index covers; a key's bucket never changes, so an update
# leaves both columns as they are. SETTLE moves the fresh buckets into kv_by_bucket a few thousand
# at a time (docs/design.md, "Keys at scale": one index entry per commit scattered over 256 places
# cost a write of a new key a quarter of its throughput).
UPSERT_HEAD = "INSERT INTO kv (key, value, version, seq, expires, txn, fresh)"
UPSERT_WIDTH = 7
UPSERT_TAIL = """
ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version,
    seq = excluded.seq, expires = excluded.expires, txn = excluded.txn
"""
# Stores made before expiry, transactions, stored buckets and feed epochs gain their columns and
# indexes: (table, column, statement).
UPGRADES = (
    ("kv", "expires", "ALTER TABLE kv ADD COLUMN expires INTEGER"),
    ("kv", "txn", "ALTER TABLE kv ADD COLUMN txn INTEGER"),
    ("kv", "bucket", "ALTER TABLE kv ADD COLUMN bucket INTEGER"),
    ("kv", "fresh", "ALTER TABLE kv ADD COLUMN fresh INTEGER"),
    ("checkpoints", "epoch", "ALTER TABLE checkpoints ADD COLUMN epoch TEXT NOT NULL DEFAULT ''"),
)
INDEXES = """
CREATE INDEX IF NOT EXISTS kv_expiring ON kv (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS kv_by_txn ON kv (txn) WHERE txn IS NOT NULL;
CREATE INDEX IF NOT EXISTS kv_by_bucket ON kv (bucket) WHERE bucket IS NOT NULL;
"""
# Every row at or below meta 'settled' (a sequence number) has its bucket in `bucket`; above it,
# a row has it in `bucket` or, when its key is new since, in `fresh`. The writer settles once
# SETTLE_EVERY rows were written since (SQLiteBackend._transaction), in the batch's transaction.
SETTLE_EVERY = 4096
SETTLE = "UPDATE kv SET bucket = fresh, fresh = NULL WHERE seq > ? AND fresh IS NOT NULL"
# One digest bucket's keys and versions, in one statement (one snapshot): along kv_by_bucket, and
# the rows written since the last settling along kv_by_seq (at most about SETTLE_EVERY of them).
BUCKET = """
SELECT key, version FROM kv WHERE bucket = ?1
UNION ALL
SELECT key, version FROM kv
WHERE seq > (SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta WHERE name = 'settled')
    AND fresh = ?1
"""
FILL_CHUNK = 100_000  # rows of an older store given their bucket per transaction
FEED = """
SELECT seq, key, value, version, expires, NULL FROM kv WHERE seq > ? AND txn IS NULL
UNION ALL
SELECT seq, NULL, NULL, NULL, NULL, body FROM txns WHERE seq > ?
ORDER BY 1 LIMIT ?
"""

# A page of a bulk copy: every row (tombstones too) by key, along the primary key's index.
COPY = """
SELECT key, value, version, seq, expires, coalesce(txn, 0) FROM kv WHERE key > ? ORDER BY key LIMIT ?
"""


def create_or_upgrade(db: sqlite3.Connection) -> None:
    """Make the tables of a new store, or add to an older store what it lacks (idempotent)."""
    db.executescript(SCHEMA)
    for table, column, upgrade in UPGRADES:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(upgrade)
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    if "kv_by_bucket" not in indexes:
        fill_buckets(db)
    db.executescript(INDEXES)


def settled(db: sqlite3.Connection) -> int:
    """The sequence number at or below which every row's bucket is indexed."""
    row = db.execute("SELECT value FROM meta WHERE name = 'settled'").fetchone()
    return int(row[0]) if row else 0


def fill_buckets(db: sqlite3.Connection) -> None:
    """Give each row of a store made before the bucket column its bucket, once, before the index
    on it is made (the index exists only once every row has one). Along the rowids, a chunk per
    transaction, the WAL emptied after each: a store cut off half way resumes where it stopped,
    and the WAL never holds more than a chunk, however large the store."""
    db.create_function("shareddb_bucket", 1, bucket_of, deterministic=True)
    (top,) = db.execute("SELECT coalesce(max(rowid), 0) FROM kv").fetchone()
    if not top:
        return
    started = time.monotonic()
    log.info("giving the rows of a store made by an older shareddb their digest bucket (once)")
    for low in range(0, top, FILL_CHUNK):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE kv SET bucket = shareddb_bucket(key) "
            "WHERE rowid > ? AND rowid <= ? AND bucket IS NULL",
            (low, low + FILL_CHUNK),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute(
        "INSERT OR REPLACE INTO meta (name, value) SELECT 'settled', value FROM meta WHERE name = 'seq'"
    )
    log.info("digest buckets stored in %.1f s", time.monotonic() - started)
