"""Bulk copies (replication/copy.py) on the memory backend: the `BulkLoad` operation of the write
pipeline, the frames on the wire, and a copy cut half way that resumes from its stored position
and, with the feed read from where the copy began, misses nothing written meanwhile."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace

import pytest

from shareddb.clock import HybridClock
from shareddb.membership import Membership
from shareddb.record import Record, make_version
from shareddb.replication.copy import Copier, serve_copy, wants_copy
from shareddb.replication.copy_frames import (
    CopyChunk,
    CopyDeferred,
    CopyEnd,
    CopyHeader,
    CopyRequest,
    Frame,
    decode_frame,
    encode_frame,
    read_frames,
)
from shareddb.replication.transport import PeerError, PullReply
from shareddb.store.base import Applied, Checkpoint, CopyPosition, Store
from shareddb.store.memory import MemoryData, MemoryStore
from shareddb.store.ops import BulkLoad
from shareddb.store.plan import MergePlan, Tally, plan_batch

WALL = 1_700_000_000_000
SOURCE_URL = "http://source"


def v(hlc: int, node: str = "n1") -> str:
    return make_version(hlc, node)


def random_records(rng: random.Random, count: int) -> list[Record]:
    """Values, tombstones and expiring values over few keys, so versions meet equal and older
    ones: what the merge rule has to sort out."""
    records = []
    for _ in range(count):
        key = f"k{rng.randrange(30)}"
        version = v(rng.randrange(1, 40), rng.choice(["a", "b"]))
        roll = rng.random()
        if roll < 0.25:
            records.append(Record(key, None, version, rng.choice([None, WALL - 1])))
        elif roll < 0.5:
            records.append(Record(key, "exp", version, rng.choice([WALL - 1, WALL + 1])))
        else:
            records.append(Record(key, f"v{rng.randrange(5)}", version))
    return records


@pytest.mark.parametrize("seed", range(20))
def test_load_merges_exactly_as_merge_does_record_by_record(seed: int) -> None:
    rng = random.Random(seed)
    stored = {r.key: (r.value is not None, r.version, r.expires) for r in random_records(rng, 20)}
    records = random_records(rng, 60)
    base = Tally.empty()
    one = MergePlan(dict(stored), 5, 7, base.buckets, WALL)
    many = MergePlan(dict(stored), 5, 7, base.buckets, WALL)
    won = sum(one.merge(r).name != "SUPERSEDED" for r in records)
    assert many.load(records) == won
    assert (many.rows, many.current, many.accepted) == (one.rows, one.current, one.accepted)
    assert (many.seq, many.live, many.buckets) == (one.seq, one.live, one.buckets)


def test_a_bulk_load_plans_its_position_into_node_meta_and_its_end_into_a_checkpoint() -> None:
    position = CopyPosition("src", "inst", 9, "k1")
    chunk = plan_batch([BulkLoad([Record("k1", "x", v(1))], position)], 0, Tally.empty(), {}, {})
    assert chunk.meta == {"copy:src": position.encode()}
    assert chunk.checkpoints == []
    assert chunk.results == [Applied(1, 1, 1)]  # one winner, at feed position 1
    assert not chunk.copied
    end = plan_batch([BulkLoad([], position, done=True)], 0, Tally.empty(), {}, {})
    assert end.meta == {"copy:src": ""}
    assert end.copied
    assert end.checkpoints == [Checkpoint("src", "inst", 9)]


def test_a_position_reads_back_as_written_and_anything_else_as_none() -> None:
    position = CopyPosition("src", "inst", 9, "ключ/\u00e9")
    assert CopyPosition.decode("src", position.encode()) == position
    for text in (None, "", "garbage", "[1, 2, 3]", '["i", "9", ""]', "{}"):
        assert CopyPosition.decode("src", text) is None


def test_frames_round_trip_with_expiries_tombstones_and_groups() -> None:
    records = [
        Record("a", "1", v(1)),
        Record("b", None, v(2)),
        Record("c", "exp", v(3), WALL),
        Record("d", "", v(4)),
    ]
    for frame in (
        CopyHeader("src", "inst", 7, 2, 99, left=True),
        CopyChunk(records, [(1, 3)], "d"),
        CopyEnd(3),
    ):
        encoded = encode_frame(frame)
        assert list(read_frames(encoded)) == [frame]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"keys": ["a"], "values": [], "versions": [], "expires": [], "groups": [], "after": "a"}',
        b'{"keys": [1], "values": ["x"], "versions": ["v"], "expires": [], "groups": [], "after": ""}',
        b'{"keys": ["a"], "values": ["x"], "versions": [""], "expires": [], "groups": [], "after": ""}',
        b'{"keys": ["a"], "values": [1], "versions": ["v"], "expires": [], "groups": [], "after": ""}',
        b'{"keys": ["a"], "values": ["x"], "versions": ["v"], "expires": [[5, 1]], "groups": [], '
        b'"after": ""}',
        b'{"keys": ["a"], "values": ["x"], "versions": ["v"], "expires": [], "groups": [[0, 2]], '
        b'"after": ""}',
        b'{"node": "n"}',
    ],
)
def test_a_frame_that_is_not_one_is_a_peer_error(body: bytes) -> None:
    with pytest.raises(PeerError):
        decode_frame(body)


# -- a copy from one memory store to another -----------------------------------------------------


class Source:
    """The source's side of a copy, in-process: its real `serve_copy`, a stream that can be cut
    after a number of chunks, and writes made on the source while the copy is under way."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.membership = Membership("src", SOURCE_URL, "aaaaaaaaaaaa", clock=lambda: 0.0)
        self.requests: list[CopyRequest] = []
        self.cut_after: int | None = None  # chunks
        self.meanwhile: list[Record] = []  # written on the source after the first chunk

    async def copy(self, url: str, request: CopyRequest) -> AsyncGenerator[Frame, None]:
        assert url == SOURCE_URL
        self.requests.append(request)
        chunks = 0
        frames = serve_copy("src", self.store, self.membership, request)
        try:
            async for frame in frames:
                yield frame
                if isinstance(frame, CopyChunk):
                    chunks += 1
                    if chunks == 1:
                        for record in self.meanwhile:
                            await self.store.write(record)
                        self.meanwhile = []
                    if chunks == self.cut_after:
                        raise PeerError("the connection broke")
        finally:
            await frames.aclose()


