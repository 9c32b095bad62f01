"""A store file that fails its integrity check at start stops the node with one readable line.

The store is written by a real node, stopped cleanly (so every page is in the database file, none in
the write-ahead log), then damaged on disk the way a failing disk or a stray write would.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import put, read
from tests.harness import NodeProcess, run_cli

pytestmark = pytest.mark.cluster

KEYS = 2000
STORE = "shareddb.sqlite3"


@pytest.fixture(scope="module")
def written_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data dir of a node that took KEYS writes and stopped cleanly; tests damage copies."""
    data = tmp_path_factory.mktemp("store") / "n1"
    node = NodeProcess(data, "n1").start()
    try:
        for i in range(KEYS):
            reply = put(node, f"key{i:05d}", f"value {i} " + "x" * 60)
            assert reply.status in (200, 201), reply
    finally:
        assert node.stop() == 0, node.logs()
    assert not (data / f"{STORE}-wal").exists() or (data / f"{STORE}-wal").stat().st_size == 0
    return data


def _copy(written: Path, tmp_path: Path) -> Path:
    data = tmp_path / "n1"
    shutil.copytree(written, data)
    return data


def _garble_header(data: bytearray) -> None:
    data[0:100] = bytes((i * 37 + 11) % 256 for i in range(100))


def _garble_middle_page(data: bytearray) -> None:
    """Overwrite the header of the b-tree page in the middle of the file (its type, cell count and
    cell pointers): every page of a store that never deleted anything is in a b-tree, and
    quick_check reads every one."""
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    start = (pages // 2) * page_size
    data[start : start + 64] = b"\xff" * 64


@pytest.mark.parametrize("damage", [_garble_header, _garble_middle_page])
def test_node_refuses_to_start_on_a_corrupt_store_and_names_the_file(
    written_store: Path,
    tmp_path: Path,
    start_node: StartNode,
    damage: Callable[[bytearray], None],
) -> None:
    """Invariant 1 (a node never serves a store that may have lost writes): one line, no serving."""
    data = _copy(written_store, tmp_path)
    store = data / STORE
    content = bytearray(store.read_bytes())
    damage(content)
    store.write_bytes(content)

    done = run_cli("serve", "--port", "0", "--host", "127.0.0.1", "--data", str(data))
    assert done.returncode != 0
    assert "listening on" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(store) in lines[0]
    assert "is corrupt" in lines[0]
    assert "--join" in lines[0]  # and what to do about it
    assert store.read_bytes() == content  # the node changed nothing of the evidence


def test_node_starts_on_an_undamaged_copy_of_the_same_store(
    written_store: Path, tmp_path: Path, start_node: StartNode
) -> None:
    """The check passes a sound store: the damaged ones above fail for their damage alone."""
    _copy(written_store, tmp_path)
    node = start_node("n1")
    found = read(node, f"key{KEYS - 1:05d}")
    assert found is not None
    assert found[0].startswith(f"value {KEYS - 1} ")
