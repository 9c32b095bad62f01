"""What the replication tests share: HTTP calls to real nodes, cluster start-up, waits, and load.

Nothing here sleeps a fixed time: every wait polls with a deadline through `wait_for`, which dumps
every node's log when it expires. Random choices come from the test's seeded `random.Random`.
"""

from __future__ import annotations

import asyncio
import os
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from tests.cluster.conftest import StartNode
from tests.harness import NodeProcess, wait_for

CONVERGE_TIMEOUT = 30.0
MEMBERS_TIMEOUT = 20.0
POLL = 0.05  # seconds between polls: each poll asks every node, and the machine has 2 cores

# key -> (value, version) of a live key, or (None, version) of a deleted one
State = dict[str, tuple[str | None, str]]


def seeded_rng() -> tuple[int, random.Random]:
    """The seed from SHAREDDB_TEST_SEED, or a random one; printed so a failure can be replayed."""
    raw = os.environ.get("SHAREDDB_TEST_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"seed={seed}")
    return seed, random.Random(seed)


# -- plain HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]  # names in lower case

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def etag(self) -> str | None:
        raw = self.headers.get("etag")
        return raw.strip('"') if raw else None


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> Reply:
    """One request with the standard library; an error status is a Reply, not an exception."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            found = {k.lower(): v for k, v in response.headers.items()}
            return Reply(response.status, response.read(), found)
    except urllib.error.HTTPError as exc:
        try:
            found = {k.lower(): v for k, v in exc.headers.items()}
            return Reply(exc.code, exc.read(), found)
        finally:
            exc.close()


def key_url(node: NodeProcess, key: str, query: str = "") -> str:
    return f"{node.url}/v1/kv/{quote(key, safe='')}" + (f"?{query}" if query else "")


def put(node: NodeProcess, key: str, value: str, query: str = "") -> Reply:
    return http("PUT", key_url(node, key, query), value.encode("utf-8"))


def delete(node: NodeProcess, key: str, query: str = "") -> Reply:
    return http("DELETE", key_url(node, key, query))


def seed_call(node: NodeProcess, action: str, **params: str) -> Reply:
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())
    return http("GET", f"{node.url}/nodes/{action}?{query}")


def read(node: NodeProcess, key: str) -> tuple[str, str] | None:
    """(value, version) through GET /v1/kv/{key}; None on 404."""
    reply = http("GET", key_url(node, key))
    if reply.status == 404:
        return None
    assert reply.status == 200, (node.node_id, key, reply)
    assert reply.etag is not None
    return reply.body.decode("utf-8"), reply.etag


def read_seed(node: NodeProcess, key: str) -> tuple[str, str] | None:
    """(value, version) through the seed API's /nodes/get; None on 404."""
    reply = seed_call(node, "get", name=key)
    if reply.status == 404:
        assert reply.json() == {"success": False, "msg": f"can not get {key} key"}
        return None
    assert reply.status == 200, (node.node_id, key, reply)
    answer = reply.json()
    assert answer["success"] is True
    assert answer["name"] == key
    return str(answer["value"]), str(answer["version"])


def digest(node: NodeProcess) -> dict[str, Any]:
    reply = http("GET", node.url + "/v1/digest")
    assert reply.status == 200, reply
    found: dict[str, Any] = reply.json()
    return found


def cluster_view(node: NodeProcess) -> dict[str, Any]:
    reply = http("GET", node.url + "/v1/cluster")
    assert reply.status == 200, reply
    found: dict[str, Any] = reply.json()
    return found


def member(node: NodeProcess, member_id: str | None) -> dict[str, Any] | None:
    """The entry of `member_id` in `node`'s /v1/cluster, or None when it is not listed."""
    for entry in cluster_view(node)["members"]:
        if entry["id"] == member_id:
            found: dict[str, Any] = entry
            return found
    return None


def live_items(node: NodeProcess, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Every live key under `prefix` on `node`: key -> (value, version), through the listing."""
    items: dict[str, tuple[str, str]] = {}
    after: str | None = None
    while True:
        query = f"prefix={quote(prefix, safe='')}&limit=1000"
        if after is not None:
            query += f"&after={quote(after, safe='')}"
        reply = http("GET", f"{node.url}/v1/kv?{query}")
        assert reply.status == 200, reply
        page = reply.json()
        for item in page["items"]:
            items[item["key"]] = (item["value"], item["version"])
        after = page["next"]
        if after is None:
            return items


# -- clusters and waits ----------------------------------------------------------------------------


def start_cluster(start_node: StartNode, ids: Sequence[str], *args: str) -> list[NodeProcess]:
    """Start nodes one after another, each with --peers of the ones before; wait until all are up."""
    nodes: list[NodeProcess] = []
    for node_id in ids:
        peers = ("--peers", ",".join(n.url for n in nodes)) if nodes else ()
        nodes.append(start_node(node_id, *peers, *args))
    wait_all_up(nodes)
    return nodes


def up_ids(node: NodeProcess) -> set[str]:
    return {m["id"] for m in cluster_view(node)["members"] if m["state"] == "up" and m["id"]}


def wait_all_up(nodes: Sequence[NodeProcess], timeout: float = MEMBERS_TIMEOUT) -> None:
    """Until every node lists every other one as `up`."""
    ids = {n.node_id for n in nodes}

    def all_up() -> bool:
        return all(up_ids(n) >= ids - {n.node_id} for n in nodes)

    wait_for(all_up, timeout, "every node to see every other one up", nodes, POLL)


def wait_no_lag(nodes: Sequence[NodeProcess], timeout: float = MEMBERS_TIMEOUT) -> None:
    """Until every node reports lag 0 for every member (each has applied every other's feed)."""

    def none_behind() -> bool:
        return all(m["lag"] == 0 for n in nodes for m in cluster_view(n)["members"])

    wait_for(none_behind, timeout, "lag 0 for every member on every node", nodes, POLL)


def wait_state(
    observers: Sequence[NodeProcess],
    member_id: str,
    state: str,
    everyone: Sequence[NodeProcess],
    timeout: float = MEMBERS_TIMEOUT,
) -> None:
    def shown() -> bool:
        for node in observers:
            entry = member(node, member_id)
            if entry is None or entry["state"] != state:
                return False
        return True

    names = ", ".join(str(n.node_id) for n in observers)
    wait_for(shown, timeout, f"{names} to show {member_id} as {state}", everyone, POLL)


def wait_converged(nodes: Sequence[NodeProcess], timeout: float = CONVERGE_TIMEOUT) -> dict[str, Any]:
    """Until every node answers the same /v1/digest; returns it."""

    def same() -> dict[str, Any] | None:
        digests = [digest(n) for n in nodes]
        return digests[0] if all(d == digests[0] for d in digests) else None

    names = ", ".join(str(n.node_id) for n in nodes)
    agreed = wait_for(same, timeout, f"equal digests on {names}", nodes, POLL)
    assert agreed is not None
    return agreed


def wait_readable(
    nodes: Sequence[NodeProcess],
    key: str,
    expected: tuple[str, str] | None,
    everyone: Sequence[NodeProcess],
    timeout: float = CONVERGE_TIMEOUT,
) -> None:
    """Until `key` reads as `expected` ((value, version), or None: absent) on every one of `nodes`."""
    wait_for(
        lambda: all(read(n, key) == expected for n in nodes),
        timeout,
        f"{key!r} to read as {expected!r} on " + ", ".join(str(n.node_id) for n in nodes),
        everyone,
        POLL,
    )


def assert_state(node: NodeProcess, expected: State, prefix: str, extra_allowed: set[str]) -> None:
    """`node` holds exactly `expected` under `prefix`: the live keys at their versions, no deleted
    key, and no key that is not in `expected` (unless in `extra_allowed`)."""
    items = live_items(node, prefix)
    wrong = {}
    for key, (value, version) in expected.items():
        found = items.get(key)
        want = None if value is None else (value, version)
        if found != want:
            wrong[key] = (want, found)
    extra = set(items) - set(expected) - extra_allowed
    assert not wrong, f"{node.node_id}: {len(wrong)} keys differ, e.g. {sorted(wrong.items())[:5]}"
    assert not extra, f"{node.node_id}: keys nobody acknowledged: {sorted(extra)[:5]}"


# -- concurrent load ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    node: NodeProcess
    key: str
    value: str | None  # None: a delete


@dataclass(frozen=True, slots=True)
class Ack:
    op: Op
    status: int  # 0 when the node could not be reached
    version: str | None  # the version written, None when nothing was acknowledged


async def _one(session: aiohttp.ClientSession, op: Op) -> Ack:
    url = key_url(op.node, op.key)
    try:
        if op.value is None:
            async with session.delete(url) as response:
                await response.read()
                etag = response.headers.get("ETag")
                ok = response.status == 204
                return Ack(op, response.status, etag.strip('"') if ok and etag else None)
        async with session.put(url, data=op.value.encode("utf-8")) as response:
            body = await response.read()
            if response.status in (200, 201):
                return Ack(op, response.status, str(orjson.loads(body)["version"]))
            return Ack(op, response.status, None)
    except (aiohttp.ClientError, TimeoutError):
        return Ack(op, 0, None)


async def run_ops_async(
    ops: Sequence[Op],
    concurrency: int = 32,
    events: Mapping[int, Callable[[], None]] | None = None,
) -> list[Ack]:
    """Send `ops` with `concurrency` requests in flight; `events[n]` runs once n ops are answered."""
    pending = list(reversed(ops))
    acks: list[Ack] = []
    hooks = dict(events or {})
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while pending:
                ack = await _one(session, pending.pop())
                acks.append(ack)
                hook = hooks.pop(len(acks), None)
                if hook is not None:
                    hook()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert not hooks, f"events after {sorted(hooks)} ops never ran: there were {len(acks)} ops"
    return acks


def run_ops(
    ops: Sequence[Op],
    concurrency: int = 32,
    events: Mapping[int, Callable[[], None]] | None = None,
) -> list[Ack]:
    return asyncio.run(run_ops_async(ops, concurrency, events))


def final_state(acks: Sequence[Ack]) -> State:
    """What LWW must leave: for each key, the acknowledged write with the greatest version."""
    state: State = {}
    for ack in acks:
        if ack.version is None:
            continue
        current = state.get(ack.op.key)
        if current is None or ack.version > current[1]:
            state[ack.op.key] = (ack.op.value, ack.version)
    return state
