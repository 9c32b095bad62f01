"""The node: wires the clock, the store, replication and membership; start and stop.

The HTTP layer talks to `Node` (and, for the peer API, to its feed and member list); it never
touches the store's write path or the clock directly.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import IO

import orjson

from shareddb.clock import HybridClock, wall_millis
from shareddb.config import Settings
from shareddb.data_dir import ClockFile, DataDirError, claim
from shareddb.membership import Member, Membership
from shareddb.record import (
    Record,
    incarnation_of,
    make_origin,
    make_version,
    record_hlcs,
    version_hlc,
)
from shareddb.redis_urls import redact_url
from shareddb.registry import Registry, check_registry_url
from shareddb.replication.bus import Bus
from shareddb.replication.bus_view import parse_bus_url, redact
from shareddb.replication.feed import Feed
from shareddb.replication.puller import Replicator
from shareddb.replication.transport import HttpTransport, PeerError, Transport
from shareddb.store.base import Outcome, Store, StoreUnavailable
from shareddb.store.ops import Behind, Condition, Conflict
from shareddb.store.redis import RedisStore
from shareddb.store.sqlite import SQLiteStore, sqlite_path
from shareddb.watch import WatchHub

log = logging.getLogger("shareddb.node")

PAGE = 1000
WRITE_ATTEMPTS = 8


# Makes a node's store, not yet opened, from its data dir, the source of its clock's high-water mark
# and the source of a new store's instance id. The default follows --store; the simulation and unit
# tests may pass their own (a `MemoryStore`, say).
StoreFactory = Callable[[Path, Callable[[], int], Callable[[], str], Callable[[], int]], Store]


class NodeError(Exception):
    """The node cannot start; the message is one line meant for the user."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    version: str


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One operation of a transaction: a put (`value` not None, maybe with `ttl` seconds) or a
    delete."""

    key: str
    value: str | None
    ttl: int | None = None


class PreconditionFailed(Exception):
    """A conditional write or transaction wrote nothing: these conditions did not hold, each
    with the key's current version (None: absent)."""

    def __init__(self, failed: list[Condition]) -> None:
        super().__init__(", ".join(c.key for c in failed))
        self.failed = failed


