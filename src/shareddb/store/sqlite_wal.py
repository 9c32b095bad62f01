"""When the SQLite store copies its WAL back into the database file, and which thread does it.

A checkpoint copies the WAL's frames into the database file, with an fsync of its own. Most run
on a thread of their own (`PASSIVE`: they never wait for the writer or a reader), so a commit
rarely waits for one. Three run on the writer thread, around a batch:

- Under steady writes the thread never reaches the WAL's end before the next commit adds to it,
  and SQLite starts a WAL over from its beginning only when a write transaction begins with all
  of it copied. Past WAL_RESTART bytes of WAL, the writer copies the frames committed since the
  thread's last checkpoint began, just before its next transaction, which then starts the WAL
  over (docs/design.md, "What a write costs": unbounded, the WAL grew to WAL_LIMIT).
- After a bulk copy's last chunk, the whole WAL goes into the file and the WAL back to nothing.
- Past WAL_LIMIT (readers holding old frames, say), the writer waits for a full restart:
  back-pressure.

None of the writer's runs while a snapshot read is open ("pinned"): the WAL cannot start over
past it, and a checkpoint that waits for readers would wait for it on every commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("shareddb.store")

CHECKPOINT_PAUSE = 0.2  # seconds the thread lets a burst of commits pile up before it copies
WAL_RESTART = 32 * 1024 * 1024
WAL_LIMIT = 512 * 1024 * 1024


class WalCheckpoints:
    """The checkpoint thread of one store file, and the checkpoints its writer runs itself."""

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection]) -> None:
        self._wal = Path(f"{path}-wal")
        self._connect = connect
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._restart_due = False  # set by the thread, cleared by the writer
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shareddb-checkpoint", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Empty the WAL into the file (once the writer's connection is closed) and end the thread."""
        if self._thread is not None:
            self._stopping.set()
            self._due.set()
            await asyncio.to_thread(self._thread.join)

    # -- on the writer thread ------------------------------------------------------------------

    def before_write(self, db: sqlite3.Connection, pinned: bool) -> None:
        """Copy the WAL's tail when the thread found it past WAL_RESTART, so that the coming
        transaction starts the WAL over."""
        if self._restart_due and not pinned:
            self._restart_due = False
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def after_write(self, db: sqlite3.Connection, pinned: bool, copied: bool) -> None:
        """After a batch, committed or not: `copied`, a bulk copy just ended."""
        self._due.set()
        if pinned:
            return
        if copied:
            # Into the database file now, and the WAL file back to nothing, rather than copied
            # piecemeal behind later commits.
            mode = "TRUNCATE"
        elif self._wal_size() > WAL_LIMIT:
            mode = "RESTART"
        else:
            return
        with contextlib.suppress(sqlite3.Error):
            db.execute(f"PRAGMA wal_checkpoint({mode})")

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0

    # -- on its own thread ---------------------------------------------------------------------

    def _run(self) -> None:
        """After writes, copy what the WAL holds into the file; on `stop`, all of it."""
        db = self._connect()
        try:
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            while True:
                self._due.wait()
                self._stopping.wait(CHECKPOINT_PAUSE)
                self._due.clear()
                if self._stopping.is_set():
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    return
                try:
                    _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self._restart_due = frames * page_size > WAL_RESTART
                except sqlite3.Error as exc:  # a full disk, say: the next commit asks again
                    log.debug("checkpoint put off: %s", exc)
        except sqlite3.Error as exc:
            log.warning("checkpoint failed: %s", exc)
        finally:
            db.close()
