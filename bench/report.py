"""Turning runs into figures: medians per scenario, ratios to the baseline, the issue's targets,
the text of the table and the JSON file. Writing that file is its only I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.processes import STOP_TIMEOUT
from bench.scenarios import BASELINE, REDIS_PAIRS, TXN_PAIRS, WATCH_PAIRS, Scenario
from bench.wrk import WrkResult

GET_ETCD_TARGET = 0.9  # the fastest shareddb GET, as a fraction of etcd's GET on a follower
PUT_TARGET = 0.6  # a single node's PUT, as a fraction of hello-world req/s
PUT_CPU_TARGET_US = 40.0  # CPU us per single-node PUT beyond what hello-world spends per request
NEW_KEYS_TARGET = 0.9  # PUTs of new keys (a growing store) against overwrites: "as fast"
CLUSTER_TARGET = 0.8  # PUT on node 1 of the cluster against the same PUT on a single node
ETCD_PUT_TARGET = 1.5  # PUT on node 1 of the cluster against etcd's PUT to its leader
# The rows that read a key; the fastest is the one compared with etcd's GET.
READ_ROWS = ("get", "workers_get", "cluster_get")
WATCHED_TARGET = 0.9  # writes with 1,000 watch streams open, as a fraction of writes without
DELAY_TARGET_MS = 20.0  # p99 from a write to its event at 1,000 writes/s
NOISY_SPREAD = 0.25  # rounds further apart than this fraction of their median: a busy machine


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    result: WrkResult
    cpu_us_per_request: float | None
    settle: dict[str, Any] | None = None  # cluster targets: how replication caught up afterwards


@dataclass(frozen=True, slots=True)
class Summary:
    """One scenario over every round: the median of each figure, taken separately."""

    scenario: Scenario
    target: str
    runs: tuple[Run, ...]
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    ratio: float  # median req/s over the baseline's median req/s
    # The baseline's CPU time per request over this one's: the throughput ratio the two would have
    # if each had a core to itself. Steadier than `ratio` when other work takes the cores.
    cpu_ratio: float | None
    spread: float  # (max - min) / median of req/s over the rounds

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "measures": self.scenario.measures,
            "target": self.target,
            "rps": round(self.rps, 1),
            "ops_per_request": self.scenario.ops,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "cpu_us_per_request": _rounded(self.cpu_us_per_request),
            "ratio_to_hello": round(self.ratio, 4),
            "cpu_ratio_to_hello": None if self.cpu_ratio is None else round(self.cpu_ratio, 4),
            "rps_spread": round(self.spread, 4),
            "runs": [
                {
                    "round": r.round,
                    "cpu_us_per_request": _rounded(r.cpu_us_per_request),
                    **r.result.to_json(),
                    **({"settle": r.settle} if r.settle is not None else {}),
                }
                for r in self.runs
            ],
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison the issue asks for; `met` is None where there is no pass mark."""

    name: str
    ratio: float
    goal: str
    met: bool | None
    verdict: str


def _goal(name: str, ratio: float, threshold: float, goal: str) -> Check:
    met = ratio >= threshold
    return Check(name, ratio, goal, met, "met" if met else "NOT met")


def summarise(
    runs: dict[str, list[Run]], scenarios: Sequence[Scenario], targets: dict[str, str]
) -> list[Summary]:
    baseline = statistics.median(r.result.rps for r in runs[BASELINE])
    baseline_cpu = _median_cpu(runs[BASELINE])
    summaries = []
    for scenario in scenarios:
        done = runs[scenario.name]
        cpu = _median_cpu(done)
        rates = [r.result.rps for r in done]
        rps = statistics.median(rates)
        summaries.append(
            Summary(
                scenario=scenario,
                target=_target_of(scenario, targets),
                runs=tuple(done),
                rps=rps,
                p50_ms=statistics.median(r.result.p50_ms for r in done),
                p99_ms=statistics.median(r.result.p99_ms for r in done),
                cpu_us_per_request=cpu,
                ratio=rps / baseline if baseline else 0.0,
                cpu_ratio=baseline_cpu / cpu if baseline_cpu and cpu else None,
                spread=(max(rates) - min(rates)) / rps if rps else 0.0,
            )
        )
    return summaries


