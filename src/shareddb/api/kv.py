"""The REST API of keys: PUT, GET, DELETE /v1/kv/{key} and GET /v1/kv (listing by prefix).

The key is taken from the raw request path and percent-decoded strictly, so `/` and any escaped
character round-trip exactly. Bodies are read up to --max-value-bytes and no further (api/bodies.py).
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

from aiohttp import web

from shareddb.api.bodies import read_text
from shareddb.api.errors import ApiError, bad_request, json_response
from shareddb.api.query import decode, parse_query, split_target, ttl_seconds
from shareddb.api.routing import Route
from shareddb.api.writes import await_copies, copy_policy
from shareddb.node import Node, PreconditionFailed
from shareddb.record import MAX_KEY_BYTES, Record, key_error
from shareddb.store.base import Outcome
from shareddb.store.ops import ANY, Condition
from shareddb.times import http_date, iso_time
from shareddb.tokens import Role

PREFIX = "/v1/kv/"
PREFIX_LENGTH = len(PREFIX)
TEXT = "text/plain; charset=utf-8"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Reader(Protocol):
    """Where GET reads a key: the node, or a worker's own view of its store (worker.py)."""

    async def get(self, key: str) -> Record | None: ...


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


def _condition(key: str, request: web.BaseRequest, *, put: bool) -> Condition | None:
    """`If-Match: "VER"` (or `*`: any live version) and, on PUT, `If-None-Match: *`."""
    match = request.headers.get("If-Match")
    none_match = request.headers.get("If-None-Match")
    if match is not None and none_match is not None:
        raise bad_request("send If-Match or If-None-Match, not both")
    if none_match is not None:
        if not put or none_match.strip() != "*":
            raise bad_request('If-None-Match takes only "*" (the key is absent), on PUT')
        return Condition(key, None)
    if match is None:
        return None
    wanted = match.strip()
    if wanted == ANY:
        return Condition(key, ANY)
    if "," in wanted:
        raise bad_request("If-Match takes one version")
    if len(wanted) >= 2 and wanted[0] == wanted[-1] == '"':
        wanted = wanted[1:-1]
    return Condition(key, wanted)


def precondition_failed(exc: PreconditionFailed) -> ApiError:
    [failed] = exc.failed
    current = "absent" if failed.version is None else f"at version {failed.version}"
    return ApiError(412, f"key {failed.key!r} is {current}", version=failed.version)


async def put(node: Node, request: web.BaseRequest) -> web.Response:
    key, params = _key_and_params(request)
    policy = copy_policy(params, node)
    ttl = ttl_seconds(params)
    condition = _condition(key, request, put=True)
    value = await read_text(request, node.settings.max_value_bytes)
    try:
        result = await node.put(key, value, ttl=ttl, condition=condition)
    except PreconditionFailed as exc:
        raise precondition_failed(exc) from None
    await await_copies(node, result.version, policy)
    status = 201 if result.outcome is Outcome.CREATED else 200
    return json_response({"key": key, "version": result.version}, status, _etag(result.version))


async def get(node: Reader, request: web.BaseRequest) -> web.Response:
    key, _ = _key_and_params(request)
    record = await node.get(key)
    if record is None:
        raise ApiError(404, f"key {key!r} not found")
    assert record.value is not None
    headers = {"Content-Type": TEXT, "ETag": f'"{record.version}"'}
    if record.expires is not None:
        headers["Expires"] = http_date(record.expires)
    return web.Response(body=record.value.encode("utf-8"), headers=headers)


async def delete(node: Node, request: web.BaseRequest) -> web.Response:
    key, params = _key_and_params(request)
    policy = copy_policy(params, node)
    condition = _condition(key, request, put=False)
    try:
        result = await node.delete(key, condition=condition)
    except PreconditionFailed as exc:
        raise precondition_failed(exc) from None
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
            "items": [
                {"key": r.key, "value": r.value, "version": r.version, "expires": iso_time(r.expires)}
                for r in records
            ],
            "next": records[-1].key if more else None,
            "seq": seq,
        }
    )


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/v1/kv", partial(listing, node), Role.READ),
        Route("GET", "/v1/kv/*", partial(get, node), Role.READ),
        Route("PUT", "/v1/kv/*", partial(put, node), Role.WRITE),
        Route("DELETE", "/v1/kv/*", partial(delete, node), Role.WRITE),
    ]
