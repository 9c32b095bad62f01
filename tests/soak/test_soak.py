"""A two-minute soak (see tests/soak/run.py) as a test: three real nodes, one on a skewed clock, a
mixed load (seed API and v1, overwrites, deletes, some `?w=2`), kill -9 and restarts on a schedule.

Invariant 1: no acknowledged write is lost (unless a greater version superseded it).
Invariant 2: all nodes that can reach each other converge to identical digests after faults heal.
Invariant 4: a deleted key never comes back.
Also: the resident memory of the node that is never killed stays flat after the warm-up.

It prints its seed; replay it with SHAREDDB_TEST_SEED=N (or `make soak SEED=N`).
SHAREDDB_SOAK_DURATION sets the seconds (default 120, as CI runs it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.cluster.replication_helpers import seeded_rng
from tests.soak.run import run_soak, soak_summary

DURATION = float(os.environ.get("SHAREDDB_SOAK_DURATION", "120"))


@pytest.mark.cluster
def test_cluster_under_steady_load_and_restarts_keeps_its_data_and_flat_memory(
    tmp_path: Path,
) -> None:
    seed, _ = seeded_rng()
    report = asyncio.run(run_soak(seed, DURATION, tmp_path))
    print(soak_summary(report))
    if not report.passed:
        print(report.chaos.log_tails)
    assert report.passed, f"soak with seed={seed} failed:\n{soak_summary(report)}"
