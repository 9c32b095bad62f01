"""Running seeds, and shrinking a failing one to a shorter run that still fails."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from tests.sim.simulation import OPTIONAL_KINDS, Config, Result, Simulation

# Stores on tmpfs where there is one: the simulation is about logic, not about disk speed.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


async def run_seed(seed: int, config: Config | None = None) -> Result:
    with tempfile.TemporaryDirectory(prefix="shareddb-sim-", dir=SCRATCH) as root:
        return await Simulation(seed, Path(root), config or Config()).run()


async def shrink(result: Result, config: Config) -> tuple[Result, Config]:
    """A run of the same seed that still fails with fewer steps and fewer kinds of fault.

    The first `n` steps of a seed are the same whatever the total, so the shortest failing length
    is found by bisection; then each optional kind of fault is left out where the run still fails.
    """
    # It failed by step `result.steps` (a failure at the end fails after every step).
    best, best_config = result, replace(config, steps=result.steps)
    low, high = 0, result.steps
    while low + 1 < high:
        middle = (low + high) // 2
        trial = replace(best_config, steps=middle)
        attempt = await run_seed(result.seed, trial)
        if attempt.error:
            best, best_config, high = attempt, trial, middle
        else:
            low = middle
    for kind in OPTIONAL_KINDS:
        trial = replace(best_config, disabled=best_config.disabled | {kind})
        attempt = await run_seed(result.seed, trial)
        if attempt.error:
            best, best_config = attempt, trial
    return best, best_config


def describe(result: Result, config: Config, tail: int = 80) -> str:
    lines = [
        f"seed {result.seed} FAILED after {result.steps} steps ({result.nodes} nodes): {result.error}",
        f"replay: make sim SEED={result.seed} ARGS='--steps {config.steps}"
        + (f" --disable {','.join(sorted(config.disabled))}" if config.disabled else "")
        + (" --restores-keep-life" if config.restores_keep_life else "")
        + (" --snapshots" if config.snapshots else "")
        + "'",
        f"trace (last {min(tail, len(result.trace))} of {len(result.trace)} steps):",
        *result.trace[-tail:],
    ]
    return "\n".join(lines)
