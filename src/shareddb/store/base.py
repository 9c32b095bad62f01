"""The Store protocol: what the node needs from a storage backend, and the rules every backend keeps.

A store holds one row per key (value or tombstone, version, sequence number), merges incoming records
by the last-writer-wins rule of `record.supersedes`, and numbers every record it accepts with the next
local sequence number: the rows ordered by sequence are this node's changes feed. It keeps an
order-independent digest of its (key, version) pairs so two nodes can be compared cheaply.

Errors: any exception from a method means that call changed nothing (a batch is atomic). A store
that lost its backing service raises `StoreUnavailable`; the API answers 503 and the node keeps going.
A store that is reachable but cannot take writes (disk full, read-only file system, write I/O errors,
a Redis out of memory or unable to persist) raises `StoreFull`, a kind of `StoreUnavailable`: the API
answers 507, reads go on, and the next write tries again, so writes resume by themselves once the
store can take them. Replication treats both alike: it backs off and keeps its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import zlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from shareddb.record import Record, incarnation_of, value_class

if TYPE_CHECKING:
    from shareddb.store.ops import Condition
    from shareddb.store.plan import Stored

DIGEST_BUCKETS = 256


class StoreUnavailable(Exception):
    """The store cannot be reached or written right now; nothing was changed."""


class StoreFull(StoreUnavailable):
    """The store is there but cannot write (no space, read-only); nothing was changed, and reads
    still work. Not sticky: every later write tries again."""


class CopyUnsupported(Exception):
    """This store cannot serve a bulk copy (a peer then reads its changes feed instead)."""


class Outcome(enum.Enum):
    """What a local write did."""

    CREATED = "created"  # the key had no live value before (absent or deleted)
    UPDATED = "updated"  # the key had a live value, now replaced
    DELETED = "deleted"  # the key had a live value, now a tombstone
    NOT_FOUND = "not_found"  # a delete of a key with no live value: nothing written
    SUPERSEDED = "superseded"  # the stored version is greater: nothing written


@dataclass(frozen=True, slots=True)
class Applied:
    """What `Store.apply` or `Store.bulk_load` did with a peer's records: how many won, and the
    feed positions the winners took, `first` to `last` (none when `first > last`). Those positions
    held the peer's records and nothing else when they committed."""

    won: int
    first: int = 1
    last: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far this node has applied a peer's changes feed (that feed's instance, sequence), and
    the epoch of that feed it was read in (the peer's run that named the position,
    replication/epochs.py; "" when not known)."""

    peer: str
    instance: str
    seq: int
    epoch: str = ""


@value_class
class Change:
    """One entry of the changes feed.

    `txn`: 0, or the feed position of the transaction the change belongs to; the changes of one
    transaction come together, in one page, never split. `current`: False for a change of a
    transaction whose key has been written again since (the later write comes later in the
    feed): a peer applies it, for the transaction's sake, but a watcher skips it. `known`: the
    reader has this row already (the feed served it at or below the reader's position); a peer
    gets only its key, to name it in its own entry of the transaction, and applies nothing
    (`entries.serve_entry`)."""

    seq: int
    record: Record
    txn: int = 0
    current: bool = True
    known: bool = False


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One read of the changes feed: `changes` in sequence order, and `until`, how far the read
    covered the feed. Every record that held a sequence number in (since, until] at the time of
    the read is in `changes`, or no longer holds it: rewritten since under a greater number, or a
    tombstone that was purged. A reader that continues from `until` therefore misses nothing, and
    moves past purged tombstones even when they end the feed."""

    changes: list[Change]
    until: int


@dataclass(frozen=True, slots=True)
class CopyPosition:
    """How far a bulk copy of a peer's data set has got (replication/copy.py), saved with every
    chunk it applies: the peer, its feed instance, the peer's feed sequence when the copy began
    (the feed is read from there once the copy is over), and the copy's place in the peer's data
    set (`after`: the last key copied; "" before the first), and the epoch the sequence was
    named in (the run of the peer's process that began the copy)."""

    peer: str
    instance: str
    seq: int
    after: str = ""
    epoch: str = ""

    @property
    def meta_name(self) -> str:
        """The node meta entry the position is kept in ("" there: no copy under way)."""
        return f"copy:{self.peer}"

    def encode(self) -> str:
        return orjson.dumps([self.instance, self.seq, self.after, self.epoch]).decode()

    @classmethod
    def decode(cls, peer: str, text: str | None) -> CopyPosition | None:
        """The position kept for `peer`, or None: no copy under way (or one this cannot read)."""
        if not text:
            return None
        try:
            # A position saved by an earlier release names no epoch.
            instance, seq, after, epoch = [*orjson.loads(text), ""][:4]
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        if not all(isinstance(s, str) for s in (instance, after, epoch)) or type(seq) is not int:
            return None
        return cls(peer, instance, seq, after, epoch)


@dataclass(frozen=True, slots=True)
class CopyPage:
    """One read of a bulk copy: records in key order after a key, tombstones included.

    `changes`: a record outside any transaction has `txn` 0; a row covered by a transaction entry
    comes with that entry, served whole where the first of its rows is met (each change of it
    then carries the entry's sequence as `txn`, and they come together). `after` is the last key
    the read passed (the next read starts after it); `done`: no key after it. `served`: the
    transaction entries it served whole (with those served along with them): a later read
    given them as `skip` leaves out the rows they cover."""

    changes: list[Change]
    after: str
    done: bool
    served: set[int]


COPY_CHUNK = 20_000  # records a copy read hands over at most at once (--copy-chunk)
COPY_CHUNK_BYTES = 8 * 1024 * 1024  # and about this many bytes of them (by `change_size`)


@dataclass(frozen=True, slots=True)
class Digest:
    count: int  # live keys
    digest: str  # hex; equal on two stores exactly when they hold the same (key, version) pairs
    buckets: tuple[int, ...]


SNAPSHOT_CHUNK = 1000  # records a snapshot read hands over at most at once
SNAPSHOT_CHUNK_BYTES = 4 * 1024 * 1024  # and about this many bytes of them (by `change_size`)


class SnapshotRead(Protocol):
    """Every record of a store as it stood at one commit, read a chunk at a time.

    `seq` and `count` are those of that commit: its sequence number, and how many records (live
    values, expired ones and tombstones) `next` hands over in all. Writes committed after the read
    began are not in it, however long it takes. Records come in no particular order, each key
    once. `close` releases what the read holds (a read transaction, a copy); call it always, also
    when the read is abandoned part-way."""

    @property
    def seq(self) -> int: ...

    @property
    def count(self) -> int: ...

    async def next(
        self, limit: int = SNAPSHOT_CHUNK, max_bytes: int = SNAPSHOT_CHUNK_BYTES
    ) -> list[Record]:
        """The next records: at most `limit`, and no more than fit in `max_bytes` by
        `change_size` (but at least one); [] once every record was handed over."""
        ...

    async def close(self) -> None: ...


class Store(Protocol):
    """A node's storage. One writer: the store serialises writes itself and may batch them."""

    # When set, called with the seconds each committed batch of writes took.
    commit_observer: Callable[[float], None] | None

    @property
    def instance_id(self) -> str:
        """Random hex id made when the store was created: a wiped store gets a new one.

        It names the feed (a checkpoint of another instance is served from 0) and, through
        `record.incarnation_of`, the node's incarnation that every version it mints carries."""
        ...

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest accepted record; never goes backwards."""
        ...

    @property
    def clock_high(self) -> int:
        """The HLC high-water mark persisted with the last committed write."""
        ...

    @property
    def feed_floor(self) -> int:
        """The feed replays every change after this sequence number exactly; below it, purged
        tombstones are gone from it (a watch from there is answered 410)."""
        ...

    @property
    def purged_before(self) -> str:
        """A version that every tombstone this store ever purged sorts before ("" if none went):
        of a key it holds nothing of, an older record may be a value deleted since."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Finish the writes already queued, then release everything."""
        ...

    async def get(self, key: str) -> Record | None:
        """The stored record of `key`, a tombstone included; None when the key was never written."""
        ...

    async def write(self, record: Record, condition: Condition | None = None) -> object:
        """A client's write, durable when this returns: an `Outcome`. A tombstone is written only
        over a live value. With a `plan.Condition` that does not hold when the write is planned,
        nothing is written and the answer is a `plan.Conflict`."""
        ...

    async def transact(self, conditions: Sequence[Condition], records: Sequence[Record]) -> object:
        """A client's transaction, all or nothing (see `plan.Txn` for its answers)."""
        ...

    async def apply(
        self,
        records: Sequence[Record],
        checkpoint: Checkpoint | None = None,
        groups: Sequence[tuple[int, int]] = (),
        *,
        restored: bool = False,
    ) -> Applied:
        """Merge records from a peer by LWW and save `checkpoint`, atomically. `groups`: index
        ranges of `records` that are transactions, kept whole in this node's feed. `restored`:
        records of a snapshot, of which one of a key the store holds nothing of, older than a
        tombstone it purged, is left out (`PeerBatch`). Returns how many won, and where in the
        feed."""
        ...

    async def bulk_load(
        self,
        records: Sequence[Record],
        position: CopyPosition,
        groups: Sequence[tuple[int, int]] = (),
        *,
        done: bool = False,
    ) -> Applied:
        """Merge a chunk of a bulk copy from a peer by LWW and save the copy's `position`,
        atomically (see `plan.BulkLoad`). With `done`, the copy ends: the position is cleared and
        the peer's checkpoint set to `position.seq`. Returns how many records won, and where."""
        ...

    async def copy_page(
        self, after: str, limit: int, max_bytes: int, skip: Collection[int] = ()
    ) -> CopyPage:
        """The next records of a bulk copy, by key after `after` (see `CopyPage`), read at one
        point in time: at most `limit` rows and about `max_bytes` (a transaction entry comes
        whole, which may pass both). Rows covered by an entry of `skip` are left out (they were
        served with it already). Raises `CopyUnsupported` when this store cannot serve a copy."""
        ...

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        """Live records whose key starts with `prefix` and sorts after `after`, by key (code point)."""
        ...

    async def lookup(self, keys: Collection[str]) -> Stored:
        """The stored (live, version, expires) of each of `keys` that exists, as of the last
        commit: what replication compares a peer's versions with before it decodes or applies
        anything (a record that loses now loses for ever: stored versions only grow)."""
        ...

    async def changes_since(
        self,
        seq: int,
        limit: int,
        max_bytes: int | None = None,
        *,
        known: int | None = None,
        leave_out: Callable[[str], bool] | None = None,
    ) -> FeedPage:
        """The feed: records with a sequence number above `seq`, in sequence order, at most
        `limit` of them and, with `max_bytes`, no more than fit in that many bytes by
        `change_size` (but always at least one). The read stops at the budget: it never holds
        much more than `max_bytes` of records at once. `until` is read consistently with the
        rows: the feed's last sequence number when the read reached its end, else the last
        change's. A transaction's change is `known` when the feed serves its row at or below
        `known` (default `seq`): how far the reader holds the feed, which a peer that leaves
        out others' writes (replication/paths.py) says apart from where it reads. `leave_out`:
        a change that is not part of a transaction is not in `changes` when it holds true for
        its version; the page covers it (`until`) and counts it against `limit` and `max_bytes`
        all the same, so it is the read without `leave_out`, less those changes."""
        ...

    async def wait_for_changes(
        self, seq: int, timeout: float, ended: Callable[[], bool] | None = None
    ) -> None:
        """Return once `last_seq` passes `seq`, after `timeout` seconds, or once `ended()` says
        the wait is over when `wake_waiters` wakes it."""
        ...

    def wake_waiters(self) -> None:
        """Wake every `wait_for_changes` to look at its `ended` (those without one wait on)."""
        ...

    async def checkpoint(self, peer: str) -> Checkpoint | None: ...

    async def purge_tombstones(self, max_seq: int, before: str) -> int:
        """Drop tombstones at or below sequence `max_seq` whose version sorts before `before`
        (every member has applied them). Returns how many went."""
        ...

    async def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None: ...

    def digest(self) -> Digest: ...

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        """Key -> version of every record (tombstones too) in one digest bucket: for repairs and
        `shareddb verify`. It reads that bucket's keys only, not the whole store."""
        ...

    async def snapshot(self) -> SnapshotRead:
        """A read of every record at one point in time (GET /v1/snapshot), in bounded memory."""
        ...


CHANGE_OVERHEAD = 64  # bytes a change costs beyond its key and value (version, framing)


def change_size(key: str, value: str | None) -> int:
    """What a change counts against a feed read's byte budget (the Redis store counts the same
    in UTF-8 bytes, inside Redis)."""
    return len(key) + len(value or "") + CHANGE_OVERHEAD


def bucket_of(key: str) -> int:
    """The digest bucket of a key: a function of the key alone, the same for every backend."""
    return zlib.crc32(key.encode("utf-8")) % DIGEST_BUCKETS


def record_hash(key: str, version: str) -> int:
    """The 128-bit hash a (key, version) pair contributes to its bucket, by XOR."""
    data = key.encode("utf-8") + b"\x00" + version.encode("ascii")
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


def combine_buckets(buckets: Sequence[int]) -> str:
    """The digest of a whole store, from its bucket hashes."""
    h = hashlib.blake2b(digest_size=16)
    for value in buckets:
        h.update(value.to_bytes(16, "big"))
    return h.hexdigest()


def fail_all(futures: Iterable[asyncio.Future[Any]], error: Exception) -> None:
    """A batch failed as a whole: every writer still waiting gets `error`."""
    for future in futures:
        if not future.done():
            future.set_exception(error)


class ChangeSignal:
    """Wakes long-polling readers of the changes feed when a batch commits."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def wait(self, timeout: float) -> None:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout)


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: unbounded)."""
    chars = list(prefix)
    while chars and chars[-1] == "\U0010ffff":
        chars.pop()
    if not chars:
        return None
    last = ord(chars[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:
        last = 0xE000
    chars[-1] = chr(last)
    return "".join(chars)


def earlier_lives(recorded: str | None, copied_from: str) -> str:
    """The `earlier_lives` meta value (a JSON list of incarnations) of a store opened on a copy of
    one whose instance was `copied_from`, given the value the copy held (docs/design.md,
    "Identity": "A copy of the store"; `Node.open` reads it)."""
    lives = orjson.loads(recorded) if recorded else []
    return orjson.dumps([*lives, incarnation_of(copied_from)]).decode()
