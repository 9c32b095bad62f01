"""The one write path every store shares: operations, group commit, merge, purge choice, cache, signal.

Writes queue up on the event loop while one batch commits; the writer task then takes everything
queued (up to MAX_BATCH operations and MAX_BATCH_BYTES) as the next batch, so the batch size grows
with the load (the group commit). A batch is planned by pure code here (`plan_batch`: the LWW merge
of `MergePlan`, the purge rule of `choose_purge`, results per operation) and written by a backend in
one atomic step; only then is the cache refreshed, are the callers answered, and are long-polling
readers woken. A backend (SQLite, Redis, memory) does lookups, one atomic write and the reads, and
decides nothing about merging or purging: the `Backend` protocol below is all it implements.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from shareddb.record import Record
from shareddb.store.base import (
    CHANGE_OVERHEAD,
    DIGEST_BUCKETS,
    ChangeSignal,
    Checkpoint,
    Digest,
    FeedPage,
    MergePlan,
    Outcome,
    StoreFull,
    StoreUnavailable,
    combine_buckets,
    fail_all,
)
from shareddb.store.cache import RecordCache

log = logging.getLogger("shareddb.store")

MAX_BATCH = 4096  # operations per batch
MAX_BATCH_BYTES = 32 * 1024 * 1024  # of records per batch (a Redis request stays far below 512 MiB)


class OutcomeUnknown(StoreUnavailable):
    """A batch was sent but whether it committed is not known yet (its answer was lost). The
    backend settles it before its next commit; until then cached records may be stale."""


# -- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientWrite:
    """A client's write (a tombstone only over a live value). Answers an `Outcome`."""

    record: Record


