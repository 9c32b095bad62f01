"""Planning a batch of the write pipeline: pure code, no I/O, the same for every backend.

`plan_batch` takes the operations of one batch and the stored state of the keys they touch, and
works out what the backend writes in one atomic step and what each caller gets back:

- the LWW merge of `MergePlan` (record.supersedes: the greater version wins);
- conditions (`If-Match`, `If-None-Match: *`, a transaction's `if`), checked against the state as
  the batch has changed it so far: of many writes naming one version, the first wins, and the
  others find the version it wrote;
- transactions, all or nothing, each kept as one entry of the changes feed (see `Txn`);
- expiry, which never mints a version: an expired value becomes a tombstone of its own version;
- the purge rule of `choose_purge`.

The design notes are in docs/design.md ("The write pipeline", "Expiry", "Transactions").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shareddb.record import Record, supersedes
from shareddb.store.base import (
    DIGEST_BUCKETS,
    Applied,
    Change,
    Checkpoint,
    Digest,
    Outcome,
    bucket_of,
    combine_buckets,
    record_hash,
)
from shareddb.store.ops import (
    ANY,
    Behind,
    BulkLoad,
    ClientWrite,
    Condition,
    Conflict,
    Expire,
    Op,
    PeerBatch,
    PurgeTombstones,
    SetMeta,
    Txn,
)

# -- the stored state and the plan ---------------------------------------------------------------

# key, value (None: a tombstone), version, seq, expires (ms or None), txn (0 or its entry's seq)
Row = tuple[str, str | None, str, int, int | None, int]
StoredRow = tuple[bool, str, int | None]  # (live, version, expires) of one key as stored
Stored = dict[str, StoredRow]  # key -> its stored row, for the keys that exist


def loses(version: str, value: str | None, stored: StoredRow | None) -> bool:
    """Whether a peer's record (`version`, `value`) changes nothing against `stored`: the LWW
    rule of `record.supersedes`, with one exception. A value and the tombstone its expiry left
    share a version, and the tombstone wins, so every node holds it once one has it
    (docs/design.md, "Expiry"). `MergePlan.merge` decides by this, and so does the puller's
    drop path (replication/puller.py), which may leave out a record this says loses."""
    if stored is None or supersedes(version, stored[1]):
        return False
    live, current, expires = stored
    return not (live and expires is not None and value is None and version == current)


Tombstones = dict[str, tuple[int, str]]  # key -> (seq, version) of a stored tombstone


# Node meta, written in the commit of every purge that drops a tombstone: a version that every
# tombstone the store ever purged sorts before (`Store.purged_before`).
PURGED_BEFORE = "purged_before"


@dataclass(frozen=True, slots=True)
class Tally:
    """What a store keeps beside its rows, as of its last commit: never changed in place."""

    seq: int  # the last sequence number given out
    live: int  # keys holding a value (expired ones too, until they are turned into tombstones)
    clock_high: int  # the HLC high-water mark
    buckets: tuple[int, ...]  # digest buckets
    floor: int = 0  # the greatest sequence number of a purged tombstone (see Store.feed_floor)

    @classmethod
    def empty(cls) -> Tally:
        return cls(0, 0, 0, (0,) * DIGEST_BUCKETS)

    def digest(self, expired: int = 0) -> Digest:
        """`expired`: keys that hold a value that has expired but is not a tombstone yet."""
        return Digest(self.live - expired, combine_buckets(self.buckets), self.buckets)


@dataclass(slots=True)
class MergePlan:
    """One atomic batch, worked out in memory before a store writes it.

    Give it the stored (live, version, expires) of every key the batch touches; `merge` then
    applies records in order by the LWW rule, numbering each accepted one with the next sequence
    number and keeping the live count and digest buckets in step. The store writes `rows`,
    `entries` and the changed `buckets` in one transaction; if that fails the plan is dropped and
    the store is unchanged. Every backend merges through this class, so they cannot disagree.
    `now` (wall-clock milliseconds) decides which values have expired.
    """

    current: Stored
    seq: int
    live: int
    base_buckets: Sequence[int]
    now: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)
    entries: list[tuple[int, list[Change]]] = field(default_factory=list)
    accepted: list[Record] = field(default_factory=list)

    def visible(self, key: str) -> str | None:
        """The version `key` holds a value at for a reader now, or None (absent or expired)."""
        stored = self.current.get(key)
        if stored is None or not stored[0] or (stored[2] is not None and stored[2] <= self.now):
            return None
        return stored[1]

    def holds(self, condition: Condition) -> bool:
        visible = self.visible(condition.key)
        if condition.version == ANY:
            return visible is not None
        return visible == condition.version

    def merge(self, record: Record, *, only_over_live: bool = False, txn: int = 0) -> Outcome:
        """Apply one record. `only_over_live`: a client's write, whose delete needs a value there
        and whose outcome says whether a value was there (an expired one is not)."""
        key, value, version = record.key, record.value, record.version
        stored = self.current.get(key)
        was_live = stored is not None and stored[0]
        if only_over_live:
            was_visible = self.visible(key) is not None
            if value is None and not was_visible:
                return Outcome.NOT_FOUND
        else:
            was_visible = was_live
        if stored is not None and (
            not supersedes(version, stored[1]) if only_over_live else loses(version, value, stored)
        ):
            return Outcome.SUPERSEDED
        expires = None if value is None else record.expires
        self._write(Record(key, value, version, expires), txn)
        if stored is None or stored[1] != version:
            self._rehash(key, version, None if stored is None else stored[1])
        self.live += (value is not None) - was_live
        if value is None:
            return Outcome.DELETED
        return Outcome.UPDATED if was_visible else Outcome.CREATED

    def load(self, records: Sequence[Record]) -> int:
        """`merge` of many records from a peer, outside any transaction: the same rule and the
        same effects (the rule is `loses`), in one loop: the hot path of a bulk copy, a million
        records per copy, and of every peer's page or bus message. Keys the peer only names are
        passed over. Returns how many won."""
        current, rows, accepted, rehash = self.current, self.rows, self.accepted, self._rehash
        seq, live, won = self.seq, self.live, 0
        for record in records:
            key, value, version = record.key, record.value, record.version
            if not version:
                continue  # a key the peer only names (`Record.named_only`)
            stored = current.get(key)
            was_live = False
            if stored is not None:
                was_live = stored[0]
                # A newer version wins outright; the rule is asked only of the others.
                if not version > stored[1] and loses(version, value, stored):
                    continue
            expires = None if value is None else record.expires
            if expires is not record.expires:
                record = Record(key, value, version, expires)
            seq += 1
            rows[key] = (key, value, version, seq, expires, 0)
            current[key] = (value is not None, version, expires)
            accepted.append(record)
            if stored is None:
                rehash(key, version, None)
            elif stored[1] != version:
                rehash(key, version, stored[1])
            live += (value is not None) - was_live
            won += 1
        self.seq, self.live = seq, live
        return won

    def expire(self, key: str, version: str) -> bool:
        """Turn the value of `key` at `version` into a tombstone of the same version, when it has
        expired. The digest does not change: it hashes (key, version) only."""
        stored = self.current.get(key)
        if stored is None or not stored[0] or stored[1] != version:
            return False
        if stored[2] is None or stored[2] > self.now:
            return False
        self._write(Record(key, None, version), 0)
        self.live -= 1
        return True

    def entry(self, changes: list[Change]) -> None:
        """Keep `changes` (a transaction's records: those written carry their sequence number,
        the others 0) as one entry of the feed, at the sequence number of the last one written.
        The rows written mark themselves as covered by it: the feed serves the entry in their
        place, whole, so no page splits it, also once some of its keys are written again
        (store/entries.py)."""
        seq = self.seq
        self.entries.append((seq, changes))
        for change in changes:
            row = self.rows.get(change.record.key)
            if change.seq and row is not None and row[3] == change.seq:
                self.rows[change.record.key] = (*row[:5], seq)

    def _write(self, record: Record, txn: int) -> None:
        self.seq += 1
        key = record.key
        self.rows[key] = (key, record.value, record.version, self.seq, record.expires, txn)
        self.current[key] = (record.value is not None, record.version, record.expires)
        self.accepted.append(record)

    def _rehash(self, key: str, version: str, old: str | None) -> None:
        bucket = bucket_of(key)
        digest = self.buckets.get(bucket, self.base_buckets[bucket]) ^ record_hash(key, version)
        if old is not None:
            digest ^= record_hash(key, old)
        self.buckets[bucket] = digest

    def forget(self, key: str, version: str) -> None:
        """A purged tombstone leaves the digest (its key is then as if never written)."""
        bucket = bucket_of(key)
        self.buckets[bucket] = self.buckets.get(bucket, self.base_buckets[bucket]) ^ record_hash(
            key, version
        )
        self.current.pop(key, None)


@dataclass(frozen=True, slots=True)
class Batch:
    """One planned batch: what a backend writes in one atomic step, and what the callers get."""

    rows: list[Row]  # records to store (upserts)
    purged: list[str]  # keys whose tombstones are dropped
    entries: list[tuple[int, list[Change]]]  # new transaction entries of the feed, by seq
    drop_uncovered: bool  # drop the transaction entries that cover no row any more
    checkpoints: list[Checkpoint]
    meta: dict[str, str]  # node meta
    buckets: dict[int, int]  # changed digest buckets -> their new hash
    tally: Tally  # the store's tally once this batch commits
    results: list[object]  # one per operation, in order (not written)
    accepted: list[Record]  # records written, then purged keys as Record(key, None, "") (not written)
    copied: bool = False  # a bulk copy ended in this batch (SQLite checkpoints its WAL after it)


Planner = Callable[[Tally, Stored, Tombstones], Batch]


def plan_batch(
    ops: Sequence[Op],
    clock_high: int,
    base: Tally,
    stored: Stored,
    tombstones: Tombstones,
    now: int = 0,
    purged_before: str = "",
) -> Batch:
    """Plan `ops` against the stored state: `stored` holds every key they touch that exists, and
    `tombstones` every tombstone at or below the greatest `max_seq` of their purges. `now` is the
    wall clock, in milliseconds, that decides expiry; `purged_before` the store's mark of what it
    purged (`PURGED_BEFORE`) as of its last commit."""
    plan = MergePlan(stored, base.seq, base.live, base.buckets, now)
    results: list[object] = []
    checkpoints: dict[str, Checkpoint] = {}
    meta: dict[str, str] = {}
    purges: list[tuple[int, PurgeTombstones]] = []
    copied = False
    for op in ops:
        if isinstance(op, ClientWrite):
            condition = op.condition
            if condition is not None and not plan.holds(condition):
                results.append(Conflict([Condition(condition.key, plan.visible(condition.key))]))
            else:
                results.append(plan.merge(op.record, only_over_live=True))
        elif isinstance(op, Txn):
            results.append(_plan_txn(plan, op))
        elif isinstance(op, PeerBatch):
            first = plan.seq + 1  # each record that wins takes the next position
            records = op.records
            if op.restored:  # (no groups, see PeerBatch) whatever the plan holds of a key merges
                held = plan.current
                records = [r for r in records if r.version >= purged_before or r.key in held]
            won = _plan_peer_batch(plan, op) if op.groups else plan.load(records)
            results.append(Applied(won, first, plan.seq))
            if op.checkpoint is not None:
                checkpoints[op.checkpoint.peer] = op.checkpoint
        elif isinstance(op, Expire):
            plan.now = max(plan.now, op.now)
            results.append(sum(plan.expire(key, version) for key, version in op.due))
        elif isinstance(op, SetMeta):
            meta[op.name] = op.value
            results.append(None)
        elif isinstance(op, BulkLoad):
            first = plan.seq + 1
            won = _plan_peer_batch(plan, op) if op.groups else plan.load(op.records)
            results.append(Applied(won, first, plan.seq))
            position = op.position
            meta[position.meta_name] = "" if op.done else position.encode()
            if op.done:
                copied = True
                checkpoints[position.peer] = Checkpoint(
                    position.peer, position.instance, position.seq, position.epoch
                )
        else:
            purges.append((len(results), op))
            results.append(0)
    floor = base.floor
    purged = choose_purge(plan, tombstones, purges, results)
    if purged:
        floor = max(floor, *(op.max_seq for _, op in purges))
        went = [op for index, op in purges if results[index]]
        meta[PURGED_BEFORE] = max(purged_before, *(op.before for op in went))
    buckets = list(base.buckets)
    for bucket, value in plan.buckets.items():
        buckets[bucket] = value
    tally = Tally(plan.seq, plan.live, max(base.clock_high, clock_high), tuple(buckets), floor)
    return Batch(
        list(plan.rows.values()),
        purged,
        plan.entries,
        bool(purges),
        list(checkpoints.values()),
        meta,
        dict(plan.buckets),
        tally,
        results,
        plan.accepted,
        copied,
    )


def _plan_txn(plan: MergePlan, txn: Txn) -> object:
    failed = [Condition(c.key, plan.visible(c.key)) for c in txn.conditions if not plan.holds(c)]
    if failed:
        return Conflict(failed)
    for record in txn.records:  # all or nothing: no record may lose to a stored version
        stored = plan.current.get(record.key)
        if stored is not None and not supersedes(record.version, stored[1]):
            return Behind(record.key, stored[1])
    outcomes: list[Outcome] = []
    written: list[Change] = []
    for record in txn.records:
        outcome = plan.merge(record, only_over_live=True)
        outcomes.append(outcome)
        if outcome is not Outcome.NOT_FOUND:
            written.append(Change(plan.seq, record))
    if len(written) > 1:
        plan.entry(written)
    return outcomes


def _plan_peer_batch(plan: MergePlan, batch: PeerBatch | BulkLoad) -> int:
    won = 0
    records = batch.records
    position = 0
    for start, stop in (*batch.groups, (len(records), len(records))):
        for record in records[position:start]:
            if not record.named_only:
                won += plan.merge(record) is not Outcome.SUPERSEDED
        group: list[Change] = []
        for record in records[start:stop]:
            # A key the peer only names (this node holds its row already) is named here too.
            accepted = not record.named_only and plan.merge(record) is not Outcome.SUPERSEDED
            won += accepted
            group.append(Change(plan.seq if accepted else 0, record))
        # Kept whole for the nodes that pull from this one, when this one took any of it.
        if len(group) > 1 and any(change.seq for change in group):
            plan.entry(group)
        position = max(position, stop)
    return won


def choose_purge(
    plan: MergePlan,
    stored: Tombstones,
    purges: Sequence[tuple[int, PurgeTombstones]],
    results: list[object],
) -> list[str]:
    """The purge rule, the one every backend follows: a purge drops each tombstone at or below its
    `max_seq` whose version sorts before its `before`, as the tombstones stand after the batch's
    merges (a key written live in the batch is kept; a tombstone written in it may go). Each
    purge's count goes to `results` at its index; returns the keys to delete."""
    if not purges:
        return []
    candidates = dict(stored)
    for key, value, version, seq, _, _ in plan.rows.values():
        if value is None:
            candidates[key] = (seq, version)
        else:
            candidates.pop(key, None)
    purged: list[str] = []
    for index, purge in purges:
        doomed = [
            (key, version)
            for key, (seq, version) in candidates.items()
            if seq <= purge.max_seq and version < purge.before
        ]
        for key, version in doomed:
            del candidates[key]
            plan.forget(key, version)
            plan.rows.pop(key, None)
            purged.append(key)
            plan.accepted.append(Record(key, None, ""))
        results[index] = len(doomed)
    return purged
