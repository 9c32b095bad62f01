"""What the Redis store adds to the contract: whole batches, a Redis that fails under it, and a Redis
that is no longer the one it wrote to.

Every test runs a real redis-server of its own (tests/harness/redis.py) and, after each fault,
checks the raw Redis content against itself (`stored_state`): every record has its sequence number,
its version index entry, its place in the key order, in the expiry index and in the digest, every
transaction entry its place in the feed, and the meta agrees.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import orjson
import pytest
from redis.asyncio import Redis

from shareddb.record import Record, make_version
from shareddb.redis_urls import check_redis_url, redact_url
from shareddb.store.base import (
    DIGEST_BUCKETS,
    Change,
    Checkpoint,
    Outcome,
    Store,
    StoreFull,
    StoreUnavailable,
    bucket_of,
    record_hash,
)
from shareddb.store.memory import MemoryStore
from shareddb.store.redis import RedisStore
from shareddb.store.redis_scripts import WRITE, bucket_member
from tests.harness import RedisServer, eventually, running_redis

PREFIX = b"sdb:"


def v(hlc: int, node: str = "n1") -> str:
    return make_version(hlc, node)


def put(key: str, value: str, hlc: int) -> Record:
    return Record(key, value, v(hlc))


def seeded_rng() -> random.Random:
    seed = int(os.environ.get("SHAREDDB_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed}")
    return random.Random(seed)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis without persistence."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that fsyncs its append-only file on every write."""
    with running_redis(tmp_path / "redis-aof", aof=True) as server:
        yield server


