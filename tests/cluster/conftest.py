"""Fixtures that start real node processes; every process is killed at the end of its test."""

from __future__ import annotations

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
