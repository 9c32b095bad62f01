"""The snapshot format (shareddb/snapshot.py): a whole snapshot checks out however it is cut into
chunks, and no part of one ever does."""

from __future__ import annotations

import io
import random

import pytest

from shareddb.backup import whole_lines
from shareddb.record import Record, make_version
from shareddb.snapshot import Checker, Header, SnapshotError, Writer, records

RECORDS = [
    Record("plain", "value", make_version(1, "n1")),
    Record("gone", None, make_version(2, "n1")),
    Record("expiring", "soon", make_version(3, "n1"), 1_800_000_000_123),
    Record("ünïcode/key", "line\nbreak \x00 and \u2028", make_version(4, "n2~0123456789ab")),
    Record("empty", "", make_version(5, "n1")),
]


def snapshot(items: list[Record] = RECORDS) -> bytes:
    writer = Writer(Header("n1", 9, len(items), 1_700_000_000_000))
    return writer.header() + writer.records(items) + writer.trailer()


def check_chunks(chunks: list[bytes]) -> list[Record]:
    checker = Checker()
    found = [r for lines in whole_lines(iter(chunks)) for line in lines if (r := checker.line(line))]
    checker.finish()
    return found


def test_a_snapshot_reads_back_exactly_whatever_chunks_it_arrives_in() -> None:
    body = snapshot()
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randrange(0, 12)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert check_chunks(chunks) == RECORDS
    assert [r for batch in records(io.BytesIO(body), 2, 1 << 20) for r in batch] == RECORDS


def test_no_part_of_a_snapshot_checks_out() -> None:
    """Every proper prefix is refused: a stream cut anywhere is told from a whole one."""
    body = snapshot()
    for end in range(len(body)):
        with pytest.raises(SnapshotError):
            check_chunks([body[:end]])


def test_records_stops_at_the_first_thing_wrong_before_handing_it_over() -> None:
    body = snapshot()
    changed = body.replace(b'"soon"', b'"late"')
    with pytest.raises(SnapshotError, match="checksum"):
        list(records(io.BytesIO(changed), 100, 1 << 20))
