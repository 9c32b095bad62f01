"""The crash loop: `kill -9` one node under a concurrent write load at seeded random moments, over and
over, and after each kill check what its store kept.

Each client owns its keys (`w3/...` belongs to client 3) and sends the writes of one key one after
another, so the expected state of every key is exact: what its last acknowledged write left, or, when
its last write got no answer because the node died with it in flight, possibly what that write did.
Between a kill and the restart, a copy of the store file (database and WAL) is checked with
`PRAGMA integrity_check` and read row by row; after the restart, the node itself is asked.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from shareddb.record import version_hlc
from shareddb.store.base import DIGEST_BUCKETS, bucket_of, record_hash
from shareddb.store.sqlite import sqlite_path
from tests.harness import NodeProcess
from tests.harness.metrics import sample

LOST = "Invariant 1: no acknowledged write is lost"
DELETED = "Invariant 4: a deleted key never comes back"
PHANTOM = "Invariant 3: never a value nobody wrote"
BACKWARDS = "Invariant 5: a node's clock and sequence never go backwards, also across restarts"
CORRUPT = "the store is never corrupt"
CONTRACT = "every answer is one the API documents"

# The counter each invariant adds to in the summary.
CATEGORY = {
    LOST: "lost",
    DELETED: "lost",
    PHANTOM: "phantom",
    BACKWARDS: "backwards",
    CORRUPT: "corrupt",
    CONTRACT: "unexpected",
}

CLIENTS = 12
LONGEST_LOAD = 0.5  # seconds of load before a kill, at most
REQUEST_TIMEOUT = 10.0
SETTLE_TIMEOUT = 30.0  # for every client to notice the node is gone
MAX_VALUE_PAD = 160
NODE_SAMPLE = 64  # keys asked from the node after each restart
VALUE = re.compile(r"c\d+\.(w\d+/)\d+\.")  # a value names the cycle, client and write


@dataclass(frozen=True, slots=True)
class Held:
    """What a key holds: a value, or a tombstone (`value is None`) left by a delete, at a version."""

    value: str | None
    version: str


@dataclass(frozen=True, slots=True)
class Write:
    """One write a client sent; `value is None` is a delete."""

    key: str
    value: str | None


@dataclass(slots=True)
class Key:
    """What the loop knows of one key: the state its writes left for sure (None: never written), and
    the write whose answer never came, which may or may not have taken effect."""

    held: Held | None = None
    in_doubt: Write | None = None


@dataclass
class Report:
    """Everything one run saw: operations by outcome, broken promises by kind, the first messages."""

    seed: int
    cycles: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    broken: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, invariant: str, cycle: int, message: str) -> None:
        self.broken[CATEGORY[invariant]] += 1
        if len(self.messages) < 50:
            self.messages.append(f"cycle {cycle}: {invariant}: {message}")

    @property
    def clean(self) -> bool:
        return not self.broken

    def summary(self) -> str:
        ops = " ".join(f"{kind}={self.ops[kind]}" for kind in ("ok", "fail", "unknown"))
        broken = " ".join(f"{kind}={self.broken[kind]}" for kind in sorted(set(CATEGORY.values())))
        return (
            f"crash loop: seed={self.seed} cycles={self.cycles} ops: {ops} | {broken} "
            f"| {self.seconds:.1f}s"
        )


def scratch_root() -> str | None:
    """tmpfs when the machine has one: a kill -9 needs no fsync, and the loop runs faster there."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def seed_from_env() -> int:
    """SHAREDDB_TEST_SEED replays a test run; without it, a fresh seed. Printed either way."""
    seed = int(os.environ.get("SHAREDDB_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed}")
    return seed


@dataclass(frozen=True, slots=True)
class Plan:
    """A write, and where its key is taken from: `pool[index]` of its client, or a new key."""

    write: Write
    pool: list[str] | None = None
    index: int = -1


class Client:
    """One writer: its own keys, its own random stream, one request in flight at a time."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.rng = rng
        self.prefix = f"w{index}/"
        self.live: list[str] = []  # its keys that hold a value
        self.dead: list[str] = []  # its keys that hold a tombstone
        self.sent = 0

    def next_write(self, cycle: int) -> Plan:
        """A new key, an overwrite, a delete, or a write over a tombstone, with a unique value."""
        self.sent += 1
        value = f"c{cycle}.{self.prefix}{self.sent}." + "v" * self.rng.randrange(MAX_VALUE_PAD)
        roll = self.rng.random()
        if roll < 0.5 and self.live:
            i = self.rng.randrange(len(self.live))
            return Plan(Write(self.live[i], value if roll < 0.3 else None), self.live, i)
        if roll < 0.6 and self.dead:
            i = self.rng.randrange(len(self.dead))
            return Plan(Write(self.dead[i], value), self.dead, i)
        return Plan(Write(f"{self.prefix}{cycle}-{self.sent}", value))

    def written(self, plan: Plan) -> None:
        """An acknowledged write moves its key to the pool it now belongs to."""
        if plan.pool is not None:
            plan.pool[plan.index] = plan.pool[-1]
            plan.pool.pop()
        (self.live if plan.write.value is not None else self.dead).append(plan.write.key)


async def send(session: aiohttp.ClientSession, url: str, write: Write) -> tuple[int, str | None]:
    """PUT or DELETE one key; returns the status and the version the ETag names."""
    if write.value is None:
        request = session.delete(f"{url}/v1/kv/{write.key}")
    else:
        request = session.put(f"{url}/v1/kv/{write.key}", data=write.value.encode())
    async with request as resp:
        await resp.read()
        etag = resp.headers.get("ETag")
        return resp.status, etag.strip('"') if etag else None


async def fetch_sequence(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/metrics") as resp:
        found = sample(await resp.text(), "shareddb_sequence")
    if found is None:
        raise AssertionError("GET /metrics has no shareddb_sequence line")
    return int(found)


@dataclass(frozen=True, slots=True)
class StoreFile:
    """The rows and bookkeeping of a store file, read while its node is down."""

    rows: dict[str, tuple[Held, int]]  # key -> (what it holds, its sequence number)
    meta: dict[str, str]
    digest: dict[int, int]
    integrity: str


def copy_store(path: Path, scratch: Path) -> Path:
    """Copy a store's database and WAL (not the -shm, which SQLite rebuilds, as after a crash) into
    `scratch`, so that opening the copy, which recovers the WAL, changes nothing of the original."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / path.name
    for suffix in ("", "-wal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            shutil.copyfile(source, f"{copy}{suffix}")
    return copy


def integrity_check(db: sqlite3.Connection) -> str:
    return "\n".join(row[0] for row in db.execute("PRAGMA integrity_check"))


def read_store_file(path: Path, scratch: Path) -> StoreFile:
    """Check and read a copy of a store file and its WAL, taken while its node is down."""
    db = sqlite3.connect(copy_store(path, scratch))
    try:
        integrity = integrity_check(db)
        rows = {
            key: (Held(value, version), seq)
            for key, value, version, seq in db.execute("SELECT key, value, version, seq FROM kv")
        }
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        digest = {b: int.from_bytes(h, "big") for b, h in db.execute("SELECT bucket, hash FROM digest")}
    finally:
        db.close()
        shutil.rmtree(scratch)
    return StoreFile(rows, meta, digest, integrity)


class CrashLoop:
    """One node, killed and restarted `cycles` times; see the module docstring."""

    def __init__(self, root: Path, seed: int, clients: int = CLIENTS, progress_every: int = 0) -> None:
        self.root = root
        self.progress_every = progress_every  # print the summary so far every this many cycles
        self.rng = random.Random(seed)
        self.clients = clients
        self.node = NodeProcess(root / "node", "crash")
        self.report = Report(seed)
        self.keys: dict[str, Key] = {}
        self.seq = 0  # the store's sequence at its last reopening
        self.hlc = 0  # the HLC high-water mark the store held then
        self.version_floor = ""  # every version handed out from now on must be above this
        self.acked_high = ""  # the greatest version acknowledged so far
        self.touched: set[str] = set()

    async def run(self, cycles: int) -> Report:
        started = time.monotonic()
        await asyncio.to_thread(self.node.start)
        try:
            for cycle in range(cycles):
                if not await self.cycle(cycle):
                    break
                self.report.cycles += 1
                done = self.report.cycles
                if self.progress_every and done % self.progress_every == 0 and done < cycles:
                    self.report.seconds = time.monotonic() - started
                    print(self.report.summary(), flush=True)
        finally:
            self.node.cleanup()
            self.report.seconds = time.monotonic() - started
        return self.report

    async def cycle(self, cycle: int) -> bool:
        """Load, kill, check the file, restart, check the node. False when the store cannot be read
        or the node cannot start again: the loop cannot go on."""
        self.touched = set()
        seen_seq, acked, in_doubt = await self.load(cycle, self.rng.uniform(0, LONGEST_LOAD))
        try:
            stored = await asyncio.to_thread(
                read_store_file, sqlite_path(self.node.data), self.root / "copy"
            )
        except sqlite3.DatabaseError as exc:
            self.report.fail(CORRUPT, cycle, f"the store file cannot be read: {exc}")
            return False
        self.check_file(cycle, stored, seen_seq, acked, in_doubt)
        try:
            await asyncio.to_thread(self.node.start)
        except AssertionError as exc:
            self.report.fail(CORRUPT, cycle, f"the node does not start again: {exc}")
            return False
        await self.check_node(cycle)
        return True

    # -- the load ------------------------------------------------------------------------------

    async def load(self, cycle: int, seconds: float) -> tuple[int, int, int]:
        """Write with every client for `seconds` (the fault plan), read the sequence from /metrics,
        and kill -9 the node with writes in flight. Returns that sequence, and how many writes
        were acknowledged and left in doubt."""
        killed = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=self.clients + 1)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            clients = [Client(i, random.Random(self.rng.random())) for i in range(self.clients)]
            for name, key in self.keys.items():
                if key.held is not None:
                    client = clients[int(name[1 : name.index("/")])]
                    (client.live if key.held.value is not None else client.dead).append(name)
            tasks = [asyncio.create_task(self.client(session, c, cycle, killed)) for c in clients]
            await asyncio.sleep(seconds)
            seen = await fetch_sequence(session, self.node.url)
            killed.set()
            self.node.kill()
            done = await asyncio.wait_for(asyncio.gather(*tasks), SETTLE_TIMEOUT)
        outcomes: Counter[str] = Counter()
        for counts in done:
            outcomes.update(counts)
        self.report.ops.update(outcomes)
        return seen, outcomes["ok"], outcomes["unknown"]

    async def client(
        self, session: aiohttp.ClientSession, client: Client, cycle: int, killed: asyncio.Event
    ) -> Counter[str]:
        """Write until the node is gone; every write ends ok, fail (surely not written) or unknown."""
        outcomes: Counter[str] = Counter()
        while True:
            plan = client.next_write(cycle)
            write = plan.write
            self.touched.add(write.key)
            key = self.keys.setdefault(write.key, Key())
            # The loop is blocked in kill() until the node is dead: a write sent after `killed` was
            # set never reached it. One sent before may have, even if aiohttp then retried it on a
            # new connection and got "connection refused".
            sent_before_kill = not killed.is_set()
            try:
                status, version = await send(session, self.node.url, write)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if not killed.is_set():
                    self.report.fail(CONTRACT, cycle, f"{write} failed with the node up: {exc!r}")
                if sent_before_kill:
                    outcomes["unknown"] += 1
                    key.in_doubt = write
                else:
                    outcomes["fail"] += 1
                return outcomes
            if status in (200, 201, 204) and version:
                outcomes["ok"] += 1
                if version <= self.version_floor:
                    self.report.fail(
                        BACKWARDS, cycle, f"{write} got {version}, not above {self.version_floor}"
                    )
                key.held = Held(write.value, version)
                self.acked_high = max(self.acked_high, version)
                client.written(plan)
            else:
                outcomes["fail"] += 1
                if status != 503:  # 503: the store refused the write and changed nothing
                    self.report.fail(CONTRACT, cycle, f"{write} answered {status} (version {version})")
                    return outcomes

    # -- the checks ----------------------------------------------------------------------------

    def check_file(
        self, cycle: int, stored: StoreFile, seen_seq: int, acked: int, in_doubt: int
    ) -> None:
        """While the node is down: the file is sound, holds every acknowledged write and nothing
        else, and its sequence and clock are not behind what the node showed before the kill."""
        fail = self.report.fail
        if stored.integrity != "ok":
            fail(CORRUPT, cycle, f"PRAGMA integrity_check: {stored.integrity[:500]}")
        for name in stored.rows.keys() - self.keys.keys():
            fail(PHANTOM, cycle, f"{name} holds {stored.rows[name][0]}, a key no client wrote")
        for name, key in list(self.keys.items()):
            row = stored.rows.get(name)
            self.check_key(cycle, name, key, row[0] if row else None)
        self.check_bookkeeping(cycle, stored)

        seq, hlc = int(stored.meta.get("seq", 0)), int(stored.meta.get("hlc", 0))
        if seq < seen_seq:
            fail(BACKWARDS, cycle, f"the store reopens at sequence {seq}, /metrics showed {seen_seq}")
        if seq < self.seq + acked:
            fail(BACKWARDS, cycle, f"sequence {seq} is below {self.seq} + {acked} acknowledged writes")
        if seq > self.seq + acked + in_doubt:
            fail(PHANTOM, cycle, f"sequence {seq} is past {self.seq} + {acked} + {in_doubt} in doubt")
        versions = [held.version for held, _ in stored.rows.values()]
        newest = max(versions, default="")
        if newest and hlc < version_hlc(newest):
            fail(BACKWARDS, cycle, f"the stored clock {hlc:x} is behind the stored version {newest}")
        if hlc < self.hlc:
            fail(BACKWARDS, cycle, f"the stored clock went back from {self.hlc:x} to {hlc:x}")
        self.seq, self.hlc = seq, hlc
        self.version_floor = max(self.version_floor, newest, self.acked_high)

    def check_key(self, cycle: int, name: str, key: Key, got: Held | None) -> None:
        """The key holds what its last acknowledged write left, or what the write in doubt did;
        the loop then knows exactly what it holds."""
        held, doubt = key.held, key.in_doubt
        ok = got == held or (got is None and held is not None and held.value is None)  # purged
        if not ok and doubt is not None and got is not None:
            above = held is None or got.version > held.version
            ok = got.value == doubt.value and above
        if ok:
            if got is None:
                del self.keys[name]
            else:
                self.keys[name] = Key(got)
            return
        message = f"{name} holds {got}, acknowledged {held}, in doubt {doubt}"
        owner = VALUE.match(got.value) if got is not None and got.value is not None else None
        if got is not None and got.value is not None and not (owner and name.startswith(owner[1])):
            self.report.fail(PHANTOM, cycle, message)
        elif held is not None and held.value is None and got is not None and got.value is not None:
            self.report.fail(DELETED, cycle, message)
        else:
            self.report.fail(LOST, cycle, message)
        self.keys[name] = Key(got)  # go on from what is there, so one loss is counted once

    def check_bookkeeping(self, cycle: int, stored: StoreFile) -> None:
        """The store's own counters agree with its rows: sequence numbers, live count, digest."""
        fail = self.report.fail
        seqs = [seq for _, seq in stored.rows.values()]
        if seqs and max(seqs) > int(stored.meta.get("seq", 0)):
            fail(
                CORRUPT,
                cycle,
                f"a row has sequence {max(seqs)}, the store's is {stored.meta.get('seq')}",
            )
        live = sum(held.value is not None for held, _ in stored.rows.values())
        if live != int(stored.meta.get("live", 0)):
            fail(CORRUPT, cycle, f"{live} live rows, the store counts {stored.meta.get('live')}")
        buckets = [0] * DIGEST_BUCKETS
        for key, (held, _) in stored.rows.items():
            buckets[bucket_of(key)] ^= record_hash(key, held.version)
        wrong = [b for b in range(DIGEST_BUCKETS) if buckets[b] != stored.digest.get(b, 0)]
        if wrong:
            fail(CORRUPT, cycle, f"digest buckets {wrong[:10]} do not match the rows")

    async def check_node(self, cycle: int) -> None:
        """After the restart: the node serves what its file holds (for a sample of the keys written in
        this cycle; the file check covered every key), at the sequence it holds."""
        url = self.node.url
        limit = asyncio.Semaphore(self.clients)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        ) as session:
            seq = await fetch_sequence(session, url)
            if seq != self.seq:
                self.report.fail(BACKWARDS, cycle, f"/metrics shows sequence {seq}, its file {self.seq}")

            async def check(name: str) -> None:
                async with limit, session.get(f"{url}/v1/kv/{name}") as resp:
                    body = await resp.text()
                    etag = resp.headers.get("ETag", "").strip('"')
                key = self.keys.get(name)
                want = key.held if key is not None and key.held and key.held.value is not None else None
                got = Held(body, etag) if resp.status == 200 else None
                if resp.status not in (200, 404) or got != want:
                    self.report.fail(
                        LOST, cycle, f"GET {name}: {resp.status} {got}, its file holds {want}"
                    )

            touched = sorted(self.touched)
            sample = self.rng.sample(touched, min(len(touched), NODE_SAMPLE))
            await asyncio.gather(*(check(name) for name in sample))
