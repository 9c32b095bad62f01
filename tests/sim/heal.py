"""The end of a run: every fault healed, then rounds of pulls until every node holds the same
(liveness), and the final checks against the history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shareddb.record import Record
from shareddb.replication.transport import PeerError
from tests.sim import clients, members
from tests.sim.checks import INVARIANT_2, Violation, greatest
from tests.sim.world import MINUTE, TOMBSTONE_GRACE_MS

if TYPE_CHECKING:
    from tests.sim.simulation import Simulation

HEAL_ROUNDS = 12


async def heal(sim: Simulation) -> int:
    """Heal every fault, then pull in rounds until every node holds the same (liveness).

    Removed nodes are outside the cluster: they come back up and try their pulls (and are
    refused), but only the others must converge.
    """
    world = sim.world
    world.network.cut = set()
    world.network.delayed.clear()
    world.network.drop_request = world.network.drop_reply = 0.0
    world.network.delay = world.network.duplicate = world.network.small_page = 0.0
    world.network.cut_copy = 0.0
    for slot in world.slots:
        slot.registry_cut = False
        if not slot.up:
            await world.start(slot)
        elif slot.replicator is not None:
            # Pages a puller asked for ahead are answers on their way too: each may hold a
            # write no store holds any more (its node was wiped since). Lost like the
            # messages above, they are asked for again, so the end is checked against what
            # the stores hold now.
            slot.replicator.drop_pages_ahead()
    sim.note("heal", "every fault healed, every node up")
    inside = [s for s in world.slots if s.removed is None]
    settled = [s for s in inside if not s.joining]
    for slot in world.slots:
        target = world.by_url.get(slot.join or "")
        candidates = settled or [s for s in inside if s is not slot]
        if not (slot.joining and target is not None and candidates):
            continue
        if target.removed is not None or target.joining:
            # It was told to join through a node that has left since, or that never got in
            # itself: the operator points its --join at a member of the cluster.
            through = sim.rng.choice(candidates)
            slot.join = through.url
            sim.note("heal", f"{slot.name} now joins through {through.name}")
    inside = [s for s in world.slots if s.removed is None]
    for slot in world.slots:  # the reapers run all the time: long before the purges
        await clients.reap(sim, slot)
    states = {s.index: await sim.check(s) for s in inside}
    at_heal = greatest(list(states.values()))
    for round_ in range(1, HEAL_ROUNDS + 1):
        for _ in range(2):  # a heartbeat from everyone, then reads that see everyone
            for slot in world.slots:
                if slot.registry is not None:
                    await world.registry_tick(slot)
        for slot in world.slots:
            if slot.joining:
                await members.join(sim, slot)
        for slot in world.slots:
            node, replicator = slot.running
            for url in sorted(node.membership.pull_urls()):
                try:
                    await replicator.pull_once(url)
                except PeerError as exc:
                    if slot.removed is None:
                        raise Violation(f"{INVARIANT_2}: {slot.name} cannot pull {url}: {exc}") from exc
            await sim.check(slot)
        if round_ > 1:
            # Once every node has had a round to hear of every other: past the grace,
            # purges run everywhere (sooner, the nodes would be cut off for longer than it).
            world.time_ms += TOMBSTONE_GRACE_MS + MINUTE
            for slot in world.slots:  # what expired meanwhile, reaped before the purges
                await clients.reap(sim, slot)
            for slot in world.slots:
                await slot.running[1].purge.run()
        for slot in world.slots:
            held = await sim.check(slot)
            if slot.removed is None:
                states[slot.index] = held
        digests = {s.node.store.digest().digest for s in inside if s.node is not None}
        if len(digests) == 1:
            states = await clients.settle_expiry(sim, inside)
            sim.history.check_final(states, at_heal)
            return round_
    raise Violation(
        f"{INVARIANT_2}: no convergence after {HEAL_ROUNDS} rounds of pulls: {differences(states)}"
    )


def differences(states: dict[int, dict[str, Record]], limit: int = 3) -> str:
    """The first keys the nodes disagree on, with what each node holds."""
    keys = sorted({key for records in states.values() for key in records})
    shown = []
    for key in keys:
        held = {index: records.get(key) for index, records in states.items()}
        if len({(r.version if r else None) for r in held.values()}) > 1:
            shown.append(
                f"{key}: " + ", ".join(f"n{i}={r.version if r else None}" for i, r in held.items())
            )
        if len(shown) == limit:
            break
    return "; ".join(shown)
