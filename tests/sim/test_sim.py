"""The deterministic simulation in CI: 800 seeds, in two processes (one per core), and 100 more
with snapshots restored into running nodes (`--snapshots`).

CI runs one fixed range of seeds (SHAREDDB_SIM_FIRST sets its first), so that a run of CI is
repeatable; `make sim SEEDS=10000` explores many more from a random seed. 800 seeds take both
cores about a minute and a half, a seventh of the whole suite's CPU: CI must finish within 15
minutes on a machine that runs at half its speed on a bad day. A failing seed prints its shrunk
trace and the command that replays it; each one found becomes a scenario in test_scenarios.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = 800
WORKERS = 2


def run_seeds(first: int, count: int, *flags: str) -> None:
    """`python -m tests.sim` over `count` seeds from `first`, in WORKERS processes; each must pass."""
    share = count // WORKERS
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.sim", "--seeds", str(share), "--first", str(start), *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for start in range(first, first + count, share)
    ]
    outputs = [run.communicate()[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        print(output)
        assert run.returncode == 0, output


def test_simulated_cluster_keeps_every_invariant_over_800_seeds() -> None:
    first = int(os.environ.get("SHAREDDB_SIM_FIRST", "500000"))
    print(f"simulation seeds {first}..{first + SEEDS - 1}")
    run_seeds(first, SEEDS)


def test_snapshots_restored_into_running_nodes_keep_every_invariant_over_100_seeds() -> None:
    """`--snapshots`: `shareddb backup` of a member and `shareddb restore` of it, old ones too,
    into running nodes, among every other fault (invariant 4: a restore never undoes a delete)."""
    first = int(os.environ.get("SHAREDDB_SIM_FIRST", "500000")) + SEEDS
    print(f"simulation seeds {first}..{first + 99} with --snapshots")
    run_seeds(first, 100, "--snapshots")
