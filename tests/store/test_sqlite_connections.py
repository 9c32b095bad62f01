"""How the SQLite store uses its connections, on a real file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shareddb.record import Record, make_version
from shareddb.store.sqlite import SQLiteBackend, SQLiteStore

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
