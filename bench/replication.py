"""`make bench-replication`: replication figures measured on real node processes on loopback.

Scenarios (each stops by itself; select with --scenarios):
  lag         propagation lag of single writes A -> B, C on a 3-node cluster, idle and under a
              paced background load at half of A's maximum write rate (measured just before)
  throughput  PUT/s with wrk on node A of a 3-node cluster vs a standalone node, alternating;
              then how long until the three digests are equal
  copy        a new node copying --keys keys (default 1,000,000) from A: time, keys/s, peak RSS
  catchup     B stopped, --catchup-keys writes (default 100,000) on A, B restarted: time, writes/s

Prints one summary table and the exact command behind every figure; writes everything to
bench/results/replication.json. Every process it starts is stopped at the end, on error and on
Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

if __package__ in (None, ""):
    # Run as `python bench/replication.py`: import the bench package from the checkout, and keep
    # bench/ itself off sys.path so its modules cannot shadow anything.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import replication_copy, replication_lag, replication_throughput
from bench.replication_nodes import BenchError, Fleet
from bench.replication_report import Outcome, commands_text, table, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "replication.json"
PROFILES = ROOT / "bench" / "results" / "replication-profiles"
SCENARIOS = ("lag", "throughput", "copy", "catchup")
COMPLAINTS_KEPT = 10
NOISY_CORES = 0.25  # other processes' average CPU use past which a scenario's figures are flagged
QUIET_SECONDS = 3.0

# Full scale, and the --quick smoke run; an explicit flag wins over both.
FULL = {
    "keys": 1_000_000,
    "catchup_keys": 100_000,
    "probes": 300,
    "max_seconds": 5.0,
    "load_seconds": 25.0,
    "seconds": 10.0,
    "rounds": 2,
    "quiet_wait": 60.0,
}
QUICK = {
    "keys": 20_000,
    "catchup_keys": 5_000,
    "probes": 30,
    "max_seconds": 2.0,
    "load_seconds": 6.0,
    "seconds": 2.0,
    "rounds": 1,
    "quiet_wait": 5.0,
}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/replication.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="every scenario at a small scale")
    scale = parser.add_argument_group("scale (defaults: full scale, or --quick's)")
    scale.add_argument("--keys", type=int, help="copy: keys on A (full 1,000,000; quick 20,000)")
    scale.add_argument("--catchup-keys", type=int, help="catchup: writes B misses (100,000; 5,000)")
    scale.add_argument("--probes", type=int, help="lag: probe writes per phase (300; 30)")
    scale.add_argument("--max-seconds", type=float, help="lag: wrk run for A's max write rate (5; 2)")
    scale.add_argument("--load-seconds", type=float, help="lag: the paced background load (25; 6)")
    scale.add_argument("--seconds", type=float, help="throughput: each wrk run (10; 2)")
    scale.add_argument("--rounds", type=int, help="throughput: standalone+cluster pairs (2; 1)")
    knobs = parser.add_argument_group("method")
    knobs.add_argument("--gap-ms", type=float, default=20.0, help="lag: pause between probes")
    knobs.add_argument(
        "--poll-interval-ms",
        type=float,
        default=0.0,
        help="lag: pause between two GETs of one watcher (default 0: back to back)",
    )
    knobs.add_argument(
        "--load-fractions",
        type=lambda text: tuple(float(part) for part in text.split(",")),
        default=(0.25, 0.5, 0.75),
        metavar="F[,F]",
        help="lag: the paced loads, as fractions of A's max write rate (default 0.25,0.5,0.75)",
    )
    knobs.add_argument("--connections", type=int, default=32, help="throughput: wrk connections")
    knobs.add_argument(
        "--load-via",
        choices=("store", "http"),
        default="store",
        help="copy: load A through SQLiteStore.apply before it starts (default) or over HTTP",
    )
    knobs.add_argument("--catchup-kill", action="store_true", help="catchup: kill -9 B, not SIGTERM")
    knobs.add_argument(
        "--timeout", type=float, default=900.0, help="copy/catchup: seconds to wait for B"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, default=RESULTS, help="the JSON file")
    out.add_argument(
        "--profile",
        action="store_true",
        help=f"record py-spy (raw collapsed stacks) of the busy nodes into {PROFILES.relative_to(ROOT)}",
    )
    knobs.add_argument(
        "--quiet-wait",
        type=float,
        help="before each scenario, wait up to this many seconds (full 60; quick 5) for other "
        f"processes to leave the CPUs (under {NOISY_CORES} cores busy for {QUIET_SECONDS:g}s); "
        "0: do not wait",
    )
    out.add_argument("--keep", action="store_true", help="keep the nodes' data dirs and logs")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def scenario_command(argv: Sequence[str], scenario: str) -> str:
    """The command that reruns just `scenario` with this run's other flags."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--scenarios":
            skip = True
        elif not arg.startswith("--scenarios="):
            kept.append(arg)
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable
    return shlex.join([python, "bench/replication.py", *kept, "--scenarios", scenario])


