"""A node's identity across lost data and removal, on real node processes.

SPEC "Failure behaviour": a node that lost its data and comes back under its old id never mints a
version it minted before; a member that left or was removed and comes back with its old data is
refused, and rejoins only with an empty data dir through --join. A node started again on an older
copy of its data directory is a new life of the node: it never mints a version again, and gets its
new writes to every peer, though they had read its feed further than the copy holds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    cluster_view,
    digest,
    http,
    member,
    put,
    read,
    start_cluster,
    wait_converged,
    wait_readable,
    wait_state,
)
from tests.harness import (
    FAKETIME,
    NodeProcess,
    RedisServer,
    frozen_clock_env,
    run_cli,
    running_redis,
    wait_for,
)

REFUSED = "was removed from the cluster"
needs_faketime = pytest.mark.skipif(
    FAKETIME is None and os.environ.get("CI") != "true", reason="libfaketime is not installed"
)


def versions_written(node: NodeProcess, count: int, prefix: str) -> dict[str, str]:
    """Write `count` keys with values naming this life; answer version -> value."""
    written = {}
    for i in range(count):
        value = f"{prefix}-{i}"
        reply = put(node, f"k/{i}", value)
        assert reply.status in (200, 201), reply.body
        written[reply.json()["version"]] = value
    return written


def written_alone(node: NodeProcess, first_life: dict[str, str]) -> dict[str, str]:
    """Start `node` with no peers (it cannot learn the versions of its first life), write the 20
    keys again and stop it; no version of `first_life` may come back. Answers the new ones."""
    node.start()
    try:
        second_life = versions_written(node, 20, "second")
    finally:
        node.stop()
    reused = first_life.keys() & second_life.keys()
    assert not reused, f"versions minted in both lives: {sorted(reused)[:3]}"
    return second_life


def converged_on_one_value_per_version(a: NodeProcess, b: NodeProcess, written: dict[str, str]) -> None:
    """`a` and `b` converge, each of the 20 keys on a value written with the version it holds."""
    wait_converged([a, b])
    for i in range(20):
        on_a, on_b = read(a, f"k/{i}"), read(b, f"k/{i}")
        assert on_a == on_b, f"k/{i}: {on_a} on a, {on_b} on b"
        assert on_a is not None
        value, version = on_a
        assert written[version] == value


@needs_faketime
@pytest.mark.parametrize("loss", ["wiped", "put back to an older copy"])
def test_node_that_lost_data_with_a_frozen_clock_never_mints_a_version_it_minted_before(
    start_node: StartNode, tmp_path: Path, loss: str
) -> None:
    """Invariant 7: no two different values ever carry the same version, also after a node loses
    its data (its directory wiped, or put back to an older copy of it) and comes back under its
    old id.

    The node's wall clock stands at the same instant in both lives, and its second life writes
    before it hears from anyone: its versions must still differ from those of the first life that
    its store lost, and the cluster converges on one value per version.
    """
    a = start_node("a")
    frozen = frozen_clock_env()
    b = start_node("b", "--peers", a.url, env=frozen)
    older = tmp_path / "older"
    if loss != "wiped":  # the copy holds some writes, and a clock's high-water mark below the rest
        versions_written(b, 5, "before")
        b.stop()
        shutil.copytree(b.data, older)
        b.start()
    first_life = versions_written(b, 20, "first")
    wait_converged([a, b])

    b.kill()
    shutil.rmtree(b.data)
    if loss != "wiped":
        shutil.copytree(older, b.data)
    second_life = written_alone(NodeProcess(b.data, "b", env=frozen), first_life)

    b.start()  # its data dir as the second life left it, now with --peers again
    converged_on_one_value_per_version(a, b, {**first_life, **second_life})


def put_back(redis: RedisServer, copy: Path) -> None:
    """Restart `redis` on a copy of its directory (its append-only file), as restored from a
    backup; `copy` is taken first when it does not exist yet."""
    redis.stop()
    if copy.exists():
        shutil.rmtree(redis.directory)
        shutil.copytree(copy, redis.directory)
    else:
        shutil.copytree(redis.directory, copy)
    redis.start()


@needs_faketime
def test_node_whose_redis_was_put_back_to_an_older_copy_never_mints_a_version_again(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 7 with a store that went back without the node's data dir: a Redis restored from
    an older copy of its files keeps the node's incarnation and holds a lower clock high-water
    mark than the versions the node minted since. The node resumes its clock from the bound kept
    in its data dir (data_dir.ClockFile), so with its wall clock standing at the same instant, and
    no peer to learn its old versions from, it still never mints one of them again."""
    a = start_node("a")
    frozen = frozen_clock_env()
    with running_redis(tmp_path / "redis", aof=True) as redis:
        store = ("--store", redis.url(0))
        b = start_node("b", "--peers", a.url, *store, env=frozen)
        versions_written(b, 5, "before")
        b.stop()
        put_back(redis, tmp_path / "older")  # the backup
        b.start()
        first_life = versions_written(b, 20, "first")
        wait_converged([a, b])

        b.kill()
        put_back(redis, tmp_path / "older")  # the restore
        second_life = written_alone(NodeProcess(b.data, "b", *store, env=frozen), first_life)
        assert min(second_life) > max(first_life)  # the clock went on from the bound

        b.start()  # with --peers again: the feed it serves went back, and a reads it again
        converged_on_one_value_per_version(a, b, {**first_life, **second_life})


