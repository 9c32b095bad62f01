"""Member entries merge by last-writer-wins; leaving must win however the clocks stand."""

from __future__ import annotations

from shareddb.membership import Membership


def test_leave_wins_over_an_entry_written_by_a_faster_clock() -> None:
    """Invariant 2: all nodes that can reach each other converge to identical digests.

    A node whose clock runs behind marked a member left at a version below the member's entry.
    The entry went back to `left` at a lower version, and the next copy of the entry from any
    peer brought the member back: it stayed active forever and held up the tombstone purge.
    """
    members = Membership("a", "http://a:1", clock=lambda: 0.0)
    entry = {"id": "b", "url": "http://b:1", "left": False, "v": 1_000}
    members.merge([entry])
    assert members.leave("b", 10)  # this node's clock is far behind the one that wrote v=1000
    members.merge([entry])  # a peer sends the old entry again
    assert members.members["b"].left
    assert members.members["b"].version > 1_000
