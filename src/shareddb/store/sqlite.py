"""The embedded store: one SQLite file in WAL mode with one writer thread and group commit.

Writes from concurrent requests queue up while the writer thread commits the previous batch; the next
batch takes them all in one transaction and one fsync, and each caller is answered only after that
commit. Point reads run on the event loop on their own connection: in WAL mode a reader never waits
for the writer, so a read is not stalled behind a long batch. Scans and the changes feed run on a
reader thread so a large page never holds up the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shareddb.record import Record
from shareddb.store.base import (
    DIGEST_BUCKETS,
    Change,
    ChangeSignal,
    Checkpoint,
    Digest,
    FeedPage,
    MergePlan,
    Outcome,
    StoreFull,
    StoreUnavailable,
    bucket_of,
    change_size,
    combine_buckets,
    fail_all,
    prefix_end,
)
from shareddb.store.cache import RecordCache
from shareddb.store.sqlite_faults import (
    StoreCorrupt,
    StoreOpenError,
    check_integrity,
    is_corrupt,
    write_error,
)

log = logging.getLogger("shareddb.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   TEXT,               -- NULL: a tombstone left by a delete
    version TEXT NOT NULL,
    seq     INTEGER NOT NULL    -- position in this node's changes feed
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_by_seq ON kv (seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS digest (bucket INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    peer     TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq      INTEGER NOT NULL
) WITHOUT ROWID;
"""

UPSERT = """
INSERT INTO kv (key, value, version, seq) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, seq = excluded.seq
"""

MAX_BATCH = 4096
LOOKUP_CHUNK = 500
BUSY_TIMEOUT_MS = 10_000
# Checkpoints (copying the WAL back into the database file, with an fsync of its own) run on a
# thread of their own, so a commit never waits for one. Past WAL_LIMIT the writer checkpoints
# itself: back-pressure when the background checkpoints cannot keep up.
CHECKPOINT_PAUSE = 0.2
WAL_LIMIT = 512 * 1024 * 1024


@dataclass(slots=True)
class _Op:
    record: Record | None = None  # a client write
    records: Sequence[Record] = ()  # a batch from a peer
    checkpoint: Checkpoint | None = None
    meta: tuple[str, str] | None = None
    purge: tuple[int, str] | None = None  # (max seq, version bound) of tombstones to drop


@dataclass(frozen=True, slots=True)
class _State:
    seq: int
    live: int
    clock_high: int
    buckets: tuple[int, ...]


