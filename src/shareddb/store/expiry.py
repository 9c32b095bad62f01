"""Which stored values expire when: the pipeline's window onto the values with a TTL.

Reads hide an expired value by the clock alone (`Record.live_at`); this index lets the pipeline
answer `count` exactly as the clock passes expiry times, and tells the reaper which values to turn
into tombstones (of their own versions: docs/design.md, "Expiry"). It lives on the event loop.

It holds the stored values that expire up to its **horizon**, in expiry order, and no others: every
one of them, so counting those the clock has passed is one binary search (when 100k values expire
at one moment, nothing moves). A store may hold far more values with a TTL than it is worth keeping
in Python (ten million sessions), so the window is bounded: about `limit` values (a tenth more at
most), beyond those that expire within `lookahead` of the clock. The rest stay in the store alone;
the pipeline reads them a page at a time, soonest first (`fill`), whenever the clock comes within
`lookahead` of the horizon (the reaper looks at least once a second). A store with fewer than
`limit` such values is held whole and never read again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import islice

from sortedcontainers import SortedList

from shareddb.record import Record

Expiring = tuple[str, str, int]  # key, version, expires (ms): a stored value with an expiry
# Reads up to `limit` stored values that expire after `after` (ms), soonest first; fewer than
# `limit` means there are no more (the backend's `expiring`).
ReadExpiring = Callable[[int, int], Awaitable[list[Expiring]]]

# Values held beyond those due within the lookahead (about 20 MiB of Python); a fill reads pages
# of at least a tenth of it, so the window may end up to that much past it.
LIMIT = 100_000
LOOKAHEAD_MS = 60_000  # the horizon is kept at least this far ahead of the clock
_START = -(1 << 62)  # a horizon below every expiry: nothing read yet


class ExpiryIndex:
    def __init__(self, limit: int = LIMIT, lookahead_ms: int = LOOKAHEAD_MS) -> None:
        self._order: SortedList[tuple[int, str, str]] = SortedList()  # (expires, key, version)
        self._entry: dict[str, tuple[int, str, str]] = {}  # key -> its entry in _order
        self._limit = limit
        self._lookahead = lookahead_ms
        # Every stored value with an expiry at or below it is held; None: every one is.
        self._horizon: int | None = _START
        # Records committed while a fill's read was in flight (None: no fill running).
        self._during_fill: list[Record] | None = None

    def __len__(self) -> int:
        return len(self._entry)

    @property
    def whole(self) -> bool:
        """Every stored value with an expiry is held."""
        return self._horizon is None

    def needs_fill(self, now: int) -> bool:
        return self._horizon is not None and self._horizon < now + self._lookahead

    async def fill(self, read: ReadExpiring, now: int) -> None:
        """Read from the store what the window lacks: the values after the horizon, up to the
        limit, and at least those due within the lookahead. Commits may land while it reads."""
        if self._during_fill is not None:
            return  # one fill at a time
        page = max(self._limit - len(self), self._limit // 10, 1)
        while self._horizon is not None and (
            self._horizon < now + self._lookahead or len(self) < self._limit
        ):
            after = self._horizon
            self._during_fill = []
            try:
                found = await read(after, page)
            finally:
                raced, self._during_fill = self._during_fill, None
            if len(found) < page:  # there are no more
                horizon = None
            else:
                horizon = found[-1][2] - 1  # values at the last expiry may go on past the page
                if horizon <= after:  # one expiry time fills the page: read more at once
                    page *= 2
                    continue
            # A key committed during the read holds what its last commit wrote, not what was read.
            latest = {record.key: record for record in raced}
            for key, version, expires in found:
                if key not in latest and (horizon is None or expires <= horizon):
                    self._set(key, version, expires)
            for record in latest.values():
                if record.value is None or record.expires is None or record.expires <= after:
                    continue  # what `committed` did with it stands
                if horizon is None or record.expires <= horizon:
                    self._set(record.key, record.version, record.expires)
            self._horizon = horizon
            if self._shrink(now):  # put off while the read was in flight; full now
                return
            page = max(self._limit - len(self), self._limit // 10, 1)
            if len(self) >= self._limit and not self.needs_fill(now):
                return

    def committed(self, accepted: Sequence[Record], now: int) -> None:
        """Records a batch wrote: each replaces what the index knew of its key."""
        if self._during_fill is not None:
            self._during_fill.extend(accepted)
        horizon, entries = self._horizon, self._entry
        for record in accepted:
            if record.key in entries:
                self._remove(record.key)
            if (
                record.value is not None
                and record.expires is not None
                and (horizon is None or record.expires <= horizon)
            ):
                self._set(record.key, record.version, record.expires)
        self._shrink(now)

    def _shrink(self, now: int) -> bool:
        """Over the limit: give the latest expiries back to the store (the horizon comes down
        below them), never those due within the lookahead. Answers whether any went."""
        if self._during_fill is not None:
            return False  # the fill's read covers what is above the horizon: it must stay
        shrunk = False
        while len(self._order) > self._limit:
            last = self._order[-1][0]
            if last <= now + self._lookahead:
                break
            while self._order and self._order[-1][0] == last:
                _, key, _ = self._order.pop()
                del self._entry[key]
            self._horizon = last - 1
            shrunk = True
        return shrunk

    def _set(self, key: str, version: str, expires: int) -> None:
        self._remove(key)
        entry = (expires, key, version)
        self._entry[key] = entry
        self._order.add(entry)

    def _remove(self, key: str) -> None:
        entry = self._entry.pop(key, None)
        if entry is not None:
            self._order.remove(entry)

    def expired(self, now: int) -> int:
        """How many stored values have expired by `now` (and are not tombstones yet): exact while
        the horizon is ahead of `now`, which the pipeline's fills keep it."""
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
        """When the next value held expires (milliseconds), or None."""
        return self._order[0][0] if self._order else None
