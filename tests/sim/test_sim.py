"""The deterministic simulation in CI: 1,500 seeds, in two processes (one per core).

`make sim SEEDS=10000` runs many more; a failing seed prints its shrunk trace and the command that
replays it.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = 1500
WORKERS = 2


def test_simulated_cluster_keeps_every_invariant_over_1500_seeds() -> None:
    first = random.randrange(10**9)
    print(f"simulation seeds {first}..{first + SEEDS - 1}")
    share = SEEDS // WORKERS
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.sim", "--seeds", str(share), "--first", str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for start in range(first, first + SEEDS, share)
    ]
    outputs = [run.communicate()[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        print(output)
        assert run.returncode == 0, output
