"""A store held in memory: the pipeline's `Backend` in plain dicts, for unit tests and the simulation.

Not durable: what it holds lives as long as its `MemoryData`. Reopening a store on the same
`MemoryData` finds everything committed before, as reopening a file would (the way etcd's raft
keeps `MemoryStorage` beside its `Storage`). A commit builds the whole new state, then swaps it in,
so a commit that fails (see `MemoryData.refuse`) changes nothing. `MemoryData.copy` is a backup of
it, restored later: a store opened on it starts a new life, as one on a copy of a SQLite file does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from shareddb.record import Record
from shareddb.store.base import (
    SNAPSHOT_CHUNK,
    SNAPSHOT_CHUNK_BYTES,
    Change,
    Checkpoint,
    CopyPage,
    FeedPage,
    StoreUnavailable,
    bucket_of,
    change_size,
    earlier_lives,
)
from shareddb.store.entries import copy_unit, serve_entry
from shareddb.store.expiry import Expiring
from shareddb.store.pipeline import PipelineStore, wall_millis
from shareddb.store.plan import Batch, Planner, Stored, Tally, Tombstones

Row = tuple[str | None, str, int, int | None, int]  # value, version, seq, expires, txn


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a memory store holds at one commit; never changed in place."""

    instance: str
    tally: Tally
    rows: dict[str, Row]  # by key
    entries: dict[int, list[tuple[int, str]]]  # transaction entries of the feed: seq -> (seq, key)s
    checkpoints: dict[str, Checkpoint]
    meta: dict[str, str]
    # The keys of `rows` by digest bucket (a bucket absent: none): one bucket is listed without
    # looking at the others. A commit copies only the buckets its keys fall in.
    buckets: dict[int, frozenset[str]] = field(default_factory=dict)


@dataclass(slots=True)
class MemoryData:
    """Where a memory store's data lives across close and reopen.

    `refuse`: set (by a test) to an error, and every commit plans its batch and then raises that
    error instead of swapping in the new state: storage that cannot write."""

    snapshot: Snapshot | None = None
    refuse: StoreUnavailable | None = None
    commits: int = field(default=0)  # commits that succeeded, for tests of the group commit
    copied: bool = False  # a copy of another store's data, not opened since

    def copy(self) -> MemoryData:
        """What this store holds now, as a backup restored later holds it: the store opened on
        the copy is another life, with an instance of its own that notes the one it was copied
        from in `earlier_lives` (docs/design.md, "Identity": "A copy of the store")."""
        return MemoryData(self.snapshot, copied=True)


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
            self.data.snapshot = Snapshot(self._new_instance(), Tally.empty(), {}, {}, {}, {})
        elif self.data.copied:
            self.data.snapshot = _new_life(self.data.snapshot, self._new_instance())
        self.data.copied = False
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
            key: (row[0] is not None, row[1], row[3])
            for key in keys
            if (row := now.rows.get(key)) is not None
        }
        tombstones: Tombstones = {}
        if purge_upto is not None:
            tombstones = {
                key: (seq, version)
                for key, (value, version, seq, _, _) in now.rows.items()
                if value is None and seq <= purge_upto
            }
        batch = plan(now.tally, stored, tombstones)
        rows = dict(now.rows)
        entries = dict(now.entries)
        rows.update((row[0], row[1:]) for row in batch.rows)
        entries.update((seq, [(c.seq, c.record.key) for c in changes]) for seq, changes in batch.entries)
        for key in batch.purged:
            rows.pop(key, None)
        if batch.drop_uncovered:
            covering = {txn for *_, txn in rows.values() if txn}
            entries = {seq: items for seq, items in entries.items() if seq in covering}
        checkpoints = dict(now.checkpoints)
        checkpoints.update((cp.peer, cp) for cp in batch.checkpoints)
        after = replace(
            now,
            tally=batch.tally,
            rows=rows,
            entries=entries,
            checkpoints=checkpoints,
            meta=now.meta | batch.meta,
            buckets=_rebucket(now, rows, [row[0] for row in batch.rows] + batch.purged),
        )
        if self.data.refuse is not None:
            raise self.data.refuse
        self.data.snapshot = after
        self.data.commits += 1
        return batch

    async def get(self, key: str) -> Record | None:
        row = (await self._now()).rows.get(key)
        return None if row is None else Record(key, row[0], row[1], row[3])

    async def lookup(self, keys: Collection[str]) -> Stored:
        rows = (await self._now()).rows
        return {
            key: (row[0] is not None, row[1], row[3])
            for key in keys
            if (row := rows.get(key)) is not None
        }

    async def scan(self, prefix: str, after: str | None, limit: int, now: int) -> list[Record]:
        found = [
            record
            for key, (value, version, _, expires, _) in (await self._now()).rows.items()
            if key.startswith(prefix) and (after is None or key > after)
            if (record := Record(key, value, version, expires)).live_at(now)
        ]
        found.sort(key=lambda record: record.key)
        return found[: max(limit, 0)]

    async def expiring(self, after: int, limit: int) -> list[Expiring]:
        rows = (await self._now()).rows
        found = [
            (key, version, expires)
            for key, (value, version, _, expires, _) in rows.items()
            if value is not None and expires is not None and expires > after
        ]
        return sorted(found, key=lambda item: item[2])[:limit]

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None, known: int) -> FeedPage:
        now = await self._now()
        if limit <= 0:
            return FeedPage([], seq)
        # The feed: rows not covered by a transaction entry, and the entries, by sequence.
        positions = [(s, key) for key, (_, _, s, _, txn) in now.rows.items() if s > seq and not txn]
        positions += [(at, "") for at in now.entries if at > seq]  # "" is never a key
        positions.sort()
        changes: list[Change] = []
        total = 0
        read_to = seq  # the position of the last unit taken (an entry's may serve no change)
        for taken, (at, key) in enumerate(positions):
            if taken >= limit:
                return FeedPage(changes, read_to)
            if key:
                value, version, _, expires, _ = now.rows[key]
                unit = [Change(at, Record(key, value, version, expires))]
            else:
                unit = serve_entry(at, known, now.entries.__getitem__, now.rows.get)
            total += sum(change_size(c.record.key, c.record.value) for c in unit)
            if max_bytes is not None and total > max_bytes and changes:
                return FeedPage(changes, read_to)
            changes.extend(unit)
            read_to = at
        if len(positions) >= limit:
            return FeedPage(changes, read_to)
        return FeedPage(changes, max(seq, now.tally.seq))

    async def copy_page(self, after: str, limit: int, max_bytes: int, skip: Collection[int]) -> CopyPage:
        """A commit swaps in a new `Snapshot`: the one current now is one point in time. Its
        keys are sorted for every page (this backend holds test-sized data sets)."""
        now = await self._now()
        keys = sorted(key for key in now.rows if key > after)
        changes: list[Change] = []
        served = set(skip)
        total = 0
        read_to = after
        for taken, key in enumerate(keys):
            if taken >= limit or (total > max_bytes and changes):
                return CopyPage(changes, read_to, False, served - set(skip))
            value, version, seq, expires, txn = now.rows[key]
            unit = copy_unit(
                Change(seq, Record(key, value, version, expires)),
                txn,
                served,
                now.entries.__getitem__,
                now.rows.get,
            )
            total += sum(change_size(c.record.key, c.record.value) for c in unit)
            changes.extend(unit)
            read_to = key
        return CopyPage(changes, read_to, True, served - set(skip))

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        return (await self._now()).checkpoints.get(peer)

    async def get_meta(self, name: str) -> str | None:
        return (await self._now()).meta.get(name)

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        now = await self._now()
        return {key: now.rows[key][1] for key in now.buckets.get(bucket, ())}

    async def snapshot(self) -> MemorySnapshotRead:
        """A commit swaps in a new `Snapshot` and never changes the old one: reading the one
        current now is reading one point in time."""
        return MemorySnapshotRead(await self._now(), self)


