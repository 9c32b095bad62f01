"""What the Redis store's commands and scripts answer, decoded: records, their heads, hashes,
scores and pages of the changes feed (the layout is in store/redis_scripts.py); and which of its
errors mean that Redis answers but takes no writes."""

from __future__ import annotations

from typing import Any

from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from shareddb.record import Record
from shareddb.store.base import Change, FeedPage


def decode_record(key: str, raw: bytes) -> Record:
    head, live, value = bytes(raw).partition(b"\0")
    version, expires = decode_head(head)
    return Record(key, value.decode("utf-8") if live else None, version, expires)


def decode_head(head: bytes) -> tuple[str, int | None]:
    """The version and expiry of a record's HEAD (see the layout)."""
    version, _, expires = bytes(head).partition(b"\1")
    return version.decode("ascii"), int(expires) if expires else None


def decode_score(raw: object) -> int:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return int(text) if text.isdigit() else int(float(text))


def decode_hash(flat: object, *, text: bool = True) -> dict[str, Any]:
    """A hash reply (flat from a script, or a dict the client parsed), keys decoded; values
    decoded too unless `text` is False."""
    items = hash_items(flat)
    return {bytes(k).decode("utf-8"): bytes(v).decode("utf-8") if text else bytes(v) for k, v in items}


def hash_items(items: object) -> list[tuple[bytes, bytes]]:
    """HSCAN's items, or a hash a script answered, whether the client parsed them into a dict or
    left them flat."""
    if isinstance(items, dict):
        return list(items.items())
    assert isinstance(items, list)
    return [(items[i], items[i + 1]) for i in range(0, len(items), 2)]


def decode_feed(flat: list[Any], seq: int) -> FeedPage:
    """The page of the changes feed after `seq` that the FEED script answered (`flat`)."""
    changes: list[Change] = []
    for i in range(2, len(flat), 3):
        member, at, body = bytes(flat[i]), decode_score(flat[i + 1]), flat[i + 2]
        if member[:1] != b"\0":
            changes.append(Change(at, decode_record(member.decode("utf-8"), body)))
            continue
        # A transaction entry, whole: the current rows of its keys (and of the entries that
        # cover them), each with whether it is still the entry's own change.
        for j in range(0, len(body), 4):
            key = bytes(body[j]).decode("utf-8")
            record, mark = decode_record(key, body[j + 2]), body[j + 3]
            changes.append(Change(decode_score(body[j + 1]), record, at, mark == b"1", mark == b"k"))
    # Read in the same atomic script as the rows: `until` covers only what the read saw.
    if int(flat[0]) == 1:
        return FeedPage(changes, max(seq, decode_score(flat[1])))
    # The last unit's score: a row's sequence number, or an entry's.
    return FeedPage(changes, decode_score(flat[-2]) if len(flat) > 2 else seq)


def refuses_writes(exc: BaseException) -> bool:
    """Redis answers but takes no writes: out of memory under noeviction (-OOM), unable to save
    its snapshot (-MISCONF), or a read-only replica (-READONLY)."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(("OOM", "MISCONF", "READONLY"))


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
