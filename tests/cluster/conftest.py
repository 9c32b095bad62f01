"""Fixtures that start real node processes; every process is killed at the end of its test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import NodeProcess

StartNode = Callable[..., NodeProcess]


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
