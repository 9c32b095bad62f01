"""A node whose disk fills up or turns read-only: 507 for writes, reads go on, nothing acknowledged
is lost, and writes (and replication) resume by themselves once the disk takes them again.

Each node's data dir is a small real file system mounted by the test (tests/harness/disk.py); its log is
written outside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import (
    delete,
    digest,
    http,
    live_items,
    put,
    read,
    seed_call,
    wait_converged,
)
from tests.harness import NodeProcess, run_cli, wait_for
from tests.harness.disk import FailingDisk, SmallDisk

pytestmark = pytest.mark.cluster

VALUE = "v" * 2000  # large enough that a few hundred writes outgrow any slack in the WAL
MAX_WRITES = 3000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., SmallDisk]]:
    """`small_disk("n1")`: a 4 MiB tmpfs mounted at tmp_path/n1, the data dir of node n1."""
    disks: list[SmallDisk] = []

    def mount(name: str, size: str = "4m") -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size)
        disks.append(disk)
        return disk.mount()

    yield mount
    for disk in disks:
        disk.unmount()


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[Callable[[str], FailingDisk]]:
    disks: list[FailingDisk] = []

    def mount(name: str) -> FailingDisk:
        disk = FailingDisk(tmp_path / name)
        disks.append(disk)
        return disk.mount()

    yield mount
    for disk in disks:
        disk.unmount()


def _write_until_refused(node: NodeProcess, acked: dict[str, str]) -> None:
    """Seed-API writes of new keys until one gets 507; the acknowledged ones go into `acked`."""
    for i in range(MAX_WRITES):
        key = f"late{i:05d}"
        reply = seed_call(node, "update", name=key, value=VALUE)
        if reply.status == 507:
            assert reply.json()["success"] is False
            assert "cannot write" in reply.json()["msg"]
            return
        assert reply.status == 200, reply
        acked[key] = VALUE
    raise AssertionError(f"no 507 after {MAX_WRITES} writes to a full disk\n{node.logs()}")


def _assert_refuses_writes(node: NodeProcess, some_key: str) -> None:
    """Every write route answers 507 in its API's shape, and none of them changed anything."""
    before = digest(node)
    seed = seed_call(node, "update", name="refused", value="x")
    assert seed.status == 507, seed
    assert seed.json()["success"] is False
    removed = seed_call(node, "remove", name=some_key)
    assert removed.status == 507, removed
    for reply in (put(node, "refused", "x"), delete(node, some_key)):
        assert reply.status == 507, reply
        assert reply.json()["error"] == "insufficient_storage"
        assert "cannot write" in reply.json()["message"]
    assert digest(node) == before


def _assert_serves_every_write(node: NodeProcess, acked: dict[str, str]) -> None:
    """Reads go on: every acknowledged value by GET, the listing, the dump; digest and cluster."""
    for key, value in acked.items():
        found = read(node, key)
        assert found is not None, key
        assert found[0] == value, key
    listed = live_items(node)
    assert {key: item[0] for key, item in listed.items()} == acked
    dump = http("GET", node.url + "/nodes/dump")
    assert dump.status == 200
    assert dump.json()["data"] == acked
    assert digest(node)["count"] == len(acked)
    assert http("GET", node.url + "/v1/cluster").status == 200


def test_full_disk_refuses_writes_serves_reads_and_recovers_without_restart(
    small_disk: Callable[..., SmallDisk], start_node: StartNode
) -> None:
    """Invariants 1 and 6: no acknowledged write is lost; a full disk crashes nothing."""
    disk = small_disk("n1")
    node = start_node("n1")
    acked = {f"early{i:03d}": f"value {i}" for i in range(20)}
    for key, value in acked.items():
        assert put(node, key, value).status in (200, 201)
    disk.fill()
    _write_until_refused(node, acked)
    _assert_refuses_writes(node, "early000")
    _assert_serves_every_write(node, acked)
    assert node.running()

    disk.free()
    # No restart: the next write finds the space.
    reply = seed_call(node, "update", name="after", value="space is back")
    assert reply.status == 200, (reply, node.logs())
    acked["after"] = "space is back"
    assert delete(node, "early000").status in (200, 204)
    del acked["early000"]
    _assert_serves_every_write(node, acked)
    log = node.logs()
    assert log.count("cannot write") == 1, log  # once when it starts, not once per request
    assert "the store can write again" in log

    assert node.stop() == 0
    node.start()
    _assert_serves_every_write(node, acked)


