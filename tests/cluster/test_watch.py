"""GET /v1/watch on real node processes, read by a real SSE client (httpx-sse): SPEC.md, "Watch".

Replay then live, resume by Last-Event-ID, list-then-watch under concurrent writers, 410 and 400,
key and prefix filters, replicated writes, per-key compaction, pings, slow and departing clients,
shutdown with open watches, and a thousand watchers.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections.abc import AsyncIterator

import httpx
import pytest

from shareddb.server import SHUTDOWN_TIMEOUT
from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import start_cluster
from tests.harness import NodeProcess, eventually
from tests.harness.metrics import sample
from tests.harness.sse import Watch, open_watch

pytestmark = pytest.mark.cluster

WAIT = 20.0


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        yield client


async def put(client: httpx.AsyncClient, node: NodeProcess, key: str, value: str) -> str:
    reply = await client.put(f"{node.url}/v1/kv/{key}", content=value.encode())
    assert reply.status_code in (200, 201), reply.text
    return str(reply.json()["version"])


async def delete(client: httpx.AsyncClient, node: NodeProcess, key: str) -> None:
    reply = await client.delete(f"{node.url}/v1/kv/{key}")
    assert reply.status_code in (204, 404), reply.text


async def listing(
    client: httpx.AsyncClient, node: NodeProcess, prefix: str = "", limit: int = 1000
) -> tuple[dict[str, tuple[str | None, str]], int]:
    """Every live key under `prefix` (key -> (value, version)), and the seq of the first page."""
    items: dict[str, tuple[str | None, str]] = {}
    params = {"prefix": prefix, "limit": str(limit)}
    first_seq: int | None = None
    while True:
        page = (await client.get(f"{node.url}/v1/kv", params=params)).json()
        first_seq = page["seq"] if first_seq is None else first_seq
        items.update({i["key"]: (i["value"], i["version"]) for i in page["items"]})
        if page["next"] is None:
            return items, first_seq
        params["after"] = page["next"]


def metric(node: NodeProcess, name: str) -> int:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = sample(text, name)
    assert found is not None, f"no {name} in /metrics"
    return int(found)


def assert_ids_increase(watch: Watch) -> None:
    ids = [event.id for event in watch.events]
    assert ids == sorted(set(ids)), f"event ids must strictly increase: {ids}"
    assert all(event.id == event.seq for event in watch.events)


async def test_watch_replays_since_then_streams_live_changes(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    await put(client, node, "a", "1")
    version_b = await put(client, node, "b", "2")
    await delete(client, node, "a")
    watch = await open_watch(client, node.url, prefix="", since="0")
    assert watch.status == 200
    await eventually(lambda: len(watch.events) == 2, "the replay", WAIT)
    live = await open_watch(client, node.url, prefix="")  # no since: from now on
    version_c = await put(client, node, "c", "3")
    await eventually(lambda: len(watch.events) == 3 and len(live.events) == 1, "the live change", WAIT)
    first, second, third = watch.events
    assert (first.kind, first.key, first.value, first.version) == ("put", "b", "2", version_b)
    assert (second.kind, second.key, second.value) == ("delete", "a", None)
    assert (third.kind, third.key, third.value, third.version) == ("put", "c", "3", version_c)
    assert [e.seq for e in watch.events] == [2, 3, 4]
    assert all(e.expires is None for e in watch.events)
    assert live.events == [third]
    assert_ids_increase(watch)
    await watch.close()
    await live.close()


async def test_a_client_resumes_after_its_last_event_id(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    for i in range(3):
        await put(client, node, f"k{i}", "before")
    watch = await open_watch(client, node.url, prefix="k", since="0")
    await eventually(lambda: len(watch.events) == 3, "the replay", WAIT)
    last = watch.last_id
    await watch.close()
    await put(client, node, "k1", "while away")
    await put(client, node, "k3", "while away")
    # Last-Event-ID wins over since.
    again = await open_watch(client, node.url, {"Last-Event-ID": str(last)}, prefix="k", since="0")
    await eventually(lambda: len(again.events) == 2, "the changes after the last event", WAIT)
    assert [(e.key, e.value) for e in again.events] == [("k1", "while away"), ("k3", "while away")]
    assert again.events[0].id > last
    await put(client, node, "k0", "live")
    await eventually(lambda: len(again.events) == 3, "the live change", WAIT)
    assert_ids_increase(again)
    await again.close()


async def test_list_then_watch_misses_nothing_under_concurrent_writers(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    node = start_node("n1")
    keys = [f"k{i:02}" for i in range(30)]
    for key in keys:
        await put(client, node, key, "initial")
    started = asyncio.Event()

    async def writer(worker: int) -> None:
        for n in range(150):
            key = rng.choice(keys)
            if rng.random() < 0.2:
                await delete(client, node, key)
            else:
                await put(client, node, key, f"{worker}-{n}")
            if n == 10:
                started.set()

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    await started.wait()
    # A listing in several pages while the writers go on, then a watch from its first seq.
    listed, seq = await listing(client, node, "k", limit=7)
    watch = await open_watch(client, node.url, prefix="k", since=str(seq))
    await asyncio.gather(*writers)
    final, _ = await listing(client, node, "k")
    expected = {key: value for key, (value, _) in final.items()}
    await eventually(lambda: watch.state(listed) == expected, "the final state of every key", WAIT)
    assert_ids_increase(watch)
    await watch.close()


async def test_since_this_node_cannot_answer_is_410_gone(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    await put(client, node, "a", "1")
    await put(client, node, "a", "2")
    beyond = await open_watch(client, node.url, prefix="", since="3")
    assert beyond.status == 410
    assert beyond.body["error"] == "gone"
    assert "latest seq 2" in beyond.body["message"]
    header = await open_watch(client, node.url, {"Last-Event-ID": "99"}, prefix="", since="0")
    assert header.status == 410, "Last-Event-ID wins over since"
    at_latest = await open_watch(client, node.url, key="a", since="2")
    assert at_latest.status == 200, "the latest seq itself is answered: nothing to replay"
    await at_latest.close()


@pytest.mark.parametrize(
    ("params", "headers", "why"),
    [
        ({"prefix": "", "since": "-1"}, {}, "since must be a non-negative integer"),
        ({"prefix": "", "since": "1.5"}, {}, "since must be a non-negative integer"),
        ({"prefix": "", "since": "x"}, {}, "since must be a non-negative integer"),
        ({"prefix": ""}, {"Last-Event-ID": "abc"}, "Last-Event-ID must be a non-negative integer"),
        ({"prefix": ""}, {"Last-Event-ID": ""}, "Last-Event-ID must be a non-negative integer"),
        ({"prefix": "", "since": "x"}, {"Last-Event-ID": "0"}, "since must be a non-negative integer"),
        ({}, {}, "exactly one of prefix"),
        ({"prefix": "a", "key": "a"}, {}, "exactly one of prefix"),
        ({"key": ""}, {}, "invalid key"),
    ],
)
async def test_a_bad_watch_request_is_400(
    start_node: StartNode,
    client: httpx.AsyncClient,
    params: dict[str, str],
    headers: dict[str, str],
    why: str,
) -> None:
    node = start_node("n1")
    watch = await open_watch(client, node.url, headers, **params)
    assert watch.status == 400
    assert watch.body["error"] == "bad_request"
    assert why in watch.body["message"]


async def test_key_and_prefix_watches_get_only_their_keys(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    watches = {
        "key a/1": await open_watch(client, node.url, key="a/1"),
        "prefix a/": await open_watch(client, node.url, prefix="a/"),
        "prefix b/": await open_watch(client, node.url, prefix="b/"),
        "every key": await open_watch(client, node.url, prefix=""),
    }
    written = ["a/1", "a/2", "a", "b/1", "ab", "a/1"]
    for key in written:
        await put(client, node, key, key)
    await eventually(lambda: len(watches["every key"].events) == 6, "every change", WAIT)
    # Sent in commit order: once the last change is seen everywhere it matches, all are.
    await eventually(lambda: len(watches["key a/1"].events) == 2, "the key's changes", WAIT)
    assert {name: [e.key for e in w.events] for name, w in watches.items()} == {
        "key a/1": ["a/1", "a/1"],
        "prefix a/": ["a/1", "a/2", "a/1"],
        "prefix b/": ["b/1"],
        "every key": written,
    }
    for watch in watches.values():
        await watch.close()


async def test_a_watcher_on_one_node_sees_writes_made_on_another(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    a, b = start_cluster(start_node, ["a", "b"])
    watch = await open_watch(client, b.url, prefix="x/")
    version = await put(client, a, "x/1", "from a")
    await delete(client, a, "x/1")
    await eventually(lambda: len(watch.events) == 2, "the replicated changes on b", WAIT)
    put_event, delete_event = watch.events
    assert (put_event.kind, put_event.value, put_event.version) == ("put", "from a", version)
    assert (delete_event.kind, delete_event.value) == ("delete", None)
    assert_ids_increase(watch)
    await watch.close()


async def test_a_watcher_behind_sees_each_key_once_at_its_latest_state(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    for i in range(10):
        await put(client, node, "often", str(i))
        await put(client, node, f"once{i}", "x")
    await delete(client, node, "once3")
    watch = await open_watch(client, node.url, prefix="", since="0")
    await eventually(lambda: len(watch.events) == 11, "the replay", WAIT)
    by_key = [e.key for e in watch.events]
    assert sorted(by_key) == sorted({*by_key}), "each key once"
    often = next(e for e in watch.events if e.key == "often")
    assert often.value == "9"
    once3 = next(e for e in watch.events if e.key == "once3")
    assert (once3.kind, once3.value) == ("delete", None)
    assert_ids_increase(watch)
    await watch.close()


async def test_an_idle_watch_gets_pings(start_node: StartNode, client: httpx.AsyncClient) -> None:
    node = start_node("n1", "--watch-ping", "0.1")
    pings = 0
    async with client.stream("GET", f"{node.url}/v1/watch", params={"prefix": ""}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line == ": ping":
                pings += 1
                if pings == 3:
                    break
    assert pings == 3


async def test_a_watcher_too_slow_to_read_does_not_hold_up_writes_and_catches_up(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    value = "v" * 65536
    slow = Watch(client, node.url, {"prefix": ""})
    slow.paused.clear()  # reads the headers, then nothing until told
    assert await slow.open() == 200
    reader = await open_watch(client, node.url, prefix="")
    # Far more than the socket buffers and the watcher's pending limit can hold.
    for i in range(400):
        await put(client, node, f"k{i % 20}", f"{i}:{value}")
    await eventually(lambda: len(reader.events) == 400, "every change at a watcher that reads", WAIT)
    assert metric(node, "shareddb_watch_fell_behind_total") >= 1
    slow.paused.set()
    expected = {f"k{i % 20}": f"{i}:{value}" for i in range(380, 400)}
    await eventually(lambda: slow.state() == expected, "the slow watcher's catching up", WAIT)
    assert len(slow.events) < 400, "states it missed while behind are skipped"
    assert_ids_increase(slow)
    await eventually(lambda: metric(node, "shareddb_watchers_behind") == 0, "it rejoined", WAIT)
    await slow.close()
    await reader.close()


async def test_clients_that_hang_up_leave_no_trace_and_sigterm_ends_open_watches(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1", "--watch-ping", "0.2")
    leaving = [await open_watch(client, node.url, prefix="") for _ in range(5)]
    await put(client, node, "a", "1")
    await eventually(lambda: all(len(w.events) == 1 for w in leaving), "the event", WAIT)
    for watch in leaving:
        await watch.close()
    for i in range(20):  # writes and pings to the connections that were closed
        await put(client, node, "a", str(i))
    await eventually(lambda: metric(node, "shareddb_watchers") == 0, "the watches to end", WAIT)
    staying = [await open_watch(client, node.url, prefix="", since="0") for _ in range(5)]
    await eventually(lambda: all(w.events for w in staying), "the replay", WAIT)
    # Stops well before the server's own shutdown timeout would end the streams.
    assert await asyncio.to_thread(node.stop, SHUTDOWN_TIMEOUT / 2) == 0
    await eventually(lambda: all(w.ended for w in staying), "the streams to end", WAIT)
    log = node.logs()
    for bad in ("Traceback", " ERROR ", " WARNING "):
        assert bad not in log, log
    for watch in staying:
        await watch.close()


async def test_a_thousand_watchers_do_not_stop_writes(
    start_node: StartNode, client: httpx.AsyncClient
) -> None:
    node = start_node("n1")
    watchers = 1000
    watches: list[Watch] = []
    for start in range(0, watchers, 100):
        watches += await asyncio.gather(
            *(open_watch(client, node.url, key=f"w{i}") for i in range(start, start + 100))
        )
    everything = await open_watch(client, node.url, prefix="w")
    assert all(w.status == 200 for w in watches)
    await eventually(lambda: metric(node, "shareddb_watchers") == watchers + 1, "every watch", WAIT)
    semaphore = asyncio.Semaphore(32)

    async def write(writer: httpx.AsyncClient, i: int) -> None:
        async with semaphore:
            await put(writer, node, f"w{i}", str(i))

    async with httpx.AsyncClient(timeout=30.0) as writer:
        await asyncio.gather(*(write(writer, i) for i in range(watchers)))
    await eventually(lambda: len(everything.events) == watchers, "every write's event", WAIT)
    await eventually(lambda: all(len(w.events) == 1 for w in watches), "each watcher's event", WAIT)
    assert all(w.events[0].key == f"w{i}" for i, w in enumerate(watches))
    for watch in [*watches, everything]:
        await watch.close()
