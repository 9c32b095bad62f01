"""One chaos run: start the cluster, run the clients under the seed's fault plan, heal, time the
convergence, check, and print one summary."""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.checks import (
    INVARIANT_1,
    INVARIANT_2,
    INVARIANT_3,
    INVARIANT_4,
    INVARIANT_5,
    INVARIANT_6,
    Check,
    Final,
    Findings,
    Wipes,
    answer_problems,
    clock_problems,
    durable,
    final_state_findings,
)
from tests.chaos.cluster import ChaosCluster
from tests.chaos.faults import Fault, fault_kinds, make_plan, run_plan
from tests.chaos.workload import CHAOS_LOAD, WORKLOADS, Client, Load, Op, Outcome

NODES = 5
CONVERGE_TIMEOUT = 60.0


@dataclass(slots=True)
class Report:
    seed: int
    duration: float
    plan: list[Fault]
    nodes: int = NODES
    history: list[Op] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    checks: list[Check] = field(default_factory=list)
    convergence: float | None = None  # seconds from the heal until every node agreed
    log_tails: str = ""
    cut_connections: Counter[str] = field(default_factory=Counter)  # what the proxies did
    error: str | None = None  # the run itself broke (a node would not start, ...)

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(check.passed for check in self.checks)


async def run_chaos(seed: int, duration: float, workdir: Path) -> Report:
    """Run the schedule of `seed` for `duration` seconds on a fresh cluster under `workdir`."""
    rng = random.Random(seed)
    report = Report(seed, duration, make_plan(rng, duration, NODES, fault_kinds()))
    print(f"chaos seed={seed}: {len(report.plan)} faults in {duration:g}s on {NODES} nodes", flush=True)
    await run_schedule(ChaosCluster(workdir, NODES), report)
    return report


Watcher = Callable[[ChaosCluster, asyncio.Event], Coroutine[Any, Any, None]]


async def run_schedule(
    cluster: ChaosCluster, report: Report, load: Load = CHAOS_LOAD, watchers: Sequence[Watcher] = ()
) -> None:
    """Start `cluster`, run a client per node and `watchers` while the report's plan is carried out,
    heal, and check; the cluster is closed when it returns. `watchers` run until the plan is done."""
    try:
        await cluster.start()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                Client(slot, random.Random(f"{report.seed}/{slot.index}"), report.history, load).run(
                    stop
                )
            )
            for slot in cluster.slots
        ]
        tasks += [asyncio.create_task(watch(cluster, stop)) for watch in watchers]
        try:
            await run_plan(cluster, report.plan)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        await _heal_and_check(cluster, report)
    except Exception:
        report.error = traceback.format_exc()
    finally:
        report.log_tails = cluster.log_tails()
        report.cut_connections = cluster.links.counts
        await cluster.close()


async def _heal_and_check(cluster: ChaosCluster, report: Report) -> None:
    await cluster.heal()
    crashed = cluster.crashed()
    answers = f"{sum(op.status != 0 for op in report.history)} answers and every node process"
    report.checks.append(Check(INVARIANT_6, answers, answer_problems(report.history, crashed)))
    if crashed:
        return
    healed = time.monotonic()
    try:
        await cluster.wait_converged(CONVERGE_TIMEOUT)
    except AssertionError:
        failed = [f"no agreement in {CONVERGE_TIMEOUT:g}s"]
        report.checks.append(Check(INVARIANT_2, "digests after the heal", failed))
        return
    report.convergence = time.monotonic() - healed
    size = len(cluster.slots)
    agreed = f"all {size} nodes answered the same digest and listing after {report.convergence:.1f}s"
    report.checks.append(Check(INVARIANT_2, agreed))
    final = (await cluster.listings())[0]
    report.checks += _state_checks(report, final, cluster.wipes)


def _state_checks(report: Report, final: Final, wiped: Wipes) -> list[Check]:
    """The checks of the final state and of the versions against the recorded operations."""
    history = report.history
    report.findings = found = final_state_findings(history, final, wiped)
    ok = [op for op in history if op.outcome is Outcome.OK]
    kept = [op for op in ok if durable(op, wiped)]
    writes = f"{sum(op.value is not None for op in kept)} acknowledged writes"
    if len(kept) < len(ok):
        writes += f"; not {len(ok) - len(kept)} acknowledged only by data dirs wiped later"
    checks = [
        Check(INVARIANT_1, writes, found.lost),
        Check(
            INVARIANT_3, f"{len(final)} live keys against {len(history)} operations", found.unexpected
        ),
        Check(
            INVARIANT_4,
            f"{sum(op.value is None for op in kept)} acknowledged deletes",
            found.resurrected,
        ),
        Check(
            INVARIANT_5,
            "versions of new keys on each node, in acknowledgement order",
            clock_problems(history),
        ),
    ]
    idle = [name for name in WORKLOADS if not any(op.workload == name for op in kept)]
    if idle:
        checks.append(Check(INVARIANT_1, "every workload", [f"nothing acknowledged in {idle}"]))
    return checks


def summary(report: Report) -> str:
    """The one summary of a run: seed, operations, faults, findings, convergence, checks."""
    lines = [f"seed {report.seed}: {report.duration:g}s of faults on {report.nodes} nodes"]
    for name in WORKLOADS:
        outcomes = Counter(op.outcome for op in report.history if op.workload == name)
        counts = "  ".join(f"{outcome.value} {outcomes[outcome]:>5}" for outcome in Outcome)
        lines.append(f"  operations {name:<7} {counts}")
    kinds = Counter(fault.kind for fault in report.plan)
    shapes = Counter(fault.shape for fault in report.plan if fault.kind == "partition")
    faults = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    if shapes:
        faults += " (partitions: " + ", ".join(f"{s} {n}" for s, n in sorted(shapes.items())) + ")"
    lines.append(f"  faults {faults or 'none'}")
    cut = report.cut_connections
    lines.append(
        f"  peer connections on cut links: {cut['reset']} reset, {cut['held']} blackholed, "
        f"{cut['dropped']} open ones dropped"
    )
    found = report.findings
    convergence = "none" if report.convergence is None else f"{report.convergence:.1f}s"
    lines.append(
        f"  lost = {len(found.lost)}, resurrected = {len(found.resurrected)}, "
        f"unexpected = {len(found.unexpected)}, convergence time = {convergence}"
    )
    for check in report.checks:
        lines.append(f"  {'PASS' if check.passed else 'FAIL'} {check.invariant} ({check.what})")
        lines += [f"       {problem}" for problem in check.problems[:10]]
        if len(check.problems) > 10:
            lines.append(f"       ... and {len(check.problems) - 10} more")
    if report.error:
        lines.append(f"  ERROR the run broke off:\n{report.error}")
    return "\n".join(lines)