def _target_of(scenario: Scenario, targets: dict[str, str]) -> str:
    """The target's description; for etcd, which member the requests went to."""
    if scenario.target != "etcd":
        return targets[scenario.target]
    return f"{targets['etcd']} ({'leader' if scenario.member == 0 else 'a follower'})"


def _median_cpu(runs: Sequence[Run]) -> float | None:
    cpu = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
    return statistics.median(cpu) if cpu else None


def noise_notes(summaries: Sequence[Summary]) -> list[str]:
    """A note for each scenario whose rounds disagree enough to distrust its req/s."""
    return [
        f"{s.scenario.name}: req/s varied by {s.spread:.0%} of the median between rounds; the "
        "machine was busy, trust the CPU ratio more than req/s, or run again"
        for s in summaries
        if s.spread > NOISY_SPREAD
    ]


def checks(summaries: Sequence[Summary]) -> list[Check]:
    """The issue's targets, each a ratio of two figures of this run (bench/README.md)."""
    by_name = {s.scenario.name: s for s in summaries}
    found: list[Check] = []

    def ratio(name: str, top: str, bottom: str, goal: float | None, verdicts: tuple[str, str]) -> None:
        if top not in by_name or bottom not in by_name or by_name[bottom].rps <= 0:
            return
        value = by_name[top].rps / by_name[bottom].rps
        if goal is None:
            found.append(Check(name, value, "none (comparison)", None, verdicts[value < 1]))
        else:
            found.append(_goal(name, value, goal, f">= {goal:.2f}"))

    reads = [n for n in READ_ROWS if n in by_name]
    if reads and "etcd_get" in by_name and by_name["etcd_get"].rps > 0:
        best = max(reads, key=lambda n: by_name[n].rps)
        check = _goal(
            f"{best} / etcd_get req/s", by_name[best].rps / by_name["etcd_get"].rps,
            GET_ETCD_TARGET, f">= {GET_ETCD_TARGET:.2f}",
        )  # fmt: skip
        found.append(Check(check.name, check.ratio, check.goal, check.met,
                           f"{check.verdict} (the fastest shareddb GET of the run)"))  # fmt: skip
    ratio("get / hello req/s", "get", BASELINE, None, ("above the ceiling", "below the ceiling"))
    ratio("put / hello req/s", "put", BASELINE, PUT_TARGET, ("", ""))
    put, hello = by_name.get("put"), by_name.get(BASELINE)
    if put and hello and put.cpu_us_per_request and hello.cpu_us_per_request:
        beyond = put.cpu_us_per_request - hello.cpu_us_per_request
        met = beyond <= PUT_CPU_TARGET_US
        found.append(
            Check("put CPU us/req beyond hello's", beyond, f"<= {PUT_CPU_TARGET_US:g}", met,
                  "met" if met else "NOT met")
        )  # fmt: skip
    ratio("put_new / put req/s", "put_new", "put", NEW_KEYS_TARGET, ("", ""))
    ratio("cluster_put / put req/s", "cluster_put", "put", CLUSTER_TARGET, ("", ""))
    ratio("cluster_put / etcd_put req/s", "cluster_put", "etcd_put", ETCD_PUT_TARGET, ("", ""))
    ratio("put / etcd_put req/s", "put", "etcd_put", None, ("faster than etcd", "slower than etcd"))
    for redis, sqlite in REDIS_PAIRS:
        if redis in by_name and sqlite in by_name and by_name[sqlite].rps > 0:
            value = by_name[redis].rps / by_name[sqlite].rps
            verdict = "Redis store faster" if value >= 1 else "Redis store slower"
            cpu_redis, cpu_sqlite = by_name[redis].cpu_us_per_request, by_name[sqlite].cpu_us_per_request
            if cpu_redis and cpu_sqlite:
                verdict += f"; CPU us/req x{cpu_redis / cpu_sqlite:.2f} (node + redis-server)"
            found.append(Check(f"{redis} / {sqlite} req/s", value, "none (comparison)", None, verdict))
    for watched, plain in WATCH_PAIRS:
        if watched in by_name and plain in by_name and by_name[plain].rps > 0:
            value = by_name[watched].rps / by_name[plain].rps
            check = _goal(
                f"{watched} / {plain} req/s", value, WATCHED_TARGET, f">= {WATCHED_TARGET:.2f}"
            )
            cpu_watched = by_name[watched].cpu_us_per_request
            cpu_plain = by_name[plain].cpu_us_per_request
            if cpu_watched and cpu_plain:
                verdict = f"{check.verdict}; node CPU us/req x{cpu_watched / cpu_plain:.2f}"
                check = Check(check.name, check.ratio, check.goal, check.met, verdict)
            found.append(check)
    for txn, single in TXN_PAIRS:
        if txn in by_name and single in by_name and by_name[single].rps > 0:
            ops = by_name[txn].scenario.ops
            rate = by_name[txn].rps * ops
            verdict = (
                f"{by_name[txn].rps:,.0f} txn/s x {ops} ops = {rate:,.0f} ops/s; "
                f"{single} {by_name[single].rps:,.0f}/s"
            )
            found.append(
                Check(f"{txn} ops/s / {single} req/s", rate / by_name[single].rps,
                      "none (comparison)", None, verdict)
            )  # fmt: skip
    return found


