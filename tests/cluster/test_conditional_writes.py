"""Conditional writes (`If-Match: "VER"`, `If-None-Match: *`) on real node processes.

The condition is checked and the write applied in one step on the node that takes the request: of
many concurrent writes naming one version there, exactly one succeeds and every other one gets 412
`precondition_failed` naming the version the winner wrote. Nodes do not coordinate: two nodes may
each accept a conditional write on the same version (while cut off from each other, or just
before either has received the other's write), and last-writer-wins then keeps the one with the
greater version on every node. `?w=N` is how a client learns that a write reached N nodes; it does
not make a condition hold cluster-wide.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from tests.cluster.conftest import StartNode, StartProxied
from tests.cluster.replication_helpers import (
    Reply,
    http,
    key_url,
    put,
    read,
    seeded_rng,
    start_cluster,
    wait_all_up,
    wait_converged,
    wait_readable,
)
from tests.harness import NodeProcess

pytestmark = pytest.mark.cluster

RACERS = 32
ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, object] | None
    etag: str | None


async def _race(
    method: str, urls_and_bodies: list[tuple[str, bytes | None]], headers: dict[str, str]
) -> list[Answer]:
    """Send every request at once (each on a connection of its own) and collect the answers."""
    start = asyncio.Event()

    async def one(session: aiohttp.ClientSession, url: str, body: bytes | None) -> Answer:
        await start.wait()
        async with session.request(method, url, data=body, headers=headers) as response:
            raw = await response.read()
            etag = response.headers.get("ETag")
            return Answer(
                response.status,
                orjson.loads(raw) if raw else None,
                etag.strip('"') if etag else None,
            )

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(one(session, url, body)) for url, body in urls_and_bodies]
        await asyncio.sleep(0)  # every task is waiting at the start line
        start.set()
        return await asyncio.gather(*tasks)


def race(
    method: str, node: NodeProcess, key: str, bodies: list[bytes | None], headers: dict[str, str]
) -> list[Answer]:
    return asyncio.run(_race(method, [(key_url(node, key), body) for body in bodies], headers))


def assert_refused(reply: Reply, current: str | None) -> None:
    """A 412 naming `current` as the key's version on that node (None: absent)."""
    assert reply.status == 412, reply
    assert reply.json() == {
        "error": "precondition_failed",
        "message": reply.json()["message"],
        "version": current,
    }


def one_winner(answers: list[Answer], success: int) -> Answer:
    """Exactly one answer is `success`; every other one is a 412 naming the winner's version."""
    winners = [a for a in answers if a.status == success]
    assert len(winners) == 1, [a.status for a in answers]
    [winner] = winners
    losers = [a for a in answers if a is not winner]
    assert all(a.status == 412 for a in losers), [a.status for a in losers]
    current = None if success == 204 else winner.etag
    for loser in losers:
        assert loser.body is not None
        assert loser.body["error"] == "precondition_failed", loser.body
        assert loser.body["version"] == current, (loser.body, winner)
    return winner


def test_of_many_concurrent_conditional_writes_on_one_node_exactly_one_wins(
    start_node: StartNode,
) -> None:
    """Invariant 3 (the final value is the greatest version written, never a value nobody wrote)
    and invariant 6 (a refused write changes nothing): 32 concurrent `If-Match` PUTs naming the
    same version on one node, round after round, have exactly one winner each; the 31 others are
    412 with the winner's version, and the key holds the winner's value. The same for
    `If-None-Match: *` creating a key, and for `If-Match` DELETEs (the losers then find the key
    absent: version null)."""
    node = start_node("solo")
    created = put(node, "counter", "0")
    assert created.status == 201, created
    version = created.json()["version"]
    for round_ in range(ROUNDS):
        bodies: list[bytes | None] = [f"{round_}-{i}".encode() for i in range(RACERS)]
        answers = race("PUT", node, "counter", bodies, {"If-Match": f'"{version}"'})
        winner = one_winner(answers, 200)
        assert winner.body is not None
        assert winner.body["version"] == winner.etag
        assert winner.etag is not None
        assert winner.etag > version
        value = bodies[answers.index(winner)]
        assert value is not None
        assert read(node, "counter") == (value.decode(), winner.etag)
        version = winner.etag

    # If-None-Match: * creates a key only where it is absent: one of the racers.
    bodies = [f"lock-{i}".encode() for i in range(RACERS)]
    answers = race("PUT", node, "lock", bodies, {"If-None-Match": "*"})
    winner = one_winner(answers, 201)
    value = bodies[answers.index(winner)]
    assert value is not None
    assert winner.etag is not None
    assert read(node, "lock") == (value.decode(), winner.etag)

    # DELETE with If-Match: one deletes; the others find it absent and are told so (null).
    answers = race("DELETE", node, "lock", [None] * RACERS, {"If-Match": f'"{winner.etag}"'})
    deleted = one_winner(answers, 204)
    assert deleted.etag is not None
    assert deleted.etag > winner.etag
    assert read(node, "lock") is None
    # A deleted key is absent: If-Match of its old version fails, If-None-Match creates it again.
    again = http("PUT", key_url(node, "lock"), b"x", {"If-Match": f'"{winner.etag}"'})
    assert_refused(again, None)
    assert read(node, "lock") is None
    fresh = http("PUT", key_url(node, "lock"), b"mine", {"If-None-Match": "*"})
    assert fresh.status == 201, fresh
    taken = http("PUT", key_url(node, "lock"), b"theirs", {"If-None-Match": "*"})
    assert_refused(taken, fresh.json()["version"])
    assert read(node, "lock") == ("mine", fresh.json()["version"])


