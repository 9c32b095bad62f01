"""Nodes that replicate through a change bus (`--bus nats://...`), as a user runs them.

Every test starts its own `nats-server -js` on a free loopback port (never 4222), its store in
tmp_path, and real node processes with `--bus` and no `--peers`. They check invariant 2 of
DESIGN.md (nodes converge to identical digests) through the bus alone, invariant 1 (no
acknowledged write is lost) with a node stopped, with the NATS server killed and restarted in the
middle of writes, and with a node that was away longer than the stream retains, and invariant 9 (a
transaction is never seen by halves) on the receiving nodes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    POLL,
    Op,
    assert_state,
    cluster_view,
    final_state,
    http,
    live_items,
    put,
    run_ops,
    seeded_rng,
    wait_all_up,
    wait_converged,
)
from tests.harness import NodeProcess, free_ports, run_cli, wait_for
from tests.harness.nats import NatsServer, running_nats

pytestmark = pytest.mark.cluster


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path / "nats") as server:
        yield server


def bus_cluster(start_node: StartNode, server: NatsServer, ids: list[str]) -> list[NodeProcess]:
    nodes = [start_node(node_id, "--bus", server.url) for node_id in ids]
    wait_all_up(nodes)
    return nodes


def writes(nodes: list[NodeProcess], tag: str, per_node: int) -> list[Op]:
    return [Op(n, f"{tag}/{n.node_id}/{i}", f"{tag}-{i}") for n in nodes for i in range(per_node)]


def test_writes_on_every_node_converge_through_the_bus(start_node: StartNode, bus: NatsServer) -> None:
    nodes = bus_cluster(start_node, bus, ["a", "b", "c"])
    acks = run_ops(writes(nodes, "w", 40), concurrency=8)
    assert all(a.version for a in acks), [a for a in acks if not a.version][:3]
    agreed = wait_converged(nodes)
    assert agreed["count"] == 120
    for node in nodes:
        assert_state(node, final_state(acks), "w/", set())
    # The bus is the cluster: members known without --peers, a write waits for every copy.
    reply = put(nodes[0], "everywhere", "x", "w=3")
    assert reply.status == 201, reply
    view = cluster_view(nodes[1])
    assert view["bus"]["connected"] is True
    assert {m["id"] for m in view["members"]} == {"a", "c"}
    metrics = http("GET", f"{nodes[1].url}/metrics").body.decode()
    assert "shareddb_bus_connected 1.0" in metrics


def test_a_transaction_arrives_whole(start_node: StartNode, bus: NatsServer) -> None:
    nodes = bus_cluster(start_node, bus, ["a", "b", "c"])
    then = [{"op": "put", "key": f"t/{i:03}", "value": str(i)} for i in range(200)]
    body = json.dumps({"if": [], "then": then}).encode()
    reply = http("POST", f"{nodes[0].url}/v1/txn", body, {"Content-Type": "application/json"})
    assert reply.status == 200, reply
    seen: dict[str, set[int]] = {"b": set(), "c": set()}

    def whole_everywhere() -> bool:
        for node in nodes[1:]:
            count = len(live_items(node, "t/"))
            seen[str(node.node_id)].add(count)
            assert count in (0, 200), f"{node.node_id} shows {count} of the 200 keys"
        return all(200 in counts for counts in seen.values())

    wait_for(whole_everywhere, 30, "the transaction on b and c", nodes, POLL)
    wait_converged(nodes)


def test_node_that_was_stopped_catches_up_from_the_bus(start_node: StartNode, bus: NatsServer) -> None:
    a, b, c = bus_cluster(start_node, bus, ["a", "b", "c"])
    before = run_ops(writes([a, b, c], "before", 10), concurrency=4)
    wait_converged([a, b, c])
    c.stop()
    meanwhile = run_ops(writes([a, b], "meanwhile", 30), concurrency=4)
    c.start()
    wait_converged([a, b, c])
    for prefix, acks in (("before/", before), ("meanwhile/", meanwhile)):
        assert_state(c, final_state(acks), prefix, set())


def test_node_killed_before_it_published_sends_its_writes_when_back(
    start_node: StartNode, bus: NatsServer
) -> None:
    """Invariant 1: an acknowledged write reaches the others though its node was killed (kill -9)
    between the commit and the publication: it publishes from its saved position when back."""
    a, b = bus_cluster(start_node, bus, ["a", "b"])
    acks = run_ops(writes([a], "crash", 200), concurrency=16)
    a.kill()
    assert all(x.version for x in acks)
    a.start()
    wait_converged([a, b])
    assert_state(b, final_state(acks), "crash/", set())


def test_bus_server_killed_mid_writes_loses_nothing(start_node: StartNode, bus: NatsServer) -> None:
    seed, rng = seeded_rng()
    print(f"seed {seed}")
    nodes = bus_cluster(start_node, bus, ["a", "b", "c"])
    ops = writes(nodes, "k", 100)
    rng.shuffle(ops)
    restarted = threading.Event()

    def kill_and_restart() -> None:
        bus.kill()  # SIGKILL: what the server had not written out is lost with it

        def restart() -> None:
            bus.start()
            restarted.set()

        threading.Thread(target=restart, daemon=True).start()

    acks = run_ops(ops, concurrency=6, events={rng.randrange(60, 180): kill_and_restart})
    wait_for(restarted.is_set, 30, "nats-server back", nodes, POLL)
    assert all(a.version for a in acks), [a for a in acks if not a.version][:3]
    wait_converged(nodes, timeout=60)
    for node in nodes:
        assert_state(node, final_state(acks), "k/", set())


def test_node_behind_the_streams_retention_copies_from_a_peer(
    start_node: StartNode, bus: NatsServer
) -> None:
    # The stream exists before the nodes start (they take it as it is): it keeps 5 messages.
    asyncio.run(_make_stream(bus.url, max_msgs=5))
    a, b, c = bus_cluster(start_node, bus, ["a", "b", "c"])
    put(a, "early", "1")
    wait_converged([a, b, c])
    c.stop()
    # One at a time, each waiting for its copy (w=2 publishes at once, where a busy publisher
    # would gather writes): each its own message, so the stream drops c's place.
    for i in range(30):
        assert put(a if i % 2 else b, f"late/{i}", str(i), "w=2").status == 201
    c.start()
    wait_converged([a, b, c])
    assert len(live_items(c, "late/")) == 30
    assert "too far behind on the bus" in c.new_log()


def test_a_stream_made_anew_carries_the_writes_of_a_node_gone_for_good(
    start_node: StartNode, bus: NatsServer
) -> None:
    """Invariants 1 and 2: when the stream is deleted and made again, the nodes publish their
    feeds to it again, and that includes the writes of a node that is not there to publish its
    own: a node that starts on the new stream gets them too."""
    a, b, c = bus_cluster(start_node, bus, ["a", "b", "c"])
    acks = run_ops(writes([c], "k", 20) + writes([a], "k", 5), concurrency=4)
    wait_converged([a, b, c])
    c.stop()  # for good
    asyncio.run(_delete_stream(bus.url))
    d = start_node("d", "--bus", bus.url)
    wait_converged([a, b, d], timeout=60)
    assert_state(d, final_state(acks), "k/", set())  # c's writes (k/c/...) and a's


def test_values_larger_than_a_bus_message_arrive_whole(start_node: StartNode, tmp_path: Path) -> None:
    with running_nats(tmp_path / "small", max_payload=32 * 1024) as server:
        a, b = bus_cluster(start_node, server, ["a", "b"])
        large = "x" * (200 * 1024)
        assert put(a, "large", large).status == 201
        then = [{"op": "put", "key": f"big/{i}", "value": f"{i}" * 20_000} for i in range(10)]
        body = json.dumps({"if": [], "then": then}).encode()
        reply = http("POST", f"{a.url}/v1/txn", body, {"Content-Type": "application/json"})
        assert reply.status == 200, reply
        assert put(a, "after", "small").status == 201
        wait_converged([a, b])
        assert live_items(b, "large")["large"][0] == large
        assert len(live_items(b, "big/")) == 10


def test_member_removed_on_the_bus_stops_replicating(start_node: StartNode, bus: NatsServer) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again."""
    a, b, c = nodes = bus_cluster(start_node, bus, ["a", "b", "c"])
    assert http("DELETE", f"{a.url}/v1/cluster/members/c").status == 200
    wait_for(
        lambda: cluster_view(c)["node"]["state"] == "left", 10.0, "c to learn it was removed", nodes
    )
    assert put(c, "rm/on-c", "c").status == 201
    assert put(a, "rm/on-a", "a").status == 201
    wait_for(lambda: "rm/on-a" in live_items(b, "rm/"), 10.0, "a's write on b", nodes, POLL)
    assert "rm/on-c" not in live_items(a, "rm/")
    assert "rm/on-c" not in live_items(b, "rm/")
    assert "rm/on-a" not in live_items(c, "rm/")
    assert put(a, "rm/w", "x", "w=3").status == 400  # c no longer counts


