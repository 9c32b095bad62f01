"""The epochs of a node's changes feed (replication/epochs.py): how much of the feed a puller's
checkpoint still holds, after restarts and after the store was put back to an older copy."""

from __future__ import annotations

from shareddb.replication.epochs import KEPT, Epochs


def test_a_position_of_the_latest_epoch_is_held_whole() -> None:
    epochs = Epochs().begin(0, "a").begin(7, "b")
    assert epochs.agreed(12, "b") == 12
    assert epochs.agreed(3, "b") == 3  # a page of older positions, named by this run


def test_a_position_of_an_earlier_epoch_is_held_up_to_where_the_next_began() -> None:
    """A copy taken while "a" ran ends where "b" began: what "a" named past that is gone."""
    epochs = Epochs().begin(0, "a").begin(7, "b").begin(9, "c")
    assert epochs.agreed(5, "a") == 5
    assert epochs.agreed(7, "a") == 7
    assert epochs.agreed(12, "a") == 7
    assert epochs.agreed(12, "b") == 9


def test_a_position_of_an_epoch_the_store_does_not_hold_is_read_again_from_the_start() -> None:
    """The copy was taken before that run began: it tells nothing of where the two agree."""
    epochs = Epochs().begin(0, "a").begin(7, "c")
    assert epochs.agreed(12, "b") == 0
    assert Epochs().agreed(12, "b") == 0


def test_the_latest_epochs_are_kept_and_noted_as_they_are_read() -> None:
    epochs = Epochs()
    for run in range(KEPT + 5):
        epochs = epochs.begin(run * 10, f"run-{run}")
    assert len(epochs.begun) == KEPT
    assert epochs.agreed(40, "run-4") == 0  # dropped: its puller reads the feed again
    assert epochs.agreed(55, "run-5") == 55
    assert Epochs.decode(epochs.encode()) == epochs


def test_a_note_that_cannot_be_read_holds_no_epoch() -> None:
    for text in (None, "", "{", "[[1]]", '[["x", "a"]]', "7"):
        assert Epochs.decode(text) == Epochs(), text