OpenStore = Callable[[str], Awaitable[RedisStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[OpenStore]:
    """`await open_store(url)`: an opened RedisStore, closed at the end of the test."""
    opened: list[RedisStore] = []

    async def open_(url: str) -> RedisStore:
        store = RedisStore(url)
        await store.open()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


# -- the raw Redis content, checked against itself ---------------------------------------------


@dataclass
class Stored:
    records: dict[str, Record]
    seq: int
    live: int
    buckets: tuple[int, ...]
    checkpoints: dict[bytes, bytes]
    entries: dict[int, bytes]  # transaction entries by seq
    covered: dict[str, int]  # key -> the seq of the entry that covers its row
    loose: set[int]  # entries that may cover no row any more


def parse_record(key: str, raw: bytes) -> Record:
    """A record as the layout of store/redis_scripts.py keeps it (written out again, to check it)."""
    head, is_live, value = raw.partition(b"\0")
    version, _, expires = head.partition(b"\1")
    return Record(
        key, value.decode() if is_live else None, version.decode(), int(expires) if expires else None
    )


async def stored_state(url: str) -> Stored:
    """Read everything the store keeps in Redis and fail on any disagreement inside it."""
    client = Redis.from_url(url)
    try:
        meta = {k.decode(): v.decode() for k, v in (await _hash(client, "meta")).items()}
        rec = await _hash(client, "rec")
        ver = await _hash(client, "ver")
        feed = await _zset(client, "seq")
        live = set(await _zset(client, "live"))
        tombs = await _zset(client, "tomb")
        digest = await _hash(client, "digest")
        checkpoints = await _hash(client, "cp")
        exp = await _zset(client, "exp")
        txn = await _zset(client, "txn")
        bodies = await _hash(client, "entry")
        loose = {int(at) for at in await client.smembers(PREFIX + b"loose")}
        indexed = set(await _zset(client, "bkt"))
    finally:
        await client.aclose()
    seqs = {member: at for member, at in feed.items() if not member.startswith(b"\0")}
    markers = {int(member[1:]): at for member, at in feed.items() if member.startswith(b"\0")}
    entries = {int(at): body for at, body in bodies.items()}
    assert set(markers) == set(entries), "the feed names other transaction entries than are kept"
    assert all(markers[at] == at for at in markers)
    covered = {m.decode(): int(at) for m, at in txn.items() if not m.startswith(b"\0")}
    assert {int(m[1:]): at for m, at in txn.items() if m.startswith(b"\0")} == markers
    assert loose <= set(entries), "an entry that is gone is still looked at by purges"
    uncovered = set(entries) - set(covered.values())
    assert uncovered <= loose, f"entries {uncovered} cover no row and no purge would drop them"
    records: dict[str, Record] = {}
    buckets = [0] * DIGEST_BUCKETS
    for raw_key, raw in rec.items():
        key = raw_key.decode()
        record = parse_record(key, raw)
        records[key] = record
        head = raw.partition(b"\0")[0]
        assert ver[raw_key] == (b"-" if record.deleted else b"+") + head, key
        assert raw_key in seqs, f"{key} has no sequence number"
        assert (raw_key in live) == (not record.deleted), key
        assert (raw_key in tombs) == record.deleted, key
        if record.deleted:
            assert tombs[raw_key] == seqs[raw_key], key
        expires = None if record.deleted else record.expires
        assert exp.get(raw_key) == expires, f"{key} expires at {expires}, not {exp.get(raw_key)}"
        if key in covered:
            assert covered[key] in entries, f"{key} is covered by an entry that is gone"
            taken = dict((k, at) for at, k in orjson.loads(entries[covered[key]]))
            assert taken.get(key) == seqs[raw_key], f"{key} is not the write of its entry"
        buckets[bucket_of(key)] ^= record_hash(key, record.version)
    assert set(ver) == set(rec) == set(seqs), "the indexes name other keys than the records"
    assert indexed == {bucket_member(key) for key in rec}, "the bucket index names other keys"
    assert live <= set(rec)
    assert set(tombs) <= set(rec)
    assert set(exp) <= set(rec)
    assert set(covered) <= set(records)
    assert len(set(seqs.values())) == len(seqs), "two records share a sequence number"
    assert max(feed.values(), default=0) <= int(meta["seq"])
    assert int(meta["live"]) == len(live)
    stored_buckets = [0] * DIGEST_BUCKETS
    for bucket, value in digest.items():
        stored_buckets[int(bucket)] = int.from_bytes(value, "big")
    assert stored_buckets == buckets, "the digest buckets do not match the records"
    return Stored(
        records, int(meta["seq"]), len(live), tuple(buckets), checkpoints, entries, covered, loose
    )


async def _hash(client: Redis, part: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], await client.hgetall(PREFIX + part.encode()))


async def _zset(client: Redis, part: str) -> dict[bytes, int]:
    members = await client.zrange(PREFIX + part.encode(), 0, -1, withscores=True)
    return {member: int(score) for member, score in cast(list[tuple[bytes, float]], members)}


async def assert_store_matches_redis(store: RedisStore) -> Stored:
    stored = await stored_state(store.url)
    assert store.last_seq == stored.seq
    assert store.digest().count == stored.live
    assert store.digest().buckets == stored.buckets
    return stored


# -- a proxy that loses the answer to a write --------------------------------------------------

WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()


class CuttingProxy:
    """A TCP proxy to Redis that can cut the connection carrying the next write script.

    `cut(forward=True)`: the script reaches Redis and runs, its reply is swallowed, and both sides
    are closed: the store cannot know whether its batch committed. `forward=False` drops the
    script instead. `refusing` closes every new connection at once (Redis "unreachable").
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.refusing = False
        self.refuse_after_cut = False
        self._armed: bool | None = None  # forward the cut script?
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self, *, forward: bool, then_refuse: bool = False) -> None:
        self._armed = forward
        self.refuse_after_cut = then_refuse

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        swallowed = asyncio.Event()
        swallow = False

        async def replies() -> None:
            while data := await up_reader.read(65536):
                if swallow:
                    swallowed.set()
                    continue
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.get_running_loop().create_task(replies())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            while data := await reader.read(1 << 20):
                if self._armed is not None and WRITE_SHA in data:
                    forward, self._armed = self._armed, None
                    swallow = True
                    if forward:
                        up_writer.write(data)
                        await up_writer.drain()
                        await swallowed.wait()  # Redis ran it and answered; the answer is lost
                    self.cuts += 1
                    self.refusing = self.refuse_after_cut
                    break
                up_writer.write(data)
                await up_writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            up_writer.close()
            task.cancel()


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[CuttingProxy]:
    cutting = CuttingProxy(redis_server.port)
    await cutting.start()
    yield cutting
    await cutting.close()


def proxied_url(proxy: CuttingProxy) -> str:
    assert proxy._server is not None
    return f"redis://127.0.0.1:{proxy._server.sockets[0].getsockname()[1]}/0"


# -- whole batches -------------------------------------------------------------------------------


async def test_mixed_batches_leave_every_record_with_its_sequence_and_digest(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    store = await open_store(redis_server.url())
    writes = [put(f"k{i}", f"v{i}", i + 1) for i in range(30)]
    await asyncio.gather(
        *(store.write(record) for record in writes),
        store.apply([put(f"k{i}", "peer", 100 + i) for i in range(0, 30, 3)], Checkpoint("p", "i", 5)),
        store.write(Record("k1", None, v(200))),
        store.set_meta("members", "[]"),
    )
    await store.apply([Record(f"gone{i}", None, v(300 + i)) for i in range(5)])
    assert await store.purge_tombstones(store.last_seq, v(10**9)) == 6  # gone0..4 and k1

    stored = await assert_store_matches_redis(store)
    assert "k1" not in stored.records
    assert stored.records["k3"] == put("k3", "peer", 103)
    assert stored.checkpoints == {b"p": b"5 i"}


async def test_a_batch_redis_refuses_changes_nothing_and_the_store_goes_on(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """Out of memory, Redis refuses the write script before it starts: the batch is all or nothing."""
    store = await open_store(redis_server.url())
    await store.apply([put("k", "v1", 1)], Checkpoint("peer", "inst", 1))
    before = await assert_store_matches_redis(store)
    admin = Redis.from_url(redis_server.url())
    try:
        await admin.config_set("maxmemory", 1)
        # StoreFull: the node answers 507 and its pullers back off, as on a full disk.
        with pytest.raises(StoreFull, match="maxmemory"):
            await store.apply([put("k", "v2", 2), put("j", "w", 2)], Checkpoint("peer", "inst", 2))
        with pytest.raises(StoreFull, match="maxmemory"):
            await store.set_meta("name", "value")
        with pytest.raises(StoreFull, match="cannot write"):
            await store.write(put("k", "v2", 2))
        assert await store.get("k") == put("k", "v1", 1)  # reads go on
        after = await assert_store_matches_redis(store)
        assert after == before
        assert await store.checkpoint("peer") == Checkpoint("peer", "inst", 1)
        assert await store.get_meta("name") is None
        await admin.config_set("maxmemory", 0)
    finally:
        await admin.aclose()
    assert (await store.apply([put("k", "v3", 3)], Checkpoint("peer", "inst", 3))).won == 1
    assert await store.get("k") == put("k", "v3", 3)
    assert (await assert_store_matches_redis(store)).seq == 2


async def test_a_batch_is_refused_whole_when_a_store_key_has_the_wrong_type(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """Every check of the write script comes before its first write."""
    store = await open_store(redis_server.url())
    await store.write(put("a", "1", 1))
    before = await assert_store_matches_redis(store)
    admin = Redis.from_url(redis_server.url())
    try:
        # The last key the script writes: the batch is a transaction, so it writes an entry.
        await admin.set(PREFIX + b"entry", "not a hash")
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await store.apply([put("b", "2", 2), Record("a", None, v(3))], groups=[(0, 2)])
        await admin.delete(PREFIX + b"entry")
    finally:
        await admin.aclose()
    assert await assert_store_matches_redis(store) == before
    assert await store.get("b") is None
    assert (await store.apply([put("b", "2", 2), Record("a", None, v(3))], groups=[(0, 2)])).won == 2
    assert sorted((await assert_store_matches_redis(store)).covered) == ["a", "b"]


# -- a lost answer -------------------------------------------------------------------------------


async def test_a_write_whose_answer_was_lost_is_found_committed_and_acknowledged(
    proxy: CuttingProxy, open_store: OpenStore
) -> None:
    store = await open_store(proxied_url(proxy))
    await store.write(put("first", "1", 1))
    proxy.cut(forward=True)
    assert await store.write(put("k", "v", 2)) is Outcome.CREATED
    assert proxy.cuts == 1
    assert await store.get("k") == put("k", "v", 2)
    stored = await assert_store_matches_redis(store)
    assert stored.seq == 2
    assert await store.write(put("k", "w", 3)) is Outcome.UPDATED
    assert (await assert_store_matches_redis(store)).seq == 3


async def test_a_write_cut_off_before_its_outcome_is_known_is_settled_before_the_next_batch(
    proxy: CuttingProxy, open_store: OpenStore
) -> None:
    """The script ran, its answer never came, and Redis then went unreachable: the write fails
    with StoreUnavailable; once Redis is back the store finds the batch committed and takes over
    its sequence numbers and digest before it writes anything else."""
    store = await open_store(proxied_url(proxy))
    await store.write(put("first", "1", 1))
    proxy.cut(forward=True, then_refuse=True)
    with pytest.raises(StoreUnavailable, match="not known"):
        await store.write(put("k", "v", 2))
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    proxy.refusing = False
    assert await store.write(put("j", "w", 3)) is Outcome.CREATED
    assert await store.get("k") == put("k", "v", 2)
    assert store.last_seq == 3
    stored = await assert_store_matches_redis(store)
    assert sorted(stored.records) == ["first", "j", "k"]


async def test_a_write_that_never_reached_redis_is_fenced_off_and_its_sequence_reused(
    proxy: CuttingProxy, open_store: OpenStore
) -> None:
    store = await open_store(proxied_url(proxy))
    await store.write(put("first", "1", 1))
    proxy.cut(forward=False, then_refuse=True)
    with pytest.raises(StoreUnavailable):
        await store.write(put("k", "v", 2))
    proxy.refusing = False
    assert await store.write(put("j", "w", 3)) is Outcome.CREATED
    assert await store.get("k") is None
    assert store.last_seq == 2
    stored = await assert_store_matches_redis(store)
    assert sorted(stored.records) == ["first", "j"]


# -- Redis going away ----------------------------------------------------------------------------


async def test_every_call_fails_while_redis_is_down_and_works_again_after(
    aof_redis: RedisServer, open_store: OpenStore
) -> None:
    """Invariant 1: nothing acknowledged is lost when Redis (appendfsync always) crashes."""
    store = await open_store(aof_redis.url())
    await store.apply([put(f"k{i}", f"v{i}", i + 1) for i in range(10)], Checkpoint("p", "i", 3))
    await store.set_meta("name", "value")
    await store.write(Record("k3", None, v(50)))
    before = await assert_store_matches_redis(store)

    aof_redis.kill()
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: store.get("never-cached"),
        "write": lambda: store.write(put("new", "v", 100)),
        "apply": lambda: store.apply([put("new", "v", 100)]),
        "set_meta": lambda: store.set_meta("other", "v"),
        "get_meta": lambda: store.get_meta("name"),
        "checkpoint": lambda: store.checkpoint("p"),
        "scan": lambda: store.scan("", None, 10),
        "changes_since": lambda: store.changes_since(0, 10),
        "bucket_versions": lambda: store.bucket_versions(0),
        "purge_tombstones": lambda: store.purge_tombstones(100, v(10**9)),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable):
            await call()
        print(f"{name}: StoreUnavailable")
    assert store.last_seq == before.seq

    aof_redis.start()
    assert await store.write(put("new", "v", 100)) is Outcome.CREATED
    stored = await assert_store_matches_redis(store)
    assert {k: r for k, r in stored.records.items() if k != "new"} == before.records
    assert await store.get_meta("name") == "value"
    assert await store.checkpoint("p") == Checkpoint("p", "i", 3)
    assert [r.key for r in await store.scan("k", None, 100)] == sorted(
        f"k{i}" for i in range(10) if i != 3
    )


async def test_redis_killed_under_a_write_load_loses_no_acknowledged_write(
    aof_redis: RedisServer, open_store: OpenStore
) -> None:
    """Invariant 1 and 5: with appendfsync always, every acknowledged write survives a kill -9 of
    Redis in the middle of a group-committed load, and no record is left without its sequence."""
    rng = seeded_rng()
    store = await open_store(aof_redis.url())
    acked: dict[str, Record] = {}
    failures = 0
    healed = asyncio.Event()
    healed.set()
    stop = False

    async def writer(name: str) -> None:
        nonlocal failures
        n = 0
        while not stop:
            n += 1
            record = put(f"{name}/{n}", "x" * rng.randrange(200), 1000 + n)
            try:
                assert await store.write(record) is Outcome.CREATED
            except StoreUnavailable:
                failures += 1
                await healed.wait()
            else:
                acked[record.key] = record

    writers = [asyncio.create_task(writer(f"w{i}")) for i in range(16)]
    try:
        await eventually(lambda: len(acked) >= 300, "300 acknowledged writes")
        healed.clear()
        aof_redis.kill()
        seen = len(acked)
        await eventually(lambda: failures >= len(writers), "every writer to fail")
        aof_redis.start()
        healed.set()
        await eventually(lambda: len(acked) >= seen + 300, "300 more acknowledged writes")
    finally:
        stop = True
        healed.set()
        await asyncio.gather(*writers)
    stored = await assert_store_matches_redis(store)
    missing = [key for key, record in acked.items() if stored.records.get(key) != record]
    assert not missing, f"acknowledged writes lost: {missing[:10]}"


async def test_a_paused_redis_times_out_with_store_unavailable_and_the_store_recovers(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """A Redis that stops answering fails calls after the socket timeout; a write sent meanwhile
    may or may not land, but the store and Redis agree afterwards."""
    store = await open_store(redis_server.url() + "?socket_timeout=0.3")
    await store.write(put("a", "1", 1))
    redis_server.pause()
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("not-cached")
        with pytest.raises(StoreUnavailable):
            await store.write(put("b", "2", 2))
    finally:
        redis_server.resume()
    assert await store.write(put("c", "3", 3)) is Outcome.CREATED
    stored = await assert_store_matches_redis(store)
    assert set(stored.records) in ({"a", "c"}, {"a", "b", "c"})
    assert await store.get("b") == stored.records.get("b")


# -- expiry, transactions and the layout before them -----------------------------------------------

WALL = 1_700_000_000_000


async def test_expiry_transactions_and_purges_keep_every_index_in_step(
    redis_server: RedisServer,
) -> None:
    clock = [WALL]
    store = RedisStore(redis_server.url(), now=lambda: clock[0])
    await store.open()
    try:
        await store.write(Record("e1", "x", v(1), WALL + 1000))
        await store.write(Record("e2", "y", v(2), WALL + 5000))
        await store.transact([], [put("a", "1", 3), Record("b", "2", v(4), WALL + 9000)])
        entry = store.last_seq
        await store.apply([put("c", "3", 5), put("e2", "old", 1)], groups=[(0, 2)])
        await store.write(put("a", "again", 6))
        stored = await assert_store_matches_redis(store)
        assert stored.covered == {"b": entry, "c": store.last_seq - 1}
        assert sorted(stored.entries) == [entry, store.last_seq - 1]
        assert stored.records["b"] == Record("b", "2", v(4), WALL + 9000)

        clock[0] = WALL + 1000
        await store.reap()  # e1 becomes a tombstone; the reaper may have done it already
        stored = await assert_store_matches_redis(store)
        assert stored.records["e1"] == Record("e1", None, v(1))

        assert await store.purge_tombstones(store.last_seq, v(10**9)) == 1
        stored = await assert_store_matches_redis(store)
        assert "e1" not in stored.records
        assert store.feed_floor == store.last_seq
        # The entries still cover rows: a purge keeps them.
        assert sorted(stored.entries) == [entry, entry + 1]
        assert stored.covered == {"b": entry, "c": entry + 1}
        assert stored.loose == set()

        # Written again, their rows are covered no more: the next purge drops them.
        await store.write(put("b", "again", 7))
        await store.transact([], [put("c", "again", 8), put("d", "new", 9)])
        stored = await assert_store_matches_redis(store)
        assert sorted(stored.entries) == [entry, entry + 1, store.last_seq]
        assert stored.loose == {entry, entry + 1}
        assert await store.purge_tombstones(store.last_seq, v(10**9)) == 0
        stored = await assert_store_matches_redis(store)
        assert sorted(stored.entries) == [store.last_seq]
        assert stored.covered == {"c": store.last_seq, "d": store.last_seq}
        assert stored.loose == set()
    finally:
        await store.close()


async def random_history_step(store: Store, rng: random.Random, hlc: int) -> int:
    """One random operation (writes, deletes, transactions, peer groups with records this store
    does not take, purges) from a seeded generator: the same on every store it is replayed on.
    Answers the next free clock value."""
    keys = [f"k{i}" for i in range(6)]

    def record(at: int) -> Record:
        key = rng.choice(keys)
        return Record(key, None, v(at, "n2")) if rng.random() < 0.3 else put(key, f"v{at}", at)

    kind = rng.randrange(5)
    if kind == 0:
        await store.write(record(hlc))
        return hlc + 1
    if kind == 1:
        records = {r.key: r for r in (record(hlc + i) for i in range(rng.randint(2, 4)))}
        await store.transact([], list(records.values()))
        return hlc + 5
    if kind in (2, 3):  # a peer's transaction, some of it older than what this store holds
        records = {r.key: r for r in (record(rng.randint(1, hlc + i)) for i in range(3))}
        await store.apply(list(records.values()), groups=[(0, len(records))])
        return hlc + 5
    await store.purge_tombstones(rng.randint(0, store.last_seq), v(10**9))
    return hlc


async def test_the_feed_of_a_random_history_is_the_memory_stores_and_every_index_stays_in_step(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """The feed script serves transaction entries (the closure over the entries covering their
    rows) as the shared Python code does: replayed on a memory store, every page is the same."""
    seed = seeded_rng().randrange(2**32)
    redis_store = await open_store(redis_server.url())
    memory = MemoryStore()
    await memory.open()
    try:
        hlcs = [1, 1]
        for step in range(120):
            for i, store in enumerate((redis_store, memory)):
                rng = random.Random(seed + step)
                hlcs[i] = await random_history_step(store, rng, hlcs[i])
            if step % 10 != 9:
                continue
            await assert_store_matches_redis(redis_store)
            assert redis_store.last_seq == memory.last_seq
            for limit in (1, 2, 1000):
                at = 0
                while True:
                    page = await redis_store.changes_since(at, limit)
                    assert page == await memory.changes_since(at, limit), (step, at, limit)
                    if not page.changes:
                        break
                    at = page.until
    finally:
        await memory.close()


async def test_an_entry_kept_with_its_records_as_entries_first_were_serves_the_same(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    store = await open_store(redis_server.url())
    await store.transact([], [put("a", "1", 1), put("b", "2", 2)])
    await store.write(put("a", "2", 3))
    expected = await store.changes_since(0, 10)
    client = Redis.from_url(redis_server.url())
    try:  # the body as entries were first written: [seq, key, value, version, expires]
        old = [[1, "a", "1", v(1), None], [2, "b", "2", v(2), None]]
        await client.hset(PREFIX + b"entry", "2", orjson.dumps(old))
    finally:
        await client.aclose()
    assert await store.changes_since(0, 10) == expected
    assert [c.record.key for c in expected.changes] == ["a", "b", "a"]


async def test_a_store_written_before_expiry_and_transactions_opens_and_reads_as_it_was(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """Format 1, as an earlier shareddb left it in a user's Redis: no floor, no expiries, no
    transaction entries. It opens, reads the same, and takes the new kinds of writes."""
    instance = "0123456789abcdef0123456789abcdef"
    a, b = put("a", "one", 1), Record("b", None, v(3))
    buckets = [0] * DIGEST_BUCKETS
    for record in (a, b):
        buckets[bucket_of(record.key)] ^= record_hash(record.key, record.version)
    admin = Redis.from_url(redis_server.url())
    try:
        meta = {"instance": instance, "batch": "t0", "format": "1", "seq": 3, "live": 1, "hlc": 77}
        await admin.hset(PREFIX + b"meta", mapping=meta)  # type: ignore[arg-type]
        await admin.hset(PREFIX + b"rec", mapping={"a": f"{v(1)}\0one", "b": v(3)})
        await admin.hset(PREFIX + b"ver", mapping={"a": f"+{v(1)}", "b": f"-{v(3)}"})
        await admin.zadd(PREFIX + b"seq", {"a": 1, "b": 3})
        await admin.zadd(PREFIX + b"live", {"a": 0})
        await admin.zadd(PREFIX + b"tomb", {"b": 3})
        digest = {i: h.to_bytes(16, "big") for i, h in enumerate(buckets) if h}
        await admin.hset(PREFIX + b"digest", mapping=digest)  # type: ignore[arg-type]

        store = await open_store(redis_server.url())
        assert (store.instance_id, store.last_seq, store.clock_high, store.feed_floor) == (
            instance,
            3,
            77,
            0,
        )
        assert (await store.get("a"), await store.get("b")) == (a, b)
        assert await store.scan("", None, 10) == [a]
        assert (await store.changes_since(0, 10)).changes == [Change(1, a), Change(3, b)]
        assert (store.digest().count, store.digest().buckets) == (1, tuple(buckets))
        assert await admin.hget(PREFIX + b"meta", "format") == b"3"
        assert await store.bucket_versions(bucket_of("b")) == {"b": v(3)}

        later = Record("x", "v", v(10), 4_000_000_000_000)
        assert await store.write(later) is Outcome.CREATED
        await store.transact([], [put("a", "two", 11), put("c", "3", 12)])
        assert await store.get("x") == later
        assert (await store.changes_since(3, 10)).changes == [
            Change(4, later),
            Change(5, put("a", "two", 11), 6),
            Change(6, put("c", "3", 12), 6),
        ]
        await assert_store_matches_redis(store)
    finally:
        await admin.aclose()


async def test_a_store_written_before_the_bucket_index_gets_it_when_it_opens(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """Format 2, as the shareddb before the `bkt` index left it (that index aside, the layout is
    the same): it opens, its buckets list their keys, and it is marked format 3."""
    store = await open_store(redis_server.url())
    await store.apply([put(f"k{i}", str(i), i + 1) for i in range(3000)])
    await store.write(Record("k5", None, v(5000)))
    await store.transact([], [put("t1", "a", 6000), put("t2", "b", 6000)])
    expected = {b: await store.bucket_versions(b) for b in range(DIGEST_BUCKETS)}
    await store.close()
    admin = Redis.from_url(redis_server.url())
    try:
        # What that shareddb left, and a stale member of a build cut off half way.
        await admin.delete(PREFIX + b"bkt")
        await admin.zadd(PREFIX + b"bkt", {bucket_member(b"purged-since"): 0})
        await admin.hset(PREFIX + b"meta", "format", "2")

        store = await open_store(redis_server.url())
        assert await admin.hget(PREFIX + b"meta", "format") == b"3"
        assert {b: await store.bucket_versions(b) for b in range(DIGEST_BUCKETS)} == expected
        assert sum(map(len, expected.values())) == 3002
        await store.write(put("later", "x", 7000))
        assert (await store.bucket_versions(bucket_of("later")))["later"] == v(7000)
        await assert_store_matches_redis(store)
    finally:
        await admin.aclose()


# -- a Redis that is not this store's any more ---------------------------------------------------


async def test_a_redis_that_restarted_empty_is_refused_not_read_as_an_empty_store(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    store = await open_store(redis_server.url())
    await store.write(put("a", "1", 1))
    redis_server.kill()
    redis_server.start()  # no persistence: everything is gone
    with pytest.raises(StoreUnavailable, match="no longer holds this node's store"):
        await store.get("never-cached")
    with pytest.raises(StoreUnavailable, match="no longer holds"):
        await store.write(put("b", "2", 2))
    with pytest.raises(StoreUnavailable, match="no longer holds"):
        await store.get("a")  # not even from the cache
    fresh = await open_store(redis_server.url())
    assert fresh.instance_id != store.instance_id
    assert fresh.last_seq == 0


async def test_a_second_writer_on_the_same_database_is_stopped_before_it_writes(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    first = await open_store(redis_server.url())
    second = await open_store(redis_server.url())
    await first.write(put("a", "1", 1))
    with pytest.raises(StoreUnavailable, match="someone else"):
        await second.write(put("b", "2", 2))
    with pytest.raises(StoreUnavailable, match="someone else"):
        await second.get("a")
    assert await first.write(put("c", "3", 3)) is Outcome.CREATED
    stored = await assert_store_matches_redis(first)
    assert sorted(stored.records) == ["a", "c"]


async def test_keys_of_another_prefix_are_left_alone(redis_server: RedisServer) -> None:
    one = RedisStore(redis_server.url(), prefix="one:")
    two = RedisStore(redis_server.url(), prefix="two:")
    await one.open()
    await two.open()
    try:
        await one.write(put("k", "1", 1))
        assert await two.get("k") is None
        assert two.instance_id != one.instance_id
    finally:
        await one.close()
        await two.close()


# -- configuration -------------------------------------------------------------------------------


async def test_a_redis_that_evicts_keys_when_full_is_refused_at_open(redis_server: RedisServer) -> None:
    admin = Redis.from_url(redis_server.url())
    try:
        await admin.config_set("maxmemory-policy", "allkeys-lru")
    finally:
        await admin.aclose()
    with pytest.raises(StoreUnavailable, match="maxmemory-policy noeviction"):
        await RedisStore(redis_server.url()).open()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:6390/0", "expected redis://"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1:99999/0", "out of range"),
        ("redis://127.0.0.1:port/0", "expected redis://"),
        ("redis://127.0.0.1:6390/db", "not a number"),
    ],
)
def test_a_malformed_url_is_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_redis_url(url)


def test_passwords_never_appear_in_messages() -> None:
    assert redact_url("redis://:s3cret@host:6390/1") == "redis://:***@host:6390/1"
    assert redact_url("redis://user:s3cret@host/1") == "redis://user:***@host/1"
    assert redact_url("redis://host:6390/1") == "redis://host:6390/1"


async def test_an_unreachable_redis_fails_open_with_one_line() -> None:
    store = RedisStore("redis://:pw@127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable) as failure:
        await store.open()
    message = str(failure.value)
    assert "\n" not in message
    assert "127.0.0.1:1" in message
    assert ":pw@" not in message


async def test_a_snapshot_read_pages_through_copies_that_go_when_it_is_closed(
    redis_server: RedisServer, open_store: OpenStore
) -> None:
    """The copies are what makes the read one point in time; they must not outlive it (and
    they expire by themselves should the node stop part-way)."""
    store = await open_store(redis_server.url())
    await store.apply([put(f"k{i}", "v", i + 1) for i in range(10)])
    raw = Redis.from_url(redis_server.url())
    try:
        read = await store.snapshot()
        copies = await raw.keys(PREFIX + b"snapshot:*")
        assert len(copies) == 2
        for copy in copies:
            assert 0 < await raw.ttl(copy) <= 3600
        assert len(await read.next(4)) == 4
        await read.close()
        assert await raw.keys(PREFIX + b"snapshot:*") == []
        await assert_store_matches_redis(store)
    finally:
        await raw.aclose()
