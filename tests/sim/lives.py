"""The steps that take a node's data away: a wipe, a wipe under its old id with its clock turned
back (`rewind`), and a restore from a backup of its store (`restore`), each checked against
invariant 7: no two different values ever carry the same version (docs/design.md, "Identity");
and the steps that put old data back into a running node: a snapshot of a node's data
(`shareddb backup`), restored into any node however old it is (`shareddb restore`), checked
against invariant 4: a deleted key never comes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shareddb.clock import COUNTER_MASK, from_millis, physical
from shareddb.data_dir import CLOCK_FILE
from shareddb.record import version_hlc, version_origin
from shareddb.store.memory import MemoryData
from tests.sim.world import MINUTE, SKEWS, TOMBSTONE_GRACE_MS, Slot, records

if TYPE_CHECKING:
    from tests.sim.simulation import Simulation

REWIND_WINDOW_MS = 10 * MINUTE  # well inside the tombstone grace (an hour)
MAX_BURST = 12


async def wipe(sim: Simulation) -> None:
    """A node loses its disk and comes back empty, under its old id or a new one."""
    slot = sim.pick_up()
    assert slot.node is not None
    old_id = slot.node.id
    # A new explicit id or a minted one. Coming back under the old --node-id is covered by
    # tests/sim/test_scenarios.py; see the README (Adding and removing nodes) for its limit.
    node_id = sim.rng.choice([f"{slot.name}-w{sim.counts['wipe'] + 1}", None])
    sim.history.wiped(slot.index)
    slot.removed = None
    await sim.world.wipe(slot, node_id)
    await sim.world.start(slot)
    assert slot.node is not None
    sim.note("wipe", f"{slot.name} ({old_id}) wiped, back as {slot.node.id}")
    await sim.check(slot)


def minted_instant(sim: Simulation, slot: Slot, origin: str, above: int = 0) -> tuple[int, int]:
    """An instant at which `origin` minted versions recently (above the clock value `above`
    where it did), past the first of that millisecond if any, and how many writes it takes
    to mint them all again from there."""
    # Within the tombstone grace of now: a clock further behind than that is outside what
    # the design covers (a delete purged meanwhile could lose to its writes).
    recent = from_millis(sim.world.clock_of(slot)() - REWIND_WINDOW_MS)
    minted = sorted(
        hlc
        for _, version in sim.history.written
        if version_origin(version) == origin and (hlc := version_hlc(version)) >= recent
    )
    minted = [hlc for hlc in minted if hlc > above] or minted
    # An instant at which it minted versions past the first of that millisecond, if any.
    counted = [hlc for hlc in minted if hlc & COUNTER_MASK] or minted
    if counted:
        instant = physical(sim.rng.choice(counted))
        at_instant = [hlc & COUNTER_MASK for hlc in minted if physical(hlc) == instant]
        burst = min(MAX_BURST, max(at_instant) + 1)
    else:
        instant, burst = sim.world.clock_of(slot)(), 3
    return instant, burst


async def rewind(sim: Simulation) -> None:
    """A node loses its disk and comes back under its old id, its clock standing at an instant
    where its earlier life minted versions, and takes writes before it hears from anyone.

    Its first versions have the timestamps its earlier life gave its first writes at that
    instant (the clock counts up from the same start), so only the incarnation tells them
    apart (invariant 7).
    """
    slot = sim.rng.choice([s for s in sim.world.slots if s.up and s.removed is None])
    node = slot.node
    assert node is not None
    old = node.origin
    instant, burst = minted_instant(sim, slot, old)
    sim.history.wiped(slot.index)
    await sim.world.wipe(slot, node.id)
    slot.frozen_ms = instant
    await sim.world.start(slot)
    sim.note("rewind", f"{slot.name} ({old}) wiped, back as {slot.origin}, clock frozen at {instant}")
    await sim.check(slot)
    for _ in range(burst):
        await sim.client_write(slot, may_crash=False)
    slot.frozen_ms = None
    slot.skew_ms = sim.rng.choice(SKEWS)


def restorable(sim: Simulation) -> list[Slot]:
    """The nodes whose backup an operator may restore: one taken within the tombstone grace. An
    older one can hold keys deleted since, whose tombstones every member may have purged: the
    restore would bring them back (docs/operations.md), so such a node is wiped and rejoins."""
    return [
        s
        for s in sim.world.slots
        if s.up
        and s.removed is None
        and s.backup is not None
        and sim.world.time_ms - s.backup_ms < TOMBSTONE_GRACE_MS
    ]


async def restore(sim: Simulation) -> None:
    """A node is started again on a backup of its data directory taken at one of its earlier
    stops, its clock standing at an instant where its life since minted versions, and takes
    writes before it hears from anyone. The copy lacks those versions and the clock's
    high-water mark above them; it is a new life of the node (invariant 7), so none of them
    is minted again for another value, and the peers send it what the copy lacks."""
    slot = sim.rng.choice(restorable(sim))
    node = slot.node
    assert node is not None
    assert slot.backup is not None
    old = node.origin
    copied = slot.backup.snapshot
    instant, burst = minted_instant(sim, slot, old, copied.tally.clock_high if copied else 0)
    sim.history.wiped(slot.index)
    await sim.world.crash(slot)
    if sim.config.restores_keep_life:
        # The store alone goes back, as the same life (a Redis restored from a dump); the data
        # dir and its clock's bound stay.
        slot.disk = MemoryData(slot.backup.snapshot)
        if (watcher := sim.watchers.get(slot.index)) is not None:
            # Its position may name a write the store lost: the client lists the node
            # again, as docs/operations.md tells it to after a restore.
            watcher.instance = ""
    else:
        # The whole directory comes back, the clock's bound too (with the bound of the life
        # since kept, the clock alone would keep the node from minting those versions again).
        slot.disk = slot.backup.copy()
        if slot.backup_clock is None:
            clock_file(slot).unlink(missing_ok=True)
        else:
            clock_file(slot).write_bytes(slot.backup_clock)
    slot.frozen_ms = instant
    await sim.world.start(slot)
    sim.note(
        "restore",
        f"{slot.name} ({old}) restored from a backup as {slot.origin}, clock frozen at {instant}",
    )
    await sim.check(slot)
    for _ in range(burst):
        await sim.client_write(slot, may_crash=False)
    slot.frozen_ms = None


def back_up(slot: Slot, now_ms: int) -> None:
    """What the operator copies while the node at `slot` is down, at virtual time `now_ms`: its
    store and its clock's bound (`restore` puts them back)."""
    slot.backup, slot.backup_ms = slot.disk.copy(), now_ms
    path = clock_file(slot)
    slot.backup_clock = path.read_bytes() if path.exists() else None


