"""The feed rows an origin encodes once for all its pullers (replication/transport.py,
`EncodedChanges`) stay within their bound, in the process's memory as well as by their count."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import orjson
import pytest

from shareddb.record import Record, make_version
from shareddb.replication.transport import EncodedChanges, PullReply, encode_reply
from tests.harness.procfs import status_bytes


def page(first: int, count: int) -> PullReply:
    """A pull answer of `count` plain rows of 100-byte values, numbered from `first`."""
    records = [
        Record(f"key-{n:08d}", f"{n:08d}".ljust(100, "v"), make_version(n, "node1"))
        for n in range(first, first + count)
    ]
    seqs = list(range(first, first + count))
    return PullReply("node1", "instance", first + count - 1, first + count - 1, records, [], seqs=seqs)


def changes(parts: list[bytes]) -> list[list[object]]:
    decoded: list[list[object]] = orjson.loads(b"".join(parts))["changes"]
    return decoded


def rss_anon() -> int:
    """This process's own memory, in bytes."""
    found = status_bytes(os.getpid(), "RssAnon")
    assert found is not None
    return found


def test_a_row_is_encoded_once_and_served_the_same_to_every_puller() -> None:
    cache = EncodedChanges()
    first = list(encode_reply(page(1, 100), cache))
    assert len(cache) == 100
    again = list(encode_reply(page(1, 100), cache))
    assert again == first
    assert changes(first)[0] == ["key-00000001", "00000001".ljust(100, "v"), make_version(1, "node1")]


def test_the_oldest_rows_go_first_and_the_bytes_kept_stay_within_the_bound() -> None:
    cache = EncodedChanges(max_bytes=64 * 1024)
    for first in range(1, 10_001, 500):
        list(encode_reply(page(first, 500), cache))
    assert 0 < len(cache) < 10_000
    assert cache._bytes <= 64 * 1024
    assert cache.get(1) is None  # the oldest went first
    kept = cache.get(10_000)
    assert kept is not None
    assert orjson.loads(kept)[0] == "key-00010000"


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the process's memory from /proc"
)
def test_the_rows_kept_take_about_what_they_count_in_the_process() -> None:
    """orjson makes each answer in a buffer of about 4 KiB and shrinks it in place; kept as it
    came, each ~150-byte row held about 4 KiB of the process, and a full cache (16 MiB counted)
    about 450 MiB. Kept as a copy of its own size, a row costs about what it counts."""
    cache = EncodedChanges()
    gc.collect()
    before = rss_anon()
    for first in range(1, 30_001, 1000):
        list(encode_reply(page(first, 1000), cache))
    grown = rss_anon() - before
    print(f"{len(cache)} rows, {cache._bytes / 2**20:.1f} MiB counted, RssAnon +{grown / 2**20:.1f} MiB")
    assert len(cache) == 30_000
    # 30,000 rows of about 150 bytes: 4.5 MB counted; at 4 KiB a row, 120 MB.
    assert grown < 30 * 1024 * 1024, f"{grown} bytes for {cache._bytes} counted"
