"""What the client answers and what a transaction is made of: plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Entry:
    """A live key: its value, version and expiry (None: it does not expire)."""

    key: str
    value: str
    version: str
    expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """The answer to a `put` or `delete`: the version the write made; `created` is True when a
    `put` made a key that was absent (201)."""

    key: str
    version: str
    created: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing. `next` is the `after` of the following page (None: last page);
    `seq` is the node's position in its change feed when the page was read (watch from it)."""

    entries: list[Entry]
    next: str | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. `kind` is "put" or "delete" (`value` None); `seq` is the
    position of the change in the feed of the node that streamed it. An event the watch made
    from a listing after moving to another node (see `Watch`) has `relisted` True, the listing's
    seq, and for a delete no version (None) since a listing does not show deleted keys."""

    kind: Literal["put", "delete"]
    key: str
    value: str | None
    version: str | None
    seq: int
    expires: datetime | None = None
    relisted: bool = False

    def to_json(self) -> dict[str, Any]:
        """The event as the node sends it, with its kind under "event"."""
        return {
            "event": self.kind,
            "key": self.key,
            "value": self.value,
            "version": self.version,
            "seq": self.seq,
            "expires": self.expires.isoformat().replace("+00:00", "Z") if self.expires else None,
        }


# -- transactions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IfVersion:
    """Condition: `key` is live at exactly `version`."""

    key: str
    version: str


@dataclass(frozen=True, slots=True)
class IfAbsent:
    """Condition: `key` is absent (never written, deleted or expired)."""

    key: str


@dataclass(frozen=True, slots=True)
class Put:
    """Operation: set `key` to `value`, expiring after `ttl` seconds when given."""

    key: str
    value: str
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Operation: delete `key` (nothing happens when it is absent)."""

    key: str


Condition = IfVersion | IfAbsent
Operation = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    """One result per operation, in order: the key and the version its write made (None for the
    delete of an absent key)."""

    key: str
    version: str | None


def txn_document(conditions: list[Condition], operations: list[Operation]) -> dict[str, Any]:
    """The JSON body of `POST /v1/txn`."""
    checks: list[dict[str, Any]] = [
        {"key": c.key, "version": c.version}
        if isinstance(c, IfVersion)
        else {"key": c.key, "absent": True}
        for c in conditions
    ]
    ops: list[dict[str, Any]] = []
    for op in operations:
        if isinstance(op, Put):
            ops.append({"op": "put", "key": op.key, "value": op.value})
            if op.ttl is not None:
                ops[-1]["ttl"] = op.ttl
        else:
            ops.append({"op": "delete", "key": op.key})
    return {"if": checks, "then": ops}
