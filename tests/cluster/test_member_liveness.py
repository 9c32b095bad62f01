"""Member states through long idle polls, on real node processes.

A node holds its idle pulls longer as the mesh grows (membership.long_poll): with five
peers, 8 s, longer than membership's UP_WINDOW (6 s). A pull held open counts as contact
(membership.exchange), so an idle cluster shows every member `up` all along; a member that hangs
shows `down` once its pull is late, and one that crashes as soon as its connection closes.
"""

from __future__ import annotations

import time

import pytest

from shareddb.membership import EXCHANGE_SLACK, UP_WINDOW, long_poll
from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    cluster_view,
    put,
    start_cluster,
    wait_converged,
    wait_readable,
    wait_state,
)
from tests.harness import run_cli, wait_for

pytestmark = pytest.mark.cluster

IDS = ["a", "b", "c", "d", "e", "f"]
IDLE_POLL = long_poll(len(IDS) - 1)


def test_members_stay_up_through_long_idle_polls_and_one_that_hangs_goes_down(
    start_node: StartNode,
) -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests after faults
    heal. Invariant 1: no acknowledged write is lost (unless a greater version superseded it)."""
    assert IDLE_POLL > UP_WINDOW  # otherwise this test shows nothing
    nodes = start_cluster(start_node, IDS)
    a, f = nodes[0], nodes[-1]

    # Idle for two long polls: no member shows `down`, though some go longer than UP_WINDOW
    # without a pull answered either way (the polls really are that long).
    longest = 0.0
    deadline = time.monotonic() + 2 * IDLE_POLL + 2
    while time.monotonic() < deadline:
        for node in nodes:
            for entry in cluster_view(node)["members"]:
                assert entry["state"] == "up", (node.node_id, entry, node.logs())
                longest = max(longest, entry["last_contact"])
        time.sleep(0.2)
    assert longest > UP_WINDOW, f"no idle pull was held past UP_WINDOW (longest gap {longest}s)"

    # One member hangs: the others show it `down` once its pull is late, then `up` again.
    f.pause()
    try:
        wait_state(nodes[:-1], "f", "down", nodes, timeout=IDLE_POLL + EXCHANGE_SLACK + UP_WINDOW + 5)
        reply = put(a, "while-f-hung", "written")
        assert reply.status == 201, reply
        version = reply.json()["version"]
    finally:
        f.resume()
    wait_state(nodes[:-1], "f", "up", nodes)
    wait_readable([f], "while-f-hung", ("written", version), nodes)
    wait_converged(nodes)

    # One member crashes: its connections close, and the others show it `down` without waiting
    # out the long poll (UP_WINDOW after the last exchange at most).
    f.kill()
    wait_state(nodes[:-1], "f", "down", nodes, timeout=UP_WINDOW + 2)
    wait_for(lambda: all(n.running() for n in nodes[:-1]), 5, "the others to keep running", nodes)

    # Removing it through `a` reaches every other node well within one idle poll.
    removed = run_cli("leave", "--node", "f", "--url", a.url)
    assert removed.returncode == 0, removed.stderr
    wait_state(nodes[1:-1], "f", "left", nodes, timeout=IDLE_POLL / 2)
