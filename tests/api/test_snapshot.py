"""GET and POST /v1/snapshot in-process: a snapshot streams out whole and self-checking, and a
body that is not a whole snapshot is refused with nothing applied (invariant 6)."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import socket
from pathlib import Path

import orjson
import pytest

from shareddb.clock import from_millis, physical
from shareddb.record import Record, make_version
from shareddb.replication.purge import Purge
from shareddb.snapshot import FORMAT, MEDIA_TYPE, Checker, Header, SnapshotError, Summary, Writer
from shareddb.store.sqlite import SQLiteStore
from shareddb.times import iso_time
from tests.api.conftest import SMALL_MAX_VALUE, Api, running_api
from tests.harness import eventually


def parse(body: bytes) -> tuple[Summary, list[Record]]:
    """The records of a snapshot body, checked as a restore checks it."""
    checker = Checker()
    found = [r for line in io.BytesIO(body) if (r := checker.line(line)) is not None]
    return checker.finish(), found


async def snapshot_of(api: Api) -> bytes:
    reply = await api.get("/v1/snapshot")
    assert reply.status == 200, reply.body
    assert reply.content_type == MEDIA_TYPE
    return reply.body


async def restore(api: Api, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, object]:
    reply = await api.request("POST", "/v1/snapshot", data=body, headers=headers)
    return reply.status, reply.json()


def uploads_left(data: Path) -> list[str]:
    return [p.name for p in data.iterdir() if p.name.startswith("snapshot-upload-")]


async def test_a_snapshot_holds_every_key_with_value_or_tombstone_version_and_expiry(api: Api) -> None:
    await api.kv_put("plain", "v1")
    await api.kv_put("empty", "")
    await api.kv_put("gone", "x")
    await api.delete("/v1/kv/gone")
    await api.kv_put("expiring", "soon", "?ttl=600")
    await api.kv_put("üñî/code", "…")
    body = await snapshot_of(api)
    summary, records = parse(body)
    header = orjson.loads(body.split(b"\n", 1)[0])
    assert header["format"] == FORMAT
    assert (summary.header.node, summary.header.seq, summary.count) == ("n1", api.node.store.last_seq, 5)
    stored = {key: await api.node.store.get(key) for key in ("plain", "empty", "gone", "expiring")}
    by_key = {r.key: r for r in records}
    assert set(by_key) == {"plain", "empty", "gone", "expiring", "üñî/code"}
    for key, record in stored.items():
        assert by_key[key] == record, key
    assert by_key["gone"].deleted
    assert by_key["expiring"].expires is not None
    assert f'"expires":"{iso_time(by_key["expiring"].expires)}"' in body.decode()


async def test_a_snapshot_restored_into_an_empty_node_gives_it_the_same_digest(
    api: Api, tmp_path: Path
) -> None:
    await api.load({f"key{i}": f"value {i}" for i in range(2500)})
    await api.kv_put("gone", "x")
    await api.delete("/v1/kv/gone")
    body = await snapshot_of(api)
    async with running_api(tmp_path / "other") as other:
        assert await restore(other, body) == (200, {"applied": 2501, "skipped": 0})
        assert other.node.store.digest() == api.node.store.digest()
        assert await other.dump() == await api.dump()
        # The same snapshot again changes nothing: every version is already there.
        seq = other.node.store.last_seq
        assert await restore(other, body) == (200, {"applied": 0, "skipped": 2501})
        assert other.node.store.last_seq == seq
        assert uploads_left(tmp_path / "other") == []


async def test_a_restore_keeps_a_newer_version_here_and_replaces_an_older_one(
    api: Api, tmp_path: Path
) -> None:
    """The merge rule: the greater version wins, whichever side it is on (invariants 3 and 4)."""
    async with running_api(tmp_path / "other") as other:
        await other.kv_put("older-here", "old")  # written before the snapshot's version
        await api.kv_put("older-here", "from the snapshot")
        await api.kv_put("newer-here", "from the snapshot")
        await api.kv_put("deleted-here", "from the snapshot")
        body = await snapshot_of(api)
        await other.kv_put("newer-here", "new")  # written after: a greater version
        await other.kv_put("deleted-here", "x")
        await other.delete("/v1/kv/deleted-here")
        assert await restore(other, body) == (200, {"applied": 1, "skipped": 2})
        assert (await other.kv_get("older-here")).text == "from the snapshot"
        assert (await other.kv_get("newer-here")).text == "new"
        assert (await other.kv_get("deleted-here")).status == 404


async def test_a_restore_does_not_bring_back_a_key_deleted_since_whose_tombstone_was_purged(
    api: Api,
) -> None:
    """Invariant 4: a deleted key never comes back. Once the tombstone of a delete made after
    the snapshot was taken has been purged (past the grace, every member holding it), the node
    holds nothing of the key; the snapshot's older value must not take its place. What the node
    still holds a version of is merged as usual, and so is what is newer than every purge."""
    await api.kv_put("deleted-since", "in the snapshot")
    await api.kv_put("purged-too", "in the snapshot")
    await api.kv_put("rewritten", "in the snapshot")
    body = await snapshot_of(api)
    assert (await api.delete("/v1/kv/deleted-since")).status == 204
    assert (await api.delete("/v1/kv/purged-too")).status == 204
    assert (await api.delete("/v1/kv/rewritten")).status == 204
    # Every tombstone is past the grace from here on (a grace of minus a minute).
    purge = Purge(api.node.store, api.node.membership, now=api.node.now, grace_ms=-60_000)
    assert await purge.run() == 3
    await api.kv_put("rewritten", "after the purge")
    ahead = make_version(from_millis(api.node.now() + 90_000), api.node.origin)
    assert await api.node.merge([Record("new-key", "newer than every purge", ahead)]) == (1, 1)
    assert await restore(api, body) == (200, {"applied": 0, "skipped": 3})
    assert (await api.kv_get("deleted-since")).status == 404
    assert (await api.kv_get("purged-too")).status == 404
    assert (await api.kv_get("rewritten")).text == "after the purge"
    assert (await api.kv_get("new-key")).text == "newer than every purge"


async def test_a_restore_into_a_node_that_never_purged_brings_back_every_missing_key(
    api: Api, tmp_path: Path
) -> None:
    await api.load({f"key{i}": "v" for i in range(10)})
    body = await snapshot_of(api)
    async with running_api(tmp_path / "fresh") as fresh:
        purge = Purge(fresh.node.store, fresh.node.membership, now=fresh.node.now, grace_ms=0)
        assert await purge.run() == 0  # nothing to purge: nothing is noted as purged either
        assert await restore(fresh, body) == (200, {"applied": 10, "skipped": 0})


BROKEN = (
    "empty",
    "garbage",
    "json but not a snapshot",
    "no trailer",
    "cut in the middle of a record",
    "cut inside the trailer",
    "trailer without its newline",
    "a value changed",
    "a record left out",
    "a line after the end",
    "a later format",
    "a record with an unknown field",
    "a record with a bad version",
)


def broken(body: bytes) -> dict[str, bytes]:
    """Bodies that are not a whole snapshot, made from a whole one."""
    lines = body.splitlines(keepends=True)
    changed = body.replace(b'"value 7"', b'"value 8"', 1)
    assert changed != body
    later = orjson.loads(lines[0])
    later["version"] = 99
    return {
        "empty": b"",
        "garbage": b"\x00\xff not a snapshot at all",
        "json but not a snapshot": b'{"key": "a", "value": "b"}\n',
        "no trailer": b"".join(lines[:-1]),
        "cut in the middle of a record": body[: len(body) // 2],
        "cut inside the trailer": body[:-10],
        "trailer without its newline": body[:-1],
        "a value changed": changed,
        "a record left out": b"".join(lines[:3] + lines[4:]),
        "a line after the end": body + lines[1],
        "a later format": orjson.dumps(later) + b"\n" + b"".join(lines[1:]),
        "a record with an unknown field": body.replace(b'"expires":null}', b'"expires":null,"x":1}', 1),
        "a record with a bad version": body.replace(b'"version":"', b'"version":"zz', 1),
    }


@pytest.mark.parametrize("kind", BROKEN)
async def test_a_body_that_is_not_a_whole_snapshot_is_refused_and_nothing_is_applied(
    api: Api, tmp_path: Path, kind: str
) -> None:
    await api.load({f"key{i}": f"value {i}" for i in range(20)})
    bodies = broken(await snapshot_of(api))
    assert set(bodies) == set(BROKEN)
    body = bodies[kind]
    async with running_api(tmp_path / "other") as other:
        await other.kv_put("mine", "stays")
        before = await other.state()
        status, answer = await restore(other, body)
        assert status == 400, (kind, answer)
        assert isinstance(answer, dict)
        assert answer["error"] == "bad_request"
        assert "nothing was applied" in answer["message"]
        assert await other.state() == before
        assert uploads_left(tmp_path / "other") == []


async def test_a_snapshot_with_a_value_over_the_limit_is_413_and_nothing_is_applied(
    api: Api, tmp_path: Path
) -> None:
    await api.load({"small": "x", "large": "y" * (SMALL_MAX_VALUE + 1)})
    body = await snapshot_of(api)
    async with running_api(tmp_path / "other", max_value_bytes=SMALL_MAX_VALUE) as other:
        before = await other.state()
        status, answer = await restore(other, body)
        assert status == 413
        assert isinstance(answer, dict)
        assert "--max-value-bytes" in answer["message"]
        assert await other.state() == before


async def test_a_gzip_body_is_restored(api: Api, tmp_path: Path) -> None:
    await api.load({f"key{i}": "v" for i in range(100)})
    body = await snapshot_of(api)
    async with running_api(tmp_path / "other") as other:
        status, answer = await restore(other, gzip.compress(body), {"Content-Encoding": "gzip"})
        assert (status, answer) == (200, {"applied": 100, "skipped": 0})
        status, answer = await restore(other, b"not gzip", {"Content-Encoding": "gzip"})
        assert status == 400


async def test_versions_far_ahead_are_kept_but_move_the_clock_only_to_the_drift_bound(
    api: Api,
) -> None:
    """As for a peer's records: a version is never changed, and the clock is dragged ahead by at
    most the drift bound (invariant 5 for the clock, and DESIGN's clock-skew protection)."""
    wall = api.node.now()
    ahead = make_version(from_millis(wall + 3_600_000), "elsewhere")
    writer = Writer(Header("elsewhere", 1, 1, wall))
    body = writer.header() + writer.records([Record("ahead", "from the future", ahead)])
    assert await restore(api, body + writer.trailer()) == (200, {"applied": 1, "skipped": 0})
    stored = await api.node.store.get("ahead")
    assert stored is not None
    assert stored.version == ahead
    drift = api.node.clock.max_drift_ms
    assert wall + drift - 1000 <= physical(api.node.clock.last) <= api.node.now() + drift


async def test_a_head_request_answers_the_headers_alone(api: Api) -> None:
    await api.kv_put("k", "v")
    reply = await api.request("HEAD", "/v1/snapshot")
    assert reply.status == 200
    assert reply.content_type == MEDIA_TYPE
    assert reply.body == b""


async def slow_reader(api: Api) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET /v1/snapshot on a socket with a small receive buffer: the node's writes wait for the
    client as soon as a few hundred KiB are on their way (the default buffers hold megabytes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (api.host, api.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(b"GET /v1/snapshot HTTP/1.1\r\nHost: node\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def test_a_stream_the_store_fails_part_way_ends_without_its_trailer(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The status is sent before the store fails: ending the connection early is how the node
    says so, and a reader of the format cannot take what it got for a whole snapshot."""
    await api.load({f"key{i:04}": "v" * 2000 for i in range(5000)})
    reader, writer = await slow_reader(api)
    try:
        received = await reader.readexactly(4096)
        # Every later read of the store fails. (Its close waits for the snapshot read to end,
        # which needs the stream to move on: the client goes on reading meanwhile.)
        closing = asyncio.create_task(api.node.store.close())
        async with asyncio.timeout(10):
            received += await reader.read()  # to the end: the node ends the connection
            await closing
    finally:
        writer.close()
    body = b"".join(received.split(b"\r\n")[1::2])  # the chunks' data, without their sizes
    with pytest.raises(SnapshotError, match="cut short"):
        parse(body)
    assert len([r for r in caplog.records if r.name == "shareddb.api"]) == 1
    assert [r.getMessage() for r in caplog.records if r.exc_info] == [], "no traceback"


async def test_a_client_that_leaves_part_way_ends_the_read_without_a_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The read (a transaction, or copies in Redis) is released as soon as the client is gone."""
    await api.load({f"key{i:04}": "v" * 2000 for i in range(5000)})
    store = api.node.store
    assert isinstance(store, SQLiteStore)
    reader, writer = await slow_reader(api)
    await reader.readexactly(4096)
    assert store.snapshots_open == 1
    writer.transport.abort()  # the connection goes, the rest unread
    await eventually(lambda: store.snapshots_open == 0, "the snapshot read to be closed")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
