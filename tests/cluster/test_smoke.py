"""A node process starts, answers, and stops on SIGTERM."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import StartNode
from tests.harness import get_json

pytestmark = pytest.mark.cluster


def test_node_process_answers_health_and_stops_on_sigterm(start_node: StartNode) -> None:
    node = start_node("n1")
    assert get_json(node.url + "/health") == {"status": "ok", "node": "n1"}
    assert node.stop() == 0
