"""The hybrid logical clock: every timestamp it hands out is greater than every earlier one."""

from __future__ import annotations

import pytest

from shareddb.clock import (
    COUNTER_BITS,
    COUNTER_MASK,
    DEFAULT_MAX_DRIFT_MS,
    MAX_TIMESTAMP,
    RESERVE_AHEAD_MS,
    HybridClock,
    from_millis,
    physical,
)

WALL = 1_700_000_000_000  # a plausible wall-clock time in milliseconds


def test_timestamp_packs_millis_above_a_16_bit_counter() -> None:
    assert COUNTER_BITS == 16
    assert from_millis(WALL) == WALL << 16
    assert physical(from_millis(WALL) + 7) == WALL
    assert physical(from_millis(WALL) | COUNTER_MASK) == WALL


def test_now_follows_an_advancing_wall_clock_with_a_zero_counter() -> None:
    clock = HybridClock()
    first = clock.now(WALL)
    second = clock.now(WALL + 5)
    assert first == from_millis(WALL)
    assert second == from_millis(WALL + 5)
    assert clock.last == second


def test_now_increments_the_counter_while_the_wall_clock_stalls() -> None:
    """Invariant 5: a node's clock never goes backwards."""
    clock = HybridClock()
    stamps = [clock.now(WALL) for _ in range(5)]
    assert stamps == [from_millis(WALL) + i for i in range(5)]
    assert {physical(s) for s in stamps} == {WALL}


def test_now_stays_monotonic_when_the_wall_clock_jumps_backwards() -> None:
    """Invariant 5: a node's clock never goes backwards."""
    clock = HybridClock()
    before = clock.now(WALL)
    after_jump = [clock.now(WALL - 10_000), clock.now(WALL - 20_000), clock.now(WALL - 1)]
    assert after_jump == [before + 1, before + 2, before + 3]
    # Once the wall clock passes the old high-water mark again, it takes over.
    assert clock.now(WALL + 1) == from_millis(WALL + 1)


def test_counter_overflow_carries_into_the_millis_and_stays_monotonic() -> None:
    """Invariant 5: a node's clock never goes backwards."""
    clock = HybridClock(from_millis(WALL) | COUNTER_MASK)
    stamp = clock.now(WALL)
    assert stamp == from_millis(WALL + 1)
    assert stamp > from_millis(WALL) | COUNTER_MASK


def test_floor_is_where_the_clock_starts() -> None:
    clock = HybridClock(from_millis(WALL + 100))
    assert clock.last == from_millis(WALL + 100)
    assert clock.now(WALL) == from_millis(WALL + 100) + 1


@pytest.mark.parametrize("floor", [-1, MAX_TIMESTAMP + 1])
def test_floor_outside_64_bits_is_refused(floor: int) -> None:
    with pytest.raises(ValueError, match="clock floor out of range"):
        HybridClock(floor)


def test_observe_advances_past_a_received_timestamp() -> None:
    clock = HybridClock()
    clock.now(WALL)
    received = from_millis(WALL + 30_000) + 3  # a peer 30 s ahead, within the drift bound
    assert clock.observe(received, WALL) is True
    assert clock.last == received
    assert clock.now(WALL) == received + 1


def test_observe_of_an_older_timestamp_does_not_move_the_clock_back() -> None:
    """Invariant 5: a node's clock never goes backwards."""
    clock = HybridClock()
    current = clock.now(WALL)
    assert clock.observe(from_millis(WALL - 5_000), WALL) is True
    assert clock.last == current


def test_observe_bounds_a_far_future_timestamp_to_wall_plus_max_drift() -> None:
    clock = HybridClock(max_drift_ms=1_000)
    clock.now(WALL)
    far_future = from_millis(WALL + 3_600_000)
    assert clock.observe(far_future, WALL) is False
    bound = from_millis(WALL + 1_000) | COUNTER_MASK
    assert clock.last == bound
    next_stamp = clock.now(WALL)
    assert bound < next_stamp < far_future


def test_observe_accepts_a_timestamp_exactly_at_the_drift_bound() -> None:
    clock = HybridClock(max_drift_ms=1_000)
    at_bound = from_millis(WALL + 1_000) | COUNTER_MASK
    assert clock.observe(at_bound, WALL) is True
    assert clock.last == at_bound
    assert clock.observe(at_bound + 1, WALL) is False
    assert clock.last == at_bound


def test_observe_past_the_bound_never_moves_the_clock_back() -> None:
    """Invariant 5: a node's clock never goes backwards, even when a bounded observe happens."""
    clock = HybridClock(from_millis(WALL + 500_000), max_drift_ms=1_000)
    assert clock.observe(from_millis(WALL + 900_000), WALL) is False
    assert clock.last == from_millis(WALL + 500_000)


