"""Hybrid logical clock (Kulkarni et al. 2014). Pure: time is passed in (`wall_millis` is the
default source of it, the one reading of the real clock every part of a node is handed).

A timestamp is a 64-bit integer: 48 bits of wall-clock milliseconds and a 16-bit logical counter.
Every timestamp the clock hands out is greater than every one it handed out or observed before, so
a node's versions never go backwards while the wall clock stalls, jumps back, or lags a peer's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

COUNTER_BITS = 16
COUNTER_MASK = (1 << COUNTER_BITS) - 1
MAX_TIMESTAMP = (1 << 64) - 1

# How far ahead of local wall time a received timestamp may drag this node's clock.
DEFAULT_MAX_DRIFT_MS = 60_000
# How far past the timestamps it hands out a clock notes its bound (`ClockBound`): one note per
# half of this much of wall time under writes, and at most this far ahead after a crash.
RESERVE_AHEAD_MS = 10_000


class ClockBound(Protocol):
    """Where a clock notes, durably, a bound that no timestamp it handed out is above
    (data_dir.ClockFile), so a clock resumed from it never hands one out again, whatever the store
    it persists `last` in lost."""

    def reserve(self, bound: int, wait: bool) -> int:
        """Note `bound`: with `wait`, before returning; without, in the background. Answers
        the greatest bound noted so far."""
        ...

    def settle(self, last: int) -> None:
        """Note `last` itself, once any note in progress is done (at a clean stop)."""
        ...


def physical(timestamp: int) -> int:
    """The wall-clock milliseconds part of a timestamp."""
    return timestamp >> COUNTER_BITS


def from_millis(millis: int) -> int:
    return millis << COUNTER_BITS


def _ahead(timestamp: int) -> int:
    """The bound noted for `timestamp`: the last of the millisecond RESERVE_AHEAD_MS later."""
    return from_millis(physical(timestamp) + RESERVE_AHEAD_MS) | COUNTER_MASK


_HALF_WINDOW = from_millis(RESERVE_AHEAD_MS // 2)


class HybridClock:
    """The clock of one node.

    `now(wall_ms)` stamps a local event; `observe(timestamp, wall_ms)` folds in a timestamp received
    from another node. A received timestamp more than `max_drift_ms` ahead of local wall time moves
    the clock only up to that bound (the record itself keeps its version: changing a version would
    break convergence); the caller learns of it through the return value and counts it.
    """

    def __init__(
        self,
        floor: int = 0,
        *,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
        bound: ClockBound | None = None,
    ) -> None:
        if not 0 <= floor <= MAX_TIMESTAMP:
            raise ValueError(f"clock floor out of range: {floor}")
        self._last = floor
        self.max_drift_ms = max_drift_ms
        # Half a window before the last bound noted, the next is noted in the background; a
        # timestamp past it waits until the next is noted (only when the clock leaps).
        self._bound = bound
        self._noted = 0

    @property
    def bound(self) -> ClockBound | None:
        """Where the clock notes its bound (None: it notes none)."""
        return self._bound

    @property
    def last(self) -> int:
        """The greatest timestamp handed out or observed: the high-water mark to persist."""
        return self._last

    def now(self, wall_ms: int) -> int:
        """A new timestamp, greater than every earlier one."""
        wall = from_millis(wall_ms)
        self._last = wall if wall > self._last else self._last + 1
        if self._bound is not None and self._last > self._noted - _HALF_WINDOW:
            self._noted = self._bound.reserve(_ahead(self._last), self._last > self._noted)
        return self._last

    def prepare(self, wall_ms: int) -> None:
        """Note a bound ahead of `wall_ms` now (as the node starts, before it serves), so the
        first timestamps need not wait for one."""
        if self._bound is not None:
            self._noted = self._bound.reserve(_ahead(max(self._last, from_millis(wall_ms))), True)

    def settle(self) -> None:
        """Note the high-water mark itself as the bound (at a clean stop), so the next start
        resumes from it rather than from a bound up to RESERVE_AHEAD_MS ahead of it."""
        if self._bound is not None:
            self._bound.settle(self._last)
            self._noted = self._last

    def restore(self, high_water: int) -> None:
        """Resume from a persisted high-water mark, unbounded: the clock never goes backwards."""
        self._last = max(self._last, high_water)

    def observe(self, timestamp: int, wall_ms: int) -> bool:
        """Advance past a received timestamp. False when it was beyond the drift bound."""
        bound = from_millis(wall_ms + self.max_drift_ms) | COUNTER_MASK
        within = timestamp <= bound
        target = timestamp if within else bound
        if target > self._last:
            self._last = target
        return within

    def observe_all(self, timestamps: Sequence[int], wall_ms: int) -> int:
        """`observe` of each of `timestamps`, in one step: the clock moves past the greatest.
        Answers how many were beyond the drift bound."""
        if not timestamps or self.observe(max(timestamps), wall_ms):
            return 0
        bound = from_millis(wall_ms + self.max_drift_ms) | COUNTER_MASK
        return sum(timestamp > bound for timestamp in timestamps)


def wall_millis() -> int:
    """The real wall clock, in milliseconds."""
    return time.time_ns() // 1_000_000
