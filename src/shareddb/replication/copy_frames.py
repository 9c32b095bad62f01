"""The bulk copy's wire format (GET /v1/peer/copy; replication/copy.py serves and reads it).

A copy answer is a stream of frames: one `CopyHeader`, `CopyChunk`s in key order, and a `CopyEnd`
once every key was served (a stream that stops before its `CopyEnd` was cut). Each frame is its
length in ASCII digits, a newline, then that many bytes of JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from shareddb.record import Record
from shareddb.replication.transport import PeerError


class CopyRefused(PeerError):
    """The peer does not serve bulk copies (its store cannot): read its feed instead."""


class CopyDeferred(PeerError):
    """The peer is copying a data set itself (it answered 503): ask again in a while."""


@dataclass(frozen=True, slots=True)
class CopyRequest:
    after: str  # the last key the puller copied ("" before the first)
    limit: int  # records per chunk
    puller_id: str
    puller_url: str
    puller_version: int
    puller_incarnation: str = ""
    digest: str = ""  # the puller's digest: when the source's is the same, nothing is copied


@dataclass(frozen=True, slots=True)
class CopyHeader:
    """The first frame: who serves the copy, and its feed's state as the copy began."""

    node: str
    instance: str
    seq: int  # the source's feed sequence before the first chunk was read
    floor: int  # its feed floor then
    clock_high: int  # its clock's high-water mark then
    left: bool = False  # the source left the cluster or was removed (it knows it)
    boot: str = ""  # the run of the source's process that serves the copy (`Membership.boot`)


@dataclass(frozen=True, slots=True)
class CopyChunk:
    records: list[Record]
    groups: list[tuple[int, int]]  # (start, stop) ranges of `records` that are transactions
    after: str  # the last key this chunk covers: a resumed copy starts after it


@dataclass(frozen=True, slots=True)
class CopyEnd:
    """The last frame: every key was served. A stream that stops before it was cut."""

    floor: int  # the source's feed floor once the copy was read


Frame = CopyHeader | CopyChunk | CopyEnd


def encode_frame(frame: Frame) -> bytes:
    """A frame on the wire: its length in ASCII digits, a newline, then that many bytes of JSON.
    A chunk goes by columns (keys, values, versions; the few expiries and transaction groups
    apart): decoding columns costs half of decoding a list per record."""
    if isinstance(frame, CopyChunk):
        records = frame.records
        body = orjson.dumps(
            {
                "keys": [r.key for r in records],
                "values": [r.value for r in records],
                "versions": [r.version for r in records],
                "expires": [[i, r.expires] for i, r in enumerate(records) if r.expires is not None],
                "groups": frame.groups,
                "after": frame.after,
            }
        )
    elif isinstance(frame, CopyHeader):
        body = orjson.dumps(
            {
                "node": frame.node,
                "instance": frame.instance,
                "seq": frame.seq,
                "floor": frame.floor,
                "clock_high": frame.clock_high,
                "left": frame.left,
                "boot": frame.boot,
            }
        )
    else:
        body = orjson.dumps({"end": True, "floor": frame.floor})
    return b"%d\n%s" % (len(body), body)


def decode_frame(body: bytes) -> Frame:
    """One frame's JSON; raises `PeerError` for anything else."""
    try:
        data = orjson.loads(body)
        if "keys" in data:
            return _decode_chunk(data)
        if data.get("end") is True:
            return CopyEnd(int(data["floor"]))
        return CopyHeader(
            str(data["node"]),
            str(data["instance"]),
            int(data["seq"]),
            int(data["floor"]),
            int(data["clock_high"]),
            bool(data.get("left", False)),
            str(data.get("boot", "")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PeerError(f"unreadable copy frame from peer: {exc}") from exc


def _decode_chunk(data: dict[str, object]) -> CopyChunk:
    keys, values, versions = data["keys"], data["values"], data["versions"]
    expires, groups, after = data["expires"], data["groups"], data["after"]
    if not (
        isinstance(keys, list)
        and isinstance(values, list)
        and isinstance(versions, list)
        and len(keys) == len(values) == len(versions)
        and isinstance(after, str)
    ):
        raise TypeError("a chunk needs keys, values and versions of one length, and a position")
    if not all(type(key) is str for key in keys):
        raise TypeError("a key is text")
    if not all(type(version) is str and version for version in versions):
        raise TypeError("a version is non-empty text")
    if not all(value is None or type(value) is str for value in values):
        raise TypeError("a value is text or null")
    records = list(map(Record, keys, values, versions))
    if not isinstance(expires, list) or not isinstance(groups, list):
        raise TypeError("expiries and groups are lists")
    for index, ms in expires:
        if type(index) is not int or type(ms) is not int or not 0 <= index < len(records):
            raise TypeError("an expiry is [index, milliseconds]")
        records[index] = Record(keys[index], values[index], versions[index], ms)
    ranges: list[tuple[int, int]] = []
    for begin, stop in groups:
        if not (type(begin) is int and type(stop) is int):
            raise TypeError("a group is [start, stop]")
        if not (ranges[-1][1] if ranges else 0) <= begin < stop <= len(records):
            raise ValueError("groups are ordered ranges of the chunk")
        ranges.append((begin, stop))
    return CopyChunk(records, ranges, after)


def read_frames(data: bytes) -> Iterator[Frame]:
    """Every frame of a whole copy answer held in memory (tests)."""
    at = 0
    while at < len(data):
        line_end = data.index(b"\n", at)
        size = int(data[at:line_end])
        yield decode_frame(data[line_end + 1 : line_end + 1 + size])
        at = line_end + 1 + size
