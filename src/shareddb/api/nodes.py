"""The seed-compatible API: GET /nodes/update, /nodes/get, /nodes/remove, /nodes/dump.

Kept byte-for-byte in shape so users of the prototype can switch. Its query parameters are decoded
strictly (see `query.py`); `replicate` is accepted and ignored, since replication is always on.
"""

from __future__ import annotations

from functools import partial

import orjson
from aiohttp import web

from shareddb.api.errors import JSON, ApiError, bad_request, json_response
from shareddb.api.kv import Reader
from shareddb.api.query import parse_query, split_target, ttl_seconds
from shareddb.api.routing import Route
from shareddb.api.writes import await_copies, copy_policy
from shareddb.node import Node
from shareddb.record import key_error, value_error
from shareddb.store.base import Outcome
from shareddb.tokens import Role

MAX_TARGET = 64 * 1024


def _params(request: web.BaseRequest) -> dict[str, str]:
    target = request.raw_path
    if len(target) > MAX_TARGET:
        raise ApiError(
            414,
            f"request target is {len(target)} bytes, over the {MAX_TARGET}-byte limit of the "
            "seed API; send large values with PUT /v1/kv/{key}",
        )
    return parse_query(split_target(target)[1])


def _name(params: dict[str, str]) -> str:
    name = params.get("name")
    if name is None:
        raise bad_request("name is required")
    if error := key_error(name):
        raise bad_request(f"invalid name: {error}")
    return name


async def update(node: Node, request: web.BaseRequest) -> web.Response:
    params = _params(request)
    name = _name(params)
    value = params.get("value")
    if value is None:
        raise bad_request("value is required (value= stores an empty value)")
    if error := value_error(value, node.settings.max_value_bytes):
        raise ApiError(413, error)
    policy = copy_policy(params, node)
    result = await node.put(name, value, ttl=ttl_seconds(params))
    await await_copies(node, result.version, policy)
    return json_response(
        {
            "success": True,
            "name": name,
            "value": value,
            "version": result.version,
            "msg": f"{name} key was updated",
        }
    )


async def get(node: Reader, request: web.BaseRequest) -> web.Response:
    name = _name(_params(request))
    record = await node.get(name)
    if record is None:
        raise ApiError(404, f"can not get {name} key")
    return json_response(
        {"success": True, "name": name, "value": record.value, "version": record.version}
    )


async def remove(node: Node, request: web.BaseRequest) -> web.Response:
    params = _params(request)
    name = _name(params)
    policy = copy_policy(params, node)
    result = await node.delete(name)
    if result.outcome is Outcome.NOT_FOUND:
        raise ApiError(404, f"{name} key was not removed")
    await await_copies(node, result.version, policy)
    return json_response(
        {
            "success": True,
            "name": name,
            "version": result.version,
            "msg": f"{name} key was removed",
        }
    )


async def dump(node: Node, request: web.BaseRequest) -> web.StreamResponse:
    """Every live key, streamed a page at a time so a large store never sits in memory."""
    _params(request)
    pages = node.pages()
    # The first page is read before the status line goes out, so a store that is down still
    # gets a proper 503; a failure later can only cut the stream short.
    first = await anext(pages, None)
    response = web.StreamResponse(headers={"Content-Type": JSON})
    await response.prepare(request)
    await response.write(b'{"success":true,"data":{')
    page = first
    separator = b""
    while page is not None:
        chunk = b",".join(orjson.dumps(r.key) + b":" + orjson.dumps(r.value) for r in page)
        await response.write(separator + chunk)
        separator = b","
        page = await anext(pages, None)
    await response.write(b"}}")
    await response.write_eof()
    return response


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/nodes/update", partial(update, node), Role.WRITE, safe=False),
        Route("GET", "/nodes/get", partial(get, node), Role.READ),
        Route("GET", "/nodes/remove", partial(remove, node), Role.WRITE, safe=False),
        Route("GET", "/nodes/dump", partial(dump, node), Role.READ),
    ]
