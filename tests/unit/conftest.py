"""Fixtures of the in-process unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shareddb.store.memory import MemoryStore


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryStore]:
    """An open store on the memory backend, closed after the test."""
    store = MemoryStore()
    await store.open()
    yield store
    await store.close()
