"""Runs of feed positions a reader passes over (replication/feed_runs.py): where a reader is once
past them, how much it may read before the next one, and what is remembered."""

from __future__ import annotations

from shareddb.replication.feed_runs import FeedRuns


def test_a_reader_passes_over_the_runs_right_after_it() -> None:
    runs = FeedRuns(10)
    runs.add(3, 5)
    runs.add(6, 9)  # right after the last: one run, 3 to 9
    runs.add(12, 14)
    assert runs.past(1) == 1  # position 2 is not in a run: it is read first
    assert runs.limit(1, 100) == 1  # and the read stops before the run
    assert runs.past(2) == 9
    assert runs.limit(9, 100) == 2  # 10 and 11
    assert runs.past(9) == 9
    assert runs.past(11) == 14
    assert runs.limit(14, 100) == 100
    assert runs.past(0) == 0  # the reader may read again from an earlier position
    assert runs.past(2) == 9


def test_runs_the_reader_will_not_read_again_are_forgotten_and_empty_ones_never_kept() -> None:
    runs = FeedRuns(10)
    runs.add(5, 4)  # nothing won: no positions
    assert runs.past(4) == 4
    runs.add(3, 5)
    runs.add(8, 9)
    runs.forget(6)
    assert runs.past(2) == 2  # 3 to 5 are read again, as any other positions
    assert runs.past(6) == 6  # 7 is read
    assert runs.past(7) == 9
    runs.forget(9)
    assert runs.past(7) == 7
    assert runs.limit(2, 100) == 100


def test_at_most_the_runs_it_keeps_are_remembered() -> None:
    runs = FeedRuns(2)
    runs.add(1, 1)
    runs.add(3, 3)
    runs.add(5, 5)  # not kept: read as any other position
    assert runs.past(0) == 1
    assert runs.past(2) == 3
    assert runs.past(4) == 4
