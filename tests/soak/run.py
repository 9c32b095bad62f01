"""One soak run: three nodes, one of them on a skewed wall clock, a gentle mixed load, kill -9 and
restart on a schedule, then heal, check the invariants as a chaos run does, and check memory.

n1 is never killed: its one process spans the run, so its memory trend is the meaningful one. The
bounded key space stops the data set growing, so flat memory is what a node without leaks shows.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.checks import Check
from tests.chaos.cluster import ChaosCluster
from tests.chaos.faults import GAP, Fault
from tests.chaos.run import Report, run_schedule, summary
from tests.chaos.workload import Load, Outcome
from tests.harness import FAKETIME, skewed_clock_env
from tests.soak.rss import EDGE, FLOOR_KB, GROWTH, Memory

NODES = 3
KILLED = (1, 2)  # the slots the schedule kills; slot 0 (n1) runs throughout
SKEWED = 2  # the slot whose wall clock is off for the whole run, across its restarts
SKEWS = (20, -20)  # seconds: within the bound past which peers refuse to be dragged along
KILL_EVERY = (8.0, 20.0)  # seconds between two kills
DOWN = (1.0, 5.0)  # seconds a killed node stays down
LOAD = Load(keyspace=300, w2_share=0.1, pause=0.05)
INVARIANT_MEMORY = "Soak: a node's resident memory stays flat under a steady load"


@dataclass(slots=True)
class SoakReport:
    chaos: Report
    skew: int
    memory: Memory
    memory_check: Check | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.chaos.passed and self.memory_check is not None and self.memory_check.passed


def warmup(duration: float) -> float:
    """Seconds before memory is measured: the key space fills and the caches settle."""
    return max(20.0, duration * 0.1)


def kill_plan(rng: random.Random, duration: float) -> list[Fault]:
    """kill -9 of n2 or n3 in turn, each down a few seconds; the last restart is before the end."""
    plan: list[Fault] = []
    at = rng.uniform(*GAP) + KILL_EVERY[0]
    while at < duration - DOWN[1]:
        plan.append(Fault("kill", at, rng.uniform(*DOWN), KILLED[len(plan) % len(KILLED)]))
        at += rng.uniform(*KILL_EVERY)
    return plan


async def run_soak(seed: int, duration: float, workdir: Path) -> SoakReport:
    rng = random.Random(seed)
    chaos = Report(seed, duration, kill_plan(rng, duration), nodes=NODES)
    skew = rng.choice(SKEWS) if FAKETIME is not None else 0
    cluster = ChaosCluster(workdir, NODES)
    if skew:
        cluster.slots[SKEWED].node.env = skewed_clock_env(skew)  # kept across its restarts
    memory = Memory(time.monotonic(), warmup(duration))
    report = SoakReport(chaos, skew, memory)
    if not skew:
        report.notes.append("libfaketime is not installed (Debian package faketime): no skew")
    print(
        f"soak seed={seed}: {duration:g}s on {NODES} nodes, {len(chaos.plan)} kills, "
        f"n{SKEWED + 1} clock {skew:+d}s",
        flush=True,
    )
    await run_schedule(cluster, chaos, LOAD, [memory.watch])
    spanned, grew = memory.problems()
    what = (
        f"{spanned} processes alive through the window after a {memory.warmup:g}s warm-up: end "
        f"<= max(start x {GROWTH:g}, start + {FLOOR_KB // 1024} MB)"
    )
    report.memory_check = Check(INVARIANT_MEMORY, what, grew)
    return report


def soak_summary(report: SoakReport) -> str:
    """The chaos summary, then one row per node: kills, memory at the start and end."""
    chaos = report.chaos
    lines = [summary(chaos), f"  clock of n{SKEWED + 1}: {report.skew:+d}s", *report.notes]
    waited = Counter(op.outcome.value for op in chaos.history if op.w2)
    timed_out = sum(op.w2 and op.status == 504 for op in chaos.history)
    lines.append(
        "  writes with ?w=2: "
        + "  ".join(f"{outcome.value} {waited[outcome.value]}" for outcome in Outcome)
        + f" ({timed_out} answered 504)"
    )
    kills = {slot: sum(f.victim == slot for f in chaos.plan) for slot in range(NODES)}
    lines.append(
        f"  {'node':<5} {'restarts':>8} {'RSS start':>10} {'RSS end':>10}   "
        f"(MB; medians of the first and last {EDGE:.0%} after the warm-up)"
    )
    for slot, (first, last) in report.memory.by_node().items():
        lines.append(f"  n{slot + 1:<4} {kills[slot]:>8} {_mb(first):>10} {_mb(last):>10}")
    total = sum(kills.values())
    lines.append(f"  restarts {total}, memory samples {len(report.memory.samples)}")
    check = report.memory_check
    if check is not None:
        lines.append(f"  {'PASS' if check.passed else 'FAIL'} {check.invariant} ({check.what})")
        lines += [f"       {problem}" for problem in check.problems]
    return "\n".join(lines)


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"
