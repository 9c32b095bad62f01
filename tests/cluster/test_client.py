"""The Python client (`shareddb.client`) against real nodes: both `Client` and `AsyncClient` do
the whole API, move on to the next URL when a node cannot be reached, answer dataclasses and raise
one exception class per kind of failure."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from shareddb.client import (
    AsyncClient,
    BadRequest,
    Client,
    ClientError,
    Delete,
    Entry,
    Failed,
    Forbidden,
    IfAbsent,
    IfVersion,
    InvalidAnswer,
    NotFound,
    PreconditionFailed,
    Put,
    Timeout,
    TooLarge,
    TxnResult,
    Unauthorized,
    Unavailable,
)
from tests.cluster.conftest import StartNode
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.cluster


def closed_url() -> str:
    """A loopback URL nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


# -- keys ----------------------------------------------------------------------------------------


def test_sync_client_reads_writes_lists_and_deletes(start_node: StartNode) -> None:
    node = start_node("s1")
    with Client(node.url) as db:
        created = db.put("app/a", "alpha")
        assert created.key == "app/a"
        assert created.created
        updated = db.put("app/a", "alpha 2")
        assert not updated.created
        assert updated.version > created.version
        db.put("app/b", "ünïcode & = ?")
        db.put("other", "")
        assert db.get("app/a") == Entry("app/a", "alpha 2", updated.version, None)
        assert db.get("missing") is None
        empty = db.get("other")
        assert empty is not None
        assert empty.value == ""

        first = db.list("app/", limit=1)
        assert [e.key for e in first.entries] == ["app/a"]
        assert first.next == "app/a"
        second = db.list("app/", after=first.next, limit=1)
        assert [(e.key, e.value) for e in second.entries] == [("app/b", "ünïcode & = ?")]
        assert [e.key for e in db.items(page=1)] == ["app/a", "app/b", "other"]

        deleted = db.delete("app/a")
        assert deleted is not None
        assert deleted > updated.version
        assert db.get("app/a") is None
        with pytest.raises(NotFound) as missing:
            db.delete("app/a")
        assert missing.value.status == 404


async def test_async_client_reads_writes_lists_and_deletes(start_node: StartNode) -> None:
    node = start_node("a1")
    async with AsyncClient(node.url) as db:
        written = await db.put("app/a", "alpha")
        assert written.created
        assert await db.get("app/a") == Entry("app/a", "alpha", written.version)
        assert await db.get("missing") is None
        await db.put("app/b", "beta")
        assert [e.key async for e in db.items("app/", page=1)] == ["app/a", "app/b"]
        page = await db.list("app/", limit=1)
        assert page.next == "app/a"
        assert await db.delete("app/a")
        with pytest.raises(NotFound):
            await db.delete("app/a")
        health = await db.health()
        assert health == {"status": "ok", "node": "a1"}


# -- failover ------------------------------------------------------------------------------------


def test_sync_client_moves_to_the_next_url_when_a_node_is_down(start_node: StartNode) -> None:
    node = start_node("f1")
    down = closed_url()
    with Client([down, node.url]) as db:
        written = db.put("k", "v")  # never reached `down`: safe to send to the next node
        assert db.url == node.url  # the node that answered is asked first from now on
        assert db.get("k") == Entry("k", "v", written.version)
    with Client(f"{down},{node.url}") as db:  # one comma-separated string does the same
        assert db.get("k") == Entry("k", "v", written.version)


async def test_async_client_moves_to_the_next_url_when_a_node_is_down(start_node: StartNode) -> None:
    node = start_node("f2")
    async with AsyncClient([closed_url(), node.url]) as db:
        written = await db.put("k", "v")
        assert (await db.get("k")) == Entry("k", "v", written.version)
        assert db.url == node.url


def test_failover_follows_a_node_that_goes_down(start_node: StartNode) -> None:
    first = start_node("g1")
    second = start_node("g2", "--peers", first.url)
    with Client([first.url, second.url]) as db:
        assert db.put("k", "v").key == "k"
        assert db.url == first.url
        first.stop()
        assert db.put("k2", "v2").key == "k2"
        assert db.url == second.url


def test_no_reachable_node_is_unavailable_naming_every_url() -> None:
    urls = [closed_url(), closed_url()]
    with Client(urls) as db, pytest.raises(Unavailable) as failed:
        db.get("k")
    assert failed.value.status == 0
    assert all(url in failed.value.message for url in urls)


