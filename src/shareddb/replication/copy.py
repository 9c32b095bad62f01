"""Bulk copy: a node that joins, or is too far behind a peer, copies the peer's data set in key order.

Reading a peer's changes feed from the start costs a page per 5,000 changes in feed order; a copy
reads every record (tombstones too) in key order, in large chunks of one stream, and applies each
chunk in one commit of the write pipeline (`plan.BulkLoad`, merged by the same LWW rule), with the
copy's position in the same commit. So a copy cut half way resumes after the last chunk applied.

The copy starts at the source's feed sequence S: every change the copy may have missed has a
sequence above S, and once the copy is over the node reads the source's feed from S as usual
(docs/design.md, "Bulk copy", gives the argument). This module must not write to a store but
through the pipeline, nor decide merges: it moves chunks and positions.

- `serve_copy`: the source side (GET /v1/peer/copy, and the simulation's transport).
- `Copier`: the receiving side, driven by the puller (replication/puller.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, replace
from operator import attrgetter

import orjson

from shareddb.clock import HybridClock
from shareddb.membership import Membership
from shareddb.record import Record, incarnation_of, version_hlc
from shareddb.replication.transport import PeerError, PullReply
from shareddb.store.base import (
    COPY_CHUNK_BYTES,
    Change,
    Checkpoint,
    CopyPage,
    CopyPosition,
    Store,
)

log = logging.getLogger("shareddb.replication")

MAX_CHUNK = 100_000  # records per chunk a source serves at most
PREFETCH = 2  # chunks received ahead of the one being applied
DEFER_PAUSE = 1.0  # seconds before asking again a peer that is copying itself
# A node this many changes (and more than half the feed) behind a peer copies instead of reading
# the feed: the compacted feed serves at most one change per key, but a copy serves them faster.
COPY_BEHIND = 50_000


class CopyRefused(PeerError):
    """The peer does not serve bulk copies (its store cannot): read its feed instead."""


class CopyDeferred(PeerError):
    """The peer is copying a data set itself (it answered 503): ask again in a while."""


class CopyBusy(Exception):
    """The source is copying a data set itself: what it holds is not whole yet, and serving a
    copy meanwhile would slow its own. The puller backs off and asks again."""


@dataclass(frozen=True, slots=True)
class CopyRequest:
    after: str  # the last key the puller copied ("" before the first)
    limit: int  # records per chunk
    puller_id: str
    puller_url: str
    puller_version: int
    puller_incarnation: str = ""
    digest: str = ""  # the puller's digest: when the source's is the same, nothing is copied


@dataclass(frozen=True, slots=True)
class CopyHeader:
    """The first frame: who serves the copy, and its feed's state as the copy began."""

    node: str
    instance: str
    seq: int  # the source's feed sequence before the first chunk was read
    floor: int  # its feed floor then
    clock_high: int  # its clock's high-water mark then
    left: bool = False  # the source left the cluster or was removed (it knows it)


@dataclass(frozen=True, slots=True)
class CopyChunk:
    records: list[Record]
    groups: list[tuple[int, int]]  # (start, stop) ranges of `records` that are transactions
    after: str  # the last key this chunk covers: a resumed copy starts after it


@dataclass(frozen=True, slots=True)
class CopyEnd:
    """The last frame: every key was served. A stream that stops before it was cut."""

    floor: int  # the source's feed floor once the copy was read


Frame = CopyHeader | CopyChunk | CopyEnd


# -- the source side -----------------------------------------------------------------------------


