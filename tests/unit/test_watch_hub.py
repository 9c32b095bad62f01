"""The watch hub (shareddb/watch.py) on the memory store: which changes a watcher gets, in what order,
and what happens to one that does not keep up. The HTTP side is in tests/cluster/test_watch.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
import pytest

from shareddb.clock import wall_millis
from shareddb.record import Record, make_version
from shareddb.store.base import Change, FeedPage
from shareddb.store.memory import MemoryStore
from shareddb.watch import MAX_PENDING_EVENTS, PING, Watcher, WatchHub, encode_event
from tests.harness import eventually

PING_NEVER = 3600.0


@dataclass
class Seen:
    """What a consumer of one watcher's stream got."""

    events: list[tuple[int, str, dict[str, object]]] = field(default_factory=list)
    pings: int = 0

    def add(self, chunk: bytes) -> None:
        for block in chunk.split(b"\n\n"):
            if not block:
                continue
            if block + b"\n\n" == PING:
                self.pings += 1
                continue
            lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
            self.events.append(
                (int(lines[b"id"]), lines[b"event"].decode(), orjson.loads(lines[b"data"]))
            )

    def latest(self) -> dict[str, object]:
        state: dict[str, object] = {}
        for _, _, data in self.events:
            state[str(data["key"])] = data["value"]
        return state


@pytest.fixture
def store(memory_store: MemoryStore) -> MemoryStore:
    return memory_store


class Writer:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.hlc = 1 << 20

    async def put(self, key: str, value: str | None) -> None:
        self.hlc += 1
        await self.store.write(Record(key, value, make_version(self.hlc, "n1")))


async def consume(watcher: Watcher, seen: Seen, gate: asyncio.Event | None = None) -> None:
    async for chunk in watcher.stream(PING_NEVER):
        seen.add(chunk)
        if gate is not None:
            await gate.wait()


def check_order(seen: Seen) -> None:
    ids = [seq for seq, _, _ in seen.events]
    assert ids == sorted(set(ids)), f"ids must strictly increase: {ids}"


async def test_a_watcher_behind_sees_each_key_once_at_its_latest_state(store: MemoryStore) -> None:
    writer = Writer(store)
    for i in range(5):
        await writer.put("k", f"v{i}")
    await writer.put("j", "x")
    await writer.put("j", None)
    hub = WatchHub(store, now=wall_millis)
    seen = Seen()
    task = asyncio.create_task(consume(hub.watch("", exact=False, since=0), seen))
    await eventually(lambda: len(seen.events) >= 2, "the replay")
    await writer.put("k", "live")
    await eventually(lambda: len(seen.events) >= 3, "the live change")
    await hub.close(1.0)
    await task
    assert [(kind, data["key"], data["value"]) for _, kind, data in seen.events] == [
        ("put", "k", "v4"),
        ("delete", "j", None),
        ("put", "k", "live"),
    ]
    assert [data["seq"] for _, _, data in seen.events] == [5, 7, 8]
    check_order(seen)


async def test_watchers_get_only_their_key_or_prefix(store: MemoryStore) -> None:
    writer = Writer(store)
    hub = WatchHub(store, now=wall_millis)
    watches = {"a/1": True, "a/": False, "b/": False, "": False}
    seen = {name: Seen() for name in watches}
    tasks = [
        asyncio.create_task(consume(hub.watch(name, exact=exact, since=store.last_seq), seen[name]))
        for name, exact in watches.items()
    ]
    await eventually(lambda: hub.position == store.last_seq and hub.watchers == 4, "watchers live")
    for key in ["a/1", "a/2", "a", "b/1", "ab", "a/1"]:
        await writer.put(key, key)
    await eventually(lambda: len(seen[""].events) == 6, "every change")
    await hub.close(1.0)
    await asyncio.gather(*tasks)
    keys = {name: [data["key"] for _, _, data in s.events] for name, s in seen.items()}
    assert keys == {
        "a/1": ["a/1", "a/1"],
        "a/": ["a/1", "a/2", "a/1"],
        "b/": ["b/1"],
        "": ["a/1", "a/2", "a", "b/1", "ab", "a/1"],
    }