def test_member_removed_and_restarted_with_its_old_data_is_refused(start_node: StartNode) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again with its
    old data. Invariant 4: a deleted key never comes back.

    Then, wiped and started with --join, it is a member again and receives everything.
    """
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    assert put(a, "gone", "x").status == 201
    wait_converged(nodes)
    removed = run_cli("leave", "--node", "c", "--url", a.url)
    assert removed.returncode == 0, removed.stderr
    wait_state([a, b], "c", "left", nodes)
    wait_for(lambda: cluster_view(c)["node"]["state"] == "left", 10.0, "c to learn it left", nodes)
    assert http("DELETE", a.url + "/v1/kv/gone").status == 204
    on_c = put(c, "from-removed", "c")
    assert on_c.status == 201

    c.kill()
    c.start()  # its old data, its old --peers
    wait_for(lambda: REFUSED in c.new_log(), 15.0, "c to log that it was removed", nodes)
    assert cluster_view(c)["node"]["state"] == "left"
    # b's later write reaches a, so replication ran after c came back; c's never does.
    after = put(b, "after", "b")
    wait_readable([a], "after", ("b", after.json()["version"]), nodes)
    for node in (a, b):
        assert read(node, "from-removed") is None
        assert read(node, "gone") is None
        assert {m["id"]: m["state"] for m in cluster_view(node)["members"]}["c"] == "left"
    assert digest(a) == digest(b)
    refusals = [line for line in c.new_log().splitlines() if REFUSED in line]
    assert len(refusals) == 1, c.new_log()

    c.kill()
    shutil.rmtree(c.data)
    rejoined = NodeProcess(c.data, "c", "--join", a.url)
    nodes = [a, b, rejoined]
    try:
        rejoined.start()
        wait_state([a, b], "c", "up", nodes)
        wait_converged(nodes)
        assert read(rejoined, "after") == ("b", after.json()["version"])
        assert read(rejoined, "from-removed") is None
        assert cluster_view(rejoined)["node"]["state"] == "up"
    finally:
        rejoined.cleanup()


def test_node_that_left_is_refused_when_it_restarts_on_a_copy_of_its_old_data(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again with its
    old data, also from a copy of its directory (a life of its own, whose store remembers the life
    it was copied from). Invariant 1: no acknowledged write is lost (unless a greater version
    superseded it)."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    assert http("POST", c.url + "/v1/cluster/leave").status == 200
    wait_state([a, b], "c", "left", nodes)
    while_left = put(c, "back/while-left", "c")
    assert while_left.status == 201
    on_a = put(a, "back/on-a", "a")
    assert on_a.status == 201

    c.kill()
    shutil.copytree(c.data, tmp_path / "copy")
    shutil.rmtree(c.data)
    shutil.copytree(tmp_path / "copy", c.data)
    c.start()
    wait_for(lambda: REFUSED in c.new_log(), 15.0, "c to log that it was removed", nodes)
    assert cluster_view(c)["node"]["state"] == "left"
    wait_readable([b], "back/on-a", ("a", on_a.json()["version"]), nodes)
    assert read(a, "back/while-left") is None
    assert read(b, "back/while-left") is None
    assert read(c, "back/while-left") == ("c", while_left.json()["version"])
    assert put(a, "w", "x", "w=3").status == 400  # c does not count as a member


def test_writes_of_a_node_restored_from_an_older_copy_of_its_directory_reach_its_peers(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    B has read A's feed past what the copy holds. A, restored, takes back from B what it lacks
    (its feed grows past B's position again) and takes new writes at positions B counted as read:
    B must still get every one of them."""
    a = start_node("a")
    b = start_node("b", "--peers", a.url)
    versions_written(a, 20, "before")
    a.stop()
    shutil.copytree(a.data, tmp_path / "older")
    a.start()
    for i in range(100):
        assert put(a, f"later/{i}", "after the copy").status == 201
    wait_converged([a, b])
    a.stop()
    shutil.rmtree(a.data)
    shutil.copytree(tmp_path / "older", a.data)
    a.start()
    wait_converged([a, b])  # A holds the later writes again, from B
    for i in range(30):
        assert put(a, f"new/{i}", "after the restore").status == 201
    wait_converged([a, b])
    assert read(b, "new/0") == read(a, "new/0")
    assert "is a copy of the file this store was written in" in a.logs()


