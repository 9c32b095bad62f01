"""The change bus (`--bus nats://HOST:PORT`): replication through one NATS JetStream stream.

Each node publishes its own writes once to the cluster's stream, in feed order, from a task that
follows its changes feed and saves how far it got (node meta, through the write pipeline): a crash
between a commit and its publication publishes again, and duplicates are harmless (the merge rule
is idempotent; JetStream's message-id de-duplication drops most of them anyway). A transaction is
one message. Every node reads the whole stream with a durable consumer of its own, skips its own
messages, and applies each batch through the write pipeline with the stream sequence it reached as
its checkpoint, in the same commit; it acknowledges after the commit, and on a restart it resumes
from that stored checkpoint (the consumer is recreated there). A node whose checkpoint fell
behind what the stream retains copies the data set from a peer first (the join path), then reads
the stream again. Plain NATS messages (not stored) carry each node's heartbeat: its member entries
and position, which give /v1/cluster, `w=N` and the tombstone purge what pulls give them without
the bus. This module moves changes and positions only: it never writes to the store but through
the pipeline, nor decides a merge. docs/design.md, "The change bus", has the argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamInfo,
)

from shareddb.clock import HybridClock
from shareddb.membership import Membership
from shareddb.record import make_origin
from shareddb.replication.bus_beats import HEARTBEAT, Heartbeats
from shareddb.replication.bus_inbound import Inbound, Received
from shareddb.replication.bus_publish import Publisher
from shareddb.replication.bus_view import BusAddress, BusState, backoff, consumer_name, redact
from shareddb.replication.transport import PeerError
from shareddb.store.base import Checkpoint, Store, StoreUnavailable

log = logging.getLogger("shareddb.bus")

FETCH = 512  # messages a consumer applies at once at most
FETCH_WAIT = 1.0
MAX_IN_FLIGHT = 2048  # messages the server sends a consumer before it acknowledges
ACK_WAIT = 10.0  # seconds before the server sends an unacknowledged message again
HURRY = 0.02  # seconds between looks at the consumers while a write waits for copies
PAUSE = 2.0  # seconds before a session that failed is set up again
DUPLICATE_WINDOW = 120.0  # seconds JetStream remembers message ids
REQUEST_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


class StreamReset(Exception):
    """The stream is not what this session set up (gone, recreated, or it lost its last
    messages): start over, from the positions saved in the store."""


# Copies the whole data set from the peer at this URL through the join path (the pull path, or
# the bulk copy where a peer offers it); returns once this node has caught up with that peer.
CopyFrom = Callable[[str], Awaitable[None]]


class Bus:
    """One node's side of the change bus. `start()` it once replication is set up."""

    def __init__(
        self,
        address: BusAddress,
        node_id: str,
        store: Store,
        clock: HybridClock,
        membership: Membership,
        *,
        retention: float,
        now: Callable[[], int],
        copy_from: CopyFrom,
        fallback_urls: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.store = store
        self.clock = clock
        self.membership = membership
        self.origin = make_origin(node_id, membership.incarnation)
        self.retention = retention
        self.now = now
        self.copy_from = copy_from
        self.fallback_urls = fallback_urls  # --join and --peers: where a fallback copy may go
        self.state = BusState()
        self.publisher = Publisher(address, node_id, self.origin, store, membership, self.state)
        self.beats = Heartbeats(address, node_id, self.origin, membership, self.publisher, self.state)
        self.inbound = Inbound(self.origin, membership, clock, now, self.publisher.heard)
        membership.bus = True  # members are not pulled: their writes come through the bus
        self._instance = ""  # the stream's identity (its creation time)
        self._hurry_until = 0.0
        self._hurried = asyncio.Event()
        self._reset = False
        self._epoch = 0  # bumped to end the running session's loops
        self._inbox = ""  # where this session's consumer delivers
        self._current: asyncio.Task[None] | None = None  # the session running now
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._nc: Client | None = None
        self._running = False

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bus")

    async def stop(self) -> None:
        self._running = False
        if self._task is not None:
            self._task.cancel()
            # The loops see _running too: a cancel the client swallows delays them only.
            _, stuck = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT)
            if stuck:
                log.warning("the bus did not stop in time")
            self._task = None
        with contextlib.suppress(StoreUnavailable):
            await self.publisher.save()  # a restart need not publish again what went out

    def _live(self, epoch: int) -> bool:
        return self._running and self._epoch == epoch

    def hurry(self, seconds: float) -> None:
        """A write waits for copies (`w=N`): look at the members' positions often meanwhile."""
        self._hurry_until = max(self._hurry_until, time.monotonic() + seconds)
        self._hurried.set()
        self.publisher.hurry()

    @property
    def skewed(self) -> int:
        """Received versions more than the drift bound ahead of this node's clock."""
        return self.inbound.skewed

    def status(self) -> dict[str, Any]:
        s = self.state
        return {
            "url": redact(self.address.server),
            "stream": self.address.stream,
            "connected": s.connected,
            "position": s.position,
            "stream_last": s.stream_last,
            "lag": max(0, s.stream_last - s.position),
            "published": s.published,
            "unpublished": max(0, self.store.last_seq - s.published),
            "copying": s.copying,
            "error": s.error,
        }

    async def _run(self) -> None:
        nc: Client | None = None
        try:
            while self._running:
                if nc is None or nc.is_closed:
                    nc = await self._connect()
                    continue
                self._reset = False
                self._current = asyncio.get_running_loop().create_task(self._session(nc))
                try:
                    await self._current
                except asyncio.CancelledError:
                    if not (self._running and self._reset):
                        raise
                    log.info("bus %s: reconnected; setting up again", self.address.stream)
                except Exception as exc:  # whatever it was, the bus must not stop for good
                    await self._session_ended(_leaf(exc))
        finally:
            self.state.connected = False
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    async def _connect(self) -> Client | None:
        """A connection to the server (which then reconnects by itself), or None after a pause."""
        try:
            nc = await nats.connect(
                self.address.server,
                name=f"shareddb {self.node_id}",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            self._failures += 1
            self.state.error = f"cannot reach {redact(self.address.server)}: {exc or type(exc)}"
            if self._failures == 1:
                log.warning("%s; retrying", self.state.error)
            await asyncio.sleep(backoff(self._failures))
            return None
        if self._failures:
            log.info("reached the bus at %s", redact(self.address.server))
        self._failures = 0
        self._nc = nc
        self.state.connected = True
        return nc

    async def _session_ended(self, exc: BaseException) -> None:
        if isinstance(exc, StreamReset):
            log.warning("bus stream %s: %s; setting up again", self.address.stream, exc)
            return
        self.state.error = f"bus: {exc or type(exc).__name__}"
        if isinstance(exc, (nats.errors.Error, TimeoutError, StoreUnavailable, PeerError)):
            log.warning("%s; setting up again", self.state.error)
        else:
            log.error("bus failed; setting up again", exc_info=exc)
        await asyncio.sleep(PAUSE)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("bus connection: %s", exc)

    async def _on_disconnected(self) -> None:
        if self.state.connected:
            log.warning("lost the bus at %s; reconnecting", redact(self.address.server))
        self.state.connected = False

    async def _on_reconnected(self) -> None:
        log.info("reconnected to the bus at %s", redact(self.address.server))
        self.state.connected = True
        # What was in flight may be lost: set up again from the positions this node holds.
        if self._current is not None and not self._current.done():
            self._reset = True
            # The loops also end on a new epoch: the client swallows a cancel in some calls.
            self._epoch += 1
            self._current.cancel()

    async def _session(self, nc: Client) -> None:
        """Set up the stream and run publisher, consumer and heartbeat until one of them finds
        the stream changed under it (or the node stops)."""
        js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        info = await self._ensure_stream(js)
        if _instance(info) != self._instance:
            # Another stream (the first, or one made anew): nothing known of the last holds.
            self._instance = _instance(info)
            self.publisher.new_stream(self._instance)
            self.beats.instance = self._instance
            self.state.position = 0  # nothing of this stream applied yet
        self._seen(info)
        # Nothing past the stream's last message was applied or published on it (a server that
        # lost its last messages numbers new ones from there again). Settled here, before any
        # loop of the session starts: the heartbeat loop takes a position past the stream's end
        # for a loss, and ends the session, which began again at once into the same race.
        self.state.position = min(self.state.position, info.state.last_seq)
        self.publisher.begin(info)
        subscription = await nc.subscribe(self.address.heartbeats, cb=self.beats.heard)
        self.state.error = None
        try:
            async with asyncio.TaskGroup() as group:
                epoch = self._epoch
                self._inbox = ""  # until this session's consumer is made
                group.create_task(self.publisher.run(nc, js, info, lambda: self._live(epoch)))
                group.create_task(self._consume_loop(nc, js, info, epoch))
                group.create_task(self._watch_loop(nc, js, epoch))
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _ensure_stream(self, js: JetStreamContext) -> StreamInfo:
        name = self.address.stream
        try:
            return await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            pass
        try:
            info = await js.add_stream(
                name=name,
                description=f"shareddb cluster {self.address.cluster}: every node's writes",
                subjects=[f"{self.address.changes}.>"],
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_age=self.retention,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW,
            )
            log.info("created bus stream %s (messages kept %g s)", name, self.retention)
            return info
        except nats.js.errors.BadRequestError:
            return await js.stream_info(name)  # another node created it first

    def _seen(self, info: StreamInfo) -> None:
        self.state.stream_last = info.state.last_seq
        self.state.stream_first = info.state.first_seq

    # -- applying the others' writes ----------------------------------------------------------

    async def _consume_loop(
        self, nc: Client, js: JetStreamContext, info: StreamInfo, epoch: int
    ) -> None:
        peer = self.address.checkpoint_peer
        start = await self._start_position(js, info, epoch)
        name = consumer_name(self.node_id)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(self.address.stream, name)
        # Pushed to an inbox of this session as they come (no pull round trip per batch); at
        # most MAX_IN_FLIGHT unacknowledged, so a slow node is not flooded.
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(
            inbox, pending_msgs_limit=4 * MAX_IN_FLIGHT, pending_bytes_limit=1 << 30
        )
        # Made anew at the position the store holds: that, not the consumer's acknowledged
        # position on the server, is where this node resumes (they differ after a crash between
        # commit and ack, or a server that lost its last writes).
        await js.add_consumer(
            self.address.stream,
            ConsumerConfig(
                durable_name=name,
                deliver_subject=inbox,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.ALL,
                ack_wait=ACK_WAIT,
                max_ack_pending=MAX_IN_FLIGHT,
                filter_subject=f"{self.address.changes}.>",
            ),
        )
        self._inbox = inbox  # the consumer delivers there now (`_consumer_taken`)
        self.state.position = start - 1
        self.inbound.restart()
        try:
            while self._live(epoch):
                if self.membership.self_entry.left:
                    await asyncio.sleep(HEARTBEAT)  # a node that left takes nothing more
                    continue
                try:
                    messages = [await subscription.next_msg(timeout=FETCH_WAIT)]
                except nats.errors.TimeoutError:
                    continue  # nothing new
                while len(messages) < FETCH and subscription.pending_msgs > 0:
                    messages.append(await subscription.next_msg(timeout=FETCH_WAIT))
                await self._apply(peer, messages)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _apply(self, peer: str, messages: list[Msg]) -> None:
        """Apply the others' writes among `messages` in one commit, with the stream position
        they reach as the checkpoint (replication/bus_inbound.py); then acknowledge them all."""
        if self.membership.self_entry.left:
            return  # a node that left takes nothing more, also what had arrived already
        received = [Received(m.metadata.sequence.stream, m.headers or {}, m.data) for m in messages]
        batch = self.inbound.take(received, self.state.position)
        if batch is None:
            return
        checkpoint = Checkpoint(peer, self._instance, batch.checkpoint)
        applied = await self.store.apply(batch.records, checkpoint, batch.groups)
        self.publisher.took(applied.first, applied.last)
        last = messages[-1].metadata
        self.state.position = last.sequence.stream
        self.state.stream_last = max(self.state.stream_last, self.state.position + last.num_pending)
        with contextlib.suppress(nats.errors.Error):
            await messages[-1].ack()  # acknowledges every message up to it (AckPolicy.ALL)

    async def _start_position(self, js: JetStreamContext, info: StreamInfo, epoch: int) -> int:
        """The stream sequence to read from: just past the stored checkpoint, when the stream
        still holds what follows it; else after a copy of the data set from a peer."""
        checkpoint = await self.store.checkpoint(self.address.checkpoint_peer)
        first, last = info.state.first_seq, info.state.last_seq
        if checkpoint is not None and checkpoint.instance == self._instance:
            # A server that lost its last messages numbers new ones from there again.
            start = min(checkpoint.seq, last) + 1
            if start >= first:
                return start
            why = (
                f"its checkpoint {checkpoint.seq} is behind the first message the stream "
                f"retains ({first})"
            )
        elif first <= 1:
            return 1  # the stream holds everything ever published to it
        else:
            why = f"the stream retains messages from {first} on only"
        return await self._fall_back(js, why, epoch)

    async def _fall_back(self, js: JetStreamContext, why: str, epoch: int) -> int:
        """Copy the data set from a peer (the join path), then read the stream from the first
        message it retained before the copy began: whatever left it since is in the copy."""
        logged = False
        while self._live(epoch):
            info = await js.stream_info(self.address.stream)
            if _instance(info) != self._instance:
                raise StreamReset("it was made anew")
            self._seen(info)
            for url in self._copy_sources():
                self.state.copying = url
                log.warning("this node is too far behind on the bus (%s): copying from %s", why, url)
                try:
                    await self.copy_from(url)
                except (PeerError, StoreUnavailable) as exc:
                    log.warning("copy from %s failed: %s", url, exc)
                    continue
                finally:
                    self.state.copying = None
                log.info(
                    "copied the data set from %s; reading the bus from %d", url, info.state.first_seq
                )
                return max(1, info.state.first_seq)
            if not logged:
                log.error(
                    "this node is too far behind on the bus (%s) and knows no peer to copy from "
                    "yet: give it --join URL, or wait for a member's heartbeat",
                    why,
                )
                logged = True
            await asyncio.sleep(HEARTBEAT)
        return 1  # stopping

    def _copy_sources(self) -> list[str]:
        """Members heard on the bus and up, then --join and --peers."""
        urls = [
            m.url
            for m in self.membership.active()
            if m.id in self.state.members and self.membership.state(m) == "up"
        ]
        return [*urls, *(u for u in self.fallback_urls() if u not in urls)]

    # -- heartbeats: members, positions -------------------------------------------------------

    async def _watch_loop(self, nc: Client, js: JetStreamContext, epoch: int) -> None:
        """Send this node's heartbeat and look at the stream every `beats.period()` seconds; while
        a write waits for copies, look at the members' consumers every HURRY seconds too. Idle,
        a member's position comes with its heartbeat: asking for every consumer each second made
        the idle cost grow with the square of the cluster's size."""
        next_beat = 0.0
        while self._live(epoch):
            now = time.monotonic()
            if now >= next_beat:
                await self.beats.beat(nc)
                # Read before asking: what arrives while the answer travels may be past it.
                known = max(self.publisher.last_acked, self.state.position)
                info = await js.stream_info(self.address.stream)
                if _instance(info) != self._instance:
                    raise StreamReset("it was deleted and made anew")
                if info.state.last_seq < known:
                    raise StreamReset("it lost its last messages (the server restarted without them)")
                self._seen(info)
                if self.membership.rivals and await self._consumer_taken(js):
                    raise StreamReset("another node started with this node's id took its consumer")
                next_beat = now + self.beats.period()
            hurried = self._hurry_until > time.monotonic()
            if hurried:
                await self.beats.consumed(js)
            self._hurried.clear()
            wait = HURRY if hurried else max(0.0, next_beat - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurried.wait(), wait)

    async def _consumer_taken(self, js: JetStreamContext) -> bool:
        """Whether this node's durable consumer is gone or delivers elsewhere: another node
        started with this id makes it anew for itself as it starts. Asked only while one has
        been heard of (`Membership.rivals`); the session that starts again makes it anew."""
        if not self._inbox:
            return False  # this session's consumer is not made yet
        try:
            info = await js.consumer_info(self.address.stream, consumer_name(self.node_id))
        except nats.js.errors.NotFoundError:
            return True
        except (nats.errors.Error, TimeoutError):
            return False
        delivers_to: str | None = info.config.deliver_subject
        return delivers_to != self._inbox


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside a task group's exception group (the one that ended it)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _instance(info: StreamInfo) -> str:
    """A stream's identity: its creation time (a stream deleted and made again has another)."""
    created = info.created
    return created.isoformat() if created is not None else str(info.config.name)
