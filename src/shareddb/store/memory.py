"""A store held in memory: the pipeline's `Backend` in plain dicts, for unit tests and the simulation.

Not durable: what it holds lives as long as its `MemoryData`. Reopening a store on the same
`MemoryData` finds everything committed before, as reopening a file would (the way etcd's raft
keeps `MemoryStorage` beside its `Storage`). A commit builds the whole new state, then swaps it in,
so a commit that fails (see `MemoryData.refuse`) changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from shareddb.record import Record
from shareddb.store.base import Change, Checkpoint, FeedPage, StoreUnavailable, bucket_of, change_size
from shareddb.store.pipeline import Batch, PipelineStore, Planner, Stored, Tally, Tombstones


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a memory store holds at one commit; never changed in place."""

    instance: str
    tally: Tally
    rows: dict[str, tuple[str | None, str, int]]  # key -> (value, version, seq)
    checkpoints: dict[str, Checkpoint]
    meta: dict[str, str]


@dataclass(slots=True)
class MemoryData:
    """Where a memory store's data lives across close and reopen.

    `refuse`: set (by a test) to an error, and every commit plans its batch and then raises that
    error instead of swapping in the new state: storage that cannot write."""

    snapshot: Snapshot | None = None
    refuse: StoreUnavailable | None = None
    commits: int = field(default=0)  # commits that succeeded, for tests of the group commit


class MemoryBackend:
    """A pipeline `Backend` in dicts. Everything runs on the event loop; each call yields to it
    once first, as a call to real storage would, so a reader polling in a loop lets writers in."""

    def __init__(
        self, data: MemoryData, *, new_instance: Callable[[], str] = lambda: uuid.uuid4().hex
    ) -> None:
        self.data = data
        self._new_instance = new_instance
        self._open = False

    async def _now(self) -> Snapshot:
        await asyncio.sleep(0)
        if not self._open or self.data.snapshot is None:
            raise StoreUnavailable("the store is closed")
        return self.data.snapshot

    async def open(self) -> None:
        if self.data.snapshot is None:
            self.data.snapshot = Snapshot(self._new_instance(), Tally.empty(), {}, {}, {})
        self._open = True

    async def close(self) -> None:
        self._open = False

    @property
    def instance_id(self) -> str:
        return "" if self.data.snapshot is None else self.data.snapshot.instance

    @property
    def tally(self) -> Tally:
        return Tally.empty() if self.data.snapshot is None else self.data.snapshot.tally

    @property
    def cache_valid(self) -> bool:
        return True

    async def commit(self, keys: Collection[str], purge_upto: int | None, plan: Planner) -> Batch:
        now = await self._now()
        stored: Stored = {
            key: (row[0] is not None, row[1]) for key in keys if (row := now.rows.get(key)) is not None
        }
        tombstones: Tombstones = {}
        if purge_upto is not None:
            tombstones = {
                key: (seq, version)
                for key, (value, version, seq) in now.rows.items()
                if value is None and seq <= purge_upto
            }
        batch = plan(now.tally, stored, tombstones)
        rows = dict(now.rows)
        rows.update((key, (value, version, seq)) for key, value, version, seq in batch.rows)
        for key in batch.purged:
            rows.pop(key, None)
        checkpoints = dict(now.checkpoints)
        checkpoints.update((cp.peer, cp) for cp in batch.checkpoints)
        after = replace(
            now, tally=batch.tally, rows=rows, checkpoints=checkpoints, meta=now.meta | batch.meta
        )
        if self.data.refuse is not None:
            raise self.data.refuse
        self.data.snapshot = after
        self.data.commits += 1
        return batch

    async def get(self, key: str) -> Record | None:
        row = (await self._now()).rows.get(key)
        return None if row is None else Record(key, row[0], row[1])

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        found = [
            Record(key, value, version)
            for key, (value, version, _) in (await self._now()).rows.items()
            if value is not None and key.startswith(prefix) and (after is None or key > after)
        ]
        found.sort(key=lambda record: record.key)
        return found[: max(limit, 0)]

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None) -> FeedPage:
        now = await self._now()
        newer = sorted((s, key) for key, (_, _, s) in now.rows.items() if s > seq)
        changes: list[Change] = []
        total = 0
        for s, key in newer[: max(limit, 0)]:
            value, version, _ = now.rows[key]
            total += change_size(key, value)
            if max_bytes is not None and total > max_bytes and changes:
                return FeedPage(changes, changes[-1].seq)
            changes.append(Change(s, Record(key, value, version)))
        if len(changes) >= limit:
            return FeedPage(changes, changes[-1].seq if changes else seq)
        return FeedPage(changes, max(seq, now.tally.seq))

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        return (await self._now()).checkpoints.get(peer)

    async def get_meta(self, name: str) -> str | None:
        return (await self._now()).meta.get(name)

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        rows = (await self._now()).rows
        return {key: version for key, (_, version, _) in rows.items() if bucket_of(key) == bucket}


class MemoryStore(PipelineStore):
    """A `Store` in memory: the write pipeline on a `MemoryBackend`. Not durable."""

    def __init__(
        self,
        data: MemoryData | None = None,
        *,
        clock_high: Callable[[], int] = lambda: 0,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.data = MemoryData() if data is None else data
        super().__init__(MemoryBackend(self.data, new_instance=new_instance), clock_high=clock_high)
