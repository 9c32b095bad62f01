"""Operational endpoints: /health, /v1/digest and the OpenAPI document."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from shareddb.api.errors import json_response
from shareddb.api.openapi import OPENAPI
from shareddb.api.routing import Route
from shareddb.node import Node


async def health(node: Node, request: web.BaseRequest) -> web.Response:
    return json_response({"status": "ok", "node": node.id})


async def digest(node: Node, request: web.BaseRequest) -> web.Response:
    summary = node.store.digest()
    return json_response({"count": summary.count, "digest": summary.digest})


async def openapi(request: web.BaseRequest) -> web.Response:
    return json_response(OPENAPI)


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/health", partial(health, node), public=True),
        Route("GET", "/v1/digest", partial(digest, node)),
        Route("GET", "/v1/openapi.json", openapi),
    ]
