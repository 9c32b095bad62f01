"""The newest part of the changes feed, kept in memory as batches commit, so that the readers that
keep up with the feed (each peer's puller, the watch hub) read it without a store read each.

It is a cache of what `Backend.changes_since` answers, never a second record of changes: it is
filled only from batches the pipeline saw commit, and it answers only a read that it covers
whole (every change after `since`); any other read goes to the store. It holds plain rows only:
a batch with a transaction entry (store/entries.py), or one whose outcome is not known, empties
it and it starts again after that batch. Touched only on the event loop, in step with the store's
tally (the pipeline refreshes it before anything can await after a commit).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from operator import itemgetter

from shareddb.record import Record
from shareddb.store.base import Change, FeedPage, change_size
from shareddb.store.plan import Batch, Row

_BY_SEQ = itemgetter(3)

TAIL_CHANGES = 50_000  # changes kept at most
TAIL_BYTES = 16 * 1024 * 1024  # and about this much of them (by `change_size`)


class FeedTail:
    """The changes with a sequence number above `start`, as the store's feed would serve them: one
    per key, at its latest sequence number, purged tombstones gone."""

    def __init__(self, max_changes: int = TAIL_CHANGES, max_bytes: int = TAIL_BYTES) -> None:
        self._max_changes = max_changes
        self._max_bytes = max_bytes
        self.start: int | None = None  # None: covers nothing (not read yet, or reset)
        self._last = 0
        # Sequence numbers in order, from `_head` on; some name changes since replaced (absent
        # from `_changes`), dropped as the list is compacted.
        self._seqs: list[int] = []
        self._head = 0
        # Each change as the row its batch wrote, made a `Change` for each read: a node whose
        # feed nobody reads (a follower on the bus) pays per change only for the bookkeeping,
        # and the garbage collector stops tracking a row after its first look. Held as `Change`s,
        # the 50,000 changes of a full tail made every full collection of a busy mesh node walk
        # 100,000 objects: pauses of 40-150 ms (docs/design.md, "Keys at scale").
        self._changes: dict[int, Row] = {}
        self._by_key: dict[str, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._changes)

    def reset(self, last_seq: int | None) -> None:
        """Hold nothing; cover the changes after `last_seq` from now on (None: none at all)."""
        self.start = last_seq
        self._last = last_seq or 0
        self._seqs, self._head = [], 0
        self._changes.clear()
        self._by_key.clear()
        self._bytes = 0

    def committed(self, batch: Batch) -> None:
        """A batch committed: its rows enter the tail, replacing their keys' earlier rows, and
        the tombstones it purged leave it."""
        if self.start is None:
            return
        if batch.entries or any(row[5] for row in batch.rows):
            self.reset(batch.tally.seq)  # a transaction's rows are served by its entry
            return
        if len(batch.rows) > self._max_changes // 10:
            # A bulk load's chunk (or a peer's large page): readers that keep up are rare while
            # such batches come, and holding them as objects costs far more than their bytes.
            self.reset(batch.tally.seq)
            return
        changes, by_key, seqs = self._changes, self._by_key, self._seqs
        size = 0
        for row in sorted(batch.rows, key=_BY_SEQ):
            key, seq = row[0], row[3]
            if (earlier := by_key.get(key)) is not None:  # `_drop`, for every row committed
                size -= change_size(key, changes.pop(earlier)[1])
            changes[seq] = row
            by_key[key] = seq
            seqs.append(seq)
            size += change_size(key, row[1])
        self._bytes += size
        for key in batch.purged:
            self._drop(key)
        self._last = batch.tally.seq
        while self._changes and (
            len(self._changes) > self._max_changes or self._bytes > self._max_bytes
        ):
            self.start = self._seqs[self._head]
            self._head += 1
            if (old := self._changes.pop(self.start, None)) is not None:
                key, value = old[0], old[1]
                del self._by_key[key]
                self._bytes -= change_size(key, value)
        if (self._head > 1024 and self._head * 2 > len(self._seqs)) or len(self._seqs) > 2 * (
            len(self._changes) + 1024
        ):
            self._seqs = [s for s in self._seqs[self._head :] if s in self._changes]
            self._head = 0

    def _drop(self, key: str) -> None:
        seq = self._by_key.pop(key, None)
        if seq is not None:
            self._bytes -= change_size(key, self._changes.pop(seq)[1])

    def read(
        self,
        since: int,
        limit: int,
        max_bytes: int | None,
        leave_out: Callable[[str], bool] | None = None,
    ) -> FeedPage | None:
        """The page `Backend.changes_since(since, limit, max_bytes)` would answer, without the
        changes whose version `leave_out` holds true, or None when the tail does not cover it. A
        change left out counts against `limit` and `max_bytes` all the same, and is never made
        into a `Change`: a puller that gets most of a feed from elsewhere reads past it cheaply."""
        if self.start is None or since < self.start:
            return None
        budget = float("inf") if max_bytes is None else max_bytes
        changes: list[Change] = []
        total = 0
        taken = 0
        last = since  # the last change read
        seqs, held = self._seqs, self._changes
        for index in range(max(self._head, bisect_right(seqs, since, self._head)), len(seqs)):
            seq = seqs[index]
            row = held.get(seq)
            if row is None:
                continue
            key, value, version, _, expires, _ = row
            total += change_size(key, value)
            if total > budget and taken:
                return FeedPage(changes, last)
            taken += 1
            last = seq
            if leave_out is None or not leave_out(version):
                changes.append(Change(seq, Record(key, value, version, expires)))
            if taken >= limit:
                return FeedPage(changes, seq)
        return FeedPage(changes, max(since, self._last))