def test_a_conditional_write_replicates_like_any_other(start_node: StartNode) -> None:
    """Invariant 2 (nodes that reach each other converge to identical digests) and invariant 4 (a
    deleted key never comes back): writes accepted under `If-Match` / `If-None-Match: *` reach the
    peer as plain writes, and a peer's current version is what the next condition names there."""
    a, b = start_cluster(start_node, ["a", "b"])
    created = http("PUT", key_url(a, "k"), b"one", {"If-None-Match": "*"})
    assert created.status == 201, created
    v1 = created.json()["version"]
    wait_readable([b], "k", ("one", v1), [a, b])
    # B names the version it received from A.
    updated = http("PUT", key_url(b, "k"), b"two", {"If-Match": f'"{v1}"'})
    assert updated.status == 200, updated
    v2 = updated.json()["version"]
    wait_readable([a], "k", ("two", v2), [a, b])
    stale = http("PUT", key_url(a, "k"), b"stale", {"If-Match": f'"{v1}"'})
    assert_refused(stale, v2)
    removed = http("DELETE", key_url(a, "k"), None, {"If-Match": f'"{v2}"'})
    assert removed.status == 204, removed
    wait_readable([a, b], "k", None, [a, b])
    wait_converged([a, b])
    assert read(a, "k") is None
    assert read(b, "k") is None


def test_nodes_do_not_coordinate_but_last_writer_wins_keeps_one_everywhere(
    proxied_cluster: StartProxied,
) -> None:
    """Invariant 2 (converge to identical digests after the partition heals) and invariant 3 (the
    final value is the greatest version written): with the two nodes cut off from each other, an
    `If-Match` on the same version is accepted on both (nodes do not coordinate); after healing,
    both hold the same one, the greater version, which is greater than the version both named."""
    _, rng = seeded_rng()
    (a, b), proxies = proxied_cluster(["a", "b"])
    wait_all_up([a, b])
    base = put(a, "k", "base")
    assert base.status == 201, base
    v0 = base.json()["version"]
    wait_readable([b], "k", ("base", v0), [a, b])

    proxies.isolate(0)
    order = [a, b]
    rng.shuffle(order)
    written: dict[str, tuple[str, str]] = {}
    for node in order:
        value = f"from-{node.node_id}"
        reply = http("PUT", key_url(node, "k"), value.encode(), {"If-Match": f'"{v0}"'})
        assert reply.status == 200, (node.node_id, reply)
        written[str(node.node_id)] = (value, reply.json()["version"])
        assert read(node, "k") == written[str(node.node_id)]
    # Neither write crossed the partition: each node still holds its own.
    assert read(a, "k") == written["a"]
    assert read(b, "k") == written["b"]

    proxies.heal()
    winner = max(written.values(), key=lambda item: item[1])
    assert winner[1] > v0
    wait_readable([a, b], "k", winner, [a, b])
    wait_converged([a, b])
    loser = min(written.values(), key=lambda item: item[1])
    for node in (a, b):
        late = http("PUT", key_url(node, "k"), b"late", {"If-Match": f'"{loser[1]}"'})
        assert_refused(late, winner[1])
