"""Serving the changes feed (replication/feed.py) in-process, on a real SQLite store in tmp_path.

The feed answers how far it has been read (`until`), so a puller's checkpoint moves past purged
tombstones and its next long poll really waits, instead of being answered at once for ever. A busy
origin gathers its writes for a puller it answered moments ago, unless a write waits for copies.
What this node copied from a peer is not sent back to the run of the peer that served the copy.
A puller that read positions of the feed before its store went back (an older copy of it put in
place) reads it again from where the two agree, told by the epoch its position was read in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shareddb.membership import Membership
from shareddb.record import Record, make_version
from shareddb.replication import feed as feed_module
from shareddb.replication.feed import MAX_ANSWER_BYTES, Feed
from shareddb.replication.transport import PullReply, PullRequest
from shareddb.store.base import CopyPosition, Store, StoreFull
from shareddb.store.memory import MemoryData, MemoryStore
from shareddb.store.sqlite import SQLiteStore
from tests.harness import eventually

WAIT = 1.0  # the long poll the tests ask for; a spinning feed answers in milliseconds


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "db.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


def feed_of(store: SQLiteStore) -> Feed:
    """The feed of a node that opened `store` now: it serves what the store holds."""
    return Feed("origin", store, Membership("origin", "http://origin", clock=time.monotonic))


def pull(since: int, instance: str, wait: float = WAIT, limit: int = 1000) -> PullRequest:
    return PullRequest(since, instance, limit, wait, "puller", "http://puller", 1, 0)


async def purged_tail(store: SQLiteStore) -> int:
    """k0..k4, then k3 and k4 deleted and their tombstones purged: the feed's last rows are gone.
    Returns the sequence of the last row left (k2)."""
    for i in range(5):
        await store.write(Record(f"k{i}", f"v{i}", make_version(i + 1, "origin")))
    for i in (3, 4):
        await store.write(Record(f"k{i}", None, make_version(10 + i, "origin")))
    assert await store.purge_tombstones(store.last_seq, make_version(100, "")) == 2
    assert store.last_seq == 7
    return 3


async def test_a_long_poll_past_purged_tombstones_moves_the_puller_to_the_end(
    store: SQLiteStore,
) -> None:
    last_row = await purged_tail(store)
    feed = feed_of(store)
    started = time.monotonic()
    reply = await feed.pull(pull(last_row, store.instance_id))
    took = time.monotonic() - started
    # Either the answer covers the purged rows (the puller moves on) or the poll waited: an
    # immediate empty answer at the same checkpoint is the spin.
    assert reply.records == []
    assert reply.until == store.last_seq == 7, f"until {reply.until} answered in {took:.3f}s"
    assert took >= WAIT * 0.9, f"an idle long poll answered after {took:.3f}s, not {WAIT}s"


async def test_a_long_poll_at_the_end_of_a_purged_feed_waits(store: SQLiteStore) -> None:
    await purged_tail(store)
    feed = feed_of(store)
    started = time.monotonic()
    reply = await feed.pull(pull(store.last_seq, store.instance_id))
    assert time.monotonic() - started >= WAIT * 0.9
    assert (reply.records, reply.until) == ([], 7)


async def test_a_write_during_a_long_poll_past_purged_tombstones_is_answered(
    store: SQLiteStore,
) -> None:
    last_row = await purged_tail(store)
    feed = feed_of(store)
    waiting = asyncio.create_task(feed.pull(pull(last_row, store.instance_id, wait=20)))
    await asyncio.sleep(0)  # let the poll start waiting before the write lands
    written = Record("new", "x", make_version(50, "origin"))
    await store.write(written)
    reply = await asyncio.wait_for(waiting, 5)
    assert (reply.records, reply.until, reply.last_seq) == ([written], 8, 8)


async def test_a_pull_from_the_start_skips_purged_rows_and_ends_at_the_last_seq(
    store: SQLiteStore,
) -> None:
    await purged_tail(store)
    feed = feed_of(store)
    reply = await feed.pull(pull(0, store.instance_id, wait=0))
    assert [r.key for r in reply.records] == ["k0", "k1", "k2"]
    assert reply.until == reply.last_seq == 7


async def test_a_pull_of_large_values_stops_at_the_byte_budget(store: SQLiteStore) -> None:
    feed = feed_of(store)
    value = "x" * (MAX_ANSWER_BYTES // 5)
    for i in range(12):
        await store.write(Record(f"big{i:02}", value, make_version(i + 1, "origin")))
    seen: list[str] = []
    since = 0
    while since < store.last_seq:
        reply = await feed.pull(pull(since, store.instance_id, wait=0, limit=10_000))
        assert 0 < len(reply.records) <= 4, "an answer went past the byte budget"
        assert reply.until == since + len(reply.records)
        seen += [r.key for r in reply.records]
        since = reply.until
    assert seen == [f"big{i:02}" for i in range(12)]


async def test_a_change_larger_than_the_budget_is_still_sent_alone(store: SQLiteStore) -> None:
    feed = feed_of(store)
    await store.write(Record("huge", "y" * (MAX_ANSWER_BYTES + 1), make_version(1, "origin")))
    await store.write(Record("small", "z", make_version(2, "origin")))
    reply = await feed.pull(pull(0, store.instance_id, wait=0))
    assert ([r.key for r in reply.records], reply.until) == (["huge"], 1)
    reply = await feed.pull(pull(1, store.instance_id, wait=0))
    assert ([r.key for r in reply.records], reply.until) == (["small"], 2)


async def test_a_pull_sent_ahead_counts_only_what_the_puller_has_applied(
    store: SQLiteStore,
) -> None:
    # A puller fetches its next page while it applies one: that pull says how far it has applied,
    # and only that counts for `w=N` and the tombstone purge (invariants 1 and 4).
    for i in range(3):
        await store.write(Record(f"k{i}", "v", make_version(i + 1, "origin")))
    feed = feed_of(store)
    await feed.pull(dataclasses.replace(pull(3, store.instance_id, wait=0), applied=1))
    assert feed.membership.members["puller"].applied == 1
    await feed.pull(pull(3, store.instance_id, wait=0))
    assert feed.membership.members["puller"].applied == 3


async def test_the_pullers_own_writes_do_not_end_its_long_poll(store: SQLiteStore) -> None:
    feed = feed_of(store)
    request = dataclasses.replace(
        pull(store.last_seq, store.instance_id, wait=20), puller_incarnation="", own_since=1
    )
    waiting = asyncio.create_task(feed.pull(request))
    await store.write(Record("mine", "m", make_version(5, "puller")))  # the puller holds it
    done, _ = await asyncio.wait({waiting}, timeout=0.3)
    assert not done, "an answer of nothing but the puller's own write"
    theirs = Record("theirs", "t", make_version(6, "other"))
    await store.write(theirs)
    reply = await asyncio.wait_for(waiting, 5)
    assert (reply.records, reply.until) == ([theirs], 2)


async def test_closing_the_feed_answers_every_held_long_poll_at_once(store: SQLiteStore) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. A stopping node answers the pulls it holds (with everything up to its last write) rather
    than making its shutdown wait out their long polls, up to 12 s each in a large mesh."""
    await store.write(Record("k", "v", make_version(1, "origin")))
    feed = feed_of(store)
    held = [
        asyncio.create_task(feed.pull(pull(store.last_seq, store.instance_id, wait=30)))
        for _ in range(3)
    ]
    await eventually(  # the polls wait, each keeping its puller `up`
        lambda: sum(len(m.open) for m in feed.membership.members.values()) == len(held),
        "the long polls to wait",
    )
    feed.close()
    replies = await asyncio.wait_for(asyncio.gather(*held), 5)
    assert [(r.records, r.until) for r in replies] == [([], store.last_seq)] * 3
    # A pull that comes in later is answered at once too.
    late = await asyncio.wait_for(feed.pull(pull(store.last_seq, store.instance_id, wait=30)), 5)
    assert (late.records, late.until) == ([], store.last_seq)


