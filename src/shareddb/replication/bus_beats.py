"""The change bus's heartbeats: who is on the bus, and how far each member has applied.

Each node sends a plain NATS message (not stored) every `period()` seconds: its own member entry,
its position on the stream and a digest of its whole member list. The whole list goes along only
when it changed since the last one sent, or when another node's digest differs (at most once per
RESYNC seconds), so an idle cluster exchanges small beats and the list spreads once per change.
The period grows with the number of nodes (about BEATS_PER_SECOND beats on the whole bus each
second, between HEARTBEAT and MAX_PERIOD seconds), so the beats every node receives stay nearly
flat as nodes are added. MAX_PERIOD is a third of membership.UP_WINDOW: a member that is up is
heard from three times per window, and one that crashed shows `down` at most UP_WINDOW seconds
after its last beat. While a write waits for copies, the members' positions are also read from
their consumers (`consumed`). This module only reads and writes membership bookkeeping;
docs/design.md, "The change bus".
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext

from shareddb.membership import UP_WINDOW, Membership
from shareddb.replication.bus_publish import Publisher
from shareddb.replication.bus_view import BusAddress, BusState, consumer_name

log = logging.getLogger("shareddb.bus")

HEARTBEAT = 1.0  # seconds between heartbeats in a small cluster (the shortest period)
MAX_PERIOD = UP_WINDOW / 3  # the longest period: a member that is up is heard 3 times a window
BEATS_PER_SECOND = 3.0  # heartbeats on the whole bus per second, as the period adapts to it
RESYNC = 5.0  # seconds between whole member lists sent because another node's digest differs


class Heartbeats:
    """One node's heartbeats: sends its own, takes in the others'."""

    def __init__(
        self,
        address: BusAddress,
        node_id: str,
        origin: str,
        membership: Membership,
        publisher: Publisher,
        state: BusState,
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.origin = origin
        self.membership = membership
        self.publisher = publisher
        self.state = state
        self.instance = ""  # the stream's identity (bus._instance)
        self._sent_digest = ""  # the digest of the last whole list sent
        self._sent_at = -RESYNC  # monotonic seconds it was sent
        self._differs = False  # a beat heard since the last one sent had another digest

    def period(self) -> float:
        """Seconds between this node's heartbeats, for the number of nodes on the bus."""
        nodes = len(self.state.members) + 1
        return min(MAX_PERIOD, max(HEARTBEAT, nodes / BEATS_PER_SECOND))

    def digest(self) -> str:
        entries = sorted(self.membership.entries(), key=lambda e: str(e["id"]))
        encoded = orjson.dumps(entries, option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(encoded, digest_size=8).hexdigest()

    async def beat(self, nc: Client) -> None:
        digest = self.digest()
        now = time.monotonic()
        whole = digest != self._sent_digest or (self._differs and now - self._sent_at >= RESYNC)
        if whole:
            entries = self.membership.entries()
            self._sent_digest, self._sent_at, self._differs = digest, now, False
        else:
            entries = [self.membership.self_entry.entry()]
        beat = {
            "id": self.node_id,
            "origin": self.origin,
            "stream": self.instance,
            "position": self.state.position,
            "digest": digest,
            "entries": entries,  # this node's own entry first; every entry when `whole`
        }
        await nc.publish(self.address.heartbeats, orjson.dumps(beat))

    async def heard(self, msg: Any) -> None:
        try:
            beat = orjson.loads(msg.data)
            node_id, origin, entries = str(beat["id"]), str(beat["origin"]), list(beat["entries"])
            position, stream = int(beat["position"]), str(beat["stream"])
            digest = beat.get("digest")  # absent from a node of an earlier release: every entry
            own = next(e for e in entries if e["id"] == node_id)
            url, version, incarnation = str(own["url"]), int(own["v"]), str(own.get("inc", ""))
            if node_id == self.node_id:
                # Its own beat, or another node's started with its id (replication/rivals.py).
                self.membership.rival(url, incarnation)
                return
            member = self.membership.members.get(node_id)
            if member is not None and member.removed(incarnation):
                return  # invariant 8: not taken back, not counted
            self.membership.merge(entries)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration):
            log.debug("unreadable heartbeat on the bus")
            return
        if digest is not None and digest != self.digest():
            self._differs = True  # one of us lacks entries: send the whole list (see `beat`)
        self.publisher.heard(origin)
        self.state.members.add(node_id)
        current = self.membership.heard_from(node_id, url, version, incarnation)
        if current and stream == self.instance:
            self.progress(node_id, position)

    def progress(self, node_id: str, stream_seq: int) -> None:
        """`node_id` has applied the stream up to `stream_seq`: how far that is in this node's feed."""
        position = self.publisher.marks.position_at(stream_seq)
        member = self.membership.members.get(node_id)
        if position is not None and member is not None and (member.applied or 0) < position:
            self.membership.record_progress(node_id, position)

    async def consumed(self, js: JetStreamContext) -> None:
        """Each member's acknowledged position, from its consumer: fresher than its heartbeat."""
        try:
            consumers = await js.consumers_info(self.address.stream)
        except (nats.errors.Error, TimeoutError):
            return
        names = {consumer_name(m): m for m in self.state.members}
        for consumer in consumers:
            node_id = names.get(consumer.name)
            if node_id is not None and consumer.ack_floor is not None:
                self.progress(node_id, consumer.ack_floor.stream_seq)
