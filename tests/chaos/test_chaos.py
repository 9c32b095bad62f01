"""A short chaos run (see tests/chaos/run.py) as a test: five real nodes under partitions, kill -9,
SIGSTOP, clock skew and wiped nodes, with clients on every node.

Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
Invariant 2: all nodes that can reach each other converge to identical digests after faults heal.
Invariant 3: the final value of a key is the greatest version written; never a value nobody wrote.
Invariant 4: a deleted key never comes back.
Invariant 5: a node's clock and sequence never go backwards, also across restarts.
Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node.

It prints its seed; replay it with SHAREDDB_TEST_SEED=N (or `make chaos SEED=N`).
SHAREDDB_CHAOS_DURATION sets the seconds of faults (default 45).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.chaos.run import run_chaos, summary
from tests.cluster.replication_helpers import seeded_rng

DURATION = float(os.environ.get("SHAREDDB_CHAOS_DURATION", "45"))


@pytest.mark.cluster
def test_cluster_under_a_random_fault_schedule_keeps_every_invariant(tmp_path: Path) -> None:
    seed, _ = seeded_rng()
    report = asyncio.run(run_chaos(seed, DURATION, tmp_path))
    print(summary(report))
    if not report.passed:
        print(report.log_tails)
    assert report.passed, f"chaos run with seed={seed} failed:\n{summary(report)}"
