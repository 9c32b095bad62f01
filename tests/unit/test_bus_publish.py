"""The change bus's publisher (replication/bus_publish.py) passes over the feed ranges that hold
only the others' writes taken off the bus, without reading them, and reads everything else: a
write of its own between two such ranges is still found (invariant 1). Under load it gathers
writes into one message per linger, and sends at once when the node goes quiet."""

from __future__ import annotations

import asyncio
import time

import pytest

from shareddb.membership import Membership
from shareddb.record import Record, make_origin, make_version
from shareddb.replication.bus_publish import IDLE_WAIT, PUBLISHED, SAVE_EVERY, Publisher
from shareddb.replication.bus_view import BusState, parse_bus_url
from shareddb.store.memory import MemoryStore

ME = make_origin("n1", "i1")
OTHER = make_origin("n2", "i2")


def publisher(store: MemoryStore) -> Publisher:
    membership = Membership("n1", "http://n1", "i1", clock=lambda: 0.0)
    address = parse_bus_url("nats://127.0.0.1:4999")
    return Publisher(address, "n1", ME, store, membership, BusState())


def record(key: str, hlc: int, origin: str) -> Record:
    return Record(key, f"v-{key}", make_version(hlc, origin))


async def test_ranges_of_the_others_writes_are_passed_over_and_the_rest_is_read(
    memory_store: MemoryStore,
) -> None:
    pub = publisher(memory_store)
    pub.heard(OTHER)
    await memory_store.write(record("mine-1", 1, ME))  # feed position 1
    applied = await memory_store.apply([record(f"theirs-{i}", 10 + i, OTHER) for i in range(3)])
    pub.took(applied.first, applied.last)  # positions 2 to 4
    await memory_store.write(record("mine-2", 20, ME))  # 5

    assert pub._past_others(0) == 0  # position 1 is not theirs: it is read first
    page = await pub._page(0)
    assert [c.record.key for c in page.changes] == ["mine-1"]  # and the page stops before theirs

    assert pub._past_others(1) == 4
    assert (pub.position, pub.state.published) == (4, 4)
    page = await pub._page(4)
    assert [c.record.key for c in page.changes] == ["mine-2"]


async def test_a_range_already_read_or_empty_changes_nothing(memory_store: MemoryStore) -> None:
    pub = publisher(memory_store)
    await memory_store.write(record("mine-1", 1, ME))
    applied = await memory_store.apply([record("mine-1", 0, ME)])  # older than the stored one
    assert applied.won == 0
    pub.took(applied.first, applied.last)  # nothing won: nothing to pass over
    pub.took(1, 1)  # read already
    assert pub._past_others(3) == 3
    assert pub.position is None


async def test_how_far_it_got_is_saved_at_most_once_a_second(memory_store: MemoryStore) -> None:
    """Each save is a commit: a follower that went through its feed after every message it
    applied used to save each time."""
    pub = publisher(memory_store)
    pub.new_stream("stream-1")
    assert await pub._save_when_due(5) == IDLE_WAIT  # the first save is due at once
    assert await memory_store.get_meta(PUBLISHED) == '{"stream":"stream-1","seq":5}'
    wait = await pub._save_when_due(9)
    assert 0 < wait <= SAVE_EVERY  # not yet: it says when
    assert await memory_store.get_meta(PUBLISHED) == '{"stream":"stream-1","seq":5}'
    pub._saved_at -= SAVE_EVERY  # as if a second had passed
    await pub._save_when_due(9)
    assert await memory_store.get_meta(PUBLISHED) == '{"stream":"stream-1","seq":9}'


async def test_a_lingering_publisher_sends_once_the_node_has_gone_quiet(
    memory_store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last writes of a burst go out a quarter of the linger after the last commit, not up
    to a whole linger later (400 ms with 24 other nodes on the bus)."""
    pub = publisher(memory_store)
    monkeypatch.setattr(pub, "linger", lambda: 4.0)
    pub._sent_at = time.monotonic()  # a message just went: the next one lingers
    await memory_store.write(record("mine-1", 1, ME))
    assert await pub._linger()  # it waited...
    assert time.monotonic() < pub._sent_at + 4.0  # ...for a quiet second, not the 4 s


async def test_a_publisher_lingers_on_while_writes_keep_coming(
    memory_store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = publisher(memory_store)
    monkeypatch.setattr(pub, "linger", lambda: 1.2)
    pub._sent_at = time.monotonic()
    writing = True

    async def write_on() -> None:  # a commit every 10 ms, well within each quiet window (0.3 s)
        hlc = 1
        while writing:
            hlc += 1
            await memory_store.write(record(f"k{hlc}", hlc, ME))
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(write_on())
    try:
        assert await pub._linger()
        assert time.monotonic() >= pub._sent_at + 1.2  # the whole linger: one message for all
    finally:
        writing = False
        await writer


async def test_a_write_that_waits_for_copies_cuts_the_linger_short(
    memory_store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = publisher(memory_store)
    monkeypatch.setattr(pub, "linger", lambda: 60.0)
    pub._sent_at = time.monotonic()
    asyncio.get_running_loop().call_later(0.05, pub.hurry)
    assert await pub._linger()
    assert time.monotonic() < pub._sent_at + 15.0  # not even a quiet spell's wait
