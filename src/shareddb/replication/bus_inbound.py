"""What a node takes from the messages its bus consumer received: the others' writes as one batch
for the write pipeline, and the stream position its commit may save (replication/bus.py).

No network here: the consumer hands over each fetched run of messages, already numbered by the
stream. A message that comes again, or that this node published, is skipped. A large message
arrives in parts (bus_publish.py) and is taken once its last part is there; until then the
checkpoint stays before its first part, so a restart reads every part again. The writes of a
member that was removed are never taken (invariant 8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from shareddb.clock import HybridClock
from shareddb.membership import Membership
from shareddb.record import Record, record_hlcs
from shareddb.replication.bus_publish import ORIGIN, PART, UNIT
from shareddb.replication.transport import PeerError, decode_reply

log = logging.getLogger("shareddb.bus")


@dataclass(frozen=True, slots=True)
class Received:
    """One message off the stream: its stream sequence, headers and body."""

    seq: int
    headers: dict[str, str]
    data: bytes


@dataclass(slots=True)
class Batch:
    """The records to apply in one commit (with the index ranges of their transactions), and the
    stream sequence the commit may save as this node's checkpoint."""

    records: list[Record] = field(default_factory=list)
    groups: list[tuple[int, int]] = field(default_factory=list)
    checkpoint: int = 0


class Inbound:
    """The others' writes out of the stream, for one node (`origin` is what its versions end
    with). `heard(origin)` is told of every node whose own writes arrive."""

    def __init__(
        self,
        origin: str,
        membership: Membership,
        clock: HybridClock,
        now: Callable[[], int],
        heard: Callable[[str], None],
    ) -> None:
        self.origin = origin
        self.membership = membership
        self.clock = clock
        self.now = now
        self.heard = heard
        self.skewed = 0  # versions more than the drift bound ahead of this node's clock
        # Parts of large messages not whole yet: unit id -> (first part's seq, count, parts).
        self._parts: dict[str, tuple[int, int, dict[int, bytes]]] = {}

    def restart(self) -> None:
        """The consumer reads again from the checkpoint, which is before any part kept here."""
        self._parts.clear()

    def take(self, messages: list[Received], position: int) -> Batch | None:
        """The batch of `messages` (in stream order) past `position`, the stream sequence this
        node has applied; None when the last of them is not past it."""
        whole: list[Received] = []
        for msg in messages:
            if msg.seq <= position or msg.headers.get(ORIGIN) == self.origin:
                continue  # again, or this node's own
            if PART not in msg.headers:
                whole.append(msg)
            elif (complete := self._part(msg)) is not None:
                whole.append(complete)
        last = messages[-1].seq
        if last <= position:
            return None
        pending = min((first for first, _, _ in self._parts.values()), default=None)
        batch = self._decode(whole)
        batch.checkpoint = last if pending is None else min(last, pending - 1)
        return batch

    def _part(self, msg: Received) -> Received | None:
        """Keep one part of a large message; the whole message once this was its last part."""
        try:
            number, count = (int(n) for n in msg.headers[PART].split("/"))
        except ValueError:
            log.warning("skipping bus message %d: bad %s header", msg.seq, PART)
            return None
        unit_id = msg.headers.get(UNIT, "")
        _, total, parts = self._parts.setdefault(unit_id, (msg.seq, count, {}))
        parts[number] = msg.data
        if len(parts) < total:
            return None
        del self._parts[unit_id]
        return Received(msg.seq, msg.headers, b"".join(parts[n] for n in range(1, total + 1)))

    def _decode(self, messages: list[Received]) -> Batch:
        """The records of whole messages, one batch, each message's groups kept."""
        batch = Batch()
        records, groups = batch.records, batch.groups
        wall = self.now()
        for msg in messages:
            origin = msg.headers.get(ORIGIN, "")
            try:
                reply = decode_reply(msg.data)
            except PeerError as exc:
                log.warning("skipping bus message %d: %s", msg.seq, exc)
                continue
            member = self.membership.members.get(reply.node)
            if member is not None and member.removed(origin.rpartition("~")[2]):
                continue  # a member that was removed is no source of changes (invariant 8)
            self.heard(origin)  # it publishes its own writes: this node need not
            offset = len(records)
            records.extend(reply.records)
            groups.extend((a + offset, b + offset) for a, b in reply.groups)
            self.skewed += self.clock.observe_all(record_hlcs(reply.records), wall)
        return batch
