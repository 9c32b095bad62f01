"""The one write path every store shares: group commit, planning, cache, expiry, signal.

Writes queue up on the event loop while one batch commits; the writer task then takes everything
queued (up to MAX_BATCH operations and MAX_BATCH_BYTES) as the next batch, so the batch size grows
with the load (the group commit). A batch is planned by pure code (store/plan.py: the LWW merge,
conditions, transactions, expiry, the purge rule, results per operation) and written by a backend
in one atomic step; only then is the cache refreshed, are the callers answered, and are
long-polling readers woken. A backend (SQLite, Redis, memory) does lookups, one atomic write and
the reads, and decides nothing about merging, conditions, expiry or purging: the `Backend`
protocol (store/backend.py) is all it implements. The reaper here turns expired values into
tombstones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

from shareddb.clock import wall_millis
from shareddb.record import Record
from shareddb.store.backend import Backend, OutcomeUnknown
from shareddb.store.base import (
    COPY_CHUNK,
    COPY_CHUNK_BYTES,
    Applied,
    ChangeSignal,
    Checkpoint,
    CopyPage,
    CopyPosition,
    Digest,
    FeedPage,
    SnapshotRead,
    StoreFull,
    StoreUnavailable,
    fail_all,
)
from shareddb.store.cache import RecordCache
from shareddb.store.expiry import ExpiryIndex
from shareddb.store.feed_tail import FeedTail
from shareddb.store.ops import (
    BulkLoad,
    ClientWrite,
    Condition,
    Expire,
    Op,
    PeerBatch,
    PurgeTombstones,
    SetMeta,
    Txn,
    op_keys,
    op_size,
    unstorable,
)
from shareddb.store.plan import (
    PURGED_BEFORE,
    Batch,
    Planner,
    Stored,
    Tally,
    Tombstones,
    plan_batch,
)

log = logging.getLogger("shareddb.store")

MAX_BATCH = 4096  # operations per batch
MAX_BATCH_BYTES = 32 * 1024 * 1024  # of records per batch (a Redis request stays far below 512 MiB)
EXPIRE_CHUNK = 1000  # expired values turned into tombstones per operation
REAP_PAUSE = 1.0  # seconds the reaper sleeps at most between looks at the clock

__all__ = [
    "Backend",
    "Batch",
    "Condition",
    "OutcomeUnknown",
    "PipelineStore",
    "Planner",
    "Stored",
    "Tally",
    "Tombstones",
    "wall_millis",
]


# -- the store -----------------------------------------------------------------------------------


class PipelineStore:
    """A `Store` (store/base.py) on a backend: the write pipeline, the read cache and the signal."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock_high: Callable[[], int] = lambda: 0,
        now: Callable[[], int] = wall_millis,
        reap: bool = True,
    ) -> None:
        self._backend = backend
        self._reap = reap  # run the reaper task (the simulation calls `reap` itself)
        self._clock_source = clock_high
        self._now = now  # wall-clock milliseconds: what decides expiry
        self._expiry = ExpiryIndex()
        self._reaper: asyncio.Task[None] | None = None
        self._queue: collections.deque[tuple[Op, asyncio.Future[Any]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it was opened on
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._cannot_write = False  # the last batch failed for want of space
        self._signal = ChangeSignal()
        self._cache = RecordCache()
        self._tail = FeedTail()  # the newest changes, for the feed's readers (store/feed_tail.py)
        self._generation = 0  # bumped whenever the cache is refreshed or dropped
        self._purged_before = ""  # node meta PURGED_BEFORE, as of the last commit
        # Told how many seconds each committed batch took (the node's metrics).
        self.commit_observer: Callable[[float], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._backend.open()
        try:
            self._purged_before = await self._backend.get_meta(PURGED_BEFORE) or ""
            await self._expiry.fill(self._backend.expiring, self._now())
        except BaseException:
            await self._backend.close()
            raise
        loop = self._loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop())
        if self._reap:
            self._reaper = loop.create_task(self._reap_loop())

    async def close(self) -> None:
        """Commit everything queued, then release the backend."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
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

    @property
    def purged_before(self) -> str:
        return self._purged_before

    def digest(self) -> Digest:
        """`count` leaves out values that have expired (tombstones or not yet); the digest is the
        same either way: it hashes (key, version), and expiry keeps the version."""
        return self._backend.tally.digest(self._expiry.expired(self._now()))

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
        return await self._backend.scan(prefix, after, limit, self._now())

    async def lookup(self, keys: Collection[str]) -> Stored:
        self._check_open()
        return await self._backend.lookup(keys)

    async def changes_since(
        self,
        seq: int,
        limit: int,
        max_bytes: int | None = None,
        *,
        known: int | None = None,
        leave_out: Callable[[str], bool] | None = None,
    ) -> FeedPage:
        self._check_open()
        if not self._backend.cache_valid:
            self._tail.reset(None)
        elif (page := self._tail.read(seq, limit, max_bytes, leave_out)) is not None:
            # Yield once, as a store read does: a reader that polls in a loop lets writers in.
            await asyncio.sleep(0)
            return page
        elif self._tail.start is None:  # read from now on: kept from the next commit
            self._tail.reset(self.last_seq)
        page = await self._backend.changes_since(
            seq, limit, max_bytes, seq if known is None else min(known, seq)
        )
        if leave_out is None:
            return page
        kept = [c for c in page.changes if c.txn or not leave_out(c.record.version)]
        return FeedPage(kept, page.until)

    async def wait_for_changes(
        self, seq: int, timeout: float, ended: Callable[[], bool] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.last_seq <= seq and (remaining := deadline - loop.time()) > 0:
            if ended is not None and ended():
                return
            await self._signal.wait(remaining)

    def wake_waiters(self) -> None:
        self._signal.notify()

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        self._check_open()
        return await self._backend.checkpoint(peer)

    async def get_meta(self, name: str) -> str | None:
        self._check_open()
        return await self._backend.get_meta(name)

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        self._check_open()
        return await self._backend.bucket_versions(bucket)

    async def snapshot(self) -> SnapshotRead:
        self._check_open()
        return await self._backend.snapshot()

    async def copy_page(
        self,
        after: str,
        limit: int = COPY_CHUNK,
        max_bytes: int = COPY_CHUNK_BYTES,
        skip: Collection[int] = (),
    ) -> CopyPage:
        self._check_open()
        return await self._backend.copy_page(after, limit, max_bytes, skip)

    # -- writes --------------------------------------------------------------------------------

    async def write(self, record: Record, condition: Condition | None = None) -> object:
        """A client's write: an `Outcome`, or a `Conflict` when `condition` does not hold."""
        return await self._submit(ClientWrite(record, condition))

    async def transact(self, conditions: Sequence[Condition], records: Sequence[Record]) -> object:
        """A client's transaction (see plan.Txn): a list of `Outcome`s, a `Conflict` or `Behind`."""
        return await self._submit(Txn(conditions, records))

    async def apply(
        self,
        records: Sequence[Record],
        checkpoint: Checkpoint | None = None,
        groups: Sequence[tuple[int, int]] = (),
        *,
        restored: bool = False,
    ) -> Applied:
        result: Applied = await self._submit(PeerBatch(records, checkpoint, groups, restored))
        return result

    async def bulk_load(
        self,
        records: Sequence[Record],
        position: CopyPosition,
        groups: Sequence[tuple[int, int]] = (),
        *,
        done: bool = False,
    ) -> Applied:
        """A chunk of a bulk copy from a peer (see plan.BulkLoad)."""
        result: Applied = await self._submit(BulkLoad(records, position, groups, done))
        return result

    async def set_meta(self, name: str, value: str) -> None:
        await self._submit(SetMeta(name, value))

    async def purge_tombstones(self, max_seq: int, before: str) -> int:
        purged: int = await self._submit(PurgeTombstones(max_seq, before))
        return purged

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        self._check_open()
        assert self._loop is not None  # set by `open`, which `_check_open` vouches for
        # The loop kept, not looked up: asyncio.get_running_loop() makes a getpid() system call.
        future: asyncio.Future[Any] = self._loop.create_future()
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
            elif isinstance(op, PurgeTombstones):
                purge_upto = op.max_seq if purge_upto is None else max(purge_upto, op.max_seq)
            else:
                keys.update(op_keys(op))
        if not ops:
            return
        seq = self.last_seq
        # The mark as of the last commit: batches commit one at a time, each after the one before.
        planner = partial(_plan_at, ops, self._clock_source, self._now, self._purged_before)
        started = time.perf_counter()
        try:
            written = await self._backend.commit(keys, purge_upto, planner)
        except StoreUnavailable as exc:
            self._note_cannot_write(exc)
            if isinstance(exc, OutcomeUnknown):
                self._drop_cache()
            self._tail.reset(None)  # the tally may have moved past batches it never saw
            if self.last_seq != seq:  # an earlier batch was found committed meanwhile
                self._signal.notify()
            fail_all(futures, exc)
            return
        except Exception as exc:  # a bug: the batch is refused all the same
            log.exception("write batch failed")
            self._tail.reset(None)
            fail_all(futures, StoreUnavailable(f"write failed: {exc}"))
            return
        if self.commit_observer is not None:
            self.commit_observer(time.perf_counter() - started)
        self._note_cannot_write(None)
        self._generation += 1
        self._purged_before = written.meta.get(PURGED_BEFORE, self._purged_before)
        self._cache.committed(written.accepted)
        self._tail.committed(written)
        self._expiry.committed(written.accepted, self._now())
        for future, result in zip(futures, written.results, strict=True):
            if not future.done():
                future.set_result(result)
        self._signal.notify()

    async def reap(self) -> int:
        """Turn up to EXPIRE_CHUNK values whose expiry the clock has passed into tombstones of
        their own versions (never new ones: docs/design.md, "Expiry"). Answers how many."""
        now = self._now()
        if self._expiry.needs_fill(now):  # the store holds values the window does not yet
            await self._expiry.fill(self._backend.expiring, now)
        due = self._expiry.due(now, EXPIRE_CHUNK)
        if not due:
            return 0
        expired: int = await self._submit(Expire(due, now))
        # Any left are not what the store holds (cannot happen): not tried again.
        self._expiry.discard(due)
        return expired

    async def _reap_loop(self) -> None:
        """The reaper: a chunk at a time, so a mass expiry goes in many small batches between
        the writes of clients, paced to take at most half the time. Reads hide expired values
        whether or not it has run yet."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                started = loop.time()
                if await self.reap():
                    # Give clients as much time again as the chunk took: a mass expiry takes at
                    # most half of the writer (and of the interpreter, which its commits hold).
                    await asyncio.sleep(loop.time() - started)
                    continue
            except StoreUnavailable:
                await asyncio.sleep(REAP_PAUSE)  # the store logs why; tried again
                continue
            upcoming = self._expiry.next_expiry()
            pause = REAP_PAUSE if upcoming is None else (upcoming - self._now()) / 1000
            await asyncio.sleep(min(REAP_PAUSE, max(pause, 0.001)))

    def _drop_cache(self) -> None:
        self._cache = RecordCache()
        self._tail.reset(None)
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
    ops: Sequence[Op],
    clock: Callable[[], int],
    now: Callable[[], int],
    purged_before: str,
    base: Tally,
    stored: Stored,
    tombstones: Tombstones,
) -> Batch:
    """The planner a backend calls between its lookup and its write (on whatever thread it
    writes from): the clocks are read then, so the persisted high-water mark is fresh."""
    return plan_batch(ops, clock(), base, stored, tombstones, now(), purged_before)
