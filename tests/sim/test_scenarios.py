"""Bugs the simulation found, each replayed as a fixed scenario on the simulation's real nodes."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shareddb.clock import RESERVE_AHEAD_MS, physical
from shareddb.record import version_hlc
from shareddb.replication.puller import BATCH
from shareddb.replication.transport import PeerError, PeerRemoved
from tests.sim.runner import run_seed
from tests.sim.simulation import Config
from tests.sim.world import TOMBSTONE_GRACE_MS, SimRegistry, Slot, World, reap, records

MINUTE = 60_000


@asynccontextmanager
async def cluster(root: Path, count: int, ids: list[str] | None = None) -> AsyncIterator[World]:
    """`count` started nodes (with these --node-ids, else minted ones) on a network that loses
    nothing, all listing each other as peers."""
    world = World(root, random.Random(0))
    world.network.drop_request = world.network.drop_reply = 0.0
    world.network.delay = world.network.duplicate = world.network.small_page = 0.0
    world.network.cut_copy = 0.0
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


async def test_a_node_restored_from_an_older_copy_of_its_store_gets_its_new_writes_to_its_peers(
    tmp_path: Path,
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    n1 has read n0's feed further than an older copy of n0's store holds. n0, started again on
    that copy, wrote at positions n1 counted as read, then took back from n1 what it lacked, so
    its feed reached past n1's position again: n1 read on from there and never got the new write.
    """
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        source, peer = world.slots
        await source.running[0].put("before", "v")
        await pull_all(peer)
        await world.crash(source)
        older = copy.deepcopy(source.disk)
        await world.start(source)
        for i in range(BATCH + 1_000):  # more than one page of the feed
            await source.running[0].put(f"later/{i}", "v")
        for _ in range(3):
            await pull_all(peer)
        read_to = await peer.running[0].store.checkpoint("n0")
        assert read_to is not None
        assert read_to.seq > BATCH

        await world.crash(source)
        source.disk = older
        await world.start(source)
        await source.running[0].put("new", "after the restore")  # a position n1 counted as read
        for _ in range(3):
            await pull_all(source)  # it takes the later writes back from n1
        assert source.running[0].store.last_seq > read_to.seq

        await pull_all(peer)  # one page, from the start of the feed
        held = await peer.running[0].store.checkpoint("n0")
        assert held is not None
        assert held.seq < read_to.seq  # what it had read says nothing now
        for _ in range(3):
            await pull_all(peer)
        assert (await records(peer.running[0]))["new"].value == "after the restore"
        assert peer.running[0].store.digest() == source.running[0].store.digest()


