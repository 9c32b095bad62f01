"""A node's data directory: the lock that keeps a second node out of it, the node id it keeps, and
the bound of its clock (`ClockFile`).

`claim` is what a starting node does with it; node.py turns a `DataDirError` into its `NodeError`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from shareddb.record import node_id_error

NODE_ID_FILE = "node-id"
LOCK_FILE = "LOCK"
CLOCK_FILE = "clock"

log = logging.getLogger("shareddb.node")


class DataDirError(Exception):
    """The data dir cannot be used; the message is one line meant for the user."""


def claim(data: Path, requested: str | None, mint_id: Callable[[], str]) -> tuple[IO[str], str]:
    """Make `data` if need be, hold its lock, and read (or, the first time, mint and store) its
    node id. Returns the lock, held for the node's lifetime, and the id."""
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot use data dir {data}: {exc.strerror or exc}") from exc
    lock = _lock(data)
    try:
        return lock, _resolve_node_id(data, requested, mint_id)
    except BaseException:
        lock.close()
        raise


def _lock(data: Path) -> IO[str]:
    """Hold an exclusive lock on the data dir so two nodes never share one store."""
    try:
        handle = open(data / LOCK_FILE, "a+")  # noqa: SIM115 - held for the node's lifetime
    except OSError as exc:
        raise DataDirError(f"cannot use data dir {data}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise DataDirError(f"data dir {data} is in use by another shareddb node") from exc
    return handle


def _resolve_node_id(data: Path, requested: str | None, mint_id: Callable[[], str]) -> str:
    """The id stored in the data dir; a different requested id is refused."""
    path = data / NODE_ID_FILE
    stored: str | None = None
    if path.exists():
        try:
            stored = path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataDirError(f"cannot read the node id from {path}: {exc}") from exc
        if node_id_error(stored):
            raise DataDirError(f"{path} does not hold a valid node id: {stored[:80]!r}")
    if requested is not None:
        if error := node_id_error(requested):
            raise DataDirError(f"bad --node-id {requested!r}: {error}")
        if stored is not None and stored != requested:
            raise DataDirError(
                f"data dir {data} belongs to node {stored!r}, not {requested!r}: "
                f"start it with --node-id {stored} or use another --data"
            )
    if stored is not None:
        return stored
    node_id = requested or mint_id()
    try:
        _write_durably(path, node_id)
    except OSError as exc:
        raise DataDirError(f"cannot write the node id to {path}: {exc.strerror or exc}") from exc
    return node_id


def _write_durably(path: Path, text: str) -> None:
    """Replace `path` with a file holding `text` and a newline, on disk before it returns."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


class ClockFile:
    """The bound of the node's clock (`clock.ClockBound`), kept in its data dir beside the store.

    Half a window before the last bound noted runs out, the clock asks for the next, RESERVE_AHEAD_MS
    ahead, which a thread of its own writes (written, fsynced, renamed): the event loop does no
    file I/O for it while the clock keeps to the wall's pace. At a clean stop the clock's
    high-water mark itself is noted. A node resumes its clock from the greater of this and the
    store's own high-water mark, so a store put back to an older state without its data dir (a
    Redis restored from a dump, or one that lost its last writes) cannot make it mint a version
    again (docs/design.md, "Identity": "A store that went back")."""

    def __init__(self, data: Path, *, background: bool = True) -> None:
        self.path = data / CLOCK_FILE
        # False: every note is written before `reserve` returns (the simulation: when a thread's
        # note lands would decide the bounds a crash leaves, and a seed would not replay).
        self._background = background
        self._noted = 0  # the bound last noted (or given up on, logged)
        self._lock = threading.Lock()  # one note at a time
        self._writer: threading.Thread | None = None
        self._failing = False

    def read(self) -> int:
        """The bound noted last; 0 in a data dir where none was."""
        try:
            text = self.path.read_text("ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise DataDirError(f"cannot read the clock's bound from {self.path}: {exc}") from exc
        if not text.isdigit():
            raise DataDirError(f"{self.path} does not hold a clock bound: {text[:80]!r}")
        self._noted = int(text)
        return self._noted

    def reserve(self, bound: int, wait: bool) -> int:
        if wait or not self._background:
            self._note(bound, above=True)
        elif self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(
                target=self._note, args=(bound, True), name="shareddb-clock", daemon=True
            )
            self._writer.start()
        return self._noted

    def settle(self, last: int) -> None:
        self.wait()  # or a note of a bound ahead could land after this one
        self._note(last, above=False)

    def wait(self) -> None:
        """Return once the note in progress in the background, if any, is done."""
        if self._writer is not None:
            self._writer.join()

    def _note(self, bound: int, above: bool) -> None:
        """Write `bound` (with `above`, only if it is above the one noted). A failure is logged
        (once until a note succeeds again) and the node goes on, as safe as its store's own
        high-water mark keeps it: a clock that waited for the note would stop every write."""
        with self._lock:
            if above and bound <= self._noted:
                return
            try:
                _write_durably(self.path, str(bound))
            except OSError as exc:
                if not self._failing:
                    log.error(
                        "cannot note the clock's bound in %s: %s; a store put back to an older "
                        "state could make this node repeat a version until it can",
                        self.path,
                        exc.strerror or exc,
                    )
                self._failing = True
            else:
                self._failing = False
            self._noted = bound
