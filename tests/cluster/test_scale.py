"""A node's `count` and digest cost the same at any number of keys: they are counters kept with
every commit (docs/design.md, "Keys at scale"), never a pass over the rows, at open or on request.

The proof: rows written into a stopped node's store behind its back (not through the write
pipeline, so no counter moves) are served by GET, yet change neither `count` nor the digest. A
node that counted or hashed its rows, when it opens or when asked, would report them.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import delete, digest, put, read

pytestmark = pytest.mark.cluster

HIDDEN = 500  # rows written behind the node's back


def test_count_and_digest_are_kept_counters_not_a_scan_of_the_rows(start_node: StartNode) -> None:
    node = start_node("n1")
    for key in ("a", "b", "c"):
        assert put(node, key, f"value of {key}").status == 201
    assert put(node, "later", "expires", "?ttl=3600").status == 201
    assert delete(node, "b").status == 204
    before = digest(node)
    assert before["count"] == 3
    assert node.stop() == 0, node.logs()

    with sqlite3.connect(node.data / "shareddb.sqlite3") as db:
        db.executemany(
            "INSERT INTO kv (key, value, version, seq) VALUES (?, ?, ?, ?)",
            [(f"hidden{i:04d}", "x" * 100, f"{i:016x}-n1", 1_000_000 + i) for i in range(HIDDEN)],
        )
    node.start()

    assert read(node, "hidden0001") is not None  # the rows are there: the store reads them
    assert digest(node) == before  # and neither the count nor the digest moved
