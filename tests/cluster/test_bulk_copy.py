"""A node joining a cluster copies the data set in bulk (replication/copy.py), between real node
processes: killed half way through the copy, it resumes after the last chunk it applied, and the
writes and deletes made on the source during the copy reach it through the feed read afterwards.
What it copied is not sent back to the run of the source that served it, and is sent to a later
run, which may have started on an older store.

The fault test prints its seed (`seed=N`); run it again with SHAREDDB_TEST_SEED=N.
"""

from __future__ import annotations

import asyncio
import shutil
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
    http,
    put,
    read,
    seeded_rng,
    wait_converged,
    wait_no_lag,
)
from tests.harness import NodeProcess, running_redis, wait_for
from tests.harness.metrics import by_label

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


def served(node: NodeProcess) -> float:
    """Changes `node`'s feed has served to its pullers, of every kind."""
    text = http("GET", f"{node.url}/metrics").body.decode()
    found = by_label(text, "shareddb_peer_changes_served_total", "kind")
    return found.get("own", 0.0) + found.get("relayed", 0.0)


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


def test_a_copy_is_not_sent_back_to_the_run_that_served_it_but_is_to_a_restored_one(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests. B copies
    A's data set, and A pulls B's feed, which holds every copied record: the run of A that served
    the copy holds them all, so none comes back. A restarted on a backup of its data directory
    taken before half of its writes gets back from B's feed what it lost. (By then A's first run
    has read past the copied positions, and B keeps nothing of them: that another run is sent
    them all is shown in tests/store/test_feed.py.)"""
    a = start_node("a")
    half = 150
    for i in range(half):
        assert put(a, f"k{i:03d}", "before the backup").status == 201
    a.stop()
    shutil.copytree(a.data, tmp_path / "backup")
    a.start()
    for i in range(half, 2 * half):
        assert put(a, f"k{i:03d}", "after the backup").status == 201
    b = start_node("b", "--peers", a.url, "--copy-chunk", str(CHUNK))
    wait_converged([a, b])
    # The copy's line is written once its last chunk commits, so just after the digests agree.
    done = f"copied {2 * half} records"
    wait_for(lambda: done in b.logs() or None, 30.0, "b's copy to be noted", [a, b], POLL)
    wait_no_lag([b])  # A has pulled B's feed to its end
    # Each of the copy's chunks is noted once it commits: a pull that came in between the commit
    # and the note would take that chunk back, but no more than that.
    before = served(b)
    assert before < half

    a.stop()
    shutil.rmtree(a.data)
    shutil.copytree(tmp_path / "backup", a.data)
    a.start()
    wait_converged([a, b])
    assert copied(a) == 2 * half
    assert served(b) - before >= half  # what the restore lost came back from B's feed
    assert read(a, f"k{2 * half - 1:03d}") == read(b, f"k{2 * half - 1:03d}")
