"""The fault schedule: a plan drawn from the seed, then carried out against the running cluster.

The plan is made whole before the run (kinds, victims, shapes, start times and lengths), so one seed
always gives the same schedule. It cycles through every kind of fault in a shuffled order. Faults
may overlap, but at most one partition at a time, one fault per node, and at most two nodes faulted
at once. Every fault is undone when its length is up.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass

from tests.chaos.cluster import ChaosCluster
from tests.harness import FAKETIME, Link

KINDS = ("partition", "kill", "pause", "skew", "wipe")
LENGTHS = {  # seconds a fault lasts (for kill and wipe: how long the node stays down)
    "partition": (3.0, 10.0),
    "kill": (1.0, 6.0),
    "pause": (1.0, 6.0),
    "skew": (3.0, 10.0),
    "wipe": (1.0, 5.0),
}
MIN_LENGTH = 1.0
GAP = (0.5, 3.0)  # seconds between the starts of two faults
SKEWS = (300, 90, 20, -20, -120)  # seconds; past 60 s ahead, peers bound how far it drags them
MAX_NODES_FAULTED = 2
SETTLE = 3.0  # seconds a node is left alone after its fault, to come back before the next one
SHAPES = ("isolate", "split", "one-way", "bridge")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    at: float  # seconds after the schedule starts
    length: float
    victim: int | None = None  # the slot of a node fault
    shape: str = ""  # of a partition
    cut: frozenset[Link] = frozenset()  # (i, j): node i cannot reach node j
    blackhole: bool = False  # a cut link holds new connections instead of resetting them
    skew: int = 0  # seconds
    new_id: bool = False  # a wiped node comes back under a new id
    join_via: int | None = None  # a wiped node comes back through --join of this slot, else --peers

    def describe(self) -> str:
        if self.kind == "partition":
            how = "blackhole" if self.blackhole else "reset"
            return f"partition {self.shape} ({how}): cut {_links(self.cut)}"
        name = _name(self.victim)
        if self.kind == "skew":
            return f"skew {name} {self.skew:+d}s"
        if self.kind == "wipe":
            rejoin = "--peers" if self.join_via is None else f"--join {_name(self.join_via)}"
            identity = "an id it makes up" if self.new_id else "its --node-id"
            return f"wipe {name}, back with {identity} via {rejoin}"
        return f"{self.kind} {name}"


def fault_kinds() -> tuple[str, ...]:
    """Every kind of fault this machine can inject: clock skew needs libfaketime (CI must have it)."""
    if FAKETIME is not None:
        return KINDS
    if os.environ.get("CI") == "true":
        raise RuntimeError("libfaketime is missing: CI must install the Debian package faketime")
    print("note: libfaketime is not installed (Debian package faketime): no clock-skew faults")
    return tuple(kind for kind in KINDS if kind != "skew")


def make_plan(rng: random.Random, duration: float, size: int, kinds: tuple[str, ...]) -> list[Fault]:
    """Faults cycling through `kinds` for `duration` seconds; the last ones are cut short by its end,
    so the heal after it starts from a cluster under faults."""
    plan: list[Fault] = []
    cycle: list[str] = []
    at = rng.uniform(*GAP)
    while at < duration - MIN_LENGTH:
        if not cycle:
            cycle = list(kinds)
            rng.shuffle(cycle)
        kind = cycle.pop()
        length = min(rng.uniform(*LENGTHS[kind]), duration - at)
        fault = _draw(rng, kind, at, length, size, plan)
        if fault is None:
            cycle.append(kind)  # nothing free to fault now: try it again at the next start
        else:
            plan.append(fault)
        at += rng.uniform(*GAP)
    return plan


def _draw(
    rng: random.Random, kind: str, at: float, length: float, size: int, plan: list[Fault]
) -> Fault | None:
    """A fault of `kind` from `at` that keeps the plan's rules, or None when none can."""
    active = [f for f in plan if f.at + f.length + SETTLE > at]
    if kind == "partition":
        if any(f.kind == "partition" and f.at + f.length > at for f in active):
            return None
        shape = rng.choice(SHAPES)
        return Fault(
            kind, at, length, shape=shape, cut=_cut(rng, shape, size), blackhole=rng.random() < 0.5
        )
    busy = {f.victim for f in active if f.victim is not None}
    free = [slot for slot in range(size) if slot not in busy]
    if len(busy) >= MAX_NODES_FAULTED or not free:
        return None
    victim = rng.choice(free)
    if kind == "skew":
        return Fault(kind, at, length, victim, skew=rng.choice(SKEWS))
    if kind == "wipe":
        others = [slot for slot in range(size) if slot != victim]
        join_via = rng.choice(others) if rng.random() < 0.5 else None
        return Fault(kind, at, length, victim, new_id=rng.random() < 0.5, join_via=join_via)
    return Fault(kind, at, length, victim)