async def test_a_held_long_poll_answers_when_the_member_list_changes(store: SQLiteStore) -> None:
    """Invariant 8: a member that was removed never becomes a source of changes again with its
    old data. The answer carries the member list, so a removal spreads with it at once, not when
    an idle poll ends (up to 12 s in a large mesh)."""
    feed = feed_of(store)
    held = asyncio.create_task(feed.pull(pull(store.last_seq, store.instance_id, wait=30)))
    await eventually(lambda: any(m.open for m in feed.membership.members.values()), "the poll")
    assert feed.membership.merge([{"id": "gone", "url": "http://gone", "left": True, "v": 5}])
    store.wake_waiters()  # what the replicator does on every change of the list
    reply = await asyncio.wait_for(held, 5)
    assert any(entry["id"] == "gone" and entry["left"] for entry in reply.members)


async def own_page(feed: Feed, store: SQLiteStore, since: int) -> list[str]:
    """The keys of the next answer to a pull that may be held for a minute; given up after 30 s."""
    reply = await asyncio.wait_for(feed.pull(pull(since, store.instance_id, wait=60.0)), 30)
    return [r.key for r in reply.records]


async def lingering(feed: Feed, answer: asyncio.Task[list[str]]) -> None:
    """Wait, up to 10 s, until `answer` has read the feed and lingers over what it read."""
    deadline = time.monotonic() + 10.0
    while not feed._hurry._waiters:
        assert not answer.done(), f"answered without lingering: {answer.result()}"
        assert time.monotonic() < deadline, "the answer never started to linger"
        await asyncio.sleep(0.001)


