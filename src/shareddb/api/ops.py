"""Operational endpoints: /health, /v1/digest and the OpenAPI document."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from shareddb.api.errors import bad_request, json_response
from shareddb.api.openapi import OPENAPI
from shareddb.api.query import parse_query, split_target
from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.store.base import DIGEST_BUCKETS
from shareddb.tokens import Role

BUCKETS_FLAG = {"1": True, "true": True, "0": False, "false": False}  # ?buckets= of /v1/digest


async def health(node: Node, request: web.BaseRequest) -> web.Response:
    return json_response({"status": "ok", "node": node.id})


async def digest(node: Node, request: web.BaseRequest) -> web.Response:
    """The digest; `?buckets=1` adds every bucket's hash, `?bucket=N` lists one bucket's versions."""
    params = parse_query(split_target(request.raw_path)[1])
    buckets = params.get("buckets", "0")
    if buckets not in BUCKETS_FLAG:
        raise bad_request(f"buckets must be one of 1, true, 0 or false, not {buckets!r}")
    if "bucket" in params:
        raw = params["bucket"]
        if not (raw.isascii() and raw.isdigit() and int(raw) < DIGEST_BUCKETS):
            raise bad_request(f"bucket must be an integer from 0 to {DIGEST_BUCKETS - 1}")
        versions = await node.store.bucket_versions(int(raw))
        return json_response({"bucket": int(raw), "versions": versions})
    summary = node.store.digest()
    answer: dict[str, object] = {"count": summary.count, "digest": summary.digest}
    if BUCKETS_FLAG[buckets]:
        answer["buckets"] = [f"{b:032x}" for b in summary.buckets]
    return json_response(answer)


async def openapi(request: web.BaseRequest) -> web.Response:
    return json_response(OPENAPI)


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/health", partial(health, node), Role.PUBLIC),
        Route("GET", "/v1/digest", partial(digest, node), Role.READ),
        Route("GET", "/v1/openapi.json", openapi, Role.READ),
    ]