def run_scenario(name: str, fleet: Fleet, work: Path, args: argparse.Namespace, command: str) -> Outcome:
    profile = PROFILES if args.profile else None
    if name == "lag":
        lag = replication_lag.LagSettings(
            probes=args.probes,
            gap=args.gap_ms / 1000,
            poll_interval=args.poll_interval_ms / 1000,
            max_seconds=args.max_seconds,
            load_seconds=args.load_seconds,
            load_fractions=args.load_fractions,
        )
        return replication_lag.run(fleet, work, lag, command)
    if name == "throughput":
        tp = replication_throughput.ThroughputSettings(
            seconds=args.seconds, connections=args.connections, rounds=args.rounds, profile=profile
        )
        return replication_throughput.run(fleet, work, tp)
    if name == "copy":
        copy = replication_copy.CopySettings(
            keys=args.keys, load_via=args.load_via, timeout=args.timeout, profile=profile
        )
        return replication_copy.run_copy(fleet, copy, command)
    catchup = replication_copy.CatchupSettings(
        keys=args.catchup_keys, kill=args.catchup_kill, timeout=args.timeout, profile=profile
    )
    return replication_copy.run_catchup(fleet, catchup, command)


def read_only(cmd: list[str]) -> str:
    """The output of a command that only reads (git rev-parse, wrk -v), or "" if it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT)
    except OSError:
        return ""
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": read_only(["git", "rev-parse", "HEAD"]),
        "wrk": read_only(["wrk", "-v"]),
    }


def complaints(fleet: Fleet, first: int) -> dict[str, Any]:
    """WARNING/ERROR lines in the logs of the nodes a scenario started (fleet.nodes[first:])."""
    found = {n.name: n.complaints() for n in fleet.nodes[first:]}
    return {
        name: {"count": len(lines), "first": lines[:COMPLAINTS_KEPT]}
        for name, lines in found.items()
        if lines
    }


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """Machine-wide busy CPU time, and what this bench and every child it reaped used, in seconds."""

    wall: float
    machine: float
    ours: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return cls(time.monotonic(), machine_busy(), ours)

    def since(self, start: CpuSnapshot) -> dict[str, float]:
        """Average cores busy between two snapshots: all, ours (nodes, wrk, loaders), others'.

        Valid once every process the scenario started has exited and been reaped (retire())."""
        wall = max(self.wall - start.wall, 1e-9)
        busy = (self.machine - start.machine) / wall
        ours = (self.ours - start.ours) / wall
        return {
            "wall_s": round(wall, 1),
            "busy_cores": round(busy, 2),
            "ours_cores": round(ours, 2),
            "other_cores": round(max(0.0, busy - ours), 2),
        }


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float) -> dict[str, float]:
    """Between scenarios nothing of ours runs: wait (at most `limit` seconds) until the rest of
    the machine keeps fewer than NOISY_CORES cores busy over QUIET_SECONDS in a row."""
    started = time.monotonic()
    quiet = 0.0
    busy = 0.0
    while True:
        before, at = machine_busy(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy() - before) / (time.monotonic() - at)
        quiet = quiet + 1.0 if busy < NOISY_CORES else 0.0
        waited = time.monotonic() - started
        if quiet >= QUIET_SECONDS or waited >= limit:
            return {"waited_s": round(waited, 1), "other_cores_before": round(busy, 2)}


def interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    needs_wrk = "lag" in args.scenarios or "throughput" in args.scenarios
    if needs_wrk and shutil.which("wrk") is None:
        print("bench/replication.py: wrk is not on PATH (Debian: apt-get install -y wrk)")
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    # Started in the background by a shell without job control, we would inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="shareddb-replication-bench-"))
    fleet = Fleet(work)
    outcomes: list[Outcome] = []
    document: dict[str, Any] = {
        "command": scenario_command(argv, ",".join(args.scenarios)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "scenarios": {},
    }
    print(f"$ {document['command']}\n(work dir {work})", flush=True)
    interrupted = failed = False
    try:
        for name in args.scenarios:
            command = scenario_command(argv, name)
            first = len(fleet.nodes)
            quiet = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else {}
            before = CpuSnapshot.take()
            print(f"== {name}: {command}", flush=True)
            try:
                outcome = run_scenario(name, fleet, work, args, command)
            except BenchError as exc:
                failed = True
                outcome = Outcome(name, name, error=str(exc))
                print(f"   FAILED: {exc}", flush=True)
            outcome.data["cpu"] = cpu = {**CpuSnapshot.take().since(before), **quiet}
            print(
                f"   machine: {cpu['ours_cores']:.2f} cores ours, {cpu['other_cores']:.2f} others' "
                f"over {cpu['wall_s']:g}s",
                flush=True,
            )
            if cpu["other_cores"] > NOISY_CORES:
                outcome.notes.append(
                    f"other processes kept {cpu['other_cores']:.2f} of {os.cpu_count()} cores busy "
                    f"during this scenario ({cpu['ours_cores']:.2f} ours): its figures are noisy"
                )
            outcome.data["log_complaints"] = complaints(fleet, first)
            outcomes.append(outcome)
            document["scenarios"][name] = outcome.to_json()
            write_json(args.output, document)  # so far: a later failure or Ctrl-C keeps these
            for figure in outcome.figures:
                print(f"   {figure.name}: {figure.value_text()} {figure.verdict()}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process", flush=True)
    finally:
        fleet.close()
    document["interrupted"] = interrupted
    document["machine"]["loadavg_at_end"] = os.getloadavg()
    write_json(args.output, document)
    print()
    print(table(outcomes))
    print("\ncommands:")
    print(commands_text(outcomes))
    notes = [f"[{o.scenario}] {note}" for o in outcomes for note in o.notes]
    notes += [
        f"[{o.scenario}] {name}: {c['count']} WARNING/ERROR log lines, first: {c['first'][0]}"
        for o in outcomes
        for name, c in o.data.get("log_complaints", {}).items()
    ]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    print(f"\nresults: {args.output}")
    if args.keep or failed or interrupted:
        print(f"node data and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
