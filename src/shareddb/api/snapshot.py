"""GET and POST /v1/snapshot: this node's data at one point in time, out and back in.

GET streams the store's snapshot read (store/base.py `SnapshotRead`) in the format of
shareddb/snapshot.py, a chunk at a time: a snapshot of any size takes bounded memory. POST takes
such a body whole before it changes anything: the body goes to a file in the data directory, is
checked there (header, every record, count and checksum: garbage or a body cut short is a 400 and
nothing is applied), and only then merged in batches, each record by the merge rule, as a peer's
records are (`Node.merge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO

from aiohttp import web

from shareddb.api.bodies import READ_CHUNK, body_encoding
from shareddb.api.errors import ApiError, bad_request, json_response
from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.record import Record
from shareddb.snapshot import (
    MEDIA_TYPE,
    Header,
    SnapshotError,
    Summary,
    ValueTooLarge,
    Writer,
    check,
    records,
)
from shareddb.store.base import StoreUnavailable
from shareddb.tokens import Role

log = logging.getLogger("shareddb.api")

PATH = "/v1/snapshot"
APPLY_CHUNK = 5000  # records merged per commit
APPLY_CHUNK_BYTES = 16 * 1024 * 1024  # and about this many bytes of them
UPLOAD_PREFIX = "snapshot-upload-"


async def get_snapshot(node: Node, request: web.BaseRequest) -> web.StreamResponse:
    if request.method == "HEAD":  # the headers alone: no snapshot is read
        return web.Response(headers={"Content-Type": MEDIA_TYPE})
    read = await node.store.snapshot()
    try:
        writer = Writer(Header(node.id, read.seq, read.count, node.now()))
        response = web.StreamResponse(
            headers={
                "Content-Type": MEDIA_TYPE,
                "Content-Disposition": f'attachment; filename="shareddb-{node.id}-{read.seq}.ndjson"',
            }
        )
        try:
            await response.prepare(request)
            await response.write(writer.header())
            while chunk := await read.next():
                await response.write(writer.records(chunk))
            await response.write(writer.trailer())
            await response.write_eof()
        except ConnectionError:  # the client hung up: nothing to report
            return response
        except StoreUnavailable as exc:
            # The answer has begun: the only way left to say it failed is to end the connection
            # before the snapshot's last line, which every reader of the format notices.
            log.warning("snapshot stream ended early: %s", exc)
            if request.transport is not None:
                request.transport.abort()
        return response
    finally:
        await read.close()


async def post_snapshot(node: Node, request: web.BaseRequest) -> web.Response:
    encoding = body_encoding(request)
    handle, path = _upload_file(node.settings.data)
    try:
        with handle:
            await _receive(request, handle, encoding)
            summary = await asyncio.to_thread(_check, handle, node.settings.max_value_bytes)
            applied, skewed = await _apply(node, handle)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    skipped = summary.count - applied
    log.info(
        "restored a snapshot of node %s at sequence %d: %d of its %d records applied, %d kept "
        "as they were here%s",
        summary.header.node,
        summary.header.seq,
        applied,
        summary.count,
        skipped,
        f"; {skewed} versions were ahead of this node's clock by more than the drift bound"
        if skewed
        else "",
    )
    return json_response({"applied": applied, "skipped": skipped})


def _upload_file(data: Path) -> tuple[IO[bytes], str]:
    """A file of its own in the data directory (on the store's disk, not in a small /tmp)."""
    try:
        fd, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=data)
    except OSError as exc:
        raise _storage_error(exc) from None
    return os.fdopen(fd, "w+b"), path


def _storage_error(exc: OSError) -> ApiError:
    return ApiError(507, f"cannot keep the snapshot while it is checked: {exc.strerror or exc}")


async def _receive(request: web.BaseRequest, handle: IO[bytes], encoding: str) -> None:
    while True:
        try:
            chunk = await request.content.read(READ_CHUNK)
        except web.RequestPayloadError:
            request.content.feed_eof()
            raise ApiError(400, f"body cannot be decoded as {encoding}", close=True) from None
        except ConnectionError:  # the client went away part-way: nobody to answer
            raise ApiError(400, "the body ended early; nothing was applied", close=True) from None
        if not chunk:
            return
        try:
            await asyncio.to_thread(handle.write, chunk)  # disk I/O off the event loop
        except OSError as exc:
            raise _storage_error(exc) from None


def _check(handle: IO[bytes], max_value_bytes: int) -> Summary:
    handle.flush()
    handle.seek(0)
    try:
        return check(handle, max_value_bytes)
    except ValueTooLarge as exc:
        raise ApiError(
            413, f"{exc}: raise this node's --max-value-bytes to restore it; nothing was applied"
        ) from None
    except SnapshotError as exc:
        raise bad_request(f"{exc}; nothing was applied") from None


async def _apply(node: Node, handle: IO[bytes]) -> tuple[int, int]:
    """Merge a checked snapshot, a commit per chunk; answers (records that won, versions ahead
    of the clock)."""
    handle.seek(0)
    chunks = records(handle, APPLY_CHUNK, APPLY_CHUNK_BYTES)
    applied = skewed = 0
    while chunk := await asyncio.to_thread(_next, chunks):
        won, ahead = await node.merge(chunk)
        applied += won
        skewed += ahead
    return applied, skewed


def _next(chunks: Iterator[list[Record]]) -> list[Record]:
    return next(chunks, [])


def routes(node: Node) -> list[Route]:
    # Both are admin-only once roles exist.
    return [
        Route("GET", PATH, partial(get_snapshot, node), Role.ADMIN),
        Route("POST", PATH, partial(post_snapshot, node), Role.ADMIN, safe=False),
    ]
