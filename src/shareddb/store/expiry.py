"""Which stored values expire when: the pipeline's index of values with a TTL.

Reads hide an expired value by the clock alone (`Record.live_at`); this index lets the pipeline
answer `count` exactly as the clock passes expiry times, and tells the reaper which values to turn
into tombstones (of their own versions: docs/design.md, "Expiry"). It holds one entry per stored
value with a TTL, on the event loop only.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from shareddb.record import Record


class ExpiryIndex:
    def __init__(self) -> None:
        self._heap: list[tuple[int, str, str]] = []  # (expires, key, version), maybe stale
        self._pending: dict[str, tuple[int, str]] = {}  # key -> (expires, version), not yet due
        self._due: dict[str, tuple[int, str]] = {}  # key -> (expires, version): not a tombstone yet
        self._now = 0  # the clock reading the index was last advanced to

    def __len__(self) -> int:
        return len(self._pending) + len(self._due)

    def load(self, records: Iterable[Record]) -> None:
        """The stored values that have an expiry, as found when the store opens."""
        for record in records:
            self._add(record)

    def committed(self, accepted: Iterable[Record]) -> None:
        """Records a batch wrote: each replaces what the index knew of its key."""
        for record in accepted:
            self._pending.pop(record.key, None)
            self._due.pop(record.key, None)
            if record.value is not None and record.expires is not None:
                self._add(record)

    def _add(self, record: Record) -> None:
        assert record.expires is not None
        self._pending[record.key] = (record.expires, record.version)
        heapq.heappush(self._heap, (record.expires, record.key, record.version))
        if len(self._heap) > 2 * len(self._pending) + 1024:  # keys rewritten left stale entries
            self._heap = [(expires, key, version) for key, (expires, version) in self._pending.items()]
            heapq.heapify(self._heap)

    def expired(self, now: int) -> int:
        """How many stored values have expired by `now` and are not tombstones yet."""
        self._advance(now)
        return len(self._due)

    def due(self, now: int, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` (key, version) pairs of values that have expired by `now`."""
        self._advance(now)
        found: list[tuple[str, str]] = []
        for key, (_, version) in self._due.items():
            if len(found) >= limit:
                break
            found.append((key, version))
        return found

    def discard(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Forget these (key, version) pairs if they are still listed as due."""
        for key, version in pairs:
            if (due := self._due.get(key)) is not None and due[1] == version:
                del self._due[key]

    def next_expiry(self) -> int | None:
        """When the next value expires (milliseconds), or None."""
        while self._heap:
            expires, key, version = self._heap[0]
            if self._pending.get(key) == (expires, version):
                return expires
            heapq.heappop(self._heap)  # stale: the key was written again
        return None

    def _advance(self, now: int) -> None:
        if now < self._now:
            # The wall clock stepped back: what it has not passed now is not due (reads show it
            # again, by the clock), and the reaper must not be handed it before it is.
            for key, (expires, version) in list(self._due.items()):
                if expires > now:
                    del self._due[key]
                    self._pending[key] = (expires, version)
                    heapq.heappush(self._heap, (expires, key, version))
        self._now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, key, version = heapq.heappop(heap)
            if self._pending.get(key) == (expires, version):
                del self._pending[key]
                self._due[key] = (expires, version)
