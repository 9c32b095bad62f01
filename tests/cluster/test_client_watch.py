"""The client's watch against real nodes: replay then live, resume on the same node, and what it
delivers when it must move to another node or the node cannot replay (it lists again)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from shareddb.client import AsyncClient, Client, Event, Gone, Watch
from tests.cluster.conftest import StartNode
from tests.harness import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.cluster

WAIT = 30.0


class Collector:
    """A watch iterated in a thread of its own, so a test can wait for events with a deadline."""

    def __init__(self, client: Client, watch: Watch) -> None:
        self.client = client
        self.watch = watch
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.append(event)
        except BaseException as exc:  # reported by wait(); the test decides
            self.error = exc

    def wait(self, count: int, what: str, nodes: Sequence[NodeProcess]) -> list[Event]:
        wait_for(
            lambda: len(self.events) >= count or self.error is not None,
            WAIT,
            f"{what} (so far: {self.events})",
            nodes,
        )
        if self.error is not None and len(self.events) < count:
            raise AssertionError(f"the watch failed: {self.error!r}; events: {self.events}")
        return self.events[:count]

    def last_key(self) -> str | None:
        """The key of the latest event (None before the first); a failed watch fails the test."""
        if self.error is not None:
            raise AssertionError(f"the watch failed: {self.error!r}; events: {self.events}")
        return self.events[-1].key if self.events else None

    def stop(self) -> None:
        self.client.close()  # the thread ends on its next read


def seen(events: Sequence[Event]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.key, e.value) for e in events]


def test_watch_replays_after_a_listing_then_streams_live(start_node: StartNode) -> None:
    node = start_node("r1")
    with Client(node.url) as db:
        db.put("p/a", "1")
        listed = db.list("p/")
        assert listed.seq is not None
        db.put("p/b", "2")
        db.put("q/outside", "x")
        gone = db.delete("p/a")
        watcher = Client(node.url)
        events = Collector(watcher, watcher.watch("p/", since=listed.seq))
        try:
            replayed = events.wait(2, "the replay", [node])
            assert seen(replayed) == [("put", "p/b", "2"), ("delete", "p/a", None)]
            assert replayed[1].version == gone
            assert replayed[0].seq < replayed[1].seq
            assert not any(e.relisted for e in replayed)
            db.put("p/c", "3")
            live = events.wait(3, "a live event", [node])[2]
            assert (live.kind, live.key, live.value) == ("put", "p/c", "3")
            assert live.seq > replayed[1].seq
        finally:
            events.stop()


def test_watch_of_one_key_sees_only_that_key(start_node: StartNode) -> None:
    node = start_node("k1")
    with Client(node.url) as db, db.watch(key="cfg") as changes:
        db.put("cfg/sub", "no")
        db.put("cfg", "yes")
        first = next(changes)
        assert (first.kind, first.key, first.value) == ("put", "cfg", "yes")


def test_watch_resumes_on_the_same_node_after_a_restart(start_node: StartNode) -> None:
    node = start_node("s1")
    watcher = Client(node.url)
    events = Collector(watcher, watcher.watch("p/", give_up_after=WAIT))
    try:
        with Client(node.url) as db:
            # A watch without `since` starts from now: write until it has seen one event.
            wait_for(lambda: db.put("p/a", "1") and events.last_key(), WAIT, "a first event", [node])
            node.stop()
            node.start()  # same port, same data: the same feed
            db.put("p/b", "2")
            wait_for(lambda: events.last_key() == "p/b", WAIT, "p/b after the restart", [node])
        keys = [e.key for e in events.events]
        assert keys.count("p/b") == 1, events.events
        assert set(keys) == {"p/a", "p/b"}, events.events
    finally:
        events.stop()


def test_watch_moves_to_the_next_node_and_delivers_what_changed(start_node: StartNode) -> None:
    b = start_node("b")
    a = start_node("a", "--peers", b.url)
    with Client(a.url) as on_a, Client(b.url) as on_b:
        watcher = Client([a.url, b.url])
        # idle_timeout: a paused node answers nothing, not even pings; notice it within seconds.
        events = Collector(watcher, watcher.watch("p/", idle_timeout=2.0, give_up_after=WAIT))
        try:
            wait_for(lambda: on_a.put("p/x", "1") and events.last_key(), WAIT, "a first event", [a, b])
            kept = on_a.put("p/keep", "k")
            wait_for(lambda: events.last_key() == "p/keep", WAIT, "p/keep from a", [a, b])
            wait_for(lambda: on_b.get("p/keep") is not None, WAIT, "b to hold p/keep", [a, b])
            wait_for(lambda: on_b.get("p/x") is not None, WAIT, "b to hold p/x", [a, b])
            before = len(events.events)
            a.pause()  # the watch's stream goes silent: it must move to b
            on_b.put("p/y", "2")
            on_b.delete("p/x")
            moved = events.wait(before + 2, "the relisted changes from b", [a, b])[before:]
            assert {(e.kind, e.key, e.relisted) for e in moved} == {
                ("put", "p/y", True),
                ("delete", "p/x", True),
            }
            assert events.watch.url == b.url
            assert all(e.key != "p/keep" for e in moved), "p/keep did not change"
            on_b.put("p/z", "3")
            live = events.wait(before + 3, "a live event from b", [a, b])[-1]
            assert (live.key, live.relisted) == ("p/z", False)
            assert kept.version  # p/keep was never delivered twice
            assert [e.key for e in events.events].count("p/keep") == 1
        finally:
            events.stop()
            a.resume()


def test_watch_starting_on_a_down_node_lists_on_the_next(start_node: StartNode) -> None:
    node = start_node("d1")
    down = f"http://127.0.0.1:{free_port()}"
    with Client(node.url) as db:
        db.put("p/old", "o")
        with Client([down, node.url]) as watcher, watcher.watch("p/") as changes:
            first = next(changes)
            assert (first.kind, first.key, first.relisted) == ("put", "p/old", True)
            assert changes.url == node.url
            db.put("p/new", "n")
            second = next(changes)
            assert (second.key, second.relisted) == ("p/new", False)


def test_a_seq_the_node_cannot_replay_relists_or_is_gone(start_node: StartNode) -> None:
    node = start_node("g1")
    with Client(node.url) as db:
        db.put("p/a", "1")
        with db.watch("p/", since=10**12) as changes:
            first = next(changes)
            assert (first.key, first.relisted) == ("p/a", True)
            db.put("p/b", "2")
            assert next(changes).key == "p/b"
        # The watch opens its stream as its block starts: a node that cannot replay says so then.
        with pytest.raises(Gone) as gone, db.watch("p/", since=10**12, relist=False) as strict:
            next(strict)
        assert gone.value.status == 410


async def test_async_watch_replays_streams_and_is_gone(start_node: StartNode) -> None:
    node = start_node("w1")
    async with AsyncClient(node.url) as db:
        await db.put("p/a", "1")
        listed = await db.list("p/")
        assert listed.seq is not None
        await db.put("p/b", "2")
        async with db.watch("p/", since=listed.seq) as changes:
            replayed = await asyncio.wait_for(anext(changes), WAIT)
            assert (replayed.kind, replayed.key, replayed.value) == ("put", "p/b", "2")
            await db.delete("p/b")
            live = await asyncio.wait_for(anext(changes), WAIT)
            assert (live.kind, live.key, live.value) == ("delete", "p/b", None)
        with pytest.raises(Gone):
            async with db.watch("p/", since=10**12, relist=False) as strict:
                await asyncio.wait_for(anext(strict), WAIT)


async def test_async_watch_starting_on_a_down_node_lists_on_the_next(start_node: StartNode) -> None:
    node = start_node("d2")
    down = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(node.url) as db:
        await db.put("p/old", "o")
    async with AsyncClient([down, node.url]) as watcher, watcher.watch("p/") as changes:
        first = await asyncio.wait_for(anext(changes), WAIT)
        assert (first.key, first.relisted) == ("p/old", True)
        await watcher.put("p/new", "n")
        second = await asyncio.wait_for(anext(changes), WAIT)
        assert (second.key, second.relisted) == ("p/new", False)
