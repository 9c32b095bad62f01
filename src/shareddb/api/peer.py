"""The peer API that replication runs on: GET /v1/peer/changes, GET /v1/peer/copy (a bulk copy of
the data set, replication/copy.py) and POST /v1/peer/join.

Only peers may call it (Role.PEER; api/access.py decides): no client token opens it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from aiohttp import web

from shareddb.api.errors import JSON, ApiError, bad_request, json_response
from shareddb.api.query import parse_query, split_target
from shareddb.api.routing import Route
from shareddb.membership import Outside, Removed
from shareddb.node import Node
from shareddb.record import is_incarnation, node_id_error
from shareddb.replication.copy import CopyBusy
from shareddb.replication.copy_frames import CopyRequest, encode_frame
from shareddb.replication.transport import PullRequest, encode_reply
from shareddb.store.base import COPY_CHUNK, CopyUnsupported
from shareddb.tokens import Role

MAX_JOIN_BODY = 1024 * 1024
MAX_SKIP = 1024  # origins one pull may leave out


def _origins(raw: str) -> frozenset[str]:
    """`skip`: origins (record.make_origin: node id, then `~` and an incarnation) by commas."""
    if not raw:
        return frozenset()
    origins = raw.split(",")
    if len(origins) > MAX_SKIP:
        raise bad_request(f"skip names at most {MAX_SKIP} origins")
    for origin in origins:
        node_id, tilde, incarnation = origin.partition("~")
        if node_id_error(node_id) or (tilde and not is_incarnation(incarnation)):
            raise bad_request(f"bad origin {origin!r} in skip")
    return frozenset(origins)


def _int(params: dict[str, str], name: str, default: int = 0) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
        raise bad_request(f"{name} must be a non-negative integer, not {raw!r}")
    return int(raw)


def _connected(request: web.BaseRequest) -> bool:
    """The puller's connection is still open (aiohttp drops the transport once it closes)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def changes(node: Node, request: web.BaseRequest) -> web.StreamResponse:
    params = parse_query(split_target(request.raw_path)[1])
    puller = params.get("from", "")
    if puller and node_id_error(puller):
        raise bad_request(f"bad node id {puller!r}")
    try:
        wait = float(params.get("wait", "0"))
    except ValueError:
        raise bad_request("wait must be a number of seconds") from None
    if not 0 <= wait <= 60:
        raise bad_request("wait must be between 0 and 60 seconds")
    incarnation = params.get("inc", "")
    if incarnation and not is_incarnation(incarnation):
        raise bad_request(f"bad incarnation {incarnation!r}")
    pull = PullRequest(
        since=_int(params, "since"),
        instance=params.get("instance", ""),
        limit=_int(params, "limit", 1000),
        wait=wait,
        puller_id=puller,
        puller_url=params.get("url", ""),
        puller_version=_int(params, "v"),
        own_since=_int(params, "own_since"),
        puller_incarnation=incarnation,
        applied=_int(params, "applied") if params.get("applied") else None,
        skip=_origins(params.get("skip", "")),
        held=_int(params, "held") if params.get("held") else None,
        puller_boot=params.get("boot", ""),
        epoch=params.get("epoch", ""),
    )
    try:
        reply = await node.feed.pull(pull, lambda: _connected(request))
    except Removed as exc:
        raise ApiError(410, str(exc)) from None
    parts = encode_reply(reply, node.feed.encoded)
    first = next(parts)
    second = next(parts, None)
    if second is None:
        # The usual answer of a puller that keeps up: one part, sent in one write with a
        # Content-Length (no chunked framing for either side to handle).
        return web.Response(body=first, headers={"Content-Type": JSON})
    # Written out part by part, each part sent (or buffered only up to aiohttp's small limit)
    # before the next is encoded: a large batch is held once, as records, not again as JSON.
    response = web.StreamResponse(headers={"Content-Type": JSON})
    try:
        await response.prepare(request)
        await response.write(first)
        await response.write(second)
        for part in parts:
            await response.write(part)
        await response.write_eof()
    except ConnectionError:
        # The puller went away during its long poll (it stopped, or gave up waiting): it asks
        # again from its checkpoint, so nothing is lost, and there is nothing to log.
        pass
    return response


async def copy(node: Node, request: web.BaseRequest) -> web.StreamResponse:
    """A bulk copy of this node's data set after the key `after`, in chunks of `limit` records:
    frames of JSON, each after its length in ASCII digits and a newline (replication/copy.py)."""
    params = parse_query(split_target(request.raw_path)[1])
    puller = params.get("from", "")
    if puller and node_id_error(puller):
        raise bad_request(f"bad node id {puller!r}")
    incarnation = params.get("inc", "")
    if incarnation and not is_incarnation(incarnation):
        raise bad_request(f"bad incarnation {incarnation!r}")
    wanted = CopyRequest(
        after=params.get("after", ""),
        limit=_int(params, "limit", COPY_CHUNK),
        puller_id=puller,
        puller_url=params.get("url", ""),
        puller_version=_int(params, "v"),
        puller_incarnation=incarnation,
        digest=params.get("digest", ""),
    )
    busy = node.replicator is not None and node.replicator.copier.busy
    frames = node.feed.serve_copy(wanted, busy=busy)
    try:
        # The header comes once the first chunk is read: a refusal is still a status of its own.
        header = await anext(frames)
    except Removed as exc:
        raise ApiError(410, str(exc)) from None
    except CopyUnsupported as exc:
        raise ApiError(501, str(exc)) from None
    except CopyBusy as exc:
        raise ApiError(503, str(exc)) from None
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    try:
        await response.prepare(request)
        await response.write(encode_frame(header))
        async for frame in frames:
            await response.write(encode_frame(frame))
        await response.write_eof()
    except ConnectionError:
        # The puller went away: it resumes after the last chunk it applied.
        pass
    finally:
        await frames.aclose()
    return response


def _entries(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("members"), list):
        raise bad_request('body must be {"members": [...]}')
    entries: list[dict[str, Any]] = payload["members"]
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), str)
            and node_id_error(entry["id"]) is None
            and isinstance(entry.get("url"), str)
            and entry["url"].startswith(("http://", "https://"))
            and isinstance(entry.get("left"), bool)
            and isinstance(entry.get("v"), int)
            and (is_incarnation(entry.get("inc")) or entry.get("inc", "") == "")
        ):
            raise bad_request(f"bad member entry: {entry!r}")
    return entries


async def join(node: Node, request: web.BaseRequest) -> web.Response:
    """A node joins through this one: it sends its entries, it gets the whole member list back."""
    body = await request.content.read(MAX_JOIN_BODY + 1)
    if len(body) > MAX_JOIN_BODY:
        raise bad_request("join body too large")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("body is not JSON") from None
    try:
        return json_response({"members": node.feed.join(_entries(payload))})
    except Removed as exc:
        raise ApiError(410, str(exc)) from None
    except Outside as exc:
        raise ApiError(503, str(exc)) from None


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/v1/peer/changes", partial(changes, node), Role.PEER),
        Route("GET", "/v1/peer/copy", partial(copy, node), Role.PEER),
        Route("POST", "/v1/peer/join", partial(join, node), Role.PEER),
    ]
