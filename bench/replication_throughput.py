"""Scenario `throughput`: PUT throughput on node A of a 3-node cluster against a standalone node.

The same wrk load (32 connections, random keys of a 100,000-key space, 100-byte values) runs on a
standalone node and on A of a cluster, alternating (S A A S ...) so drift in the machine's load
falls on both alike; figures are medians. After each cluster run it times how long the three
digests take to become equal, and how far behind B and C were when the load stopped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.replication_http import now
from bench.replication_load import WrkRun, run_wrk
from bench.replication_nodes import Fleet, Node, Profiler, wait_converged, wait_members_up
from bench.replication_report import Figure, Outcome, at_least

GOAL_RATIO = 0.8  # node A of the cluster against a node alone; etcd is compared in `make bench`


@dataclass(frozen=True, slots=True)
class ThroughputSettings:
    seconds: float = 10.0
    connections: int = 32
    threads: int = 2
    rounds: int = 2  # each round is one standalone run and one cluster run
    keys: int = 100_000
    converge_timeout: float = 300.0
    profile: Path | None = None  # a directory for py-spy output of A and B, or None


def order(rounds: int) -> list[str]:
    """S A, then A S, then S A ...: each kind goes first as often as last."""
    pairs = [["standalone", "cluster"], ["cluster", "standalone"]]
    return [kind for i in range(rounds) for kind in pairs[i % 2]]


def cpu(nodes: list[Node]) -> dict[str, float]:
    return {n.name: n.cpu_seconds() or 0.0 for n in nodes}


def run(fleet: Fleet, workdir: Path, settings: ThroughputSettings) -> Outcome:
    outcome = Outcome("throughput", "PUT/s on node A of a 3-node cluster vs a standalone node")
    solo = fleet.start("tp-solo")
    a = fleet.start("tp-a")
    b = fleet.start("tp-b", "--peers", a.url)
    c = fleet.start("tp-c", "--peers", a.url)
    cluster = [a, b, c]
    everyone = [solo, *cluster]
    runs: dict[str, list[WrkRun]] = {"standalone": [], "cluster": []}
    details: list[dict[str, Any]] = []
    try:
        wait_members_up(cluster, 30.0)
        outcome.data["nodes"] = {n.name: n.commands for n in everyone}
        for i, kind in enumerate(order(settings.rounds)):
            target = solo if kind == "standalone" else a
            before = cpu(everyone)
            profilers = []
            if settings.profile is not None and kind == "cluster":
                profilers = [
                    Profiler(fleet, n, settings.profile / f"throughput-{i}-{n.name}.txt") for n in (a, b)
                ]
            result = run_wrk(
                fleet, target.url + "/", workdir,
                connections=settings.connections, threads=settings.threads,
                seconds=settings.seconds, keys=settings.keys, prefix="tp-",
            )  # fmt: skip
            detail: dict[str, Any] = {"kind": kind, **result.to_json()}
            if profilers:
                detail["profiles"] = [p.stop() for p in profilers]
            detail["cpu_seconds"] = {
                name: round(spent - before[name], 2) for name, spent in cpu(everyone).items()
            }
            # CPU each node spent per acknowledged write: where a cluster's write costs go.
            detail["cpu_ms_per_write"] = {
                name: round(1000 * spent / result.requests, 3)
                for name, spent in detail["cpu_seconds"].items()
                if spent > 0.1
            }
            runs[kind].append(result)
            outcome.commands[f"throughput/{kind}"] = result.command
            if kind == "cluster":
                ended = now()
                digests = {n.name: n.digest() for n in cluster}
                view = a.cluster() or {}
                detail["at_end"] = {
                    "counts": {name: d.count if d else None for name, d in digests.items()},
                    "lag_reported_by_a": {m["id"]: m["lag"] for m in view.get("members", [])},
                }
                wait_converged(cluster, settings.converge_timeout)
                detail["converge_s"] = now() - ended
            details.append(detail)
    finally:
        fleet.retire(everyone)
    outcome.data["runs"] = details
    solo_rate = statistics.median(r.rate for r in runs["standalone"])
    cluster_rate = statistics.median(r.rate for r in runs["cluster"])
    converge = max(d["converge_s"] for d in details if "converge_s" in d)
    outcome.data.update(
        standalone_rate=solo_rate,
        cluster_rate=cluster_rate,
        ratio=cluster_rate / solo_rate,
        converge_max_s=converge,
    )
    src = "throughput/cluster"
    outcome.figures += [
        Figure("PUT/s standalone node", solo_rate, "/s", source="throughput/standalone"),
        Figure("PUT/s node A of 3", cluster_rate, "/s", source=src),
        Figure("cluster / standalone", cluster_rate / solo_rate, "x", f">= {GOAL_RATIO:g}",
               at_least(cluster_rate / solo_rate, GOAL_RATIO), src),
        Figure("digests equal after load (worst)", converge, "s", source=src),
    ]  # fmt: skip
    return outcome