@pytest.mark.parametrize(
    ("seed", "steps"),
    [
        # n2, put back in place, wrote at positions n0 counted as read; n4 pulled first, and n2
        # told it positions past n0's checkpoint, which then passed for one n2 had named.
        (966911312, 284),
        # n1's copy of n0 was cut, n0 was put back in place, and n1 resumed the copy: the new
        # header named a position past the one n1 read on from, which passed for named.
        (867497459, 355),
        # n0 was put back in place, wrote, and was restarted before a peer that had read past
        # the copy pulled: the new run found its feed beyond that peer's checkpoint. Told by
        # the epoch of the checkpoint (replication/epochs.py).
        (267814730, 400),
        (267815400, 400),
    ],
)
async def test_a_store_put_back_in_place_gets_its_new_writes_to_every_peer(
    seed: int, steps: int
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests, with a
    node's store put back to an older state as the same life (a Redis restored from a dump)."""
    config = Config(steps=steps, disabled=frozenset({"watch"}), restores_keep_life=True)
    result = await run_seed(seed, config)
    assert result.error is None, result.error
    assert result.counts["restore"] > 0


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
            assert replicator.purge.horizon() is not None, slot.name


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
    assert len(first.trace) > 100


async def test_a_seed_with_crashes_under_writes_replays_the_same_run() -> None:
    """Seed 5 crashes a node whose clock had asked, under writes, for its next bound: the bound
    it resumes from after the restart must not depend on when a thread wrote the note. Noted in
    the background, three of five runs of this seed gave three different traces."""
    runs = [await run_seed(5) for _ in range(5)]
    assert runs[0].error is None, runs[0].error
    assert runs[0].counts["crash"] > 0
    assert all(run.trace == runs[0].trace for run in runs[1:])


async def test_node_behind_its_peers_never_gives_two_writes_one_version(tmp_path: Path) -> None:
    """Invariant 7: no two different values ever carry the same version.

    Two nodes whose clocks run 30 minutes fast write two keys at the same instant: both versions
    carry the same timestamp. A node with a right clock holds both, then writes both keys: each
    write goes just above the stored version, past the 60 s its clock may follow.
    """
    async with cluster(tmp_path, 3, ["n0", "n1", "n2"]) as world:
        right, fast, other_fast = world.slots
        fast.skew_ms = other_fast.skew_ms = 30 * MINUTE
        world.time_ms += 1_000
        await fast.running[0].put("a", "fast")
        await other_fast.running[0].put("b", "fast")
        await pull_all(right)
        first = await right.running[0].put("a", "right")
        second = await right.running[0].put("b", "right")
        assert first.version != second.version


async def pull_rounds(world: World, rounds: int = 3) -> None:
    """Every node that is up and in the cluster pulls every peer it wants, `rounds` times."""
    for _ in range(rounds):
        for slot in world.slots:
            if not slot.up or slot.running[0].membership.self_entry.left:
                continue
            try:
                await pull_all(slot)
            except AssertionError as exc:
                if not isinstance(exc.__cause__, PeerRemoved):
                    raise  # a removed node that had not heard of it yet learns it now


async def test_removed_member_with_its_old_data_is_refused_and_its_later_writes_never_spread(
    tmp_path: Path,
) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again with its
    old data.

    The removed node was down when it was removed; it comes back with its old store, takes a
    write, and pulls: the members that heard of the removal refuse it, and take nothing from it.
    """
    async with cluster(tmp_path, 3, ["n0", "n1", "n2"]) as world:
        first, removed, third = world.slots
        await pull_rounds(world)
        await world.crash(removed)
        assert await first.running[0].leave("n1")
        await third.running[1].pull_once(first.url)  # hears of the removal from n0
        await world.start(removed)
        await removed.running[0].put("after-removal", "x")
        with pytest.raises(PeerRemoved):
            await removed.running[1].pull_once(first.url)
        assert removed.running[0].membership.self_entry.left
        await pull_rounds(world)
        for slot in (first, third):
            node = slot.running[0]
            assert "after-removal" not in await records(node)
            assert node.membership.state(node.membership.members["n1"]) == "left"
            assert removed.url not in node.membership.pull_urls()


async def test_removed_member_wiped_and_rejoined_through_join_converges(tmp_path: Path) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    A removed node gets an empty data dir and joins again under its old id: a new incarnation,
    accepted again, that gets the whole data set and whose new writes reach everyone.
    """
    async with cluster(tmp_path, 3, ["n0", "n1", "n2"]) as world:
        first, removed, _ = world.slots
        await first.running[0].put("before", "x")
        await pull_rounds(world)
        assert await first.running[0].leave("n1")
        await pull_rounds(world)
        await world.wipe(removed, "n1")
        removed.peers, removed.join = (), first.url
        await world.start(removed)
        node, replicator = removed.running
        node.membership.merge(await replicator.transport.join(first.url, node.membership.entries()))
        await node.put("after-rejoin", "y")
        await pull_rounds(world)
        digests = {slot.running[0].store.digest() for slot in world.slots}
        assert len(digests) == 1
        assert (await records(first.running[0])).keys() == {"before", "after-rejoin"}
        assert first.running[0].membership.state(first.running[0].membership.members["n1"]) != "left"


async def test_wiped_node_back_under_its_old_id_with_a_frozen_clock_mints_new_versions(
    tmp_path: Path,
) -> None:
    """Invariant 7: no two different values ever carry the same version, also after a node loses
    its data and comes back under its old id.

    The node's wall clock stands still at the instant its earlier life wrote three keys, so its
    new life counts the same timestamps again: only the incarnation keeps the versions apart,
    and the nodes still converge on the greatest of each key.
    """
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        first, second = world.slots
        second.frozen_ms = world.clock_of(second)()
        old = [await second.running[0].put(f"k{i}", "old") for i in range(3)]
        await pull_all(first)
        await world.wipe(second, "n1")
        await world.start(second)
        new = [await second.running[0].put(f"k{2 - i}", "new") for i in range(3)]
        assert {r.version[:16] for r in old} & {r.version[:16] for r in new}  # same timestamps
        assert not {r.version for r in old} & {r.version for r in new}
        second.frozen_ms = None
        await pull_rounds(world)
        assert first.running[0].store.digest() == second.running[0].store.digest()


async def test_member_whose_registry_heartbeats_stop_expires_and_comes_back(tmp_path: Path) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    The registry (its Redis simulated, the nodes' real `Registry`) expires a node cut off from it
    for longer than the TTL: it is no longer pulled. Its next heartbeat brings it back, and what it
    wrote meanwhile reaches the others.
    """
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        world.registry = SimRegistry(world)
        for slot in world.slots:  # started before the registry existed: attach it now
            await world.crash(slot)
            await world.start(slot)
        first, second = world.slots
        for slot in (*world.slots, *world.slots):
            assert await world.registry_tick(slot) == "ok"
        second.registry_cut = True
        for _ in range(10):
            world.time_ms += 2_000
            await world.registry_tick(first)
            assert "timed out" in await world.registry_tick(second)
        member = first.running[0].membership.members["n1"]
        assert member.registry_expired
        assert second.url not in first.running[0].membership.pull_urls()
        await second.running[0].put("while-expired", "x")
        second.registry_cut = False
        await world.registry_tick(second)
        await world.registry_tick(first)
        assert not member.registry_expired
        await pull_all(first)
        assert "while-expired" in await records(first.running[0])


async def test_node_that_left_never_spreads_writes_it_took_after_leaving(tmp_path: Path) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again with its
    old data.

    A node leaves the cluster and then takes a client write. A member that had not heard of the
    leave yet pulls it: the answer tells it the node left, and it takes the write all the same.
    """
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        first, leaving = world.slots
        await pull_rounds(world)
        assert await leaving.running[0].leave("n1")
        await leaving.running[0].put("after-leaving", "x")
        await pull_all(first)
        assert first.running[0].membership.members["n1"].left
        assert "after-leaving" not in await records(first.running[0])


async def test_node_that_left_stays_out_after_a_restart_with_its_old_data(tmp_path: Path) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again with its
    old data.

    A node learns it was removed, restarts with its old store, and takes a write; a member that
    was cut off while the removal spread pulls it.
    """
    async with cluster(tmp_path, 3, ["n0", "n1", "n2"]) as world:
        first, removed, unaware = world.slots
        await pull_rounds(world)
        assert await first.running[0].leave("n1")
        with pytest.raises(PeerRemoved):
            await removed.running[1].pull_once(first.url)
        assert removed.running[0].membership.self_entry.left
        await world.crash(removed)
        await world.start(removed)
        await removed.running[0].put("after-restart", "x")
        await unaware.running[1].pull_once(removed.url)  # before it hears from n0
        assert "after-restart" not in await records(unaware.running[0])


async def test_value_that_expired_before_the_clock_stepped_back_is_still_reaped(
    tmp_path: Path,
) -> None:
    """Expiry: a node hides a value from reads once its clock passes the value's expiry.

    The expiry index listed a value as due once the clock had passed its expiry, and kept it so
    when the clock stepped back: the count hid a value that reads showed, and a reaper run then
    (which found it not expired by the clock) dropped it from the index for good, so it was never
    turned into a tombstone and was counted as live ever after.
    """
    async with cluster(tmp_path, 1) as world:
        (slot,) = world.slots
        node = slot.running[0]
        await node.put("session", "s1", ttl=1)
        world.time_ms += 2_000
        assert node.store.digest().count == 0
        assert await node.get("session") is None
        slot.skew_ms = -MINUTE  # the wall clock steps back
        assert node.store.digest().count == 1
        assert await node.get("session") is not None
        assert await reap(node) == 0
        slot.skew_ms = 0
        assert node.store.digest().count == 0
        assert await reap(node) == 1
        record = (await records(node))["session"]
        assert record.deleted
        assert node.store.digest().count == 0


async def k_written_after_a_transaction(world: World, *, deleted: bool) -> tuple[Slot, Slot, Slot]:
    """Three nodes (victim, relay, writer): the writer commits a transaction of k and j; a second
    later the victim writes k (and deletes it when `deleted`), at a version greater than the
    transaction's."""
    from shareddb.node import TxnOp

    victim, relay, writer = world.slots
    await writer.running[0].transact([], [TxnOp("k", "old"), TxnOp("j", "j1")])
    world.time_ms += 1_000
    await victim.running[0].put("k", "mine")
    if deleted:
        await victim.running[0].delete("k")
    return victim, relay, writer


async def test_transaction_entry_does_not_bring_back_a_key_whose_tombstone_was_purged(
    tmp_path: Path,
) -> None:
    """Invariant 4: a deleted key never comes back.

    A transaction stays one entry of the changes feed until every member has applied it, with the
    versions it wrote, also once a key of it is written again (or deleted) later; and a node that
    receives a transaction one of whose writes loses to what it holds keeps that write in its own
    entry, for the nodes that pull from it. So a member that has applied a delete can still serve
    the older version the delete replaced, and a node that has purged the tombstone takes it as
    new: the deleted key is back there, and the digests never meet again.
    """
    async with cluster(tmp_path, 3) as world:
        victim, relay, writer = await k_written_after_a_transaction(world, deleted=True)
        for _ in range(2):  # they apply the delete, and tell the victim they have
            await relay.running[1].pull_once(victim.url)
            await writer.running[1].pull_once(victim.url)
        await pull_all(victim)  # it pulls the relay and the writer past what they hold
        await relay.running[1].pull_once(writer.url)  # k loses to the tombstone; kept all the same
        world.time_ms += TOMBSTONE_GRACE_MS + MINUTE
        assert await victim.running[1].purge.run() == 1
        assert "k" not in await records(victim.running[0])
        await victim.running[1].pull_once(relay.url)
        held = (await records(victim.running[0])).get("k")
        assert held is None or held.deleted, f"k came back on the victim: {held}"


async def test_node_that_reads_a_feed_from_the_start_never_holds_half_a_transaction(
    tmp_path: Path,
) -> None:
    """Invariant 9: a transaction is never seen by halves.

    A transaction's entry of the feed is dissolved once every member has applied it; its writes
    are then served as rows, each at its own sequence number. A node that reads the feed from the
    start after that (wiped, or new) can take them in different pages, and holds part of the
    transaction in between.
    """
    from shareddb.node import TxnOp

    async with cluster(tmp_path, 3) as world:
        writer, other, wiped = world.slots
        keys = [f"k{i}" for i in range(4)]
        await writer.running[0].transact([], [TxnOp(key, "v") for key in keys])
        for _ in range(2):  # they apply the transaction, and tell the writer they have
            await pull_all(other)
            await pull_all(wiped)
        await pull_all(writer)
        await writer.running[1].purge.run()  # nothing to purge; the entry is dissolved
        await world.wipe(wiped, None)
        await world.start(wiped)
        world.network.small_page = 1.0  # pages of 1 to 3 changes
        await wiped.running[1].pull_once(writer.url)
        held = {key for key in await records(wiped.running[0]) if key in keys}
        assert held in (set(), set(keys)), f"it holds {sorted(held)} of {keys}"


async def test_tombstone_a_node_purged_does_not_come_back_to_it_with_a_later_entry(
    tmp_path: Path,
) -> None:
    """Invariant 2: nodes converge, and purges catch up with every tombstone.

    A node keeps a peer's transaction as an entry of its own feed, naming also the keys it did not
    take because it held newer versions; the feed serves such a key's current row with the entry.
    Served to a reader that had that row already, and has purged the tombstone since, it came back
    to the reader at a new sequence number, and went round the cluster again: each node took it
    anew after purging it, and the digests never met (seed 610876612).
    """
    async with cluster(tmp_path, 3) as world:
        victim, relay, writer = await k_written_after_a_transaction(world, deleted=True)
        await relay.running[1].pull_once(victim.url)  # the relay holds the tombstone
        await victim.running[1].pull_once(relay.url)  # and the victim has read its feed past it
        await relay.running[1].pull_once(writer.url)  # k loses: the relay's entry names it
        for _ in range(2):  # they apply the delete, and tell the victim they have
            await relay.running[1].pull_once(victim.url)
            await writer.running[1].pull_once(victim.url)
        world.time_ms += TOMBSTONE_GRACE_MS + MINUTE
        assert await victim.running[1].purge.run() == 1
        await victim.running[1].pull_once(relay.url)
        held = await records(victim.running[0])
        assert held["j"].value == "j1"
        assert "k" not in held, f"the purged tombstone came back to the victim: {held['k']}"


async def test_node_names_in_its_entry_the_keys_of_a_transaction_it_held_already(
    tmp_path: Path,
) -> None:
    """Invariant 9: a transaction is never seen by halves.

    A peer's entry serves only the key of a transaction's write its reader holds already (the
    previous scenario). The reader must still name that key in its own entry of the transaction:
    without it, a node reading the transaction from the reader took its other writes in one page
    and the key's newer state only in a later one, and held half of it in between (seed
    594763658).
    """
    async with cluster(tmp_path, 3) as world:
        victim, relay, writer = await k_written_after_a_transaction(world, deleted=False)
        await relay.running[1].pull_once(victim.url)
        await victim.running[1].pull_once(relay.url)  # it has read the relay's feed past k
        await relay.running[1].pull_once(writer.url)  # k loses: the relay's entry names it
        await victim.running[1].pull_once(relay.url)  # j, and k by name only
        await victim.running[0].put("k", "newer")  # k moves past the transaction in the feed
        page = await victim.running[0].store.changes_since(0, 1)
        assert {c.record.key: c.record.value for c in page.changes} == {"j": "j1", "k": "newer"}


async def test_node_whose_copy_was_cut_and_that_crashed_resumes_it_and_misses_nothing(
    tmp_path: Path,
) -> None:
    """Invariant 1: no acknowledged write is lost. Invariant 2: the nodes converge. Invariant 4:
    a deleted key never comes back.

    A node with nothing of a peer's feed copies the peer's data set (replication/copy.py); the
    copy is cut after its first chunk, the node crashes, and the peer takes writes and deletes
    meanwhile, on keys the copy has passed and keys it has not reached."""
    async with cluster(tmp_path, 2) as world:
        source, copier = world.slots
        node = source.running[0]
        for i in range(30):
            await node.put(f"k{i:02d}", "v")
        world.network.cut_copy = 1.0
        await copier.running[1].pull_once(source.url)  # a page of 4: more is left, so it copies
        with pytest.raises(PeerError):
            await copier.running[1].pull_once(source.url)
        assert 0 < len(await records(copier.running[0])) < 30
        await world.crash(copier)
        await node.delete("k00")
        await node.delete("k29")
        await node.put("k01", "changed")
        await node.put("k28", "changed")
        await world.start(copier)
        world.network.cut_copy = 0.0
        assert await copier.running[1].copier.pending(node.id)  # the position it saved
        for _ in range(3):
            await pull_all(copier)
            await pull_all(source)
        assert copier.running[1].copier.copies_done == 1
        held = await records(copier.running[0])
        assert held == await records(node)
        assert held["k00"].value is None
        assert held["k29"].value is None
        assert held["k01"].value == "changed"
        assert held["k28"].value == "changed"


async def test_page_asked_ahead_after_an_origin_stopped_being_direct_misses_none_of_its_writes(
    tmp_path: Path,
) -> None:
    """Invariant 1: no acknowledged write is lost; invariant 2: nodes that reach each other only
    through a third converge.

    C pulls A straight and so asks B to leave A's writes out. A page from B came while C was
    behind B's feed, and the next one was asked for ahead, from the end of that page. Then C
    could no longer pull A: A's writes come through B again, from what C holds of B's feed. The
    page asked ahead used to start past the A writes the earlier page had left out, and C never
    read them again."""
    async with cluster(tmp_path, 3) as world:
        a, b, c = world.slots
        for _ in range(3):  # every node pulls every other straight
            for slot in world.slots:
                await pull_all(slot)
        world.network.cut = {(2, 0), (0, 2)}  # only B links A and C
        for i in range(6):
            await b.running[0].put(f"b{i}", "v")
            await a.running[0].put(f"a{i}", "v")
            await b.running[1].pull_once(a.url)
        world.network.small_page = 1.0  # pages of 1 to 3 changes: C is behind B's feed
        await c.running[1].pull_once(b.url)  # B's write leads the page: the next is asked ahead
        with pytest.raises(PeerError):
            await c.running[1].pull_once(a.url)
        world.network.small_page = 0.0
        for _ in range(3):
            await c.running[1].pull_once(b.url)
        held = await records(c.running[0])
        assert {f"a{i}" for i in range(6)} <= held.keys()
        assert held == await records(b.running[0])


async def test_late_answer_of_a_wiped_node_does_not_retire_the_node_now_at_its_url(
    tmp_path: Path,
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    N1 asked N2 for a page ahead; N2 answered, then lost its disk and came back under a new id
    at the same URL, and N1 heard of the new node before it took that answer. Taking it, N1
    used to retire the node now at the URL as "replaced" by the old one, which then refused it
    for good."""
    async with cluster(tmp_path, 3, ["n0", "n1", "n2"]) as world:
        zero, one, two = world.slots
        for _ in range(2):
            for slot in world.slots:
                await pull_all(slot)
        for i in range(8):
            await two.running[0].put(f"k{i}", "v")
        world.network.small_page = 1.0
        await one.running[1].pull_once(two.url)  # behind: the next page is asked ahead
        world.network.small_page = 0.0
        for _ in range(5):
            await asyncio.sleep(0)  # the old N2 answers it
        await world.wipe(two, "n2-new")
        two.join = zero.url
        await world.start(two)
        entries = await two.running[1].transport.join(zero.url, two.running[0].membership.entries())
        two.running[0].membership.merge(entries)
        await pull_all(one)  # hears of n2-new from N0, then takes the old N2's answer
        for _ in range(3):
            for slot in world.slots:
                await pull_all(slot)
        members = one.running[0].membership.members
        assert not members["n2-new"].left
        digests = {slot.running[0].store.digest() for slot in world.slots}
        assert len(digests) == 1


async def test_node_that_hears_a_member_was_removed_reads_again_what_it_left_out_of_that_member(
    tmp_path: Path,
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    C pulled A straight, so its pulls from B left A's writes out. B took a write of A, then
    removed A. C heard of the removal in its next answer from B, a page that had left that
    write out: its following pull read B's feed from the end of that page, and C never got
    the write, which only B still served."""
    async with cluster(tmp_path, 3, ["n0", "n1", "n2"]) as world:
        a, b, c = world.slots
        for _ in range(3):  # every node pulls every other straight
            for slot in world.slots:
                await pull_all(slot)
        await a.running[0].put("before-removal", "v")
        await b.running[1].pull_once(a.url)
        assert await b.running[0].leave("n0")
        await b.running[0].put("after", "v")
        for _ in range(3):
            await c.running[1].pull_once(b.url)
        held = await records(c.running[0])
        assert "before-removal" in held
        assert held == await records(b.running[0])


async def test_a_crashed_node_resumes_its_clock_from_the_bound_it_noted_ahead(tmp_path: Path) -> None:
    """Invariant 5: a node's versions never go backwards. A crash gives the node no chance to
    note its clock's last timestamp: the simulation's crash leaves the bound noted ahead in the
    data dir, as a real one does, and the node resumes above it, its wall clock standing still."""
    async with cluster(tmp_path, 1, ["n0"]) as world:
        (slot,) = world.slots
        before = await slot.running[0].put("k", "before the crash")
        slot.frozen_ms = physical(version_hlc(before.version))
        await world.crash(slot)
        await world.start(slot)
        after = await slot.running[0].put("k", "after it")
        ahead = physical(version_hlc(after.version)) - physical(version_hlc(before.version))
        assert RESERVE_AHEAD_MS // 2 < ahead <= RESERVE_AHEAD_MS + 1  # the bound, then one tick


async def test_a_snapshot_restored_after_the_purge_does_not_bring_a_deleted_key_back(
    tmp_path: Path,
) -> None:
    """Invariant 4: a deleted key never comes back. A snapshot taken before a delete, restored
    once every node has purged the delete's tombstone, used to put the old value back: the nodes
    held nothing of the key, so it won everywhere."""
    async with cluster(tmp_path, 2, ["n0", "n1"]) as world:
        first, second = world.slots
        node = first.running[0]
        await node.put("gone", "before the delete")
        await node.put("kept", "in the snapshot")
        await pull_all(second)
        snapshot = list((await records(node)).values())
        await node.delete("gone")
        for _ in range(2):  # each node's pulls tell the other how far they hold its feed
            await pull_all(second)
            await pull_all(first)
        world.time_ms += TOMBSTONE_GRACE_MS + MINUTE
        assert await first.running[1].purge.run() == 1
        assert await second.running[1].purge.run() == 1
        assert "gone" not in await records(node)
        assert await node.merge(snapshot) == (0, 0)  # "kept" is here already; "gone" is left out
        await pull_all(second)
        for slot in world.slots:
            held = await records(slot.running[0])
            assert "gone" not in held, (slot.name, held.get("gone"))
            assert held["kept"].value == "in the snapshot"
