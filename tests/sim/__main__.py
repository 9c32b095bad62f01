"""`python -m tests.sim`: run many seeds, or replay one with its trace."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from collections import Counter

from tests.sim.runner import describe, run_seed, shrink
from tests.sim.simulation import ALL_KINDS, Config


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds to run")
    parser.add_argument("--seed", type=int, help="run this one seed and print its trace")
    parser.add_argument("--first", type=int, help="first seed (default: random)")
    parser.add_argument("--steps", type=int, default=Config.steps, help="steps per run")
    parser.add_argument("--disable", default="", help=f"comma-separated kinds of {ALL_KINDS}")
    parser.add_argument(
        "--restores-keep-life",
        action="store_true",
        help="a restore puts the store back as the same life, the data dir kept (a Redis dump)",
    )
    parser.add_argument(
        "--snapshots",
        action="store_true",
        help="snapshots of a node (shareddb backup) are taken and restored into nodes, of any age",
    )
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # skew warnings, refusals and the like: the trace tells the story
    disabled = frozenset(k for k in args.disable.split(",") if k)
    if unknown := disabled - set(ALL_KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    config = Config(
        steps=args.steps,
        disabled=disabled,
        restores_keep_life=args.restores_keep_life,
        snapshots=args.snapshots,
    )
    return asyncio.run(_replay(args.seed, config) if args.seed is not None else _many(args, config))


async def _replay(seed: int, config: Config) -> int:
    result = await run_seed(seed, config)
    print("\n".join(result.trace))
    print(f"seed {seed}: {result.error or 'ok'} (heal rounds {result.heal_rounds})")
    return 1 if result.error else 0


async def _many(args: argparse.Namespace, config: Config) -> int:
    first = args.first if args.first is not None else random.randrange(10**9)
    started = time.monotonic()
    steps: Counter[str] = Counter()
    rounds: list[int] = []
    for seed in range(first, first + args.seeds):
        result = await run_seed(seed, config)
        if result.error:
            print(f"seed {seed} failed; shrinking...", flush=True)
            small, small_config = await shrink(result, config)
            print(describe(small, small_config))
            return 1
        steps.update(result.counts)
        rounds.append(result.heal_rounds)
    rounds.sort()
    print(
        f"{args.seeds} seeds ({first}..{first + args.seeds - 1}) passed in "
        f"{time.monotonic() - started:.0f} s; convergence after healing: "
        f"p50 {rounds[len(rounds) // 2]} rounds, max {rounds[-1]}"
    )
    print("steps: " + ", ".join(f"{kind} {n}" for kind, n in steps.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
