"""Nodes that find each other through a shared Redis registry (`--registry`), as a user runs them.

Every test starts its own registry redis-server (tests/harness/redis.py, no persistence, so a restart
empties it) and real node processes with a short `--registry-ttl`. They check invariant 2 of
DESIGN.md (nodes that can reach each other converge) through discovery alone, the registry-specific
member states of SPEC.md (a node whose entry expired is `left` and no longer pulled; it is `up` again
once it announces itself), and that the registry never stops a node: nodes ride out a registry that
goes away, and a member known from --peers is never expired by it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from shareddb.replication.puller import MAX_BACKOFF
from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    POLL,
    cluster_view,
    member,
    put,
    wait_all_up,
    wait_converged,
    wait_readable,
    wait_state,
)
from tests.harness import NodeProcess, RedisServer, run_cli, running_redis, send, wait_for

pytestmark = pytest.mark.cluster

TTL = 2  # --registry-ttl of every node here
AGE_OUT_TIMEOUT = 30.0  # generous: the machine may be busy; the lower bound is checked apart


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "registry") as server:
        yield server


def with_registry(server: RedisServer) -> tuple[str, ...]:
    return ("--registry", server.url(0), "--registry-ttl", str(TTL))


def write(node: NodeProcess, key: str, value: str) -> tuple[str, str]:
    reply = put(node, key, value)
    assert reply.status in (200, 201), (node.node_id, reply)
    return value, str(reply.json()["version"])


def assert_replicates(nodes: Sequence[NodeProcess], tag: str, everyone: Sequence[NodeProcess]) -> None:
    """A write on each of `nodes` reads back, at its version, on every one of them."""
    written = {f"{tag}/{node.node_id}": write(node, f"{tag}/{node.node_id}", tag) for node in nodes}
    for key, expected in written.items():
        wait_readable(nodes, key, expected, everyone)


def registered(server: RedisServer, node_id: str) -> bool:
    """Whether `node_id` has a live entry in the registry (checked with a raw EXISTS)."""
    return send(server.port, "EXISTS", f"shareddb:node:{node_id}") == b":1"


def listen(port: int) -> socket.socket:
    """Hold a dead node's port: any pull sent to it completes its TCP handshake in the backlog."""
    sock = socket.create_server(("127.0.0.1", port), backlog=64)
    sock.setblocking(False)
    return sock


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_nodes_find_each_other_through_the_registry_alone_and_replicate(
    start_node: StartNode, registry: RedisServer
) -> None:
    """Invariant 2: no --peers and no --join; the registry is the only way they meet."""
    nodes = [start_node(node_id, *with_registry(registry)) for node_id in ("r1", "r2", "r3")]
    wait_all_up(nodes)
    for node in nodes:
        urls = {m["url"] for m in cluster_view(node)["members"]}
        assert urls == {n.url for n in nodes if n is not node}, node.node_id
        assert registered(registry, str(node.node_id))
    assert_replicates(nodes, "found", nodes)
    wait_converged(nodes)


def test_a_killed_node_ages_out_is_no_longer_pulled_and_comes_back_when_restarted(
    start_node: StartNode, registry: RedisServer
) -> None:
    """SPEC: a node whose registry entry expired without a heartbeat is `left` and no longer
    pulled; restarted, it announces itself, is `up` again and catches up (invariants 1 and 2)."""
    nodes = [start_node(node_id, *with_registry(registry)) for node_id in ("r1", "r2", "r3")]
    r1, r2, r3 = nodes
    wait_all_up(nodes)
    assert_replicates(nodes, "before", nodes)

    r3.kill()
    killed_at = time.monotonic()
    wait_state([r1, r2], "r3", "left", nodes, AGE_OUT_TIMEOUT)
    # Its entry lived on for up to a TTL after its last heartbeat (at most TTL/3 before the kill).
    assert time.monotonic() - killed_at >= TTL * 2 / 3 - 0.2
    assert not registered(registry, "r3")
    assert member(r1, "r2")["state"] == "up"  # type: ignore[index]

    # No longer pulled: nothing connects to its port for longer than a puller's longest back-off,
    # while the other two go on writing and replicating.
    held = listen(r3.port)
    try:
        watch_until = time.monotonic() + MAX_BACKOFF + 1.0
        written: dict[str, tuple[str, str]] = {}
        round_ = 0
        while time.monotonic() < watch_until:
            round_ += 1
            for node in (r1, r2):
                key = f"while-gone/{node.node_id}/{round_}"
                written[key] = write(node, key, str(round_))
                wait_readable([r1, r2], key, written[key], nodes)
        pulls = connections(held)
    finally:
        held.close()
    assert pulls == 0, f"{pulls} connections to the port of r3 after it was left"
    assert member(r1, "r3")["state"] == member(r2, "r3")["state"] == "left"  # type: ignore[index]

    r3.start()  # same port, same data
    wait_state([r1, r2], "r3", "up", nodes, AGE_OUT_TIMEOUT)
    for key, expected in written.items():
        wait_readable([r3], key, expected, nodes)
    assert_replicates(nodes, "after", nodes)
    wait_converged(nodes)


