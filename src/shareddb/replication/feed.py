"""Serving this node's changes feed to pullers: the source side of replication.

A pull names a checkpoint (sequence, feed instance); the answer carries the changes after it, a
bounded batch, and waits up to `wait` seconds while there are none (long poll). A checkpoint of
another instance (this store was wiped and recreated) is served from 0. Each pull also tells us
how far the puller has applied our feed, and that it is alive.
"""

from __future__ import annotations

from typing import Any

from shareddb.membership import Membership, Outside
from shareddb.record import Record, make_origin, named, version_hlc, version_origin
from shareddb.replication.transport import PullReply, PullRequest
from shareddb.store.base import Store

MAX_LIMIT = 10_000
MAX_WAIT = 30.0
# A batch stops here (but always holds at least one change); the store's read stops here too, so
# one pull holds about this much of records, and as much again of encoded answer.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class Feed:
    def __init__(self, node_id: str, store: Store, membership: Membership) -> None:
        self.node_id = node_id
        self.store = store
        self.membership = membership

    async def pull(self, request: PullRequest) -> PullReply:
        store = self.store
        since = request.since if request.instance == store.instance_id else 0
        puller = request.puller_id
        if puller and puller != self.node_id:
            # A member that left or was removed is refused with its old store (invariant 8).
            self.membership.check(puller, request.puller_incarnation)
            # No incarnation given (a hand-made request): it is not a new life.
            current = self.membership.heard_from(
                puller, request.puller_url, request.puller_version, request.puller_incarnation or None
            )
            if current:  # how far a late request of an earlier life had got says nothing now
                self.membership.record_progress(puller, since)
        limit = max(1, min(request.limit, MAX_LIMIT))
        page = await store.changes_since(since, limit, MAX_ANSWER_BYTES)
        if not page.changes and request.wait > 0:
            # Wait for a sequence past what the read covered, not past `since`: when the rows
            # after `since` were purged tombstones, `since` is already behind `last_seq` and the
            # poll would answer at once, empty, for ever.
            await store.wait_for_changes(page.until, min(request.wait, MAX_WAIT))
            page = await store.changes_since(page.until, limit, MAX_ANSWER_BYTES)
        changes, until = page.changes, page.until
        own_since = request.own_since
        origin = make_origin(puller, request.puller_incarnation)
        records: list[Record] = []
        groups: list[tuple[int, int]] = []
        txn, start = 0, 0
        for change in changes:
            record = change.record
            # The puller already holds what this life of it wrote from own_since on (it says so
            # once it has caught up with this feed; see Replicator._caught_up). A transaction's
            # changes all go, also the puller's own: the puller keeps the transaction as one
            # entry of its feed, which must name every key of it.
            if (
                own_since > 0
                and not change.txn
                and version_origin(record.version) == origin
                and version_hlc(record.version) >= own_since
            ):
                continue
            if change.txn != txn:  # a transaction's changes come together: one group
                if txn:
                    groups.append((start, len(records)))
                txn, start = change.txn, len(records)
            records.append(named(record.key) if change.known else record)
        if txn:
            groups.append((start, len(records)))
        return PullReply(
            node=self.node_id,
            instance=store.instance_id,
            until=until,
            # A read may see a commit before the store publishes its new `last_seq`.
            last_seq=max(store.last_seq, until),
            records=records,
            members=self.membership.entries(),
            groups=[(a, b) for a, b in groups if b - a > 1],
            floor=store.feed_floor,
        )

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