async def serve_copy(
    node_id: str,
    store: Store,
    membership: Membership,
    request: CopyRequest,
    *,
    busy: bool = False,
) -> AsyncGenerator[Frame, None]:
    """The frames of a copy of `store` after `request.after`. Raises `membership.Removed` for a
    puller that was removed, `CopyBusy` when this node is copying itself (`busy`), and
    `CopyUnsupported` when the store cannot serve a copy, all before the first frame. A puller
    whose digest is this store's holds every record it holds: its copy ends at once.

    The puller counts as heard from, but its progress is not recorded: the source's tombstone
    purge horizon stays where the puller's last feed pull left it (below the copy's start), so no
    tombstone the puller has yet to read from the feed after the copy can be purged meanwhile."""
    puller = request.puller_id
    if puller and puller != node_id:
        membership.check(puller, request.puller_incarnation)
        membership.heard_from(
            puller, request.puller_url, request.puller_version, request.puller_incarnation or None
        )
    if busy:
        raise CopyBusy(f"node {node_id} is copying a data set itself; ask again later")
    limit = max(1, min(request.limit, MAX_CHUNK))
    # Read before the first page: every change the pages may miss comes later in the feed.
    header = CopyHeader(
        node_id,
        store.instance_id,
        store.last_seq,
        store.feed_floor,
        store.clock_high,
        membership.self_entry.left,
    )
    if request.digest and request.digest == store.digest().digest:
        # The same (key, version) pairs, tombstones included: the feed after `seq` is all the
        # puller lacks (also read at this same commit).
        yield header
        yield CopyEnd(header.floor)
        return
    page = await store.copy_page(request.after, limit, COPY_CHUNK_BYTES)
    served = set(page.served)
    yield header
    while True:
        upcoming: asyncio.Task[CopyPage] | None = None
        if not page.done:  # read the next page while this one is sent
            upcoming = asyncio.ensure_future(
                store.copy_page(page.after, limit, COPY_CHUNK_BYTES, frozenset(served))
            )
        try:
            yield _chunk(page.changes, page.after)
        except BaseException:
            if upcoming is not None:
                upcoming.cancel()
                with contextlib.suppress(BaseException):
                    await upcoming
            raise
        if upcoming is None:
            break
        page = await upcoming
        served |= page.served
    yield CopyEnd(store.feed_floor)


def _chunk(changes: list[Change], after: str) -> CopyChunk:
    records: list[Record] = []
    groups: list[tuple[int, int]] = []
    txn, start = 0, 0
    for change in changes:
        if change.txn != txn:
            if txn:
                groups.append((start, len(records)))
            txn, start = change.txn, len(records)
        records.append(change.record)
    if txn:
        groups.append((start, len(records)))
    return CopyChunk(records, [(a, b) for a, b in groups if b - a > 1], after)


def encode_frame(frame: Frame) -> bytes:
    """A frame on the wire: its length in ASCII digits, a newline, then that many bytes of JSON.
    A chunk goes by columns (keys, values, versions; the few expiries and transaction groups
    apart): decoding columns costs half of decoding a list per record."""
    if isinstance(frame, CopyChunk):
        records = frame.records
        body = orjson.dumps(
            {
                "keys": [r.key for r in records],
                "values": [r.value for r in records],
                "versions": [r.version for r in records],
                "expires": [[i, r.expires] for i, r in enumerate(records) if r.expires is not None],
                "groups": frame.groups,
                "after": frame.after,
            }
        )
    elif isinstance(frame, CopyHeader):
        body = orjson.dumps(
            {
                "node": frame.node,
                "instance": frame.instance,
                "seq": frame.seq,
                "floor": frame.floor,
                "clock_high": frame.clock_high,
                "left": frame.left,
            }
        )
    else:
        body = orjson.dumps({"end": True, "floor": frame.floor})
    return b"%d\n%s" % (len(body), body)