def copier_of(store: Store, source: Source, chunk: int = 10) -> Copier:
    membership = Membership("dst", "http://dst", "bbbbbbbbbbbb", clock=lambda: 0.0)
    return Copier(
        store, HybridClock(), membership, source.copy, node_id="dst", now=lambda: WALL, chunk=chunk
    )


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MemoryStore, MemoryStore, MemoryData]]:
    source, target_data = MemoryStore(), MemoryData()
    target = MemoryStore(target_data)
    await source.open()
    await target.open()
    yield source, target, target_data
    await source.close()
    await target.close()


async def test_a_copy_cut_half_way_resumes_after_its_last_chunk_and_misses_nothing(
    pair: tuple[MemoryStore, MemoryStore, MemoryData],
) -> None:
    source, target, target_data = pair
    await source.apply([Record(f"k{i:03d}", f"v{i}", v(i + 1)) for i in range(100)])
    await source.transact([], [Record("k005", "t", v(200)), Record("k095", "t", v(201))])
    feed_at_start = source.last_seq
    side = Source(source)
    # Written during the copy: a key already copied, one not yet, a delete of each kind, a new key.
    side.meanwhile = [
        Record("k001", "changed", v(300)),
        Record("k090", "changed", v(301)),
        Record("k002", None, v(302)),
        Record("k080", None, v(303)),
        Record("k000a", "new", v(304)),
    ]
    side.cut_after = 4
    copier = copier_of(target, side)
    copier.want("src")
    with pytest.raises(PeerError):
        await copier.run(SOURCE_URL, "src")
    saved = CopyPosition.decode("src", await target.get_meta("copy:src"))
    assert saved is not None
    assert saved.seq == feed_at_start
    assert saved.after > ""
    first_run = side.membership.boot
    assert saved.epoch == first_run

    # Both restart: a new copier finds the position and resumes right after it. The position
    # stays one of the feed's epoch where the copy began (replication/epochs.py).
    await target.close()
    target = MemoryStore(target_data)
    await target.open()
    side.cut_after = None
    side.membership = Membership("src", SOURCE_URL, "aaaaaaaaaaaa", clock=lambda: 0.0)
    again = copier_of(target, side)
    assert await again.pending("src")
    checkpoint = await again.run(SOURCE_URL, "src")
    assert checkpoint == Checkpoint("src", source.instance_id, feed_at_start, first_run)
    assert side.requests[1].after == saved.after
    assert await target.checkpoint("src") == checkpoint
    assert not await copier_of(target, side).pending("src")

    # Then the feed from where the copy began brings what the copy did not.
    page = await source.changes_since(checkpoint.seq, 10_000)
    await target.apply([c.record for c in page.changes])
    assert target.digest() == source.digest()
    assert await target.get("k002") == Record("k002", None, v(302))
    assert await target.get("k080") == Record("k080", None, v(303))
    await target.close()