def test_disk_that_turns_read_only_refuses_writes_and_keeps_every_acknowledged_one(
    failing_disk: Callable[[str], FailingDisk], start_node: StartNode
) -> None:
    """Invariants 1 and 6: a file-system error that makes the disk read-only under the running
    node (errors=remount-ro) loses nothing acknowledged and crashes nothing."""
    disk = failing_disk("n1")
    node = start_node("n1")
    acked = {f"key{i:03d}": f"value {i}" for i in range(50)}
    for key, value in acked.items():
        assert put(node, key, value).status in (200, 201)
    disk.fail()
    assert not disk.writable()
    _assert_refuses_writes(node, "key000")
    _assert_serves_every_write(node, acked)
    assert node.running()
    assert node.stop() == 0, node.logs()

    disk.repair()
    node.start()
    _assert_serves_every_write(node, acked)
    assert put(node, "after", "repaired").status in (200, 201)


def test_node_on_a_read_only_file_system_does_not_start_and_says_why(
    small_disk: Callable[..., SmallDisk], start_node: StartNode, tmp_path: Path
) -> None:
    """A node that cannot even take its lock on its data dir says so in one line."""
    disk = small_disk("n1")
    node = start_node("n1")
    assert put(node, "k", "v").status in (200, 201)
    assert node.stop() == 0
    disk.remount("ro")
    again = NodeProcess(tmp_path / "n1", "n1")
    with pytest.raises(AssertionError, match="exited early") as failed:
        again.start()
    lines = [line for line in again.new_log().splitlines() if line.strip()]
    assert lines[-1].endswith("Read-only file system"), lines
    assert "Traceback" not in again.new_log()
    assert "n1" in str(failed.value)
    assert again.proc is not None
    assert again.proc.wait(10) != 0
    disk.remount("rw")
    node.start()
    assert read(node, "k") is not None


def test_replication_to_a_full_disk_pauses_and_resumes_without_skipping(
    small_disk: Callable[..., SmallDisk], start_node: StartNode
) -> None:
    """Invariants 1 and 2: B's disk fills while A takes writes; B's pulls fail without moving its
    checkpoint, and once space is back B converges to A's digest with every write."""
    disk = small_disk("b", "16m")
    a = start_node("a")
    b = start_node("b", "--peers", a.url)
    for i in range(10):
        assert put(a, f"before{i}", "x").status in (200, 201)
    wait_converged([a, b])
    disk.fill()
    written = {f"during{i:04d}": f"{i}-" + "w" * 10_000 for i in range(150)}  # 1.5 MB
    for key, value in written.items():
        assert put(a, key, value).status in (200, 201)
    wait_for(lambda: "cannot write" in b.logs(), 30, "B's store to report a full disk", [a, b])
    assert digest(b) != digest(a)
    assert read(b, "before0") is not None  # B still serves reads
    assert b.running()

    disk.free()
    wait_converged([a, b])
    for key, value in written.items():
        found = read(b, key)
        assert found is not None, key
        assert found[0] == value, key


def test_node_on_a_full_disk_does_not_start_and_says_why(
    small_disk: Callable[..., SmallDisk], start_node: StartNode, tmp_path: Path
) -> None:
    """SQLite needs room for its log index to open the store: without it, one line, no traceback;
    with space back, the node starts with its data."""
    disk = small_disk("n1")
    node = start_node("n1")
    assert put(node, "k", "v").status in (200, 201)
    assert node.stop() == 0
    disk.fill()
    done = run_cli("serve", "--port", "0", "--host", "127.0.0.1", "--data", str(tmp_path / "n1"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot open store" in lines[0]
    assert "disk full or read-only" in lines[0]
    fresh = run_cli("serve", "--port", "0", "--data", str(tmp_path / "n1" / "fresh"))
    assert fresh.returncode != 0
    assert fresh.stderr.strip().endswith("No space left on device"), fresh.stderr
    disk.free()
    node.start()
    assert read(node, "k") is not None
