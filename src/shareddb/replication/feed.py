"""Serving this node's changes feed to pullers: the source side of replication.

A pull names a checkpoint (sequence, feed instance, epoch); the answer carries the changes after
it, a bounded batch, and waits up to `wait` seconds while there are none (long poll). A checkpoint
of another instance (this store was wiped and recreated) is served from 0, one read before this
store went back from where the two agree (replication/epochs.py). Each pull also tells us how far
the puller has applied our feed, and that it is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shareddb.membership import Membership, Outside
from shareddb.record import (
    Record,
    incarnation_of,
    make_origin,
    named,
    version_hlc,
    version_origin,
)
from shareddb.replication.copy import serve_copy
from shareddb.replication.copy_frames import CopyRequest, Frame
from shareddb.replication.epochs import EPOCHS, Epochs
from shareddb.replication.feed_runs import FeedRuns
from shareddb.replication.transport import EncodedChanges, PullReply, PullRequest
from shareddb.store.base import Applied, Change, FeedPage, Store, StoreFull

log = logging.getLogger("shareddb.replication")

MAX_LIMIT = 10_000
MAX_WAIT = 30.0
# A batch stops here (but always holds at least one change); the store's read stops here too, so
# one pull holds about this much of records, and as much again of encoded answer.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# An answer holding only writes taken on other nodes waits up to this long (seconds) for more,
# unless it has RELAY_BATCH changes already (see `Feed.pull`).
RELAY_LINGER = 0.025
RELAY_BATCH = 256
# An answer holding this node's own writes, to a puller answered less than this long ago (seconds),
# waits for the rest of that time (see `Feed.pull`): under load each puller then takes a page, and
# commits, once per OWN_LINGER rather than once per few writes. A write after a quiet spell goes
# at once, and none waits while a `w=N` write waits for copies (`Feed.copies_awaited`).
OWN_LINGER = 0.02
ANSWERED_KEPT = 1024  # pullers whose last answer is remembered (for OWN_LINGER) at most
COPIED_KEPT = 4096  # runs of copied records remembered per peer at most (`Feed.copied_from`)


class Feed:
    def __init__(self, node_id: str, store: Store, membership: Membership) -> None:
        self.node_id = node_id
        self.store = store
        self.membership = membership
        self.encoded = EncodedChanges()  # what api/peer.py sends, encoded once for all pullers
        # Changes served to pullers: written on this node, written elsewhere (relayed), and left
        # out because the puller gets them from the node that took them (for /metrics).
        self.served = {"own": 0, "relayed": 0, "skipped": 0}
        self.closing = False
        self._answered: dict[str, float] = {}  # puller id -> loop time of its last page of changes
        self._awaited = 0  # writes waiting for copies (`w=N`) now
        self._hurry = asyncio.Event()  # set when one starts to wait: lingering answers go at once
        # Per peer: the run of its process that served this node a copy, and the feed positions
        # the copied records took (`copied_from`).
        self._copied: dict[str, tuple[str, FeedRuns]] = {}
        # The feed's epochs: this run's, from where it found the feed, until `begin_epoch` reads
        # the earlier ones from the store.
        self.epochs = Epochs().begin(store.last_seq, membership.boot)
        self._rewound = False  # a puller showed this store's feed went back (logged once)

    def close(self) -> None:
        """The node is stopping: every pull held open is answered now, not when its wait ends
        (the server's shutdown waits for answers in progress)."""
        self.closing = True
        self.store.wake_waiters()

    def copied_from(self, peer: str, boot: str, applied: Applied) -> None:
        """Records copied from `peer`'s data set, served by the run `boot` of its process
        (`Membership.boot`), took the feed positions of `applied`. That run of the peer holds
        every one of them, or a newer version: its store kept what it served, since its writes
        are durable while it runs (a Redis store that lost writes stops the node at its next
        commit). So its pulls pass over those positions instead of taking the records back, a
        whole data set after a join. Only that run: a restart may have put an older copy of
        the store in place (a data directory restored from a backup), and the new run is sent
        everything, as it is sent its own writes until it has caught up (`Replicator._advance`).
        """
        if not boot or peer == self.node_id:
            return
        held = self._copied.get(peer)
        if held is None or held[0] != boot:
            if len(self._copied) >= ANSWERED_KEPT:
                self._copied.clear()  # peers are members: this is only ever a safety bound
            held = self._copied[peer] = (boot, FeedRuns(COPIED_KEPT))
        held[1].add(applied.first, applied.last)

    async def begin_epoch(self) -> None:
        """Note this run's epoch of the feed in the store, before the node serves anything
        (replication/epochs.py). A store that cannot take the note now (full) is served all the
        same: the epoch is known to this run, and a puller holding it after the next start reads
        the feed again from the start."""
        epochs = Epochs.decode(await self.store.get_meta(EPOCHS))
        self.epochs = epochs.begin(self.store.last_seq, self.membership.boot)
        try:
            await self.store.set_meta(EPOCHS, self.epochs.encode())
        except StoreFull as exc:
            log.warning("cannot note this run's epoch of the changes feed: %s", exc)

    def serve_copy(self, request: CopyRequest, *, busy: bool = False) -> AsyncGenerator[Frame, None]:
        """`copy.serve_copy` of this node's data set. The header names this run (`boot`), the
        epoch of the feed position it names."""
        return serve_copy(self.node_id, self.store, self.membership, request, busy=busy)

    def _since(self, request: PullRequest) -> int:
        """Where the puller's next page starts: its checkpoint, or where it agrees with the feed
        as it stands. A checkpoint of another instance of the store (a wiped one, a copy that
        opened as a new life) agrees with none of it. One read in an epoch this store no longer
        holds (replication/epochs.py), or past the feed's end when it names no epoch (a puller
        of an earlier release), shows that the store went back: the node started again on an
        older copy of its data, or on a Redis that lost its last writes. Its writes since took
        positions the puller counts as read, and would never reach it; the node's feed soon
        grows past those positions again, as it takes back what its peers hold, so the feed's
        end tells nothing. The puller reads on from where the two agree, and counts as having
        applied and holding no more (`w=N`, the tombstone purge)."""
        if request.instance != self.store.instance_id:
            return 0
        since = request.since
        if request.epoch:
            agreed = self.epochs.agreed(since, request.epoch)
        else:
            agreed = since if since <= self.store.last_seq else 0
        if agreed < since and not self._rewound:
            self._rewound = True
            log.warning(
                "%s has read this node's changes feed up to %d, of which this store holds %d: "
                "the store is older than one this node ran on (restored from a copy?); its "
                "peers read its feed again from there",
                request.puller_id or "a peer",
                since,
                agreed,
            )
        return agreed

    def _copied_runs(self, request: PullRequest) -> FeedRuns | None:
        """Where this node's feed holds what it copied from the puller's run that asks."""
        copied = self._copied.get(request.puller_id)
        return copied[1] if copied is not None and copied[0] == request.puller_boot else None

    @contextlib.contextmanager
    def copies_awaited(self) -> Iterator[None]:
        """A write waits for copies (`w=N`) meanwhile: answers that gather this node's writes go
        at once, so the pullers apply it and say so without a linger's delay."""
        self._awaited += 1
        self._hurry.set()
        self._hurry = asyncio.Event()
        try:
            yield
        finally:
            self._awaited -= 1

    async def pull(
        self, request: PullRequest, connected: Callable[[], bool] = lambda: True
    ) -> PullReply:
        """The puller's next page, held up to `request.wait` while there is none for it. The
        puller counts as in touch meanwhile, while `connected()` (membership.exchange)."""
        since = self._since(request)
        puller = request.puller_id
        if puller and puller != self.node_id:
            # A member that left or was removed is refused with its old store (invariant 8).
            self.membership.check(puller, request.puller_incarnation)
            # No incarnation given (a hand-made request): it is not a new life.
            current = self.membership.heard_from(
                puller, request.puller_url, request.puller_version, request.puller_incarnation or None
            )
            if current:  # how far a late request of an earlier life had got says nothing now
                # A pull sent while the page before it is still being applied says how far the
                # puller has applied: that, not `since`, is what `w=N` and the purge may count.
                applied = since if request.applied is None else min(request.applied, since)
                self.membership.record_progress(puller, applied, request.held)
        with self.membership.exchange(puller, min(request.wait, MAX_WAIT), connected):
            return await self._answer(request, since)

    async def _answer(self, request: PullRequest, since: int) -> PullReply:
        store = self.store
        puller = request.puller_id
        limit = max(1, min(request.limit, MAX_LIMIT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(request.wait, MAX_WAIT)
        origin = make_origin(puller, request.puller_incarnation)
        skip = request.skip - {self.origin}  # this node's own writes always go
        # A puller that leaves writes out holds less of the feed than it has read: what it has not
        # got of a transaction's keys is served, not only named (entries.serve_entry).
        known = None if request.held is None else min(request.held, since)
        self.encoded.belong_to(store.instance_id)
        unwanted = _Unwanted(origin, request.own_since, skip)
        leave_out = unwanted if unwanted.any else None
        if (runs := self._copied_runs(request)) is not None:
            runs.forget(since)  # this run of the puller has read up to there

        async def read(after: int) -> tuple[FeedPage, _Answer]:
            unwanted.skipped = 0
            count = limit
            # Looked up at each read: a long poll may have begun before the copy did.
            if (runs := self._copied_runs(request)) is not None:
                after = runs.past(after)
                count = runs.limit(after, limit)
            page = await store.changes_since(
                after, count, MAX_ANSWER_BYTES, known=known, leave_out=leave_out
            )
            answer = _for_puller(page.changes, skip, self.origin)
            answer.skipped += unwanted.skipped
            return page, answer

        page, answer = await read(since)
        relayed_until: float | None = None
        own_until = self._answered.get(puller, -OWN_LINGER) + OWN_LINGER
        # A held poll also ends when the node stops, or when the member list changes: the answer
        # carries the list, so a change spreads at once however long the idle poll.
        members = self.membership.generation

        def ended() -> bool:
            return self.closing or self.membership.generation != members

        while True:
            if (remaining := deadline - loop.time()) <= 0:
                break
            records = answer.records
            if records and answer.own and len(records) < RELAY_BATCH and not self._awaited:
                # This node's writes, to a puller answered moments ago: a busy origin. Gathered
                # until OWN_LINGER after that answer, or until a write waits for copies.
                hurry = self._hurry
                if (linger := min(own_until, deadline) - loop.time()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(hurry.wait(), linger)
                    own_until = loop.time()  # gathered once: the next read is the answer
                    page, answer = await read(since)
                    continue
            if records and not answer.groups and len(records) < RELAY_BATCH and not answer.own:
                # Only others' writes, which a full mesh also sends the puller straight from
                # the nodes that took them: gathered for a moment, so that they come in fewer
                # pulls (a puller that lacks them gets them at most RELAY_LINGER later).
                if relayed_until is None:
                    relayed_until = loop.time() + RELAY_LINGER
                if (linger := min(relayed_until, deadline) - loop.time()) > 0:
                    await asyncio.sleep(linger)
                    page, answer = await read(since)
                    continue
            if records:
                break
            # Nothing the puller lacks (an idle feed, only what the puller wrote itself, or only
            # writes it gets straight from their nodes): the long poll goes on, rather than answer
            # an empty page the puller would only ask past again at once. Wait for a sequence
            # past what the read covered, not past `since`: when the rows after `since` were
            # purged tombstones, `since` is already behind `last_seq` and the poll would answer
            # at once, empty, for ever.
            self.served["skipped"] += answer.skipped  # this page is read past, never again
            answer.skipped = 0
            await store.wait_for_changes(page.until, remaining, ended)
            if store.last_seq <= page.until:
                break
            page, answer = await read(page.until)
        self.served["own"] += answer.own
        self.served["relayed"] += len(answer.records) - answer.own
        self.served["skipped"] += answer.skipped
        if answer.records:
            if len(self._answered) >= ANSWERED_KEPT and puller not in self._answered:
                self._answered.clear()  # pullers are members: this is only ever a safety bound
            self._answered[puller] = loop.time()
        return PullReply(
            node=self.node_id,
            instance=store.instance_id,
            epoch=self.membership.boot,
            announced=self.membership.announced if puller == self.node_id else 0,
            until=page.until,
            # A read may see a commit before the store publishes its new `last_seq`.
            last_seq=max(store.last_seq, page.until),
            records=answer.records,
            members=self.membership.entries(),
            groups=[(a, b) for a, b in answer.groups if b - a > 1],
            floor=store.feed_floor,
            seqs=answer.seqs,
        )

    @property
    def origin(self) -> str:
        """What the versions this node mints end with (record.make_origin)."""
        return make_origin(self.node_id, incarnation_of(self.store.instance_id))

    def join(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A node joins through this one: it sends its entries (its own first) and gets the whole
        member list back. A node that left or was removed is refused with its old store, and a
        node that left cannot admit anyone: it is no longer part of the cluster."""
        if self.membership.self_entry.left:
            raise Outside(f"node {self.node_id} left the cluster; join through one of its members")
        if entries:
            newcomer = entries[0]
            self.membership.check(newcomer["id"], str(newcomer.get("inc", "")))
        self.membership.merge(entries)
        if entries:
            self.membership.heard_from(
                newcomer["id"], newcomer["url"], newcomer["v"], str(newcomer.get("inc", "")) or None
            )
        return self.membership.entries()


@dataclass(slots=True)
class _Answer:
    """What of a page of the feed goes to one puller: the records, the index ranges of its
    transactions, each record's sequence number when it is a plain row (`PullReply.seqs`), how
    many of them this node wrote (`own`), and how many changes were left out because the puller
    gets them straight from the node that took them (`skipped`)."""

    records: list[Record] = field(default_factory=list)
    groups: list[tuple[int, int]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    own: int = 0
    skipped: int = 0

    def close_group(self, start: int, skip: frozenset[str], here: str) -> None:
        """End the transaction whose changes are `records[start:]`: a group of the answer, or
        left out whole when it was written on a node in `skip`: a transaction is taken on one
        node, and the puller gets it whole from there."""
        unit = self.records[start:]
        if (
            skip
            and any(not r.named_only for r in unit)
            and all(r.named_only or version_origin(r.version) in skip for r in unit)
        ):
            del self.records[start:], self.seqs[start:]
            self.skipped += len(unit)
            return
        self.groups.append((start, len(self.records)))
        self.own += sum(1 for r in unit if not r.named_only and version_origin(r.version) == here)


class _Unwanted:
    """Which changes of the feed that are not part of a transaction a puller does not get: what
    it wrote itself and holds already, and the writes of the origins in `skip`, which it pulls
    straight from the nodes that took them (counted in `skipped`). The store's read asks it of
    each change before it makes the change into an object (`Store.changes_since`), so a node
    whose feed is mostly others' writes reads past them cheaply for each of its pullers."""

    __slots__ = ("mine", "origin", "own_since", "skip", "skipped")

    def __init__(self, origin: str, own_since: int, skip: frozenset[str]) -> None:
        # The puller already holds what this life of it wrote from own_since on (it says so once
        # it has caught up with this feed; see Replicator._advance). Its versions end with "-" +
        # origin (record.make_version). A transaction's changes all go, also the puller's own:
        # the puller keeps the transaction as one entry of its feed, which must name every key.
        self.mine = "-" + origin if own_since > 0 else None
        self.origin = origin
        self.own_since = own_since
        self.skip = skip
        self.skipped = 0

    @property
    def any(self) -> bool:
        """Whether it may leave out anything at all."""
        return self.mine is not None or bool(self.skip)

    def __call__(self, version: str) -> bool:
        if (
            self.mine is not None
            and version.endswith(self.mine)
            and version_origin(version) == self.origin
            and version_hlc(version) >= self.own_since
        ):
            return True
        if version_origin(version) in self.skip:
            self.skipped += 1
            return True
        return False


def _for_puller(changes: list[Change], skip: frozenset[str], here: str) -> _Answer:
    """What of `changes` (read without what the puller does not get, `_Unwanted`) goes to a puller
    that gets the writes of the origins in `skip` from elsewhere, on the node whose versions carry
    `here`: the changes, grouped by transaction, less the transactions taken on those origins."""
    answer = _Answer()
    records, seqs = answer.records, answer.seqs
    txn, start = 0, 0
    for change in changes:
        record = change.record
        if not change.txn and version_origin(record.version) == here:
            answer.own += 1
        if change.txn != txn:  # a transaction's changes come together: one group
            if txn:
                answer.close_group(start, skip, here)
            txn, start = change.txn, len(records)
        if change.txn:
            records.append(named(record.key) if change.known else record)
            seqs.append(0)
        else:
            records.append(record)
            seqs.append(change.seq)
    if txn:
        answer.close_group(start, skip, here)
    return answer
