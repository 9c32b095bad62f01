"""`shareddb backup`, `restore` and `import --from-redis` against real node processes and a real
redis-server: a backup restored into a fresh three-node cluster ends with every node holding
exactly the snapshot (invariant 2), and every failure is one readable line."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    Reply,
    digest,
    http,
    live_items,
    put,
    read,
    start_cluster,
    wait_converged,
)
from tests.harness import NodeProcess, run_cli, running_redis

pytestmark = pytest.mark.cluster

TOKEN = "backup-token"


def txn(node: NodeProcess, then: list[dict[str, Any]]) -> Reply:
    return http("POST", node.url + "/v1/txn", orjson.dumps({"then": then}))


def one_line_failure(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shareddb: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_backup_restored_into_a_fresh_three_node_cluster_ends_on_every_node(
    start_node: StartNode, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(1) as pool:  # the fresh cluster starts while the backup is made
        starting = pool.submit(start_cluster, start_node, ["n1", "n2", "n3"])
        source = start_node("old")
        before, items, file = backup_of(source, tmp_path)
        fresh = starting.result()
    restored = run_cli("restore", str(file), "--url", fresh[1].url)
    assert restored.returncode == 0, restored.stderr
    assert "301 records applied, 0 kept" in restored.stdout
    assert wait_converged(fresh) == before  # the same keys at the same versions, tombstones too
    for node in fresh:
        assert live_items(node) == items
    assert digest(source) == before, "a backup changes nothing"


def backup_of(
    source: NodeProcess, tmp_path: Path
) -> tuple[dict[str, Any], dict[str, tuple[str, str]], Path]:
    """Write keys (some deleted, one expiring) to `source` and back it up: its digest and live
    keys, and the file."""
    puts: list[dict[str, Any]] = [
        {"op": "put", "key": f"key/{i:03}", "value": f"value {i} ✓"} for i in range(300)
    ]
    puts.append({"op": "put", "key": "expiring", "value": "soon", "ttl": 3600})
    assert txn(source, puts).status == 200
    deletes = [{"op": "delete", "key": f"key/{i:03}"} for i in range(0, 300, 7)]
    assert txn(source, deletes).status == 200
    assert put(source, "key/001", "written again").status == 200
    before = digest(source)
    items = live_items(source)

    file = tmp_path / "backup.ndjson"
    saved = run_cli("backup", str(file), "--url", source.url)
    assert saved.returncode == 0, saved.stderr
    assert "saved 301 records of node old" in saved.stdout
    assert saved.stderr == "", "no progress output when not on a terminal"
    assert not (tmp_path / "backup.ndjson.partial").exists()
    return before, items, file


def test_backup_restore_and_import_fail_in_one_line_and_leave_no_partial_file(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node("n1", "--token", TOKEN)
    file = tmp_path / "backup.ndjson"
    garbage = tmp_path / "garbage.ndjson"
    garbage.write_bytes(b'{"format": "shareddb-snapshot", "version": 1}\n{"key": "a"}\n')
    runs = {
        "no token": ("backup", str(file), "--url", node.url),
        "garbage": ("restore", str(garbage), "--url", node.url, "--token", TOKEN),
        "no node": ("backup", str(file), "--url", "http://127.0.0.1:9", "--token", TOKEN),
        "no redis": ("import", "--from-redis", "redis://127.0.0.1:9/0", "--url", node.url),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        done = dict(zip(runs, pool.map(lambda args: run_cli(*args), runs.values()), strict=True))
    for name, result in done.items():
        assert result.returncode != 0, name
    assert "token" in one_line_failure(done["no token"].stderr)
    assert "nothing was applied" in one_line_failure(done["garbage"].stderr)
    assert "127.0.0.1:9" in one_line_failure(done["no node"].stderr)
    assert "cannot read Redis at redis://127.0.0.1:9/0" in one_line_failure(done["no redis"].stderr)
    assert list(tmp_path.glob("backup.ndjson*")) == []
    answer = http("GET", node.url + "/v1/digest", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.json()["count"] == 0


def test_import_brings_every_string_key_of_a_redis_database_over(
    start_node: StartNode, tmp_path: Path
) -> None:
    """What users of the prototype have: one Redis string per key (`SET name value`)."""
    with running_redis(tmp_path / "redis") as server:
        source = redis.Redis(host="127.0.0.1", port=server.port, db=3)
        try:
            # More than one SCAN page and more than one transaction.
            source.mset({f"name{i}": f"value {i}" for i in range(1200)})
            source.set("a key/with spaces", "héllo & = + %")
            source.set("empty", "")
            source.set("expiring", "soon", ex=600)
            source.hset("a hash", "field", "x")
            source.rpush("a list", "x")
            source.set(b"not utf-8 \xff", "x")
            source.set("binary", b"\xff\xfe")
        finally:
            source.close()
        node = start_node("n1")
        put(node, "name5", "replaced by the import")
        imported = run_cli("import", "--from-redis", server.url(3), "--url", node.url)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == (
        f"imported 1203 keys from {server.url(3)} into {node.url}; skipped 2 of other types "
        "(hash 1, list 1), 1 whose name is not a valid key, 1 whose value is not UTF-8 text"
    )
    assert imported.stderr == ""
    items = live_items(node)
    assert len(items) == 1203
    assert items["name5"][0] == "value 5"
    assert items["a key/with spaces"][0] == "héllo & = + %"
    assert items["empty"][0] == ""
    assert read(node, "expiring") is not None
    answer = run_cli("get", "expiring", "--url", node.url)
    assert answer.stdout.strip() == "soon"
