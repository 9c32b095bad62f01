"""How the SQLite store uses its connections, in-process on a real file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shareddb.record import Record, make_version
from shareddb.store.sqlite import SQLiteBackend, SQLiteStore


async def test_the_writer_keeps_statement_journals_in_memory(tmp_path: Path) -> None:
    """Each multi-row upsert of a batch keeps a statement journal; spilled to a temporary file,
    it cost the writer thread a file created, written and unlinked in most batches under load
    (docs/design.md, "What a write costs"). The writer keeps them in memory, and batches of many
    statements still commit whole."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    try:
        backend = store._backend
        assert isinstance(backend, SQLiteBackend)
        records = [Record(f"k{i:04}", "v" * 100, make_version(i + 1, "n1")) for i in range(1000)]
        await asyncio.gather(*(store.write(r) for r in records))
        db = backend._wdb
        assert db is not None
        temp_store = await backend._writer.call(lambda: db.execute("PRAGMA temp_store").fetchone())
        assert temp_store == (2,)  # MEMORY
        assert store.digest().count == 1000
        for record in records[::97]:
            assert await store.get(record.key) == record
    finally:
        await store.close()


async def test_point_reads_do_not_map_the_file(tmp_path: Path) -> None:
    """In WAL mode SQLite drops a reader's memory map whenever another connection has committed
    since its last read, so mapped point reads faulted their pages in again after nearly every
    commit of a store taking writes (docs/design.md, "Keys at scale"). A point read still sees
    the latest commit."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    try:
        backend = store._backend
        assert isinstance(backend, SQLiteBackend)
        assert backend._reader().execute("PRAGMA mmap_size").fetchone() == (0,)
        for i in range(1, 4):
            record = Record("k", f"v{i}", make_version(i, "n1"))
            await store.write(record)
            assert await backend.get("k") == record
    finally:
        await store.close()
