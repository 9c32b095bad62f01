"""How the SQLite store uses its connections, on a real file."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shareddb.record import Record, make_version
from shareddb.store import sqlite_wal
from shareddb.store.sqlite import SQLiteBackend, SQLiteStore
from shareddb.store.sqlite_point import PointReads

# Overwrites of random keys, about 20 to a batch: the batches in which SQLite spilled a statement
# journal to a temporary file. Prints whether SQLITE_TMPDIR changed, then the keys stored.
WRITER_SCRIPT = """
import asyncio, os, random, sys
from pathlib import Path
from shareddb.record import Record, make_version
from shareddb.store.sqlite import SQLiteStore

async def main(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    temp = Path(os.environ["SQLITE_TMPDIR"])
    before = temp.stat().st_mtime_ns
    rng = random.Random(1)
    for batch in range(1, 51):
        keys = [f"key-{rng.randrange(1000)}" for _ in range(20)]
        versions = [make_version(batch * 100 + i, "n1") for i in range(20)]
        await asyncio.gather(*(store.write(Record(k, "v" * 100, v)) for k, v in zip(keys, versions)))
    print(temp.stat().st_mtime_ns != before, store.digest().count)
    await store.close()

asyncio.run(main(Path(sys.argv[1])))
"""


def test_the_writer_keeps_statement_journals_in_memory(tmp_path: Path) -> None:
    """Each multi-row upsert of a batch keeps a statement journal; spilled to a temporary file,
    it cost the writer thread a file created, written and unlinked in most batches under load
    (docs/design.md, "What a write costs"). A file made and unlinked in SQLITE_TMPDIR changes the
    directory's modification time. SQLite reads SQLITE_TMPDIR once per process: the store runs in
    a process of its own."""
    temp = tmp_path / "temp"
    temp.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path / "db.sqlite3")],
        env={**os.environ, "SQLITE_TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    made_a_file, count = result.stdout.split()
    assert made_a_file == "False"
    assert 0 < int(count) <= 1000


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


async def _read_on_every_turn(backend: SQLiteBackend, stop: asyncio.Event) -> int:
    """Point reads on (nearly) every turn of the event loop: a read transaction is nearly always
    open, as on a node serving GETs."""
    reads = 0
    while not stop.is_set():
        await backend.get("busy")
        reads += 1
        await asyncio.sleep(0)
    return reads


async def test_point_reads_see_every_acknowledged_write(tmp_path: Path) -> None:
    """The reads of a turn of the event loop share one read transaction (store/sqlite_point.py);
    a read after a write's acknowledgement must still see it, and the cache is left out here: the
    backend's own read is the one that would be stale."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    stop = asyncio.Event()
    try:
        backend = store._backend
        assert isinstance(backend, SQLiteBackend)
        readers = [asyncio.create_task(_read_on_every_turn(backend, stop)) for _ in range(3)]
        for i in range(1, 201):
            record = Record(f"k{i % 7}", f"v{i}", make_version(i, "n1"))
            await store.write(record)
            assert await backend.get(record.key) == record
        stop.set()
        assert all(reads > 0 for reads in await asyncio.gather(*readers))
    finally:
        stop.set()
        await store.close()


async def test_a_point_read_in_a_later_turn_sees_another_connection_commit(tmp_path: Path) -> None:
    """What a worker process relies on, which learns of no commit: a read transaction lasts one
    turn of the event loop, so a read in a later turn sees what was committed before it."""
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    await store.write(Record("k", "old", make_version(1, "n1")))
    await store.close()
    point = PointReads(sqlite3.connect(path, isolation_level=None))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        read = "SELECT value FROM kv WHERE key = 'k'"
        assert point.connection().execute(read).fetchone() == ("old",)
        other.execute("UPDATE kv SET value = 'new' WHERE key = 'k'")
        assert point.connection().execute(read).fetchone() == ("old",)  # the same turn
        await asyncio.sleep(0)
        assert point.connection().execute(read).fetchone() == ("new",)
    finally:
        point.close()
        other.close()


async def test_point_reads_on_every_turn_let_the_wal_be_truncated(tmp_path: Path) -> None:
    """A read transaction open on every turn must not keep a checkpoint from copying the whole
    WAL into the file and truncating it: the WAL would grow without end."""
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    stop = asyncio.Event()
    try:
        backend = store._backend
        assert isinstance(backend, SQLiteBackend)
        reader = asyncio.create_task(_read_on_every_turn(backend, stop))
        for i in range(1, 101):
            await store.write(Record(f"k{i}", "v" * 100, make_version(i, "n1")))
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > 0
        busy, _, _ = await asyncio.to_thread(_truncate_wal, path)
        assert busy == 0
        assert wal.stat().st_size == 0
        stop.set()
        assert await reader > 0
    finally:
        stop.set()
        await store.close()


def _truncate_wal(path: Path) -> tuple[int, int, int]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        busy, frames, copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy, frames, copied
    finally:
        db.close()


async def test_steady_writes_keep_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under writes that never pause, the checkpoint thread never copies the WAL's last frames
    before the next commit adds more, and SQLite starts a WAL over only when a transaction begins
    with all of it copied: the WAL grew by every byte written until WAL_LIMIT stalled the writer.
    Past WAL_RESTART the writer copies the tail itself and the WAL starts over."""
    monkeypatch.setattr(sqlite_wal, "WAL_RESTART", 1024 * 1024)
    monkeypatch.setattr(sqlite_wal, "CHECKPOINT_PAUSE", 0.02)
    path = tmp_path / "db.sqlite3"
    wal = path.with_name(path.name + "-wal")
    store = SQLiteStore(path)
    await store.open()
    largest = 0
    minted = iter(range(1, 1_000_000))
    keys: set[str] = set()

    async def write_many(seed: int) -> None:
        nonlocal largest
        rng = random.Random(seed)
        for _ in range(300):  # 32 x 300 writes of 1 KiB: about 44 MiB of WAL frames in all
            key = f"key-{rng.randrange(1000)}"
            keys.add(key)
            await store.write(Record(key, "v" * 1000, make_version(next(minted), "n1")))
            largest = max(largest, wal.stat().st_size)

    try:
        await asyncio.gather(*(write_many(seed) for seed in range(32)))
        written = store.digest().count
    finally:
        await store.close()
    print(f"largest WAL {largest / 2**20:.1f} MiB")
    assert written == len(keys)
    assert largest <= 8 * 1024 * 1024