def decode_frame(body: bytes) -> Frame:
    """One frame's JSON; raises `PeerError` for anything else."""
    try:
        data = orjson.loads(body)
        if "keys" in data:
            return _decode_chunk(data)
        if data.get("end") is True:
            return CopyEnd(int(data["floor"]))
        return CopyHeader(
            str(data["node"]),
            str(data["instance"]),
            int(data["seq"]),
            int(data["floor"]),
            int(data["clock_high"]),
            bool(data.get("left", False)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PeerError(f"unreadable copy frame from peer: {exc}") from exc


def _decode_chunk(data: dict[str, object]) -> CopyChunk:
    keys, values, versions = data["keys"], data["values"], data["versions"]
    expires, groups, after = data["expires"], data["groups"], data["after"]
    if not (
        isinstance(keys, list)
        and isinstance(values, list)
        and isinstance(versions, list)
        and len(keys) == len(values) == len(versions)
        and isinstance(after, str)
    ):
        raise TypeError("a chunk needs keys, values and versions of one length, and a position")
    if not all(type(key) is str for key in keys):
        raise TypeError("a key is text")
    if not all(type(version) is str and version for version in versions):
        raise TypeError("a version is non-empty text")
    if not all(value is None or type(value) is str for value in values):
        raise TypeError("a value is text or null")
    records = list(map(Record, keys, values, versions))
    if not isinstance(expires, list) or not isinstance(groups, list):
        raise TypeError("expiries and groups are lists")
    for index, ms in expires:
        if type(index) is not int or type(ms) is not int or not 0 <= index < len(records):
            raise TypeError("an expiry is [index, milliseconds]")
        records[index] = Record(keys[index], values[index], versions[index], ms)
    ranges: list[tuple[int, int]] = []
    for begin, stop in groups:
        if not (type(begin) is int and type(stop) is int):
            raise TypeError("a group is [start, stop]")
        if not (ranges[-1][1] if ranges else 0) <= begin < stop <= len(records):
            raise ValueError("groups are ordered ranges of the chunk")
        ranges.append((begin, stop))
    return CopyChunk(records, ranges, after)


def read_frames(data: bytes) -> Iterator[Frame]:
    """Every frame of a whole copy answer held in memory (tests)."""
    at = 0
    while at < len(data):
        line_end = data.index(b"\n", at)
        size = int(data[at:line_end])
        yield decode_frame(data[line_end + 1 : line_end + 1 + size])
        at = line_end + 1 + size


# -- the receiving side --------------------------------------------------------------------------


def wants_copy(reply: PullReply, checkpoint: Checkpoint | None) -> bool:
    """Whether, after a feed pull answered `reply` to a puller at `checkpoint`, the puller should
    copy the source's data set rather than read on in its feed: it had nothing of this feed (a
    join, a wipe on either side) and one page did not bring all of it; or its position is below
    the feed's floor (tombstones after it were purged: the feed cannot tell it what was deleted);
    or it is far behind."""
    behind = reply.last_seq - reply.until
    if checkpoint is None or checkpoint.instance != reply.instance:
        return behind > 0
    if checkpoint.seq < reply.floor:
        return True
    return behind > max(COPY_BEHIND, reply.last_seq // 2)


@dataclass(slots=True)
class CopyStats:
    records: int = 0
    won: int = 0
    chunks: int = 0
    started: float = 0.0


class Copier:
    """Runs the bulk copies of one node, one at a time, each resumable from its stored position.

    `transport_copy(url, request)` streams a copy's frames (`HttpTransport.copy`, or the
    simulation's). A copy of a peer is wanted when `want` says so, or when a position for it is
    stored (a copy that was cut: the node stopped, the connection broke)."""

    def __init__(
        self,
        store: Store,
        clock: HybridClock,
        membership: Membership,
        transport_copy: Callable[[str, CopyRequest], AsyncGenerator[Frame, None]] | None,
        *,
        node_id: str,
        now: Callable[[], int],
        chunk: int,
        rng: random.Random | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.store = store
        self.clock = clock
        self.membership = membership
        self.transport_copy = transport_copy
        self.node_id = node_id
        self.now = now
        self.chunk = chunk
        self.skewed = 0  # copied versions past the clock's drift bound
        self.copies_done = 0
        self._wanted: dict[str, CopyPosition | None] = {}  # peer -> where to resume (None: start)
        self._looked: set[str] = set()  # peers whose stored position was read
        self._refused: set[str] = set()  # peers that do not serve copies
        self._deferred: set[str] = set()  # peers found copying themselves (logged once)
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        """A copy is under way: this node's data set is not whole, it serves no copy itself."""
        return self._lock.locked()

    def want(self, peer: str) -> None:
        if self.transport_copy is not None and peer not in self._refused:
            self._wanted.setdefault(peer, None)

    async def pending(self, peer: str) -> bool:
        """Whether a copy of `peer` is to run (or to resume) before its feed is pulled again."""
        if peer not in self._looked:
            self._looked.add(peer)
            stored = CopyPosition.decode(peer, await self.store.get_meta(f"copy:{peer}"))
            if stored is not None and self.transport_copy is not None:
                self._wanted[peer] = stored
        return peer in self._wanted

    async def run(self, url: str, peer: str) -> Checkpoint | None:
        """Copy (or go on copying) `peer`'s data set from `url`. Returns the checkpoint its feed is
        to be read from once the copy is over, or None when the copy is not over (given up, or to
        start again). Raises `PeerError` when the stream fails; what was applied stays applied,
        with its position, and the next run resumes after it."""
        assert self.transport_copy is not None
        deferred = False
        async with self._lock:
            position = self._wanted.get(peer)
            request = CopyRequest(
                after=position.after if position else "",
                limit=self.chunk,
                puller_id=self.node_id,
                puller_url=self.membership.self_entry.url,
                puller_version=self.membership.self_entry.version,
                puller_incarnation=self.membership.incarnation,
                digest=self.store.digest().digest,
            )
            frames = _prefetch(self.transport_copy(url, request), PREFETCH)
            try:
                return await self._copy(url, peer, position, frames)
            except CopyDeferred:
                if peer not in self._deferred:
                    self._deferred.add(peer)
                    log.info("%s is copying a data set itself: copying from it later", url)
                deferred = True
            except CopyRefused as exc:
                log.info("%s does not serve a bulk copy (%s): reading its changes feed", url, exc)
                self._refused.add(peer)
                self._wanted.pop(peer, None)
                return None
            finally:
                await frames.aclose()
        # Wait outside the lock: a node holding it answers copy requests with 503, and two nodes
        # that each wait for the other's copy, holding theirs, would wait for ever. The jitter
        # keeps two such nodes from asking in step.
        if deferred:
            await asyncio.sleep(DEFER_PAUSE * self.rng.uniform(0.5, 1.5))
        return None

    async def _copy(
        self,
        url: str,
        peer: str,
        position: CopyPosition | None,
        frames: AsyncGenerator[Frame, None],
    ) -> Checkpoint | None:
        header = await anext(frames, None)
        if not isinstance(header, CopyHeader):
            raise PeerError(f"{url} sent no copy header")
        source = self.membership.members.get(peer)
        if (
            header.node != peer
            or header.left
            or url in self.membership.refused_urls
            or (source is not None and source.removed(incarnation_of(header.instance)))
        ):
            # Another node answers there now, or one that left or was removed: none of its data
            # is taken (invariant 8); the feed pull that comes next sorts out which it is.
            self._wanted.pop(peer, None)
            return None
        if position is not None and position.instance != header.instance:
            # The peer's store was replaced since the copy began: copy the new one from the start.
            log.info("%s holds a new store: copying it from the start", url)
            self._wanted[peer] = None
            return None
        if position is None:
            position = CopyPosition(peer, header.instance, header.seq)
            log.info("copying the data set of %s from %s (its feed is at %d)", peer, url, header.seq)
        else:
            log.info("resuming the copy of %s from %s after key %r", peer, url, position.after)
        self.membership.heard_from(peer, url)
        self._observe(header.clock_high)
        stats = CopyStats(started=time.monotonic())
        async for frame in frames:
            if isinstance(frame, CopyChunk):
                if frame.records:
                    self._observe(version_hlc(max(frame.records, key=_version).version))
                position = replace(position, after=frame.after)
                stats.won += await self.store.bulk_load(frame.records, position, frame.groups)
                stats.records += len(frame.records)
                stats.chunks += 1
                self._wanted[peer] = position
                continue
            if isinstance(frame, CopyHeader):
                raise PeerError(f"{url} sent a second copy header")
            if frame.floor > position.seq:
                # Tombstones past the copy's start were purged meanwhile: the feed from there
                # cannot tell what they deleted (cannot happen while this node is a member).
                log.warning("%s purged tombstones during the copy: copying again", url)
                self._wanted[peer] = None
                return None
            await self.store.bulk_load([], position, done=True)
            self._wanted.pop(peer, None)
            self.copies_done += 1
            seconds = time.monotonic() - stats.started
            log.info(
                "copied %d records (%d new here) from %s in %.1f s; reading its feed from %d",
                stats.records,
                stats.won,
                url,
                seconds,
                position.seq,
            )
            return Checkpoint(peer, position.instance, position.seq)
        raise PeerError(f"the copy from {url} stopped before its end")

    def _observe(self, hlc: int) -> None:
        if not self.clock.observe(hlc, self.now()):
            self.skewed += 1
            log.warning(
                "a copied version is more than %d ms ahead of this node's clock",
                self.clock.max_drift_ms,
            )


_version = attrgetter("version")


async def _prefetch(frames: AsyncGenerator[Frame, None], depth: int) -> AsyncGenerator[Frame, None]:
    """`frames`, read up to `depth` frames ahead of the consumer: the next chunk arrives and is
    decoded while the current one commits."""
    queue: asyncio.Queue[Frame | Exception | None] = asyncio.Queue(depth)

    async def fill() -> None:
        try:
            async for frame in frames:
                await queue.put(frame)
        except Exception as exc:  # handed to the consumer, in order
            await queue.put(exc)
        else:
            await queue.put(None)

    task = asyncio.ensure_future(fill())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await frames.aclose()
