"""The tombstone purge (replication/purge.py) on the memory store: a tombstone goes only once every
active member holds it and the grace period has passed."""

from __future__ import annotations

from shareddb.clock import from_millis
from shareddb.membership import Membership
from shareddb.record import Record, make_version
from shareddb.replication.purge import Purge
from shareddb.store.memory import MemoryStore

GRACE_MS = 60_000
T0 = 1_800_000_000_000  # ms


def version(millis: int) -> str:
    return make_version(from_millis(millis), "n1")


async def deleted(store: MemoryStore, key: str, millis: int) -> int:
    """Write then delete `key` at `millis`: the sequence of the tombstone."""
    await store.write(Record(key, "v", version(millis - 1)))
    await store.write(Record(key, None, version(millis)))
    return store.last_seq


async def test_a_tombstone_goes_once_every_member_holds_it_and_the_grace_passed(
    memory_store: MemoryStore,
) -> None:
    """Invariant 4: a deleted key never comes back.

    A member that has not applied the delete could send the key back; a member nobody has
    heard of is covered by the grace period."""
    now = T0
    members = Membership("n1", "http://n1:1", clock=lambda: 0.0)
    purge = Purge(memory_store, members, now=lambda: now, grace_ms=GRACE_MS)
    members.heard_from("n2", "http://n2:1", 1, "i2")
    members.heard_from("n3", "http://n3:1", 1, "i3")
    seq = await deleted(memory_store, "gone", T0)

    assert purge.horizon() is None  # neither has pulled since this node started
    members.record_progress("n2", seq)
    assert purge.horizon() is None
    members.record_progress("n3", seq - 1)  # n3 has not applied the delete
    assert purge.horizon() == seq - 1

    now = T0 + GRACE_MS + 1
    assert await purge.run() == 0  # held back by n3
    members.record_progress("n3", seq, held=seq - 1)  # read past it, but leaves writes out
    assert await purge.run() == 0
    members.record_progress("n3", seq)
    now = T0 + GRACE_MS - 1
    assert await purge.run() == 0  # every member holds it, but within the grace
    now = T0 + GRACE_MS + 1
    assert await purge.run() == 1


async def test_no_purge_while_a_peer_is_unidentified(memory_store: MemoryStore) -> None:
    """Invariant 4, as above: a --peers URL whose node is not known yet may hold anything."""
    members = Membership("n1", "http://n1:1", clock=lambda: 0.0)
    members.static_urls.add("http://somewhere:1")
    purge = Purge(memory_store, members, now=lambda: T0 + 10 * GRACE_MS, grace_ms=GRACE_MS)
    await deleted(memory_store, "gone", T0)
    assert purge.horizon() is None
    assert await purge.run() == 0
    members.static_urls.clear()  # alone: this node holds its own feed
    assert purge.horizon() == memory_store.last_seq
    assert await purge.run() == 1
