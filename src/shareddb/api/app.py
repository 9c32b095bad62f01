"""The node's HTTP server: every API surface's routes in one router, served by aiohttp.

/health                                      liveness, never behind --token   (ops.py)
/nodes/update|get|remove|dump                the seed-compatible GET API      (nodes.py)
/v1/kv, /v1/kv/{key}                         the REST API of keys             (kv.py)
/v1/watch                                    changes as Server-Sent Events    (watch.py)
/v1/txn                                      transactions                     (txn.py)
/v1/cluster, /v1/digest, /v1/openapi.json    cluster view and operations      (cluster.py, ops.py)
"""

from __future__ import annotations

from aiohttp import web

from shareddb.api import cluster, kv, metrics, nodes, ops, peer, txn, watch
from shareddb.api.connections import GuardedServer, Limits
from shareddb.api.routing import Router
from shareddb.node import Node


def create_router(node: Node) -> Router:
    routes = [
        *ops.routes(node),
        *nodes.routes(node),
        *kv.routes(node),
        *watch.routes(node),
        *txn.routes(node),
        *cluster.routes(node),
        *peer.routes(node),
        *metrics.routes(node),
    ]
    return Router(routes, token=node.settings.token, peer_token=node.settings.peer_token)


def create_server(node: Node, limits: Limits, **kwargs: object) -> web.Server:
    """The aiohttp low-level server of a node, its connections held to `limits`; `kwargs` go to
    aiohttp's request handler."""
    return GuardedServer(create_router(node), limits=limits, **kwargs)
