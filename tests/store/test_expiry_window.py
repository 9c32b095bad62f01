"""A store with more values with a TTL than the pipeline keeps in memory: the pipeline holds a
bounded window of them (store/expiry.py), read from the backend a page at a time, and `count` and
the reaper stay exact as the clock passes them. Run against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from shareddb.record import Record
from shareddb.store import pipeline
from shareddb.store.base import Store
from shareddb.store.expiry import ExpiryIndex
from shareddb.store.pipeline import PipelineStore
from tests.store.test_contract import BACKENDS, WALL, Stores, v

VALUES = 1000
LIMIT = 100
LOOKAHEAD_MS = 1000
SPACING_MS = 10  # between two expiry times


@pytest.fixture(params=sorted(BACKENDS))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores(request.param, tmp_path)
    yield opened
    await opened.close_all()


def piped(store: Store) -> PipelineStore:
    assert isinstance(store, PipelineStore)
    return store


def window(store: Store) -> ExpiryIndex:
    return piped(store)._expiry


async def test_open_reads_a_window_and_the_count_stays_exact_as_the_clock_passes(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        pipeline, "ExpiryIndex", partial(ExpiryIndex, limit=LIMIT, lookahead_ms=LOOKAHEAD_MS)
    )

    async def reaper_off(self: PipelineStore) -> None:
        """The test calls `reap` itself, as the simulation does, so each call's work is known."""

    monkeypatch.setattr(PipelineStore, "_reap_loop", reaper_off)
    now = [WALL]
    store = await stores.open(now=lambda: now[0])
    first = WALL + 10_000
    await store.apply(
        [Record(f"k{i:04d}", "v", v(i + 1), first + i * SPACING_MS) for i in range(VALUES)]
    )
    await store.apply([Record("forever", "v", v(5000))])
    store = await stores.reopen(store, now=lambda: now[0])
    assert len(window(store)) <= LIMIT * 1.1  # not every value with a TTL
    assert store.digest().count == VALUES + 1

    # Past half of them: the reaper's look at the clock reads on and turns them into tombstones.
    now[0] = first + (VALUES // 2) * SPACING_MS
    assert await piped(store).reap() == VALUES // 2 + 1
    assert store.digest().count == VALUES // 2
    held = len(window(store))
    assert held <= LIMIT * 1.1 + LOOKAHEAD_MS // SPACING_MS

    # Past all of them.
    now[0] = first + VALUES * SPACING_MS
    while await piped(store).reap():
        pass
    assert store.digest().count == 1
    assert [r.key for r in await store.scan("", None, 10)] == ["forever"]
    assert len(window(store)) == 0
