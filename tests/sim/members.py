"""The steps of membership: a node leaves or is removed, a removed node rejoins, a node is added
and joins, the member list is saved, and a registry heartbeat goes round (docs/design.md,
"Membership and removal").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shareddb.replication.transport import PeerError
from tests.sim.world import Slot

if TYPE_CHECKING:
    from tests.sim.simulation import Simulation


def can_remove(slot: Slot) -> bool:
    """The node at `slot` is up, in the cluster, and knows it is."""
    node = slot.node
    return node is not None and slot.removed is None and not node.membership.self_entry.left


def removal_candidates(sim: Simulation) -> list[tuple[Slot, Slot]]:
    """(remover, removed): the remover lists the other's current incarnation as active, and
    at least one more member: an operator removes a node through a member that stays in
    touch with the cluster, not through one whose only link is the node it removes."""
    pairs = []
    for remover in sim.world.slots:
        if not can_remove(remover):
            continue
        assert remover.node is not None
        if len(remover.node.membership.active()) < 2:
            continue
        for other in sim.world.slots:
            if other is remover or other.removed is not None or not other.origin:
                continue
            node_id, _, incarnation = other.origin.partition("~")
            member = remover.node.membership.members.get(node_id)
            if member is not None and not member.left and member.incarnation == incarnation:
                pairs.append((remover, other))
    return pairs


def removed(sim: Simulation, slot: Slot) -> None:
    slot.removed = slot.origin
    sim.history.left_cluster(slot.index, slot.origin)


async def remove(sim: Simulation) -> None:
    """An operator removes a member through another node (`shareddb leave --node ID`)."""
    remover, other = sim.rng.choice(removal_candidates(sim))
    node = remover.node
    assert node is not None
    node_id = other.origin.partition("~")[0]
    assert await node.leave(node_id)
    removed(sim, other)
    sim.note(
        "remove",
        f"{remover.name} removes {other.origin} ({other.name}, {'up' if other.up else 'down'})",
    )
    await sim.check(remover)


async def leave(sim: Simulation) -> None:
    """A node leaves the cluster itself (`shareddb leave --url URL`)."""
    slot = sim.rng.choice([s for s in sim.world.slots if can_remove(s)])
    node = slot.node
    assert node is not None
    await node.leave(node.id)
    removed(sim, slot)
    sim.note("leave", f"{slot.name} ({slot.origin}) leaves the cluster")
    await sim.check(slot)


async def rejoin(sim: Simulation) -> None:
    """A removed node's disk is wiped and it joins again through a member, under its old id
    or a new one: a new incarnation, accepted again."""
    slot = sim.rng.choice([s for s in sim.world.slots if s.removed is not None])
    through = sim.rng.choice([s for s in sim.world.slots if s.up and s.removed is None])
    node_id = slot.origin.partition("~")[0]
    node_id = sim.rng.choice([node_id, f"{slot.name}-j{sim.counts['rejoin'] + 1}"])
    sim.history.wiped(slot.index)
    slot.removed = None
    await sim.world.wipe(slot, node_id)
    slot.peers, slot.join = (), through.url
    await sim.world.start(slot)
    sim.note("rejoin", f"{slot.name} wiped, joins through {through.name} as {slot.origin}")
    await sim.check(slot)


async def registry(sim: Simulation) -> None:
    """One heartbeat and read of one node's registry loop."""
    slot = sim.rng.choice([s for s in sim.world.slots if s.registry is not None])
    outcome = await sim.world.registry_tick(slot)
    node = slot.node
    assert node is not None
    expired = sorted(m.id for m in node.membership.members.values() if m.registry_expired)
    sim.note("registry", f"{slot.name} registry round: {outcome}; expired {expired}")


async def save_members(sim: Simulation) -> None:
    slot = sim.rng.choice([s for s in sim.world.slots if s.up and s.members_dirty])
    assert slot.replicator is not None
    slot.members_dirty = False
    await slot.replicator.persist_members()
    sim.note("save-members", f"{slot.name} saved its member list")


async def join(sim: Simulation, slot: Slot | None = None) -> None:
    """A node started with --join announces itself (the real loop retries until answered)."""
    if slot is None:
        slot = sim.rng.choice([s for s in sim.world.slots if s.up and s.joining])
    node, replicator = slot.running
    assert slot.join is not None
    try:
        entries = await replicator.transport.join(slot.join, node.membership.entries())
    except PeerError as exc:
        sim.note("join", f"{slot.name} join failed: {exc}")
        return
    node.membership.merge(entries)
    slot.joining = False
    sim.note("join", f"{slot.name} joined through {slot.join}")


async def add_node(sim: Simulation) -> None:
    """A new, empty node joins through a random member."""
    through = sim.rng.choice([s for s in sim.world.slots if s.removed is None])
    slot = sim.world.add_slot((), join=through.url)
    await sim.world.start(slot)
    sim.note("add-node", f"{slot.name} starts, joining through {through.name}")
