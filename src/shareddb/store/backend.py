"""The contract a store's backend implements under the write pipeline (store/pipeline.py).

A backend (SQLite, Redis, memory) looks up versions, writes one planned batch atomically, and
serves the reads; it decides nothing about merging, conditions, expiry, purging or caching. The
pipeline does all of that once, for every backend.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from shareddb.record import Record
from shareddb.store.base import (
    Checkpoint,
    CopyPage,
    FeedPage,
    SnapshotRead,
    StoreUnavailable,
)
from shareddb.store.expiry import Expiring
from shareddb.store.plan import Batch, Planner, Stored, Tally


class OutcomeUnknown(StoreUnavailable):
    """A batch was sent but whether it committed is not known yet (its answer was lost). The
    backend settles it before its next commit; until then cached records may be stale."""


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
        """Write one batch atomically. Look up the stored (live, version, expires) of every key
        of `keys` that exists and, when `purge_upto` is not None, the (seq, version) of every
        tombstone at or below it; call `plan(tally, found, tombstones)` once, with no other commit
        between the lookup and the write; write the batch it returns (rows, purged keys, new
        transaction entries and, when it says so, the removal of those that cover no row any
        more, checkpoints, node meta, the tally's counters, changed digest buckets and clock
        high-water mark) all or nothing; then adopt its tally and return it.

        The changes feed is the rows by sequence, where a row covered by a transaction entry
        (its txn is not 0) is left out and the entry is served whole at its own sequence, as
        `entries.serve_entry` says: the current rows of its keys, with every entry covering one
        of them, in one page."""
        ...

    async def get(self, key: str) -> Record | None: ...

    async def lookup(self, keys: Collection[str]) -> Stored:
        """The stored (live, version, expires) of each of `keys` that exists, outside a commit."""
        ...

    async def scan(self, prefix: str, after: str | None, limit: int, now: int) -> list[Record]:
        """Live records under `prefix` after `after`, by key, leaving out those expired by `now`."""
        ...

    async def expiring(self, after: int, limit: int) -> list[Expiring]:
        """(key, version, expires) of up to `limit` stored values whose expiry is after `after`
        (ms), soonest first; fewer than `limit` only when there are no more. The pipeline reads
        them a page at a time into its bounded window (store/expiry.py), at open and as the
        clock moves on; the values themselves are not needed."""
        ...

    async def changes_since(
        self, seq: int, limit: int, max_bytes: int | None, known: int
    ) -> FeedPage: ...

    async def checkpoint(self, peer: str) -> Checkpoint | None: ...

    async def get_meta(self, name: str) -> str | None: ...

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        """Key -> version of every stored key in one digest bucket, read along an index of keys
        by bucket that the backend keeps up in its commits: the cost is the bucket's size."""
        ...

    async def snapshot(self) -> SnapshotRead:
        """Every record as of the last commit, read in chunks (see `SnapshotRead`): a commit
        that lands while it is read is not in it."""
        ...

    async def copy_page(self, after: str, limit: int, max_bytes: int, skip: Collection[int]) -> CopyPage:
        """The next records of a bulk copy (see `Store.copy_page`), read at one commit; raises
        `CopyUnsupported` when the backend cannot serve one."""
        ...
