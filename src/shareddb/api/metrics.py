"""GET /metrics: the node's counters in the Prometheus text format (no client library needed)."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.tokens import Role

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def render(node: Node) -> str:
    digest = node.store.digest()
    membership = node.membership
    lines = [
        "# HELP shareddb_keys Live keys on this node.",
        "# TYPE shareddb_keys gauge",
        f"shareddb_keys {digest.count}",
        "# HELP shareddb_sequence Latest sequence number of this node's changes feed.",
        "# TYPE shareddb_sequence counter",
        f"shareddb_sequence {node.store.last_seq}",
        "# HELP shareddb_clock_skew_total Received versions more than the drift bound ahead.",
        "# TYPE shareddb_clock_skew_total counter",
        f"shareddb_clock_skew_total {node.replicator.skewed if node.replicator else 0}",
        "# HELP shareddb_member_up Whether a member exchanged with this node recently.",
        "# TYPE shareddb_member_up gauge",
    ]
    members = sorted(membership.members.values(), key=lambda m: m.id)
    for member in members:
        up = 1 if membership.state(member) == "up" else 0
        lines.append(f'shareddb_member_up{{member="{member.id}"}} {up}')
    lines += [
        "# HELP shareddb_member_lag Changes of this node a member has not applied yet.",
        "# TYPE shareddb_member_lag gauge",
    ]
    for member in members:
        if not member.left:
            lag = max(0, node.store.last_seq - (member.applied or 0))
            lines.append(f'shareddb_member_lag{{member="{member.id}"}} {lag}')
    watches = node.watches
    lines += [
        "# HELP shareddb_watchers Open watch streams (GET /v1/watch).",
        "# TYPE shareddb_watchers gauge",
        f"shareddb_watchers {watches.watchers}",
        "# HELP shareddb_watchers_behind Open watch streams reading the changes feed themselves "
        "(replaying, or too slow to be sent changes as they commit).",
        "# TYPE shareddb_watchers_behind gauge",
        f"shareddb_watchers_behind {watches.behind}",
        "# HELP shareddb_watch_fell_behind_total Times a watch stream was too slow for the "
        "changes committed and went back to reading the changes feed itself.",
        "# TYPE shareddb_watch_fell_behind_total counter",
        f"shareddb_watch_fell_behind_total {watches.fell_behind}",
    ]
    return "\n".join(lines) + "\n"


async def metrics(node: Node, request: web.BaseRequest) -> web.Response:
    return web.Response(body=render(node).encode(), headers={"Content-Type": PROMETHEUS})


def routes(node: Node) -> list[Route]:
    return [Route("GET", "/metrics", partial(metrics, node), Role.READ)]
