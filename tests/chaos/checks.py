"""The checks of a chaos run: the recorded operations against what the healed cluster holds.

Each check states the invariant of DESIGN.md it checks, in its words. Only what the clients know is
used: an `unknown` write may or may not have happened, so it is allowed but never required.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from shareddb.record import version_node
from tests.chaos.cluster import Incarnation, Wipe
from tests.chaos.workload import Op, Outcome

INVARIANT_1 = "Invariant 1: no acknowledged write is lost (unless a greater version superseded it)"
INVARIANT_2 = (
    "Invariant 2: all nodes that can reach each other converge to identical digests after faults heal"
)
INVARIANT_3 = (
    "Invariant 3: the final value of a key is the greatest version written; never a value nobody wrote"
)
INVARIANT_4 = "Invariant 4: a deleted key never comes back"
INVARIANT_5 = "Invariant 5: a node's clock and sequence never go backwards, also across restarts"
INVARIANT_6 = "Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node"

Final = dict[str, tuple[str, str]]  # key -> (value, version) of every live key
Wipes = dict[Incarnation, Wipe]


@dataclass(frozen=True, slots=True)
class Check:
    invariant: str
    what: str  # what was checked, with how many cases
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class Findings:
    """What the final state shows: acknowledged writes missing, deletes undone, writes nobody made."""

    lost: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def final_state_findings(history: list[Op], final: Final, wiped: Wipes) -> Findings:
    """`wiped` holds every data dir that was deleted: what only it had acknowledged may be gone
    with it, so those acknowledgements are not required to hold."""
    found = Findings()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    for key in sorted(final.keys() - by_key.keys()):
        found.unexpected.append(f"{key!r} = {final[key]} was never written")
    for key, ops in by_key.items():
        _check_key(key, ops, final.get(key), wiped, found)
    found.lost += _deletes_that_missed_their_write(history)
    return found


def durable(op: Op, wiped: Wipes) -> bool:
    """Whether `op` was acknowledged and what its node held then outlived every wipe."""
    return op.outcome is Outcome.OK and _kept((op.slot, op.incarnation), op.ended, wiped)


def _kept(holder: Incarnation, since: float, wiped: Wipes) -> bool:
    """Whether what `holder` held at time `since` is still somewhere: it was never wiped, or before
    its wipe another node held all of it, and kept it in the same sense."""
    wipe = wiped.get(holder)
    if wipe is None:
        return True
    return since < wipe.copied_until and any(_kept(h, wipe.copied_until, wiped) for h in wipe.holders)


def _check_key(
    key: str, ops: list[Op], live: tuple[str, str] | None, wiped: Wipes, found: Findings
) -> None:
    writes = [op for op in ops if op.value is not None]
    deletes = [op for op in ops if op.value is None]
    acked = [op.version for op in writes if durable(op, wiped) and op.version]
    if live is None:
        # A key may be written again after a delete (a bounded key space): only a delete sent after
        # an acknowledged write can have removed it.
        for write in writes:
            if durable(write, wiped) and not any(
                op.outcome is not Outcome.FAIL and op.started > write.started for op in deletes
            ):
                found.lost.append(
                    f"{key!r} is gone; it was acknowledged at {write.version}, never deleted"
                )
                return
        return
    value, version = live
    writer = next((op for op in writes if op.value == value), None)
    if writer is None or writer.outcome is Outcome.FAIL:
        found.unexpected.append(
            f"{key!r} = {value!r} at {version}: no write of it was sent or it failed"
        )
    elif writer.outcome is Outcome.OK and writer.version != version:
        found.unexpected.append(f"{key!r} = {value!r} at {version}, acknowledged as {writer.version}")
    elif writer.node_id is not None and version_node(version) != writer.node_id:
        found.unexpected.append(f"{key!r} = {value!r} at {version}, written on {writer.node_id}")
    if any(durable(op, wiped) and (op.version or "") > version for op in deletes):
        found.resurrected.append(f"{key!r} = {value!r} at {version} after its delete was acknowledged")
    elif acked and version < max(acked):
        found.lost.append(f"{key!r} holds {version}, older than the acknowledged {max(acked)}")


def _deletes_that_missed_their_write(history: list[Op]) -> list[str]:
    """A node that acknowledged a write and, before any wipe, answers 404 to its delete has lost it:
    nobody else deletes that key."""
    acked = {
        op.key: op
        for op in history
        if op.workload == "delete" and op.value is not None and op.outcome is Outcome.OK
    }
    return [
        f"{op.node_id} acknowledged {op.key!r} at {acked[op.key].version}, then deleting it got 404"
        for op in history
        if op.value is None
        and op.status == 404
        and op.key in acked
        and acked[op.key].incarnation == op.incarnation
    ]


def clock_problems(history: list[Op]) -> list[str]:
    """Writes of new keys take the clock's next value as their version: on each node (between
    wipes, across restarts) one sent after another was acknowledged must get a greater version."""
    runs: dict[tuple[int, int], list[Op]] = defaultdict(list)
    for op in history:
        if op.workload in ("set", "delete") and op.value is not None and op.outcome is Outcome.OK:
            runs[op.slot, op.incarnation].append(op)
    problems = []
    for ops in runs.values():
        finished = iter(sorted(ops, key=lambda op: op.ended))
        latest: Op | None = None
        pending = next(finished, None)
        for op in sorted(ops, key=lambda op: op.started):
            while pending is not None and pending.ended < op.started:
                if latest is None or _version(pending) > _version(latest):
                    latest = pending
                pending = next(finished, None)
            if latest is not None and _version(op) <= _version(latest):
                problems.append(f"{op.describe()} after {latest.describe()}")
    return problems


def answer_problems(history: Iterable[Op], crashed: list[str]) -> list[str]:
    problems = [op.describe() + f": {op.error}" for op in history if op.error]
    return problems + [f"node {node_id} exited without being killed" for node_id in crashed]


def _version(op: Op) -> str:
    assert op.version is not None
    return op.version
