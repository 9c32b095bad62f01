"""Recently read records, kept on the event loop so hot reads skip the store."""

from __future__ import annotations

from collections import OrderedDict

from shareddb.record import Record

# A node's memory beyond SQLite's is this and about 50 MiB of its own, whatever the number of keys
# (docs/operations.md, "Sizing"): a million keys cost no more than 100 bytes each of it.
CACHE_BYTES = 32 * 1024 * 1024
CACHE_VALUE_BYTES = 64 * 1024  # larger values are always read from the store
# What one cached record costs beyond its text: the Record, its strings' headers, the ordered
# dict's slot and link (measured with tracemalloc: tests/unit/test_record_cache.py).
RECORD_OVERHEAD = 330


def _size(record: Record) -> int:
    return len(record.key) + len(record.value or "") + len(record.version) + RECORD_OVERHEAD


class RecordCache:
    """Records that clients read, so hot reads skip the store entirely.

    Touched only on the event loop. A read fills it; a committed batch refreshes the keys it holds
    before any writer is answered, so it never serves a record older than one already acknowledged.
    Writes and replicated records do not fill it (a node copying a million keys would only churn
    it). Bounded by an estimate of its memory; the least recently filled entries go first.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def put(self, record: Record) -> None:
        """Fill the cache with a record just read."""
        size = _size(record)
        if size > CACHE_VALUE_BYTES:
            self.discard(record.key)
            return
        self.discard(record.key)
        self._records[record.key] = record
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, oldest = self._records.popitem(last=False)
            self._bytes -= _size(oldest)

    def refresh(self, record: Record) -> None:
        """A version of `record.key` was committed: replace the cached one if this is newer (a read
        may already have cached a later commit than the batch being announced), or the same
        version expired into a tombstone."""
        cached = self._records.get(record.key)
        if cached is None:
            return
        if record.version > cached.version or (
            record.version == cached.version and record.value is None
        ):
            self.put(record)

    def committed(self, accepted: list[Record]) -> None:
        """A batch committed these records (a purged tombstone comes with an empty version)."""
        records = self._records
        for record in accepted:
            if record.key not in records:
                continue  # most keys a batch writes are not cached: nothing to do for them
            if record.version:
                self.refresh(record)
            else:
                self.discard(record.key)

    def discard(self, key: str) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            self._bytes -= _size(old)
