"""What the simulation knows happened, and the invariants it checks against the stores.

The history holds every write that reached a store (acknowledged or not), which writes were
acknowledged, and per slot the greatest version each key has held. Every check names its invariant
in the words of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shareddb.record import Record, version_hlc, version_origin

INVARIANT_1 = "Invariant 1: no acknowledged write is lost (unless a greater version superseded it)"
INVARIANT_2 = "Invariant 2: all nodes that can reach each other converge to identical digests"
INVARIANT_3 = (
    "Invariant 3: the final value of a key is the greatest version written; never a value nobody wrote"
)
INVARIANT_4 = "Invariant 4: a deleted key never comes back"
INVARIANT_5 = "Invariant 5: a node's clock and sequence never go backwards, also across restarts"
INVARIANT_7 = (
    "Invariant 7: no two different values ever carry the same version, also after a node loses its "
    "data and comes back under its old id"
)
INVARIANT_8 = (
    "Invariant 8: a member that was removed never becomes a source of changes again with its old data"
)
INVARIANT_9 = "Invariant 9: an expiry never removes a write made after the expiring one"
INVARIANT_9_TXN = "Invariant 9: a transaction is never seen by halves"
EXPIRY_READS = "Expiry: a node hides a value from reads once its clock passes the value's expiry"


class Violation(AssertionError):
    """An invariant does not hold."""


@dataclass(frozen=True, slots=True)
class Write:
    slot: int
    key: str
    value: str | None  # None: a delete
    version: str
    expires: int | None = None  # a put with a TTL: when it expires, by the writing node's clock


@dataclass
class SlotMarks:
    """High-water marks of one slot's data dir; reset when it is wiped."""

    held: dict[str, Record] = field(default_factory=dict)  # greatest version each key has held
    current: dict[str, Record] = field(default_factory=dict)  # what it held at its last check
    # (key, version) an If-Match write succeeded with: no second one may (until the disk is lost).
    matched: set[tuple[str, str]] = field(default_factory=set)
    seq: int = 0  # greatest sequence number seen
    clock: int = 0  # greatest clock value seen while up
    committed_clock: int = 0  # the clock high-water mark the store had persisted


