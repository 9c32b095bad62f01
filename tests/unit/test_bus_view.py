"""The change bus's pure parts: its address, its names on the server, and how a member's stream
position maps to this node's feed (replication/bus_view.py)."""

from __future__ import annotations

import pytest

from shareddb.replication.bus_view import FeedMarks, consumer_name, parse_bus_url, redact


def test_bus_url_names_server_and_cluster() -> None:
    address = parse_bus_url("nats://127.0.0.1:4999")
    assert address.server == "nats://127.0.0.1:4999"
    assert address.stream == "SHAREDDB_shareddb"
    assert address.subject("n1") == "shareddb.shareddb.changes.n1"
    other = parse_bus_url("nats://user:pw@bus.example:5000/orders")
    assert other.server == "nats://user:pw@bus.example:5000"
    assert other.stream == "SHAREDDB_orders"
    assert redact(other.server) == "nats://bus.example:5000"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:4999", "nats://127.0.0.1", "nats://:4999", "nats://h:99999", "nats://h:1/a.b"],
)
def test_bad_bus_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_bus_url(url)


def test_consumer_names_have_no_dots_and_stay_distinct() -> None:
    assert consumer_name("node1") == "node1"
    assert "." not in consumer_name("a.b")
    assert consumer_name("a.b") != consumer_name("a_b")


def test_a_members_position_maps_to_what_it_holds_of_this_feed() -> None:
    marks = FeedMarks()
    assert marks.position_at(10) is None
    marks.mark(5, 100)
    marks.mark(9, 140)
    marks.mark(12, 150)
    assert marks.position_at(4) is None  # before anything known
    assert marks.position_at(5) == 100
    assert marks.position_at(11) == 140
    assert marks.position_at(1000) == 150
    marks.mark(8, 160)  # a late, older answer: the later mark covers it
    assert marks.position_at(1000) == 150


def test_a_stream_that_lost_its_tail_rewinds_the_marks() -> None:
    marks = FeedMarks()
    for seq, position in ((3, 10), (6, 20), (9, 30)):
        marks.mark(seq, position)
    assert marks.rewind(7) == 20  # publish again from feed position 20
    assert marks.position_at(100) == 20
    marks.mark(8, 25)
    assert marks.position_at(8) == 25
