"""`python -m tests.chaos --duration 60 [--seeds N] [--seed S]`: chaos runs against real nodes.

Exits 1 when any check of any run fails, after printing that run's seed (to replay it with --seed)
and the tail of every node's log; the run's data and full logs are kept and their path printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.chaos.run import Report, run_chaos, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults per run")
    parser.add_argument("--seeds", type=int, default=1, help="how many runs, each with a random seed")
    parser.add_argument("--seed", type=int, help="replay this seed (the first run, with --seeds)")
    args = parser.parse_args(argv)
    seeds = [random.SystemRandom().randrange(2**32) for _ in range(args.seeds)]
    if args.seed is not None:
        seeds[0] = args.seed
    reports = [run_one(seed, args.duration) for seed in seeds]
    if len(reports) > 1:
        print(totals(reports))
    if failed := [report.seed for report in reports if not report.passed]:
        print(f"FAILED seeds: {' '.join(map(str, failed))}")
        return 1
    print(f"all {len(seeds)} run(s) passed")
    return 0


def run_one(seed: int, duration: float) -> Report:
    workdir = Path(tempfile.mkdtemp(prefix=f"shareddb-chaos-{seed}-"))
    report = asyncio.run(run_chaos(seed, duration, workdir))
    print(summary(report), flush=True)
    if report.passed:
        shutil.rmtree(workdir)
        return report
    print(f"\nFAILED seed={seed} (replay: python -m tests.chaos --duration {duration:g} --seed {seed})")
    print(report.log_tails)
    print(f"data and full logs kept in {workdir}")
    return report


def totals(reports: list[Report]) -> str:
    """All runs together: operations by outcome, faults by kind, findings, convergence times."""
    outcomes = Counter(op.outcome.value for report in reports for op in report.history)
    faults = Counter(fault.kind for report in reports for fault in report.plan)
    times = sorted(r.convergence for r in reports if r.convergence is not None)
    lost = sum(len(r.findings.lost) for r in reports)
    resurrected = sum(len(r.findings.resurrected) for r in reports)
    unexpected = sum(len(r.findings.unexpected) for r in reports)
    converged = (
        f"p50 {times[len(times) // 2]:.1f}s, max {times[-1]:.1f}s ({len(times)} of {len(reports)} runs)"
        if times
        else "none"
    )
    return "\n".join(
        [
            f"{len(reports)} runs, {sum(r.duration for r in reports):g}s of faults in all",
            "  operations " + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())),
            "  faults " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())),
            f"  lost = {lost}, resurrected = {resurrected}, unexpected = {unexpected}",
            f"  convergence after the heal: {converged}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
