"""Which stored values expire when: the pipeline's index of values with a TTL.

Reads hide an expired value by the clock alone (`Record.live_at`); this index lets the pipeline
answer `count` exactly as the clock passes expiry times, and tells the reaper which values to turn
into tombstones (of their own versions: docs/design.md, "Expiry"). It holds one entry per stored
value with an expiry, in expiry order, on the event loop only. Every operation is O(log n), also
when 100k values expire at the same moment: nothing moves when the clock passes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from sortedcontainers import SortedList

from shareddb.record import Record

Expiring = tuple[str, str, int]  # key, version, expires (ms): a stored value with an expiry


class ExpiryIndex:
    def __init__(self) -> None:
        self._order: SortedList[tuple[int, str, str]] = SortedList()  # (expires, key, version)
        self._entry: dict[str, tuple[int, str, str]] = {}  # key -> its entry in _order

    def __len__(self) -> int:
        return len(self._entry)

    def load(self, found: Iterable[Expiring]) -> None:
        """The stored values that have an expiry, as found when the store opens."""
        for key, version, expires in found:
            self._add(key, version, expires)

    def committed(self, accepted: Iterable[Record]) -> None:
        """Records a batch wrote: each replaces what the index knew of its key."""
        for record in accepted:
            self._remove(record.key)
            if record.value is not None and record.expires is not None:
                self._add(record.key, record.version, record.expires)

    def _add(self, key: str, version: str, expires: int) -> None:
        entry = (expires, key, version)
        self._entry[key] = entry
        self._order.add(entry)

    def _remove(self, key: str) -> None:
        entry = self._entry.pop(key, None)
        if entry is not None:
            self._order.remove(entry)

    def expired(self, now: int) -> int:
        """How many stored values have expired by `now` (and are not tombstones yet)."""
        return self._order.bisect_left((now + 1, "", ""))

    def due(self, now: int, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` (key, version) pairs of values that have expired by `now`, soonest first."""
        count = min(limit, self.expired(now))
        return [(key, version) for _, key, version in islice(self._order, count)]

    def discard(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Forget these (key, version) pairs if the index still holds them."""
        for key, version in pairs:
            entry = self._entry.get(key)
            if entry is not None and entry[2] == version:
                self._remove(key)

    def next_expiry(self) -> int | None:
        """When the next value expires (milliseconds), or None."""
        return self._order[0][0] if self._order else None
