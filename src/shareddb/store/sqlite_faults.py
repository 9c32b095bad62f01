"""What a failing SQLite file means to the node: a disk that cannot take writes, or a corrupt store.

The SQLite store asks this module two things: which error a failed write is for the caller
(`write_error`: `StoreFull` when the disk is full, read-only or failing to write, so the API answers
507 and the next write tries again), and whether a store file is fit to serve from at start
(`check_integrity`). It only reads what it is given; it never opens, repairs or deletes a file.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from shareddb.store.base import StoreFull, StoreUnavailable

# Primary result codes (the low byte of SQLite's extended codes, e.g. SQLITE_IOERR_WRITE).
_CANNOT_WRITE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR}
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_CANNOT_WRITE_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO}
MAX_REPORT = 200  # characters of the integrity check's findings quoted in the message


class StoreOpenError(Exception):
    """The store file cannot be opened or created; the message is meant for the user."""


class StoreCorrupt(StoreOpenError):
    """The store file failed its integrity check: the node must not serve from it."""

    def __init__(self, path: Path, finding: str) -> None:
        super().__init__(
            f"store file {path} is corrupt ({finding}); not serving from it. Move the data dir "
            "aside and start the node on an empty --data with its usual --peers or --join to "
            "refill it from its peers"
        )


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", -1)) & 0xFF


def write_error(exc: Exception) -> StoreUnavailable:
    """The error a writer gets for a batch that failed with `exc` (nothing of it was written)."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if (isinstance(exc, sqlite3.Error) and _code(exc) in _CANNOT_WRITE) or (
        isinstance(exc, OSError) and exc.errno in _CANNOT_WRITE_ERRNO
    ):
        return StoreFull(f"the store cannot write: {exc}")
    return StoreUnavailable(f"write failed: {exc}")


def is_corrupt(exc: sqlite3.Error) -> bool:
    """SQLite found the file malformed, or not a database at all."""
    return _code(exc) in _CORRUPT


def check_integrity(db: sqlite3.Connection, path: Path) -> None:
    """Raise `StoreCorrupt` unless `PRAGMA quick_check` finds the file sound.

    quick_check reads every page and checks each b-tree's structure, but not that the index
    matches the table (integrity_check does, at several times the cost): it is what start-up can
    afford on a large store. The cost is measured in docs/operations.md.
    """
    try:
        rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.Error as exc:
        if is_corrupt(exc):
            raise StoreCorrupt(path, str(exc)) from None
        raise
    findings = [str(row[0]) for row in rows]
    if findings != ["ok"]:
        text = "; ".join(line.strip() for f in findings for line in f.splitlines() if line.strip())
        if len(text) > MAX_REPORT:
            text = text[: MAX_REPORT - 3] + "..."
        raise StoreCorrupt(path, f"integrity check: {text}")
