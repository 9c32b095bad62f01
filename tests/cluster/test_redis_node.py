"""A node whose store is a Redis (`--store redis://HOST:PORT/DB`), as a user runs it.

Each test starts its own redis-server (tests/harness/redis.py) on a free port; the durability tests
use one with `appendonly yes` and `appendfsync always`, which is what the README tells users to run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    Op,
    Reply,
    assert_state,
    delete,
    digest,
    final_state,
    http,
    live_items,
    put,
    read,
    read_seed,
    run_ops,
    seed_call,
    seeded_rng,
    wait_all_up,
    wait_converged,
)
from tests.harness import NodeProcess, RedisServer, free_port, run_cli, running_redis, wait_for

pytestmark = pytest.mark.cluster

OPENED = re.compile(r"opened store .* at sequence (\d+)")
RECOVER_TIMEOUT = 30.0


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis", aof=True) as server:
        yield server


def start_redis_node(start_node: StartNode, node_id: str, redis: RedisServer, *args: str) -> NodeProcess:
    return start_node(node_id, "--store", redis.url(0), *args)


def opened_at(node: NodeProcess) -> int:
    """The sequence number the node's store opened at, from its latest start's log."""
    found = OPENED.findall(node.new_log())
    assert found, node.new_log()
    return int(found[-1])


def assert_unavailable_v1(reply: Reply) -> None:
    assert reply.status == 503, reply
    body = reply.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == "unavailable"
    assert body["message"]


def assert_unavailable_seed(reply: Reply) -> None:
    assert reply.status == 503, reply
    body = reply.json()
    assert body["success"] is False, body
    assert body["msg"]


def test_a_redis_node_serves_both_apis(start_node: StartNode, aof_redis: RedisServer) -> None:
    node = start_redis_node(start_node, "r1", aof_redis)

    created = put(node, "a/1", "one & two = 3")
    assert created.status == 201
    version = created.json()["version"]
    assert read(node, "a/1") == ("one & two = 3", version)
    assert put(node, "a/1", "again").status == 200
    assert seed_call(node, "update", name="a/2", value="").status == 200  # an empty value

    update = seed_call(node, "update", name="seed key", value="ключ 😀")
    assert update.status == 200
    assert update.json()["success"] is True
    assert read_seed(node, "seed key") == ("ключ 😀", update.json()["version"])
    assert seed_call(node, "dump").json() == {
        "success": True,
        "data": {"a/1": "again", "a/2": "", "seed key": "ключ 😀"},
    }
    page = http("GET", node.url + "/v1/kv?prefix=a/&limit=1").json()
    assert [(item["key"], item["value"]) for item in page["items"]] == [("a/1", "again")]
    assert page["next"] == "a/1"

    assert delete(node, "a/1").status == 204
    assert delete(node, "a/1").status == 404
    assert seed_call(node, "remove", name="seed key").status == 200
    assert seed_call(node, "get", name="seed key").status == 404
    assert digest(node)["count"] == 1
    assert node.stop() == 0


def test_a_redis_node_keeps_acknowledged_writes_across_kill_9(
    start_node: StartNode, aof_redis: RedisServer
) -> None:
    """Invariants 1 and 5: with appendfsync always, what the node acknowledged is in Redis when
    the node dies, and its sequence and clock go on from there after a restart."""
    seed, rng = seeded_rng()
    node = start_redis_node(start_node, "r1", aof_redis)
    keys = [f"k{i}" for i in range(40)]
    ops = [Op(node, rng.choice(keys), None if rng.random() < 0.2 else f"v{n}") for n in range(600)]
    acks = run_ops(ops, events={400: node.kill})
    acknowledged = [ack for ack in acks if ack.version is not None]
    cut_off = [ack.op for ack in acks if ack.status == 0]  # sent, never answered: either outcome
    assert len(acks) - len(cut_off) >= 400, f"seed={seed}"  # the kill came after 400 answers
    expected = final_state(acknowledged)

    node.start()
    # Every acknowledged write took one sequence number of its own.
    assert opened_at(node) >= len(acknowledged), f"seed={seed}"
    items = live_items(node)
    for key in keys:
        want = expected.get(key)
        found = items.get(key)
        if found == (None if want is None or want[0] is None else want):
            continue
        maybe = [op for op in cut_off if op.key == key]
        if found is None:
            assert any(op.value is None for op in maybe), f"seed={seed}: {key} lost {want}"
        else:
            assert found[0] in {op.value for op in maybe}, f"seed={seed}: {key} is {found}, not {want}"
            assert want is None or found[1] > want[1], f"seed={seed}: {key} went back to {found}"
    after = put(node, "after", "restart")
    assert after.status == 201
    assert after.json()["version"] > max(str(ack.version) for ack in acknowledged)


def test_a_redis_node_answers_503_while_its_redis_is_down_and_recovers_by_itself(
    start_node: StartNode, aof_redis: RedisServer
) -> None:
    node = start_redis_node(start_node, "r1", aof_redis)
    assert put(node, "kept", "before").status == 201
    kept = read(node, "kept")

    aof_redis.kill()
    assert_unavailable_v1(put(node, "k", "v"))
    assert_unavailable_v1(http("GET", f"{node.url}/v1/kv/never-written"))
    assert_unavailable_v1(http("DELETE", f"{node.url}/v1/kv/kept"))
    assert_unavailable_v1(http("GET", f"{node.url}/v1/kv?prefix="))
    assert_unavailable_seed(seed_call(node, "update", name="k", value="v"))
    assert_unavailable_seed(seed_call(node, "get", name="never-written"))
    assert_unavailable_seed(seed_call(node, "remove", name="kept"))
    assert http("GET", node.url + "/health").status == 200

    aof_redis.start()
    wait_for(
        lambda: put(node, "k", "after").status == 201,
        RECOVER_TIMEOUT,
        "the node to write again once its Redis is back",
        [node],
    )
    assert read(node, "kept") == kept
    assert live_items(node).keys() == {"kept", "k"}
    assert digest(node)["count"] == 2


def test_dump_answers_503_in_the_seed_shape_while_redis_is_down(
    start_node: StartNode, aof_redis: RedisServer
) -> None:
    node = start_redis_node(start_node, "r1", aof_redis)
    assert put(node, "kept", "before").status == 201
    aof_redis.kill()
    assert_unavailable_seed(seed_call(node, "dump"))


def test_a_mixed_cluster_of_a_sqlite_and_a_redis_node_converges(
    start_node: StartNode, aof_redis: RedisServer
) -> None:
    """Invariants 2 and 3: the two stores merge by the same rule and end with equal digests."""
    seed, rng = seeded_rng()
    sqlite_node = start_node("s1")
    redis_node = start_redis_node(start_node, "r1", aof_redis, "--peers", sqlite_node.url)
    nodes = [sqlite_node, redis_node]
    wait_all_up(nodes)

    keys = [f"key/{i}" for i in range(30)]
    ops = [
        Op(rng.choice(nodes), rng.choice(keys), None if rng.random() < 0.25 else f"value {n}")
        for n in range(400)
    ]
    acks = run_ops(ops)
    assert all(ack.version is not None or ack.status == 404 for ack in acks), f"seed={seed}"
    agreed = wait_converged(nodes)
    expected = final_state(acks)
    for node in nodes:
        assert_state(node, expected, "key/", set())
    assert agreed["count"] == sum(1 for value, _ in expected.values() if value is not None)


def test_serve_refuses_an_unreachable_or_malformed_redis_in_one_line(tmp_path: Path) -> None:
    closed = free_port()
    cases = {
        f"redis://127.0.0.1:{closed}/0": f"127.0.0.1:{closed}",
        "redis://127.0.0.1:port/0": "--store",
        "redis://127.0.0.1:6390/not-a-db": "not a number",
        "redis://:secret@127.0.0.1:70000/0": "--store",
    }
    for n, (url, expected) in enumerate(cases.items()):
        data = tmp_path / f"d{n}"
        result = run_cli("serve", "--port", "0", "--data", str(data), "--store", url, timeout=30)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0, (url, result)
        assert "Traceback" not in result.stderr, result.stderr
        error = lines[-1]
        assert expected in error, (url, error)
        assert "secret" not in result.stderr