@dataclass(frozen=True, slots=True)
class PeerBatch:
    """Records from a peer, merged by LWW, and how far its feed was read. Answers how many won."""

    records: Sequence[Record]
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True, slots=True)
class SetMeta:
    """The node's own metadata (the member list, say). Answers None."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class PurgeTombstones:
    """Drop tombstones at or below `max_seq` whose version sorts before `before`. Answers how many."""

    max_seq: int
    before: str


Op = ClientWrite | PeerBatch | SetMeta | PurgeTombstones


def _records(op: Op) -> Sequence[Record]:
    if isinstance(op, ClientWrite):
        return (op.record,)
    if isinstance(op, PeerBatch):
        return op.records
    return ()


def op_size(op: Op) -> int:
    """What an operation counts against MAX_BATCH_BYTES."""
    if isinstance(op, ClientWrite):  # the common case, on every write: no generator
        return len(op.record.key) + len(op.record.value or "") + CHANGE_OVERHEAD + 64
    return sum(len(r.key) + len(r.value or "") + CHANGE_OVERHEAD for r in _records(op)) + 64


def unstorable(op: Op) -> str | None:
    """Why an operation cannot be stored (text that is not valid UTF-8: a lone surrogate), or None.
    Checked before a batch is planned, so one such operation fails alone, not its whole batch."""
    try:
        if isinstance(op, ClientWrite):  # the common case, on every write
            op.record.key.encode("utf-8")
            if op.record.value is not None:
                op.record.value.encode("utf-8")
            op.record.version.encode("utf-8")
            return None
        for record in _records(op):
            record.key.encode("utf-8")
            record.version.encode("utf-8")
            if record.value is not None:
                record.value.encode("utf-8")
        if isinstance(op, PeerBatch) and op.checkpoint is not None:
            op.checkpoint.peer.encode("utf-8")
            op.checkpoint.instance.encode("utf-8")
        elif isinstance(op, SetMeta):
            op.name.encode("utf-8")
            op.value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return str(exc)
    return None


# -- planning (pure) ----------------------------------------------------------------------------

Row = tuple[str, str | None, str, int]  # key, value (None: a tombstone), version, seq
Stored = dict[str, tuple[bool, str]]  # key -> (live, version) as stored
Tombstones = dict[str, tuple[int, str]]  # key -> (seq, version) of a stored tombstone


@dataclass(frozen=True, slots=True)
class Tally:
    """What a store keeps beside its rows, as of its last commit: never changed in place."""

    seq: int  # the last sequence number given out
    live: int  # live keys
    clock_high: int  # the HLC high-water mark
    buckets: tuple[int, ...]  # digest buckets
    floor: int = 0  # the greatest sequence number of a purged tombstone (see Store.feed_floor)

    @classmethod
    def empty(cls) -> Tally:
        return cls(0, 0, 0, (0,) * DIGEST_BUCKETS)

    def digest(self) -> Digest:
        return Digest(self.live, combine_buckets(self.buckets), self.buckets)


@dataclass(frozen=True, slots=True)
class Batch:
    """One planned batch: what a backend writes in one atomic step, and what the callers get."""

    rows: list[Row]  # records to store (upserts)
    purged: list[str]  # keys whose tombstones are dropped
    checkpoints: list[Checkpoint]
    meta: dict[str, str]  # node meta
    buckets: dict[int, int]  # changed digest buckets -> their new hash
    tally: Tally  # the store's tally once this batch commits
    results: list[object]  # one per operation, in order (not written)
    accepted: list[Record]  # records written, then purged keys as Record(key, None, "") (not written)


Planner = Callable[[Tally, Stored, Tombstones], Batch]


def plan_batch(
    ops: Sequence[Op], clock_high: int, base: Tally, stored: Stored, tombstones: Tombstones
) -> Batch:
    """Plan `ops` against the stored state: `stored` holds every key they write that exists, and
    `tombstones` every tombstone at or below the greatest `max_seq` of their purges."""
    plan = MergePlan(stored, base.seq, base.live, base.buckets)
    results: list[object] = []
    checkpoints: dict[str, Checkpoint] = {}
    meta: dict[str, str] = {}
    purges: list[tuple[int, PurgeTombstones]] = []
    for op in ops:
        if isinstance(op, ClientWrite):
            results.append(plan.merge(op.record, only_over_live=True))
        elif isinstance(op, PeerBatch):
            results.append(sum(plan.merge(r) is not Outcome.SUPERSEDED for r in op.records))
            if op.checkpoint is not None:
                checkpoints[op.checkpoint.peer] = op.checkpoint
        elif isinstance(op, SetMeta):
            meta[op.name] = op.value
            results.append(None)
        else:
            purges.append((len(results), op))
            results.append(0)
    purged = choose_purge(plan, tombstones, purges, results)
    buckets = list(base.buckets)
    for bucket, value in plan.buckets.items():
        buckets[bucket] = value
    tally = Tally(plan.seq, plan.live, max(base.clock_high, clock_high), tuple(buckets))
    return Batch(
        list(plan.rows.values()),
        purged,
        list(checkpoints.values()),
        meta,
        dict(plan.buckets),
        tally,
        results,
        plan.accepted,
    )


def choose_purge(
    plan: MergePlan,
    stored: Tombstones,
    purges: Sequence[tuple[int, PurgeTombstones]],
    results: list[object],
) -> list[str]:
    """The purge rule, the one every backend follows: a purge drops each tombstone at or below its
    `max_seq` whose version sorts before its `before`, as the tombstones stand after the batch's
    merges (a key written live in the batch is kept; a tombstone written in it may go). Each
    purge's count goes to `results` at its index; returns the keys to delete."""
    if not purges:
        return []
    candidates = dict(stored)
    for key, value, version, seq in plan.rows.values():
        if value is None:
            candidates[key] = (seq, version)
        else:
            candidates.pop(key, None)
    purged: list[str] = []
    for index, purge in purges:
        doomed = [
            (key, version)
            for key, (seq, version) in candidates.items()
            if seq <= purge.max_seq and version < purge.before
        ]
        for key, version in doomed:
            del candidates[key]
            plan.forget(key, version)
            plan.rows.pop(key, None)
            purged.append(key)
            plan.accepted.append(Record(key, None, ""))
        results[index] = len(doomed)
    return purged


# -- the backend contract ------------------------------------------------------------------------