class SQLiteStore:
    """A `Store` in one SQLite file. See the module docstring for the threading model."""

    def __init__(
        self,
        path: Path,
        *,
        clock_high: Callable[[], int] = lambda: 0,
        synchronous: str = "FULL",
        vfs: str | None = None,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.path = path
        self._clock_source = clock_high
        self._new_instance = new_instance
        self._synchronous = synchronous
        self._vfs = vfs  # an SQLite VFS registered by name (the power-loss tests use their own)
        self._instance = ""
        # What the event loop sees (`_state`) is replaced whole after each commit, in `_resolve`;
        # the writer thread works ahead on `_written`. Neither is ever changed in place.
        self._state = _State(0, 0, 0, (0,) * DIGEST_BUCKETS)
        self._written = self._state
        self._stopping = threading.Event()
        self._queue: queue.SimpleQueue[tuple[_Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._cannot_write = False  # the last batch failed for want of disk (writer thread only)
        self._signal = ChangeSignal()
        self._cache = RecordCache()
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="shareddb-reader")
        self._wdb: sqlite3.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._scan: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            self._wdb = await loop.run_in_executor(self._reader_pool, self._open_writer)
            self._point = self._connect()
            self._scan = await loop.run_in_executor(self._reader_pool, self._connect)
        except StoreOpenError:
            self._reader_pool.shutdown()
            raise
        except (sqlite3.Error, OSError) as exc:
            self._reader_pool.shutdown()
            if isinstance(exc, sqlite3.Error) and is_corrupt(exc):
                raise StoreCorrupt(self.path, str(exc)) from None
            hint = "; is its disk full or read-only?" if isinstance(write_error(exc), StoreFull) else ""
            raise StoreOpenError(f"cannot open store {self.path}: {exc}{hint}") from exc
        self._writer = threading.Thread(target=self._write_loop, name="shareddb-writer", daemon=True)
        self._writer.start()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="shareddb-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _connect(self) -> sqlite3.Connection:
        target = self.path if self._vfs is None else f"file:{quote(str(self.path))}?vfs={self._vfs}"
        db = sqlite3.connect(
            target, uri=self._vfs is not None, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA mmap_size = 268435456")
        return db

    def _open_writer(self) -> sqlite3.Connection:
        db = self._connect()
        try:  # before anything reads the store's state or writes to it
            check_integrity(db, self.path)
        except BaseException:
            db.close()
            raise
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL is required")
        db.execute(f"PRAGMA synchronous = {self._synchronous}")
        db.execute("PRAGMA cache_size = -65536")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if "instance" not in meta:
            meta["instance"] = self._new_instance()
            db.execute("INSERT INTO meta (name, value) VALUES ('instance', ?)", (meta["instance"],))
        db.execute("COMMIT")
        self._instance = meta["instance"]
        buckets = [0] * DIGEST_BUCKETS
        for bucket, digest in db.execute("SELECT bucket, hash FROM digest"):
            buckets[bucket] = int.from_bytes(digest, "big")
        self._state = self._written = _State(
            int(meta.get("seq", 0)), int(meta.get("live", 0)), int(meta.get("hlc", 0)), tuple(buckets)
        )
        return db

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._writer is not None:
            self._queue.put(None)  # the writer commits everything queued before this, then stops
            await asyncio.to_thread(self._writer.join)
        if self._checkpointer is not None:
            self._stopping.set()
            self._checkpoint_due.set()
            await asyncio.to_thread(self._checkpointer.join)
        loop = asyncio.get_running_loop()
        if self._scan is not None:
            await loop.run_in_executor(self._reader_pool, self._scan.close)
        if self._point is not None:
            self._point.close()
            self._point = None
        self._reader_pool.shutdown()

    # -- reads ---------------------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        return self._instance

    @property
    def last_seq(self) -> int:
        return self._state.seq

    @property
    def clock_high(self) -> int:
        return self._state.clock_high

    def _reader(self) -> sqlite3.Connection:
        if self._point is None or self._closing:
            raise StoreUnavailable("store is not open")
        return self._point

    async def get(self, key: str) -> Record | None:
        record = self._cache.get(key)
        if record is not None and not self._closing:
            return record
        try:
            row = (
                self._reader().execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc
        if row is None:
            return None
        record = Record(key, row[0], row[1])
        self._cache.put(record)
        return record

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        row = self._read_one("SELECT instance, seq FROM checkpoints WHERE peer = ?", peer)
        return None if row is None else Checkpoint(peer, row[0], row[1])

    async def get_meta(self, name: str) -> str | None:
        row = self._read_one("SELECT value FROM node_meta WHERE name = ?", name)
        return None if row is None else str(row[0])

    def _read_one(self, sql: str, arg: str) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = self._reader().execute(sql, (arg,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc
        return row

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        records: list[Record] = await self._in_reader(self._scan_rows, prefix, after, limit)
        return records

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None = None) -> FeedPage:
        page: FeedPage = await self._in_reader(self._change_rows, seq, limit, max_bytes)
        return page

    async def wait_for_changes(self, seq: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._state.seq <= seq and (remaining := deadline - loop.time()) > 0:
            await self._signal.wait(remaining)

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        found: dict[str, str] = await self._in_reader(self._bucket_rows, bucket)
        return found

    def _bucket_rows(self, bucket: int) -> dict[str, str]:
        assert self._scan is not None
        rows = self._scan.execute("SELECT key, version FROM kv")
        return {key: version for key, version in rows if bucket_of(key) == bucket}

    def digest(self) -> Digest:
        state = self._state
        return Digest(state.live, combine_buckets(state.buckets), state.buckets)

    async def _in_reader(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closing:
            raise StoreUnavailable("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc

    def _scan_rows(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        assert self._scan is not None
        clauses = ["value IS NOT NULL"]
        args: list[object] = []
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
        sql = f"SELECT key, value, version FROM kv WHERE {' AND '.join(clauses)} ORDER BY key LIMIT ?"
        return [Record(k, v, ver) for k, v, ver in self._scan.execute(sql, args)]

    def _change_rows(self, seq: int, limit: int, max_bytes: int | None) -> FeedPage:
        db = self._scan
        assert db is not None
        budget = float("inf") if max_bytes is None else max_bytes
        changes: list[Change] = []
        total = 0
        ended = True
        # One read transaction: the feed's last sequence comes from the snapshot the rows come
        # from, so `until` never covers a sequence committed after the rows were read.
        db.execute("BEGIN")
        try:
            last = db.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()
            rows = db.execute(
                "SELECT seq, key, value, version FROM kv WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            # Rows come one at a time: a read that reaches the budget stops there.
            for s, k, v, ver in rows:
                total += change_size(k, v)
                if total > budget and changes:
                    ended = False
                    break
                changes.append(Change(s, Record(k, v, ver)))
            rows.close()
        finally:
            db.execute("COMMIT")
        if not ended or len(changes) >= limit:
            return FeedPage(changes, changes[-1].seq if changes else seq)
        return FeedPage(changes, max(seq, int(last[0]) if last else 0))

    # -- writes --------------------------------------------------------------------------------

    async def write(self, record: Record) -> Outcome:
        result: Outcome = await self._enqueue(_Op(record=record))
        return result

    async def apply(self, records: Sequence[Record], checkpoint: Checkpoint | None = None) -> int:
        result: int = await self._enqueue(_Op(records=records, checkpoint=checkpoint))
        return result

    async def set_meta(self, name: str, value: str) -> None:
        await self._enqueue(_Op(meta=(name, value)))

    async def purge_tombstones(self, max_seq: int, before: str) -> int:
        purged: int = await self._enqueue(_Op(purge=(max_seq, before)))
        return purged

    def _enqueue(self, op: _Op) -> asyncio.Future[Any]:
        if self._closing or self._writer is None:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put((op, future))
        return future

    def _write_loop(self) -> None:
        """The writer thread: commit whatever has queued up, one transaction per batch.

        It never waits for the event loop between batches: while one batch commits, the next one
        queues up, so the batch size grows with the load (the group commit).
        """
        assert self._wdb is not None
        assert self._loop is not None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                results, accepted, state = self._commit([op for op, _ in batch])
            except Exception as exc:
                error = write_error(exc)
                self._note_cannot_write(error)
                self._loop.call_soon_threadsafe(fail_all, [f for _, f in batch], error)
            else:
                self._note_cannot_write(None)
                self._loop.call_soon_threadsafe(self._resolve, batch, results, accepted, state)
            self._checkpoint_due.set()
            if self._wal_size() > WAL_LIMIT:
                with contextlib.suppress(sqlite3.Error):
                    self._wdb.execute("PRAGMA wal_checkpoint(RESTART)")
        self._wdb.close()

    def _note_cannot_write(self, error: StoreUnavailable | None) -> None:
        """Log when the disk stops and starts taking writes again, once each, not per write."""
        full = isinstance(error, StoreFull)
        if full and not self._cannot_write:
            log.error("%s; writes get 507 until it can, reads go on", error)
        elif not full and self._cannot_write and error is None:
            log.info("the store can write again")
        if full or error is None:
            self._cannot_write = full

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _checkpoint_loop(self) -> None:
        """The checkpoint thread: after writes, copy the WAL into the database file (PASSIVE: it
        never blocks the writer or readers)."""
        db = self._connect()
        try:
            while True:
                self._checkpoint_due.wait()
                self._stopping.wait(CHECKPOINT_PAUSE)  # let a burst of commits pile up first
                self._checkpoint_due.clear()
                # `close` sets _closing before it sets the event, so this sees it either way.
                if self._closing:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # a full disk, say: the next commit asks again
                    log.debug("checkpoint put off: %s", exc)
        except sqlite3.Error as exc:
            log.warning("checkpoint failed: %s", exc)
        finally:
            db.close()

    def _resolve(
        self,
        batch: list[tuple[_Op, asyncio.Future[Any]]],
        results: list[object],
        accepted: list[Record],
        state: _State,
    ) -> None:
        """On the event loop, after a commit: publish the new state, refresh the cache, then
        answer the writers."""
        self._state = state
        self._cache.committed(accepted)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        self._signal.notify()

    def _commit(self, ops: list[_Op]) -> tuple[list[object], list[Record], _State]:
        """Runs on the writer thread: one transaction, one fsync, for the whole batch.

        It makes few SQLite calls per batch (one lookup per 500 keys, one executemany), because
        each call releases and retakes the GIL, and a busy event loop makes every retake slow.
        """
        db = self._wdb
        assert db is not None
        base = self._written
        clock_high = max(base.clock_high, self._clock_source())
        keys = {op.record.key for op in ops if op.record is not None}
        keys.update(r.key for op in ops for r in op.records)
        results: list[object] = []
        purges: list[tuple[int, tuple[int, str]]] = []
        if db.in_transaction:  # the rollback after a failed commit failed too: retry it first
            db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        try:
            plan = MergePlan(self._lookup(db, keys), base.seq, base.live, base.buckets)
            for op in ops:
                if op.purge is not None:
                    purges.append((len(results), op.purge))
                    results.append(0)
                elif op.record is not None:
                    results.append(plan.merge(op.record, only_over_live=True))
                elif op.meta is not None:
                    db.execute("INSERT OR REPLACE INTO node_meta (name, value) VALUES (?, ?)", op.meta)
                    results.append(None)
                else:
                    won = 0
                    for record in op.records:
                        won += plan.merge(record) is not Outcome.SUPERSEDED
                    if op.checkpoint is not None:
                        cp = op.checkpoint
                        db.execute(
                            "INSERT OR REPLACE INTO checkpoints (peer, instance, seq) VALUES (?, ?, ?)",
                            (cp.peer, cp.instance, cp.seq),
                        )
                    results.append(won)
            db.executemany(UPSERT, plan.rows.values())
            # After the upserts, so a purge sees this batch's writes (same transaction).
            for index, (max_seq, before) in purges:
                doomed = db.execute(
                    "SELECT key, version FROM kv WHERE value IS NULL AND seq <= ? AND version < ?",
                    (max_seq, before),
                ).fetchall()
                for key, version in doomed:
                    plan.forget(key, version)
                db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key, _ in doomed])
                results[index] = len(doomed)
                plan.accepted.extend(Record(key, None, "") for key, _ in doomed)
            db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("seq", str(plan.seq)), ("live", str(plan.live)), ("hlc", str(clock_high))],
            )
            db.executemany(
                "INSERT OR REPLACE INTO digest (bucket, hash) VALUES (?, ?)",
                [(b, h.to_bytes(16, "big")) for b, h in plan.buckets.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full, I/O error) leaves the transaction open; roll it back so
            # the connection takes the next batch. The original error is the one that matters.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        buckets = list(base.buckets)
        for bucket, value in plan.buckets.items():
            buckets[bucket] = value
        self._written = _State(plan.seq, plan.live, clock_high, tuple(buckets))
        return results, plan.accepted, self._written

    @staticmethod
    def _lookup(db: sqlite3.Connection, keys: set[str]) -> dict[str, tuple[bool, str]]:
        """The stored (live, version) of each of `keys` that exists."""
        found: dict[str, tuple[bool, str]] = {}
        pending = list(keys)
        for start in range(0, len(pending), LOOKUP_CHUNK):
            chunk = pending[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, value IS NOT NULL, version FROM kv WHERE key IN ({marks})"
            for key, live, version in db.execute(sql, chunk):
                found[key] = (bool(live), version)
        return found


def sqlite_path(data_dir: Path) -> Path:
    return data_dir / "shareddb.sqlite3"
