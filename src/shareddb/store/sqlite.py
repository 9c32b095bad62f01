"""The embedded store: one SQLite file in WAL mode, written by one writer thread.

The write pipeline (store/pipeline.py) group-commits; this backend writes each batch in one hand-off
to its writer thread: the lookup, the planning and the write run there in one transaction with one
fsync, in few SQLite calls (each call releases and retakes the GIL, and a busy event loop makes
every retake slow). Point reads run on the event loop on their own connection, the reads of one turn
of the loop in one read transaction (store/sqlite_point.py): in WAL mode a reader never waits for
the writer, so a read is not stalled behind a long batch. Scans and the changes feed run on a
reader thread so a large page never holds up the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shareddb.record import Record, incarnation_of
from shareddb.store.base import (
    DIGEST_BUCKETS,
    Checkpoint,
    CopyPage,
    FeedPage,
    StoreFull,
    StoreUnavailable,
    bucket_of,
    earlier_lives,
)
from shareddb.store.entries import encode_entry
from shareddb.store.expiry import Expiring
from shareddb.store.pipeline import PipelineStore, wall_millis
from shareddb.store.plan import Batch, Planner, Stored, Tally, Tombstones
from shareddb.store.sqlite_faults import (
    StoreCorrupt,
    StoreOpenError,
    check_integrity,
    is_corrupt,
    write_error,
)
from shareddb.store.sqlite_file import file_identity, same_file
from shareddb.store.sqlite_point import PointReads
from shareddb.store.sqlite_reads import (
    bucket_rows,
    change_rows,
    copy_rows,
    expiring_rows,
    scan_rows,
)
from shareddb.store.sqlite_rows import insert_rows, lookup
from shareddb.store.sqlite_schema import (
    SETTLE,
    SETTLE_EVERY,
    UPSERT_HEAD,
    UPSERT_TAIL,
    UPSERT_WIDTH,
    create_or_upgrade,
    settled,
)
from shareddb.store.sqlite_snapshot import SQLiteSnapshotRead
from shareddb.store.sqlite_wal import WalCheckpoints
from shareddb.store.writer_thread import WriterThread

log = logging.getLogger("shareddb.store")

LOOKUP_ON_LOOP = 500  # keys a replication lookup reads on the event loop; more go to the reader
BUSY_TIMEOUT_MS = 10_000
# Connections read the file through a memory map of its first 256 MiB; mapped pages are the
# kernel's page cache, shared and reclaimable, not the node's own memory. Point reads (GETs, on
# the event loop and in worker processes) map nothing: in WAL mode SQLite drops a reader's map,
# and its page cache, whenever another connection committed since the reader's last read, so
# under writes a mapped point read faulted its pages in again after every commit. Read into the
# connection's page cache instead, a GET of a 10M-key store taking writes costs 10-40% less CPU,
# and about 6% more without writes (docs/design.md, "Keys at scale").
MMAP_BYTES = 256 * 1024 * 1024
POINT_MMAP_BYTES = 0


class SQLiteBackend:
    """A pipeline `Backend` in one SQLite file. See the module docstring for the threading model."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        vfs: str | None = None,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.path = path
        self._new_instance = new_instance
        self._synchronous = synchronous
        self._vfs = vfs  # an SQLite VFS registered by name (the power-loss tests use their own)
        self._instance = ""
        # Replaced whole, on the event loop, once a commit is back from the writer thread.
        self._tally = Tally.empty()
        self._checkpoints = WalCheckpoints(path, self._connect)
        self._closing = False
        self._writer = WriterThread()
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="shareddb-reader")
        self._wdb: sqlite3.Connection | None = None
        self._point: PointReads | None = None
        self._scan: sqlite3.Connection | None = None
        self._snapshots = 0  # snapshot reads open now (SQLiteSnapshotRead)
        self._settled = 0  # meta 'settled', on the writer thread (sqlite_schema.SETTLE)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._wdb = await self._writer.call(self._open_writer)
            self._point = PointReads(self._connect(POINT_MMAP_BYTES))
            self._scan = await loop.run_in_executor(self._reader_pool, self._connect)
        except StoreOpenError:
            self._abandon()
            raise
        except (sqlite3.Error, OSError) as exc:
            self._abandon()
            if isinstance(exc, sqlite3.Error) and is_corrupt(exc):
                raise StoreCorrupt(self.path, str(exc)) from None
            hint = "; is its disk full or read-only?" if isinstance(write_error(exc), StoreFull) else ""
            raise StoreOpenError(f"cannot open store {self.path}: {exc}{hint}") from exc
        self._checkpoints.start()

    def _abandon(self) -> None:
        """A failed open: release what it opened; the store stays closed."""
        self._closing = True
        if self._wdb is not None:
            self._wdb.close()
        if self._point is not None:
            self._point.close()
        self._wdb = self._point = None
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        self._writer.stop()
        self._reader_pool.shutdown()

    def _connect(self, mmap_bytes: int = MMAP_BYTES) -> sqlite3.Connection:
        target = self.path if self._vfs is None else f"file:{quote(str(self.path))}?vfs={self._vfs}"
        db = sqlite3.connect(
            target, uri=self._vfs is not None, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA mmap_size = {mmap_bytes}")
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
        create_or_upgrade(db)
        # Statement journals in memory, not spilled to a temporary file in most batches
        # (docs/design.md, "What a write costs"); set after the upgrades, whose index builds sort.
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("BEGIN IMMEDIATE")
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if "instance" not in meta:
            meta["instance"] = self._new_instance()
            db.execute("INSERT INTO meta (name, value) VALUES ('instance', ?)", (meta["instance"],))
        meta["instance"] = self._own_file(db, meta)
        db.execute("COMMIT")
        self._instance = meta["instance"]
        self._settled = settled(db)
        buckets = [0] * DIGEST_BUCKETS
        for bucket, digest in db.execute("SELECT bucket, hash FROM digest"):
            buckets[bucket] = int.from_bytes(digest, "big")
        self._tally = Tally(
            int(meta.get("seq", 0)),
            int(meta.get("live", 0)),
            int(meta.get("hlc", 0)),
            tuple(buckets),
            int(meta.get("floor", 0)),
        )
        return db

    def _own_file(self, db: sqlite3.Connection, meta: dict[str, str]) -> str:
        """The store's instance id, a new one when this file is a copy of the one the store was
        written in (docs/design.md, "Identity": "A copy of the store").

        The store notes the file it lives in (its inode number). A copy (a data directory
        restored from a backup, or moved to another disk) lives in another file and may hold less
        than its original came to hold: versions this life minted after the copy was taken, and
        the clock's high-water mark above them, are not in it. Started on the copy with the same
        incarnation and a clock behind those versions (one that stands still, or ran fast
        before), the node could give one of them to another value: a split no merge repairs. So
        the copy is another life of the node, with an incarnation of its own, as a wiped node
        is; the incarnation it was copied from is kept in `earlier_lives` (a node whose earlier
        life left or was removed stays out, `Node.open`)."""
        instance, file = meta["instance"], file_identity(self.path)
        noted = meta.get("file")
        if noted is not None and not same_file(noted, file):
            row = db.execute("SELECT value FROM node_meta WHERE name = 'earlier_lives'").fetchone()
            db.execute(
                "INSERT OR REPLACE INTO node_meta (name, value) VALUES ('earlier_lives', ?)",
                (earlier_lives(row[0] if row else None, instance),),
            )
            earlier = incarnation_of(instance)
            instance = self._new_instance()
            db.execute("UPDATE meta SET value = ? WHERE name = 'instance'", (instance,))
            log.warning(
                "%s is a copy of the file this store was written in (restored from a backup, or "
                "moved): the node starts a new life (incarnation %s, was %s), and its peers send "
                "it what the copy lacks",
                self.path,
                incarnation_of(instance),
                earlier,
            )
        if noted != file:
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('file', ?)", (file,))
        return instance

    async def close(self) -> None:
        """Called by the pipeline once its last batch is written."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        if self._wdb is not None:
            await self._writer.call(self._wdb.close)
        await self._checkpoints.stop()
        if self._scan is not None:
            await loop.run_in_executor(self._reader_pool, self._scan.close)
        if self._point is not None:
            self._point.close()
            self._point = None
        self._shutdown_pools()

    # -- reads ---------------------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        return self._instance

    @property
    def tally(self) -> Tally:
        return self._tally

    @property
    def cache_valid(self) -> bool:
        return True  # only this store's own commits change the file

    def _reader(self) -> sqlite3.Connection:
        if self._point is None or self._closing:
            raise StoreUnavailable("store is not open")
        return self._point.connection()

    async def get(self, key: str) -> Record | None:
        row = self._read_one("SELECT value, version, expires FROM kv WHERE key = ?", key)
        return None if row is None else Record(key, row[0], row[1], row[2])

    async def lookup(self, keys: Collection[str]) -> Stored:
        """On the event loop, as `get`, when the keys fit in one query; else on the reader."""
        if len(keys) > LOOKUP_ON_LOOP:
            found: Stored = await self._in_reader(self._lookup_with_scan, keys)
            return found
        try:
            return lookup(self._reader(), keys)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc

    def _lookup_with_scan(self, keys: Collection[str]) -> Stored:
        assert self._scan is not None
        return lookup(self._scan, keys)

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        row = self._read_one("SELECT instance, seq, epoch FROM checkpoints WHERE peer = ?", peer)
        return None if row is None else Checkpoint(peer, row[0], row[1], row[2])

    async def get_meta(self, name: str) -> str | None:
        row = self._read_one("SELECT value FROM node_meta WHERE name = ?", name)
        return None if row is None else str(row[0])

    def _read_one(self, sql: str, arg: str) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = self._reader().execute(sql, (arg,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc
        return row

    async def scan(self, prefix: str, after: str | None, limit: int, now: int) -> list[Record]:
        records: list[Record] = await self._on_scan(scan_rows, prefix, after, limit, now)
        return records

    async def expiring(self, after: int, limit: int) -> list[Expiring]:
        found: list[Expiring] = await self._on_scan(expiring_rows, after, limit)
        return found

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None, known: int) -> FeedPage:
        page: FeedPage = await self._on_scan(change_rows, seq, limit, max_bytes, known)
        return page

    async def copy_page(self, after: str, limit: int, max_bytes: int, skip: Collection[int]) -> CopyPage:
        page: CopyPage = await self._on_scan(copy_rows, after, limit, max_bytes, skip)
        return page

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        found: dict[str, str] = await self._on_scan(bucket_rows, bucket)
        return found

    async def snapshot(self) -> SQLiteSnapshotRead:
        """A read transaction on a connection of its own: in WAL mode it sees the file as of its
        first read for as long as it stays open, while the writer goes on committing."""
        read: SQLiteSnapshotRead = await self._in_reader(self._begin_snapshot)
        self._snapshots += 1  # on the event loop, as `close` takes it back
        return read

    def _begin_snapshot(self) -> SQLiteSnapshotRead:
        db = self._connect()
        try:
            # Read, not mapped: mapped pages of the file would count in the node's RSS.
            db.execute("PRAGMA mmap_size = 0")
            db.execute("BEGIN")
            seq = db.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()
            (count,) = db.execute("SELECT count(*) FROM kv").fetchone()
            rows = db.execute("SELECT key, value, version, expires FROM kv")
        except BaseException:
            db.close()
            raise
        return SQLiteSnapshotRead(self, db, rows, int(seq[0]) if seq else 0, int(count))

    async def _on_scan(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(connection, *args)` on the reader thread, with its connection (store/sqlite_reads.py)."""
        return await self._in_reader(self._with_scan, fn, *args)

    def _with_scan(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._scan is not None
        return fn(self._scan, *args)

    async def _in_reader(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closing:
            raise StoreUnavailable("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc

    # -- writes --------------------------------------------------------------------------------

    async def commit(self, keys: Collection[str], purge_upto: int | None, plan: Planner) -> Batch:
        """One hand-off to the writer thread: lookup, plan and write in one transaction."""
        if self._wdb is None or self._closing:
            raise StoreUnavailable("the store is closed")
        try:
            batch: Batch = await self._writer.call(self._write, keys, purge_upto, plan)
        finally:  # before the pipeline answers a writer: reads from now on see this commit
            if self._point is not None:
                self._point.renew()
        self._tally = batch.tally
        return batch

    def _write(self, keys: Collection[str], purge_upto: int | None, plan: Planner) -> Batch:
        """Runs on the writer thread: one transaction, one fsync, for the whole batch, between
        the checkpoints the writer runs itself (store/sqlite_wal.py)."""
        db = self._wdb
        assert db is not None
        self._checkpoints.before_write(db, pinned=self._snapshots > 0)
        copied = False
        try:
            batch = self._transaction(db, keys, purge_upto, plan)
            copied = batch.copied
            return batch
        except Exception as exc:
            raise write_error(exc) from exc
        finally:
            self._checkpoints.after_write(db, pinned=self._snapshots > 0, copied=copied)

    def _transaction(
        self, db: sqlite3.Connection, keys: Collection[str], purge_upto: int | None, plan: Planner
    ) -> Batch:
        if db.in_transaction:  # the rollback after a failed commit failed too: retry it first
            db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        try:
            tombstones: Tombstones = {}
            if purge_upto is not None:
                rows = db.execute(
                    "SELECT key, seq, version FROM kv WHERE value IS NULL AND seq <= ?", (purge_upto,)
                )
                tombstones = {key: (seq, version) for key, seq, version in rows}
            batch = plan(self._tally, lookup(db, keys), tombstones)
            insert_rows(
                db, UPSERT_HEAD, UPSERT_WIDTH,
                [(k, v, ver, s, exp, t or None, bucket_of(k)) for k, v, ver, s, exp, t in batch.rows],
                UPSERT_TAIL,
            )  # fmt: skip
            if batch.entries:
                db.executemany(
                    "INSERT INTO txns (seq, body) VALUES (?, ?)",
                    [(seq, encode_entry(changes)) for seq, changes in batch.entries],
                )
            if batch.purged:
                db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in batch.purged])
            if batch.drop_uncovered:
                db.execute(
                    "DELETE FROM txns WHERE NOT EXISTS (SELECT 1 FROM kv WHERE kv.txn = txns.seq)"
                )
            if batch.checkpoints:
                db.executemany(
                    "INSERT OR REPLACE INTO checkpoints (peer, instance, seq, epoch) "
                    "VALUES (?, ?, ?, ?)",
                    [(cp.peer, cp.instance, cp.seq, cp.epoch) for cp in batch.checkpoints],
                )
            if batch.meta:
                db.executemany(
                    "INSERT OR REPLACE INTO node_meta (name, value) VALUES (?, ?)", batch.meta.items()
                )
            tally = batch.tally
            meta = [
                ("seq", str(tally.seq)),
                ("live", str(tally.live)),
                ("hlc", str(tally.clock_high)),
                ("floor", str(tally.floor)),
            ]
            settle = tally.seq - self._settled >= SETTLE_EVERY
            if settle:  # the new keys since the last time go into kv_by_bucket together
                db.execute(SETTLE, (self._settled,))
                meta.append(("settled", str(tally.seq)))
            insert_rows(db, "INSERT OR REPLACE INTO meta (name, value)", 2, meta)
            insert_rows(
                db, "INSERT OR REPLACE INTO digest (bucket, hash)", 2,
                [(b, h.to_bytes(16, "big")) for b, h in batch.buckets.items()],
            )  # fmt: skip
            db.execute("COMMIT")
            if settle:
                self._settled = tally.seq
        except BaseException:
            # A failed COMMIT (disk full, I/O error) leaves the transaction open; roll it back so
            # the connection takes the next batch. The original error is the one that matters.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        return batch


class SQLiteStore(PipelineStore):
    """A `Store` in one SQLite file: the write pipeline on a `SQLiteBackend`."""

    def __init__(
        self,
        path: Path,
        *,
        clock_high: Callable[[], int] = lambda: 0,
        synchronous: str = "FULL",
        vfs: str | None = None,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
        now: Callable[[], int] = wall_millis,
    ) -> None:
        self.path = path
        self._sqlite = SQLiteBackend(path, synchronous=synchronous, vfs=vfs, new_instance=new_instance)
        super().__init__(self._sqlite, clock_high=clock_high, now=now)

    @property
    def snapshots_open(self) -> int:
        """Snapshot reads not closed yet."""
        return self._sqlite._snapshots


def sqlite_path(data_dir: Path) -> Path:
    return data_dir / "shareddb.sqlite3"