class Backend(Protocol):
    """Where a store's data lives. It looks up, writes planned batches atomically, and reads; it
    decides nothing about merging, purging or caching (the pipeline does).

    Errors: every method raises only `StoreUnavailable` (or a subclass) for a failure of the
    backing storage. A failed `commit` changed nothing: the whole batch is refused and each of its
    callers gets the error. `StoreFull` means the storage answers but cannot write now (disk
    full, read-only, Redis out of memory): the API answers 507, reads go on, the next batch tries
    again. Plain `StoreUnavailable` means it cannot be reached or used (503). `OutcomeUnknown`
    means the batch may or may not have committed: the backend must settle that before it commits
    anything else, and its `tally` then reflects what it found.
    """

    @property
    def instance_id(self) -> str:
        """The store's random id, made when the store was created (see `Store.instance_id`)."""
        ...

    @property
    def tally(self) -> Tally:
        """As of the last commit known to have happened. Changed only by `open` and `commit`."""
        ...

    @property
    def cache_valid(self) -> bool:
        """False while the pipeline must not serve or fill cached records: every read then goes
        to the backend (a Redis known to be away fails every read alike, cached or not)."""
        ...

    async def open(self) -> None:
        """Load (or create) the store, and its tally."""
        ...

    async def close(self) -> None:
        """Release everything; called once no commit is in flight. Safe if `open` never ran."""
        ...

    async def commit(self, keys: Collection[str], purge_upto: int | None, plan: Planner) -> Batch:
        """Write one batch atomically. Look up the stored (live, version) of every key of `keys`
        that exists and, when `purge_upto` is not None, the (seq, version) of every tombstone at
        or below it; call `plan(tally, found, tombstones)` once, with no other commit between the
        lookup and the write; write the batch it returns (rows, purged keys, checkpoints, node
        meta, the tally's counters, changed digest buckets and clock high-water mark) all or
        nothing; then adopt its tally and return it."""
        ...

    async def get(self, key: str) -> Record | None: ...

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]: ...

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None) -> FeedPage: ...

    async def checkpoint(self, peer: str) -> Checkpoint | None: ...

    async def get_meta(self, name: str) -> str | None: ...

    async def bucket_versions(self, bucket: int) -> dict[str, str]: ...


# -- the store -----------------------------------------------------------------------------------


