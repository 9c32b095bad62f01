"""The node: wires the clock, the store and (later) replication and membership; start and stop.

The HTTP layer talks only to `Node`; it never touches the store or the clock directly.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shareddb.clock import HybridClock
from shareddb.config import Settings
from shareddb.record import Record, make_version, node_id_error
from shareddb.store.base import Outcome, Store
from shareddb.store.sqlite import SQLiteStore, sqlite_path

log = logging.getLogger("shareddb.node")

NODE_ID_FILE = "node-id"
LOCK_FILE = "LOCK"
PAGE = 1000


class NodeError(Exception):
    """The node cannot start; the message is one line meant for the user."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    version: str


def wall_millis() -> int:
    return time.time_ns() // 1_000_000


class Node:
    """One shareddb node. Create it with `Node.open(settings)`; `close()` it when done."""

    def __init__(
        self,
        settings: Settings,
        node_id: str,
        store: Store,
        clock: HybridClock,
        *,
        now: Callable[[], int] = wall_millis,
        lock: IO[str] | None = None,
    ) -> None:
        self.settings = settings
        self.id = node_id
        self.store = store
        self.clock = clock
        self._now = now
        self._lock = lock
        self.url = settings.advertise or f"http://{settings.host}:{settings.port}"

    @classmethod
    async def open(cls, settings: Settings, *, now: Callable[[], int] = wall_millis) -> Node:
        data = settings.data
        try:
            data.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeError(f"cannot use data dir {data}: {exc.strerror or exc}") from exc
        lock = _lock_data_dir(data)
        try:
            node_id = _resolve_node_id(data, settings.node_id)
            if settings.store != "sqlite":
                raise NodeError(f"unsupported --store {settings.store!r}: use sqlite")
            clock = HybridClock()
            store = SQLiteStore(sqlite_path(data), clock_high=lambda: clock.last)
            await store.open()
        except BaseException:
            lock.close()
            raise
        clock.restore(store.clock_high)
        log.info("node %s opened store %s at sequence %d", node_id, data, store.last_seq)
        return cls(settings, node_id, store, clock, now=now, lock=lock)

    async def close(self) -> None:
        await self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- the key API -----------------------------------------------------------------------------

    def next_version(self) -> str:
        return make_version(self.clock.now(self._now()), self.id)

    async def get(self, key: str) -> Record | None:
        """The live record of `key`, or None when it is absent or deleted."""
        record = await self.store.get(key)
        return None if record is None or record.value is None else record

    async def put(self, key: str, value: str) -> WriteResult:
        version = self.next_version()
        return WriteResult(await self.store.write(Record(key, value, version)), version)

    async def delete(self, key: str) -> WriteResult:
        version = self.next_version()
        return WriteResult(await self.store.write(Record(key, None, version)), version)

    async def scan(self, prefix: str, after: str | None, limit: int) -> list[Record]:
        return await self.store.scan(prefix, after, limit)

    async def pages(self, prefix: str = "") -> AsyncIterator[list[Record]]:
        """Every live record under `prefix`, by key, a page at a time (never all in memory)."""
        after: str | None = None
        while True:
            page = await self.store.scan(prefix, after, PAGE)
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1].key

    # -- replication hooks (a single node holds every write it takes) ----------------------------

    @property
    def member_count(self) -> int:
        """Nodes a write can be waited on, this one included."""
        return 1

    async def wait_for_copies(self, version: str, copies: int, timeout: float) -> int:
        """Wait until `copies` nodes hold `version` (or newer); return how many do at the end."""
        await asyncio.sleep(0)
        return 1


def _lock_data_dir(data: Path) -> IO[str]:
    """Hold an exclusive lock on the data dir so two nodes never share one store."""
    try:
        handle = open(data / LOCK_FILE, "a+")  # noqa: SIM115 - held for the node's lifetime
    except OSError as exc:
        raise NodeError(f"cannot use data dir {data}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise NodeError(f"data dir {data} is in use by another shareddb node") from exc
    return handle


def _resolve_node_id(data: Path, requested: str | None) -> str:
    """The id stored in the data dir; a different requested id is refused."""
    path = data / NODE_ID_FILE
    stored = path.read_text().strip() if path.exists() else None
    if requested is not None:
        if error := node_id_error(requested):
            raise NodeError(f"bad --node-id {requested!r}: {error}")
        if stored is not None and stored != requested:
            raise NodeError(
                f"data dir {data} belongs to node {stored!r}, not {requested!r}: "
                f"start it with --node-id {stored} or use another --data"
            )
    if stored is not None:
        return stored
    node_id = requested or f"node-{secrets.token_hex(3)}"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(node_id + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return node_id
