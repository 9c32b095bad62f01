"""Bugs the simulation found, each replayed as a fixed scenario on the simulation's real nodes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from shareddb.replication.transport import PeerError
from tests.sim.runner import run_seed
from tests.sim.simulation import Config
from tests.sim.world import Slot, World, records

MINUTE = 60_000


@asynccontextmanager
async def cluster(root: Path, count: int, ids: list[str] | None = None) -> AsyncIterator[World]:
    """`count` started nodes (with these --node-ids, else minted ones) on a network that loses
    nothing, all listing each other as peers."""
    world = World(root, random.Random(0))
    world.network.drop_request = world.network.drop_reply = 0.0
    world.network.delay = world.network.duplicate = 0.0
    urls = tuple(f"http://sim-n{i}:7000" for i in range(count))
    try:
        for index in range(count):
            slot = world.add_slot(urls)
            slot.node_id = ids[index] if ids else None
            await world.start(slot)
        yield world
    finally:
        await world.shutdown()


async def pull_all(slot: Slot) -> None:
    node, replicator = slot.running
    for url in sorted(node.membership.pull_urls()):
        try:
            await replicator.pull_once(url)
        except PeerError as exc:
            raise AssertionError(f"{slot.name} cannot pull {url}: {exc}") from exc


async def wipe_with_a_fast_clock_gone(world: World, slot: Slot) -> None:
    """The node at `slot`, whose clock ran 30 minutes fast, loses its disk and comes back under
    the same --node-id with a right clock."""
    assert slot.node is not None
    await world.wipe(slot, slot.node.id)
    slot.skew_ms = 0
    await world.start(slot)


async def test_wiped_node_that_keeps_its_id_gets_its_own_writes_back(tmp_path: Path) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    Peers used to leave out every record of the wiped node's id above the mark of its new store,
    taken as "it wrote those itself": it never got back what it wrote with its clock fast.
    """
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        first, second = world.slots
        second.skew_ms = 30 * MINUTE
        await second.running[0].put("written-fast", "v1")
        await pull_all(first)
        await wipe_with_a_fast_clock_gone(world, second)
        await pull_all(second)
        assert (await records(second.running[0])).keys() == {"written-fast"}
        assert second.running[0].store.digest() == first.running[0].store.digest()


async def test_wiped_node_that_keeps_its_id_never_mints_a_version_it_minted_before(
    tmp_path: Path,
) -> None:
    """Invariant 7: no two different values ever carry the same version, also after a node loses
    its data and comes back under its old id.

    Its clock stands at the same instant in both lives, and it writes again before it has heard
    from anyone: with the node id alone in a version, both lives named their first write alike,
    and the two nodes held different values under one version for good.
    """
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        first, second = world.slots
        before = await second.running[0].put("k", "old")
        await pull_all(first)
        await world.wipe(second, "n1")
        await world.start(second)
        after = await second.running[0].put("k", "new")
        assert after.version != before.version
        for _ in range(2):
            await pull_all(first)
            await pull_all(second)
        held = [(await records(slot.running[0]))["k"] for slot in world.slots]
        assert held[0] == held[1]
        assert held[0].version == max(before.version, after.version)
        assert second.running[0].store.digest() == first.running[0].store.digest()


async def test_wiped_node_under_a_new_id_does_not_hold_up_the_tombstone_purge(
    tmp_path: Path,
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    A node lost its data dir and came back at the same URL under a new id. Its old id stayed an
    active member on the nodes that had never pulled the old one at that URL: they waited for it
    forever before purging a tombstone, while nodes that had purged it already kept a different
    digest.
    """
    async with cluster(tmp_path, 3) as world:
        for _ in range(2):
            for slot in world.slots:
                await pull_all(slot)
        wiped = world.slots[1]
        old_id = wiped.running[0].id
        await world.wipe(wiped, None)
        world.time_ms += 1_000  # its new id announces itself later than the old one did
        await world.start(wiped)
        await pull_all(wiped)  # the others hear of the new id before they pull its URL
        for _ in range(2):
            for slot in world.slots:
                await pull_all(slot)
        for slot in world.slots:
            node, replicator = slot.running
            old = node.membership.members.get(old_id)
            assert old is None or old.left, f"{slot.name} still waits for {old_id}"
            assert replicator.purge_horizon() is not None, slot.name


async def test_restarted_node_clock_resumes_past_its_announcement(tmp_path: Path) -> None:
    """Invariant 5: a node's clock and sequence never go backwards, also across restarts.

    A starting node announces itself with a clock value that peers see. It used to be saved only
    with the next write, so a node that crashed before writing, and came back with its wall clock
    a little behind, resumed below the value it had announced.
    """
    async with cluster(tmp_path, 1) as world:
        slot = world.slots[0]
        announced = slot.running[0].membership.self_entry.version
        await world.crash(slot)
        slot.skew_ms = -250
        await world.start(slot)
        assert slot.running[0].clock.last > announced


async def test_same_seed_replays_the_same_run() -> None:
    """A seed is a complete description of a run: the trace printed on failure is reproducible."""
    first, second = await run_seed(424242, Config(steps=150)), await run_seed(424242, Config(steps=150))
    assert first.error is None, first.error
    assert first.trace == second.trace
    assert len(first.trace) > 150