def test_writes_of_a_node_whose_redis_was_put_back_reach_a_peer_that_had_read_further(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    B's Redis is put back to an older copy of its files (the same life), B writes at positions
    A had read and grows its feed past A's checkpoint, and is restarted again before A pulls: the
    new run finds its feed beyond A's position. The epoch A's checkpoint was read in is not one
    the put-back store holds (replication/epochs.py), so A reads B's feed again and gets every
    write."""
    a = start_node("a")
    with running_redis(tmp_path / "redis", aof=True) as redis:
        b = start_node("b", "--peers", a.url, "--store", redis.url(0))
        versions_written(b, 5, "before")
        wait_converged([a, b])
        b.stop()
        put_back(redis, tmp_path / "older")  # the backup, at position 5 of B's feed
        b.start()
        for i in range(20):
            assert put(b, f"first/{i}", "v").status == 201
        wait_converged([a, b])  # A has read B's feed to 25
        a.stop()

        b.kill()
        put_back(redis, tmp_path / "older")  # the restore
        b.start()
        for i in range(30):  # positions 6 to 35: past A's checkpoint
            assert put(b, f"second/{i}", "v").status == 201
        b.stop()
        b.start()
        a.start()
        wait_converged([a, b])
        assert all(read(a, f"second/{i}") is not None for i in range(30))
        assert "the store is older than one this node ran on" in b.logs()


def test_a_node_started_with_the_id_of_a_running_node_stops_with_an_error(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Two nodes given one --node-id: the cluster took each one's entry over the other's, many
    times a second, and read each one's feed again from the start every time. The one started
    last stops (exit status 1) with one line saying what to change; the one that was there first
    goes on, and the cluster lists it at its URL (replication/rivals.py)."""
    a = start_node("a")
    first = start_node("dup", "--peers", a.url)
    wait_state([a], "dup", "up", [a, first])
    second = NodeProcess(tmp_path / "second", "dup", "--peers", a.url)
    try:
        second.start()  # it listens before it hears of the other
        wait_for(lambda: not second.running(), 15.0, "the second node to stop", [a, first, second])
        assert second.proc is not None
        assert second.proc.returncode == 1
        said = f"node id dup is in use by another node, at {first.url}"
        assert said in second.logs()
        assert "give each node its own --node-id; the node that started last stops" in first.logs()
        assert put(first, "after", "v").status == 201
        wait_converged([a, first])
        wait_for(lambda: (member(a, "dup") or {}).get("url") == first.url, 10.0, "dup's URL", [a, first])
        assert first.running()
    finally:
        second.cleanup()


def test_a_node_wiped_and_started_at_another_url_under_its_id_goes_on(
    start_node: StartNode, tmp_path: Path
) -> None:
    """An earlier life of a node's id at another URL is not another node using the id: nothing
    answers there now, and the node started anew goes on (replication/rivals.py)."""
    a = start_node("a")
    b = start_node("b", "--peers", a.url)
    wait_state([a], "b", "up", [a, b])
    b.kill()
    shutil.rmtree(b.data)
    moved = NodeProcess(tmp_path / "moved", "b", "--peers", a.url)
    try:
        moved.start()
        assert put(moved, "k", "v").status == 201
        wait_converged([a, moved])
        wait_for(lambda: (member(a, "b") or {}).get("url") == moved.url, 10.0, "b's URL", [a, moved])
        assert moved.running()
        assert "in use by another node" not in moved.logs() + a.logs()
    finally:
        moved.cleanup()