class PipelineStore:
    """A `Store` (store/base.py) on a backend: the write pipeline, the read cache and the signal."""

    def __init__(self, backend: Backend, *, clock_high: Callable[[], int] = lambda: 0) -> None:
        self._backend = backend
        self._clock_source = clock_high
        self._queue: collections.deque[tuple[Op, asyncio.Future[Any]]] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._cannot_write = False  # the last batch failed for want of space
        self._signal = ChangeSignal()
        self._cache = RecordCache()
        self._generation = 0  # bumped whenever the cache is refreshed or dropped

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._backend.open()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def close(self) -> None:
        """Commit everything queued, then release the backend."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        await self._backend.close()

    # -- reads ---------------------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        return self._backend.instance_id

    @property
    def last_seq(self) -> int:
        return self._backend.tally.seq

    @property
    def clock_high(self) -> int:
        return self._backend.tally.clock_high

    @property
    def feed_floor(self) -> int:
        return self._backend.tally.floor

    def digest(self) -> Digest:
        return self._backend.tally.digest()

    def _check_open(self) -> None:
        if self._writer is None or self._closing:
            raise StoreUnavailable("the store is closed")

    async def get(self, key: str) -> Record | None:
        self._check_open()
        if self._backend.cache_valid and (record := self._cache.get(key)) is not None:
            return record
        generation = self._generation
        record = await self._backend.get(key)
        # A batch that committed while this read was in flight may have cached a newer record.
        if record is not None and generation == self._generation and self._backend.cache_valid:
            self._cache.put(record)
        return record

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        self._check_open()
        return await self._backend.scan(prefix, after, limit)

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None = None) -> FeedPage:
        self._check_open()
        return await self._backend.changes_since(seq, limit, max_bytes)

    async def wait_for_changes(self, seq: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.last_seq <= seq and (remaining := deadline - loop.time()) > 0:
            await self._signal.wait(remaining)

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        self._check_open()
        return await self._backend.checkpoint(peer)

    async def get_meta(self, name: str) -> str | None:
        self._check_open()
        return await self._backend.get_meta(name)

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        self._check_open()
        return await self._backend.bucket_versions(bucket)

    # -- writes --------------------------------------------------------------------------------

    async def write(self, record: Record) -> Outcome:
        result: Outcome = await self._submit(ClientWrite(record))
        return result

    async def apply(self, records: Sequence[Record], checkpoint: Checkpoint | None = None) -> int:
        result: int = await self._submit(PeerBatch(records, checkpoint))
        return result

    async def set_meta(self, name: str, value: str) -> None:
        await self._submit(SetMeta(name, value))

    async def purge_tombstones(self, max_seq: int, before: str) -> int:
        purged: int = await self._submit(PurgeTombstones(max_seq, before))
        return purged

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        self._check_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        """The writer task: commit whatever has queued up, one batch at a time. After `close` it
        commits what was queued before, then stops."""
        while True:
            if not self._queue:
                # The callers just answered usually write again in the next step of the loop: one
                # yield finds their writes without a wake-up of its own (a loop step per batch).
                await asyncio.sleep(0)
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft()]
            size = op_size(batch[0][0])
            while self._queue and len(batch) < MAX_BATCH:
                size += op_size(self._queue[0][0])
                if size > MAX_BATCH_BYTES:
                    break
                batch.append(self._queue.popleft())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        """Commit one batch, then refresh the cache, answer its callers and wake readers."""
        ops: list[Op] = []
        futures: list[asyncio.Future[Any]] = []
        keys: set[str] = set()
        purge_upto: int | None = None
        for op, future in batch:  # one pass: this runs on the event loop for every write
            if (why := unstorable(op)) is not None:
                if not future.done():
                    future.set_exception(StoreUnavailable(f"cannot store this: {why}"))
                continue
            ops.append(op)
            futures.append(future)
            if isinstance(op, ClientWrite):
                keys.add(op.record.key)
            elif isinstance(op, PeerBatch):
                keys.update(record.key for record in op.records)
            elif isinstance(op, PurgeTombstones):
                purge_upto = op.max_seq if purge_upto is None else max(purge_upto, op.max_seq)
        if not ops:
            return
        seq = self.last_seq
        planner = partial(_plan_at, ops, self._clock_source)
        try:
            written = await self._backend.commit(keys, purge_upto, planner)
        except StoreUnavailable as exc:
            self._note_cannot_write(exc)
            if isinstance(exc, OutcomeUnknown):
                self._drop_cache()
            if self.last_seq != seq:  # an earlier batch was found committed meanwhile
                self._signal.notify()
            fail_all(futures, exc)
            return
        except Exception as exc:  # a bug: the batch is refused all the same
            log.exception("write batch failed")
            fail_all(futures, StoreUnavailable(f"write failed: {exc}"))
            return
        self._note_cannot_write(None)
        self._generation += 1
        self._cache.committed(written.accepted)
        for future, result in zip(futures, written.results, strict=True):
            if not future.done():
                future.set_result(result)
        self._signal.notify()

    def _drop_cache(self) -> None:
        self._cache = RecordCache()
        self._generation += 1

    def _note_cannot_write(self, error: StoreUnavailable | None) -> None:
        """Log when the store stops and starts taking writes again, once each, not per write."""
        full = isinstance(error, StoreFull)
        if full and not self._cannot_write:
            log.error("%s; writes get 507 until it can, reads go on", error)
        elif not full and self._cannot_write and error is None:
            log.info("the store can write again")
        if full or error is None:
            self._cannot_write = full


def _plan_at(
    ops: Sequence[Op], clock: Callable[[], int], base: Tally, stored: Stored, tombstones: Tombstones
) -> Batch:
    """The planner a backend calls between its lookup and its write (on whatever thread it
    writes from): the clock is read then, so the persisted high-water mark is fresh."""
    return plan_batch(ops, clock(), base, stored, tombstones)