async def test_a_copy_keeps_each_transaction_whole_in_one_commit(
    pair: tuple[MemoryStore, MemoryStore, MemoryData],
) -> None:
    source, target, target_data = pair
    await source.apply([Record(f"k{i:02d}", "old", v(1)) for i in range(40)])
    await source.transact([], [Record("k03", "t", v(10)), Record("k37", "t", v(11))])
    commits = target_data.commits
    assert await copier_of(target, Source(source), chunk=5).run(SOURCE_URL, "src") is not None
    assert await target.get("k37") == Record("k37", "t", v(11))
    # The transaction came whole, with the chunk of its first key, and is one entry of the
    # target's feed (a node pulling from the target gets it whole too).
    entries = {c.txn for c in (await target.changes_since(0, 10_000)).changes if c.txn}
    assert len(entries) == 1
    (at,) = entries
    assert (await target.changes_since(at - 1, 1)).changes[0].record.key == "k03"
    unit = (await target.changes_since(at - 1, 1)).changes
    assert [c.record for c in unit] == [Record("k03", "t", v(10)), Record("k37", "t", v(11))]
    assert at <= 5 + 2  # k00, k01, k02, then the transaction, in the first chunk
    assert target_data.commits > commits


async def test_a_node_that_holds_what_the_source_holds_copies_nothing(
    pair: tuple[MemoryStore, MemoryStore, MemoryData],
) -> None:
    source, target, target_data = pair
    records = [Record(f"k{i}", "v", v(i + 1)) for i in range(30)]
    await source.apply(records)
    await target.apply(list(reversed(records)))
    side = Source(source)
    commits = target_data.commits
    checkpoint = await copier_of(target, side).run(SOURCE_URL, "src")
    assert checkpoint == Checkpoint("src", source.instance_id, source.last_seq, side.membership.boot)
    assert side.requests[0].digest == target.digest().digest
    assert target_data.commits == commits + 1  # only the end of the copy


async def test_a_source_that_left_the_cluster_is_not_copied(
    pair: tuple[MemoryStore, MemoryStore, MemoryData],
) -> None:
    source, target, _ = pair
    await source.apply([Record("k", "v", v(1))])
    side = Source(source)
    side.membership.self_entry = replace(side.membership.self_entry, left=True)
    copier = copier_of(target, side)
    copier.want("src")
    assert await copier.run(SOURCE_URL, "src") is None
    assert await target.get("k") is None
    assert not await copier.pending("src")


def reply(last_seq: int, until: int, floor: int = 0, instance: str = "i1") -> PullReply:
    return PullReply("src", instance, until, last_seq, [], [], floor=floor)


def test_a_node_copies_a_peer_it_has_nothing_of_only_when_one_page_did_not_bring_it_all() -> None:
    assert wants_copy(reply(100, 4), None)
    assert not wants_copy(reply(4, 4), None)
    assert wants_copy(reply(100, 4), Checkpoint("src", "i0", 50))  # the peer's store is new
    assert not wants_copy(reply(100, 100), Checkpoint("src", "i0", 50))


def test_a_node_copies_a_peer_below_its_feed_floor_or_far_behind_it() -> None:
    assert wants_copy(reply(100, 60, floor=40), Checkpoint("src", "i1", 30))
    assert not wants_copy(reply(100, 60, floor=30), Checkpoint("src", "i1", 30))
    assert not wants_copy(reply(1_000_000, 900_000), Checkpoint("src", "i1", 895_000))
    assert not wants_copy(reply(1_000_000, 600_000), Checkpoint("src", "i1", 595_000))
    assert wants_copy(reply(1_000_000, 5_000), Checkpoint("src", "i1", 0))
    assert wants_copy(reply(101_000, 6_000), Checkpoint("src", "i1", 1_000))


async def test_a_node_waiting_for_a_busy_source_serves_copies_meanwhile(
    pair: tuple[MemoryStore, MemoryStore, MemoryData],
) -> None:
    """Two nodes that each want to copy the other, each busy copying: the one told to wait must
    not hold its copy lock while it waits, or each refuses the other for ever."""
    _, target, _ = pair
    copier: Copier

    async def busy_source(url: str, request: CopyRequest) -> AsyncGenerator[Frame, None]:
        raise CopyDeferred("src is copying a data set itself")
        yield  # an async generator that fails on its first frame  # pragma: no cover

    membership = Membership("dst", "http://dst", "bbbbbbbbbbbb", clock=lambda: 0.0)
    copier = Copier(
        target, HybridClock(), membership, busy_source, node_id="dst", now=lambda: WALL, chunk=10
    )
    copier.want("src")
    waiting = asyncio.get_running_loop().create_task(copier.run(SOURCE_URL, "src"))
    for _ in range(5000):  # the memory store answers within a few loop steps
        if copier._deferred:
            break
        await asyncio.sleep(0.001)
    assert copier._deferred == {"src"}, "the copy was never told to wait"
    assert not copier.busy, "a node waiting for another's copy still refuses copies itself"
    assert await waiting is None
