"""The snapshot format (GET and POST /v1/snapshot, `shareddb backup` and `restore`): pure, no I/O.

A snapshot is UTF-8 text, one JSON object per line (newline-delimited JSON):

    {"format": "shareddb-snapshot", "version": 1, "node": ID, "seq": S, "count": N, "taken": ISO}
    {"key": K, "value": V-or-null, "version": VER, "expires": ISO-or-null}     (N lines)
    {"end": true, "count": N, "sha256": HEX}

The header names the node, its sequence number at the point in time the snapshot is of, and how
many records follow; a record with a null value is a tombstone. The trailer repeats the count and
holds the SHA-256 of every byte before it (header and records, newlines included). A reader
therefore tells a whole snapshot from one cut short (no trailer), from one changed or damaged (the
checksum differs), and from anything else (the first line is no header): `Checker` does, a line at
a time, so a snapshot of any size is checked in bounded memory.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeGuard

import orjson

from shareddb.record import MAX_KEY_BYTES, Record, is_version, key_error, value_error
from shareddb.times import iso_time, parse_iso_time

FORMAT = "shareddb-snapshot"
FORMAT_VERSION = 1
MEDIA_TYPE = "application/x-ndjson"
LINE_OVERHEAD = 512  # bytes of a record line beyond its key and value
ESCAPED = 6  # JSON escapes a control character as \u00XX: six bytes for one


class SnapshotError(ValueError):
    """Not a whole snapshot; the message is one line saying why."""


class ValueTooLarge(SnapshotError):
    """A whole snapshot, but it holds a value over the limit it was checked against."""


@dataclass(frozen=True, slots=True)
class Header:
    node: str
    seq: int
    count: int
    taken: int  # wall-clock milliseconds on the node when the read began

    def line(self) -> bytes:
        return _line(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "node": self.node,
                "seq": self.seq,
                "count": self.count,
                "taken": iso_time(self.taken),
            }
        )


def _line(item: dict[str, Any]) -> bytes:
    return orjson.dumps(item) + b"\n"


def record_line(record: Record) -> bytes:
    return _line(
        {
            "key": record.key,
            "value": record.value,
            "version": record.version,
            "expires": iso_time(record.expires if record.value is not None else None),
        }
    )


class Writer:
    """The lines of one snapshot, in order, keeping the checksum as they go."""

    def __init__(self, header: Header) -> None:
        self._header = header
        self._hash = hashlib.sha256()
        self.count = 0

    def header(self) -> bytes:
        line = self._header.line()
        self._hash.update(line)
        return line

    def records(self, records: Iterable[Record]) -> bytes:
        chunk = b"".join(record_line(record) for record in records)
        self.count += chunk.count(b"\n")
        self._hash.update(chunk)
        return chunk

    def trailer(self) -> bytes:
        return _line({"end": True, "count": self.count, "sha256": self._hash.hexdigest()})


def max_line_bytes(max_value_bytes: int) -> int:
    """The longest record line a value of `max_value_bytes` can make, escaped at worst."""
    return ESCAPED * (max_value_bytes + MAX_KEY_BYTES) + LINE_OVERHEAD


@dataclass(frozen=True, slots=True)
class Summary:
    """What a whole snapshot holds."""

    header: Header
    count: int
    sha256: str


class Checker:
    """Checks a snapshot a line at a time: `line` for each line as read (with its newline),
    `finish` at the end of the input. Raises `SnapshotError` at the first thing wrong.

    `max_value_bytes`: a value larger than this is refused too (None: any size)."""

    def __init__(self, max_value_bytes: int | None = None) -> None:
        self._max_value = sys.maxsize if max_value_bytes is None else max_value_bytes
        self._hash = hashlib.sha256()
        self._number = 0
        self.header: Header | None = None
        self.count = 0
        self.summary: Summary | None = None

    def line(self, raw: bytes) -> Record | None:
        """The record on this line; None for the header and the trailer."""
        self._number += 1
        if self.summary is not None:
            raise SnapshotError(f"line {self._number} comes after the end of the snapshot")
        if not raw.endswith(b"\n"):
            raise self._cut_short()
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            what = "its first line" if self.header is None else f"line {self._number}"
            raise SnapshotError(f"this is not a whole shareddb snapshot: {what} is not JSON") from None
        if not isinstance(item, dict):
            raise SnapshotError(f"line {self._number} is not a JSON object")
        if self.header is None:
            self.header = _header(item)
            self._hash.update(raw)
            return None
        if "end" in item:
            self._trailer(item)
            return None
        record = _record(item, self._number, self._max_value)
        self._hash.update(raw)
        self.count += 1
        return record

    def finish(self) -> Summary:
        if self.summary is None:
            raise self._cut_short()
        return self.summary

    def _cut_short(self) -> SnapshotError:
        if self.header is None:
            return SnapshotError("this is not a shareddb snapshot: it is empty or has no header line")
        return SnapshotError(
            f"the snapshot is cut short: it ends after {self.count} of its "
            f"{self.header.count} records, without its last line"
        )

    def _trailer(self, item: dict[str, Any]) -> None:
        assert self.header is not None
        if set(item) != {"end", "count", "sha256"} or item["end"] is not True:
            raise SnapshotError(f"line {self._number} is not a valid end of snapshot")
        if item["count"] != self.count or self.header.count != self.count:
            raise SnapshotError(
                f"the snapshot holds {self.count} records, but says it holds "
                f"{self.header.count} (header) and {item['count']} (end)"
            )
        if item["sha256"] != self._hash.hexdigest():
            raise SnapshotError("the snapshot's checksum does not match: it was changed or damaged")
        self.summary = Summary(self.header, self.count, self._hash.hexdigest())


def _header(item: dict[str, Any]) -> Header:
    if item.get("format") != FORMAT:
        raise SnapshotError("this is not a shareddb snapshot: its first line is not a snapshot header")
    if item.get("version") != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot format version {item.get('version')!r} is not one this node reads "
            f"(it reads version {FORMAT_VERSION})"
        )
    node, seq, count, taken = item.get("node"), item.get("seq"), item.get("count"), item.get("taken")
    if not (isinstance(node, str) and isinstance(taken, str) and _count(seq) and _count(count)):
        raise SnapshotError("the snapshot header is malformed")
    try:
        millis = parse_iso_time(taken)
    except ValueError:
        raise SnapshotError("the snapshot header is malformed: bad time") from None
    return Header(node, seq, count, millis)


def _count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


RECORD_FIELDS = frozenset({"key", "value", "version", "expires"})


def _record(item: dict[str, Any], number: int, max_value: int) -> Record:
    if set(item) != RECORD_FIELDS:
        raise SnapshotError(f"line {number} is not a record: it needs exactly {sorted(RECORD_FIELDS)}")
    key, value, version, expires = item["key"], item["value"], item["version"], item["expires"]
    if not isinstance(key, str):
        raise SnapshotError(f"line {number}: key must be a string")
    if error := key_error(key):
        raise SnapshotError(f"line {number}: invalid key: {error}")
    if value is not None:
        if not isinstance(value, str):
            raise SnapshotError(f"line {number}: value must be a string or null")
        if error := value_error(value, max_value):
            raise ValueTooLarge(f"line {number}: {error}")
    if not isinstance(version, str) or not is_version(version):
        raise SnapshotError(f"line {number}: invalid version")
    millis: int | None = None
    if expires is not None:
        if not isinstance(expires, str):
            raise SnapshotError(f"line {number}: expires must be an ISO-8601 time or null")
        try:
            millis = parse_iso_time(expires)
        except ValueError:
            raise SnapshotError(f"line {number}: expires must be an ISO-8601 time or null") from None
    return Record(key, value, version, millis if value is not None else None)


def check(handle: IO[bytes], max_value_bytes: int | None = None) -> Summary:
    """Check a whole snapshot read from `handle` (raises `SnapshotError`)."""
    checker = Checker(max_value_bytes)
    limit = max_line_bytes(max_value_bytes or 64 * 1024 * 1024)
    for raw in _lines(handle, limit):
        checker.line(raw)
    return checker.finish()


def records(
    handle: IO[bytes], chunk: int, max_bytes: int, max_value_bytes: int | None = None
) -> Iterator[list[Record]]:
    """The records of a snapshot, at most `chunk` at a time and about `max_bytes` of lines,
    checked as they are read (a snapshot already checked whole reads without error)."""
    checker = Checker(max_value_bytes)
    limit = max_line_bytes(max_value_bytes or 64 * 1024 * 1024)
    batch: list[Record] = []
    size = 0
    for raw in _lines(handle, limit):
        record = checker.line(raw)
        if record is not None:
            batch.append(record)
            size += len(raw)
            if len(batch) >= chunk or size >= max_bytes:
                yield batch
                batch, size = [], 0
    checker.finish()
    if batch:
        yield batch


def _lines(handle: IO[bytes], limit: int) -> Iterator[bytes]:
    number = 0
    while raw := handle.readline(limit + 1):
        number += 1
        if len(raw) > limit:
            raise SnapshotError(f"line {number} is longer than any record this node takes")
        yield raw
