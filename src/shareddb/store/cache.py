"""Recently read or written records, kept on the event loop so hot reads skip the store."""

from __future__ import annotations

from shareddb.record import Record

CACHE_BYTES = 64 * 1024 * 1024
CACHE_VALUE_BYTES = 64 * 1024  # larger values are always read from the store


class RecordCache:
    """Recently read or written records, so hot reads skip SQLite entirely.

    Touched only on the event loop: a read fills it, a committed batch updates it before any writer
    is answered, so it never serves a record older than one already acknowledged. Bounded by the
    total size of the values it holds; the oldest entries go first.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._records: dict[str, Record] = {}
        self._bytes = 0
        self._max_bytes = max_bytes

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def put(self, record: Record) -> None:
        size = len(record.key) + len(record.value or "") + 64
        if size > CACHE_VALUE_BYTES:
            self.discard(record.key)
            return
        old = self._records.pop(record.key, None)
        if old is not None:
            self._bytes -= len(old.key) + len(old.value or "") + 64
        self._records[record.key] = record
        self._bytes += size
        while self._bytes > self._max_bytes:
            oldest = self._records.pop(next(iter(self._records)))
            self._bytes -= len(oldest.key) + len(oldest.value or "") + 64

    def discard(self, key: str) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            self._bytes -= len(old.key) + len(old.value or "") + 64