def test_a_cleanly_stopped_node_removes_its_entry_and_shows_as_left(
    start_node: StartNode, registry: RedisServer
) -> None:
    nodes = [start_node(node_id, *with_registry(registry)) for node_id in ("r1", "r2")]
    r1, r2 = nodes
    wait_all_up(nodes)
    assert registered(registry, "r2")
    assert r2.stop() == 0
    assert not registered(registry, "r2")  # removed on the way out, not left to expire
    wait_state([r1], "r2", "left", nodes, AGE_OUT_TIMEOUT)
    assert registered(registry, "r1")

    r2.start()
    wait_all_up(nodes)
    assert_replicates(nodes, "again", nodes)


def test_the_registry_works_together_with_peers(start_node: StartNode, registry: RedisServer) -> None:
    """A node without --registry (p3, only --peers r1) joins the registry's nodes, and the registry
    never expires a member it did not announce: when r2's entry expires on r1, p3 stays up."""
    r1 = start_node("r1", *with_registry(registry))
    p3 = start_node("p3", "--peers", r1.url)
    r2 = start_node("r2", *with_registry(registry))
    nodes = [r1, r2, p3]
    wait_all_up(nodes)
    assert not registered(registry, "p3")
    assert_replicates(nodes, "mixed", nodes)

    r2.kill()
    wait_state([r1], "r2", "left", nodes, AGE_OUT_TIMEOUT)
    assert member(r1, "p3")["state"] == "up"  # type: ignore[index]
    assert_replicates([r1, p3], "without-r2", nodes)

    r2.start()
    wait_all_up(nodes)
    wait_converged(nodes)


def test_nodes_ride_out_a_registry_restart_and_discovery_resumes(
    start_node: StartNode, registry: RedisServer
) -> None:
    """The registry goes away under running nodes: they log it once, keep serving and
    replicating with the members they know (none of which turns `left`), a node started meanwhile
    runs on its own, and once the registry is back (restarted empty) everybody meets again."""
    r1, r2 = (start_node(node_id, *with_registry(registry)) for node_id in ("r1", "r2"))
    wait_all_up([r1, r2])

    registry.stop()
    wait_for(
        lambda: all("cannot be reached" in n.new_log() for n in (r1, r2)),
        AGE_OUT_TIMEOUT,
        "both nodes to notice the registry is gone",
        [r1, r2],
        POLL,
    )
    # Longer than a TTL without the registry: entries would have expired, the nodes go on.
    watch_until = time.monotonic() + 2 * TTL
    round_ = 0
    while True:
        round_ += 1
        assert_replicates([r1, r2], f"outage-{round_}", [r1, r2])
        assert member(r1, "r2")["state"] == member(r2, "r1")["state"] == "up"  # type: ignore[index]
        if time.monotonic() > watch_until:
            break
    for node in (r1, r2):
        assert node.new_log().count("cannot be reached") == 1, node.logs()  # logged once

    r3 = start_node("r3", *with_registry(registry))  # the registry is still down
    assert put(r3, "alone", "r3").status == 201
    assert cluster_view(r3)["members"] == []

    registry.start()  # same port, empty
    nodes = [r1, r2, r3]
    wait_all_up(nodes, AGE_OUT_TIMEOUT)
    wait_converged(nodes)
    wait_for(
        lambda: all("is reachable again" in n.new_log() for n in (r1, r2)),
        AGE_OUT_TIMEOUT,
        "both nodes to log that the registry is back",
        nodes,
        POLL,
    )
    for node in nodes:
        assert registered(registry, str(node.node_id))
        assert all(m["state"] == "up" for m in cluster_view(node)["members"]), node.node_id


def test_a_bad_registry_url_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--port", "0", "--data", str(tmp_path / "n"), "--registry", "http://127.0.0.1:1/0"
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["shareddb: bad --registry 'http://127.0.0.1:1/0': expected redis://HOST:PORT/DB"]
