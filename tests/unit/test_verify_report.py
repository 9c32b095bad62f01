"""What `shareddb verify` prints of the digests it read (verify.Report), without a node."""

from __future__ import annotations

from shareddb.verify import Report

DIGEST = {"count": 3, "digest": "ab" * 16}


def test_members_that_agree_are_counted_and_a_lone_node_is_not_called_all_of_one() -> None:
    two = Report(nodes=[("a", "http://a:1", DIGEST), ("b", "http://b:1", DIGEST)])
    assert two.lines()[-1] == "all 2 nodes agree"
    alone = Report(nodes=[("a", "http://a:1", DIGEST)])
    assert alone.agree
    assert alone.lines()[-1] == "1 node, no other member to compare"
