"""Recently read records, kept on the event loop so hot reads skip the store."""

from __future__ import annotations

from collections import OrderedDict

from shareddb.record import Record

# A node's memory beyond SQLite's is this and about 50 MiB of its own, whatever the number of keys
# (docs/operations.md, "Sizing"): a million keys cost no more than 100 bytes each of it.
CACHE_BYTES = 32 * 1024 * 1024
CACHE_VALUE_BYTES = 64 * 1024  # larger values are always read from the store
# What one cached record costs beyond its text: its tuple, its strings' headers, the ordered
# dict's slot and link (measured with tracemalloc: tests/unit/test_record_cache.py).
RECORD_OVERHEAD = 330

Held = tuple[str | None, str, int | None]  # a cached record's value, version and expiry


def _size(key: str, value: str | None, version: str) -> int:
    return len(key) + len(value or "") + len(version) + RECORD_OVERHEAD


class RecordCache:
    """Records that clients read, so hot reads skip the store entirely.

    Touched only on the event loop. A read fills it; a committed batch refreshes the keys it holds
    before any writer is answered, so it never serves a record older than one already acknowledged.
    Writes and replicated records do not fill it (a node copying a million keys would only churn
    it). Bounded by an estimate of its memory; the least recently filled entries go first.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        # Each record as a tuple of its value, version and expiry: the garbage collector stops
        # tracking a tuple of strings and numbers after its first look at it, so a full
        # collection need not walk the cache. Held as `Record`s, the ~70,000 a full cache holds
        # made every full collection a pause of ~45 ms (docs/design.md, "Keys at scale").
        self._records: OrderedDict[str, Held] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> Record | None:
        held = self._records.get(key)
        return None if held is None else Record(key, *held)

    def put(self, record: Record) -> None:
        """Fill the cache with a record just read."""
        key = record.key
        size = _size(key, record.value, record.version)
        self.discard(key)
        if size > CACHE_VALUE_BYTES:
            return
        self._records[key] = (record.value, record.version, record.expires)
        self._bytes += size
        while self._bytes > self._max_bytes:
            oldest, (value, version, _) = self._records.popitem(last=False)
            self._bytes -= _size(oldest, value, version)

    def refresh(self, record: Record) -> None:
        """A version of `record.key` was committed: replace the cached one if this is newer (a read
        may already have cached a later commit than the batch being announced), or the same
        version expired into a tombstone."""
        cached = self._records.get(record.key)
        if cached is None:
            return
        version = cached[1]
        if record.version > version or (record.version == version and record.value is None):
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
        held = self._records.pop(key, None)
        if held is not None:
            self._bytes -= _size(key, held[0], held[1])
