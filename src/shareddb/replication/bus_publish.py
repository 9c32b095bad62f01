"""The change bus's publishing side: this node's writes, once each, in feed order.

A task follows the node's changes feed and publishes, a page at a time, what no other node on the
bus publishes (its own writes; records of origins not heard on the bus, such as a restored
snapshot); a transaction is one message. How far it got is node meta, saved through the write
pipeline about once a second, so a crash publishes at most that much again. It never writes to
the store otherwise. docs/design.md, "The change bus".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable

import nats.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from shareddb.membership import Membership
from shareddb.record import Record, named, version_origin
from shareddb.replication.bus_view import BusAddress, BusState, FeedMarks, backoff
from shareddb.replication.feed_runs import FeedRuns
from shareddb.replication.transport import PullReply, encode_reply
from shareddb.store.base import Change, FeedPage, Store

log = logging.getLogger("shareddb.bus")

ORIGIN = "Shareddb-Origin"  # header: the publishing node's origin (id~incarnation)
UNIT = "Shareddb-Unit"  # header of a part: the id of the message it is part of
PART = "Shareddb-Part"  # header of a part: "NUMBER/COUNT", from 1
PUBLISHED = "bus_published"  # node meta: {"stream": instance, "seq": feed position published}
PUBLISH_PAGE = 5_000  # changes read from the feed at once
SAVE_EVERY = 1.0  # seconds between saves of the position while busy
FIRST_HEARD = 2.5  # seconds to wait for the others' heartbeats before publishing anything
IDLE_WAIT = 1.0  # seconds the publisher waits for a change before it looks again
# Seconds a busy publisher gathers changes before its next message, per two other nodes on the
# bus (`linger`): every message costs each of the other nodes a commit of its own, so under load
# one message per linger (all that came meanwhile) keeps the whole cluster's cost per write flat
# as it grows. A write after a quiet spell, or one that waits for copies (`w=N`, see `hurry`),
# goes out at once.
LINGER = 0.05
MAX_LINGER = 0.4
# A lingering publisher sends at once when nothing was committed for this share of the linger.
QUIET_SHARE = 0.25
REQUEST_TIMEOUT = 5.0
HEADROOM = 4096  # bytes of a message kept for headers and framing below the server's max_payload
OTHERS_KEPT = 4096  # feed ranges of the others' writes remembered at most (see `took`)


class Publisher:
    """Publishes one node's writes to the stream; its marks say where they are on it."""

    def __init__(
        self,
        address: BusAddress,
        node_id: str,
        origin: str,
        store: Store,
        membership: Membership,
        state: BusState,
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.origin = origin
        self.store = store
        self.membership = membership
        self.state = state
        self.instance = ""  # the stream's identity (bus._instance)
        self.marks = FeedMarks()
        self.origins: set[str] = set()  # origins of the other nodes heard on the bus
        self._heard = asyncio.Event()  # set once another node was heard
        self.last_acked = 0  # greatest stream sequence a publish of ours got
        # A stream sequence at or below which everything in this node's feed so far is on the
        # stream: its own writes (published) and the others' (consumed from there).
        self.covered = 0
        self.position: int | None = None  # the feed position published, across sessions
        self._sent_at = 0.0  # monotonic seconds of the last message published
        self._hurried = asyncio.Event()  # a write waits for copies: publish without lingering
        # Feed positions that hold only the others' writes taken off the bus (see `took`).
        self._others = FeedRuns(OTHERS_KEPT)
        self._rewind: int | None = None  # the feed position to publish from again (`begin`)
        self._saved, self._saved_at = 0, 0.0  # the position last saved, and when (monotonic)

    def hurry(self) -> None:
        """A write waits for copies (`w=N`): publish what there is now."""
        self._hurried.set()

    def took(self, first: int, last: int) -> None:
        """The others' writes off the bus took feed positions `first` to `last` (and only they):
        nothing there is this node's to publish, so it passes over them without reading them. A
        follower's feed is almost all such ranges; reading them only to skip every record cost
        it about a fifth of its CPU per write. Forgetting a range is harmless: it is read and
        its records skipped one by one, as any other."""
        self._others.add(first, last)

    def heard(self, origin: str) -> None:
        """Another node publishes on the bus, under `origin`: its writes are not ours to send."""
        self.origins.add(origin)
        self._heard.set()

    def new_stream(self, instance: str) -> None:
        """Another stream (the first, or one made anew): nothing known of the last holds. Nor
        who publishes on it: a node that published its own writes to the last stream and is
        gone for good cannot publish them to this one, so until a node is heard on this stream
        (its heartbeat, or a message), this node publishes its writes as nobody else's."""
        self.instance = instance
        self.position, self.marks, self.last_acked = None, FeedMarks(), 0
        self.origins.clear()
        self._heard.clear()

    def begin(self, info: StreamInfo) -> None:
        """A session begins on the stream as `info` describes it: what it lost since the last
        session is known from here on, before anything looks at `last_acked`."""
        self._rewind = None
        if info.state.last_seq < self.last_acked:
            # The server came back without its last messages: they are published again.
            self._rewind = self.marks.rewind(info.state.last_seq)
        self.last_acked = min(self.last_acked, info.state.last_seq)

    async def run(
        self, nc: Client, js: JetStreamContext, info: StreamInfo, live: Callable[[], bool]
    ) -> None:
        """Publish until `live()` is false; the stream as it was when the session began is `info`
        (`begin` has seen it)."""
        self._others.clear()  # what the last session took is read again, as any other range
        position = await self._published_position()
        if self.position is not None:
            position = max(position, self.position)  # published in an earlier session
        if self._rewind is not None:  # see `begin`
            position = self.position = min(position, self._rewind)
            await self._save_published(position)
        # Everything this node published before is on the stream at or below its last sequence.
        self.covered = info.state.last_seq
        self.marks.mark(self.covered, position)
        self.state.published = position
        self._saved, self._saved_at = position, time.monotonic()
        failures = 0
        # Until the others' heartbeats name them, their writes in this feed look like nobody's
        # and would all be published again (harmless, but a whole data set after a first start).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), FIRST_HEARD)
        while live():
            if self.membership.self_entry.left:
                await asyncio.sleep(IDLE_WAIT)  # a node that left publishes nothing more
                continue
            position = self._past_others(position)
            page = await self._page(position)
            if not page.changes and page.until <= position:
                await self.store.wait_for_changes(position, await self._save_when_due(position))
                continue
            if await self._linger():
                position = self._past_others(position)
                page = await self._page(position)
            units = self._units(page.changes)
            try:
                for records, groups, until in self._messages(nc.max_payload, units, page.until):
                    await self._publish(js, nc.max_payload, records, groups, until)
                    if until:
                        position = self.position = until
                        self.state.published = position
            except (nats.errors.Error, TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("cannot publish to the bus (%s); retrying", exc or type(exc).__name__)
                await asyncio.sleep(backoff(failures))
                continue
            if failures:
                log.info("publishing to the bus again")
            failures = 0
            position = self._went_through(max(position, page.until))
            await self._save_when_due(position)

    def _went_through(self, position: int) -> int:
        """This node's feed is gone through up to `position`: all of it that this node
        publishes is on the stream, at or below what it has published or consumed."""
        self.position = self.state.published = position
        self.marks.mark(max(self.covered, self.state.position), position)
        return position

    async def _save_when_due(self, position: int) -> float:
        """Save `position` (node meta, a commit) once SAVE_EVERY has passed since the last save:
        a follower goes through its feed after every message it applies, and a save each time
        was a second commit per message. Returns the seconds until a save is due again, at most
        IDLE_WAIT."""
        if position == self._saved:
            return IDLE_WAIT
        due = self._saved_at + SAVE_EVERY - time.monotonic()
        if due > 0:
            return min(due, IDLE_WAIT)
        await self._save_published(position)
        self._saved, self._saved_at = position, time.monotonic()
        return IDLE_WAIT

    def _past_others(self, position: int) -> int:
        """The feed position past the ranges of the others' writes that start right after
        `position` (see `took`): as if a page of them had been read and none published."""
        moved = self._others.past(position)
        self._others.forget(moved)
        return self._went_through(moved) if moved > position else position

    async def _page(self, position: int) -> FeedPage:
        """The feed after `position`, up to the next range of the others' writes when one is
        known (the page may run into it where keys were written again; nothing is lost)."""
        return await self.store.changes_since(position, self._others.limit(position, PUBLISH_PAGE))

    def linger(self) -> float:
        """Seconds between messages under load: LINGER with two other nodes on the bus, growing
        with their number (each pays a commit per message) up to MAX_LINGER."""
        return min(MAX_LINGER, LINGER * max(1.0, len(self.state.members) / 2))

    async def _linger(self) -> bool:
        """Wait out the rest of `linger()` after the last message, unless a write waits for copies
        or the node has gone quiet: nothing committed for a quarter of the linger (a burst has
        ended, and what it gathered goes at once, not up to a linger later). Returns whether it
        waited (the page is read again, with what came meanwhile)."""
        rest = self._sent_at + self.linger() - time.monotonic()
        if rest <= 0 or self._hurried.is_set():
            self._hurried.clear()
            return False
        quiet = self.linger() * QUIET_SHARE
        seq = self.store.last_seq
        while rest > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurried.wait(), min(quiet, rest))
            if self._hurried.is_set() or self.store.last_seq == seq:
                break
            seq = self.store.last_seq
            rest = self._sent_at + self.linger() - time.monotonic()
        self._hurried.clear()
        return True

    def _publishes(self, record: Record) -> bool:
        """Whether this node puts `record` on the bus: its own writes, and what no other node on
        the bus will publish (a restored snapshot, writes of nodes that are not on the bus)."""
        origin = version_origin(record.version)
        return origin == self.origin or origin not in self.origins

    def _units(self, changes: list[Change]) -> list[tuple[list[Record], bool]]:
        """The changes to publish, as units never split: (records, is a transaction)."""
        units: list[tuple[list[Record], bool]] = []
        index = 0
        while index < len(changes):
            change = changes[index]
            if not change.txn:
                if not change.known and self._publishes(change.record):
                    units.append(([change.record], False))
                index += 1
                continue
            stop = index
            while stop < len(changes) and changes[stop].txn == change.txn:
                stop += 1
            group = changes[index:stop]
            if any(not c.known and self._publishes(c.record) for c in group):
                units.append(([named(c.record.key) if c.known else c.record for c in group], True))
            index = stop
        return units

    def _messages(
        self, max_payload: int, units: list[tuple[list[Record], bool]], until: int
    ) -> list[tuple[list[Record], list[tuple[int, int]], int]]:
        """Units packed into messages that fit the server's max_payload: (records, groups, feed
        position the message completes). Only the last message completes the page."""
        budget = max(1024, max_payload - HEADROOM)
        messages: list[tuple[list[Record], list[tuple[int, int]], int]] = []
        records: list[Record] = []
        groups: list[tuple[int, int]] = []
        size = 0
        for unit, is_txn in units:
            unit_size = sum(_size(r) for r in unit)
            # A unit larger than a message goes alone, and `_publish` sends it in parts.
            if records and size + unit_size > budget:
                messages.append((records, groups, 0))
                records, groups, size = [], [], 0
            if is_txn and len(unit) > 1:
                groups.append((len(records), len(records) + len(unit)))
            records.extend(unit)
            size += unit_size
        if records:
            messages.append((records, groups, until))
        return messages

    async def _publish(
        self,
        js: JetStreamContext,
        max_payload: int,
        records: list[Record],
        groups: list[tuple[int, int]],
        until: int,
    ) -> None:
        reply = PullReply(
            node=self.node_id,
            instance=self.store.instance_id,
            until=until,
            last_seq=self.store.last_seq,
            records=records,
            members=[],
            groups=groups,
        )
        payload = b"".join(encode_reply(reply))
        # The same records get the same id, so JetStream drops a second copy of them; an id
        # made from their place in the feed could name other records after a retry.
        content = hashlib.blake2b(digest_size=16)
        for record in records:
            content.update(f"{record.key}\0{record.version}\0".encode())
        msg_id = f"{self.origin}:{content.hexdigest()}"
        budget = max(1024, max_payload - HEADROOM)
        parts = [payload[i : i + budget] for i in range(0, len(payload), budget)]
        for number, part in enumerate(parts, 1):
            headers = {"Nats-Msg-Id": msg_id, ORIGIN: self.origin}
            if len(parts) > 1:
                # Larger than the server takes at once (a large value or transaction): in
                # parts, which the consumers put together before they apply anything of it.
                headers["Nats-Msg-Id"] = f"{msg_id}:{number}"
                headers[UNIT] = msg_id
                headers[PART] = f"{number}/{len(parts)}"
            ack = await js.publish(
                self.address.subject(self.node_id),
                part,
                timeout=REQUEST_TIMEOUT,
                stream=self.address.stream,
                headers=headers,
            )
        self._sent_at = time.monotonic()
        self.last_acked = max(self.last_acked, ack.seq)
        self.covered = max(self.covered, ack.seq, self.state.position)
        self.state.stream_last = max(self.state.stream_last, ack.seq)
        if until:
            self.marks.mark(self.covered, until)

    async def save(self) -> None:
        """Save how far this node has published (when it stops)."""
        if self.position is not None and self.instance:
            await self._save_published(self.position)

    async def _published_position(self) -> int:
        raw = await self.store.get_meta(PUBLISHED)
        if not raw:
            return 0
        saved = orjson.loads(raw)
        if saved.get("stream") != self.instance:
            self.position = None
            # Another stream than the one this node published to (it was deleted and made
            # again): publish everything again, so the new stream holds every write.
            log.info(
                "bus stream %s is new to this node: publishing its feed from the start",
                self.address.stream,
            )
            return 0
        return int(saved.get("seq", 0))

    async def _save_published(self, position: int) -> None:
        await self.store.set_meta(
            PUBLISHED, orjson.dumps({"stream": self.instance, "seq": position}).decode()
        )


def _size(record: Record) -> int:
    """How many bytes a record takes in a message, a few more than its JSON."""
    return 16 + len(orjson.dumps((record.key, record.value, record.version, record.expires)))