@pytest.mark.parametrize(
    "offsets_ms",
    [[], [-5_000, 30_000, 10], [500, 3_600_000, 2_000, 999], [70_000, 80_000], [1_000]],
)
def test_observe_all_moves_the_clock_as_observing_each_and_counts_those_past_the_bound(
    offsets_ms: list[int],
) -> None:
    """What a page of peer records does to the clock, in one step (replication/bus_inbound.py,
    puller.py): the same clock, and the same count of versions past the drift bound."""
    stamps = [from_millis(WALL + offset) + 7 for offset in offsets_ms]
    each, all_at_once = HybridClock(max_drift_ms=1_000), HybridClock(max_drift_ms=1_000)
    each.now(WALL), all_at_once.now(WALL)
    beyond = sum(not each.observe(stamp, WALL) for stamp in stamps)
    assert all_at_once.observe_all(stamps, WALL) == beyond
    assert all_at_once.last == each.last


def test_default_drift_bound_is_sixty_seconds() -> None:
    clock = HybridClock()
    assert clock.max_drift_ms == DEFAULT_MAX_DRIFT_MS == 60_000
    assert clock.observe(from_millis(WALL + 59_999), WALL) is True
    assert clock.observe(from_millis(WALL + 60_001), WALL) is False


def test_restore_moves_the_clock_forward_to_a_persisted_high_water_mark() -> None:
    """Invariant 5: the clock never goes backwards across restarts."""
    clock = HybridClock()
    persisted = from_millis(WALL + 10_000) + 42
    clock.restore(persisted)
    assert clock.last == persisted
    assert clock.now(WALL) == persisted + 1


def test_restore_never_moves_the_clock_backwards() -> None:
    """Invariant 5: the clock never goes backwards across restarts."""
    clock = HybridClock()
    current = clock.now(WALL)
    clock.restore(from_millis(WALL - 1))
    clock.restore(0)
    assert clock.last == current
    assert clock.now(WALL) == current + 1


def test_restore_is_not_bounded_by_the_drift_limit() -> None:
    clock = HybridClock(max_drift_ms=1_000)
    persisted = from_millis(WALL + 3_600_000)
    clock.restore(persisted)
    assert clock.last == persisted


class Bound:
    """A `ClockBound` that notes in a list; `background` notes wait until `land()`."""

    def __init__(self) -> None:
        self.noted: list[int] = []
        self.pending: list[int] = []
        self.waits = 0

    def reserve(self, bound: int, wait: bool) -> int:
        if wait:
            self.waits += 1
            self.noted.append(bound)
        elif not self.pending:
            self.pending.append(bound)
        return max(self.noted, default=0)

    def land(self) -> None:
        self.noted += self.pending
        self.pending.clear()

    def settle(self, last: int) -> None:
        self.noted.append(last)


def ahead(millis: int) -> int:
    return from_millis(millis + RESERVE_AHEAD_MS) | COUNTER_MASK


def test_a_clock_notes_a_bound_ahead_before_it_hands_out_a_timestamp_past_the_last_one() -> None:
    bound = Bound()
    clock = HybridClock(bound=bound)
    first = clock.now(WALL)  # nothing noted yet: it waits for the note
    assert bound.noted == [ahead(WALL)]
    assert first < ahead(WALL)
    assert bound.waits == 1


def test_the_next_bound_is_noted_in_the_background_half_a_window_ahead() -> None:
    bound = Bound()
    clock = HybridClock(bound=bound)
    clock.prepare(WALL)
    assert bound.noted == [ahead(WALL)]
    for i in range(RESERVE_AHEAD_MS // 2):
        clock.now(WALL + i)  # more than half a window left: nothing to note
    assert not bound.pending
    clock.now(WALL + RESERVE_AHEAD_MS // 2 + 1)
    assert bound.pending == [ahead(WALL + RESERVE_AHEAD_MS // 2 + 1)]
    bound.land()
    for i in range(RESERVE_AHEAD_MS // 2 + 2, RESERVE_AHEAD_MS):
        clock.now(WALL + i)
    assert bound.waits == 1  # the prepare only: the wall's pace never waits


def test_a_timestamp_past_a_bound_still_being_noted_waits_for_a_note() -> None:
    bound = Bound()
    clock = HybridClock(bound=bound)
    clock.prepare(WALL)
    clock.now(WALL + RESERVE_AHEAD_MS - 1)  # asks in the background, which has not landed
    leap = clock.now(WALL + 3 * RESERVE_AHEAD_MS)  # a leap past it
    assert bound.waits == 2
    assert max(bound.noted) >= leap


def test_a_clock_resumed_from_its_bound_never_hands_out_a_timestamp_again() -> None:
    """Invariant 7, with the wall clock standing still and the store's high-water mark lost."""
    bound = Bound()
    first_life = HybridClock(bound=bound)
    first_life.prepare(WALL)
    handed_out = {first_life.now(WALL) for _ in range(1_000)}
    second_life = HybridClock(bound=bound)
    second_life.restore(max(bound.noted))
    assert not handed_out & {second_life.now(WALL) for _ in range(1_000)}


def test_settle_notes_the_high_water_mark_itself() -> None:
    bound = Bound()
    clock = HybridClock(bound=bound)
    clock.prepare(WALL)
    last = clock.now(WALL)
    clock.settle()
    assert bound.noted[-1] == last
    assert clock.now(WALL) > last
    assert max(bound.noted) > last  # past the settled mark, a bound ahead again
