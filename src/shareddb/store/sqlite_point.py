"""Single-key reads of the SQLite store on an event loop, one read transaction per turn of the loop.

A read outside a transaction opens one of its own: SQLite takes a read lock of the WAL and releases
it (two `fcntl` calls) and checks the WAL's header, for every GET. Where a GET is a lookup in SQLite
(a store too large for the read cache, a worker process, which has no cache), that cost 3 to 5 µs
of the lookup's 7 to 15 (docs/design.md, "Keys at scale"). So the reads of one turn of the event
loop share one read transaction, which ends in a callback queued when it began.

No read sees a state older than a write acknowledged before its request arrived: the request's
bytes arrive in a callback, and its handler runs in a callback queued then (asyncio runs callbacks
in the order they were queued). So a transaction begun before the request arrived has ended
before the handler runs, and any transaction the handler reads in began after the request arrived,
after the write's commit. The node process also ends the transaction as soon as a commit of its
own is back on the event loop (`SQLiteBackend.commit`), before the pipeline answers any writer.

A transaction lasts one turn at most, so the checkpointer can still copy the whole WAL into the file
and truncate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3


class PointReads:
    """A connection for the reads made on the running event loop, in this turn's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._reading = False
        self._closed = False

    def connection(self) -> sqlite3.Connection:
        """The connection in this turn's read transaction, begun by the first read of the turn."""
        if not self._reading:
            if self._db.in_transaction:  # its renewal failed: never read on in an old state
                self._db.execute("ROLLBACK")
            self._db.execute("BEGIN")
            self._reading = True
            asyncio.get_running_loop().call_soon(self.renew)
        return self._db

    def renew(self) -> None:
        """End the read transaction: the next read sees every commit made until then."""
        if self._reading and not self._closed:
            self._reading = False
            with contextlib.suppress(sqlite3.Error):  # if not, the next read ends it
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        self.renew()
        self._closed = True
        self._db.close()
