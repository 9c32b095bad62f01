"""Tombstone purge: a purged tombstone leaves no trace, and only old, fully applied ones go."""

from __future__ import annotations

from pathlib import Path

import pytest

from shareddb.record import Record, make_version
from shareddb.store.base import Store
from tests.store.test_contract import BACKENDS


def v(hlc: int, node: str = "a") -> str:
    return make_version(hlc, node)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_store(backend: str, where: Path) -> Store:
    where.mkdir()
    return BACKENDS[backend](where, lambda: 0)


async def open_store(backend: str, where: Path) -> Store:
    store = new_store(backend, where)
    await store.open()
    return store


async def test_purged_tombstone_leaves_the_digest_as_if_never_written(
    backend: str, tmp_path: Path
) -> None:
    """Invariant 2: digests compare equal once both stores dropped the same tombstones."""
    store = await open_store(backend, tmp_path / "a")
    clean = await open_store(backend, tmp_path / "b")
    try:
        await store.apply([Record("gone", "x", v(1)), Record("kept", "y", v(2))])
        await store.apply([Record("gone", None, v(3))])
        await clean.apply([Record("kept", "y", v(2))])
        assert store.digest().digest != clean.digest().digest

        purged = await store.purge_tombstones(store.last_seq, v(10**6, ""))

        assert purged == 1
        assert await store.get("gone") is None
        assert store.digest().digest == clean.digest().digest
        assert store.digest().count == 1
    finally:
        await store.close()
        await clean.close()


async def test_purge_keeps_tombstones_above_the_horizon_or_inside_the_grace(
    backend: str, tmp_path: Path
) -> None:
    """Invariant 4: a tombstone some member may still need is never dropped."""
    store = await open_store(backend, tmp_path / "a")
    try:
        await store.apply([Record("old", None, v(5)), Record("young", None, v(500))])
        old_seq = store.last_seq - 1

        assert await store.purge_tombstones(old_seq - 1, v(10**6, "")) == 0
        assert await store.purge_tombstones(store.last_seq, v(100, "")) == 1

        assert await store.get("old") is None
        young = await store.get("young")
        assert young is not None
        assert young.deleted
    finally:
        await store.close()


async def test_purge_never_drops_live_values_or_a_tombstone_rewritten_in_the_same_batch(
    backend: str, tmp_path: Path
) -> None:
    store = await open_store(backend, tmp_path / "a")
    try:
        await store.apply([Record("k", None, v(1)), Record("live", "x", v(1))])
        await store.apply([Record("k", "back", v(2))])

        assert await store.purge_tombstones(store.last_seq, v(10**6, "")) == 0

        assert await store.get("k") == Record("k", "back", v(2))
        assert await store.get("live") == Record("live", "x", v(1))
    finally:
        await store.close()
