"""`python -m tests.crash --cycles N [--seed S]`: the crash loop from the command line (`make crash`).

Prints the seed first, so any run can be replayed, then the summary; exits 1 if a promise broke.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

from tests.crash.loop import CLIENTS, CrashLoop, scratch_root


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash", description=__doc__)
    parser.add_argument("--cycles", type=int, default=1000, help="kill -9 and restart this many times")
    parser.add_argument("--seed", type=int, default=None, help="replay the fault plan of one run")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent writers")
    parser.add_argument("--data", type=Path, default=None, help="an empty dir for the node, kept")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed={seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="shareddb-crash-", dir=scratch_root()) as tmp:
        root = args.data or Path(tmp)
        loop = CrashLoop(root, seed, args.clients, progress_every=100)
        report = asyncio.run(loop.run(args.cycles))
    for message in report.messages:
        print(message)
    print(report.summary())
    return 0 if report.clean and report.cycles == args.cycles else 1


if __name__ == "__main__":
    sys.exit(main())
