"""The operations of the write pipeline: what callers submit (store/pipeline.py) and a batch plan
takes (store/plan.py), with what each answers.

Every write of a node goes through one of these: a client's write (`ClientWrite`) or transaction
(`Txn`), a peer's page (`PeerBatch`) or a chunk of a bulk copy (`BulkLoad`), expiry (`Expire`),
the node's own metadata (`SetMeta`) and the tombstone purge (`PurgeTombstones`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shareddb.record import Record
from shareddb.store.base import CHANGE_OVERHEAD, Checkpoint, CopyPosition

ANY = "*"  # a Condition's version that any live version matches (never a version itself)


@dataclass(frozen=True, slots=True)
class Condition:
    """`key` is live at exactly `version` (at any version, with `ANY`), or (with `version`
    None) absent: never written, deleted or expired."""

    key: str
    version: str | None


@dataclass(frozen=True, slots=True)
class Conflict:
    """Conditions that did not hold, each with the key's current version (None: absent). The
    answer to a conditional write or transaction that wrote nothing."""

    failed: list[Condition]


@dataclass(frozen=True, slots=True)
class Behind:
    """A write whose version was not above the stored one of `key` (a peer's clock ran ahead):
    nothing was written; the caller retries with a version past `version`."""

    key: str
    version: str


@dataclass(frozen=True, slots=True)
class ClientWrite:
    """A client's write (a tombstone only over a live value), maybe conditional. Answers an
    `Outcome`, or a `Conflict` when its condition does not hold."""

    record: Record
    condition: Condition | None = None


@dataclass(frozen=True, slots=True)
class Txn:
    """A client's transaction: when every condition holds, every record is written, else none.

    Answers a list of `Outcome`s (one per record, `NOT_FOUND` for a delete of an absent key, which
    writes nothing), a `Conflict`, or `Behind`. Two or more records written are kept together as
    one entry of the changes feed until every member has applied them (see `MergePlan.entry`)."""

    conditions: Sequence[Condition]
    records: Sequence[Record]


@dataclass(frozen=True, slots=True)
class PeerBatch:
    """Records from a peer, merged by LWW, and how far its feed was read. `groups`: the (start,
    stop) index ranges of `records` that are transactions, where a record may only name its key
    (`Record.named_only`): it is named in this node's entry, never merged. `restored`: the
    records of a snapshot (`shareddb restore`), of which one of a key the store holds nothing of,
    older than a tombstone it purged (`Store.purged_before`), is left out: it may be a value
    deleted since, whose tombstone is gone. Answers how many records won."""

    records: Sequence[Record]
    checkpoint: Checkpoint | None = None
    groups: Sequence[tuple[int, int]] = ()
    restored: bool = False

    def __post_init__(self) -> None:
        if self.restored and self.groups:  # a snapshot holds no transactions to keep whole
            raise ValueError("a restored batch has no groups: its records are left out one by one")


@dataclass(frozen=True, slots=True)
class BulkLoad:
    """A chunk of a bulk copy of a peer's data set (replication/copy.py): its records merged by
    LWW exactly as a `PeerBatch`'s (a transaction's records, as `groups`, kept whole), and the
    copy's `position` saved in the same commit, so that a copy cut half way resumes after the last
    chunk that committed. With `done` the copy is over: the position is cleared and the peer's
    checkpoint set to the feed sequence at which the copy began. Answers how many records won."""

    records: Sequence[Record]
    position: CopyPosition
    groups: Sequence[tuple[int, int]] = ()
    done: bool = False


@dataclass(frozen=True, slots=True)
class Expire:
    """Turn each (key, version) whose value expired by `now` into a tombstone of that same
    version (never a new one: a later write, from any node, still wins). Answers how many."""

    due: Sequence[tuple[str, str]]
    now: int


@dataclass(frozen=True, slots=True)
class SetMeta:
    """The node's own metadata (the member list, say). Answers None."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class PurgeTombstones:
    """Drop tombstones at or below `max_seq` whose version sorts before `before`, and the
    transaction entries that cover no row any more. Answers how many tombstones went."""

    max_seq: int
    before: str


Op = ClientWrite | Txn | PeerBatch | Expire | SetMeta | PurgeTombstones | BulkLoad


def op_records(op: Op) -> Sequence[Record]:
    if isinstance(op, ClientWrite):
        return (op.record,)
    if isinstance(op, PeerBatch | Txn | BulkLoad):
        return op.records
    return ()


def op_keys(op: Op) -> Sequence[str]:
    """The keys whose stored state planning `op` needs."""
    if isinstance(op, ClientWrite):
        return (op.record.key,)
    if isinstance(op, Txn):
        return [c.key for c in op.conditions] + [r.key for r in op.records]
    if isinstance(op, PeerBatch | BulkLoad):
        return [r.key for r in op.records]
    if isinstance(op, Expire):
        return [key for key, _ in op.due]
    return ()


def op_size(op: Op) -> int:
    """What an operation counts against the pipeline's bytes per batch."""
    if isinstance(op, ClientWrite):  # the common case, on every write: no generator
        return len(op.record.key) + len(op.record.value or "") + CHANGE_OVERHEAD + 64
    return sum(len(r.key) + len(r.value or "") + CHANGE_OVERHEAD for r in op_records(op)) + 64


def unstorable(op: Op) -> str | None:
    """Why an operation cannot be stored (text that is not valid UTF-8: a lone surrogate), or None.
    Checked before a batch is planned, so one such operation fails alone, not its whole batch."""
    try:
        if isinstance(op, ClientWrite):  # the common case, on every write
            op.record.key.encode("utf-8")
            if op.record.value is not None:
                op.record.value.encode("utf-8")
            op.record.version.encode("utf-8")
            return None
        for record in op_records(op):
            record.key.encode("utf-8")
            record.version.encode("utf-8")
            if record.value is not None:
                record.value.encode("utf-8")
        if isinstance(op, PeerBatch) and op.checkpoint is not None:
            op.checkpoint.peer.encode("utf-8")
            op.checkpoint.instance.encode("utf-8")
        elif isinstance(op, SetMeta):
            op.name.encode("utf-8")
            op.value.encode("utf-8")
        elif isinstance(op, BulkLoad):
            op.position.encode().encode("utf-8")
            op.position.peer.encode("utf-8")
    except UnicodeEncodeError as exc:
        return str(exc)
    return None
