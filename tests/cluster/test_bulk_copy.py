"""A node joining a cluster copies the data set in bulk (replication/copy.py), between real node
processes: killed half way through the copy, it resumes after the last chunk it applied, and the
writes and deletes made on the source during the copy reach it through the feed read afterwards.

The fault test prints its seed (`seed=N`); run it again with SHAREDDB_TEST_SEED=N.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shareddb.clock import HybridClock, wall_millis
from shareddb.record import Record, make_version
from shareddb.store.sqlite import SQLiteStore, sqlite_path
from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    POLL,
    delete,
    digest,
    put,
    read,
    seeded_rng,
    wait_converged,
)
from tests.harness import NodeProcess, running_redis, wait_for

pytestmark = pytest.mark.cluster

KEYS = 6000
CHUNK = 10  # records per chunk of the copy: hundreds of chunks, so a kill lands inside it


async def fill(data: Path, node_id: str, count: int) -> None:
    """The store node `node_id` will open at `data`, holding `count` keys as it would have written
    them (a thousand PUTs over HTTP would take most of this test's time)."""
    clock = HybridClock()
    store = SQLiteStore(sqlite_path(data), clock_high=lambda: clock.last)
    await store.open()
    try:
        await store.set_meta("created_hlc", str(clock.now(wall_millis())))
        records = [
            Record(f"k{i:05d}", f"value {i}", make_version(clock.now(wall_millis()), node_id))
            for i in range(count)
        ]
        await store.apply(records)
    finally:
        await store.close()


def copied(node: NodeProcess) -> int:
    return int(digest(node)["count"])


def test_joining_node_killed_half_way_through_its_copy_resumes_and_misses_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back."""
    _, rng = seeded_rng()
    (tmp_path / "a").mkdir()
    asyncio.run(fill(tmp_path / "a", "a", KEYS))
    a = start_node("a")
    b = start_node("b", "--peers", a.url, "--copy-chunk", str(CHUNK))

    # Once B has copied a sixth of the keys: writes on A to keys B has copied and to keys it has
    # not reached yet, deletes of both, and new keys. The copy began before all of them.
    wait_for(lambda: copied(b) >= KEYS // 6 or None, 30.0, "b to copy a sixth", [a, b], POLL)
    early = rng.sample(range(0, KEYS // 10), 6)
    late = rng.sample(range(KEYS // 2, KEYS), 6)
    changed = [f"k{i:05d}" for i in early[:3] + late[:3]]
    deleted = [f"k{i:05d}" for i in early[3:] + late[3:]]
    for key in changed:
        assert put(a, key, "changed during the copy").status == 200
    for key in deleted:
        assert delete(a, key).status == 204
    assert put(a, "k00000-new", "new during the copy").status == 201

    # kill -9 half way: what B applied stays applied, with the copy's position.
    b.kill()
    assert "copied " not in b.logs(), "the copy ended before the kill: make KEYS larger"
    assert put(a, "zzz-new", "written while b was down").status == 201
    assert delete(a, "k00001").status in (204, 404)  # maybe among those deleted above

    b.start()
    wait_converged([a, b])
    log = b.logs()
    assert "resuming the copy of a" in log, log  # not from the start
    assert log.count("copying the data set of a") == 1, log
    for key in changed:
        assert read(b, key) == read(a, key)
        assert read(b, key) is not None
    for key in [*deleted, "k00001"]:
        assert read(b, key) is None
    assert read(b, "k00000-new") == read(a, "k00000-new")
    assert read(b, "zzz-new") == read(a, "zzz-new")
    assert copied(b) == KEYS - len(set(deleted) | {"k00001"}) + 2


def test_redis_backed_node_copies_from_a_sqlite_node_and_is_read_through_its_feed(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests. A node on
    Redis copies in bulk like any other (its chunks are Redis script calls); it serves no copy
    itself (501), so a node joining through it reads its changes feed instead."""
    (tmp_path / "a").mkdir()
    asyncio.run(fill(tmp_path / "a", "a", 300))
    a = start_node("a")
    with running_redis(tmp_path / "redis", aof=True) as redis:
        r = start_node("r", "--store", redis.url(0), "--peers", a.url, "--copy-chunk", str(CHUNK))
        wait_for(lambda: "copied 300 records" in r.logs() or None, 30.0, "r's copy", [a, r], POLL)
        c = start_node("c", "--peers", r.url, "--copy-chunk", str(CHUNK))
        wait_converged([a, r, c])
        wait_for(lambda: "does not serve a bulk copy" in c.logs() or None, 30.0, "c to ask r", [c], POLL)
        assert "copying the data set of r" not in c.logs()
