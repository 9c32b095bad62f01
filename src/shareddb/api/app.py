"""The node's HTTP server: every API surface's routes in one router, served by aiohttp.

/health                                      liveness, never behind a token   (ops.py)
/nodes/update|get|remove|dump                the seed-compatible GET API      (nodes.py)
/v1/kv, /v1/kv/{key}                         the REST API of keys             (kv.py)
/v1/watch                                    changes as Server-Sent Events    (watch.py)
/v1/txn                                      transactions                     (txn.py)
/v1/cluster, /v1/digest, /v1/openapi.json    cluster view and operations      (cluster.py, ops.py)
/v1/snapshot                                 backup and restore               (snapshot.py)
/ui, /ui/{file}                              the dashboard, public files      (ui.py)
/metrics                                     Prometheus metrics               (metrics.py)
/v1/peer/changes|copy, /v1/peer/join          replication, peers only          (peer.py)

Each route declares the role that may call it; access.py decides (401/403) before the handler runs.
"""

from __future__ import annotations

from aiohttp import web

from shareddb.api import cluster, kv, metrics, nodes, ops, peer, snapshot, txn, ui, watch
from shareddb.api.access import Access
from shareddb.api.connections import GuardedServer, Limits
from shareddb.api.metrics import NodeMetrics
from shareddb.api.routing import Router
from shareddb.node import Node


def create_router(
    node: Node, access: Access | None = None, node_metrics: NodeMetrics | None = None
) -> Router:
    """The router of every API surface. `access`: the node's credentials (server.py keeps it to
    reload on SIGHUP); by default read from the node's settings. Raises TokenError for a tokens
    file that cannot be used. `node_metrics` (made here when not given) is what /metrics serves
    and what each request is counted in."""
    node_metrics = node_metrics or NodeMetrics(node)
    routes = [
        *ops.routes(node),
        *nodes.routes(node),
        *kv.routes(node),
        *watch.routes(node),
        *txn.routes(node),
        *cluster.routes(node),
        *snapshot.routes(node),
        *peer.routes(node),
        *metrics.routes(node_metrics),
        *ui.routes(node),
    ]
    return Router(
        routes,
        access or Access.from_settings(node.settings, mutual_tls=node.settings.tls_ca is not None),
        observe=node_metrics.observe_request,
    )


def create_server(
    node: Node,
    limits: Limits,
    access: Access | None = None,
    node_metrics: NodeMetrics | None = None,
    **kwargs: object,
) -> web.Server:
    """The aiohttp low-level server of a node, its connections held to `limits`; `access` and
    `node_metrics`: as for `create_router`; `kwargs` go to aiohttp's request handler."""
    node_metrics = node_metrics or NodeMetrics(node)
    server = GuardedServer(create_router(node, access, node_metrics), limits=limits, **kwargs)
    node_metrics.connections = lambda: len(server.connections)
    return server
