"""The registry's rules without a Redis: what one read of it changes in the member list.

A member the registry announced and whose entry expired shows as `left` and is not pulled, until
the registry lists it again or a newer entry of it arrives; a member the registry never announced
is never expired by it; and nothing is expired until this node's view of the registry has been
unbroken for a whole TTL (after a failure, or a registry that lost its entries, every live node
needs that long to announce itself again).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shareddb.membership import Membership
from shareddb.registry import Entry, Listing, Registry
from tests.harness import ManualClock

TTL = 2.0
URL = "redis://127.0.0.1:1/0"  # never connected to: these tests call apply() only


def membership(clock: ManualClock) -> Membership:
    members = Membership("me", "http://me:8080", clock=clock)
    members.announce("http://me:8080", 10)
    return members


def registry(members: Membership, clock: ManualClock) -> Registry:
    found = Registry(URL, members, ttl=TTL, clock=clock)
    found._trusted_since = clock.now  # as after its first successful read
    return found


def listing(live: Sequence[Entry] = (), expired: Sequence[Entry] = ()) -> Listing:
    return Listing({e.id: e for e in live}, {e.id: e for e in expired})


B = Entry("b", "http://b:8080", 20)
C = Entry("c", "http://c:8080", 30)


# -- entries ----------------------------------------------------------------------------------------


def test_an_entry_round_trips_and_a_malformed_one_is_ignored() -> None:
    assert Entry.decode(B.encode()) == B
    assert Entry.decode('{"id": "b", "url": "http://b:8080/", "v": 20}') == B
    for raw in (
        None,
        "",
        "not json",
        "[]",
        '{"id": "b", "url": "http://b:8080"}',
        '{"id": "b", "url": "http://b:8080", "v": "20"}',
        '{"id": "b", "url": "http://b:8080", "v": true}',
        '{"id": "", "url": "http://b:8080", "v": 1}',
        '{"id": "b", "url": "ftp://b", "v": 1}',
    ):
        assert Entry.decode(raw) is None, raw


def test_a_read_splits_registered_nodes_into_live_and_expired() -> None:
    registered = {"b": B.encode(), "c": C.encode(), "d": "garbage"}
    found = Listing.read(registered, [B.encode(), None, None])
    assert found.live == {"b": B}
    assert found.expired == {"c": C}  # "d" is not an entry: neither live nor expired
    # A live key that names another node is not that node's heartbeat.
    assert Listing.read({"b": B.encode()}, [C.encode()]).live == {}


# -- discovery ----------------------------------------------------------------------------------------


def test_a_node_found_in_the_registry_becomes_a_member_and_is_pulled() -> None:
    clock = ManualClock()
    members = membership(clock)
    changes: list[int] = []
    members.on_change = lambda: changes.append(1)
    registry(members, clock).apply(listing(live=[B, Entry("me", "http://me:8080", 10)]), clock.now)

    assert set(members.members) == {"b"}  # never itself
    assert members.members["b"].url == "http://b:8080"
    assert members.members["b"].version == 20
    assert members.pull_urls() == {"http://b:8080"}
    assert changes


def test_a_known_static_peer_found_in_the_registry_is_not_pulled_twice() -> None:
    clock = ManualClock()
    members = membership(clock)
    members.add_static("http://b:8080")
    registry(members, clock).apply(listing(live=[B]), clock.now)
    assert members.static_urls == set()
    assert members.pull_urls() == {"http://b:8080"}


# -- expiry --------------------------------------------------------------------------------------------


def test_a_member_whose_entry_expired_shows_as_left_and_is_not_pulled() -> None:
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    reg.apply(listing(live=[B, C]), clock.now)
    members.heard_from("b", "http://b:8080")
    assert members.state(members.members["b"]) == "up"

    clock.now += TTL
    reg.apply(listing(live=[C], expired=[B]), clock.now)
    assert members.state(members.members["b"]) == "left"
    assert members.pull_urls() == {"http://c:8080"}
    # Local: what this node tells the others about b is unchanged.
    assert {"id": "b", "url": "http://b:8080", "left": False, "v": 20, "inc": ""} in members.entries()


def test_an_expired_member_comes_back_when_it_announces_itself_again() -> None:
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    reg.apply(listing(live=[B]), clock.now)
    clock.now += TTL
    reg.apply(listing(expired=[B]), clock.now)
    assert members.state(members.members["b"]) == "left"

    # Back in the registry (a heartbeat again, or restarted at a new version and URL).
    restarted = Entry("b", "http://b:9090", 40)
    reg.apply(listing(live=[restarted]), clock.now)
    assert members.pull_urls() == {"http://b:9090"}
    assert members.members["b"].version == 40
    assert members.state(members.members["b"]) == "down"  # until it is reached


def test_a_newer_entry_from_a_pull_ends_the_expiry_and_the_old_one_does_not_bring_it_back() -> None:
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    reg.apply(listing(live=[B]), clock.now)
    clock.now += TTL
    reg.apply(listing(expired=[B]), clock.now)
    assert members.pull_urls() == set()

    # b restarted and pulled from us, but cannot reach the registry: its old entry stays expired.
    members.heard_from("b", "http://b:8080", 50)
    assert members.pull_urls() == {"http://b:8080"}
    reg.apply(listing(expired=[B]), clock.now + 10)
    assert members.pull_urls() == {"http://b:8080"}
    assert members.state(members.members["b"]) == "up"


def test_a_node_that_left_on_purpose_is_not_brought_back_by_an_old_registry_entry() -> None:
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    reg.apply(listing(live=[B]), clock.now)
    members.leave("b", 60)  # `shareddb leave --node b`, at a version past its registry entry
    reg.apply(listing(live=[B]), clock.now + TTL)
    assert members.state(members.members["b"]) == "left"
    # Its URL is probed for a node in its place; once b itself answers there, never again.
    assert members.pull_urls() == {"http://b:8080"}
    members.refuse("http://b:8080")
    assert members.pull_urls() == set()
    assert members.entries()[1]["left"] is True


def test_a_member_the_registry_never_announced_is_never_expired_by_it() -> None:
    clock = ManualClock()
    members = membership(clock)
    members.merge([{"id": "p", "url": "http://p:8080", "left": False, "v": 5}])  # from --peers
    reg = registry(members, clock)
    reg.apply(listing(live=[B]), clock.now)
    for _ in range(5):
        clock.now += TTL
        reg.apply(listing(expired=[B]), clock.now)
    assert members.pull_urls() == {"http://p:8080"}
    assert members.state(members.members["p"]) == "down"


def test_a_member_seen_in_the_registry_and_then_missing_from_it_is_expired() -> None:
    """Also when its record is gone from the `nodes` hash (forgotten by hand, or lost)."""
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    reg.apply(listing(live=[B]), clock.now)
    clock.now += TTL
    reg.apply(listing(), clock.now)
    assert members.pull_urls() == set()


def test_an_unknown_expired_node_is_not_added() -> None:
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    clock.now += TTL
    reg.apply(listing(expired=[B]), clock.now)
    assert members.members == {}


@pytest.mark.parametrize("since", [None, 0.0, TTL / 2])
def test_nothing_expires_until_the_view_of_the_registry_was_unbroken_for_a_ttl(
    since: float | None,
) -> None:
    """After a failure (since=None), a restart, or a registry that lost its entries, the live
    nodes need up to a TTL to announce themselves again: missing from it is not expired yet."""
    clock = ManualClock()
    members = membership(clock)
    reg = registry(members, clock)
    reg.apply(listing(live=[B]), clock.now)
    reg._trusted_since = None if since is None else clock.now - since
    reg.apply(listing(expired=[B]), clock.now)
    assert members.pull_urls() == {"http://b:8080"}

    if since is not None:
        clock.now += TTL - since
        reg.apply(listing(expired=[B]), clock.now)
        assert members.pull_urls() == set()


def test_expire_and_unexpire_report_changes_once() -> None:
    clock = ManualClock()
    members = membership(clock)
    members.merge([{"id": "b", "url": "http://b:8080", "left": False, "v": 20}])
    changes: list[int] = []
    members.on_change = lambda: changes.append(1)
    assert members.expire("nobody", 1) is False
    assert members.expire("b", 19) is False  # the member's entry is newer than the expired one
    assert members.expire("b", 20) is True
    assert members.expire("b", 20) is False
    assert len(changes) == 1
    assert members.unexpire("b") is True
    assert members.unexpire("b") is False
    assert len(changes) == 2
    assert members.state(members.members["b"]) == "down"
