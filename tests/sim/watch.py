"""A watcher of one node's changes feed, as the watch API reads it, and what it must see.

It reads `store.changes_since` from its position, skips the changes of a transaction whose key was
written again since (`current` False) and any at or below its position, and keeps the latest event
of each key. It must never see an older version of a key after a newer one (a version seen again
only as a tombstone: the reaper's, of a value that expired, or one taken again after the node
purged it), and once it has read to the end of the feed, what it holds must be what the node
holds. A position below the feed's floor (tombstones purged past it) or of another store instance
(a wiped node) is answered 410 by the watch API: the watcher lists the node again and watches
from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shareddb.node import Node
from shareddb.record import Record
from tests.sim.checks import Violation

WATCH_ORDER = "Watch: a watcher never sees an older state of a key after a newer one"
WATCH_REPLAY = "Watch: a watcher that has read to the end of the feed holds what the node holds"


@dataclass
class Watcher:
    slot: int
    instance: str = ""
    position: int = 0
    state: dict[str, Record] = field(default_factory=dict)  # the latest event of each key
    restarts: int = 0
    listed_at: int | None = None  # the node's clock when the watcher last listed it

    async def start(self, node: Node, replay: bool) -> str:
        """Watch from the start of the feed (`replay`), or list the node, then watch from the
        sequence the listing answered."""
        self.instance, self.state, self.listed_at = node.store.instance_id, {}, None
        if replay and node.store.feed_floor == 0:
            self.position = 0
            return "watches from 0"
        self.position, self.listed_at = node.store.last_seq, node.now()
        # A listing and its seq, in one step (nothing else runs meanwhile).
        self.state = {r.key: r for r in await node.store.scan("", None, 1_000_000)}
        return f"lists {len(self.state)} keys, watches from {self.position}"

    async def read(self, node: Node, limit: int) -> tuple[int, bool]:
        """Read one page of at most `limit` units; answers the events taken and whether the
        watcher has read to the end of the feed."""
        store = node.store
        if store.instance_id != self.instance or self.position < store.feed_floor:
            self.restarts += 1
            await self.start(node, replay=False)
        page = await store.changes_since(self.position, limit)
        events = 0
        for change in page.changes:
            if not change.current or change.seq <= self.position:
                continue
            record = change.record
            last = self.state.get(record.key)
            # The same version again only as a tombstone: the reaper's, of a value that expired,
            # or one taken again after this node purged it.
            if last is not None and (
                record.version < last.version
                or (
                    record.version == last.version
                    and not (record.deleted and (last.deleted or last.expires is not None))
                )
            ):
                raise Violation(
                    f"{WATCH_ORDER}: n{self.slot}'s watcher at {self.position} saw "
                    f"{record.key}@{record.version} ({'deleted' if record.deleted else 'live'}) "
                    f"after {last.version} ({'deleted' if last.deleted else 'live'})"
                )
            self.state[record.key] = record
            events += 1
        self.position = max(self.position, page.until)
        return events, not page.changes and self.position >= store.last_seq

    def check_caught_up(self, records: dict[str, Record]) -> None:
        """Read to the end: the watcher holds every value the node holds, expired or not, but
        those whose expiry the node's clock had passed when the watcher listed it (the listing
        left them out; a clock that stepped back since may show them again)."""
        mine = {k: (r.value, r.version) for k, r in self.state.items() if not r.deleted}
        held = {
            k: (r.value, r.version)
            for k, r in records.items()
            if not r.deleted
            and (k in mine or self.listed_at is None or r.expires is None or r.expires > self.listed_at)
        }
        if mine != held:
            diff = sorted(set(mine.items()) ^ set(held.items()))[:4]
            raise Violation(f"{WATCH_REPLAY}: n{self.slot}'s watcher differs: {diff}")
