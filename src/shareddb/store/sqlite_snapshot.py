"""Snapshot reads of an SQLite store (GET /v1/snapshot): one read transaction on a connection of
its own, which in WAL mode sees the file as of its first read while the writer goes on."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import TYPE_CHECKING

from shareddb.record import Record
from shareddb.store.base import SNAPSHOT_CHUNK, SNAPSHOT_CHUNK_BYTES, change_size

if TYPE_CHECKING:
    from shareddb.store.sqlite import SQLiteBackend


class SQLiteSnapshotRead:
    """A `SnapshotRead` of an SQLite store: one statement of one read transaction on its own
    connection, stepped a chunk at a time on the store's reader thread. While it is open, WAL
    checkpoints cannot copy past its point in time, so the WAL file grows with what is written
    meanwhile; it shrinks again at the first checkpoint after `close`."""

    def __init__(
        self, backend: SQLiteBackend, db: sqlite3.Connection, rows: sqlite3.Cursor, seq: int, count: int
    ) -> None:
        self._backend = backend
        self._db: sqlite3.Connection | None = db
        self._rows = rows
        self._pending: tuple[str, str | None, str, int | None] | None = None  # read past a chunk
        self.seq = seq
        self.count = count

    async def next(
        self, limit: int = SNAPSHOT_CHUNK, max_bytes: int = SNAPSHOT_CHUNK_BYTES
    ) -> list[Record]:
        if self._db is None:
            return []
        chunk: list[Record] = await self._backend._in_reader(self._chunk, limit, max_bytes)
        return chunk

    def _chunk(self, limit: int, max_bytes: int) -> list[Record]:
        chunk: list[Record] = []
        size = 0
        while len(chunk) < limit:
            row = self._pending or self._rows.fetchone()
            self._pending = None
            if row is None:
                break
            size += change_size(row[0], row[1])
            if chunk and size > max_bytes:
                self._pending = row
                break
            chunk.append(Record(*row))
        return chunk

    async def close(self) -> None:
        """End the read, on the reader thread after any chunk still being read there. A client
        that leaves cancels its request while a chunk may be read: closing the connection under
        that read, from the event loop, would crash the process."""
        db, self._db = self._db, None
        if db is None:
            return
        self._backend._snapshots -= 1
        try:
            ended = asyncio.get_running_loop().run_in_executor(self._backend._reader_pool, self._end, db)
        except RuntimeError:  # the store is closed: its reader thread is done with every read
            self._end(db)
            return
        await asyncio.shield(ended)  # a cancelled caller must not cancel it before it runs

    def _end(self, db: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._rows.close()
            db.execute("COMMIT")
        db.close()
