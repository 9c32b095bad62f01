"""Scenarios `copy` and `catchup`: a node receiving a whole data set, and one that missed writes.

- copy: node A holds N keys (100-byte values); B starts with `--peers A` and an empty store; the
  clock runs from B's spawn until B's digest equals A's. A is loaded before it starts, through the
  real store code (`SQLiteStore.apply` of large batches, versions from a HybridClock as the node
  makes them, the node's `created_hlc` mark set first as `Node.open` does), because 1,000,000 PUTs
  over HTTP would take longer than the copy itself; `--load-via http` loads through the API.
- catchup: A and B converged; B is stopped (SIGTERM, or SIGKILL with --catchup-kill); N keys are
  written to A over HTTP; B restarts on its port and data dir; the clock runs from B's spawn until
  its digest equals A's.

Both sample the follower's key count and both nodes' memory while they wait, so a stall or a
growth shows in the JSON, and report peak RSS (VmHWM) of each process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/replication_copy.py` (the preload): import bench from the checkout.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.replication_http import now
from bench.replication_load import BulkRun, run_async, write_keys
from bench.replication_nodes import (
    BenchError,
    Digest,
    Fleet,
    Node,
    Profiler,
    wait_converged,
    wait_for,
    wait_members_up,
)
from bench.replication_report import Figure, Outcome, at_least

GOAL_COPY_KEYS_S = 100_000.0
PRELOAD_BATCH = 20_000
PRELOAD_KEYS_PER_S = 5_000  # far below what it does: the bound on its time is generous
POLL = 0.05
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CopySettings:
    keys: int = 1_000_000
    load_via: str = "store"  # "store" (SQLiteStore.apply before A starts) or "http"
    timeout: float = 900.0  # for B to converge
    sample_every: float = 1.0
    profile: Path | None = None


@dataclass(frozen=True, slots=True)
class CatchupSettings:
    keys: int = 100_000
    kill: bool = False  # SIGKILL B instead of SIGTERM
    connections: int = 32
    timeout: float = 600.0
    sample_every: float = 1.0
    profile: Path | None = None


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def preload_command(data: Path, node_id: str, keys: int, prefix: str) -> list[str]:
    return [
        *(sys.executable, str(Path(__file__).resolve()), "--preload", str(data)),
        *("--node-id", node_id, "--keys", str(keys), "--prefix", prefix),
    ]


def preload(fleet: Fleet, data: Path, node_id: str, keys: int, prefix: str) -> str:
    """Run the preload as a process of its own, so it is bounded in time and killable."""
    cmd = preload_command(data, node_id, keys, prefix)
    proc = fleet.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=60 + keys / PRELOAD_KEYS_PER_S)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise BenchError(f"the preload did not finish in time: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise BenchError(f"the preload failed ({proc.returncode}): {' '.join(cmd)}\n{output}")
    return " ".join(cmd)


async def preload_store(data: Path, node_id: str, keys: int, prefix: str) -> None:
    """Write `keys` records into the store a node started on `data` will open, as that node would
    have written them: versions from its clock, tagged with its id, after its `created_hlc`."""
    from shareddb.clock import HybridClock
    from shareddb.record import Record, incarnation_of, make_origin, make_version
    from shareddb.store.cache import RecordCache
    from shareddb.store.sqlite import SQLiteStore, sqlite_path

    class NoCache(RecordCache):
        """Keeps nothing: the preload never reads."""

        def put(self, record: Record) -> None:
            pass

    clock = HybridClock()
    store = SQLiteStore(sqlite_path(data), clock_high=lambda: clock.last)
    if hasattr(store, "_cache"):
        # The store's read cache is not what this loads, and past ~380,000 records its eviction
        # (dict.pop(next(iter(...))), O(deleted entries) per call) would make the preload crawl.
        store._cache = NoCache()
    await store.open()
    try:
        await store.set_meta("created_hlc", str(clock.now(wall_ms())))
        origin = make_origin(node_id, incarnation_of(store.instance_id))
        pool = "".join(chr(97 + (i * 7919) % 26) for i in range(4096))
        for start in range(0, keys, PRELOAD_BATCH):
            records = [
                Record(
                    f"{prefix}{i:08d}",
                    pool[i % 3996 : i % 3996 + 100],
                    make_version(clock.now(wall_ms()), origin),
                )
                for i in range(start, min(keys, start + PRELOAD_BATCH))
            ]
            await store.apply(records)
    finally:
        await store.close()


@dataclass(slots=True)
class Followed:
    seconds_from_spawn: float
    seconds_from_listen: float
    digest: Digest
    samples: list[dict[str, Any]]


def follow(source: Node, follower: Node, timeout: float, sample_every: float) -> Followed:
    """Wait until `follower`'s digest equals `source`'s (which must not change meanwhile)."""
    target = source.digest()
    if target is None:
        raise BenchError(f"{source.name} does not answer /v1/digest")
    samples: list[dict[str, Any]] = []
    next_sample = 0.0

    def caught_up() -> Digest | None:
        nonlocal next_sample
        digest = follower.digest()
        if now() >= next_sample:
            next_sample = now() + sample_every
            samples.append(
                {
                    "t": round(now() - follower.spawned_at, 2),
                    "count": digest.count if digest else None,
                    "rss_mb": {n.name: (n.rss_bytes() or 0) // MB for n in (source, follower)},
                    "anon_mb": {n.name: (n.anon_bytes() or 0) // MB for n in (source, follower)},
                    "cpu_s": {n.name: n.cpu_seconds() for n in (source, follower)},
                }
            )
        return digest if digest == target else None

    digest = wait_for(caught_up, timeout, f"{follower.name} to catch up", [source, follower], POLL)
    done = now()
    if source.digest() != target:
        raise BenchError(f"{source.name} changed while {follower.name} caught up")
    return Followed(done - follower.spawned_at, done - follower.listening_at, digest, samples)


def memory(nodes: list[Node]) -> dict[str, dict[str, int]]:
    return {
        n.name: {
            "hwm_mb": (n.hwm_bytes() or 0) // MB,
            "rss_mb": (n.rss_bytes() or 0) // MB,
            "anon_mb": (n.anon_bytes() or 0) // MB,
        }
        for n in nodes
    }


def progress(samples: list[dict[str, Any]], total: int) -> list[dict[str, float]]:
    """Seconds (from the follower's spawn) at which it first held each tenth of `total` keys, and
    the rate over that tenth: a slowdown past some size shows here."""
    marks: list[dict[str, float]] = []
    last_t, last_count = 0.0, 0
    for tenth in range(1, 11):
        want = total * tenth // 10
        hit = next((s for s in samples if (s["count"] or 0) >= want), None)
        if hit is None:
            break
        rate = (hit["count"] - last_count) / max(hit["t"] - last_t, 1e-9)
        marks.append({"keys": want, "t": hit["t"], "rate": round(rate)})
        last_t, last_count = hit["t"], hit["count"]
    return marks


def peak_anon(samples: list[dict[str, Any]], name: str) -> int:
    """The largest RssAnon sampled for one node, in MB."""
    return max((s["anon_mb"][name] for s in samples), default=0)


def profile(settings_dir: Path | None, fleet: Fleet, nodes: list[Node], tag: str) -> list[Profiler]:
    if settings_dir is None:
        return []
    return [Profiler(fleet, n, settings_dir / f"{tag}-{n.name}.txt") for n in nodes]


def run_copy(fleet: Fleet, settings: CopySettings, bench_command: str) -> Outcome:
    n = settings.keys
    outcome = Outcome("copy", f"a new node copying {n:,} keys (100-byte values) from A")
    a = fleet.node("copy-a")
    started = now()
    if settings.load_via == "store":
        command = preload(fleet, a.data, a.name, n, "copy-")
        a.start()
        load: dict[str, Any] = {"via": "SQLiteStore.apply before A starts", "command": command}
    else:
        a.start()
        bulk: BulkRun = run_async(write_keys(a.url, "copy-", n, connections=64))
        load = {"via": "PUT /v1/kv over HTTP, 64 connections", "rate": bulk.rate}
    load["seconds"] = now() - started
    nodes = [a]
    try:
        digest = wait_for(a.digest, 30.0, f"{a.name}'s digest", [a])
        if digest.count != n:
            raise BenchError(f"{a.name} holds {digest.count} keys, not {n}")
        outcome.data["load"] = load
        outcome.data["memory_a_before"] = memory([a])
        b = fleet.node("copy-b", "--peers", a.url)
        nodes.append(b)
        b.start()
        profilers = profile(settings.profile, fleet, [a, b], "copy")
        followed = follow(a, b, settings.timeout, settings.sample_every)
        outcome.data["profiles"] = [p.stop() for p in profilers]
        outcome.data["memory_after"] = memory([a, b])
        outcome.data["nodes"] = {x.name: x.commands for x in nodes}
        outcome.data["samples"] = followed.samples
        outcome.data["progress"] = progress(followed.samples, n)
        outcome.data["seconds_from_spawn"] = followed.seconds_from_spawn
        outcome.data["seconds_from_listen"] = followed.seconds_from_listen
    finally:
        fleet.retire(nodes)
    rate = n / followed.seconds_from_spawn
    outcome.data["keys_per_s"] = rate
    outcome.commands["copy"] = f"{bench_command}  (B: {b.commands[-1]})"
    mem = outcome.data["memory_after"]
    outcome.figures += [
        Figure(f"copy {n:,} keys to new B", followed.seconds_from_spawn, "s", source="copy"),
        Figure("copy rate", rate, "keys/s", f">= {GOAL_COPY_KEYS_S:,.0f}",
               at_least(rate, GOAL_COPY_KEYS_S), "copy"),
        Figure("peak RSS A (source)", mem[a.name]["hwm_mb"], "MB", source="copy"),
        Figure("peak RSS B (new node)", mem[b.name]["hwm_mb"], "MB", source="copy"),
        Figure("B heap (RssAnon, max sampled)", peak_anon(followed.samples, b.name), "MB",
               source="copy"),
    ]  # fmt: skip
    return outcome


def run_catchup(fleet: Fleet, settings: CatchupSettings, bench_command: str) -> Outcome:
    n = settings.keys
    how = "kill -9" if settings.kill else "SIGTERM"
    outcome = Outcome("catchup", f"B stopped ({how}), {n:,} writes on A, B restarted")
    a = fleet.start("cu-a")
    b = fleet.start("cu-b", "--peers", a.url)
    nodes = [a, b]
    try:
        wait_members_up(nodes, 30.0)
        run_async(write_keys(a.url, "before-", 1000))
        wait_converged(nodes, 60.0)
        if settings.kill:
            b.kill()
        else:
            b.stop()
        bulk = run_async(write_keys(a.url, "missed-", n, connections=settings.connections))
        outcome.data["writes_while_down"] = {
            "keys": n,
            "seconds": bulk.seconds,
            "rate": bulk.rate,
            "connections": bulk.connections,
        }
        b.start()
        profilers = profile(settings.profile, fleet, [b], "catchup")
        followed = follow(a, b, settings.timeout, settings.sample_every)
        outcome.data["profiles"] = [p.stop() for p in profilers]
        outcome.data["memory_after"] = memory(nodes)
        outcome.data["nodes"] = {x.name: x.commands for x in nodes}
        outcome.data["samples"] = followed.samples
        outcome.data["seconds_from_spawn"] = followed.seconds_from_spawn
        outcome.data["seconds_from_listen"] = followed.seconds_from_listen
    finally:
        fleet.retire(nodes)
    rate = n / followed.seconds_from_spawn
    outcome.data["writes_per_s"] = rate
    outcome.commands["catchup"] = f"{bench_command}  (B restarted: {b.commands[-1]})"
    outcome.figures += [
        Figure(f"catch up {n:,} missed writes", followed.seconds_from_spawn, "s", source="catchup"),
        Figure("catch-up rate", rate, "writes/s", source="catchup"),
        Figure("A write rate while B down", bulk.rate, "/s", source="catchup"),
        Figure("peak RSS B (restarted)", outcome.data["memory_after"][b.name]["hwm_mb"], "MB",
               source="catchup"),
        Figure("B heap (RssAnon, max sampled)", peak_anon(followed.samples, b.name), "MB",
               source="catchup"),
    ]  # fmt: skip
    return outcome


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fill an empty data dir with KEYS records of 100-byte values through the "
        "shareddb store, as the node NODE_ID would have written them (used by bench/replication.py)."
    )
    parser.add_argument("--preload", type=Path, required=True, help="the data dir (must not exist)")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--keys", type=int, required=True)
    parser.add_argument("--prefix", default="copy-")
    args = parser.parse_args(argv)
    args.preload.mkdir(parents=True)
    started = time.perf_counter()
    run_async(preload_store(args.preload, args.node_id, args.keys, args.prefix))
    seconds = time.perf_counter() - started
    print(f"{args.keys} records in {seconds:.1f}s ({args.keys / seconds:,.0f}/s)", flush=True)


if __name__ == "__main__":
    main()
