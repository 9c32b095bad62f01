"""The catalogue of scenarios: what each one sends, to which target, and which ones a run includes.

Every figure is reported as a ratio against BASELINE measured in the same run, so the baseline is
part of every selection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BASELINE = "hello"
TXN_OPS = 100  # puts per transaction in the txn scenario


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    # "hello" | "node" | "workers_node" | "redis_node" | "cluster" | "etcd": which system receives
    # the requests
    target: str
    script: str  # in bench/scripts
    measures: str
    writes: bool
    # Operations each request carries (a transaction's puts): passed to the script as OPS.
    ops: int = 1
    watchers: int = 0  # watch streams held open on the target while it is measured
    member: int = 0  # which of the target's URLs wrk sends to (etcd: 0 is the leader)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("hello", "hello", "hello.lua", "GET / of a bare aiohttp app: the ceiling", False),
    Scenario("get", "node", "kv_get.lua", "GET /v1/kv/{key}, a random preloaded key", False),
    Scenario("workers_get", "workers_node", "kv_get.lua", "get, on a node with --workers N", False),
    Scenario("seed_update", "node", "seed_update.lua", "GET /nodes/update?name=K&value=V (100 B)", True),
    Scenario("put", "node", "kv_put.lua", "PUT /v1/kv/{key}, 100-byte body", True),
    Scenario(
        "put_new",
        "node",
        "kv_put_new.lua",
        "PUT /v1/kv/{key} of a key never written before (the store grows), 100-byte body",
        True,
    ),
    Scenario(
        "watched_put",
        "node",
        "kv_put.lua",
        "put, with 1,000 watch streams open on the node (GET /v1/watch?key=K, one key each)",
        True,
        watchers=1000,
    ),
    Scenario(
        "txn", "node", "kv_txn.lua", f"POST /v1/txn of {TXN_OPS} puts (100 B values)", True, TXN_OPS
    ),
    Scenario("redis_get", "redis_node", "kv_get.lua", "get, on a node with --store redis://", False),
    Scenario("redis_put", "redis_node", "kv_put.lua", "put, on a node with --store redis://", True),
    Scenario("cluster_get", "cluster", "kv_get.lua", "GET /v1/kv/{key} on node 1 of --cluster N", False),
    Scenario("cluster_put", "cluster", "kv_put.lua", "PUT /v1/kv/{key} on node 1 of --cluster N", True),
    Scenario(
        "etcd_get",
        "etcd",
        "etcd_v2_get.lua",
        "etcd v2 GET /v2/keys/KEY on a follower (a local read)",
        False,
        member=1,
    ),
    Scenario("etcd_put", "etcd", "etcd_v2_put.lua", "etcd v2 PUT /v2/keys/KEY, value=100 B", True),
)

NAMES = tuple(s.name for s in SCENARIOS)


# Each Redis scenario against the same requests on the SQLite node.
REDIS_PAIRS = (("redis_get", "get"), ("redis_put", "put"))
# The writes with watch streams open against the same writes without.
WATCH_PAIRS = (("watched_put", "put"),)
# Operations per second inside transactions against single writes per second.
TXN_PAIRS = (("txn", "put"),)


def select(
    only: Iterable[str], cluster: int, etcd_reason: str | None, redis_reason: str | None = None
) -> tuple[list[Scenario], list[str]]:
    """The scenarios of one run, in catalogue order, and a note for each one left out and why.

    `only` empty means every scenario that can run; the baseline is always included. A reason
    (`etcd_reason`, `redis_reason`) leaves out that system's scenarios with a note.
    """
    wanted = set(only)
    unknown = wanted - set(NAMES)
    if unknown:
        raise ValueError(
            f"unknown scenario {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}"
        )
    chosen, notes = [], []
    for scenario in SCENARIOS:
        if wanted and scenario.name not in wanted | {BASELINE}:
            continue
        if scenario.target == "cluster" and cluster < 2:
            if scenario.name in wanted:
                notes.append(f"{scenario.name} skipped: it needs --cluster N with N >= 2")
            continue
        if scenario.target == "etcd" and etcd_reason is not None:
            notes.append(f"{scenario.name} skipped: {etcd_reason}")
            continue
        if scenario.target == "redis_node" and redis_reason is not None:
            notes.append(f"{scenario.name} skipped: {redis_reason}")
            continue
        chosen.append(scenario)
    return chosen, notes
