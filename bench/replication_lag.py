"""Scenario `lag`: how long a single write on node A takes to become readable on B and C.

A probe is one PUT of a fresh key on A while one watcher per target node polls GET of that key on
its own keep-alive connection, back to back (or `poll_interval` apart), and notes when the value
first comes back. Lag is measured from A's acknowledgement (what a client that wrote and then reads
elsewhere sees); the lag from the moment the PUT was sent is kept too. The figure overstates the
true lag by at most one poll cycle (one GET round trip plus the interval), reported as `resolution`.

Run on an idle cluster, then while a paced background load writes to A at 25, 50 and 75 % of the
rate wrk measured as A's maximum a moment before. Under each load, after the lag probes, `PUT ?w=3`
probes time writes that are answered only once all three nodes hold them (the goal: p99 <= 50 ms at
half the maximum load).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.replication_http import Connection, HttpError, now
from bench.replication_load import (
    finish_paced,
    paced_command,
    percentile,
    random_value,
    run_async,
    run_wrk,
    start_paced,
)
from bench.replication_nodes import BenchError, Fleet, Node, wait_converged, wait_members_up
from bench.replication_report import Figure, Outcome, at_most

GOAL_P99_MS = 50.0
PROBE_TIMEOUT = 5.0
WARMUP_PROBES = 10
LOAD_WARMUP = 2.0  # seconds of paced load before the first probe
LOAD_CONNECTIONS = 64  # enough that a slow answer never holds the next request past its time


@dataclass(frozen=True, slots=True)
class LagSettings:
    probes: int = 300
    gap: float = 0.02  # seconds between probes
    poll_interval: float = 0.0  # seconds between two GETs of one watcher; 0: back to back
    max_seconds: float = 5.0  # wrk run that measures A's maximum write rate
    load_seconds: float = 25.0  # each paced load; probes stop a second before it does
    load_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)  # of A's maximum write rate
    converge_timeout: float = 120.0


@dataclass(slots=True)
class Probes:
    """Lags in milliseconds, one list per target node."""

    from_ack: dict[str, list[float]] = field(default_factory=dict)
    from_send: dict[str, list[float]] = field(default_factory=dict)
    write_ms: list[float] = field(default_factory=list)
    missing: int = 0  # (probe, target) pairs not seen within PROBE_TIMEOUT
    polls: int = 0
    poll_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        every = [lag for lags in self.from_ack.values() for lag in lags]
        sent = [lag for lags in self.from_send.values() for lag in lags]
        return {
            "probes": len(self.write_ms),
            "missing": self.missing,
            "resolution_ms": 1000 * self.poll_seconds / self.polls if self.polls else None,
            "from_ack_ms": stats(every),
            "from_send_ms": stats(sent),
            "per_target_from_ack_ms": {name: stats(lags) for name, lags in self.from_ack.items()},
            "write_ms": stats(self.write_ms),
        }


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
    }


class Prober:
    """Probe writes to one node, watched on the others; or, with `copies`, writes sent with
    `?w=copies` and only timed (no watchers: the answer says the copies exist)."""

    def __init__(
        self, writer: Node, targets: list[Node], settings: LagSettings, copies: int = 0
    ) -> None:
        self.writer = Connection(writer.url)
        self.copies = copies
        self.targets = {node.name: Connection(node.url) for node in targets}
        self.settings = settings
        self.run_id = f"{int(time.time()):x}{random.randrange(16**4):04x}"
        self.count = 0
        self.rng = random.Random()

    async def probe(self, into: Probes) -> None:
        self.count += 1
        path = f"/v1/kv/lag-{self.run_id}-{self.count}"
        value = random_value(self.rng, 100)
        if self.copies:
            sent = now()
            answer = await self.writer.put(f"{path}?w={self.copies}", value)
            if answer.status not in (200, 201):
                raise BenchError(f"probe PUT {path}?w={self.copies} answered {answer.status}")
            into.write_ms.append(1000 * (now() - sent))
            return
        seen: dict[str, float] = {}
        watchers = [
            asyncio.create_task(self._watch(name, conn, path, value, seen, into))
            for name, conn in self.targets.items()
        ]
        await asyncio.sleep(0)  # every watcher has its first GET in flight before the write
        sent = now()
        answer = await self.writer.put(path, value)
        acked = now()
        if answer.status not in (200, 201):
            raise BenchError(f"probe PUT {path} answered {answer.status}: {answer.body[:200]!r}")
        done, pending = await asyncio.wait(watchers, timeout=PROBE_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            # wait(), not `await task` under suppress(CancelledError): that would also swallow a
            # cancellation of this task (Ctrl-C).
            await asyncio.wait(pending)
        for task in done:
            if (error := task.exception()) is not None:
                raise BenchError(f"a watcher of {path} failed: {error}")
        into.write_ms.append(1000 * (acked - sent))
        for name in self.targets:
            if name in seen:
                into.from_ack.setdefault(name, []).append(1000 * (seen[name] - acked))
                into.from_send.setdefault(name, []).append(1000 * (seen[name] - sent))
            else:
                into.missing += 1

    async def _watch(
        self,
        name: str,
        conn: Connection,
        path: str,
        value: bytes,
        seen: dict[str, float],
        into: Probes,
    ) -> None:
        interval = self.settings.poll_interval
        try:
            while True:
                start = now()
                answer = await conn.get(path)
                at = now()
                into.polls += 1
                into.poll_seconds += at - start
                if answer.status == 200 and answer.body == value:
                    seen[name] = at
                    return
                if answer.status not in (200, 404):
                    raise BenchError(f"GET {path} on {name} answered {answer.status}")
                if interval > 0:
                    await asyncio.sleep(interval)
                    into.poll_seconds += interval
        except asyncio.CancelledError:
            conn.close()  # a request may be half-way: this connection cannot be reused
            raise
        except HttpError:
            conn.close()
            raise

    async def run(self, count: int, until: float | None = None) -> Probes:
        """`count` probes `gap` apart, or fewer if time `until` (now() seconds) comes first."""
        probes = Probes()
        for _ in range(count):
            if until is not None and now() >= until:
                break
            await self.probe(probes)
            await asyncio.sleep(self.settings.gap)
        return probes

    def close(self) -> None:
        self.writer.close()
        for conn in self.targets.values():
            conn.close()


async def measure(
    writer: Node,
    targets: list[Node],
    settings: LagSettings,
    count: int,
    until: float | None = None,
    copies: int = 0,
) -> Probes:
    prober = Prober(writer, targets, settings, copies)
    try:
        await prober.run(WARMUP_PROBES)
        return await prober.run(count, until)
    finally:
        prober.close()


def lag_figures(label: str, probes: Probes, source: str, goal: bool = True) -> list[Figure]:
    summary = probes.summary()["from_ack_ms"]
    p99 = summary.get("p99")
    aim, met = (f"<= {GOAL_P99_MS:g}", at_most(p99, GOAL_P99_MS)) if goal else ("", None)
    return [
        Figure(f"lag {label} p50", summary.get("p50"), "ms", source=source),
        Figure(f"lag {label} p99", p99, "ms", aim, met, source),
        Figure(f"lag {label} max", summary.get("max"), "ms", source=source),
    ]


def copies_figures(label: str, probes: Probes, source: str, goal: bool) -> list[Figure]:
    summary = probes.summary()["write_ms"]
    p99 = summary.get("p99")
    aim, met = (f"<= {GOAL_P99_MS:g}", at_most(p99, GOAL_P99_MS)) if goal else ("", None)
    return [
        Figure(f"PUT ?w=3 {label} p50", summary.get("p50"), "ms", source=source),
        Figure(f"PUT ?w=3 {label} p99", p99, "ms", aim, met, source),
    ]


def _loaded(
    outcome: Outcome, fleet: Fleet, nodes: list[Node], settings: LagSettings, top: float,
    fraction: float,
) -> None:  # fmt: skip
    """Lag probes, then `?w=3` probes, while a paced load writes to A at `fraction` of `top`."""
    a, *others = nodes
    label, key = f"@{fraction:.0%} load", f"{fraction:.0%}"
    rate = top * fraction
    cmd = paced_command(a.url, rate, settings.load_seconds, LOAD_CONNECTIONS, f"lagload{key[:-1]}-")
    proc = start_paced(fleet, cmd)
    time.sleep(LOAD_WARMUP)
    window = settings.load_seconds - LOAD_WARMUP - 1.0
    half = now() + window / 2
    loaded = run_async(measure(a, others, settings, settings.probes, half))
    copies = run_async(measure(a, others, settings, settings.probes, half + window / 2, len(nodes)))
    load = finish_paced(proc, cmd, settings.load_seconds + 30.0)
    source = f"lag/load {key}"
    outcome.commands[source] = load.command
    outcome.data.setdefault("loaded", {})[key] = {
        "lag": loaded.summary(),
        "copies": copies.summary(),
        "background_load": load.to_json(),
    }
    at_half = fraction == 0.5
    outcome.figures += lag_figures(label, loaded, source, goal=at_half)
    outcome.figures += copies_figures(label, copies, source, goal=at_half)
    outcome.figures.append(
        Figure(f"background load {label}", load.rate, "/s", f"target {rate:,.0f}/s",
               load.rate >= 0.95 * rate, source)
    )  # fmt: skip
    if load.failed:
        outcome.notes.append(f"{label}: {load.failed} background writes failed (non-2xx or socket)")
    if loaded.missing:
        outcome.notes.append(
            f"{label}: {loaded.missing} probe reads never saw the write within {PROBE_TIMEOUT:g}s"
        )
    started = now()
    wait_converged(nodes, settings.converge_timeout)
    outcome.data.setdefault("converge_after_load_s", {})[key] = now() - started


def run(fleet: Fleet, workdir: Path, settings: LagSettings, bench_command: str) -> Outcome:
    outcome = Outcome("lag", "propagation lag of single writes, 3-node cluster, A -> B and C")
    a = fleet.start("lag-a")
    b = fleet.start("lag-b", "--peers", a.url)
    c = fleet.start("lag-c", "--peers", a.url)
    nodes = [a, b, c]
    try:
        wait_members_up(nodes, 30.0)
        outcome.data["nodes"] = {n.name: n.commands for n in nodes}

        idle = run_async(measure(a, [b, c], settings, settings.probes))
        outcome.commands["lag/idle"] = (
            f"{bench_command}  (idle: {settings.probes} probes, {settings.gap * 1000:g} ms apart)"
        )
        outcome.data["idle"] = idle.summary()
        outcome.figures += lag_figures("idle", idle, "lag/idle")
        wait_converged(nodes, settings.converge_timeout)

        top = run_wrk(
            fleet, a.url + "/", workdir,
            connections=32, threads=2, seconds=settings.max_seconds, keys=100_000, prefix="lagmax-",
        )  # fmt: skip
        outcome.commands["lag/max"] = top.command
        outcome.data["max_write"] = top.to_json()
        outcome.figures.append(Figure("A max write rate (3-node)", top.rate, "/s", source="lag/max"))
        started = now()
        wait_converged(nodes, settings.converge_timeout)
        outcome.data["converge_after_max_s"] = now() - started

        for fraction in settings.load_fractions:
            _loaded(outcome, fleet, nodes, settings, top.rate, fraction)
    finally:
        fleet.retire(nodes)
    return outcome
