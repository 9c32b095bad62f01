"""TTL on real node processes whose wall clocks the tests set and move (ControlledClock).

Expiry never mints a version: once a node's clock passes a value's expiry, reads, listings, the
dump and `count` there leave the value out, and later the node's reaper turns it into a tombstone
of the value's own version. So the digest (a hash of every key and version) is the same whether a
node has expired a key yet or not, and any later write of the key, from any node, wins over the
expiry. No test sleeps: each moves a clock and polls until the node shows the effect.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.cluster.conftest import StartNode, StartProxied
from tests.cluster.replication_helpers import (
    digest,
    http,
    key_url,
    live_items,
    put,
    read,
    seed_call,
    wait_all_up,
    wait_converged,
    wait_readable,
)
from tests.harness import FAKETIME_MT, ControlledClock, NodeProcess, run_cli, wait_for
from tests.harness.metrics import sample

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(FAKETIME_MT is None, reason="libfaketime is not installed"),
]

START = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
WAIT = 30.0
MASS_KEYS = 10_000
TXN_OPS = 1000


def clock(tmp_path: Path, name: str, start: float = START) -> ControlledClock:
    return ControlledClock(tmp_path / f"{name}.clock", start)


def version_seconds(version: str) -> float:
    """The wall-clock part of a version (its first 16 hex digits: 48 bits of milliseconds)."""
    return (int(version[:16], 16) >> 16) / 1000


def expires_at(node: NodeProcess, key: str) -> float | None:
    """The `Expires` header of GET `key` (Unix seconds), None when there is none."""
    reply = http("GET", key_url(node, key))
    assert reply.status == 200, (node.node_id, key, reply)
    raw = reply.headers.get("expires")
    return None if raw is None else parsedate_to_datetime(raw).timestamp()


def listed_expiry(node: NodeProcess, key: str) -> str | None:
    reply = http("GET", f"{node.url}/v1/kv?prefix={quote(key, safe='')}&limit=1")
    [item] = [i for i in reply.json()["items"] if i["key"] == key]
    expires: str | None = item["expires"]
    return expires


def dump(node: NodeProcess) -> dict[str, str]:
    reply = http("GET", f"{node.url}/nodes/dump")
    assert reply.status == 200, reply
    found: dict[str, str] = reply.json()["data"]
    return found


def feed(node: NodeProcess, since: int = 0) -> list[list[Any]]:
    """Every change of the node's feed after `since`, as the peer API sends it:
    [key, value-or-null, version, ...]. (A pull that does not name the feed's instance is
    answered from the start, so the first one, of one change, only asks for it.)"""
    base = f"{node.url}/v1/peer/changes?limit="
    instance = orjson.loads(http("GET", base + "1").body)["instance"]
    changes: list[list[Any]] = []
    while True:
        reply = http("GET", f"{base}10000&since={since}&instance={instance}")
        assert reply.status == 200, reply
        page = orjson.loads(reply.body)
        changes += page["changes"]
        if page["until"] >= page["last_seq"] or page["until"] == since:
            return changes
        since = page["until"]


def reaped(node: NodeProcess, key: str, version: str) -> bool:
    """The node's feed holds `key` as a tombstone of `version`: its reaper has run on it."""
    return any(c[0] == key and c[1] is None and c[2] == version for c in feed(node))


def sequence(node: NodeProcess) -> int:
    text = http("GET", f"{node.url}/metrics").body.decode()
    found = sample(text, "shareddb_sequence")
    assert found is not None, text
    return int(found)


