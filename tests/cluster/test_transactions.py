"""Transactions (`POST /v1/txn`) on real node processes.

A transaction is one atomic commit on the node that takes it, and replication carries it as one
unit: the changes feed keeps it as one entry, served whole, until every member has applied it, also
after some of its keys were written again (which moves those keys to later places in the feed). So
a peer, however far behind, never lists a state in which one of a transaction's writes shows while
another key of the same transaction still holds a value older than the transaction.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.cluster.conftest import StartNode, StartProxied
from tests.cluster.replication_helpers import (
    Reply,
    digest,
    http,
    live_items,
    put,
    read,
    seeded_rng,
    wait_all_up,
    wait_converged,
)
from tests.harness import NodeProcess, wait_for
from tests.harness.metrics import sample

pytestmark = pytest.mark.cluster

GROUP = [f"g/{i:02d}" for i in range(20)]  # the keys every transaction writes
PAD = 24 * 1024  # bytes per value, so that a lagging peer catches up through many feed pages
FEED_PAGE_BYTES = 8 * 1024 * 1024  # what one pull answer holds at most (replication/feed.py)
AWAY_ROUNDS = 100  # transactions while the peer is cut off: about 6 pages of feed
LIVE_ROUNDS = 20  # transactions while it catches up
REWRITES = 3  # plain writes of single group keys after each transaction
CATCH_UP = 90.0


def value(kind: str, round_: int, pad: int = PAD) -> str:
    """`t000042:...` (transaction 42's write) or `p000042:...` (a plain write made after
    transaction 42 and before 43), padded to `pad` bytes."""
    head = f"{kind}{round_:06d}:"
    return head + "x" * (pad - len(head))


def level(text: str) -> tuple[str, int]:
    """(kind, round) of a value written by this test."""
    match = re.match(r"([tp])(\d{6}):", text)
    assert match is not None, text[:40]
    return match.group(1), int(match.group(2))


def txn(node: NodeProcess, body: dict[str, Any], timeout: float = 60.0) -> Reply:
    return http("POST", f"{node.url}/v1/txn", orjson.dumps(body), timeout=timeout)


def seq_of(node: NodeProcess) -> int:
    text = http("GET", f"{node.url}/metrics").body.decode()
    found = sample(text, "shareddb_sequence")
    assert found is not None, text
    return int(found)


@dataclass
class Writer:
    """Node A's writes: a transaction of the whole group per round, then plain writes of a few of
    its keys alone. `written[(key, value head)]` is the version A acknowledged for it."""

    node: NodeProcess
    choose: Callable[[list[str], int], list[str]]
    round_: int = 0
    written: dict[tuple[str, str], str] = field(default_factory=dict)

    def one_round(self) -> None:
        self.round_ += 1
        ops = [{"op": "put", "key": key, "value": value("t", self.round_)} for key in GROUP]
        reply = txn(self.node, {"then": ops})
        assert reply.status == 200, reply
        results = reply.json()["results"]
        assert [r["key"] for r in results] == GROUP
        for result in results:
            self.written[(result["key"], f"t{self.round_:06d}")] = result["version"]
        for key in self.choose(GROUP, REWRITES):
            answer = put(self.node, key, value("p", self.round_))
            assert answer.status == 200, answer
            self.written[(key, f"p{self.round_:06d}")] = answer.json()["version"]


class Lister(threading.Thread):
    """Lists the group on `node` in a loop and checks every listing against invariant 9."""

    def __init__(self, node: NodeProcess) -> None:
        super().__init__(name="lister", daemon=True)
        self.node = node
        self.stop = threading.Event()
        self.listings = 0
        self.states: set[tuple[int, int]] = set()  # (newest transaction shown, oldest level)
        self.newest = 0  # the newest transaction any listing showed
        self.seen: dict[tuple[str, str], str] = {}  # (key, value head) -> version listed
        self.last: dict[str, tuple[int, bool]] = {}  # key -> (round, plain) of the last listing
        self.failure: str | None = None

    def run(self) -> None:
        while not self.stop.is_set() and self.failure is None:
            try:
                self.check(self.list_group())
            except Exception as exc:  # reported by the test thread, with the node's log
                self.failure = f"{type(exc).__name__}: {exc}"

    def list_group(self) -> list[dict[str, Any]]:
        reply = http("GET", f"{self.node.url}/v1/kv?prefix=g/&limit=1000", timeout=30)
        assert reply.status == 200, reply
        items: list[dict[str, Any]] = reply.json()["items"]
        return items

    def check(self, items: list[dict[str, Any]]) -> None:
        self.listings += 1
        assert [i["key"] for i in items] == GROUP, [i["key"] for i in items]
        levels = {i["key"]: level(i["value"]) for i in items}
        for item in items:
            self.seen[(item["key"], item["value"][:7])] = item["version"]
        shown = max((r for kind, r in levels.values() if kind == "t"), default=0)
        oldest = min(r for _, r in levels.values())
        self.states.add((shown, oldest))
        self.newest = max(self.newest, shown)
        # A key shows transaction `shown`'s write: no key may hold a value from before it.
        assert oldest >= shown, f"transaction {shown} seen by halves: {sorted(levels.items())}"
        # And no key goes back to an older value than an earlier listing showed.
        order = {key: (r, kind == "p") for key, (kind, r) in levels.items()}
        back = {k: (self.last[k], o) for k, o in order.items() if k in self.last and o < self.last[k]}
        assert not back, f"keys went back to older values: {back}"
        self.last = order


def test_a_lagging_peer_never_lists_a_transaction_by_halves(proxied_cluster: StartProxied) -> None:
    """Invariant 9 (a transaction is never seen by halves), invariant 1 (no acknowledged write is
    lost) and invariant 2 (equal digests once caught up). Node A runs transactions that write one
    round value to 20 keys, and between them rewrites a few of those keys alone (so the compacted
    feed moves them past the transaction). Node B is cut off meanwhile, then catches up through
    several feed pages while A goes on; a reader lists B in a loop all along, and every listing
    must show, once any key holds transaction r's write, every other key at r or later, and no key
    back at an older value than an earlier listing showed. Every value listed carries the version
    A acknowledged for it (invariant 3: never a value nobody wrote)."""
    _, rng = seeded_rng()
    (a, b), proxies = proxied_cluster(["a", "b"])
    wait_all_up([a, b])
    writer = Writer(a, lambda keys, n: rng.sample(keys, n))
    writer.one_round()
    wait_converged([a, b])
    proxies.isolate(1)
    for _ in range(AWAY_ROUNDS):
        writer.one_round()
    pages = AWAY_ROUNDS * len(GROUP) * PAD / FEED_PAGE_BYTES
    print(f"B is {pages:.1f} feed pages behind")
    assert pages > 4
    # B was cut off all along: it still holds round 1.
    assert {level(v)[1] for v, _ in live_items(b, "g/").values()} == {1}
    lister = Lister(b)
    lister.start()  # B changes only from here on
    try:
        proxies.heal()
        for _ in range(LIVE_ROUNDS):
            writer.one_round()
        final = wait_converged([a, b], CATCH_UP)
        # The reader lists B once more after it caught up: a listing begun before the catch-up
        # (slow on a busy machine) may be its last otherwise.
        wait_for(
            lambda: lister.failure is not None or lister.newest >= writer.round_,
            CATCH_UP,
            f"a listing of B at round {writer.round_}",
            [a, b],
        )
    finally:
        lister.stop.set()
        lister.join(30)
    assert lister.failure is None, f"{lister.failure}\n--- log of b ---\n{b.log_tail(40)}"
    # The reader saw B while it was behind and once it had caught up. (A lagging node catches up
    # to the latest transaction of the group at once: an entry serves the current rows of its
    # keys, with the entries covering them; docs/design.md, "Transactions".)
    shown = sorted(lister.states)
    assert shown[0][0] < writer.round_ <= shown[-1][0], shown
    print(f"{lister.listings} listings of B, {len(lister.states)} distinct states")
    # Every value listed is one A wrote, at the version A acknowledged (never a value nobody wrote).
    for (key, head), version in lister.seen.items():
        assert writer.written[(key, head)] == version, (key, head, version)
    assert live_items(b, "g/") == live_items(a, "g/")
    assert final["count"] == len(GROUP)


def test_failed_conditions_are_all_listed_and_nothing_is_written(start_node: StartNode) -> None:
    """Invariant 6 (a refused request changes nothing): a transaction whose conditions do not
    all hold is a 412 listing every failed condition, in order, with the key's current version
    (null: absent), and writes none of its operations; with the conditions fixed, it commits."""
    node = start_node("solo")
    va = put(node, "a", "1").json()["version"]
    vb = put(node, "b", "2").json()["version"]
    before = (digest(node), seq_of(node), live_items(node))
    body = {
        "if": [
            {"key": "a", "version": va},  # holds
            {"key": "b", "version": va},  # fails: b is at vb
            {"key": "c", "absent": True},  # holds
            {"key": "d", "version": vb},  # fails: d is absent
            {"key": "a", "absent": True},  # fails: a is live
        ],
        "then": [
            {"op": "put", "key": "a", "value": "10"},
            {"op": "delete", "key": "b"},
            {"op": "put", "key": "c", "value": "30"},
        ],
    }
    refused = txn(node, body)
    assert refused.status == 412, refused
    answer = refused.json()
    assert answer["error"] == "precondition_failed", answer
    assert answer["failed"] == [
        {"key": "b", "version": vb},
        {"key": "d", "version": None},
        {"key": "a", "version": va},
    ]
    assert (digest(node), seq_of(node), live_items(node)) == before

    body["if"] = [{"key": "a", "version": va}, {"key": "b", "version": vb}, {"key": "c", "absent": True}]
    body["then"] = [*body["then"], {"op": "delete", "key": "never-written"}]
    done = txn(node, body)
    assert done.status == 200, done
    results = done.json()["results"]
    assert [r["key"] for r in results] == ["a", "b", "c", "never-written"]
    assert results[3]["version"] is None  # deleting an absent key changes nothing
    assert read(node, "a") == ("10", results[0]["version"])
    assert read(node, "b") is None
    assert read(node, "c") == ("30", results[2]["version"])
    assert len({r["version"] for r in results[:3]}) == 3


def test_a_body_over_one_mib_commits_and_malformed_bodies_change_nothing(
    start_node: StartNode,
) -> None:
    """Invariant 6 (bad input gets a clear 4xx and changes nothing) and invariant 1 (an
    acknowledged write is kept whole): a transaction of several ~500 KiB values (a body far over
    aiohttp's default 1 MiB) commits and reads back exactly; every malformed body is a 400
    `bad_request` that writes nothing and leaves the node answering."""
    node = start_node("solo")
    big = {f"big/{i}": value("t", i, 500 * 1024) for i in range(5)}
    ops = [{"op": "put", "key": k, "value": v} for k, v in big.items()]
    reply = txn(node, {"then": ops})
    assert reply.status == 200, reply
    for result in reply.json()["results"]:
        assert read(node, result["key"]) == (big[result["key"]], result["version"])

    before = (digest(node), seq_of(node))
    put_x = {"op": "put", "key": "x", "value": "1"}
    malformed: list[bytes] = [
        b"",
        b"not json",
        b"[]",
        b'{"then": []}',
        b'{"then": {}}',
        b'{"if": {}, "then": [{"op": "put", "key": "x", "value": "1"}]}',
        orjson.dumps({"then": [put_x], "else": []}),
        orjson.dumps({"then": [{**put_x, "extra": 1}]}),
        orjson.dumps({"then": [{"op": "get", "key": "x"}]}),
        orjson.dumps({"then": [{"op": "put", "key": "x"}]}),
        orjson.dumps({"then": [{"op": "put", "key": "x", "value": 1}]}),
        orjson.dumps({"then": [{"op": "put", "key": "", "value": "1"}]}),
        orjson.dumps({"then": [{**put_x, "ttl": 0}]}),
        orjson.dumps({"then": [{**put_x, "ttl": "5"}]}),
        orjson.dumps({"then": [put_x, {"op": "delete", "key": "x"}]}),
        orjson.dumps({"then": [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(1001)]}),
        orjson.dumps({"if": [{"key": "x"}], "then": [put_x]}),
        orjson.dumps({"if": [{"key": "x", "version": "v", "absent": True}], "then": [put_x]}),
        orjson.dumps({"if": [{"key": "x", "absent": False}], "then": [put_x]}),
        orjson.dumps({"if": [{"key": "x", "version": ""}], "then": [put_x]}),
        orjson.dumps({"then": [{"op": "delete", "key": "x", "value": "1"}]}),
    ]
    for body in malformed:
        refused = http("POST", f"{node.url}/v1/txn", body)
        assert refused.status == 400, (body[:80], refused)
        assert refused.json()["error"] == "bad_request", (body[:80], refused)
        assert refused.json()["message"], body[:80]
    assert (digest(node), seq_of(node)) == before
    assert read(node, "x") is None
    assert sorted(live_items(node)) == sorted(big)
