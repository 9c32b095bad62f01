"""The write pipeline (store/pipeline.py) on the memory backend: group commit, all-or-nothing batches,
results per operation, and the order of commit, cache refresh, answer and change signal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import pytest

from shareddb.config import Settings
from shareddb.node import Node
from shareddb.record import Record, make_version, version_hlc
from shareddb.store.base import Applied, Checkpoint, Outcome, Store, StoreFull, StoreUnavailable
from shareddb.store.memory import MemoryBackend, MemoryData, MemoryStore
from shareddb.store.pipeline import Batch, OutcomeUnknown, PipelineStore, Planner

WAIT = 5.0  # seconds a test waits for something that should happen at once


def v(hlc: int, node: str = "n1") -> str:
    return make_version(hlc, node)


def put(key: str, value: str, hlc: int) -> Record:
    return Record(key, value, v(hlc))


class HeldBackend(MemoryBackend):
    """A memory backend whose commits wait at a gate, and that counts its reads."""

    def __init__(self, data: MemoryData) -> None:
        super().__init__(data)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()  # a commit is at the gate
        self.reads = 0
        self.lose_answer = False  # commit, then report the outcome as unknown

    async def commit(self, keys: Collection[str], purge_upto: int | None, plan: Planner) -> Batch:
        self.waiting.set()
        await self.gate.wait()
        self.waiting.clear()
        batch = await super().commit(keys, purge_upto, plan)
        if self.lose_answer:
            raise OutcomeUnknown("the answer was lost")
        return batch

    async def get(self, key: str) -> Record | None:
        self.reads += 1
        return await super().get(key)


@pytest.fixture
async def held() -> AsyncIterator[tuple[PipelineStore, HeldBackend]]:
    backend = HeldBackend(MemoryData())
    store = PipelineStore(backend)
    await store.open()
    yield store, backend
    backend.gate.set()
    await store.close()


async def test_writes_queued_during_a_commit_go_in_one_batch(
    held: tuple[PipelineStore, HeldBackend],
) -> None:
    store, backend = held
    backend.gate.clear()
    first = asyncio.create_task(store.write(put("first", "v", 1)))
    await asyncio.wait_for(backend.waiting.wait(), WAIT)
    rest = [asyncio.create_task(store.write(put(f"k{i}", "v", 2))) for i in range(50)]
    await asyncio.sleep(0)  # let every task enqueue its write
    backend.gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
    assert outcomes == [Outcome.CREATED] * 51
    assert backend.data.commits == 2
    assert store.last_seq == 51


async def test_a_failed_commit_fails_every_caller_and_changes_nothing() -> None:
    data = MemoryData()
    store = MemoryStore(data)
    await store.open()
    try:
        await store.write(put("k", "v1", 1))
        seq, digest = store.last_seq, store.digest()
        data.refuse = StoreFull("no space left")
        calls = await asyncio.gather(
            store.write(put("k", "v2", 2)),
            store.apply([put("j", "w", 2)], Checkpoint("peer", "inst", 5)),
            store.set_meta("name", "value"),
            store.purge_tombstones(10, v(100, "")),
            return_exceptions=True,
        )
        assert all(isinstance(call, StoreFull) for call in calls), calls
        assert (store.last_seq, store.digest()) == (seq, digest)
        assert await store.get("k") == put("k", "v1", 1)
        assert await store.get("j") is None
        assert await store.checkpoint("peer") is None
        assert await store.get_meta("name") is None

        data.refuse = None  # not sticky: the next batch writes
        assert await store.write(put("k", "v3", 3)) is Outcome.UPDATED
        assert store.last_seq == seq + 1
    finally:
        await store.close()


async def test_text_that_cannot_be_stored_fails_alone_not_its_batch() -> None:
    store = MemoryStore()
    await store.open()
    try:
        good, bad = await asyncio.gather(
            store.write(put("good", "v", 1)),
            store.write(put("bad\ud800", "v", 1)),
            return_exceptions=True,
        )
        assert good is Outcome.CREATED
        assert isinstance(bad, StoreUnavailable)
        assert "cannot store" in str(bad)
        assert store.last_seq == 1
    finally:
        await store.close()


async def test_each_operation_of_a_batch_gets_its_own_result() -> None:
    store = MemoryStore()
    await store.open()
    try:
        await store.apply([Record("old", None, v(1))])
        results = await asyncio.gather(
            store.write(put("a", "1", 5)),
            store.write(Record("never", None, v(5))),
            store.apply([put("a", "older", 4), put("b", "2", 5)], Checkpoint("p", "i", 3)),
            store.set_meta("members", "[]"),
            store.purge_tombstones(1, v(100, "")),
        )
        assert list(results) == [Outcome.CREATED, Outcome.NOT_FOUND, Applied(1, 3, 3), None, 1]
        assert await store.checkpoint("p") == Checkpoint("p", "i", 3)
        assert await store.get("old") is None
    finally:
        await store.close()


async def test_the_cache_is_refreshed_by_a_commit_before_its_writer_is_answered(
    held: tuple[PipelineStore, HeldBackend],
) -> None:
    store, backend = held
    await store.write(put("k", "v1", 1))
    assert await store.get("k") == put("k", "v1", 1)
    reads = backend.reads
    assert await store.get("k") == put("k", "v1", 1)
    assert backend.reads == reads  # served from the cache

    backend.gate.clear()
    writing = asyncio.create_task(store.write(put("k", "v2", 2)))
    await asyncio.wait_for(backend.waiting.wait(), WAIT)
    assert await store.get("k") == put("k", "v1", 1)  # not committed: the cache keeps v1
    backend.gate.set()
    assert await asyncio.wait_for(writing, WAIT) is Outcome.UPDATED
    assert await store.get("k") == put("k", "v2", 2)
    assert backend.reads == reads  # the commit refreshed the cache; no read was needed

    backend.data.refuse = StoreUnavailable("gone")
    with pytest.raises(StoreUnavailable):
        await store.write(put("k", "v3", 3))
    assert await store.get("k") == put("k", "v2", 2)  # a failed commit leaves the cache alone


async def test_a_batch_of_unknown_outcome_drops_the_cache(
    held: tuple[PipelineStore, HeldBackend],
) -> None:
    store, backend = held
    await store.write(put("k", "v1", 1))
    await store.get("k")
    backend.lose_answer = True
    with pytest.raises(OutcomeUnknown):
        await store.write(put("k", "v2", 2))
    reads = backend.reads
    assert await store.get("k") == put("k", "v2", 2)  # it had committed: read, not cached v1
    assert backend.reads == reads + 1


async def test_readers_waiting_for_changes_wake_only_once_the_batch_committed(
    held: tuple[PipelineStore, HeldBackend],
) -> None:
    store, backend = held
    seq = store.last_seq
    waiter = asyncio.create_task(store.wait_for_changes(seq, 60))
    backend.gate.clear()
    writing = asyncio.create_task(store.write(put("k", "v", 1)))
    await asyncio.wait_for(backend.waiting.wait(), WAIT)
    await asyncio.sleep(0)
    assert not waiter.done()
    backend.gate.set()
    await asyncio.wait_for(waiter, WAIT)  # long before its 60 s
    assert store.last_seq > seq
    assert await writing is Outcome.CREATED


async def test_close_commits_what_was_queued_and_a_reopen_finds_it() -> None:
    data = MemoryData()
    store = MemoryStore(data)
    await store.open()
    writes = [asyncio.create_task(store.write(put(f"k{i}", "v", 1))) for i in range(20)]
    await asyncio.sleep(0)
    await store.close()
    assert [w.result() for w in writes] == [Outcome.CREATED] * 20
    with pytest.raises(StoreUnavailable):
        await store.write(put("late", "v", 1))

    reopened = MemoryStore(data)
    await reopened.open()
    try:
        assert reopened.last_seq == 20
        assert reopened.instance_id == store.instance_id
        assert len(await reopened.scan("k", None, 100)) == 20
    finally:
        await reopened.close()


async def test_a_full_store_is_logged_once_and_again_when_it_can_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = MemoryData()
    store = MemoryStore(data)
    await store.open()
    try:
        data.refuse = StoreFull("the store cannot write: disk full")
        with caplog.at_level(logging.INFO, logger="shareddb.store"):
            for hlc in (1, 2, 3):
                with pytest.raises(StoreFull):
                    await store.write(put("k", "v", hlc))
            data.refuse = None
            await store.write(put("k", "v", 4))
        messages = [r.getMessage() for r in caplog.records]
        assert sum("writes get 507" in m for m in messages) == 1, messages
        assert "the store can write again" in messages
    finally:
        await store.close()


async def test_a_node_runs_on_a_memory_store_and_finds_its_data_when_reopened(tmp_path: Path) -> None:
    data = MemoryData()

    def in_memory(
        where: Path, clock_high: Callable[[], int], mint: Callable[[], str], now: Callable[[], int]
    ) -> Store:
        return MemoryStore(data, clock_high=clock_high, new_instance=mint, now=now)

    settings = Settings(data=tmp_path / "node", node_id="n1")
    node = await Node.open(settings, make_store=in_memory)
    try:
        assert isinstance(node.store, MemoryStore)
        written = await node.put("k", "v")
        assert written.outcome is Outcome.CREATED
    finally:
        await node.close()
    assert not (tmp_path / "node" / "shareddb.sqlite3").exists()

    node = await Node.open(settings, make_store=in_memory)
    try:
        assert await node.get("k") == Record("k", "v", written.version)
        assert node.store.clock_high >= version_hlc(written.version)
    finally:
        await node.close()