def _cut(rng: random.Random, shape: str, size: int) -> frozenset[Link]:
    """The links a partition of `shape` cuts.

    isolate: one node alone; split: a minority and a majority; one-way: a group hears nothing from
    the others, which still hear it; bridge: two groups that only one node between them can reach.
    """
    order = list(range(size))
    rng.shuffle(order)
    if shape == "isolate":
        return _between(order[:1], order[1:]) | _between(order[1:], order[:1])
    if shape == "split":
        minority, majority = order[: size // 2], order[size // 2 :]
        return _between(minority, majority) | _between(majority, minority)
    if shape == "one-way":
        deaf, heard = order[: rng.randint(1, size - 1)], order
        return _between(deaf, [slot for slot in heard if slot not in deaf])
    side = (size - 1) // 2
    left, right = order[1 : 1 + side], order[1 + side :]  # order[0] is the bridge
    return _between(left, right) | _between(right, left)


def _between(sources: list[int], targets: list[int]) -> frozenset[Link]:
    return frozenset((source, target) for source in sources for target in targets)


async def run_plan(cluster: ChaosCluster, plan: list[Fault]) -> None:
    """Carry out the plan on time, printing each fault as it starts."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def carry_out(fault: Fault) -> None:
        await asyncio.sleep(max(0.0, start + fault.at - loop.time()))
        print(f"  {loop.time() - start:6.1f}s  {fault.describe()} for {fault.length:.1f}s", flush=True)
        await _apply(cluster, fault)
        await asyncio.sleep(max(0.0, start + fault.at + fault.length - loop.time()))
        await _undo(cluster, fault)

    await asyncio.gather(*(carry_out(fault) for fault in plan))


async def _apply(cluster: ChaosCluster, fault: Fault) -> None:
    victim = fault.victim
    if fault.kind == "partition":
        cluster.links.partition(fault.cut, fault.blackhole)
        return
    assert victim is not None
    if fault.kind == "kill":
        await cluster.kill(victim)
    elif fault.kind == "pause":
        await cluster.pause(victim)
    elif fault.kind == "skew":
        await cluster.set_skew(victim, fault.skew)
    else:
        wipe = await cluster.wipe(victim, fault.new_id, fault.join_via)
        held = ",".join(_name(slot) for slot, _ in sorted(wipe.holders)) or "no other node"
        print(f"           everything {_name(victim)} had acknowledged was on {held}", flush=True)


async def _undo(cluster: ChaosCluster, fault: Fault) -> None:
    victim = fault.victim
    if fault.kind == "partition":
        cluster.links.heal()
        return
    assert victim is not None
    if fault.kind in ("kill", "wipe"):
        await cluster.revive(victim)
    elif fault.kind == "pause":
        await cluster.resume(victim)
    else:
        await cluster.set_skew(victim, 0)


def _name(slot: int | None) -> str:
    return f"n{slot + 1}" if slot is not None else "?"


def _links(cut: frozenset[Link]) -> str:
    """ "n1 -/-> n2,n3; ...": who cannot reach whom."""
    sources = sorted({source for source, _ in cut})
    return "; ".join(
        f"{_name(s)} -/-> " + ",".join(_name(t) for s2, t in sorted(cut) if s2 == s) for s in sources
    )