def _new_life(copy: Snapshot, instance: str) -> Snapshot:
    """`copy` as the first state of another life: same data, a new instance, and the incarnation
    it was copied from added to `earlier_lives`."""
    lives = earlier_lives(copy.meta.get("earlier_lives"), copy.instance)
    return replace(copy, instance=instance, meta={**copy.meta, "earlier_lives": lives})


def _rebucket(
    before: Snapshot, rows: dict[str, Row], touched: Collection[str]
) -> dict[int, frozenset[str]]:
    """`before.buckets` once the keys `touched` by a commit are in `rows` or gone from it."""
    changed: dict[int, set[str]] = {}
    for key in touched:
        if (key in rows) == (key in before.rows):
            continue  # updated in place, or written and purged in the same commit
        bucket = bucket_of(key)
        members = changed.get(bucket)
        if members is None:
            members = changed[bucket] = set(before.buckets.get(bucket, ()))
        if key in rows:
            members.add(key)
        else:
            members.discard(key)
    if not changed:
        return before.buckets
    return before.buckets | {bucket: frozenset(keys) for bucket, keys in changed.items()}


class MemorySnapshotRead:
    """A `SnapshotRead` of one `Snapshot` (immutable): its keys are listed once, up front."""

    def __init__(self, snapshot: Snapshot, backend: MemoryBackend) -> None:
        self._rows = snapshot.rows
        self._keys = list(snapshot.rows)
        self._at = 0
        self._backend = backend
        self.seq = snapshot.tally.seq
        self.count = len(self._keys)

    async def next(
        self, limit: int = SNAPSHOT_CHUNK, max_bytes: int = SNAPSHOT_CHUNK_BYTES
    ) -> list[Record]:
        await self._backend._now()  # a closed store fails the read, as the others do
        chunk: list[Record] = []
        size = 0
        while self._at < len(self._keys) and len(chunk) < limit:
            key = self._keys[self._at]
            value, version, _, expires, _ = self._rows[key]
            size += change_size(key, value)
            if chunk and size > max_bytes:
                break
            chunk.append(Record(key, value, version, expires))
            self._at += 1
        return chunk

    async def close(self) -> None:
        self._keys = []


class MemoryStore(PipelineStore):
    """A `Store` in memory: the write pipeline on a `MemoryBackend`. Not durable."""

    def __init__(
        self,
        data: MemoryData | None = None,
        *,
        clock_high: Callable[[], int] = lambda: 0,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
        now: Callable[[], int] = wall_millis,
        reap: bool = True,
    ) -> None:
        self.data = MemoryData() if data is None else data
        backend = MemoryBackend(self.data, new_instance=new_instance)
        super().__init__(backend, clock_high=clock_high, now=now, reap=reap)
