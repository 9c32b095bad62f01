"""The node's HTTP server: every API surface's routes in one router, served by aiohttp.

/health                                      liveness, never behind --token   (ops.py)
/nodes/update|get|remove|dump                the seed-compatible GET API      (nodes.py)
/v1/kv, /v1/kv/{key}                         the REST API of keys             (kv.py)
/v1/watch                                    changes as Server-Sent Events    (watch.py)
/v1/txn                                      transactions                     (txn.py)
/v1/cluster, /v1/digest, /v1/openapi.json    cluster view and operations      (cluster.py, ops.py)
/metrics                                     Prometheus metrics               (metrics.py)
"""

from __future__ import annotations

from aiohttp import web

from shareddb.api import cluster, kv, metrics, nodes, ops, peer, txn, watch
from shareddb.api.metrics import NodeMetrics
from shareddb.api.routing import Router
from shareddb.node import Node


def create_router(node: Node, node_metrics: NodeMetrics | None = None) -> Router:
    """The router of every API surface; `node_metrics` (made here when not given) is what
    /metrics serves and what each request is counted in."""
    node_metrics = node_metrics or NodeMetrics(node)
    routes = [
        *ops.routes(node),
        *nodes.routes(node),
        *kv.routes(node),
        *watch.routes(node),
        *txn.routes(node),
        *cluster.routes(node),
        *peer.routes(node),
        *metrics.routes(node_metrics),
    ]
    return Router(
        routes,
        token=node.settings.token,
        peer_token=node.settings.peer_token,
        observe=node_metrics.observe_request,
    )


def create_server(node: Node, **kwargs: object) -> web.Server:
    """The aiohttp low-level server of a node; `kwargs` go to aiohttp's request handler."""
    node_metrics = NodeMetrics(node)
    server = web.Server(create_router(node, node_metrics), **kwargs)  # type: ignore[arg-type]
    node_metrics.connections = lambda: len(server.connections)
    return server
