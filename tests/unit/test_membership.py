"""Member entries merge by last-writer-wins; leaving must win however the clocks stand."""

from __future__ import annotations

from shareddb.membership import (
    EXCHANGE_SLACK,
    LONG_POLL,
    MAX_LONG_POLL,
    UP_WINDOW,
    Membership,
    long_poll,
)
from tests.harness import ManualClock


def test_leave_wins_over_an_entry_written_by_a_faster_clock() -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    A node whose clock runs behind marked a member left at a version below the member's entry.
    The entry went back to `left` at a lower version, and the next copy of the entry from any
    peer brought the member back: it stayed active forever and held up the tombstone purge.
    """
    members = Membership("a", "http://a:1", clock=lambda: 0.0)
    entry = {"id": "b", "url": "http://b:1", "left": False, "v": 1_000}
    members.merge([entry])
    assert members.leave("b", 10)  # this node's clock is far behind the one that wrote v=1000
    members.merge([entry])  # a peer sends the old entry again
    assert members.members["b"].left
    assert members.members["b"].version > 1_000


def _heard_b(clock: ManualClock) -> Membership:
    members = Membership("a", "http://a:1", clock=clock)
    members.heard_from("b", "http://b:1", 1, "i1")
    return members


def test_a_pull_held_open_keeps_a_member_up_until_its_time() -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal; to tell which can, `up` follows the idle long poll, however long it is held.

    A long poll of 12 s outlasts UP_WINDOW: the member is in touch all along, and shows `down`
    once the pull is late, not before."""
    clock = ManualClock()
    members = _heard_b(clock)
    b = members.members["b"]
    with members.exchange("b", 12.0):
        clock.now += UP_WINDOW + 5
        assert members.state(b) == "up"
        clock.now += 1 + EXCHANGE_SLACK * 0.9  # past 12 s, within the slack for the answer's way
        assert members.state(b) == "up"
        clock.now += EXCHANGE_SLACK * 0.2  # the answer is late (the member hangs, or is cut off)
        assert members.state(b) == "down"
    assert members.state(b) == "up"  # then it came: it counts as contact for the slack
    clock.now += EXCHANGE_SLACK
    assert members.state(b) == "down"


def test_an_idle_puller_stays_up_between_its_answer_and_its_next_pull() -> None:
    """Invariant 2, as above. The side that holds an idle pull heard from the puller when the
    pull came in, longer ago than UP_WINDOW once it answers: the puller stays `up` while its next
    pull is on the way, not `down` for a moment after every idle answer."""
    clock = ManualClock()
    members = _heard_b(clock)
    b = members.members["b"]
    for _ in range(3):  # idle polls, one after another
        with members.exchange("b", 12.0):
            clock.now += 12.0  # held all its time, then answered
        clock.now += EXCHANGE_SLACK / 2  # the next pull is on its way
        assert members.state(b) == "up"
        members.heard_from("b", "http://b:1")  # it comes in
    assert len(b.open) <= 2  # the slack of answered pulls does not pile up
    clock.now += UP_WINDOW  # and then the puller hangs
    assert members.state(b) == "down"


def test_a_pull_whose_connection_closed_does_not_count() -> None:
    """Invariant 2, as above: a member that crashed closes its connection, and shows `down`
    without waiting out the long poll."""
    clock = ManualClock()
    members = _heard_b(clock)
    b = members.members["b"]
    connected = True
    with members.exchange("b", 12.0, lambda: connected):
        clock.now += UP_WINDOW + 1
        assert members.state(b) == "up"
        connected = False
        assert members.state(b) == "down"


def test_a_pull_sent_to_a_member_down_proves_nothing() -> None:
    """Invariant 2, as above: a pull held by a member that is `down` (say, cut off, with the
    request hanging) does not show it `up` until it is answered."""
    clock = ManualClock()
    members = _heard_b(clock)
    b = members.members["b"]
    clock.now += UP_WINDOW + 1
    assert members.state(b) == "down"
    with members.exchange("b", 12.0):
        assert members.state(b) == "down"
        assert not b.open
    with members.exchange("nobody", 12.0):  # a puller not listed: nothing to keep
        pass


def test_idle_long_polls_grow_with_the_peers_and_stay_bounded() -> None:
    """Invariant 2, as above: the idle long poll grows with the number of peers pulled, so that
    a node's idle exchanges per second fall as the mesh grows, and never exceeds MAX_LONG_POLL."""
    assert long_poll(1) == long_poll(2) == LONG_POLL
    periods = [long_poll(peers) for peers in range(2, 30)]
    assert periods == sorted(periods)
    assert [peers / long_poll(peers) for peers in (2, 4, 8)] == sorted(
        [peers / long_poll(peers) for peers in (2, 4, 8)], reverse=True
    )
    assert max(periods) == MAX_LONG_POLL


def test_another_life_of_its_own_id_at_another_url_is_noted_as_a_rival() -> None:
    """What replication/rivals.py asks about: its own id, another incarnation, another URL. An
    entry of its own life, or of another life at its own URL (a wiped node back there), is not."""
    members = Membership("a", "http://a:1", "i-mine", clock=lambda: 0.0)
    members.announce("http://a:1", 100)
    told: list[dict[str, str]] = []
    members.on_rival = lambda: told.append(dict(members.rivals))
    own = {"id": "a", "url": "http://a:1", "left": False, "v": 200, "inc": "i-mine"}
    earlier_here = {**own, "inc": "i-before"}
    elsewhere = {**own, "url": "http://a:2", "inc": "i-other"}
    members.merge([own, earlier_here])
    assert told == []
    members.merge([elsewhere])
    members.merge([{**elsewhere, "v": 300}])  # the same life again: told once
    assert told == [{"http://a:2": "i-other"}]
    assert members.self_entry.version > 300  # and this life announces itself above it
    assert members.announced == 100
