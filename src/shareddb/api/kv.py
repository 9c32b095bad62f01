"""The REST API of keys: PUT, GET, DELETE /v1/kv/{key} and GET /v1/kv (listing by prefix).

The key is taken from the raw request path and percent-decoded strictly, so `/` and any escaped
character round-trip exactly. Bodies are read up to --max-value-bytes and no further.
"""

from __future__ import annotations

import asyncio
from functools import partial

from aiohttp import web

from shareddb.api.errors import ApiError, bad_request, json_response
from shareddb.api.query import decode, parse_query, split_target
from shareddb.api.routing import Route
from shareddb.api.writes import await_copies, copy_policy
from shareddb.node import Node
from shareddb.record import MAX_KEY_BYTES, key_error
from shareddb.store.base import Outcome

PREFIX = "/v1/kv/"
PREFIX_LENGTH = len(PREFIX)
TEXT = "text/plain; charset=utf-8"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
READ_CHUNK = 64 * 1024


def _key_and_params(request: web.BaseRequest) -> tuple[str, dict[str, str]]:
    path, query = split_target(request.raw_path)
    raw = path[PREFIX_LENGTH:]
    # The common case, a short plain-ASCII key, is valid as it stands (the HTTP parser already
    # refused control characters in the request line); anything else takes the full check.
    if raw and len(raw) <= MAX_KEY_BYTES and raw.isascii() and "%" not in raw:
        key = raw
    else:
        key = decode(raw, plus_is_space=False)
        if error := key_error(key):
            raise bad_request(f"invalid key: {error}")
    return key, parse_query(query) if query else {}


def _etag(version: str) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


async def _read_value(request: web.BaseRequest, limit: int) -> str:
    """The body as text, refused with 413 as soon as it passes `limit` bytes."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise ApiError(413, f"value is {length} bytes, the limit is {limit}")
        if length == 0:
            return ""
        try:
            body = await request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise bad_request("body ended before its Content-Length") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("body is not valid UTF-8") from None
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"value is over the {limit}-byte limit")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("body is not valid UTF-8") from None


async def put(node: Node, request: web.BaseRequest) -> web.Response:
    key, params = _key_and_params(request)
    policy = copy_policy(params, node)
    value = await _read_value(request, node.settings.max_value_bytes)
    result = await node.put(key, value)
    await await_copies(node, result.version, policy)
    status = 201 if result.outcome is Outcome.CREATED else 200
    return json_response({"key": key, "version": result.version}, status, _etag(result.version))


async def get(node: Node, request: web.BaseRequest) -> web.Response:
    key, _ = _key_and_params(request)
    record = await node.get(key)
    if record is None:
        raise ApiError(404, f"key {key!r} not found")
    assert record.value is not None
    return web.Response(
        body=record.value.encode("utf-8"),
        headers={"Content-Type": TEXT, "ETag": f'"{record.version}"'},
    )


async def delete(node: Node, request: web.BaseRequest) -> web.Response:
    key, params = _key_and_params(request)
    policy = copy_policy(params, node)
    result = await node.delete(key)
    if result.outcome is Outcome.NOT_FOUND:
        raise ApiError(404, f"key {key!r} not found")
    await await_copies(node, result.version, policy)
    return web.Response(status=204, headers=_etag(result.version))


async def listing(node: Node, request: web.BaseRequest) -> web.Response:
    params = parse_query(split_target(request.raw_path)[1])
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if (
        not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4)
        or not 1 <= int(raw_limit) <= MAX_LIMIT
    ):
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw_limit!r}")
    limit = int(raw_limit)
    prefix = params.get("prefix", "")
    after = params.get("after")
    # Read before the scan: a watch from this seq then sees every change the page may have missed.
    seq = node.store.last_seq
    records = await node.scan(prefix, after, limit + 1)
    more = len(records) > limit
    records = records[:limit]
    return json_response(
        {
            "items": [{"key": r.key, "value": r.value, "version": r.version} for r in records],
            "next": records[-1].key if more else None,
            "seq": seq,
        }
    )


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/v1/kv", partial(listing, node)),
        Route("GET", "/v1/kv/*", partial(get, node)),
        Route("PUT", "/v1/kv/*", partial(put, node)),
        Route("DELETE", "/v1/kv/*", partial(delete, node)),
    ]
