"""The client's pure parts: which exception an answer is, the transaction body, node URLs, and
what a watch delivers when it resumes or moves to another node."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from httpx_sse import ServerSentEvent

from shareddb.client import (
    BadRequest,
    ClientError,
    Delete,
    Entry,
    Event,
    Failed,
    Forbidden,
    Gone,
    IfAbsent,
    IfVersion,
    NotFound,
    PreconditionFailed,
    Put,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from shareddb.client.calls import Nodes, node_urls
from shareddb.client.errors import error_from_answer
from shareddb.client.model import txn_document
from shareddb.client.watch import RECONNECT_MAX_DELAY, WatchState

URL = "http://127.0.0.1:1"


def answer(status: int, **body: object) -> ClientError:
    return error_from_answer(status, orjson.dumps(body), URL, key="k")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (410, Gone),
        (413, TooLarge),
        (414, TooLarge),
        (503, Unavailable),
        (507, ClientError),
    ],
)
def test_each_status_is_its_exception(status: int, kind: type[ClientError]) -> None:
    error = answer(status, error="x", message="what went wrong")
    assert type(error) is kind
    assert error.status == status
    assert error.message == "what went wrong"
    assert error.url == URL


def test_a_failed_condition_carries_the_current_version() -> None:
    error = answer(412, error="precondition_failed", message="m", version="v2")
    assert isinstance(error, PreconditionFailed)
    assert error.version == "v2"
    assert error.failed == [Failed("k", "v2")]
    absent = answer(412, error="precondition_failed", message="m", version=None)
    assert isinstance(absent, PreconditionFailed)
    assert absent.version is None


def test_a_failed_transaction_lists_every_failed_condition() -> None:
    failed = [{"key": "a", "version": "v1"}, {"key": "b", "version": None}]
    error = answer(412, error="precondition_failed", failed=failed)
    assert isinstance(error, PreconditionFailed)
    assert error.failed == [Failed("a", "v1"), Failed("b", None)]
    assert error.version == "v1"


def test_a_w_timeout_keeps_the_version_when_the_node_gives_it() -> None:
    error = answer(504, error="timeout", message="held by 1 of 2", version="v9")
    assert isinstance(error, Timeout)
    assert error.version == "v9"
    seed_shape = error_from_answer(504, b"not json", URL)
    assert isinstance(seed_shape, Timeout)
    assert seed_shape.version is None
    assert URL in seed_shape.message


def test_transaction_document_is_the_spec_body() -> None:
    body = txn_document(
        [IfVersion("a", "v1"), IfAbsent("b")],
        [Put("a", "1"), Put("b", "2", ttl=30), Delete("c")],
    )
    assert body == {
        "if": [{"key": "a", "version": "v1"}, {"key": "b", "absent": True}],
        "then": [
            {"op": "put", "key": "a", "value": "1"},
            {"op": "put", "key": "b", "value": "2", "ttl": 30},
            {"op": "delete", "key": "c"},
        ],
    }


def test_node_urls_are_split_checked_and_rotate_from_the_last_that_answered() -> None:
    assert node_urls(["http://a:1/, http://b:2", "https://c"]) == [
        "http://a:1",
        "http://b:2",
        "https://c",
    ]
    for bad in ("", "a:1", "ftp://a", "http://"):
        with pytest.raises(BadRequest):
            node_urls(bad)
    nodes = Nodes("http://a:1,http://b:2,http://c:3")
    nodes.answered("http://b:2")
    assert nodes.order() == ["http://b:2", "http://c:3", "http://a:1"]
    assert nodes.after("http://c:3") == "http://a:1"


# -- the watch -----------------------------------------------------------------------------------


def sse(kind: str, key: str, version: str, seq: int, value: str | None = "v") -> ServerSentEvent:
    data = {"key": key, "value": value, "version": version, "seq": seq, "expires": None}
    return ServerSentEvent(kind, json.dumps(data), str(seq))


def state() -> WatchState:
    return WatchState("p/", None, None, relist=True, give_up_after=10.0)


def test_events_advance_the_seq_and_resume_with_last_event_id() -> None:
    watch = state()
    assert watch.params() == {"prefix": "p/"}
    assert watch.headers() == {}
    event = watch.event(sse("put", "p/a", "v1", 7), URL)
    assert event == Event("put", "p/a", "v", "v1", 7)
    assert watch.event(ServerSentEvent("message", "", ""), URL) is None  # not a change
    watch.dropped()
    assert watch.params() == {"prefix": "p/"}
    assert watch.headers() == {"Last-Event-ID": "7"}


def test_a_watch_from_now_resumes_from_where_it_connected() -> None:
    watch = state()
    watch.start_at(12)
    assert watch.params() == {"prefix": "p/", "since": "12"}
    watch.dropped()  # before any event
    assert watch.headers() == {"Last-Event-ID": "12"}


def test_since_is_sent_until_the_stream_resumes() -> None:
    watch = WatchState("", "one", 5, relist=True, give_up_after=10.0)
    assert watch.params() == {"key": "one", "since": "5"}
    assert watch.matches("one")
    assert not watch.matches("one/two")


def test_an_event_never_makes_a_key_older() -> None:
    watch = state()
    assert watch.event(sse("put", "p/a", "v2", 1), URL) is not None
    assert watch.event(sse("put", "p/a", "v1", 2), URL) is None
    assert watch.event(sse("put", "p/a", "v2", 3), URL) is None
    assert watch.seq == 3
    deleted = watch.event(sse("delete", "p/a", "v3", 4, value=None), URL)
    assert deleted == Event("delete", "p/a", None, "v3", 4)


def test_a_relisting_delivers_what_changed_and_nothing_older() -> None:
    watch = state()
    watch.event(sse("put", "p/same", "v5", 1), URL)
    watch.event(sse("put", "p/changed", "v5", 2), URL)
    watch.event(sse("put", "p/removed", "v5", 3), URL)
    watch.event(sse("put", "p/behind", "v7", 4), URL)
    watch.event(sse("delete", "p/dead", "v5", 5, value=None), URL)
    watch.start_over()
    assert watch.must_relist
    listed = [
        Entry("p/behind", "old", "v6"),  # the new node has not received v7 yet
        Entry("p/changed", "new", "v8"),
        Entry("p/new", "n", "v1"),
        Entry("p/same", "v", "v5"),
        Entry("q/outside", "x", "v1"),
    ]
    events = watch.relisted(listed, 40)
    assert events == [
        Event("put", "p/changed", "new", "v8", 40, None, True),
        Event("put", "p/new", "n", "v1", 40, None, True),
        Event("delete", "p/removed", None, None, 40, None, True),
    ]
    assert not watch.must_relist
    assert watch.params() == {"prefix": "p/", "since": "40"}
    # The removed key's delete version is unknown: whatever is written to it next is news.
    assert watch.event(sse("put", "p/removed", "v5", 41), URL) is not None
    # The node catching up on p/behind delivers v7 again: not news, it was delivered.
    assert watch.event(sse("put", "p/behind", "v7", 42), URL) is None


def test_a_watch_stays_on_a_broken_stream_and_moves_when_a_node_cannot_be_reached() -> None:
    nodes = Nodes(["http://a:1", "http://b:2"])
    watch = state()
    watch.seq = 9
    assert watch.failed("http://a:1", nodes, streaming=True, why="reset", now=0.0) == "http://a:1"
    assert watch.headers() == {"Last-Event-ID": "9"}
    assert not watch.must_relist
    assert watch.failed("http://a:1", nodes, streaming=False, why="refused", now=1.0) == "http://b:2"
    assert watch.must_relist
    with pytest.raises(Unavailable):
        watch.failed("http://b:2", nodes, streaming=False, why="refused", now=11.5)
    watch.connected()
    assert watch.failed("http://b:2", nodes, streaming=False, why="refused", now=20.0) == "http://a:1"


def test_a_watch_that_may_not_relist_never_moves() -> None:
    nodes = Nodes(["http://a:1", "http://b:2"])
    watch = WatchState("", None, 3, relist=False, give_up_after=10.0)
    assert watch.failed("http://a:1", nodes, streaming=False, why="refused", now=0.0) == "http://a:1"
    assert not watch.must_relist


def test_reconnect_delays_grow_to_a_bound() -> None:
    watch = state()
    delays = [watch.delay() for _ in range(12)]
    assert delays[0] == 0.0
    assert delays == sorted(delays)
    assert delays[-1] == RECONNECT_MAX_DELAY


def test_event_json_is_the_node_shape_with_its_kind() -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = Event("put", "k", "v", "v1", 3, expires)
    assert event.to_json() == {
        "event": "put",
        "key": "k",
        "value": "v",
        "version": "v1",
        "seq": 3,
        "expires": "2030-01-02T03:04:05Z",
    }