async def test_async_no_reachable_node_is_unavailable() -> None:
    async with AsyncClient([closed_url()]) as db:
        with pytest.raises(Unavailable):
            await db.put("k", "v")


def test_a_4xx_answer_is_not_sent_to_the_next_node(start_node: StartNode) -> None:
    small = start_node("x1", "--max-value-bytes", "8")
    roomy = start_node("x2")
    with Client([small.url, roomy.url]) as db:
        with pytest.raises(TooLarge) as refused:
            db.put("k", "x" * 9)
        assert refused.value.status == 413
        assert refused.value.url == small.url
    with Client(roomy.url) as db:
        assert db.get("k") is None


def test_a_url_that_is_not_a_node_url_is_refused_at_once() -> None:
    with pytest.raises(BadRequest) as refused:
        Client(["not-a-url"])
    assert "not-a-url" in refused.value.message


# -- typed exceptions ----------------------------------------------------------------------------


def test_every_refusal_has_its_exception(start_node: StartNode) -> None:
    node = start_node("e1", "--max-value-bytes", "8")
    with Client(node.url) as db:
        with pytest.raises(BadRequest) as bad:
            db.list(limit=0)
        assert bad.value.status == 400
        assert "limit" in bad.value.message
        with pytest.raises(BadRequest):
            db.put("k", "v", w=5)  # more copies than the node knows nodes
        with pytest.raises(TooLarge):
            db.put("k", "123456789")
        with pytest.raises(NotFound):
            db.delete("never")
        for error in (BadRequest, TooLarge, NotFound):
            assert issubclass(error, ClientError)
        assert db.list().entries == []  # nothing refused was written


def test_token_refusals_are_unauthorized_or_forbidden(start_node: StartNode) -> None:
    node = start_node("t1", "--token", "s3cret")
    with Client(node.url) as db, pytest.raises(Unauthorized) as anonymous:
        db.get("k")
    assert anonymous.value.status == 401
    with Client(node.url, token="wrong") as db, pytest.raises((Unauthorized, Forbidden)) as wrong:
        db.get("k")
    assert wrong.value.status == (401 if isinstance(wrong.value, Unauthorized) else 403)
    with Client(node.url, token="s3cret") as db:
        db.put("k", "v")
        assert db.get("k") is not None


def test_a_w_wait_that_times_out_is_timeout_and_the_write_is_kept(start_node: StartNode) -> None:
    node = start_node("w1")
    peer = start_node("w2", "--peers", node.url)
    with Client(node.url) as db:

        def copied() -> bool:
            try:
                return bool(db.put("k", "v", w=2, timeout=5))
            except BadRequest:  # w1 does not know w2 yet: w=2 is more nodes than it knows
                return False

        wait_for(copied, 20, "a write held by both nodes", [node, peer])
        peer.pause()  # the peer takes no more writes
        with pytest.raises(Timeout) as late:
            db.put("k", "v", w=2, timeout=0.2)
        assert late.value.status == 504
        kept = db.get("k")
        assert kept is not None
        assert kept.value == "v"
        assert late.value.version == kept.version


def test_a_server_that_is_not_shareddb_is_an_invalid_answer(other_server: str) -> None:
    with Client(other_server) as db:
        for call in (lambda: db.put("k", "v"), db.list, lambda: db.get("k")):
            with pytest.raises(InvalidAnswer) as odd:
                call()
            assert odd.value.status == 0
            assert other_server in odd.value.message


# -- conditional writes, TTL, transactions (SPEC: "The API applications build on") ---------------


def test_put_if_absent_and_if_version(start_node: StartNode) -> None:
    node = start_node("c1")
    with Client(node.url) as db:
        first = db.put("k", "1", if_absent=True)
        assert first.created
        with pytest.raises(PreconditionFailed) as taken:
            db.put("k", "2", if_absent=True)
        assert taken.value.status == 412
        assert taken.value.version == first.version
        assert taken.value.failed == [Failed("k", first.version)]
        second = db.put("k", "2", if_version=first.version)
        with pytest.raises(PreconditionFailed) as stale:
            db.put("k", "3", if_version=first.version)
        assert stale.value.version == second.version
        with pytest.raises(PreconditionFailed):
            db.delete("k", if_version=first.version)
        assert db.get("k") == Entry("k", "2", second.version)
        db.delete("k", if_version=second.version)
        with pytest.raises(PreconditionFailed) as absent:
            db.put("k", "4", if_version=second.version)
        assert absent.value.version is None
        assert db.put("k", "5", if_absent=True).created  # a deleted key is absent


