"""Which origins a node pulls straight from their node, and how far it holds each peer's feed
(replication/paths.py; docs/design.md, "Linear replication"). Invariant 1 rests on `held`: a
checkpoint saved past a write that was left out of a pull and never came from its origin would
lose that write for good, and the tombstone purge would count a position the node does not hold."""

from __future__ import annotations

from shareddb.replication.paths import Paths
from shareddb.store.base import Checkpoint


def at(peer: str, seq: int, instance: str = "i1") -> Checkpoint:
    return Checkpoint(peer, instance, seq)


def test_an_origin_caught_up_with_is_left_out_of_pulls_from_every_other_peer() -> None:
    paths = Paths()
    assert paths.skip_for("b") == frozenset()
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 10), "c": at("c", 7)}))
    assert paths.skip_for("b") == {"a~1"}
    assert paths.skip_for("c") == {"a~1"}
    assert paths.skip_for("a") == frozenset()  # a's own writes always come from a
    assert paths.origins() == [("a~1", "a")]


def test_held_stops_at_the_mark_of_every_origin_left_out() -> None:
    paths = Paths()
    # The pull to a was sent while this node stood at 10 in b's feed: below 10, nothing of
    # a's that b serves is missing here.
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 10)}))
    asked = paths.ask("b", {"b": at("b", 10)})
    assert asked.skip == {"a~1"}
    assert paths.held("b", at("b", 25), asked) == 10
    assert paths.held("b", at("b", 8), asked) == 8
    # A later caught-up pull to a moves the mark on.
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 30)}))
    assert paths.held("b", at("b", 25), asked) == 25


def test_a_pull_that_left_nothing_out_holds_all_it_read() -> None:
    paths = Paths()
    asked = paths.ask("b", {})
    assert paths.held("b", at("b", 42), asked) == 42


def test_without_a_mark_in_this_instance_of_the_feed_nothing_is_held() -> None:
    paths = Paths()
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 10, "old")}))
    asked = paths.ask("b", {})
    assert paths.held("b", at("b", 50, "new"), asked) == 0  # the mark is of b's wiped store
    paths.caught_up("a", "a~1", paths.ask("a", {}))  # a pull that knew nothing of b's feed
    assert paths.held("c", at("c", 50), paths.ask("c", {})) == 0


def test_marks_never_move_back_within_one_instance_of_a_feed() -> None:
    paths = Paths()
    late = paths.ask("a", {"b": at("b", 5)})  # sent first, answered last
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 20)}))
    paths.caught_up("a", "a~1", late)
    assert paths.held("b", at("b", 30), paths.ask("b", {})) == 20


def test_a_lost_origin_is_relayed_again_and_says_so_once() -> None:
    paths = Paths()
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 10)}))
    generation = paths.generation
    assert paths.lost("a") is True
    assert paths.generation == generation + 1
    assert paths.skip_for("b") == frozenset()
    assert paths.lost("a") is False  # nothing changed: no second re-read
    assert paths.generation == generation + 1
    assert paths.lost("nobody") is False


def test_a_pull_asked_before_an_origin_was_lost_still_holds_only_up_to_its_mark() -> None:
    paths = Paths()
    paths.caught_up("a", "a~1", paths.ask("a", {"b": at("b", 10)}))
    asked = paths.ask("b", {"b": at("b", 10)})
    paths.lost("a")
    assert asked.generation != paths.generation
    assert paths.held("b", at("b", 40), asked) == 10  # what the answer left out is not held


def test_a_new_life_of_a_peer_replaces_its_earlier_one() -> None:
    paths = Paths()
    paths.caught_up("a", "a~1", paths.ask("a", {}))
    generation = paths.generation
    paths.caught_up("a", "a~2", paths.ask("a", {}))
    assert paths.origins() == [("a~2", "a")]
    assert paths.generation == generation + 1  # the writes of a~1 come through others again
    assert paths.skip_for("b") == {"a~2"}
