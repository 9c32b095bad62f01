"""Fixtures that start real node processes; every process is killed at the end of its test."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness import NodeProcess, ProxyThread

StartNode = Callable[..., NodeProcess]
# proxied_cluster(ids, *args, envs=...) -> (nodes, proxies)
StartProxied = Callable[..., tuple[list[NodeProcess], ProxyThread]]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    """`start_node("n1", "--peers", url)`: a running node with its data dir under tmp_path."""
    nodes: list[NodeProcess] = []

    def start(node_id: str, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(tmp_path / node_id, node_id, *args, env=env)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.cleanup()


class NotShareddb(http.server.BaseHTTPRequestHandler):
    """Some other web server on the port the user named: 200 and a page of HTML for everything."""

    def _answer(self) -> None:
        body = b"<html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotShareddb)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxied_cluster(start_node: StartNode) -> Iterator[StartProxied]:
    """`proxied_cluster(["a", "b"], envs=[...])`: nodes that reach each other only through a fault
    proxy each (ProxyThread), every one with --peers of the others and `envs[i]` added to its
    environment; returns (nodes, proxies), slot i being nodes[i]. The caller waits for them to see
    each other (wait_all_up)."""
    threads: list[ProxyThread] = []

    def start(
        ids: Sequence[str], *args: str, envs: Sequence[dict[str, str] | None] = ()
    ) -> tuple[list[NodeProcess], ProxyThread]:
        nodes: list[NodeProcess] = []

        def port_of(slot: int) -> Callable[[], int]:
            return lambda: nodes[slot].port if slot < len(nodes) else 0  # 0: not started yet

        proxies = ProxyThread(list(ids), [port_of(i) for i in range(len(ids))])
        threads.append(proxies)
        for i, node_id in enumerate(ids):
            peers = ",".join(proxies.url(j) for j in range(len(ids)) if j != i)
            advertise = ("--advertise", proxies.url(i), "--peers", peers)
            env = envs[i] if envs else None
            nodes.append(start_node(node_id, *advertise, *args, env=env))
        return nodes, proxies

    yield start
    for proxies in threads:
        proxies.close()
