"""Pulling every peer's changes feed: the receiving side of replication.

One puller per peer URL: pull a batch, fold its versions into the clock, apply it and save the
peer's checkpoint in one transaction, repeat. On an error it backs off with jitter (the member shows
as `down`) and goes on; nothing is lost, because the checkpoint only moves with applied data.
Records that win the LWW comparison enter this node's own feed, so changes also travel through
intermediate nodes (A→B→C when A and C cannot reach each other); where a node pulls the node that
took a write straight, its other peers leave that write out (replication/paths.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from shareddb.clock import HybridClock
from shareddb.membership import Membership, long_poll
from shareddb.record import incarnation_of, make_origin, record_hlcs, version_origin
from shareddb.replication.copy import Copied, Copier, wants_copy
from shareddb.replication.paths import Asked
from shareddb.replication.purge import TOMBSTONE_GRACE_MS, Purge
from shareddb.replication.reading import Reading
from shareddb.replication.rivals import Rivals
from shareddb.replication.transport import (
    PeerError,
    PeerRemoved,
    PullReply,
    PullRequest,
    Transport,
)
from shareddb.store.base import COPY_CHUNK, Checkpoint, Store, StoreUnavailable
from shareddb.store.plan import loses

log = logging.getLogger("shareddb.replication")

BATCH = 5_000
MIN_BACKOFF = 0.05
MAX_BACKOFF = 5.0
JOIN_RETRY = 1.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Pulled:
    """An answer, with what its pull asked from (`wants_copy` looks) and what this node knew
    when it sent it (replication/paths.py)."""

    reply: PullReply
    position: Checkpoint | None
    asked: Asked
    # The members listed at the pulled URL when the pull was sent: only those may be retired
    # for the answer (`Replicator._take`).
    listed: frozenset[str] = frozenset()


class Replicator:
    """Runs one puller per peer and keeps that set in step with the member list."""

    def __init__(
        self,
        node_id: str,
        store: Store,
        clock: HybridClock,
        membership: Membership,
        transport: Transport,
        *,
        now: Callable[[], int],
        rng: random.Random | None = None,
        tombstone_grace_ms: int = TOMBSTONE_GRACE_MS,
        copy_chunk: int = COPY_CHUNK,
        copied: Copied | None = None,
        stop: Callable[[str], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.clock = clock
        self.membership = membership
        self.transport = transport
        self.now = now
        # Per peer id: from which clock value on the peer may leave out what this node wrote
        # itself (see `pull_once`). In memory: after a restart each peer sends everything again
        # until this node has caught up with it.
        self._own_since: dict[str, int] = {}
        self.rng = rng or random.Random()
        self.skewed = 0  # received versions more than the drift bound ahead of local time
        # Per peer id: changes of its feed not pulled yet, as of the last pull (for /metrics).
        self.pull_lag: dict[str, int] = {}
        # Tombstones every member holds go once past the grace (replication/purge.py).
        self.purge = Purge(store, membership, now=now, grace_ms=tombstone_grace_ms)
        self._pullers: dict[str, asyncio.Task[None]] = {}
        # Per URL: the next page of its feed, asked for while the last one is applied.
        self._ahead: dict[str, asyncio.Task[Pulled | None]] = {}
        # Where this node reads each peer's feed and how far it holds it (replication/reading.py).
        self.reading = Reading(store, membership)
        self._out = membership.self_entry.left  # this node left or was removed; it said so
        self._stop = stop  # ends the node with an error (replication/rivals.py)
        self._tasks: set[asyncio.Task[None]] = set()
        self._persisting: asyncio.Task[None] | None = None
        self._running = False
        # Bulk copies of a peer's data set, when its feed is too far ahead (replication/copy.py).
        self.copier = Copier(
            store,
            clock,
            membership,
            getattr(transport, "copy", None),
            node_id=node_id,
            now=now,
            chunk=copy_chunk,
            rng=self.rng,
            copied=copied,
        )

    def start(self, join: str | None = None) -> None:
        self._running = True
        self.membership.on_change = self._members_changed
        if self._stop is not None:
            rivals = Rivals(self.membership, self.transport, self._stop, self._spawn)
            self.membership.on_rival = rivals.found
            rivals.found()  # any named before this start
        if join:
            self._spawn(self._join(join))
        self._spawn(self.purge.forever(self.rng))
        self.reconcile()

    async def stop(self) -> None:
        self._running = False
        tasks = [*self._pullers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            # A cancel that lands while a peer connection fails can be swallowed by the HTTP
            # client; the loops also check _running, and nothing here waits for ever.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in stuck:
                log.warning("replication task %s did not stop in time", task.get_name())
        self._pullers.clear()
        self.drop_pages_ahead()
        await self.persist_members()
        await self.transport.close()

    def reconcile(self) -> None:
        """Start a puller for every URL to pull, stop the ones no longer wanted."""
        if not self._running:
            return
        wanted = self.membership.pull_urls()
        for url in list(self._pullers):
            if url not in wanted:
                self._pullers.pop(url).cancel()
                if peer_id := self.membership.id_for_url(url):
                    self._lose(peer_id)
        for url in wanted - self._pullers.keys():
            self._pullers[url] = asyncio.get_running_loop().create_task(self._pull_forever(url))

    def _members_changed(self) -> None:
        self.reconcile()
        self.store.wake_waiters()  # the pulls held here answer with the new list (Feed.pull)
        if self._running and self.membership.self_entry.left and not self._out:
            # Learnt from a node that joined through us, say: saved and said at once, as below.
            self._spawn(self._removed("a member"))
        elif self._running and (self._persisting is None or self._persisting.done()):
            self._persisting = asyncio.get_running_loop().create_task(self.persist_members())

    async def persist_members(self) -> None:
        """Save the member list, this node's own entry included (whether it left is final)."""
        entries = [m.entry() for m in self.membership.members.values()]
        entries.append(self.membership.self_entry.entry())
        with contextlib.suppress(StoreUnavailable):
            await self.store.set_meta("members", orjson.dumps(entries).decode())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _join(self, url: str) -> None:
        """Announce this node to a member of the cluster; retried until it answers."""
        failures = 0
        while self._running:
            try:
                entries = await self.transport.join(url, self.membership.entries())
            except PeerRemoved:
                await self._removed(url)
                return
            except PeerError as exc:
                failures += 1
                if failures == 1:
                    log.warning("cannot join through %s yet (%s); retrying", url, exc)
                await asyncio.sleep(JOIN_RETRY * self.rng.uniform(0.5, 1.5))
                continue
            self.membership.merge(entries)
            log.info("joined the cluster through %s", url)
            return

    async def _pull_forever(self, url: str) -> None:
        failures = 0
        reached = False
        me = asyncio.current_task()
        # The loop also ends when this puller is no longer the one wanted for `url`, in case the
        # HTTP client swallowed the cancel that `reconcile` or `stop` sent.
        try:
            while self._running and self._pullers.get(url) is me:
                try:
                    if not await self.pull_once(url):
                        return
                except PeerRemoved:
                    return
                except (PeerError, StoreUnavailable) as exc:
                    failures += 1
                    if failures == 1 and isinstance(exc, StoreUnavailable):
                        log.warning("cannot apply what %s sent: %s; backing off", url, exc)
                    elif failures == 1 and reached:
                        log.warning("pull from %s failed: %s; backing off", url, exc)
                    elif failures == 1:
                        log.info("waiting for peer %s (%s)", url, exc)
                    delay = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** min(failures, 10))
                    await asyncio.sleep(delay * self.rng.uniform(0.5, 1.0))
                else:
                    if failures and reached:
                        log.info("pulling from peer %s again", url)
                    elif not reached:
                        log.info("pulling from peer %s", url)
                    failures = 0
                    reached = True
        finally:
            self._drop_ahead(url)
            self._lose_url(url)

    async def pull_once(self, url: str) -> bool:
        """Pull and apply one page from `url`: one step of its puller (the simulation takes the
        same steps). When the source has more, the next page is asked for while this one is
        applied, and the next step takes it. False when the URL is not to be pulled: it turned
        out to be this node, or a member that was removed. Raises `PeerRemoved` when this node
        was; on `PeerError` its writes come through the other peers again."""
        ahead = self._ahead.pop(url, None)
        try:
            pulled = None
            if ahead is not None:
                try:
                    pulled = await ahead
                except PeerRemoved:
                    raise
                except PeerError:
                    pass  # asked again at once, as any page is
            if pulled is None:  # no page asked ahead, or none that can be taken
                if await self._copy(url):
                    return True
                pulled = await self._fetch(url)
            if not await self._take(url, pulled):
                return False
            reply = pulled.reply
            behind = reply.records and reply.until < reply.last_seq
            if behind and not await self.copier.pending(reply.node):
                # Behind the source: its next page is there already, fetched meanwhile.
                self._ahead[url] = asyncio.get_running_loop().create_task(self._fetch_ahead(url, pulled))
            if reply.records:
                await self._apply(pulled)
            return True
        except BaseException as exc:
            self._drop_ahead(url)  # asked past a page that was not applied
            if isinstance(exc, PeerError):
                self._lose_url(url)
            raise

    def drop_pages_ahead(self) -> None:
        """Forget every page asked for ahead (stopping, or a crash in the simulation)."""
        for url in list(self._ahead):
            self._drop_ahead(url)

    def _drop_ahead(self, url: str) -> None:
        if (ahead := self._ahead.pop(url, None)) is not None:
            if ahead.done() and not ahead.cancelled():
                ahead.exception()  # a failed pull nobody takes now: retrieved, not logged
            ahead.cancel()

    async def _copy(self, url: str) -> bool:
        """Run (or resume) a bulk copy of the peer at `url` when one is due (replication/copy.py);
        its feed is then read from where the copy ended. False when none is due."""
        peer_id = self.membership.id_for_url(url)
        if not peer_id or not await self.copier.pending(peer_id):
            return False
        try:
            copied = await self.copier.run(url, peer_id)
        except PeerRemoved:
            await self._removed(url)
            raise
        finally:
            self.skewed += self.copier.skewed
            self.copier.skewed = 0
        if copied is not None:  # a copy holds all of the feed up to where it began
            self.reading.copied(peer_id, copied)
        return True

    async def _fetch(self, url: str) -> Pulled:
        """Ask `url` for the changes after this node's position in its feed (a long poll)."""
        peer_id = self.membership.id_for_url(url)
        # First the origins no longer direct (their member left, say), which moves the positions
        # back to what this node holds: a position read before that may be past writes of theirs
        # that the pull would not leave out now, and that it would then never read.
        self.reading.check()
        checkpoint = await self.reading.position(peer_id) if peer_id else None
        return await self._send(url, peer_id, checkpoint, None, long_poll(len(self._pullers)))

    async def _fetch_ahead(self, url: str, pulled: Pulled) -> Pulled | None:
        """Ask for the page after `pulled` while `pulled` is applied (only when the source said it
        had more: a node that keeps up sends its next pull once it has applied a page, which
        tells the source at once that it did, for `w=N`). It says how far this node has applied
        (the position before `pulled`): the source counts that for `w=N` and its purge, never
        what is only being applied. It does not wait.

        Nothing is asked (None) when `pulled` was asked for before an origin stopped being
        direct: that page may have left out writes of the origin, so the next pull starts from
        what this node holds of the feed (`_advance`), not from the page's end."""
        reply = pulled.reply
        self.reading.check()
        if not self.reading.current(pulled.asked):
            return None
        done = self.reading.applied(reply.node, reply.instance)
        return await self._send(url, reply.node, reply.reached, done, 0.0)

    async def _send(
        self,
        url: str,
        peer_id: str | None,
        checkpoint: Checkpoint | None,
        applied: int | None,
        wait: float,
    ) -> Pulled:
        self.reading.check()
        asked, held = self.reading.ask(peer_id, checkpoint)
        request = PullRequest(
            since=checkpoint.seq if checkpoint else 0,
            instance=checkpoint.instance if checkpoint else "",
            # Without a checkpoint, a first page of a copy's chunk tells whether to copy instead.
            limit=BATCH if checkpoint else min(BATCH, self.copier.chunk),
            wait=wait,
            puller_id=self.node_id,
            puller_url=self.membership.self_entry.url,
            puller_version=self.membership.self_entry.version,
            own_since=self._own_since.get(peer_id, 0) if peer_id else 0,
            puller_incarnation=self.membership.incarnation,
            applied=applied,
            skip=asked.skip,
            held=held,
            puller_boot=self.membership.boot,
            epoch=checkpoint.epoch if checkpoint else "",
        )
        try:
            listed = frozenset(self.membership.ids_at(url))
            # A pull answered at once holds nothing open (membership.exchange).
            with self.membership.exchange(peer_id or "", wait):
                reply = await self.transport.pull(url, request)
            return Pulled(reply, checkpoint, asked, listed)
        except PeerRemoved:
            await self._removed(url)
            raise

    async def _take(self, url: str, pulled: Pulled) -> bool:
        """What an answer says about the members, before any of its changes is applied. False
        when `url` is not to be pulled: it is this node, or a member that left or was removed."""
        reply = pulled.reply
        if reply.node == self.node_id:
            self.membership.identified(url, reply.node)
            return False
        # Its entries first: a node that left says so in the same answer as the writes it took
        # since, and those must not be applied. Within one incarnation `left` wins in the merge
        # whatever the versions, and the source's word on itself counts even where we do not
        # list it yet.
        self.membership.merge(reply.members)
        incarnation = incarnation_of(reply.instance)
        says_left = any(
            e["id"] == reply.node and e["left"] and e.get("inc") == incarnation for e in reply.members
        )
        if self.membership.self_entry.left and not self._out:
            await self._removed(url)  # the answer says this node was removed
        # One URL is one node: the members listed here before (say, a wiped node that came back
        # under a new id) are gone. Only those listed when the pull was sent: one heard of
        # since may be the node there now, and this the late answer of the one before it.
        if stale := [m for m in self.membership.others_at(url, reply.node) if m in pulled.listed]:
            # Left, they no longer hold up the tombstone purge.
            log.info("node %s now answers at %s in place of %s", reply.node, url, ", ".join(stale))
            version = self.clock.now(self.now())
            for old in stale:
                self.membership.leave(old, version)
                self._lose(old)
            await self.persist_members()  # with the clock value the entries carry
        source = self.membership.members.get(reply.node)
        if says_left or (source is not None and source.removed(incarnation)):
            # A member that left or was removed, back with its old store: none of its data is
            # taken (invariant 8). Its state stays `left`; it is not pulled again.
            if url not in self.membership.refused_urls:
                log.warning(
                    "refusing the changes of %s at %s: it was removed from the cluster (or left it)",
                    reply.node,
                    url,
                )
            self.membership.refuse(url)
            self._lose(reply.node)
            return False
        self.membership.identified(url, reply.node)
        self.membership.heard_from(reply.node, url)
        position = pulled.position
        if position is not None and position.instance == reply.instance and reply.until < position.seq:
            # The source answered from before where this node had read its feed: its store went
            # back (Feed._since). What this node held of that feed says nothing now.
            log.warning("%s's changes feed went back: reading it again from %d", url, reply.until)
            self.reading.went_back(reply.node)
        if wants_copy(reply, position):  # this page is applied all the same
            self.copier.want(reply.node)
        if not reply.records:
            # Nothing to apply (an idle feed): move the position in memory and save it with the
            # next batch. After a crash the node just asks for those changes again.
            self._advance(pulled)
        return True

    async def _apply(self, pulled: Pulled) -> None:
        """Apply a page and save how far this node then holds the feed, in one commit. What this
        node holds already at that version or a newer one is left out first, by its version
        alone; a page of nothing else is not committed at all."""
        reply = pulled.reply
        records = reply.records
        # A transaction is applied whole, by the write pipeline. So is a page of the source's own
        # writes alone, the usual page of a mesh: this node gets those from the source only, so
        # it holds none of them unless it pulled them before and lost its position with a restart,
        # and the pipeline's merge leaves those out (the page then costs one commit). Writes the
        # source relays may be here already, from their origin or another relay.
        source = make_origin(reply.node, incarnation_of(reply.instance))
        if not reply.groups and any(version_origin(r.version) != source for r in records):
            stored = await self.store.lookup({record.key for record in records})
            if stored:
                records = [r for r in records if not loses(r.version, r.value, stored.get(r.key))]
        held = self.reading.held_after(reply, pulled.asked)
        if records:
            skewed = self.clock.observe_all(record_hlcs(records), self.now())
            if skewed:
                self.skewed += skewed
                log.warning(
                    "%d versions from %s (the newest %s) are more than %d ms ahead of this node's clock",
                    skewed,
                    reply.node,
                    max(record.version for record in records),
                    self.clock.max_drift_ms,
                )
            await self.store.apply(records, held, reply.groups)
        # Else nothing to commit: the position moves in memory, saved with the next batch.
        self._advance(pulled, held)

    def _advance(self, pulled: Pulled, held: Checkpoint | None = None) -> None:
        """`pulled` is applied, and this node holds the source's feed up to `held`."""
        reply = pulled.reply
        self.reading.advance(reply, pulled.asked, held or self.reading.held_after(reply, pulled.asked))
        # How far behind the peer's feed this node is, for /metrics.
        self.pull_lag[reply.node] = max(0, reply.last_seq - reply.until)
        if reply.until >= reply.last_seq and reply.node not in self._own_since:
            # Once this node holds all of a peer's feed, the peer may leave out the records this
            # node writes itself from then on: they are the ones of its id above its clock now.
            # Not before: with a store that lost its latest writes (Redis with relaxed
            # persistence), the peer may hold writes of this incarnation that this node lacks.
            self._own_since[reply.node] = self.clock.last + 1

    def _lose_url(self, url: str) -> None:
        if peer_id := self.membership.id_for_url(url):
            self._lose(peer_id)

    def _lose(self, peer_id: str) -> None:
        self.reading.lose(peer_id)

    def leaving(self) -> None:
        """This node leaves the cluster by its own choice (see `Node.leave`)."""
        self._out = True

    async def _removed(self, source: str) -> None:
        """A peer (`source`) says this incarnation of the node left or was removed: stop
        replicating, and save that first, so that a restart with this store stays out too."""
        if self._out:
            return
        self._out = True
        log.error(
            "this node (%s) was removed from the cluster (or left it), says %s: it no longer "
            "replicates; to add it again, start it with an empty --data and --join URL",
            self.node_id,
            source,
        )
        if not self.membership.self_entry.left:
            self.membership.leave(self.node_id, self.clock.now(self.now()))
        await self.persist_members()
