"""GET /metrics: the node's metrics in the Prometheus text format, through prometheus-client.

Each node has a registry of its own (tests and the simulation run several nodes in one process).
Two kinds of metric live in it: histograms fed as things happen (request latency, store commit
latency), and values read from the node when it is scraped (keys, sequence, members, watchers,
connections), through a collector, so nothing is kept up to date that nobody asks for. Every name,
type and label is listed in docs/operations.md, "Metrics".
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from functools import partial

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.tokens import Role

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

# A GET takes about 25 µs, a fsynced commit a few milliseconds; a watch stream lasts as long as its
# client stays.
REQUEST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Label values stay bounded whatever clients send: a method outside this set counts as "other",
# a path no route serves as routing.UNMATCHED, never as itself.
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})

# No `_created` series beside every histogram and counter: a node's start time is not what its
# users graph, and they double the size of each scrape.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class NodeMetrics:
    """The metrics of one node. The router calls `observe_request`; the store calls the commit
    histogram; `connections` says how many connections the HTTP server holds open."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestLatency()
        self.commits = Histogram(
            "shareddb_store_commit_seconds",
            "Time the store took to commit one batch of the write pipeline (one transaction and "
            "one fsync with SQLite, one call with Redis).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.connections: Callable[[], int] = lambda: 0
        # The requests the node's workers answered themselves (workers.py), counted with these.
        self.worker_requests: Callable[[], list[dict[tuple[str, str, int], list[float]]]] = list
        self.registry.register(_NodeCollector(self))
        node.store.commit_observer = self.commits.observe
        self.observe_request = self.requests.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestLatency:
    """The request latency histogram, counted on the event loop with no lock.

    prometheus-client's `Histogram.observe` takes a lock per bucket counter and sum: about 3 µs,
    a tenth of what a GET costs in all. This costs about 0.5 µs (a dict lookup, a bisect and two
    additions) and is turned into the same histogram when scraped. Only the event loop's thread
    calls `observe`.
    """

    def __init__(self, bounds: tuple[float, ...] = REQUEST_BUCKETS) -> None:
        self.bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        # Per (method, route, status): the count in each bucket (not cumulative), then the sum.
        self.series: dict[tuple[str, str, int], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in METHODS else "other", route, status)
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, seconds)] += 1
        counts[-1] += seconds

    def family(
        self, others: list[dict[tuple[str, str, int], list[float]]] | None = None
    ) -> HistogramMetricFamily:
        """The histogram, with the counts of `others` (series of other processes) added in."""
        series = self.series
        if others:
            series = {key: list(counts) for key, counts in series.items()}
            for other in others:
                for key, counts in other.items():
                    mine = series.setdefault(key, [0.0] * len(counts))
                    for i, count in enumerate(counts):
                        mine[i] += count
        family = HistogramMetricFamily(
            "shareddb_http_request_duration_seconds",
            "Time from a request's head to its answer (for a watch stream: until it ends), by "
            "method, route (its path pattern) and status.",
            labels=("method", "route", "status"),
        )
        for (method, route, status), counts in sorted(series.items()):
            cumulative, buckets = 0.0, []
            for le, count in zip(self._les, counts, strict=False):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric([method, route, str(status)], buckets, counts[-1])
        return family


class _NodeCollector:
    """The values read from the node at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        node = self.metrics.node
        store = node.store
        yield self.metrics.requests.family(self.metrics.worker_requests())
        yield GaugeMetricFamily("shareddb_keys", "Live keys on this node.", store.digest().count)
        yield GaugeMetricFamily(
            "shareddb_sequence",
            "Latest sequence number of this node's changes feed (it never goes backwards).",
            store.last_seq,
        )
        skewed = (node.replicator.skewed if node.replicator else 0) + (
            node.bus.skewed if node.bus else 0
        )
        yield CounterMetricFamily(
            "shareddb_clock_skew",
            "Received versions more than the drift bound ahead of this node's clock.",
            skewed,
        )
        yield GaugeMetricFamily(
            "shareddb_http_connections",
            "Client and peer connections the HTTP server holds open (keep-alive ones included).",
            self.metrics.connections(),
        )
        yield from self._members()
        served = CounterMetricFamily(
            "shareddb_peer_changes_served",
            "Changes this node's feed served to pulling peers, by kind: written on this node "
            "(own), written elsewhere (relayed), or left out because the peer pulls the node "
            "that wrote them straight (skipped).",
            labels=("kind",),
        )
        for kind, count in node.feed.served.items():
            served.add_metric([kind], count)
        yield served
        if node.bus is not None:
            bus = node.bus.status()
            yield GaugeMetricFamily(
                "shareddb_bus_connected",
                "Whether this node is connected to its change bus (1) or not (0).",
                1 if bus["connected"] else 0,
            )
            yield GaugeMetricFamily(
                "shareddb_bus_lag",
                "Messages on the change bus's stream this node has not applied yet.",
                bus["lag"],
            )
            yield GaugeMetricFamily(
                "shareddb_bus_unpublished",
                "Changes of this node's feed not yet looked at by its publisher to the change bus.",
                bus["unpublished"],
            )
        watches = node.watches
        yield GaugeMetricFamily(
            "shareddb_watchers", "Open watch streams (GET /v1/watch).", watches.watchers
        )
        yield GaugeMetricFamily(
            "shareddb_watchers_behind",
            "Open watch streams reading the changes feed themselves (replaying, or too slow to "
            "be sent changes as they commit).",
            watches.behind,
        )
        yield CounterMetricFamily(
            "shareddb_watch_fell_behind",
            "Times a watch stream was too slow for the changes committed and went back to "
            "reading the changes feed itself.",
            watches.fell_behind,
        )

    def _members(self) -> Iterator[Metric]:
        node = self.metrics.node
        membership = node.membership
        last_seq = node.store.last_seq
        now = time.monotonic()  # the clock membership measures contact by (Node's `monotonic`)
        up = GaugeMetricFamily(
            "shareddb_member_up",
            "Whether a member exchanged with this node in the last few seconds (1) or not (0).",
            labels=("member",),
        )
        lag = GaugeMetricFamily(
            "shareddb_member_lag",
            "Changes of this node a member had not applied yet, as of its last pull.",
            labels=("member",),
        )
        contact = GaugeMetricFamily(
            "shareddb_member_last_contact_seconds",
            "Seconds since this node last exchanged with a member (absent: never since it started).",
            labels=("member",),
        )
        pull_lag = GaugeMetricFamily(
            "shareddb_pull_lag",
            "Changes of a member's feed this node had not pulled yet, as of its last pull from it.",
            labels=("member",),
        )
        behind = node.replicator.pull_lag if node.replicator else {}
        for member in sorted(membership.members.values(), key=lambda m: m.id):
            up.add_metric([member.id], 1 if membership.state(member) == "up" else 0)
            if member.left:
                continue
            lag.add_metric([member.id], max(0, last_seq - (member.applied or 0)))
            if member.last_contact is not None:
                contact.add_metric([member.id], max(0.0, now - member.last_contact))
            if member.id in behind:
                pull_lag.add_metric([member.id], behind[member.id])
        yield from (up, lag, contact, pull_lag)


async def metrics(node_metrics: NodeMetrics, request: web.BaseRequest) -> web.Response:
    return web.Response(body=node_metrics.render(), headers={"Content-Type": PROMETHEUS})


def routes(node_metrics: NodeMetrics) -> list[Route]:
    return [Route("GET", "/metrics", partial(metrics, node_metrics), Role.READ)]
