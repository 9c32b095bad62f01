"""The bound of a node's clock in its data dir (data_dir.ClockFile), on real files in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shareddb.data_dir import CLOCK_FILE, ClockFile, DataDirError
from tests.harness import wait_for


def test_a_data_dir_without_a_bound_reads_zero_and_a_noted_one_reads_back(tmp_path: Path) -> None:
    clock_file = ClockFile(tmp_path)
    assert clock_file.read() == 0
    assert clock_file.reserve(123_456, wait=True) == 123_456
    assert ClockFile(tmp_path).read() == 123_456
    assert (tmp_path / CLOCK_FILE).read_text() == "123456\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLOCK_FILE]  # no temporary file left


def test_a_bound_noted_in_the_background_is_answered_once_written(tmp_path: Path) -> None:
    clock_file = ClockFile(tmp_path)
    clock_file.reserve(10, wait=True)
    clock_file.reserve(20, wait=False)
    wait_for(lambda: clock_file.reserve(30, wait=False) == 20 or None, 5.0, "the note of 20")
    assert ClockFile(tmp_path).read() >= 20
    clock_file.reserve(5, wait=True)  # below the one noted: the file keeps the greater
    assert ClockFile(tmp_path).read() >= 20


def test_a_clock_file_that_notes_inline_has_noted_each_bound_before_answering(
    tmp_path: Path,
) -> None:
    clock_file = ClockFile(tmp_path, background=False)  # the simulation's: no thread to wait for
    for bound in (20, 30):
        assert clock_file.reserve(bound, wait=False) == bound
        assert ClockFile(tmp_path).read() == bound  # on disk before the clock goes on


def test_settle_notes_the_high_water_mark_after_any_note_in_progress(tmp_path: Path) -> None:
    clock_file = ClockFile(tmp_path)
    clock_file.reserve(1_000, wait=False)
    clock_file.settle(7)
    assert ClockFile(tmp_path).read() == 7


def test_a_damaged_bound_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / CLOCK_FILE).write_text("12ab\n")
    with pytest.raises(DataDirError, match="does not hold a clock bound: '12ab'"):
        ClockFile(tmp_path).read()


def test_a_bound_that_cannot_be_noted_is_logged_once_until_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock_file = ClockFile(tmp_path / "gone")  # its directory does not exist
    with caplog.at_level(logging.ERROR, "shareddb.node"):
        clock_file.reserve(1, wait=True)
        clock_file.reserve(2, wait=True)
    assert len(caplog.records) == 1
    assert "cannot note the clock's bound" in caplog.text
    (tmp_path / "gone").mkdir()
    caplog.clear()
    with caplog.at_level(logging.ERROR, "shareddb.node"):
        clock_file.reserve(3, wait=True)
    assert not caplog.records
    assert clock_file.read() == 3
