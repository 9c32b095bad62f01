"""Snapshot reads of an SQLite store (store/sqlite_snapshot.py), in-process on a real file."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from shareddb.record import Record, make_version
from shareddb.store.sqlite import SQLiteBackend, SQLiteStore
from tests.harness import eventually


async def test_a_snapshot_closes_after_the_chunk_read_in_flight_never_under_it(
    tmp_path: Path,
) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node.

    A client that leaves a backup part way cancels its request while a chunk may be read on the
    reader thread. Closing the read's connection from the event loop meanwhile crashed the
    process (a segfault in SQLite): the close now waits its turn on the reader thread."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    release = threading.Event()
    try:
        for i in range(10):
            await store.write(Record(f"k{i}", "v", make_version(i + 1, "n1")))
        read = await store.snapshot()
        backend = store._backend
        assert isinstance(backend, SQLiteBackend)
        # The reader thread is busy (as with a chunk being read) until `release` is set.
        busy = asyncio.get_running_loop().run_in_executor(backend._reader_pool, release.wait)
        closing = asyncio.create_task(read.close())
        await eventually(lambda: store.snapshots_open == 0, "the read to be marked closed")
        assert not closing.done()  # its connection is closed on the reader thread, in turn
        release.set()
        await asyncio.wait_for(asyncio.gather(busy, closing), 5)
        assert await read.next() == []
    finally:
        release.set()  # a failed check must not leave the reader thread, and the test, stuck
        await store.close()
