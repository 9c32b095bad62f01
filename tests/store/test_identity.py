"""Invariant 7 on the stores: a copy of a store (a data directory restored from a backup, or moved;
on SQLite a copy of its real file) is another life of the node, with an incarnation of its own
(docs/design.md, "Identity": "A copy of the store")."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import orjson

from shareddb.record import Record, incarnation_of, make_version
from shareddb.store.base import Checkpoint, CopyPosition
from shareddb.store.memory import MemoryData, MemoryStore
from shareddb.store.pipeline import PipelineStore
from shareddb.store.sqlite import SQLiteStore, sqlite_path
from tests.store.test_buckets import make_old_store


async def written(data: Path, count: int) -> str:
    """A store in `data` with `count` keys; answers its instance id."""
    await asyncio.to_thread(data.mkdir)
    store = SQLiteStore(sqlite_path(data))
    await store.open()
    for i in range(count):
        await store.write(Record(f"k{i}", f"v{i}", make_version(1_000 + i, "n1-abc")))
    instance = store.instance_id
    await store.close()
    return instance


async def life_of(store: PipelineStore) -> tuple[str, list[str], int, str]:
    """Opened: the store's instance id, earlier lives, last sequence number and digest."""
    await store.open()
    try:
        digest = store.digest()
        lives: list[str] = orjson.loads(await store.get_meta("earlier_lives") or "[]")
        return store.instance_id, lives, store.last_seq, f"{digest.count}:{digest.digest}"
    finally:
        await store.close()


async def opened(data: Path) -> tuple[str, list[str], int, str]:
    """`life_of` the SQLite store in `data`."""
    return await life_of(SQLiteStore(sqlite_path(data)))


async def test_a_copy_of_the_store_is_a_new_life_with_the_same_data(tmp_path: Path) -> None:
    first = await written(tmp_path / "a", 5)
    _, _, seq, digest = await opened(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    copy, lives, copy_seq, copy_digest = await opened(tmp_path / "b")
    assert incarnation_of(copy) != incarnation_of(first)
    assert lives == [incarnation_of(first)]
    assert (copy_seq, copy_digest) == (seq, digest)  # every record, the feed, the tally kept

    # Started again where they are, both keep their lives.
    assert (await opened(tmp_path / "b"))[:2] == (copy, lives)
    assert (await opened(tmp_path / "a"))[:2] == (first, [])

    # A copy of the copy: a third life, which knows both before it.
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    third, lives, _, _ = await opened(tmp_path / "c")
    assert third not in (first, copy)
    assert lives == [incarnation_of(first), incarnation_of(copy)]


async def test_a_copy_put_back_in_place_of_its_deleted_original_is_a_new_life(tmp_path: Path) -> None:
    """The operator's restore: the directory deleted, the backup copied in its place. The copy
    may get the inode number the original had (it was freed), but it is another file."""
    first = await written(tmp_path / "a", 3)
    shutil.copytree(tmp_path / "a", tmp_path / "backup")
    for _ in range(3):
        shutil.rmtree(tmp_path / "a")
        shutil.copytree(tmp_path / "backup", tmp_path / "a")
        instance, lives, _, _ = await opened(tmp_path / "a")
        assert instance != first
        assert lives[0] == incarnation_of(first)


async def test_a_store_made_before_files_were_noted_notes_its_file_at_its_next_start(
    tmp_path: Path,
) -> None:
    """A store of an earlier release holds no file: the first start notes the one it finds (a copy
    made before then cannot be told), and copies made after it are told."""
    first = await written(tmp_path / "a", 2)
    with sqlite3.connect(sqlite_path(tmp_path / "a")) as db:
        db.execute("DELETE FROM meta WHERE name = 'file'")
    shutil.copytree(tmp_path / "a", tmp_path / "older")
    assert (await opened(tmp_path / "older"))[:2] == (first, [])
    shutil.copytree(tmp_path / "older", tmp_path / "newer")
    assert (await opened(tmp_path / "newer"))[0] != first


async def test_a_copy_of_a_memory_store_is_a_new_life_with_the_same_data() -> None:
    """The memory store's copy (what the simulation restores a node from) behaves as a copied
    file does."""

    async def opened(data: MemoryData) -> tuple[str, list[str], int, str]:
        return await life_of(MemoryStore(data))

    data = MemoryData()
    store = MemoryStore(data)
    await store.open()
    for i in range(5):
        await store.write(Record(f"k{i}", f"v{i}", make_version(1_000 + i, "n1-abc")))
    first = store.instance_id
    await store.close()
    backup = data.copy()
    _, _, seq, digest = await opened(data)

    copy, lives, copy_seq, copy_digest = await opened(backup)
    assert incarnation_of(copy) != incarnation_of(first)
    assert lives == [incarnation_of(first)]
    assert (copy_seq, copy_digest) == (seq, digest)
    assert (await opened(backup))[:2] == (copy, lives)  # reopened, not copied again
    assert (await opened(data))[:2] == (first, [])

    third, lives, _, _ = await opened(backup.copy())
    assert third not in (first, copy)
    assert lives == [incarnation_of(first), incarnation_of(copy)]


async def test_checkpoints_of_an_sqlite_store_made_before_feed_epochs_name_none(
    tmp_path: Path,
) -> None:
    """A store of an earlier release gains the epoch column as it opens; what it saved names no
    epoch, and is checked against the peer's feed end (replication/feed.py, `Feed._since`)."""
    path = tmp_path / "old.sqlite3"
    make_old_store(path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO checkpoints (peer, instance, seq) VALUES ('p', 'i', 7)")
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.checkpoint("p") == Checkpoint("p", "i", 7, "")
        await store.apply([], Checkpoint("p", "i", 9, "run-2"))
        assert await store.checkpoint("p") == Checkpoint("p", "i", 9, "run-2")
    finally:
        await store.close()


def test_a_copy_position_of_an_earlier_release_names_no_epoch() -> None:
    assert CopyPosition.decode("p", '["i", 7, "k"]') == CopyPosition("p", "i", 7, "k", "")
    position = CopyPosition("p", "i", 7, "k", "run-1")
    assert CopyPosition.decode("p", position.encode()) == position
    for text in ('["i", 7]', '["i", "7", "k"]', '["i", 7, "k", 3]', "{}", "[", '"x"'):
        assert CopyPosition.decode("p", text) is None, text