async def test_a_slow_watcher_holds_no_backlog_and_catches_up_with_latest_states(
    store: MemoryStore,
) -> None:
    writer = Writer(store)
    hub = WatchHub(store, now=wall_millis)
    seen, gate = Seen(), asyncio.Event()
    watcher = hub.watch("", exact=False, since=store.last_seq)
    await writer.put("first", "1")
    task = asyncio.create_task(consume(watcher, seen, gate))
    await eventually(lambda: len(seen.events) == 1, "the first event")
    # The consumer is stuck "writing to its socket": changes pile up until it falls behind.
    for i in range(MAX_PENDING_EVENTS + 500):
        await writer.put(f"k{i % 50}", str(i))
    await eventually(lambda: watcher.fell_behind >= 1, "the watcher to fall behind")
    assert not watcher.pending, "a watcher that fell behind holds no events"
    gate.set()
    expected = {"first": "1", **{f"k{i % 50}": str(i) for i in range(MAX_PENDING_EVENTS + 500)}}
    await eventually(lambda: seen.latest() == expected, "the latest state of every key")
    assert watcher.live, "it rejoins the hub once caught up"
    await writer.put("k0", "after")
    await eventually(lambda: seen.latest()["k0"] == "after", "a live change after catching up")
    await hub.close(1.0)
    await task
    check_order(seen)
    assert len(seen.events) < MAX_PENDING_EVENTS + 502, "states it missed are skipped"


async def test_a_change_whose_key_was_written_again_later_is_skipped(store: MemoryStore) -> None:
    hub = WatchHub(store, now=wall_millis)
    watcher = hub.watch("", exact=False, since=0)
    hub.join(watcher)
    old = Change(1, Record("k", "old", make_version(1, "n1")), txn=1, current=False)
    other = Change(2, Record("j", "x", make_version(2, "n1")), txn=1)
    hub.dispatch(FeedPage([old, other], 2))
    assert [seq for seq, _ in watcher.pending] == [2]
    await hub.close(0)


async def test_a_value_expired_by_the_nodes_clock_is_never_sent_as_a_put(store: MemoryStore) -> None:
    hub = WatchHub(store, now=lambda: 10_000)
    seen = Seen()
    await store.write(Record("expired", "v", make_version(1, "n1"), expires=5_000))
    await store.write(Record("kept", "v", make_version(2, "n1"), expires=20_000))
    watcher = hub.watch("", exact=False, since=0)
    task = asyncio.create_task(consume(watcher, seen))
    await eventually(lambda: any(data["key"] == "kept" for _, _, data in seen.events), "kept")
    await eventually(lambda: watcher.live, "the watcher to catch up")
    await store.write(Record("late", "v", make_version(3, "n1"), expires=9_999))
    await store.write(Record("after", "v", make_version(4, "n1")))
    await eventually(lambda: any(data["key"] == "after" for _, _, data in seen.events), "after")
    await hub.close(1.0)
    await task
    puts = [data["key"] for _, kind, data in seen.events if kind == "put"]
    assert "expired" not in puts
    assert "late" not in puts
    assert puts[:1] == ["kept"]


async def test_an_idle_stream_pings(store: MemoryStore) -> None:
    hub = WatchHub(store, now=wall_millis)
    seen = Seen()

    async def pinged() -> None:
        async for chunk in hub.watch("", exact=False, since=0).stream(0.02):
            seen.add(chunk)
            if seen.pings >= 3:
                return

    await asyncio.wait_for(pinged(), 10)
    assert not seen.events
    await hub.close(0)


def test_events_are_encoded_as_the_contract_shows() -> None:
    put = Change(7, Record("a b", "v\nw", "01a2-n1", expires=1_800_000_005_000))
    assert encode_event(put) == (
        b'id: 7\nevent: put\ndata: {"key":"a b","value":"v\\nw","version":"01a2-n1","seq":7,'
        b'"expires":"2027-01-15T08:00:05.000Z"}\n\n'
    )
    gone = Change(8, Record("a", None, "01a3-n1"))
    assert encode_event(gone).startswith(b'id: 8\nevent: delete\ndata: {"key":"a","value":null,')