async def test_a_busy_origin_gathers_its_writes_for_a_puller_it_answered_moments_ago(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a puller takes a page (and commits) once per OWN_LINGER, not once per few
    writes: half of what a follower in a 3-node mesh spent per write."""
    monkeypatch.setattr(feed_module, "OWN_LINGER", 1.0)
    feed = feed_of(store)
    await store.write(Record("k1", "v", make_version(1, feed.origin)))
    assert await own_page(feed, store, 0) == ["k1"]  # the first answer goes at once
    await store.write(Record("k2", "v", make_version(2, feed.origin)))
    answer = asyncio.create_task(own_page(feed, store, 1))
    await lingering(feed, answer)  # it has read k2, and k3 is not written yet
    await store.write(Record("k3", "v", make_version(3, feed.origin)))
    assert await answer == ["k2", "k3"]


async def test_a_write_after_a_quiet_spell_goes_at_once(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "OWN_LINGER", 60.0)
    feed = feed_of(store)
    await store.write(Record("k1", "v", make_version(1, feed.origin)))
    assert await own_page(feed, store, 0) == ["k1"]  # never answered before: at once
    feed._answered["puller"] -= 60.0  # as if a minute had passed since
    await store.write(Record("k2", "v", make_version(2, feed.origin)))
    assert await own_page(feed, store, 1) == ["k2"]  # within own_page's 30 s, not the linger


async def test_no_answer_lingers_while_a_write_waits_for_copies(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`w=N` is answered once the pullers say they hold the write: a lingering answer would
    hold that back. One that lingers already goes at once; none lingers while the write waits."""
    monkeypatch.setattr(feed_module, "OWN_LINGER", 60.0)
    feed = feed_of(store)
    await store.write(Record("k1", "v", make_version(1, feed.origin)))
    assert await own_page(feed, store, 0) == ["k1"]
    await store.write(Record("k2", "v", make_version(2, feed.origin)))
    answer = asyncio.create_task(own_page(feed, store, 1))
    await lingering(feed, answer)  # it has read k2, and would wait a minute for more
    with feed.copies_awaited():
        assert await answer == ["k2"]  # own_page gives up after 30 s
        await store.write(Record("k3", "v", make_version(3, feed.origin)))
        assert await own_page(feed, store, 2) == ["k3"]


async def copy_chunk(store: SQLiteStore, feed: Feed, boot: str, keys: range) -> None:
    """A chunk of a copy from "puller", in the run `boot` of its process, as the copier applies
    it and tells the feed where it went."""
    records = [Record(f"c{i:02d}", "copied", make_version(i + 1, "puller")) for i in keys]
    position = CopyPosition("puller", "its-instance", 0, records[-1].key)
    feed.copied_from("puller", boot, await store.bulk_load(records, position))


async def test_what_was_copied_from_a_run_of_a_peer_is_not_sent_back_to_that_run(
    store: SQLiteStore,
) -> None:
    feed = feed_of(store)
    own = make_version(100, "origin")
    await store.write(Record("mine-1", "x", own))
    await copy_chunk(store, feed, "run-1", range(0, 20))
    await store.write(Record("mine-2", "x", own))
    await copy_chunk(store, feed, "run-1", range(20, 40))
    await store.write(Record("c05", "written again here", own))  # leaves the copy's positions

    async def read_all(boot: str) -> list[str]:
        """Pull from the start to the end of the feed, as the run `boot` of the peer does."""
        keys: list[str] = []
        since, pulls = 0, 0
        while since < store.last_seq:
            request = dataclasses.replace(pull(since, store.instance_id, wait=0), puller_boot=boot)
            reply = await feed.pull(request)
            keys += [r.key for r in reply.records]
            since, pulls = reply.until, pulls + 1
            assert pulls < 10
        return keys

    assert await read_all("run-1") == ["mine-1", "mine-2", "c05"]
    # Another run of the peer (it restarted, maybe on an older copy of its store) gets it all,
    # as does a pull that names no run.
    for boot in ("run-2", ""):
        assert len(await read_all(boot)) == 2 + 40


async def test_a_long_poll_that_began_before_the_copy_passes_over_what_it_copies(
    store: SQLiteStore,
) -> None:
    """Each chunk is noted as its commit returns, before the readers it wakes run. (A read
    already under way as the chunk commits may take it back: harmless, the puller holds it.)"""
    feed = feed_of(store)
    await feed.pull(pull(0, store.instance_id, wait=0))  # the store keeps its feed's tail from now
    request = dataclasses.replace(pull(0, store.instance_id, wait=5.0), puller_boot="run-1")
    answer = asyncio.ensure_future(feed.pull(request))
    for _ in range(10):  # let it read the (empty) tail and wait: no thread, no time passes
        await asyncio.sleep(0)
    await copy_chunk(store, feed, "run-1", range(0, 30))
    assert not answer.done()  # the chunk woke it, and it waits on: nothing there is for it
    await store.write(Record("mine", "x", make_version(100, "origin")))
    reply = await asyncio.wait_for(answer, 5.0)
    assert [r.key for r in reply.records] == ["mine"]
    assert reply.until == store.last_seq


async def test_a_puller_of_no_epoch_that_read_further_than_the_store_holds_reads_the_feed_again(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 2: a checkpoint that names no epoch (an earlier release's) and lies past the
    feed's end shows the store went back: the puller reads from the start, holding none of it."""
    feed = feed_of(store)
    for i in range(3):
        await store.write(Record(f"k{i}", "v", make_version(i + 1, "origin")))
    reply = await feed.pull(pull(10, store.instance_id, wait=0))  # read to 10 on the last copy
    assert [r.key for r in reply.records] == ["k0", "k1", "k2"]
    assert "the store is older than one this node ran on" in caplog.text


def run_of(store: Store, boot: str) -> Feed:
    """The feed served by the run `boot` of a node's process on `store`."""
    membership = Membership("origin", "http://origin", clock=time.monotonic, boot=boot)
    return Feed("origin", store, membership)


async def started(data: MemoryData, boot: str) -> Feed:
    """A run of the node's process on `data` begins: its epoch noted, as `Node.open` does."""
    store = MemoryStore(data)
    await store.open()
    feed = run_of(store, boot)
    await feed.begin_epoch()
    return feed


async def written(feed: Feed, *keys: str) -> None:
    for key in keys:
        await feed.store.write(Record(key, "v", make_version(feed.store.last_seq + 100, "origin")))


def pull_from(reply: PullReply, wait: float = 0) -> PullRequest:
    """The next pull of a puller that applied `reply`."""
    return dataclasses.replace(pull(reply.until, reply.instance, wait), epoch=reply.epoch)


async def test_a_position_named_in_this_run_or_an_earlier_one_is_read_on_from() -> None:
    """Every answer names the run that gave it; after a restart the position is read on from."""
    data = MemoryData()
    first = await started(data, "run-1")
    await written(first, "a", "b", "c")
    reply = await first.pull(pull(0, first.store.instance_id, wait=0))
    assert (reply.until, reply.epoch) == (3, "run-1")
    assert (await first.pull(pull_from(reply))).records == []
    await first.store.close()

    second = await started(data, "run-2")
    assert second.epochs.begun == ((0, "run-1"), (3, "run-2"))
    assert (await second.pull(pull_from(reply))).records == []
    await written(second, "d")
    later = await second.pull(pull_from(reply))
    assert ([r.key for r in later.records], later.epoch) == (["d"], "run-2")
    await second.store.close()


@pytest.mark.parametrize(
    ("backup_at", "read_again_from"),
    [
        ("taken while the run ran", 3),  # the run is in the copy's epochs, ending at 3
        ("taken before the run began", 0),  # the run is not in the copy: from the start
    ],
)
async def test_a_position_read_before_the_store_went_back_is_read_again_from_where_both_agree(
    backup_at: str, read_again_from: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 2, with the store put back to an older copy as the same life (a Redis restored
    from a dump), then restarted again before the puller pulls: the feed has grown past the
    puller's position by then, but the positions it counts as read hold writes it never got."""
    data = MemoryData()
    before = backup_at == "taken before the run began"
    if before:
        await written(await started(data, "run-0"), "a", "b", "c")
        backup = MemoryData(data.snapshot)  # the store at position 3, before run-1 began
    first = await started(data, "run-1")
    if not before:
        await written(first, "a", "b", "c")
        backup = MemoryData(data.snapshot)  # the store at position 3, run-1's epoch in it
    await written(first, "d", "e", "f")
    reply = await first.pull(pull(0, first.store.instance_id, wait=0))
    assert (reply.until, reply.epoch) == (6, "run-1")
    await first.store.close()

    restored = await started(backup, "run-2")  # the same life: the puller's instance still
    await written(restored, "new-1", "new-2", "new-3", "new-4")  # at positions 4 to 7
    await restored.store.close()
    again = await started(backup, "run-3")
    assert again.store.last_seq > reply.until

    answer = await again.pull(pull_from(reply))
    assert {r.key for r in answer.records} >= {"new-1", "new-2", "new-3"}
    held = [c.record.key for c in (await again.store.changes_since(read_again_from, 100)).changes]
    assert [r.key for r in answer.records] == held
    assert "the store is older than one this node ran on" in caplog.text
    await again.store.close()


async def test_a_run_whose_epoch_the_store_cannot_note_is_served_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full store at start: the run serves its positions; after the next start, they name an
    epoch the store does not know, and the puller reads the feed again from the start."""
    data = MemoryData()
    first = await started(data, "run-1")
    await written(first, "a", "b")
    data.refuse = StoreFull("no space left on device")
    full = run_of(first.store, "run-2")
    await full.begin_epoch()
    assert "cannot note this run's epoch of the changes feed" in caplog.text
    reply = await full.pull(pull(0, first.store.instance_id, wait=0))
    assert (reply.until, reply.epoch) == (2, "run-2")
    data.refuse = None
    await first.store.close()

    later = await started(data, "run-3")
    assert [r.key for r in (await later.pull(pull_from(reply))).records] == ["a", "b"]
    await later.store.close()