class Node:
    """One shareddb node. Create it with `Node.open(settings)`; `close()` it when done."""

    def __init__(
        self,
        settings: Settings,
        node_id: str,
        store: Store,
        clock: HybridClock,
        *,
        now: Callable[[], int] = wall_millis,
        monotonic: Callable[[], float] = time.monotonic,
        lock: IO[str] | None = None,
        boot: str = "",
    ) -> None:
        self.settings = settings
        self.id = node_id
        self.store = store
        self.clock = clock
        self._now = now
        self._lock = lock
        scheme = "https" if settings.tls_cert else "http"
        self.url = settings.advertise or f"{scheme}://{settings.host}:{settings.port}"
        # This life of the node: a new store (a wiped data dir) is a new incarnation.
        self.incarnation = incarnation_of(store.instance_id)
        self.origin = make_origin(node_id, self.incarnation)
        self.membership = Membership(node_id, self.url, self.incarnation, clock=monotonic, boot=boot)
        self.feed = Feed(node_id, store, self.membership)
        self.watches = WatchHub(store, now=now)  # the watchers of the same feed (GET /v1/watch)
        self.replicator: Replicator | None = None
        self.registry: Registry | None = None
        self.bus: Bus | None = None
        # Set when the node cannot go on (`fail`): the server stops it, exit status 1.
        self.failed = asyncio.Event()
        self.failure = ""

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        now: Callable[[], int] = wall_millis,
        monotonic: Callable[[], float] = time.monotonic,
        mint_id: Callable[[], str] = lambda: f"node-{secrets.token_hex(3)}",
        mint_instance: Callable[[], str] = lambda: secrets.token_hex(16),
        make_store: StoreFactory | None = None,
        bound_in_background: bool = True,
    ) -> Node:
        """Open the node's data dir and store. `now` (wall-clock milliseconds) and `monotonic`
        (seconds) are the node's only sources of time, `mint_id` of a new node id and
        `mint_instance` of a new store's instance id and of this run's `Membership.boot`; the
        simulation passes its own.
        `make_store` replaces the store `settings.store` names. `bound_in_background` False notes
        the clock's bound before the clock goes on (data_dir.ClockFile), for a deterministic run."""
        if settings.registry:
            try:
                check_registry_url(settings.registry)
            except ValueError as exc:
                raise NodeError(f"bad --registry {redact_url(settings.registry)!r}: {exc}") from None
        if settings.bus:
            try:
                parse_bus_url(settings.bus)
            except ValueError as exc:
                raise NodeError(f"bad --bus {redact(settings.bus)!r}: {exc}") from None
        data = settings.data
        try:
            lock, node_id = claim(data, settings.node_id, mint_id)
        except DataDirError as exc:
            raise NodeError(str(exc)) from None
        try:
            clock_file = ClockFile(data, background=bound_in_background)
            try:
                reserved = clock_file.read()
            except DataDirError as exc:
                raise NodeError(str(exc)) from None
            clock = HybridClock(bound=clock_file)
            clock.restore(reserved)  # and the store's own mark, in `_load`
            spec = settings.store
            if make_store is not None:
                store: Store = make_store(data, lambda: clock.last, mint_instance, now)
            elif spec == "sqlite":
                store = SQLiteStore(
                    sqlite_path(data),
                    clock_high=lambda: clock.last,
                    new_instance=mint_instance,
                    now=now,
                )
            elif spec.startswith(("redis://", "rediss://")):
                try:
                    store = RedisStore(
                        spec, clock_high=lambda: clock.last, new_instance=mint_instance, now=now
                    )
                except ValueError as exc:
                    raise NodeError(f"bad --store {redact_url(spec)!r}: {exc}") from None
            else:
                raise NodeError(f"unsupported --store {spec!r}: use sqlite or redis://HOST:PORT/DB")
            try:
                await store.open()
            except StoreUnavailable as exc:  # the Redis store's "cannot reach it"
                raise NodeError(str(exc)) from None
        except BaseException:
            lock.close()
            raise
        try:
            node = await cls._load(
                settings, node_id, store, clock, now, monotonic, lock, mint_instance()[:16]
            )
        except StoreUnavailable as exc:
            await store.close()
            lock.close()
            raise NodeError(f"cannot read the store: {exc}") from None
        log.info("node %s opened store %s at sequence %d", node_id, data, store.last_seq)
        return node

    @classmethod
    async def _load(
        cls,
        settings: Settings,
        node_id: str,
        store: Store,
        clock: HybridClock,
        now: Callable[[], int],
        monotonic: Callable[[], float],
        lock: IO[str],
        boot: str,
    ) -> Node:
        """The node's own state from its store: clock, member list and the feed's epochs."""
        clock.restore(store.clock_high)
        clock.prepare(now())  # before it serves: the first writes need not wait for a note
        node = cls(
            settings,
            node_id,
            store,
            clock,
            now=now,
            monotonic=monotonic,
            lock=lock,
            boot=boot,
        )
        members = await store.get_meta("members")
        # A copy of the store is a life of its own (store/sqlite.py, `_own_file`), but not a way
        # back in for a life that left or was removed.
        lives = {node.incarnation, *orjson.loads(await store.get_meta("earlier_lives") or "[]")}
        for entry in orjson.loads(members) if members else []:
            member = Member(
                entry["id"], entry["url"], bool(entry["left"]), int(entry["v"]), entry.get("inc", "")
            )
            if member.id != node_id:
                node.membership.members[member.id] = member
            elif any(member.removed(life) for life in lives):
                # This life of the node, or the one its store was copied from, left or was
                # removed before it stopped: it stays out.
                node.membership.self_entry = member
                log.error(
                    "this node (%s) was removed from the cluster (or left it) before it stopped: "
                    "it does not replicate; to add it again, start it with an empty --data and "
                    "--join URL",
                    node_id,
                )
        await node.feed.begin_epoch()  # before it names a position of its feed to anyone
        return node

    async def start_replication(
        self, url: str, transport: Transport | None = None, *, peer_tls: SSLContext | None = None
    ) -> None:
        """Announce this node at `url` and start pulling from every peer it knows; `peer_tls` is
        the client side of TLS to peers (tls.node_contexts)."""
        # Only the peer token: no client token opens a peer endpoint.
        transport = transport or HttpTransport(self.settings.peer_token, ssl_context=peer_tls)
        replicator = await self.attach_replication(url, transport)
        if self.settings.bus:
            # Made before the pullers start: members on the bus are not pulled.
            self.bus = Bus(
                parse_bus_url(self.settings.bus),
                self.id,
                self.store,
                self.clock,
                self.membership,
                retention=self.settings.bus_retention,
                now=self._now,
                copy_from=self.copy_from,
                fallback_urls=lambda: [*self.settings.peers, *filter(None, [self.settings.join])],
            )
        replicator.start(join=self.settings.join)
        if self.bus is not None:
            self.bus.start()
        if self.settings.registry:
            self.registry = Registry(
                self.settings.registry, self.membership, ttl=self.settings.registry_ttl
            )
            self.registry.start()

    async def attach_replication(self, url: str, transport: Transport) -> Replicator:
        """Announce this node at `url` and set up its replication, not yet started.

        `start_replication` starts the pullers' loops; the simulation calls their steps itself.
        """
        self.url = url
        self.membership.announce(url, self.clock.now(self._now()))
        for peer in (*self.settings.peers, *([self.settings.join] if self.settings.join else [])):
            self.membership.add_static(peer)
        self.replicator = Replicator(
            self.id,
            self.store,
            self.clock,
            self.membership,
            transport,
            now=self._now,
            copy_chunk=self.settings.copy_chunk,
            copied=self.feed.copied_from,
            stop=self.fail,
        )
        # The announcement carries a clock value that peers will see: save it (with the clock's
        # high-water mark) first, so that after a crash the clock resumes past it.
        await self.replicator.persist_members()
        return self.replicator

    def fail(self, reason: str) -> None:
        """The node cannot go on: `reason` is logged, and the server stops it with that error."""
        if not self.failed.is_set():
            log.error("%s; stopping", reason)
            self.failure = reason
            self.failed.set()

    async def close(self) -> None:
        await self.watches.close(0)
        if self.registry is not None:
            await self.registry.stop()  # first: its entry goes before this node stops answering
            self.registry = None
        if self.bus is not None:
            await self.bus.stop()
            self.bus = None
        if self.replicator is not None:
            await self.replicator.stop()
            self.replicator = None
        await self.store.close()
        if self._lock is not None:
            self.clock.settle()  # in the data dir, while this process still holds it
            self._lock.close()
            self._lock = None

    # -- the key API -----------------------------------------------------------------------------

    def next_version(self) -> str:
        return make_version(self.clock.now(self._now()), self.origin)

    def now(self) -> int:
        """The node's wall clock, in milliseconds: what expiry is measured by."""
        return self._now()

    async def get(self, key: str) -> Record | None:
        """The live record of `key`, or None when it is absent, deleted or expired."""
        record = await self.store.get(key)
        return record if record is not None and record.live_at(self._now()) else None

    async def put(
        self, key: str, value: str, *, ttl: int | None = None, condition: Condition | None = None
    ) -> WriteResult:
        """Store `value`; with `ttl`, it expires that many seconds from now by this node's clock.
        With `condition`, only when it holds as the write commits (else `PreconditionFailed`)."""
        return await self._write(key, value, ttl, condition)

    async def delete(self, key: str, *, condition: Condition | None = None) -> WriteResult:
        return await self._write(key, None, None, condition)

    def _expires(self, ttl: int | None) -> int | None:
        return None if ttl is None else self._now() + ttl * 1000

    async def _write(
        self, key: str, value: str | None, ttl: int | None, condition: Condition | None
    ) -> WriteResult:
        """A client's write: it always wins over what this node holds for the key.

        Normally the clock is ahead of every stored version. When a peer's clock ran far ahead
        (past the drift bound the clock follows), the write is retried just above the stored
        version of this one key, and the clock moves there: the client's write takes effect, and
        the clock never hands out that timestamp again (invariant 7).
        """
        version = self.next_version()
        expires = self._expires(ttl)
        for _ in range(WRITE_ATTEMPTS):
            outcome = await self.store.write(Record(key, value, version, expires), condition)
            if isinstance(outcome, Conflict):
                raise PreconditionFailed(outcome.failed)
            assert isinstance(outcome, Outcome)
            if outcome is not Outcome.SUPERSEDED:
                return WriteResult(outcome, version)
            stored = await self.store.get(key)
            if stored is None:  # purged meanwhile: retry with a fresh version
                version = self.next_version()
                continue
            self.clock.restore(version_hlc(stored.version) + 1)
            version = self.next_version()
        return WriteResult(Outcome.SUPERSEDED, version)

    async def transact(
        self, conditions: list[Condition], ops: list[TxnOp]
    ) -> list[tuple[str, str | None]]:
        """Apply `ops` in one atomic commit when every condition holds (else
        `PreconditionFailed`). Answers (key, version) per operation, in order; the version is
        None for a delete of a key that was absent (nothing written)."""
        for _ in range(WRITE_ATTEMPTS):
            records = [
                Record(op.key, op.value, self.next_version(), self._expires(op.ttl)) for op in ops
            ]
            result = await self.store.transact(conditions, records)
            if isinstance(result, Conflict):
                raise PreconditionFailed(result.failed)
            if isinstance(result, Behind):  # a peer's clock ran ahead: see `_write`
                self.clock.restore(version_hlc(result.version) + 1)
                continue
            assert isinstance(result, list)
            return [
                (r.key, None if outcome is Outcome.NOT_FOUND else r.version)
                for r, outcome in zip(records, result, strict=True)
            ]
        raise StoreUnavailable("the transaction kept losing to versions from ahead of this clock")

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        return await self.store.scan(prefix, after, limit)

    async def pages(self, prefix: str = "") -> AsyncIterator[list[Record]]:
        """Every live record under `prefix`, by key, a page at a time (never all in memory)."""
        after: str | None = None
        while True:
            page = await self.store.scan(prefix, after, PAGE)
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1].key

    # -- snapshots ---------------------------------------------------------------------------------

    async def merge(self, records: Sequence[Record]) -> tuple[int, int]:
        """Merge records of a snapshot as a peer's are merged: each keeps its version, and wins
        only over an older one (a newer version here is kept); those that win enter this node's
        feed and replicate as usual. Their versions move the clock as a peer's do, up to the
        drift bound. A record of a key this node holds nothing of, older than a tombstone it
        purged, is left out (`PeerBatch.restored`): it may have been deleted since. Answers how
        many won, and how many were past the drift bound."""
        wall = self._now()
        skewed = self.clock.observe_all(record_hlcs(records), wall)
        won = (await self.store.apply(records, restored=True)).won
        if self.replicator is not None:
            self.replicator.skewed += skewed
        return won, skewed

    # -- replication -------------------------------------------------------------------------------

    @property
    def member_count(self) -> int:
        """Nodes a write can be waited on, this one included."""
        return 1 + len(self.membership.active())

    async def leave(self, node_id: str) -> bool:
        """Mark `node_id` (maybe this node) as having left; the change spreads to every member.

        Saved before it is answered: the entry survives a crash, and so does the clock value it
        carries."""
        if node_id == self.id and self.replicator is not None:
            self.replicator.leaving()  # by its own choice: nothing to warn about
        if not self.membership.leave(node_id, self.clock.now(self._now())):
            return False
        if self.replicator is not None:
            await self.replicator.persist_members()
        return True

    async def copy_from(self, url: str) -> None:
        """Take the whole data set of the peer at `url` through the join path (its changes feed,
        or a bulk copy where the peer offers one), until this node has caught up with it. The
        change bus falls back on this when the stream no longer holds what a node missed."""
        if self.replicator is None:
            raise PeerError("replication is not running")
        while True:
            if not await self.replicator.pull_once(url):
                raise PeerError(f"{url} is this node, or a member that was removed")
            peer = self.membership.id_for_url(url)
            if peer is not None and self.replicator.pull_lag.get(peer) == 0:
                return

    async def wait_for_copies(self, copies: int, timeout: float) -> int:
        """Wait until `copies` nodes hold every write this node has committed so far.

        Called right after a write, that covers the write. A member holds it once its pull reports
        a checkpoint at or past it. Returns how many nodes hold it at the end.
        """
        target = self.store.last_seq
        if self.bus is not None:
            self.bus.hurry(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.feed.copies_awaited():
            while True:
                held = self.membership.copies_of(target)
                remaining = deadline - loop.time()
                if held >= copies or remaining <= 0:
                    return held
                await self.membership.progress(remaining)