def test_threads_incrementing_one_counter_lose_no_increment(start_node: StartNode) -> None:
    node = start_node("c2")
    threads, rounds = 4, 10

    def worker() -> None:
        with Client(node.url) as db:
            for _ in range(rounds):
                while True:
                    current = db.get("counter")
                    try:
                        if current is None:
                            db.put("counter", "1", if_absent=True)
                        else:
                            db.put("counter", str(int(current.value) + 1), if_version=current.version)
                        break
                    except PreconditionFailed:
                        continue

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    with Client(node.url) as db:
        counter = db.get("counter")
    assert counter is not None
    assert counter.value == str(threads * rounds)


def test_a_put_with_ttl_answers_its_expiry(start_node: StartNode) -> None:
    node = start_node("l1")
    with Client(node.url) as db:
        before = datetime.now(UTC)
        db.put("session", "s", ttl=100)
        entry = db.get("session")
        assert entry is not None
        assert entry.expires is not None
        assert before + timedelta(seconds=98) <= entry.expires <= before + timedelta(seconds=102)
        listed = db.list("session").entries
        assert listed[0].expires is not None
        assert abs((listed[0].expires - entry.expires).total_seconds()) < 1.0
        cleared = db.put("session", "s2")  # a write without ttl clears it
        assert db.get("session") == Entry("session", "s2", cleared.version, None)
        with pytest.raises(BadRequest):
            db.put("session", "s3", ttl=0)


async def test_async_conditional_write_and_ttl(start_node: StartNode) -> None:
    node = start_node("l2")
    async with AsyncClient(node.url) as db:
        lock = await db.put("lock", "me", if_absent=True, ttl=30)
        with pytest.raises(PreconditionFailed) as held:
            await db.put("lock", "you", if_absent=True, ttl=30)
        assert held.value.version == lock.version
        entry = await db.get("lock")
        assert entry is not None
        assert entry.expires is not None
        await db.delete("lock", if_version=lock.version)
        assert await db.get("lock") is None


def test_transaction_applies_all_or_nothing(start_node: StartNode) -> None:
    node = start_node("x1")
    with Client(node.url) as db:
        old = db.put("t/c", "gone soon")
        results = db.txn(
            if_=[IfAbsent("t/a"), IfVersion("t/c", old.version)],
            then=[Put("t/a", "1"), Put("t/b", "2", ttl=60), Delete("t/c"), Delete("t/never")],
        )
        assert [r.key for r in results] == ["t/a", "t/b", "t/c", "t/never"]
        assert results[3] == TxnResult("t/never", None)
        a = db.get("t/a")
        assert a is not None
        assert results[0] == TxnResult("t/a", a.version)
        assert db.get("t/c") is None
        b = db.get("t/b")
        assert b is not None
        assert b.expires is not None

        with pytest.raises(PreconditionFailed) as failed:
            db.txn(if_=[IfAbsent("t/a"), IfVersion("t/c", old.version)], then=[Put("t/d", "4")])
        assert failed.value.failed == [Failed("t/a", a.version), Failed("t/c", None)]
        assert db.get("t/d") is None
        assert db.txn(then=[Put("t/w", "x")], w=1, timeout=2)[0].key == "t/w"
        with pytest.raises(BadRequest):
            db.txn_json({"if": [], "then": [{"op": "frobnicate", "key": "x"}]})


async def test_async_transaction(start_node: StartNode) -> None:
    node = start_node("x2")
    async with AsyncClient(node.url) as db:
        results = await db.txn(then=[Put("a", "1"), Put("b", "2")])
        assert [r.key for r in results] == ["a", "b"]
        with pytest.raises(PreconditionFailed) as failed:
            await db.txn(if_=[IfAbsent("a")], then=[Delete("b")])
        assert [f.key for f in failed.value.failed] == ["a"]
        assert (await db.get("b")) is not None


async def test_async_client_serves_concurrent_requests(start_node: StartNode) -> None:
    node = start_node("p1")
    async with AsyncClient(node.url) as db:
        await asyncio.gather(*(db.put(f"k{i:02}", str(i)) for i in range(20)))
        assert [e.value async for e in db.items(page=7)] == [str(i) for i in range(20)]
