"""`python -m tests.soak --duration 3600 [--seed S]`: one long run of three real nodes under load.

Exits 1 when any check fails, after printing the seed (replay with --seed) and the tail of every
node's log; the run's data and full logs are then kept and their path printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.soak.run import run_soak, soak_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load and kills")
    parser.add_argument("--seed", type=int, help="replay this seed")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    workdir = Path(tempfile.mkdtemp(prefix=f"shareddb-soak-{seed}-"))
    report = asyncio.run(run_soak(seed, args.duration, workdir))
    print(soak_summary(report), flush=True)
    if report.passed:
        shutil.rmtree(workdir)
        print("soak passed")
        return 0
    print(f"\nFAILED seed={seed} (replay: make soak DURATION={args.duration:g} SEED={seed})")
    print(report.chaos.log_tails)
    print(f"data and full logs kept in {workdir}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
