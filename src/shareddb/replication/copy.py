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
- replication/copy_frames.py: the frames both sides exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from operator import attrgetter

from shareddb.clock import HybridClock
from shareddb.membership import Membership
from shareddb.record import Record, incarnation_of, version_hlc
from shareddb.replication.copy_frames import (
    CopyChunk,
    CopyDeferred,
    CopyEnd,
    CopyHeader,
    CopyRefused,
    CopyRequest,
    Frame,
)
from shareddb.replication.transport import PeerError, PullReply
from shareddb.store.base import (
    COPY_CHUNK_BYTES,
    Applied,
    Change,
    Checkpoint,
    CopyPage,
    CopyPosition,
    Store,
)

log = logging.getLogger("shareddb.replication")

# Told, after each chunk a copy applies, which peer's run (`Membership.boot`) served it and where
# in this node's feed its records went (`Feed.copied_from`).
Copied = Callable[[str, str, Applied], None]

MAX_CHUNK = 100_000  # records per chunk a source serves at most
PREFETCH = 2  # chunks received ahead of the one being applied
DEFER_PAUSE = 1.0  # seconds before asking again a peer that is copying itself
# A node this many changes (and more than half the feed) behind a peer copies instead of reading
# the feed: the compacted feed serves at most one change per key, but a copy serves them faster.
COPY_BEHIND = 50_000


class CopyBusy(Exception):
    """The source is copying a data set itself: what it holds is not whole yet, and serving a
    copy meanwhile would slow its own. The puller backs off and asks again."""


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
        membership.boot,
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
        copied: Copied | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.store = store
        self.clock = clock
        self.membership = membership
        self.transport_copy = transport_copy
        self.node_id = node_id
        self.now = now
        self.chunk = chunk
        self.copied = copied  # told where each chunk went (`Feed.copied_from`)
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
            position = CopyPosition(peer, header.instance, header.seq, epoch=header.boot)
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
                applied = await self.store.bulk_load(frame.records, position, frame.groups)
                if self.copied is not None:
                    self.copied(peer, header.boot, applied)
                stats.won += applied.won
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
            return Checkpoint(peer, position.instance, position.seq, position.epoch)
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
