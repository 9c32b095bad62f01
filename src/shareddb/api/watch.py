"""GET /v1/watch: the changes of a key or a prefix as Server-Sent Events (SPEC.md, "Watch").

The request is checked here (exactly one of `prefix`/`key`, `since` or `Last-Event-ID`, 410 when
this node cannot replay from there); what goes out and when is `shareddb.watch`'s. Each event is
encoded once, however many watchers it goes to, and written with aiohttp's `StreamResponse`:
docs/design.md, "Watch", says why not aiohttp-sse.
"""

from __future__ import annotations

import contextlib
from functools import partial

from aiohttp import web

from shareddb.api.errors import ApiError, bad_request
from shareddb.api.query import parse_query, split_target
from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.record import key_error
from shareddb.tokens import Role
from shareddb.watch import Gone

PATH = "/v1/watch"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a proxy in front must not hold events back
}
MAX_SEQ_DIGITS = 19  # a sequence number fits in 63 bits


def _seq(raw: str, where: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_SEQ_DIGITS):
        raise bad_request(f"{where} must be a non-negative integer (a seq of this node), not {raw!r}")
    return int(raw)


def _since(request: web.BaseRequest, params: dict[str, str]) -> int | None:
    """Where to replay from: `Last-Event-ID` (what a reconnecting client sends) wins over
    `since`; None for "from now on". A malformed `since` is refused even then."""
    since = _seq(params["since"], "since") if "since" in params else None
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        return _seq(header.strip(), "Last-Event-ID")
    return since


def _selector(params: dict[str, str]) -> tuple[str, bool]:
    """(prefix or key, whether it is one key)."""
    if ("prefix" in params) == ("key" in params):
        raise bad_request("give exactly one of prefix= (prefix= alone watches every key) or key=")
    if "key" in params:
        key = params["key"]
        if error := key_error(key):
            raise bad_request(f"invalid key: {error}")
        return key, True
    return params["prefix"], False


async def watch(node: Node, request: web.BaseRequest) -> web.StreamResponse:
    params = parse_query(split_target(request.raw_path)[1])
    selector, exact = _selector(params)
    since = _since(request, params)
    store = node.store
    last = store.last_seq
    if since is None:
        since = last
    elif since < store.feed_floor:
        raise ApiError(
            410,
            f"seq {since} is older than this node can replay (its feed starts after seq "
            f"{store.feed_floor}): list again and watch from the listing's seq",
        )
    elif since > last:
        raise ApiError(
            410,
            f"seq {since} is beyond this node's latest seq {last} (a seq of another node, or of "
            f"this node before its data was wiped): list again and watch from the listing's seq",
        )
    response = web.StreamResponse(headers=HEADERS)
    if request.method == "HEAD":
        return response
    watcher = node.watches.watch(selector, exact=exact, since=since)
    transport = request.transport
    if transport is not None:
        watcher.abort = transport.abort
    await response.prepare(request)
    try:
        async with contextlib.aclosing(watcher.stream(node.settings.watch_ping)) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
    except Gone as exc:
        with contextlib.suppress(ConnectionError):
            await response.write(f": gone: {exc}\n\n".encode())
    except ConnectionError:  # the client hung up: nothing to report
        return response
    finally:
        watcher.close()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def routes(node: Node) -> list[Route]:
    return [Route("GET", PATH, partial(watch, node), Role.READ)]
