"""Replication between real node processes: propagation, LWW, catch-up after faults, membership,
`?w=N`, the peer token, digests and the cluster commands.

Every fault test prints its seed (`seed=N`); run it again with SHAREDDB_TEST_SEED=N. WRITES scales
the load of the load tests (SHAREDDB_TEST_WRITES, default a few thousand in all) and
SHAREDDB_TEST_FAULT_ROUNDS the number of faults in the random fault sequence. The clock-skew tests
run a node under libfaketime and are skipped where it is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    CONVERGE_TIMEOUT,
    Ack,
    Op,
    assert_state,
    cluster_view,
    delete,
    digest,
    final_state,
    http,
    live_items,
    member,
    put,
    read,
    read_seed,
    run_ops,
    seed_call,
    seeded_rng,
    start_cluster,
    up_ids,
    wait_all_up,
    wait_converged,
    wait_no_lag,
    wait_readable,
    wait_state,
)
from tests.harness import FAKETIME, NodeProcess, run_cli, skewed_clock_env, wait_for

pytestmark = pytest.mark.cluster

WRITES = int(os.environ.get("SHAREDDB_TEST_WRITES", "1200"))
LONG_POLL = 2.0  # seconds a source holds an idle pull (replication/puller.py)


def assert_no_errors(acks: list[Ack]) -> None:
    """Every op was answered as the contract says: written, or a delete of a key not live (404)."""
    bad = [a for a in acks if a.version is None and not (a.op.value is None and a.status == 404)]
    assert not bad, f"{len(bad)} failed ops, e.g. {bad[:3]}"


# -- 1. propagation --------------------------------------------------------------------------------


def test_write_on_one_node_is_readable_on_every_node_through_both_apis(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes

    key = "dir/sub key ü&=#%+"
    written = put(a, key, "hello wörld & co")
    assert written.status == 201
    version = written.json()["version"]
    assert written.etag == version
    wait_readable(nodes, key, ("hello wörld & co", version), nodes)
    for node in nodes:
        assert read_seed(node, key) == ("hello wörld & co", version)

    seed_written = seed_call(b, "update", name="seed/ключ", value="a&b=c %20 + #")
    assert seed_written.status == 200
    seed_version = seed_written.json()["version"]
    # `replicate` is accepted and ignored: no client can switch replication off.
    unswitched = seed_call(a, "update", name="replicate/off", value="still", replicate="false")
    assert unswitched.status == 200
    empty = seed_call(c, "update", name="empty", value="", replicate="0")
    assert empty.status == 200
    empty_version = empty.json()["version"]
    wait_readable(nodes, "seed/ключ", ("a&b=c %20 + #", seed_version), nodes)
    wait_readable(nodes, "empty", ("", empty_version), nodes)
    wait_readable(nodes, "replicate/off", ("still", unswitched.json()["version"]), nodes)
    for node in nodes:
        assert read_seed(node, "seed/ключ") == ("a&b=c %20 + #", seed_version)
        assert read_seed(node, "empty") == ("", empty_version)

    updated = put(c, key, "second")
    assert updated.status == 200
    new_version = updated.json()["version"]
    assert new_version > version
    wait_readable(nodes, key, ("second", new_version), nodes)

    removed = delete(b, key)
    assert removed.status == 204
    assert removed.etag is not None
    assert removed.etag > new_version
    seed_removed = seed_call(a, "remove", name="seed/ключ")
    assert seed_removed.status == 200
    assert seed_removed.json()["version"] > seed_version
    wait_readable(nodes, key, None, nodes)
    wait_readable(nodes, "seed/ключ", None, nodes)
    for node in nodes:
        assert read_seed(node, key) is None
        assert read_seed(node, "seed/ключ") is None
        dump = seed_call(node, "dump").json()
        assert dump == {"success": True, "data": {"empty": "", "replicate/off": "still"}}
    assert wait_converged(nodes)["count"] == 2


# -- 2. concurrent writes --------------------------------------------------------------------------


def test_concurrent_writes_of_the_same_keys_resolve_to_the_greatest_version(
    start_node: StartNode,
) -> None:
    """Invariant 3: the final value of a key is the greatest version written; never a value nobody
    wrote. Invariant 2: all nodes that can reach each other converge to identical digests after
    faults heal."""
    _, rng = seeded_rng()
    nodes = start_cluster(start_node, ["a", "b", "c"])
    ops = [
        Op(
            node,
            f"hot/{rng.randrange(50):02d}",
            None if rng.random() < 0.1 else f"{node.node_id}-{i}-{rng.randrange(10**6)}",
        )
        for node in nodes
        for i in range(WRITES // 5)
    ]
    rng.shuffle(ops)
    acks = run_ops(ops, concurrency=48)
    assert_no_errors(acks)
    expected = final_state(acks)
    assert len(expected) == 50
    wait_converged(nodes)
    for node in nodes:
        assert_state(node, expected, "hot/", set())
    # Every node took part: the winners come from more than one node.
    assert len({version.rpartition("-")[2] for _, version in expected.values()}) > 1


# -- 3. kill -9 ------------------------------------------------------------------------------------


def test_node_killed_during_writes_catches_up_and_no_deleted_key_comes_back(
    start_node: StartNode,
) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back. Invariant 5: a node's clock and sequence
    never go backwards, also across restarts."""
    _, rng = seeded_rng()
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    writers = [a, b]
    preload = [Op(rng.choice(nodes), f"pre/{i:05d}", f"pre-{i}") for i in range(WRITES // 3)]
    acks = run_ops(preload)
    assert_no_errors(acks)
    wait_converged(nodes)
    assert len(live_items(c, "pre/")) == len(preload)

    # Phase 1: updates and creates on a and b, c's own writes on c; c is killed partway through.
    phase1 = [Op(rng.choice(writers), rng.choice(preload).key, f"upd-{i}") for i in range(WRITES // 3)]
    phase1 += [Op(rng.choice(writers), f"new/{i:05d}", f"new-{i}") for i in range(WRITES // 3)]
    phase1 += [Op(c, f"c/{i:05d}", f"c-{i}") for i in range(WRITES // 6)]
    rng.shuffle(phase1)
    kill_at = rng.randrange(len(phase1) // 4, len(phase1) // 2)
    acks += run_ops(phase1, events={kill_at: c.kill})
    assert not c.running()
    c_acks = [x for x in acks if x.op.node is c and x.op.key.startswith("c/")]
    assert any(x.version for x in c_acks), "c was killed before it acknowledged anything"
    assert_no_errors([x for x in acks if x.op.node is not c])
    wait_converged(writers)

    # Phase 2, c still down: delete keys c held (pre/) and keys it never saw (new/).
    doomed = rng.sample([op.key for op in preload], len(preload) // 3)
    doomed += rng.sample([f"new/{i:05d}" for i in range(WRITES // 3)], WRITES // 9)
    acks += run_ops([Op(rng.choice(writers), key, None) for key in doomed])
    assert_no_errors(acks[-len(doomed) :])
    wait_converged(writers)

    c.start()
    wait_converged(nodes)
    expected = final_state(acks)
    for key in doomed:
        assert expected[key][0] is None, key
    unacknowledged = {x.op.key for x in c_acks if x.version is None}
    for node in nodes:
        for prefix in ("pre/", "new/", "c/"):
            assert_state(
                node, {k: v for k, v in expected.items() if k.startswith(prefix)}, prefix, unacknowledged
            )
    for key in rng.sample(doomed, 20):
        assert read(c, key) is None
        assert read_seed(c, key) is None

    # The restarted node's clock went on from where it was: its new versions are greater.
    after = put(c, "c/after-restart", "x")
    assert after.status == 201
    assert after.json()["version"] > max(x.version for x in c_acks if x.version is not None)
    wait_readable(nodes, "c/after-restart", ("x", after.json()["version"]), nodes)


# -- 4. SIGSTOP ------------------------------------------------------------------------------------


def test_paused_node_is_shown_down_and_catches_up_after_resume(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back."""
    _, rng = seeded_rng()
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    acks = run_ops([Op(rng.choice(nodes), f"k/{i:04d}", f"v{i}") for i in range(WRITES // 10)])
    wait_converged(nodes)

    c.pause()
    try:
        ops = [
            Op(rng.choice([a, b]), f"k/{rng.randrange(WRITES // 5):04d}", f"w{i}")
            for i in range(WRITES // 5)
        ]
        ops += [Op(rng.choice([a, b]), f"k/{i:04d}", None) for i in range(0, WRITES // 10, 3)]
        acks += run_ops(ops)
        assert_no_errors(acks)
        wait_state([a, b], "c", "down", nodes)
        lag = member(a, "c")
        assert lag is not None
        assert lag["lag"] > 0
    finally:
        c.resume()
    wait_converged(nodes)
    wait_state([a, b], "c", "up", nodes)
    wait_all_up(nodes)
    wait_no_lag(nodes)
    expected = final_state(acks)
    for node in nodes:
        assert_state(node, expected, "k/", set())


FAULT_ROUNDS = int(os.environ.get("SHAREDDB_TEST_FAULT_ROUNDS", "3"))


def test_cluster_converges_after_a_random_sequence_of_kills_and_pauses(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 3: the final value of a key is the greatest version written; never a value
    nobody wrote. Invariant 4: a deleted key never comes back."""
    _, rng = seeded_rng()
    nodes = start_cluster(start_node, ["a", "b", "c"])
    keys = [f"chaos/{i:03d}" for i in range(WRITES // 10)]
    acks: list[Ack] = []
    unacknowledged: set[str] = set()
    for round_ in range(FAULT_ROUNDS):
        victim = rng.choice(nodes)
        fault = rng.choice(["kill", "pause"])
        print(f"round {round_}: {fault} {victim.node_id}")
        live = [n for n in nodes if n is not victim]
        ops = [
            Op(rng.choice(live), rng.choice(keys), None if rng.random() < 0.2 else f"r{round_}-{i}")
            for i in range(WRITES // 6)
        ]
        if fault == "kill":
            # The victim takes writes of keys of its own until it is killed in the middle of them.
            own = [Op(victim, f"chaos/own-{round_}-{i}", "x") for i in range(WRITES // 20)]
            ops += own
            rng.shuffle(ops)
            round_acks = run_ops(ops, events={rng.randrange(1, len(ops) // 2): victim.kill})
            assert not victim.running()
            unacknowledged |= {x.op.key for x in round_acks if x.op in own and x.version is None}
            victim.start()
        else:
            victim.pause()
            round_acks = run_ops(ops)
            victim.resume()
        assert_no_errors([x for x in round_acks if x.op.node is not victim])
        acks += round_acks
    wait_converged(nodes)
    expected = final_state(acks)
    for node in nodes:
        assert_state(node, expected, "chaos/", unacknowledged)


# -- 5. wiped node ---------------------------------------------------------------------------------


def test_wiped_node_is_refilled_and_its_new_writes_reach_the_others(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back."""
    _, rng = seeded_rng()
    nodes = start_cluster(start_node, ["a", "b", "c"])
    c = nodes[2]
    ops = [Op(rng.choice(nodes), f"w/{i:04d}", f"v{i}") for i in range(WRITES // 5)]
    ops += [Op(c, f"w/c-{i:03d}", f"c{i}") for i in range(50)]
    acks = run_ops(ops)
    acks += run_ops([Op(rng.choice(nodes), f"w/{i:04d}", None) for i in range(0, WRITES // 5, 4)])
    assert_no_errors(acks)
    before = wait_converged(nodes)

    port = c.port
    c.kill()
    shutil.rmtree(c.data)
    c.start()
    assert c.port == port
    assert "at sequence 0" in c.new_log()  # it really starts empty
    assert wait_converged(nodes) == before  # tombstones included
    expected = final_state(acks)
    assert_state(c, expected, "w/", set())

    fresh = put(c, "w/after-wipe", "new")
    assert fresh.status == 201
    wait_readable(nodes, "w/after-wipe", ("new", fresh.json()["version"]), nodes)
    removed = delete(c, "w/c-000")
    assert removed.status == 204
    wait_readable(nodes, "w/c-000", None, nodes)
    wait_converged(nodes)


# -- 6. join ---------------------------------------------------------------------------------------


def test_joined_node_receives_everything_and_its_writes_reach_every_member(
    start_node: StartNode,
) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back."""
    _, rng = seeded_rng()
    members = start_cluster(start_node, ["a", "b", "c"])
    acks = run_ops([Op(rng.choice(members), f"j/{i:04d}", f"v{i}") for i in range(WRITES // 5)])
    acks += run_ops([Op(rng.choice(members), f"j/{i:04d}", None) for i in range(0, WRITES // 5, 5)])
    assert_no_errors(acks)
    wait_converged(members)

    through = rng.choice(members)
    print(f"joining through {through.node_id}")
    d = start_node("d", "--join", through.url)
    everyone = [*members, d]
    wait_all_up(everyone)
    wait_converged(everyone)
    assert_state(d, final_state(acks), "j/", set())

    written = put(d, "j/from-d", "hello")
    assert written.status == 201
    wait_readable(members, "j/from-d", ("hello", written.json()["version"]), everyone)
    for node in members:
        entry = member(node, "d")
        assert entry is not None
        assert (entry["url"], entry["state"]) == (d.url, "up")


def test_join_url_with_a_trailing_slash_joins(start_node: StartNode) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal."""
    a = start_node("a")
    assert put(a, "k", "v").status == 201
    d = start_node("d", "--join", a.url + "/")
    wait_for(lambda: "d" in up_ids(a) and read(d, "k") is not None, 4.0, "d to join a", [a, d])


# -- 7. through an intermediate node ---------------------------------------------------------------


def test_changes_travel_through_an_intermediate_node(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal."""
    _, rng = seeded_rng()
    b = start_node("b")
    a = start_node("a", "--peers", b.url)
    c = start_node("c", "--peers", b.url)
    nodes = [a, b, c]
    wait_all_up(nodes)

    c.pause()
    try:
        # Until c's last pull from a has been answered: then nothing a writes can reach c directly.
        wait_for(
            lambda: (m := member(a, "c")) is not None and m["last_contact"] > LONG_POLL + 1.5,
            10.0,
            "c's pending pull from a to be answered",
            nodes,
        )
        keys = [f"relay/{i}" for i in range(rng.randrange(5, 50))]
        versions = {}
        for key in keys:
            reply = put(a, key, key.upper())
            assert reply.status == 201
            versions[key] = reply.json()["version"]
        for key in keys:
            wait_readable([b], key, (key.upper(), versions[key]), nodes)
        a.kill()
    finally:
        c.resume()
    for key in keys:
        wait_readable([c], key, (key.upper(), versions[key]), nodes)
    wait_converged([b, c])


# -- 8. ?w=N ---------------------------------------------------------------------------------------


def test_w_waits_for_copies_and_times_out_with_504_keeping_the_write(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes

    written = put(a, "w/all", "three", "w=3")
    assert written.status == 201, written
    version = written.json()["version"]
    for node in nodes:  # no polling: w=3 answered once all three hold it
        assert read(node, "w/all") == ("three", version)
    seed_written = seed_call(b, "update", name="w/seed", value="s", w="3")
    assert seed_written.status == 200, seed_written
    for node in nodes:
        assert read(node, "w/seed") == ("s", seed_written.json()["version"])
    removed = delete(c, "w/all", "w=3")
    assert removed.status == 204, removed
    for node in nodes:
        assert read(node, "w/all") is None

    for query in ("w=4", "w=0", "w=x", "w=3&timeout=0", "w=3&timeout=-1", "w=2&timeout=abc"):
        refused = put(a, "w/bad", "x", query)
        assert refused.status == 400, (query, refused)
        assert refused.json()["error"] == "bad_request"
    assert seed_call(a, "update", name="w/bad", value="x", w="4").status == 400
    assert read(a, "w/bad") is None

    c.pause()
    try:
        started = time.monotonic()
        late = put(a, "w/late", "kept", "w=3&timeout=1")
        elapsed = time.monotonic() - started
        assert late.status == 504, late
        answer = late.json()
        assert answer["error"] == "timeout"
        # The message says how many nodes hold it (leaving out the version it names).
        assert re.search(r"\b2\b", re.sub(r"[0-9a-f]{16}-\S+", "", answer["message"])), answer
        assert 0.9 <= elapsed < 10.0
        kept = read(a, "w/late")
        assert kept is not None
        assert kept[0] == "kept"
        seed_late = seed_call(b, "update", name="w/seed-late", value="kept too", w="3", timeout="1")
        assert seed_late.status == 504, seed_late
        seed_answer = seed_late.json()
        assert seed_answer["success"] is False
        assert isinstance(seed_answer["msg"], str)
        assert read(b, "w/seed-late") == ("kept too", seed_answer["version"])
        two = put(b, "w/two", "2", "w=2&timeout=5")
        assert two.status == 201, two
    finally:
        c.resume()
    wait_readable([c], "w/late", kept, nodes)
    wait_readable([c], "w/seed-late", ("kept too", seed_answer["version"]), nodes)
    wait_converged(nodes)


# -- 9. peer token ---------------------------------------------------------------------------------


def test_node_with_a_wrong_peer_token_gets_nothing(start_node: StartNode) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node.
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal."""
    a = start_node("a", "--peer-token", "right")
    b = start_node("b", "--peer-token", "right", "--peers", a.url)
    c = start_node("c", "--peer-token", "wrong", "--peers", a.url)
    nodes = [a, b, c]
    for i in range(20):
        assert put(a, f"t/{i}", "secret").status == 201
    wait_converged([a, b])
    wait_for(lambda: "answered 401" in c.logs(), 10.0, "c's pull to be refused", nodes)
    assert digest(c)["count"] == 0
    assert live_items(c) == {}
    assert member(a, "c") is None
    assert {m["id"] for m in cluster_view(b)["members"]} == {"a"}

    changes = a.url + "/v1/peer/changes?since=0"
    missing = http("GET", changes)
    assert missing.status == 401
    assert missing.json()["error"] == "unauthorized"
    wrong = http("GET", changes, headers={"Authorization": "Bearer wrong"})
    assert wrong.status == 401
    assert wrong.json()["error"] == "unauthorized"
    assert b"secret" not in missing.body + wrong.body
    join = http("POST", a.url + "/v1/peer/join", b'{"members": []}', {"Authorization": "Bearer no"})
    assert join.status == 401
    right = http("GET", changes, headers={"Authorization": "Bearer right"})
    assert right.status == 200
    assert len(right.json()["changes"]) == 20

    # The same node with the right token receives everything.
    c.kill()
    c.args[c.args.index("wrong")] = "right"
    c.start()
    wait_converged(nodes)
    assert digest(c)["count"] == 20
    wait_all_up(nodes)


def test_cluster_guarded_by_tokens_replicates_with_the_peer_token_only(start_node: StartNode) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node.
    Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal."""
    client = {"Authorization": "Bearer client"}
    peer = {"Authorization": "Bearer peer"}
    a = start_node("a", "--token", "client", "--peer-token", "peer")
    b = start_node("b", "--token", "client", "--peer-token", "peer", "--peers", a.url)
    # Without --peer-token, peers on loopback replicate with no token: no client token is sent.
    c = start_node("c", "--token", "only")
    d = start_node("d", "--token", "only", "--peers", c.url)
    nodes = [a, b, c, d]

    assert http("PUT", a.url + "/v1/kv/t", b"1", client).status == 201
    assert http("PUT", c.url + "/v1/kv/t", b"2", {"Authorization": "Bearer only"}).status == 201
    wait_for(
        lambda: (
            http("GET", b.url + "/v1/kv/t", headers=client).body == b"1"
            and http("GET", d.url + "/v1/kv/t", headers={"Authorization": "Bearer only"}).body == b"2"
        ),
        CONVERGE_TIMEOUT,
        "b and d to receive the writes",
        nodes,
    )
    changes = a.url + "/v1/peer/changes?since=0"
    assert http("GET", changes, headers=client).status == 403
    assert http("GET", changes, headers=peer).status == 200
    assert http("GET", a.url + "/v1/kv/t", headers=peer).status == 403
    assert http("GET", a.url + "/v1/peer/changes?since=0").status == 401
    assert http("GET", c.url + "/v1/peer/changes?since=0").status == 200  # from loopback
    assert http("GET", c.url + "/v1/kv/t", headers=peer).status == 401  # not a token c knows


# -- 10. digests -----------------------------------------------------------------------------------


def test_digests_differ_while_a_node_is_behind_and_agree_after(start_node: StartNode) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 4: a deleted key never comes back."""
    _, rng = seeded_rng()
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    for i in range(30):
        assert put(rng.choice(nodes), f"d/{i}", f"v{i}").status == 201
    agreed = wait_converged(nodes)
    assert agreed["count"] == 30

    c.pause()  # c cannot change while stopped: `agreed` stays its digest
    try:
        key = f"d/{rng.randrange(30)}"
        value = read(a, key)
        assert value is not None
        # The same keys and values at a new version: the digest must still change.
        assert put(a, key, value[0]).status == 200
        same_count = wait_converged([a, b])
        assert same_count["count"] == agreed["count"]
        assert same_count["digest"] != agreed["digest"]
        # A tombstone counts too.
        assert delete(b, key).status == 204
        deleted = wait_converged([a, b])
        assert deleted["count"] == agreed["count"] - 1
        assert deleted["digest"] not in (agreed["digest"], same_count["digest"])
    finally:
        c.resume()
    assert wait_converged(nodes) == deleted
    assert read(c, key) is None


# -- 11. status and verify -------------------------------------------------------------------------


def test_status_lists_every_member_and_verify_says_all_agree(start_node: StartNode) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    for i in range(10):
        assert put(nodes[i % 3], f"s/{i}", str(i)).status == 201
    wait_converged(nodes)

    status = run_cli("status", "--url", a.url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    for node in (b, c):
        row = next((line for line in lines if line.startswith(f"{node.node_id} ")), None)
        assert row is not None, status.stdout
        assert re.match(rf"{node.node_id}\s+up\s+\d+\s", row), row
        assert node.url in row
    assert any(line.startswith("a (this)") for line in lines), status.stdout

    verify = run_cli("verify", "--url", b.url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "all 3 nodes agree" in verify.stdout

    c.kill()
    unreachable = run_cli("verify", "--url", b.url)
    assert unreachable.returncode == 1, unreachable.stdout + unreachable.stderr
    assert re.search(r"^c\s.*unreachable$", unreachable.stdout, re.M), unreachable.stdout


# -- 12. cluster view and leave --------------------------------------------------------------------


def test_cluster_view_shape_and_a_node_that_leaves_is_no_longer_pulled(start_node: StartNode) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    assert put(a, "l/0", "x").status == 201
    wait_converged(nodes)
    wait_no_lag(nodes)
    for node in nodes:
        view = cluster_view(node)
        assert view["node"]["id"] == node.node_id
        assert view["node"]["url"] == node.url
        members = sorted(view["members"], key=lambda m: m["id"])
        others = sorted((n for n in nodes if n is not node), key=lambda n: str(n.node_id))
        assert [(m["id"], m["url"], m["state"]) for m in members] == [
            (n.node_id, n.url, "up") for n in others
        ]
        for entry in members:
            assert {"id", "url", "state", "lag"} <= set(entry)
            assert type(entry["lag"]) is int
            assert entry["lag"] >= 0

    left = run_cli("leave", "--url", c.url)
    assert left.returncode == 0, left.stderr
    wait_state([a, b], "c", "left", nodes)
    assert cluster_view(c)["node"]["state"] == "left"

    from_c = put(c, "l/from-c", "after leaving")
    assert from_c.status == 201
    from_a = put(a, "l/from-a", "after c left")
    assert from_a.status == 201
    # Once a and b have not exchanged with c for longer than a long poll, they no longer pull it.
    wait_until_silent(nodes, "c", (a, b))
    assert read(a, "l/from-c") is None
    assert read(b, "l/from-c") is None
    assert read(c, "l/from-a") is None
    wait_readable([b], "l/from-a", ("after c left", from_a.json()["version"]), nodes)
    assert "c" not in {m["id"] for m in cluster_view(b)["members"] if m["state"] == "up"}


def test_member_removed_by_another_node_stops_replicating(start_node: StartNode) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    unknown = http("DELETE", a.url + "/v1/cluster/members/nobody")
    assert unknown.status == 404
    assert unknown.json()["error"] == "not_found"

    removed = run_cli("leave", "--node", "c", "--url", a.url)
    assert removed.returncode == 0, removed.stderr
    wait_state([a, b], "c", "left", nodes)
    wait_for(
        lambda: cluster_view(c)["node"]["state"] == "left", 10.0, "c to learn it was removed", nodes
    )
    assert put(a, "rm/on-a", "a").status == 201
    assert put(c, "rm/on-c", "c").status == 201
    wait_readable([b], "rm/on-a", read(a, "rm/on-a"), nodes)
    # Once a and b have not exchanged with c for longer than a long poll, nothing flows either way.
    wait_until_silent(nodes, "c", (a, b))
    assert read(c, "rm/on-a") is None
    assert read(a, "rm/on-c") is None
    assert read(b, "rm/on-c") is None
    assert put(a, "rm/w", "x", "w=3").status == 400  # c no longer counts


def test_node_replaced_at_the_same_url_under_a_new_id_replicates(start_node: StartNode) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 1: no acknowledged write is lost (unless a greater version superseded it)."""
    nodes = start_cluster(start_node, ["a", "b", "c"])
    a, b, c = nodes
    assert put(a, "r/before", "x").status == 201
    wait_converged(nodes)
    # The data dir is wiped and the node started without --node-id: it gets a new random id.
    c.kill()
    shutil.rmtree(c.data)
    c.node_id = None
    c.start()
    everyone = [a, b, c]
    wait_converged(everyone)
    written = put(c, "r/after", "y")
    assert written.status == 201
    wait_readable([a, b], "r/after", ("y", written.json()["version"]), everyone)
    wait_for(
        lambda: all(m["lag"] == 0 for m in cluster_view(c)["members"] if m["state"] == "up"),
        4.0,
        "a and b to report that they applied c's feed",
        everyone,
    )
    assert put(c, "r/w", "z", "w=3&timeout=3").status == 201


SKEW_S = 300
DRIFT_BOUND_MS = 60_000


def fast_clock_env() -> dict[str, str]:
    """The environment of a node whose wall clock runs SKEW_S seconds ahead (libfaketime)."""
    return skewed_clock_env(SKEW_S)


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")
def test_node_with_a_fast_clock_keeps_its_versions_and_drags_no_clock_past_the_bound(
    start_node: StartNode,
) -> None:
    """Invariant 3: the final value of a key is the greatest version written; never a value nobody
    wrote. Invariant 2: all nodes that can reach each other converge to identical digests after
    faults heal. Invariant 5: a node's clock and sequence never go backwards, also across
    restarts."""
    _, rng = seeded_rng()
    a = start_node("a")
    b = start_node("b", "--peers", a.url)
    fast = start_node("fast", "--peers", f"{a.url},{b.url}", env=fast_clock_env())
    nodes = [a, b, fast]
    wait_all_up(nodes)

    key = f"skew/{rng.randrange(1000)}"
    ahead = put(fast, key, "from the future")
    assert ahead.status == 201
    version = ahead.json()["version"]
    assert int(version[:16], 16) >> 16 > time.time() * 1000 + (SKEW_S - 10) * 1000
    wait_readable(nodes, key, ("from the future", version), nodes)  # the version is kept as is
    wait_for(lambda: "ahead of this node's clock" in a.logs(), 10.0, "a to log the skew", nodes)

    # a's clock was dragged at most to the drift bound: its next version is far below fast's.
    own = put(a, f"skew/own-{rng.randrange(1000)}", "x")
    assert own.status == 201
    own_millis = int(own.json()["version"][:16], 16) >> 16
    assert own_millis <= time.time() * 1000 + DRIFT_BOUND_MS + 1000
    assert own.json()["version"] < version

    # Concurrent writes of the same keys from all three: the greatest version wins everywhere.
    ops = [Op(rng.choice(nodes), f"skew/hot-{rng.randrange(10)}", f"v{i}") for i in range(150)]
    acks = run_ops(ops)
    assert_no_errors(acks)
    wait_converged(nodes)
    expected = final_state(acks)
    for node in nodes:
        for hot, (value, hot_version) in expected.items():
            assert read(node, hot) == (value, hot_version)


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")
def test_write_acknowledged_by_a_node_is_what_that_node_reads_next(start_node: StartNode) -> None:
    """Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
    Invariant 4: a deleted key never comes back."""
    a = start_node("a")
    fast = start_node("fast", "--peers", a.url, env=fast_clock_env())
    nodes = [a, fast]
    ahead = put(fast, "k", "from the future")
    wait_readable([a], "k", ("from the future", ahead.json()["version"]), nodes)

    removed = delete(a, "k")
    assert removed.status == 204
    assert read(a, "k") is None, "a answered 204 to DELETE, and the key is still there"
    written = put(a, "k", "now")
    assert written.status in (200, 201)
    assert read(a, "k") == ("now", written.json()["version"])


def wait_until_silent(nodes: list[NodeProcess], gone: str, others: tuple[NodeProcess, ...]) -> None:
    """Wait until none of `others` has exchanged with member `gone` for over one long poll."""
    wait_for(
        lambda: all(
            (m := member(n, gone)) is not None
            and m["last_contact"] is not None
            and m["last_contact"] > LONG_POLL + 1.0
            for n in others
        ),
        15.0,
        f"{', '.join(str(n.node_id) for n in others)} to stop exchanging with {gone}",
        nodes,
    )