@dataclass
class History:
    written: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (key, version) → value
    expiring: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, version) → expires
    # The latest wall clock any node reaped at: no expiry tombstone is for a later expiry.
    reaped_at: int = 0
    tombstones: dict[str, str] = field(default_factory=dict)  # key → greatest tombstone ever held
    txns: list[dict[str, str]] = field(default_factory=list)  # each transaction: key → version
    txn_of: dict[str, int] = field(default_factory=dict)  # version → its transaction's index
    acked: list[Write] = field(default_factory=list)
    lost_with_disk: set[Write] = field(default_factory=set)  # acked only by a node since wiped
    marks: dict[int, SlotMarks] = field(default_factory=dict)
    # version → the one write it names: (key, value), from writes and from every record held.
    named: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    minted: dict[str, int] = field(default_factory=dict)  # origin → greatest HLC it minted
    # A removed incarnation (origin) that knows it was removed → the greatest HLC it had minted or
    # seen then: anything it mints past that must never reach another node (invariant 8).
    sealed: dict[str, int] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # origins outside the cluster for good
    outside: set[int] = field(default_factory=set)  # slots whose node was removed, until wiped

    def wrote(self, write: Write, acknowledged: bool) -> None:
        self.name(write.version, write.key, write.value, f"n{write.slot} wrote")
        self.written[(write.key, write.version)] = write.value
        if write.expires is not None:
            self.expiring[(write.key, write.version)] = write.expires
        else:
            self.expiring.pop((write.key, write.version), None)
        origin, hlc = version_origin(write.version), version_hlc(write.version)
        self.minted[origin] = max(self.minted.get(origin, 0), hlc)
        if acknowledged:
            self.acked.append(write)

    def name(self, version: str, key: str, value: str | None, where: str) -> None:
        """`version` names the write of `key`=`value`: the same as every earlier sighting of it."""
        named = self.named.setdefault(version, (key, value))
        if named != (key, value):
            raise Violation(
                f"{INVARIANT_7}: {where} {key}={value!r} at {version}, "
                f"which already named {named[0]}={named[1]!r}"
            )

    def seal(self, origin: str, clock: int) -> None:
        """The removed incarnation `origin` learned it was removed; its clock stood at `clock`."""
        if origin not in self.sealed:
            self.sealed[origin] = max(clock, self.minted.get(origin, 0))

    def check_sealed(self, index: int, own_origin: str, records: dict[str, Record]) -> None:
        """What a removed incarnation wrote once it knew it was removed stays on its own store."""
        for key, record in records.items():
            origin = version_origin(record.version)
            sealed = self.sealed.get(origin)
            if sealed is not None and origin != own_origin and version_hlc(record.version) > sealed:
                raise Violation(
                    f"{INVARIANT_8}: n{index} holds {key}@{record.version}, written by {origin} "
                    "after it knew it was removed"
                )

    def slot(self, index: int) -> SlotMarks:
        return self.marks.setdefault(index, SlotMarks())

    def check_records(self, index: int, records: dict[str, Record]) -> None:
        """Safety, after every step: what slot `index` holds now against what it held before."""
        marks = self.slot(index)
        for key, record in records.items():
            value = self.written_value(index, key, record)
            self.name(record.version, key, value, f"n{index} holds")
            if record.deleted:
                self.tombstones[key] = max(self.tombstones.get(key, ""), record.version)
        for key, before in marks.held.items():
            now = records.get(key)
            if now is None:
                if not before.deleted:
                    raise Violation(f"{INVARIANT_1}: n{index} lost {key}@{before.version}")
                continue  # a purged tombstone
            if now.version < before.version:
                invariant = INVARIANT_4 if before.deleted and not now.deleted else INVARIANT_1
                raise Violation(
                    f"{invariant}: n{index} went from {key}@{before.version} "
                    f"({'deleted' if before.deleted else 'live'}) back to {now.version}"
                )
            expired = now.expires is not None and now.expires <= self.reaped_at
            if now.version == before.version and before.deleted and not now.deleted and not expired:
                raise Violation(
                    f"{INVARIANT_4}: n{index} went from a tombstone of {key}@{before.version} "
                    "back to its value"
                )
        for key, record in records.items():
            held = marks.held.get(key)
            # An expired value that became a tombstone of its own version counts as one.
            if held is None or record.version > held.version or (record.deleted and not held.deleted):
                marks.held[key] = record
        marks.current = records
        self.check_txns(index, records)

    def written_value(self, index: int, key: str, record: Record) -> str | None:
        """The value the write `record.version` names. A tombstone of a version that wrote a value
        is that value expired: only once a node's clock passed its expiry (and never a new
        version, which the history would not know)."""
        if (key, record.version) not in self.written:
            raise Violation(f"{INVARIANT_3}: n{index} holds {key}@{record.version}, never written")
        value = self.written[(key, record.version)]
        expires = self.expiring.get((key, record.version))
        if record.deleted and value is not None:
            if expires is None or expires > self.reaped_at:
                raise Violation(
                    f"{INVARIANT_9}: n{index} holds a tombstone of {key}@{record.version}, which "
                    f"wrote {value!r} expiring at {expires} (no node reaped past {self.reaped_at})"
                )
            return value
        if record.value != value or (not record.deleted and record.expires != expires):
            raise Violation(
                f"{INVARIANT_3}: n{index} holds {key}={record.value!r} (expires "
                f"{record.expires}) at {record.version}, but that version wrote {value!r} "
                f"(expires {expires})"
            )
        return value

    def transaction(self, members: dict[str, str]) -> None:
        """A transaction committed: `members` are the keys it wrote, each with its version."""
        if len(members) > 1:
            for version in members.values():
                self.txn_of[version] = len(self.txns)
            self.txns.append(members)

    def check_txns(self, index: int, records: dict[str, Record]) -> None:
        """A node that holds one write of a transaction holds all of them (or greater versions).
        A key it lacks counts when some node held a tombstone of it at least that great: purged
        since, it reads as that tombstone did."""
        for key, record in records.items():
            txn = self.txn_of.get(record.version)
            if txn is None:
                continue
            if record.deleted and self.written.get((key, record.version)) is not None:
                continue  # the tombstone its expiry left: a reader sees nothing of that write
            for other, version in self.txns[txn].items():
                held = records.get(other)
                if held is not None and held.version >= version:
                    continue
                if held is None and self.tombstones.get(other, "") >= version:
                    continue
                raise Violation(
                    f"{INVARIANT_9_TXN}: n{index} holds {key}@{record.version} of the transaction "
                    f"{self.txns[txn]} but {other}@{held.version if held else None}"
                )

    def check_write(self, index: int, write: Write, records: dict[str, Record]) -> None:
        """An acknowledged write is in the store that acknowledged it, or something greater is."""
        now = records.get(write.key)
        if now is None and write.value is None:
            return  # a delete of a key nobody had written here
        if now is None or now.version < write.version:
            raise Violation(f"{INVARIANT_1}: n{index} acknowledged {write} but holds {now}")

    def check_progress(self, index: int, seq: int, clock: int, committed_clock: int) -> None:
        """The sequence and the clock only move forward; a restart resumes past what was saved."""
        marks = self.slot(index)
        if seq < marks.seq:
            raise Violation(f"{INVARIANT_5}: n{index} sequence went from {marks.seq} back to {seq}")
        if clock < marks.committed_clock:
            saved = marks.committed_clock
            raise Violation(f"{INVARIANT_5}: n{index} clock {clock:#x} is behind its saved {saved:#x}")
        marks.seq, marks.clock = seq, max(marks.clock, clock)
        marks.committed_clock = max(marks.committed_clock, committed_clock)

    def check_clock_steady(self, index: int, clock: int) -> None:
        """Within one run of a node, its clock never goes back."""
        if clock < self.slot(index).clock:
            raise Violation(f"{INVARIANT_5}: n{index} clock went back to {clock:#x}")

    def wiped(self, index: int) -> None:
        """Slot `index` lost its disk: acknowledged writes that no other disk holds are gone."""
        self.marks[index] = SlotMarks()
        self.outside.discard(index)
        self._forget_unheld()

    def left_cluster(self, index: int, origin: str) -> None:
        """The node at slot `index` (incarnation `origin`) was removed or left: its disk no
        longer counts, so acknowledged writes that only it holds are gone from the cluster."""
        self.removed.add(origin)
        self.outside.add(index)
        self._forget_unheld()

    def _forget_unheld(self) -> None:
        # A removed node's disk no longer counts: nobody takes anything from it.
        disks = [marks for i, marks in self.marks.items() if i not in self.outside]
        for write in self.acked:
            if write not in self.lost_with_disk and not any(
                key_at_least(marks.held, write.key, write.version, [marks]) for marks in disks
            ):
                self.lost_with_disk.add(write)

    def held_outside(self, key: str, version: str) -> bool:
        """A removed node wrote or held `key` at `version`: a member that had not heard of the
        removal yet may take it from there (the removal spreads asynchronously)."""
        origin = version_origin(version)
        return origin in self.removed or any(
            _held(self.marks[i], key, version) for i in self.outside if i in self.marks
        )

    def deleted_outside(self, key: str, version: str) -> bool:
        """A removed node held a delete of `key` above `version` (see `held_outside`)."""
        return any(
            (record := self.marks[i].held.get(key)) is not None
            and record.deleted
            and record.version > version
            for i in self.outside
            if i in self.marks
        )

    def check_final(self, states: dict[int, dict[str, Record]], at_heal: dict[str, str]) -> None:
        """Liveness met: every node holds the same, and it is what the history says it must be."""
        first = next(iter(states.values()))
        for index, records in states.items():
            if records != first:
                diff = sorted(set(records.items()) ^ set(first.items()))[:5]
                raise Violation(f"{INVARIANT_2}: n{index} differs from the others: {diff}")
        for write in self.acked:
            if write in self.lost_with_disk or version_origin(write.version) in self.removed:
                continue  # its only copy was wiped, or it was taken by a node removed since
            if not key_at_least(first, write.key, write.version, list(self.marks.values())):
                raise Violation(f"{INVARIANT_1}: acknowledged {write} is not in the converged data")
        for key, version in at_heal.items():
            now = first.get(key)
            if now is None:
                expires = self.expiring.get((key, version))
                if (
                    self.written[(key, version)] is not None
                    and not self.deleted_outside(key, version)
                    and (expires is None or expires > self.reaped_at)  # expired, then purged
                ):
                    invariant = self.ending_invariant(key, version)
                    raise Violation(f"{invariant}: {key}@{version} vanished in the end")
            elif now.version != version and not (
                # A removed node's data, taken by a node that had not heard of the removal yet.
                now.version > version and self.held_outside(key, now.version)
            ):
                invariant = self.ending_invariant(key, version)
                raise Violation(
                    f"{invariant}: {key} ends at {now.version}, the greatest held was {version}"
                )

    def ending_invariant(self, key: str, version: str) -> str:
        """Invariant 9 where `key` had a value with a TTL below `version` (an expiry may have
        removed a later write), else invariant 3."""
        if any(k == key and v < version for k, v in self.expiring):
            return INVARIANT_9
        return INVARIANT_3


def _held(marks: SlotMarks, key: str, version: str) -> bool:
    record = marks.held.get(key)
    return record is not None and record.version == version


def key_at_least(records: dict[str, Record], key: str, version: str, held: list[SlotMarks]) -> bool:
    """`records` hold `key` at `version` or a greater one; a key they lack counts when some node
    held a tombstone at least that great (it was purged since)."""
    record = records.get(key)
    if record is not None:
        return record.version >= version
    tombstones = (marks.held.get(key) for marks in held)
    return any(t is not None and t.deleted and t.version >= version for t in tombstones)


def greatest(states: list[dict[str, Record]]) -> dict[str, str]:
    """For each key, the greatest version any of `states` holds."""
    top: dict[str, str] = {}
    for records in states:
        for key, record in records.items():
            if key not in top or record.version > top[key]:
                top[key] = record.version
    return top
