"""The node registry in-process against a real redis-server: entries, heartbeats, expiry, faults.

Each test runs its own redis-server (tests/harness/redis.py) and drives `Registry` objects with their
own member lists, as the nodes of a cluster would, without the HTTP part. Every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import orjson
import pytest
from redis.asyncio import Redis

from shareddb.membership import Membership
from shareddb.registry import Entry, Registry
from tests.harness import RedisServer, eventually, free_port, running_redis

TTL = 1.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "registry") as server:
        yield server


MakeRegistry = Callable[..., Registry]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """`make_registry(url, "a")`: a registry for a member list of node "a", stopped at the end."""
    made: list[Registry] = []

    def make(url: str, node_id: str, *, ttl: float = TTL) -> Registry:
        members = Membership(
            node_id, f"http://{node_id}.test:8080", clock=asyncio.get_running_loop().time
        )
        members.announce(f"http://{node_id}.test:8080", 1000 + len(made))
        registry = Registry(url, members, ttl=ttl)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.stop()


async def raw(server: RedisServer) -> tuple[dict[str, str], dict[str, int]]:
    """The registry's `nodes` hash, and each live `node:{id}` key with its remaining TTL in ms."""
    client = Redis.from_url(server.url(0), decode_responses=True)
    try:
        nodes = cast(dict[str, str], await client.hgetall("shareddb:nodes"))
        live = {}
        async for key in client.scan_iter(match="shareddb:node:*"):
            live[key.removeprefix("shareddb:node:")] = int(await client.pttl(key))
        return nodes, live
    finally:
        await client.aclose()


def state(registry: Registry, node_id: str) -> str | None:
    member = registry.membership.members.get(node_id)
    return None if member is None else registry.membership.state(member)


async def test_a_node_announces_itself_with_an_expiring_entry_and_withdraws_it_on_stop(
    redis_server: RedisServer, make_registry: MakeRegistry
) -> None:
    registry = make_registry(redis_server.url(0), "a", ttl=15.0)
    await registry.tick()
    nodes, live = await raw(redis_server)
    expected = {"id": "a", "url": "http://a.test:8080", "v": 1000, "inc": ""}
    assert {k: orjson.loads(v) for k, v in nodes.items()} == {"a": expected}
    assert set(live) == {"a"}
    assert 0 < live["a"] <= 15_000

    await registry.stop()
    nodes, live = await raw(redis_server)
    assert live == {}  # gone at once, for the others to see
    assert set(nodes) == {"a"}  # still known as registered: the others expire it


async def test_nodes_find_each_other_and_a_silent_one_expires_after_the_ttl(
    redis_server: RedisServer, make_registry: MakeRegistry
) -> None:
    a = make_registry(redis_server.url(0), "a")
    b = make_registry(redis_server.url(0), "b")
    await b.tick()
    await a.tick()
    await b.tick()
    assert a.membership.pull_urls() == {"http://b.test:8080"}
    assert b.membership.pull_urls() == {"http://a.test:8080"}

    # b stops its heartbeats without a word (a crash); a goes on reading.
    a.start()
    await eventually(lambda: state(a, "b") == "left", "b to expire on a")
    assert a.membership.pull_urls() == set()
    _, live = await raw(redis_server)
    assert set(live) == {"a"}

    # b announces itself again: it is back.
    await b.tick()
    await eventually(lambda: a.membership.pull_urls() == {"http://b.test:8080"}, "b to be back on a")
    assert state(a, "b") == "down"  # not `left`; `up` once it is reached


async def test_a_node_outlives_its_registry_and_finds_it_again(
    tmp_path: Path, make_registry: MakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Started while the registry is down: it runs, logs once, retries, and then announces
    itself; a registry that restarts empty is refilled without anyone expiring."""
    caplog.set_level(logging.INFO, logger="shareddb.registry")
    server = RedisServer(tmp_path / "registry")
    server.port = free_port()
    a = make_registry(server.url(0), "a")
    b = make_registry(server.url(0), "b")
    a.start()
    b.start()
    try:
        await eventually(lambda: a.failures >= 3 and b.failures >= 3, "failed attempts")
        unreachable = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
        assert len(unreachable) == 2  # once per node, however many attempts
        assert a.membership.members == {}

        await asyncio.to_thread(server.start)
        await eventually(lambda: state(a, "b") is not None and state(b, "a") is not None, "discovery")
        assert any("reachable again" in r.getMessage() for r in caplog.records)

        # Restarted empty (no persistence): both announce themselves again, and for a TTL after
        # that nobody is expired although for a moment nobody is listed.
        await asyncio.to_thread(server.restart)
        loop = asyncio.get_running_loop()
        watch_until = loop.time() + 3 * TTL  # past the grace after the restart
        while True:
            assert state(a, "b") != "left"
            assert state(b, "a") != "left"
            if loop.time() > watch_until:
                break
            await asyncio.sleep(0.02)
        await eventually(lambda: a.failures == 0 and b.failures == 0, "both to reach it again")
        _, live = await raw(server)
        assert set(live) == {"a", "b"}
    finally:
        server.kill()


async def test_a_flushed_registry_does_not_expire_live_nodes(
    redis_server: RedisServer, make_registry: MakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    a = make_registry(redis_server.url(0), "a")
    b = make_registry(redis_server.url(0), "b")
    for registry in (a, b, a):
        await registry.tick()
    a._trusted_since = -1e9  # a long, unbroken view of the registry

    client = Redis.from_url(redis_server.url(0))
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    await a.tick()  # finds its own entry gone: every entry may be gone, b's too
    assert state(a, "b") != "left"
    assert any("entry was gone" in r.getMessage() for r in caplog.records)
    await b.tick()
    await a.tick()
    assert state(a, "b") != "left"


async def test_a_node_that_left_withdraws_its_entry(
    redis_server: RedisServer, make_registry: MakeRegistry
) -> None:
    a = make_registry(redis_server.url(0), "a", ttl=15.0)
    await a.tick()
    a.membership.leave("a", 2000)
    await a.tick()
    _, live = await raw(redis_server)
    assert live == {}
    await a.tick()  # and stays out
    _, live = await raw(redis_server)
    assert live == {}


async def test_an_entry_written_by_someone_else_is_not_withdrawn(
    redis_server: RedisServer, make_registry: MakeRegistry
) -> None:
    """Two processes claiming one id: the one that stops last must not delete the other's entry."""
    a = make_registry(redis_server.url(0), "a", ttl=15.0)
    await a.tick()
    other = Entry("a", "http://elsewhere:8080", 5000).encode()
    client = Redis.from_url(redis_server.url(0), decode_responses=True)
    try:
        await client.set("shareddb:node:a", other, px=15_000)
        await a.stop()
        assert await client.get("shareddb:node:a") == other
    finally:
        await client.aclose()


def test_a_bad_registry_url_is_refused() -> None:
    members = Membership("a", "http://a:1", clock=lambda: 0.0)
    for url in ("http://127.0.0.1:6379/0", "redis://", "redis://host:99999/0", "redis://host/x"):
        with pytest.raises(ValueError, match=r"."):
            Registry(url, members)
