"""The SQLite store's reads on its reader thread: listings, pages of the changes feed and of a
bulk copy, expiring values, a digest bucket. Each takes the reader's connection (run through
`SQLiteBackend._on_scan`); the feed and copy pages read in one read transaction each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from functools import partial

from shareddb.record import Record
from shareddb.store.base import (
    CHANGE_OVERHEAD,
    Change,
    CopyPage,
    FeedPage,
    change_size,
    prefix_end,
)
from shareddb.store.entries import FeedRow, copy_unit, decode_entry, serve_entry
from shareddb.store.expiry import Expiring
from shareddb.store.sqlite_schema import BUCKET, COPY, FEED


def expiring_rows(db: sqlite3.Connection, after: int, limit: int) -> list[Expiring]:
    rows = db.execute(
        "SELECT key, version, expires FROM kv WHERE expires > ? AND value IS NOT NULL "
        "ORDER BY expires LIMIT ?",
        (after, limit),
    )
    found: list[Expiring] = rows.fetchall()
    return found


def copy_rows(
    db: sqlite3.Connection, after: str, limit: int, max_bytes: int, skip: Collection[int]
) -> CopyPage:
    """One read transaction, along the primary key's index: a page of a bulk copy."""
    changes: list[Change] = []
    served = set(skip)
    total = 0
    read_to = after
    taken = 0
    db.execute("BEGIN")
    try:
        rows = db.execute(COPY, (after, limit))
        for key, value, version, seq, expires, txn in rows:
            if txn:
                unit = copy_unit(
                    Change(seq, Record(key, value, version, expires)),
                    txn,
                    served,
                    partial(_entry_items, db),
                    partial(_feed_row, db),
                )
                total += sum(change_size(c.record.key, c.record.value) for c in unit)
                changes.extend(unit)
            else:
                total += len(key) + len(value or "") + CHANGE_OVERHEAD
                changes.append(Change(seq, Record(key, value, version, expires)))
            read_to = key
            taken += 1
            if total >= max_bytes:
                break
        rows.close()
    finally:
        db.execute("COMMIT")
    return CopyPage(changes, read_to, taken < limit and total < max_bytes, served - set(skip))


def bucket_rows(db: sqlite3.Connection, bucket: int) -> dict[str, str]:
    """One digest bucket's rows, along kv_by_bucket: as many as the bucket holds, not the store."""
    return dict(db.execute(BUCKET, (bucket,)).fetchall())


def scan_rows(
    db: sqlite3.Connection, prefix: str, after: str | None, limit: int, now: int
) -> list[Record]:
    clauses = ["value IS NOT NULL", "(expires IS NULL OR expires > ?)"]
    args: list[object] = [now]
    if after is not None and after >= prefix:
        clauses.append("key > ?")
        args.append(after)
    elif prefix:
        clauses.append("key >= ?")
        args.append(prefix)
    end = prefix_end(prefix)
    if end is not None:
        clauses.append("key < ?")
        args.append(end)
    args.append(limit)
    where = " AND ".join(clauses)
    sql = f"SELECT key, value, version, expires FROM kv WHERE {where} ORDER BY key LIMIT ?"
    return [Record(*row) for row in db.execute(sql, args)]


def change_rows(
    db: sqlite3.Connection, seq: int, limit: int, max_bytes: int | None, known: int
) -> FeedPage:
    budget = float("inf") if max_bytes is None else max_bytes
    changes: list[Change] = []
    total = 0
    ended = True
    # One read transaction: the feed's last sequence comes from the snapshot the rows come
    # from, so `until` never covers a sequence committed after the rows were read.
    db.execute("BEGIN")
    try:
        last = db.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()
        rows = db.execute(FEED, (seq, seq, limit))
        # Rows come one at a time: a read that reaches the budget stops there.
        taken = 0
        read_to = seq  # the position of the last unit taken (an entry's may serve no change)
        for s, k, v, ver, expires, body in rows:
            unit = (
                [Change(s, Record(k, v, ver, expires))] if body is None else _entry_changes(db, s, known)
            )
            total += sum(change_size(c.record.key, c.record.value) for c in unit)
            if total > budget and changes:
                ended = False
                break
            changes.extend(unit)
            read_to = s
            taken += 1
        rows.close()
    finally:
        db.execute("COMMIT")
    if not ended or taken >= limit:
        return FeedPage(changes, read_to)
    return FeedPage(changes, max(seq, int(last[0]) if last else 0))


def _entry_items(db: sqlite3.Connection, entry: int) -> list[tuple[int, str]]:
    row = db.execute("SELECT body FROM txns WHERE seq = ?", (entry,)).fetchone()
    return [] if row is None else decode_entry(row[0])


def _feed_row(db: sqlite3.Connection, key: str) -> FeedRow | None:
    found: FeedRow | None = db.execute(
        "SELECT value, version, seq, expires, coalesce(txn, 0) FROM kv WHERE key = ?", (key,)
    ).fetchone()
    return found


def _entry_changes(db: sqlite3.Connection, at: int, known: int) -> list[Change]:
    """The changes the feed serves for the transaction entry at `at` (entries.serve_entry) to a
    reader that holds the feed up to `known`, read in the reader's transaction."""

    return serve_entry(at, known, partial(_entry_items, db), partial(_feed_row, db))
