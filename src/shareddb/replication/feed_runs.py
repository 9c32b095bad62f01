"""Runs of this node's feed positions that one reader of the feed passes over without reading.

Two readers keep such runs:
- the bus publisher (replication/bus_publish.py): the positions the others' writes off the bus
  took; nothing there is this node's to publish;
- the feed served to one peer (replication/feed.py, `Copied`): the positions that records copied
  from that peer's data set took; the run of its process that served the copy holds every one.

A run is noted once its commit is over, with the positions the commit gave it (`Applied.first` to
`last`): those positions held those records and nothing else when they committed. A key written
again since has left its run for a later position, so a run only ever loses records. Forgetting a
run is harmless: its positions are read as any others.
"""

from __future__ import annotations

from collections import deque


class FeedRuns:
    """Runs of feed positions, in order, for one reader that reads the feed forward."""

    def __init__(self, kept: int) -> None:
        self._runs: deque[tuple[int, int]] = deque()
        self._kept = kept  # runs remembered at most; more are forgotten

    def add(self, first: int, last: int) -> None:
        """Positions `first` to `last` (none when `first > last`) hold only what the reader
        passes over. A run right after the last one extends it."""
        if first > last:
            return
        runs = self._runs
        if runs and runs[-1][1] + 1 == first:
            runs[-1] = (runs[-1][0], last)
        elif len(runs) < self._kept:
            runs.append((first, last))

    def past(self, position: int) -> int:
        """Where a reader at `position` is once it has passed over the runs that start right
        after it."""
        moved = position
        for first, last in self._runs:
            if first > moved + 1:
                break
            moved = max(moved, last)
        return moved

    def forget(self, position: int) -> None:
        """The reader will not read at or below `position` again: the runs there are dropped."""
        runs = self._runs
        while runs and runs[0][1] <= position:
            runs.popleft()

    def limit(self, position: int, limit: int) -> int:
        """At most `limit` changes to read after `position`, fewer when a run comes first: the
        read stops before it (or runs into it, where keys were written again since; nothing
        is lost, those are read as any others)."""
        for first, _ in self._runs:
            if first > position:
                return max(1, min(limit, first - position - 1))
        return limit

    def clear(self) -> None:
        self._runs.clear()