def test_a_bad_bus_url_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "0", "--data", str(tmp_path / "n"), "--bus", "http://h:1")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["shareddb: bad --bus 'http://h:1': use nats://HOST:PORT (optionally /CLUSTER)"]


def test_a_node_starts_while_the_bus_is_away_and_replicates_once_it_is_there(
    start_node: StartNode, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "late")
    server.port = next(p for p in free_ports(2) if p != 4222)
    try:
        a = start_node("a", "--bus", server.url)
        b = start_node("b", "--bus", server.url)
        assert put(a, "before-the-bus", "1").status == 201  # writes go on meanwhile
        server.start()
        wait_converged([a, b])
        assert "before-the-bus" in live_items(b, "before")
    finally:
        server.kill()


async def _make_stream(url: str, max_msgs: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            name="SHAREDDB_shareddb", subjects=["shareddb.shareddb.changes.>"], max_msgs=max_msgs
        )
    finally:
        await nc.close()


async def _delete_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream("SHAREDDB_shareddb")
    finally:
        await nc.close()


def test_a_node_started_with_the_id_of_a_node_on_the_bus_stops_with_an_error(
    start_node: StartNode, bus: NatsServer, tmp_path: Path
) -> None:
    """Two nodes on one bus given one --node-id would share its durable consumer, each getting
    a part of the others' writes: the one started last hears the other's heartbeat, finds it
    running at its URL, and stops (replication/rivals.py)."""
    first, other = bus_cluster(start_node, bus, ["dup", "other"])
    second = NodeProcess(tmp_path / "second", "dup", "--bus", bus.url)
    try:
        second.start()
        wait_for(lambda: not second.running(), 15.0, "the second node to stop", [first, second])
        assert second.proc is not None
        assert second.proc.returncode == 1
        assert f"node id dup is in use by another node, at {first.url}" in second.logs()
        assert first.running()
        assert put(other, "after", "v").status == 201
        wait_converged([first, other])
    finally:
        second.cleanup()