def delay_check(p99_ms: float, rate: float, watchers: int) -> Check:
    """The watch delay target: p99 milliseconds from a write to its event."""
    met = p99_ms <= DELAY_TARGET_MS
    return Check(
        f"watch delay p99 ms, {rate:,.0f} writes/s, {watchers:,} watches",
        p99_ms,
        f"<= {DELAY_TARGET_MS:g} ms",
        met,
        "met" if met else "NOT met",
    )


def table(summaries: Sequence[Summary]) -> str:
    header = (
        "scenario",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "x hello",
        "x hello CPU",
        "req/s by round",
    )
    rows = [header]
    for s in summaries:
        rounds = " ".join(f"{r.result.rps / 1000:.1f}k" for r in sorted(s.runs, key=lambda r: r.round))
        rows.append(
            (
                s.scenario.name,
                s.target,
                f"{s.rps:,.0f}",
                f"{s.p50_ms:.2f}",
                f"{s.p99_ms:.2f}",
                "-" if s.cpu_us_per_request is None else f"{s.cpu_us_per_request:.0f}",
                f"{s.ratio:.2f}",
                "-" if s.cpu_ratio is None else f"{s.cpu_ratio:.2f}",
                rounds,
            )
        )
    numeric = {2, 3, 4, 5, 6, 7}
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def checks_text(found: Sequence[Check]) -> str:
    if not found:
        return "  (no targets apply to the scenarios run)"
    width = max(len(c.name) for c in found)
    goal_width = max(len(c.goal) for c in found)
    return "\n".join(
        f"  {c.name.ljust(width)}  {c.ratio:6.2f}  goal {c.goal.ljust(goal_width)}  {c.verdict}"
        for c in found
    )


def server_problems(servers: Sequence[dict[str, Any]]) -> list[str]:
    """One line per server that logged warnings or errors, or did not stop cleanly on SIGTERM
    (`servers` as ServerProcess.findings gives them)."""
    problems = []
    for server in servers:
        name = server["name"]
        if server["log_complaints"]:
            problems.append(
                f"{name}: {server['log_complaints']} warning/error log lines while serving, "
                f"e.g. {server['first_complaints'][:2]}"
            )
        if server["killed"]:
            problems.append(f"{name}: still running {STOP_TIMEOUT:g} s after SIGTERM; killed")
        elif not server["clean_exit"]:
            problems.append(f"{name}: exit status {server['exit']} after SIGTERM")
        if server["shutdown_complaints"]:
            problems.append(
                f"{name}: {server['shutdown_complaints']} warning/error log lines after SIGTERM, "
                f"e.g. {server['first_shutdown_complaints'][:1]}"
            )
    return problems


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
