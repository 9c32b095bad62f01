"""`make bench`: measure a shareddb node with wrk against a hello-world ceiling (and etcd, if present).

The node runs on SQLite; when redis-server is installed, a second node storing into a private Redis
is measured beside it (bench/redis_target.py).

Starts every target, preloads the data set, warms each scenario up, then runs all scenarios in
rounds, alternating the order (forward, backward, ...) so a drift in the machine's load falls on
every scenario alike. Figures are medians over the rounds, reported as ratios to the hello-world
baseline of the same run; the table goes to stdout and everything to bench/results/latest.json.
Every server is stopped at the end, on error and on Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/run.py`: import the bench package from the checkout, and keep bench/
    # itself off sys.path so its modules cannot shadow anything.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import etcd, redis_target
from bench.expiry import ExpiryError, ExpiryResult, run_expiry, summary_lines
from bench.expiry import add_arguments as add_expiry_arguments
from bench.processes import Fleet, StartError
from bench.report import (
    Run,
    checks,
    checks_text,
    delay_check,
    noise_notes,
    server_problems,
    summarise,
    table,
    write_json,
)
from bench.scenarios import BASELINE, NAMES, Scenario, select
from bench.targets import Target, settle, start_cluster, start_hello, start_node
from bench.watchers import Delay, measure_delay, watching
from bench.workload import PreloadError, Workload, preload, preload_etcd
from bench.wrk import WrkError, WrkOptions, run_wrk, wrk_binary, wrk_version

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
EXPIRY = "expiry"  # the name of the mass-expiry section in --only


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Throughput and latency of a shareddb node, as ratios to a hello-world aiohttp "
        "server measured in the same run (see bench/README.md).",
    )
    parser.add_argument(
        "--seconds", type=int, default=8, help="length of each wrk run, whole seconds (default 8)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each scenario; medians reported (default 3)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help=f"run only these scenarios (repeatable), plus the {BASELINE} baseline; "
        f"one of: {', '.join(NAMES)}; or {EXPIRY} for the mass-expiry section",
    )
    add_expiry_arguments(parser, EXPIRY)
    parser.add_argument(
        "--cluster",
        type=int,
        default=1,
        metavar="N",
        help="also start N shareddb nodes with --peers naming each other and measure PUTs on the first "
        "(scenario cluster_put); N < 2 (default) leaves it out",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(2, os.cpu_count() or 1),
        metavar="N",
        help="processes of the node that workers_get reads from (shareddb serve --workers N; "
        "default: the number of cores, at least 2); every other node runs on one",
    )
    parser.add_argument(
        "--no-etcd", action="store_true", help="skip the etcd comparison even when etcd is installed"
    )
    parser.add_argument(
        "--redis",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure a second node, with --store redis:// on a private redis-server (scenarios "
        "redis_get, redis_put); default: yes when redis-server is installed",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="whole seconds of unrecorded load per scenario before the rounds (default 1; 0: none)",
    )
    parser.add_argument(
        "--watchers",
        type=int,
        default=1000,
        help="watch streams open in watched_put and while timing the watch delay (default 1000)",
    )
    parser.add_argument(
        "--watch-rate",
        type=float,
        default=1000.0,
        help="writes per second while timing the watch delay (default 1000)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk keep-alive connections (default 32)"
    )
    parser.add_argument(
        "--keys", type=int, default=10_000, help="keys preloaded and used (default 10000)"
    )
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes per value (default 100)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help="results file (default bench/results/latest.json)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir: data, server logs, raw wrk output"
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    if args.expiry is None:
        args.expiry = not args.only or EXPIRY in args.only
    if args.only:  # only the section: the baseline, and the node it runs on
        args.only = [name for name in args.only if name != EXPIRY] or [BASELINE]
    positive = (
        ("--seconds", args.seconds),
        ("--rounds", args.rounds),
        ("--keys", args.keys),
        ("--expiry-seconds", args.expiry_seconds),
        ("--expiry-keys", args.expiry_keys),
    )
    for flag, value in positive:
        if value <= 0:
            parser.error(f"{flag} must be positive")
    if args.warmup < 0 or args.value_bytes < 0 or args.threads < 1 or args.connections < args.threads:
        parser.error("need --warmup >= 0, --value-bytes >= 0, 1 <= --threads <= --connections")
    return args


class Bench:
    """One bench run: its servers, its measurements, and its report."""

    def __init__(self, args: argparse.Namespace, plan: list[Scenario], notes: list[str]) -> None:
        self.args = args
        self.plan = plan
        self.notes = notes
        self.workload = Workload(args.keys, args.value_bytes)
        self.wrk = WrkOptions(args.threads, args.connections, args.seconds)
        self.fleet = Fleet()
        self.workdir = Path(tempfile.mkdtemp(prefix="shareddb-bench-"))
        self.targets: dict[str, Target] = {}
        self.runs: dict[str, list[Run]] = {s.name: [] for s in plan}
        self.delay: Delay | None = None
        self.expiry: ExpiryResult | None = None
        self.started = time.time()

    def run(self) -> int:
        load = os.getloadavg()
        self.notes.append(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        runs = len(self.plan) * self.args.rounds
        total = runs * self.args.seconds + len(self.plan) * self.args.warmup
        if self.args.expiry:
            total += self.args.seconds + 30  # idle, loading the expiring keys, reaping them
        print(
            f"{len(self.plan)} scenarios x {self.args.rounds} rounds x {self.args.seconds} s "
            f"(+ warm-up): about {total / 60:.1f} min of load; {self.notes[-1]}",
            flush=True,
        )
        code = 0
        try:
            self.start_targets()
            self.warm_up()
            self.measure_rounds()
            self.measure_watch_delay()
            if self.args.expiry:
                self.measure_expiry()
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every server", file=sys.stderr)
            code = 130
        except (StartError, PreloadError, WrkError, ExpiryError) as exc:
            print(f"\nbench FAILED: {exc}", file=sys.stderr)
            self.print_log_tails()
            code = 1
        finally:
            server_notes = self.stop()
        if code == 0:
            self.report(server_notes)
        else:
            for problem in server_problems(server_notes):
                print(f"  {problem}", file=sys.stderr)
        return code

    # -- servers ----------------------------------------------------------------------------------

    def start_targets(self) -> None:
        needed = {s.target for s in self.plan} | ({"node"} if self.args.expiry else set())
        print("starting:", ", ".join(sorted(needed)), flush=True)
        self.targets["hello"] = start_hello(self.fleet, self.workdir)
        if "node" in needed:
            self.targets["node"] = start_node(self.fleet, self.workdir)
        if "workers_node" in needed:
            self.targets["workers_node"] = start_node(self.fleet, self.workdir, self.args.workers)
        if "redis_node" in needed:
            self.targets["redis_node"] = redis_target.start_redis_node(self.fleet, self.workdir)
        if "cluster" in needed:
            self.targets["cluster"] = start_cluster(self.fleet, self.workdir, self.args.cluster)
        if "etcd" in needed:
            self.targets["etcd"] = etcd.start_cluster(self.fleet, self.workdir)
        for name in ("node", "workers_node", "redis_node", "cluster", "etcd"):
            if name in self.targets:
                self.preload(self.targets[name])

    def preload(self, target: Target) -> None:
        began = time.monotonic()
        load = preload_etcd if target.name == "etcd" else preload
        asyncio.run(load(target.url, self.workload))
        took = time.monotonic() - began
        line = f"preloaded {self.workload.keys} keys into {target.description} in {took:.1f} s"
        if target.name == "cluster":
            settled = settle(target)
            state = "converged" if settled.converged else "NOT converged"
            line += f"; replicas {state} (key counts {settled.counts})"
        print(line, flush=True)

    def stop(self) -> list[dict[str, Any]]:
        """Stop every server; what each one's log and exit say, before the temp dir goes."""
        # A second Ctrl-C must not leave servers running: teardown is bounded (STOP_TIMEOUT).
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            killed = self.fleet.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        found = [server.findings(killed=server.name in killed) for server in self.fleet.servers]
        if self.args.keep:
            print(f"kept {self.workdir} (data, logs/, wrk/)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return found

    def print_log_tails(self) -> None:
        for server in self.fleet.servers:
            if server.name != "hello" and server.logs().strip():
                print(f"--- end of the log of {server.name} ---\n{server.log_tail()}", file=sys.stderr)

    # -- measuring --------------------------------------------------------------------------------

    def warm_up(self) -> None:
        if self.args.warmup <= 0:
            return
        options = WrkOptions(self.wrk.threads, self.wrk.connections, self.args.warmup)
        for scenario in self.plan:
            target = self.targets[scenario.target]
            with self.watching(scenario, target):
                url = target.urls[scenario.member]
                run_wrk(url, scenario.script, self.workload.lua_args(scenario.ops), options)
            if target.name == "cluster":
                settle(target)
        print(f"warmed up ({self.args.warmup} s per scenario)", flush=True)

    def measure_rounds(self) -> None:
        for index in range(self.args.rounds):
            order = self.plan if index % 2 == 0 else list(reversed(self.plan))
            for scenario in order:
                run = self.measure(scenario, index + 1)
                self.runs[scenario.name].append(run)
                r = run.result
                print(
                    f"round {index + 1}/{self.args.rounds}  {scenario.name:<12} {r.rps:>9,.0f} req/s  "
                    f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms",
                    flush=True,
                )

    def measure(self, scenario: Scenario, round_number: int) -> Run:
        target = self.targets[scenario.target]
        raw = self.workdir / "wrk" / f"{scenario.name}-{round_number}.txt"
        with self.watching(scenario, target):
            before = target.cpu_seconds()
            args = self.workload.lua_args(scenario.ops)
            result = run_wrk(target.urls[scenario.member], scenario.script, args, self.wrk, raw)
            after = target.cpu_seconds()
        cpu = None
        if before is not None and after is not None and result.requests:
            cpu = (after - before) * 1e6 / result.requests
        settled = None
        if target.name == "cluster":
            outcome = settle(target)
            settled = {
                "converged": outcome.converged,
                "seconds": round(outcome.seconds, 2),
                "key_counts": list(outcome.counts),
            }
        return Run(round_number, result, cpu, settled)

    def watching(self, scenario: Scenario, target: Target) -> contextlib.AbstractContextManager[None]:
        count = self.args.watchers if scenario.watchers else 0
        return watching(
            self.fleet, target.url, count, self.workload, self.workdir / "logs" / "watchers.log"
        )

    def measure_watch_delay(self) -> None:
        """With the watch scenarios: the delay from a write to its event, at a fixed rate."""
        if not any(s.watchers for s in self.plan):
            return
        url, rate = self.targets["node"].url, self.args.watch_rate
        self.delay = asyncio.run(
            measure_delay(url, self.args.watchers, self.workload, rate, self.args.seconds)
        )
        d = self.delay
        print(
            f"watch delay at {d.achieved:,.0f} writes/s with {self.args.watchers:,} watches: "
            f"p50 {d.p50_ms:.2f} ms  p99 {d.p99_ms:.2f} ms  max {d.max_ms:.2f} ms "
            f"(p99 after the write's answer {d.p99_after_ack_ms:.2f} ms; {d.missing} missing)",
            flush=True,
        )

    def measure_expiry(self) -> None:
        keys = self.args.expiry_keys
        print(f"mass expiry: a GET window idle, then one while {keys:,} keys expire", flush=True)
        options = WrkOptions(self.wrk.threads, self.wrk.connections, self.args.expiry_seconds)
        self.expiry = run_expiry(
            self.targets["node"].url,
            self.workload,
            self.wrk,
            options,
            keys,
            self.args.expiry_allowance,
            self.workdir,
        )
        print("\n".join(summary_lines(self.expiry)), flush=True)

    # -- reporting --------------------------------------------------------------------------------

    def report(self, servers: list[dict[str, Any]]) -> None:
        load = os.getloadavg()
        self.notes.append(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        descriptions = {name: t.description for name, t in self.targets.items()}
        summaries = summarise(self.runs, self.plan, descriptions)
        found = checks(summaries)
        if self.delay is not None:
            found.append(delay_check(self.delay.p99_ms, self.delay.rate, self.args.watchers))
        if self.expiry is not None:
            found.append(self.expiry.check())
        print(
            f"\nmedians of {self.args.rounds} rounds; x hello = req/s / hello-world req/s; "
            "x hello CPU = hello-world CPU us/req / CPU us/req\n"
        )
        print(table(summaries))
        print("\ntargets (ratios):")
        print(checks_text(found))
        if self.expiry is not None:
            print("\nmass expiry (GET load on the SQLite node, idle vs while keys expire):")
            print("\n".join(summary_lines(self.expiry)))
            self.notes.extend(self.expiry.notes)
        cluster_runs = self.runs.get("cluster_put", [])
        if cluster_runs and not all(r.settle and r.settle["converged"] for r in cluster_runs):
            self.notes.append(
                "cluster_put: the other nodes did not converge with node 1 after its writes "
                "(replication not running in this build?)"
            )
        self.notes.extend(noise_notes(summaries))
        self.notes.extend(server_problems(servers))
        if self.notes:
            print("\nnotes:")
            for note in self.notes:
                print(f"  - {note}")
        document = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds_total": round(time.time() - self.started, 1),
            "command": sys.argv,
            "settings": {
                "seconds": self.args.seconds,
                "rounds": self.args.rounds,
                "warmup": self.args.warmup,
                "threads": self.wrk.threads,
                "connections": self.wrk.connections,
                "keys": self.workload.keys,
                "value_bytes": self.workload.value_bytes,
                "cluster": self.args.cluster,
                "expiry_seconds": self.args.expiry_seconds if self.args.expiry else None,
                "expiry_keys": self.args.expiry_keys if self.args.expiry else None,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "wrk": wrk_version(),
                "etcd": etcd.describe() if "etcd" in self.targets else None,
                "redis": redis_target.describe() if "redis_node" in self.targets else None,
            },
            "baseline": BASELINE,
            "scenarios": [s.to_json() for s in summaries],
            "targets": [
                {
                    "name": c.name,
                    "ratio": round(c.ratio, 4),
                    "goal": c.goal,
                    "met": c.met,
                    "verdict": c.verdict,
                }
                for c in found
            ],
            "watch_delay": None if self.delay is None else dataclasses.asdict(self.delay),
            "expiry": None if self.expiry is None else self.expiry.to_json(),
            "notes": self.notes,
            "servers": servers,
        }
        write_json(self.args.json, document)
        print(f"\nwrote {self.args.json}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the bench as Ctrl-C does, through the finally that stops every server.

    Re-raised as SIGINT rather than raising here, so inside asyncio.run the loop's own SIGINT
    handling cancels the running task cleanly instead of an exception escaping from a callback.
    """
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        wrk_binary()
        etcd_reason = "--no-etcd given" if args.no_etcd else etcd.unavailable()
        redis_reason = "--no-redis given" if args.redis is False else redis_target.unavailable()
        if args.redis and redis_reason is not None:
            raise ValueError(f"--redis: {redis_reason}")
        plan, notes = select(args.only, args.cluster, etcd_reason, redis_reason)
        for scenario in plan:
            if scenario.ops > args.keys:
                raise ValueError(f"{scenario.name} needs --keys {scenario.ops} or more")
    except (WrkError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", flush=True)
    return Bench(args, plan, notes).run()


if __name__ == "__main__":
    sys.exit(main())
