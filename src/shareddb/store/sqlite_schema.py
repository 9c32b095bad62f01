"""The SQLite store's tables, the statements its hot paths run, and the upgrade of older files."""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   TEXT,               -- NULL: a tombstone left by a delete
    version TEXT NOT NULL,
    seq     INTEGER NOT NULL,   -- position in this node's changes feed
    expires INTEGER,            -- wall-clock ms when the value expires; NULL: never
    txn     INTEGER             -- the seq of the transaction entry that covers it in the feed
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
    seq      INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Rows go in as `UPSERT_HEAD VALUES (...), (...) UPSERT_TAIL` (sqlite_rows.insert_rows).
UPSERT_HEAD = "INSERT INTO kv (key, value, version, seq, expires, txn)"
UPSERT_TAIL = """
ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version,
    seq = excluded.seq, expires = excluded.expires, txn = excluded.txn
"""
# Stores made before expiry and transactions gain their columns and indexes.
UPGRADES = (
    ("expires", "ALTER TABLE kv ADD COLUMN expires INTEGER"),
    ("txn", "ALTER TABLE kv ADD COLUMN txn INTEGER"),
)
INDEXES = """
CREATE INDEX IF NOT EXISTS kv_expiring ON kv (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS kv_by_txn ON kv (txn) WHERE txn IS NOT NULL;
"""
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
    columns = {row[1] for row in db.execute("PRAGMA table_info(kv)")}
    for column, upgrade in UPGRADES:
        if column not in columns:
            db.execute(upgrade)
    db.executescript(INDEXES)