def clock_file(slot: Slot) -> Path:
    return slot.data / CLOCK_FILE


SNAPSHOTS_KEPT = 6


def snapshotable(sim: Simulation) -> list[Slot]:
    return [s for s in sim.world.slots if s.up and s.removed is None]


async def snapshot(sim: Simulation) -> None:
    """`shareddb backup` of a member: every key it holds, values and tombstones, as committed.
    (Not of a node that was removed: what it wrote since is nobody's to bring back, invariant 8.)"""
    slot = sim.rng.choice(snapshotable(sim))
    assert slot.node is not None
    held = list((await records(slot.node)).values())
    # The first one is kept, so that some restores bring back data older than the grace.
    taken = [*sim.snapshots, (sim.world.time_ms, held)]
    sim.snapshots = taken[:1] + taken[1:][-(SNAPSHOTS_KEPT - 1) :]
    sim.note("snapshot", f"{slot.name} snapshot of {len(held)} records")


async def restore_snapshot(sim: Simulation) -> None:
    """`shareddb restore` of one of the snapshots into a node, whatever its age: each record is
    merged as a peer's is, and none may bring back a key deleted since (`PeerBatch.restored`)."""
    slot = sim.pick_up()
    node = slot.node
    assert node is not None
    # The oldest one half the time: the restore most likely to bring back a purged delete.
    taken_ms, held = sim.snapshots[0] if sim.rng.random() < 0.5 else sim.rng.choice(sim.snapshots)
    won, _ = await node.merge(held)
    sim.note(
        "restore-snapshot",
        f"{slot.name} restores a snapshot {sim.world.time_ms - taken_ms} ms old: {won} of "
        f"{len(held)} records won",
    )
    await sim.check(slot)
