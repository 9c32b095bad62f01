"""Snapshot reads of a Redis store (GET /v1/snapshot): paging through the copies that
`RedisBackend.snapshot` made in one script, so that the read sees one point in time."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from shareddb.record import Record
from shareddb.store.base import CHANGE_OVERHEAD, SNAPSHOT_CHUNK, SNAPSHOT_CHUNK_BYTES, StoreUnavailable
from shareddb.store.redis_replies import decode_record
from shareddb.store.redis_scripts import SNAPSHOT_PAGE

if TYPE_CHECKING:
    from shareddb.store.redis import RedisBackend

# A snapshot read's copies live this long unless it deletes them first (a node that stops in the
# middle of one leaves them behind); each chunk read extends that.
SNAPSHOT_COPY_TTL = 3600


class RedisSnapshotRead:
    """A `SnapshotRead` of a Redis store: pages through the copies `RedisBackend.snapshot` made,
    by feed position, and deletes them when closed."""

    def __init__(
        self, backend: RedisBackend, rec: bytes, seq_index: bytes, seq: int, count: int
    ) -> None:
        self._backend = backend
        self._copies = (seq_index, rec)
        self._after = "-inf"
        self._done = False
        self._closed = False
        self.seq = seq
        self.count = count

    async def next(
        self, limit: int = SNAPSHOT_CHUNK, max_bytes: int = SNAPSHOT_CHUNK_BYTES
    ) -> list[Record]:
        if self._done:
            return []
        flat = await self._backend._read_script(
            SNAPSHOT_PAGE, self._copies, [self._after, limit, max_bytes, CHANGE_OVERHEAD]
        )
        if not flat[0]:
            self._done = True
            return []
        self._after = "(" + bytes(flat[0]).decode()
        for copy in self._copies:  # the read goes on: so do its copies
            await self._backend._command("EXPIRE", copy, SNAPSHOT_COPY_TTL)
        records = [
            decode_record(bytes(flat[i]).decode("utf-8"), flat[i + 1]) for i in range(1, len(flat), 2)
        ]
        if not records:  # only transaction entries were left
            self._done = True
        return records

    async def close(self) -> None:
        if not self._closed:
            self._done = self._closed = True
            with contextlib.suppress(StoreUnavailable):
                await self._backend._command("UNLINK", *self._copies)
