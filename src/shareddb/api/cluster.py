"""The cluster view: GET /v1/cluster, this node and every member it knows."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from shareddb.api.errors import json_response
from shareddb.api.routing import Route
from shareddb.node import Node


async def cluster(node: Node, request: web.BaseRequest) -> web.Response:
    return json_response({"node": {"id": node.id, "url": node.url}, "members": []})


def routes(node: Node) -> list[Route]:
    return [Route("GET", "/v1/cluster", partial(cluster, node))]
