"""The SQLite store on a disk that fills up: StoreFull, a usable connection, and no lost commit.

In-process on a small real tmpfs (tests/harness/disk.py), so the test can look at the store's files while
the store is open. The node-level behaviour (507, replication) is in tests/cluster/test_disk_full.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shareddb.record import Record, make_version
from shareddb.store.base import StoreFull
from shareddb.store.sqlite import SQLiteStore, sqlite_path
from tests.harness import eventually
from tests.harness.disk import SmallDisk

VALUE = "v" * 4000
MAX_WRITES = 3000


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mounted = SmallDisk(tmp_path / "disk", "4m").mount()
    yield mounted
    mounted.unmount()


async def test_store_on_a_full_disk_raises_store_full_then_writes_again_once_space_is_back(
    disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 1: every write the store confirmed is there after the disk was full."""
    caplog.set_level(logging.DEBUG, logger="shareddb.store")
    store = SQLiteStore(sqlite_path(disk.path))
    await store.open()
    confirmed: dict[str, str] = {}
    hlc = 1
    try:
        for i in range(10):
            hlc += 1
            await store.write(Record(f"early{i}", "x", make_version(hlc, "n1")))
            confirmed[f"early{i}"] = make_version(hlc, "n1")
        disk.fill()
        for i in range(MAX_WRITES):
            hlc += 1
            version = make_version(hlc, "n1")
            try:
                await store.write(Record(f"late{i}", VALUE, version))
            except StoreFull:
                break
            confirmed[f"late{i}"] = version
        else:
            raise AssertionError(f"no StoreFull after {MAX_WRITES} writes to a full disk")
        seq = store.last_seq
        # Still full: the next write fails the same way and changes nothing.
        with pytest.raises(StoreFull, match="cannot write"):
            await store.write(Record("refused", "x", make_version(hlc + 1, "n1")))
        assert store.last_seq == seq
        for key, version in confirmed.items():
            found = await store.get(key)
            assert found is not None, key
            assert found.version == version
        assert len(await store.scan("", None, 10_000)) == len(confirmed)

        # The checkpoint thread meets the full disk too (it cannot grow the database file).
        await eventually(lambda: "checkpoint put off" in caplog.text, "a checkpoint on a full disk")
        disk.free()
        database = sqlite_path(disk.path)
        size_when_full = database.stat().st_size
        for i in range(20):  # 80 KB: new pages for the database file once checkpointed
            hlc += 1
            await store.write(Record(f"after{i}", VALUE, make_version(hlc, "n1")))
            confirmed[f"after{i}"] = make_version(hlc, "n1")
        assert store.last_seq == seq + 20
        # The checkpoint thread lived through the full disk: it copies the log into the file.
        await eventually(
            lambda: database.stat().st_size >= size_when_full + 20 * len(VALUE), "a checkpoint"
        )
    finally:
        await store.close()

    reopened = SQLiteStore(sqlite_path(disk.path))
    await reopened.open()
    try:
        for key, version in confirmed.items():
            found = await reopened.get(key)
            assert found is not None, key
            assert found.version == version
        assert reopened.last_seq == seq + 20
    finally:
        await reopened.close()