def test_an_expired_key_is_absent_from_every_read_there_and_a_write_without_ttl_clears_it(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 9 (an expiry never removes a write made after the expiring one), invariant 5 (a
    node's clock never goes backwards) and invariant 6 (a bad ttl is a 400 and changes nothing).
    The controlled clock really drives the node: its versions carry the time the test set and
    follow it forward. GET answers `Expires`, the listing `"expires"`; once the node's clock
    passes the expiry the key is gone from GET, the seed API's get, the listing, /nodes/dump and
    the digest's count (the digest itself stays), and the reaper turns it into a tombstone of its
    own version. A later write without ttl clears an earlier ttl, so the old expiry removes
    nothing."""
    wall = clock(tmp_path, "solo")
    node = start_node("solo", env=wall.env())
    short = http("PUT", key_url(node, "short", "ttl=60"), b"s")
    assert short.status == 201, short
    short_version = short.json()["version"]
    written = version_seconds(short_version)
    assert START <= written <= wall.now() + 1, (short_version, wall.now())
    assert time.time() < START  # only the node's clock was moved, not the test's
    assert seed_call(node, "update", name="seeded", value="v", ttl="60").status == 200
    assert put(node, "cleared", "old", "ttl=60").status == 201
    assert put(node, "cleared", "new").status == 200  # no ttl: clears the earlier one
    assert put(node, "long", "l", "ttl=3600").status == 201
    assert put(node, "forever", "f").status == 201
    for bad in ("0", "-1", "1.5", "x", "315360001"):
        refused = put(node, "short", "bad", f"ttl={bad}")
        assert refused.status == 400, (bad, refused)
        assert refused.json()["error"] == "bad_request"
    assert read(node, "short") == ("s", short_version)

    expiry = expires_at(node, "short")
    assert expiry is not None
    assert written + 60 <= expiry <= written + 61
    assert listed_expiry(node, "short") is not None
    assert expires_at(node, "cleared") is None
    assert listed_expiry(node, "cleared") is None
    assert expires_at(node, "forever") is None
    before = digest(node)
    assert before["count"] == 5

    wall.advance(120)
    wait_for(lambda: read(node, "short") is None, WAIT, "'short' to expire", [node])
    assert read(node, "seeded") is None
    assert seed_call(node, "get", name="seeded").status == 404
    assert set(live_items(node)) == {"cleared", "long", "forever"}
    assert set(dump(node)) == {"cleared", "long", "forever"}
    after = digest(node)
    assert after["count"] == 3
    assert after["digest"] == before["digest"]  # expiry keeps every version
    wait_for(lambda: reaped(node, "short", short_version), WAIT, "the reaper to run", [node])
    assert digest(node) == after
    assert read(node, "cleared") is not None
    # Written again after it expired: a new value, stamped by the clock as moved, never removed
    # by the old expiry.
    again = put(node, "short", "again")
    assert again.status == 201, again
    assert version_seconds(again.json()["version"]) >= START + 120
    assert expires_at(node, "short") is None


def test_an_expiry_never_removes_a_later_write_and_verify_sees_no_divergence_over_it(
    proxied_cluster: StartProxied, tmp_path: Path
) -> None:
    """Invariant 9 (an expiry never removes a write made after the expiring one) and invariant 2
    (equal digests after healing), against both traps of expiry.

    Trap (a): A writes k with a ttl, B receives it; A is cut off; B writes k again without ttl;
    A's clock passes the old expiry and A reaps k; after healing both nodes hold B's write (A's
    reap made a tombstone of the old version, which loses) and keep it when B's clock passes the
    old expiry too. Trap (b): a key written with a ttl has expired on A (and been reaped) but not
    on B, so the counts differ; the digests are equal all the same and one `shareddb verify` over
    both nodes reports no divergence. Once B hears of the expiry, it takes A's tombstone."""
    clock_a, clock_b = clock(tmp_path, "a"), clock(tmp_path, "b")
    (a, b), proxies = proxied_cluster(["a", "b"], envs=[clock_a.env(), clock_b.env()])
    wait_all_up([a, b])
    first = http("PUT", key_url(a, "k", "ttl=60"), b"from-a").json()["version"]
    session = http("PUT", key_url(a, "session", "ttl=60"), b"token").json()["version"]
    wait_readable([b], "k", ("from-a", first), [a, b])
    wait_readable([b], "session", ("token", session), [a, b])

    proxies.isolate(0)
    second = put(b, "k", "from-b")
    assert second.status == 200, second
    later = second.json()["version"]
    assert later > first
    assert expires_at(b, "k") is None
    clock_a.advance(120)

    def a_reaped() -> bool:
        return read(a, "k") is None and reaped(a, "k", first) and reaped(a, "session", session)

    wait_for(a_reaped, WAIT, "A to reap k and session", [a, b])
    assert read(b, "k") == ("from-b", later)  # nothing crossed the partition

    proxies.heal()
    wait_readable([a, b], "k", ("from-b", later), [a, b])

    def same_digest() -> bool:  # not wait_converged: the counts differ, by design
        return bool(digest(a)["digest"] == digest(b)["digest"])

    wait_for(same_digest, WAIT, "equal digests on a, b", [a, b])
    assert expires_at(a, "k") is None
    # B took the tombstone A's expiry left for `session`, at its version, clock or no clock.
    wait_for(lambda: read(b, "session") is None, WAIT, "B to take A's expiry of session", [a, b])

    # Trap (b): `session2` expires on A while B is cut off again (else it would take A's
    # tombstone at once): counts differ, the digests do not, and verify agrees.
    session2 = http("PUT", key_url(a, "session2", "ttl=60"), b"token").json()["version"]
    wait_readable([b], "session2", ("token", session2), [a, b])
    proxies.isolate(1)
    clock_a.advance(120)
    wait_for(lambda: reaped(a, "session2", session2), WAIT, "A to reap session2", [a, b])
    assert read(a, "session2") is None
    assert read(b, "session2") == ("token", session2)
    assert digest(a)["count"] == 1
    assert digest(b)["count"] == 2
    assert digest(a)["digest"] == digest(b)["digest"]
    result = run_cli("verify", "--url", a.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 2 nodes agree" in result.stdout, result.stdout

    proxies.heal()
    wait_for(lambda: read(b, "session2") is None, WAIT, "B to take A's expiry of session2", [a, b])
    assert wait_converged([a, b])["count"] == 1
    assert read(a, "k") == ("from-b", later)
    assert read(b, "k") == ("from-b", later)


def test_mass_expiry_keeps_reads_answered_and_ends_with_equal_digests(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 2 (digests agree) and invariant 9 (an expiry never removes a later write): 10,000
    keys written with one ttl (in transactions of 1000 puts) expire at once on two nodes that
    share a clock; while the reapers turn them into tombstones, every read is answered and
    correct; the count is 0 for them at the end, the digests are equal, and a key written again
    during the reaping stays."""
    wall = clock(tmp_path, "shared")
    a = start_node("a", env=wall.env())
    b = start_node("b", "--peers", a.url, env=wall.env())
    wait_all_up([a, b])

    def load(start: int) -> int:
        ops = [
            {"op": "put", "key": f"mass/{i:05d}", "value": f"v{i}", "ttl": 300}
            for i in range(start, start + TXN_OPS)
        ]
        return http("POST", f"{a.url}/v1/txn", orjson.dumps({"then": ops}), timeout=60).status

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(load, range(0, MASS_KEYS, TXN_OPS))) == {200}
    control = put(a, "control", "stays").json()["version"]
    before = wait_converged([a, b], timeout=60)
    assert before["count"] == MASS_KEYS + 1
    seqs = {n.node_id: sequence(n) for n in (a, b)}

    wall.advance(400)
    rewritten: dict[str, str] = {}  # written again during the reaping: key -> version
    rounds = [0]

    def one_round() -> bool:
        """Reads (and a few writes) on both nodes; True once both reapers have gone through."""
        rounds[0] += 1
        for node in (a, b):
            assert read(node, "control") == ("stays", control)
            key = f"mass/{rounds[0] * 7 % MASS_KEYS:05d}"
            if key not in rewritten:
                assert read(node, key) is None
            page = http("GET", f"{node.url}/v1/kv?prefix=mass/&limit=10").json()["items"]
            assert {i["key"]: i["version"] for i in page}.items() <= rewritten.items(), page
            assert 1 <= digest(node)["count"] <= 1 + len(rewritten)
        assert digest(a)["count"] == 1 + len(rewritten)
        if rounds[0] <= 5:  # a write during the reaping, of a key that just expired
            key = f"mass/{rounds[0] * 1009:05d}"
            reply = put(a, key, "new")
            assert reply.status == 201, reply
            rewritten[key] = reply.json()["version"]
            return False
        return all(sequence(n) >= seqs[n.node_id] + MASS_KEYS for n in (a, b))

    wait_for(one_round, 60, "both reapers to go through the expired keys", [a, b], 0.01)

    def all_reaped(node: NodeProcess) -> bool:
        """Every mass key is in the feed since the expiry as a tombstone of its version, or was
        written again."""
        latest = {c[0]: c for c in feed(node, seqs[node.node_id]) if c[0].startswith("mass/")}
        return len(latest) == MASS_KEYS and all(
            (c[1], c[2]) == ("new", rewritten[k]) if k in rewritten else c[1] is None
            for k, c in latest.items()
        )

    wait_for(lambda: all_reaped(a) and all_reaped(b), 60, "both reapers to finish", [a, b], 0.5)
    after = wait_converged([a, b], timeout=60)
    assert after["count"] == 1 + len(rewritten)
    for key, version in rewritten.items():
        assert read(a, key) == ("new", version)
        assert read(b, key) == ("new", version)
    print(f"{rounds[0]} rounds of reads during the reaping")


def test_a_clock_that_steps_back_does_not_make_the_node_forget_an_expiry(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Invariant 5's setting (a wall clock that jumps back) for expiry: the node's clock steps past
    a key's expiry, is read there, and steps back (an NTP correction) before the reaper has run;
    once the clock passes the expiry again, the key is gone from the count as from reads, and the
    reaper turns it into a tombstone."""
    wall = clock(tmp_path, "solo")
    node = start_node("solo", env=wall.env())
    written = put(node, "k", "v", "ttl=60").json()["version"]
    assert put(node, "stay", "s").status == 201
    wall.set(START + 120)
    assert digest(node)["count"] == 1
    wall.set(START + 5)
    assert read(node, "k") == ("v", written)
    # The reaper looks at least once a second; it finds k not expired by the clock it now reads.
    wait_for(lambda: digest(node)["count"] == 2, 5, "k to count again", [node])
    wall.set(START + 120)
    assert read(node, "k") is None
    wait_for(lambda: digest(node)["count"] == 1, 5, "k, expired again, to leave the count", [node])
    wait_for(lambda: reaped(node, "k", written), 5, "the reaper to run on k", [node])
