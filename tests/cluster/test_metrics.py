"""GET /metrics of real nodes, read with prometheus-client's text parser as Prometheus reads it."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import http, put, start_cluster, wait_no_lag
from tests.harness import NodeProcess, wait_for
from tests.harness.metrics import by_label, sample, samples

pytestmark = pytest.mark.cluster

WAIT = 15.0
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
# Every metric the docs list (docs/operations.md, "Metrics"), by its type.
DOCUMENTED = {
    "shareddb_http_request_duration_seconds": "histogram",
    "shareddb_http_connections": "gauge",
    "shareddb_store_commit_seconds": "histogram",
    "shareddb_keys": "gauge",
    "shareddb_sequence": "gauge",
    "shareddb_clock_skew": "counter",
    "shareddb_member_up": "gauge",
    "shareddb_member_lag": "gauge",
    "shareddb_member_last_contact_seconds": "gauge",
    "shareddb_pull_lag": "gauge",
    "shareddb_peer_changes_served": "counter",
    "shareddb_watchers": "gauge",
    "shareddb_watchers_behind": "gauge",
    "shareddb_watch_fell_behind": "counter",
}


def scrape(node: NodeProcess) -> str:
    reply = http("GET", f"{node.url}/metrics")
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == PROMETHEUS
    return reply.body.decode()


def test_metrics_parse_and_name_every_documented_metric_with_its_type(start_node: StartNode) -> None:
    a, b = start_cluster(start_node, ["a", "b"])
    put(a, "secret/name-1", "v")
    wait_no_lag([a, b])
    text = scrape(a)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == DOCUMENTED
    assert sample(text, "shareddb_keys") == 1
    assert sample(text, "shareddb_sequence") == 1
    assert sample(text, "shareddb_clock_skew_total") == 0
    assert by_label(text, "shareddb_member_up", "member") == {"b": 1}
    assert by_label(text, "shareddb_member_lag", "member") == {"b": 0}
    assert by_label(text, "shareddb_pull_lag", "member") == {"b": 0}
    [contact] = by_label(text, "shareddb_member_last_contact_seconds", "member").values()
    assert 0 <= contact < WAIT


def test_request_latency_is_labelled_by_route_pattern_never_by_the_raw_path(
    start_node: StartNode,
) -> None:
    node = start_node("n1")
    for i in range(3):
        assert put(node, f"private-{i}", "v").status == 201
        assert http("GET", f"{node.url}/v1/kv/private-{i}").status == 200
    assert http("GET", f"{node.url}/v1/kv/missing").status == 404
    assert http("GET", f"{node.url}/no/such/path-secret").status == 404
    text = scrape(node)
    for raw in ("private", "secret", "missing"):
        assert raw not in text
    count = "shareddb_http_request_duration_seconds_count"
    assert sample(text, count, method="PUT", route="/v1/kv/*", status="201") == 3
    assert sample(text, count, method="GET", route="/v1/kv/*", status="200") == 3
    assert sample(text, count, method="GET", route="/v1/kv/*", status="404") == 1
    assert sample(text, count, method="GET", route="unmatched", status="404") == 1
    buckets = {
        dict(labels)["le"]: value
        for labels, value in samples(text)["shareddb_http_request_duration_seconds_bucket"].items()
        if ("status", "200") in labels and ("method", "GET") in labels
    }
    assert buckets["+Inf"] == 3
    assert sorted(buckets.values()) == list(buckets.values())  # cumulative, in order of `le`
    # Each write sent on its own is one commit: the commit histogram counts it.
    commits = sample(text, "shareddb_store_commit_seconds_count") or 0
    assert commits >= 3
    assert (sample(text, "shareddb_store_commit_seconds_sum") or 0) > 0
    assert put(node, "one-more", "v").status == 201
    assert sample(scrape(node), "shareddb_store_commit_seconds_count") == commits + 1


def test_a_method_no_route_knows_is_counted_as_other(start_node: StartNode) -> None:
    node = start_node("n1")
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as conn:
        conn.sendall(b"PROPFIND /v1/kv/pot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 405")
    text = scrape(node)
    assert "PROPFIND" not in text
    count = "shareddb_http_request_duration_seconds_count"
    assert sample(text, count, method="other", route="/v1/kv/*", status="405") == 1


def test_open_connections_are_counted(start_node: StartNode) -> None:
    node = start_node("n1")
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) for _ in range(5)]
    try:
        # The scrape's own connection is one more.
        wait_for(
            lambda: (sample(scrape(node), "shareddb_http_connections") or 0) >= 6,
            WAIT,
            "five idle connections in shareddb_http_connections",
            [node],
        )
    finally:
        for conn in idle:
            conn.close()
    wait_for(
        lambda: sample(scrape(node), "shareddb_http_connections") == 1,
        WAIT,
        "closed connections to leave shareddb_http_connections",
        [node],
    )
