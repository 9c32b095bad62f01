"""A power-loss model for SQLite: a VFS that forgets every write not yet fsynced when the power is cut.

It wraps the default VFS ("unix") of the very SQLite library the standard `sqlite3` module uses: it is
written with ctypes against that library's own symbols and registered there, so a stdlib connection
opened with `file:PATH?vfs=NAME` goes through it. (apsw, the usual way to write a VFS in Python,
ships wheels with a private SQLite that stdlib connections never see, and its sdist downloads one.)

Each file keeps its size at its last xSync and an undo log: before a write or truncate touches bytes
that were durable, their old content is saved; an xSync makes everything durable and clears the log.
The power fails just before a chosen write, truncate, sync or delete (`cut_before`): that one and
every later one fail, so the abandoned connections cannot change anything more. `image` then lays
out the disk as it would be found after the reboot: each file as of its last sync (undo log played
backwards, size restored). The -shm file is shared memory, not storage, and is left out, as SQLite
rebuilds it.

What it does not model: torn sector writes, and directory entries (a file created or deleted is
taken to stay so; SQLite fsyncs the directory after creating a WAL or journal).
"""

from __future__ import annotations

import _sqlite3
import ctypes
import itertools
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SQLITE_OK = 0
SQLITE_IOERR = 10

FILE_OPEN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
)
FILE_DELETE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
FILE_CLOSE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
FILE_IO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64)
FILE_TRUNCATE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int64)
FILE_SYNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
FILE_SIZE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64))


class Vfs(ctypes.Structure):
    """`sqlite3_vfs` (version 3). Methods this wrapper does not replace keep the base's pointers."""

    _fields_ = [
        ("iVersion", ctypes.c_int),
        ("szOsFile", ctypes.c_int),
        ("mxPathname", ctypes.c_int),
        ("pNext", ctypes.c_void_p),
        ("zName", ctypes.c_char_p),
        ("pAppData", ctypes.c_void_p),
        ("xOpen", ctypes.c_void_p),
        ("xDelete", ctypes.c_void_p),
        *((name, ctypes.c_void_p) for name in ("xAccess", "xFullPathname", "xDlOpen", "xDlError")),
        *((name, ctypes.c_void_p) for name in ("xDlSym", "xDlClose", "xRandomness", "xSleep")),
        *((name, ctypes.c_void_p) for name in ("xCurrentTime", "xGetLastError", "xCurrentTimeInt64")),
        *((name, ctypes.c_void_p) for name in ("xSetSystemCall", "xGetSystemCall", "xNextSystemCall")),
    ]


class IoMethods(ctypes.Structure):
    """`sqlite3_io_methods` (version 3): read, lock, shared memory and mmap go straight to the base."""

    _fields_ = [
        ("iVersion", ctypes.c_int),
        *((name, ctypes.c_void_p) for name in ("xClose", "xRead", "xWrite", "xTruncate", "xSync")),
        *((name, ctypes.c_void_p) for name in ("xFileSize", "xLock", "xUnlock", "xCheckReservedLock")),
        *((name, ctypes.c_void_p) for name in ("xFileControl", "xSectorSize", "xDeviceCharacteristics")),
        *((name, ctypes.c_void_p) for name in ("xShmMap", "xShmLock", "xShmBarrier", "xShmUnmap")),
        *((name, ctypes.c_void_p) for name in ("xFetch", "xUnfetch")),
    ]


def _library() -> ctypes.CDLL:
    """The SQLite that `sqlite3` runs on: symbols looked up through the `_sqlite3` extension module
    resolve in the library it is linked to (or in itself, when SQLite is built in)."""
    lib = ctypes.CDLL(_sqlite3.__file__)
    lib.sqlite3_vfs_find.restype = ctypes.POINTER(Vfs)
    lib.sqlite3_vfs_find.argtypes = [ctypes.c_char_p]
    lib.sqlite3_vfs_register.argtypes = [ctypes.POINTER(Vfs), ctypes.c_int]
    lib.sqlite3_vfs_unregister.argtypes = [ctypes.POINTER(Vfs)]
    return lib


@dataclass
class FileState:
    """One file since its last sync: the size it had then, and the bytes to put back, in order."""

    synced_size: int
    undo: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Handle:
    """An open file: its path (None for temporary files, which are not tracked) and base methods."""

    path: str | None
    base: IoMethods


_names = itertools.count(1)
_registered: list[PowerLossVfs] = []  # kept for the life of the process: SQLite holds raw pointers


class PowerLossVfs:
    """See the module docstring. Register it with `power_loss_vfs()`."""

    def __init__(self) -> None:
        self.lib = _library()
        base = self.lib.sqlite3_vfs_find(None)
        if not base:
            raise OSError("SQLite has no default VFS")
        self.base = base.contents
        self.name = f"powerloss-{next(_names)}"
        self.files: dict[str, FileState] = {}  # by path
        self.handles: dict[int, Handle] = {}  # by sqlite3_file address
        self.cut_off = False
        self._countdown = -1  # operations until the power fails; negative: not armed
        self.errors: list[str] = []  # exceptions in the methods, each answered SQLITE_IOERR
        self.lock = threading.Lock()
        self._methods: dict[int, IoMethods] = {}  # ours, by the address of the base's
        self._callbacks = (
            FILE_OPEN(self._guarded(self._open)),
            FILE_DELETE(self._guarded(self._delete)),
            FILE_CLOSE(self._guarded(self._close)),
            FILE_IO(self._guarded(self._write)),
            FILE_TRUNCATE(self._guarded(self._truncate)),
            FILE_SYNC(self._guarded(self._sync)),
        )
        self.vfs = Vfs.from_buffer_copy(self.base)
        self.vfs.pNext = None
        self.vfs.zName = self.name.encode()
        self.vfs.xOpen = self._address(0)
        self.vfs.xDelete = self._address(1)

    def _guarded(self, method: Callable[..., int]) -> Callable[..., int]:
        """An exception must not escape into C (ctypes would answer 0, SQLITE_OK): it becomes an
        I/O error, and is kept for the test to report."""

        def call(*args: Any) -> int:
            try:
                return method(*args)
            except Exception as exc:
                self.errors.append(f"{method.__name__}: {exc!r}")
                return SQLITE_IOERR

        return call

    def _address(self, index: int) -> int | None:
        address: int | None = ctypes.cast(self._callbacks[index], ctypes.c_void_p).value
        return address

    # -- the power switch ------------------------------------------------------------------------

    def cut_before(self, operations: int) -> None:
        """Arm the power failure: it strikes just before the `operations`-th write, truncate, sync
        or delete from now on, wherever that falls (in a commit, a checkpoint, between them)."""
        with self.lock:
            self._countdown = operations

    def _strikes(self) -> bool:
        """Count one operation (under the lock): is the power off for it?"""
        self._countdown -= 1
        if self._countdown == 0:
            self.cut_off = True
        return self.cut_off

    def power_on(self) -> None:
        """Writes reach the files again (open the disk `image` laid out, not the old files)."""
        with self.lock:
            self.cut_off = False

    def image(self, source: Path, target: Path) -> int:
        """Copy the files of `source` to `target` as the disk would hold them after the reboot.
        Call once the power is off. Returns how many bytes written since the last sync were dropped."""
        assert self.cut_off, "the power is still on"
        target.mkdir(parents=True, exist_ok=True)
        dropped = 0
        for path in sorted(source.iterdir()):
            if not path.is_file() or path.name.endswith("-shm"):
                continue
            state = self.files.get(os.path.realpath(path))  # SQLite names files by their real path
            if state is None:
                raise AssertionError(f"{path} was not written through the VFS {self.name}")
            copy = target / path.name
            shutil.copyfile(path, copy)
            dropped += max(0, copy.stat().st_size - state.synced_size)
            with open(copy, "r+b") as out:
                for offset, data in reversed(state.undo):
                    out.seek(offset)
                    out.write(data)
                    dropped += len(data)
                out.truncate(state.synced_size)
        return dropped

    # -- the VFS methods ---------------------------------------------------------------------------

    def _open(self, vfs: int, name: int | None, file: int, flags: int, out_flags: int | None) -> int:
        base_open = FILE_OPEN(self.base.xOpen)
        vfs_pointer = ctypes.addressof(self.base)
        rc: int = base_open(vfs_pointer, name, file, flags, out_flags)
        methods = ctypes.c_void_p.from_address(file)  # the file's first field: its method table
        if methods.value is None:
            return rc
        path = ctypes.string_at(name).decode() if name else None
        with self.lock:
            base = IoMethods.from_address(methods.value)
            if path is not None and path not in self.files:
                self.files[path] = FileState(self._size(file, base))
            self.handles[file] = Handle(path, base)
            methods.value = ctypes.addressof(self._ours(base))
        return rc

    def _ours(self, base: IoMethods) -> IoMethods:
        """Our copy of a base method table, with close, write, truncate and sync wrapped."""
        key = ctypes.addressof(base)
        if key not in self._methods:
            ours = IoMethods.from_buffer_copy(base)
            ours.xClose, ours.xWrite = self._address(2), self._address(3)
            ours.xTruncate, ours.xSync = self._address(4), self._address(5)
            self._methods[key] = ours
        return self._methods[key]

    def _delete(self, vfs: int, name: int, sync_dir: int) -> int:
        path = ctypes.string_at(name).decode()
        with self.lock:
            if self._strikes():
                return SQLITE_IOERR
            rc: int = FILE_DELETE(self.base.xDelete)(ctypes.addressof(self.base), name, sync_dir)
            self.files.pop(path, None)
        return rc

    def _close(self, file: int) -> int:
        with self.lock:
            handle = self.handles.pop(file)
        rc: int = FILE_CLOSE(handle.base.xClose)(file)
        return rc

    def _write(self, file: int, data: int, amount: int, offset: int) -> int:
        with self.lock:
            if self._strikes():
                return SQLITE_IOERR
            handle = self.handles[file]
            if handle.path is not None:
                state = self.files[handle.path]
                self._save(file, handle.base, state, offset, offset + amount)
            rc: int = FILE_IO(handle.base.xWrite)(file, data, amount, offset)
        return rc

    def _truncate(self, file: int, size: int) -> int:
        with self.lock:
            if self._strikes():
                return SQLITE_IOERR
            handle = self.handles[file]
            if handle.path is not None:
                state = self.files[handle.path]
                self._save(file, handle.base, state, size, self._size(file, handle.base))
            rc: int = FILE_TRUNCATE(handle.base.xTruncate)(file, size)
        return rc

    def _sync(self, file: int, flags: int) -> int:
        with self.lock:
            if self._strikes():
                return SQLITE_IOERR
            handle = self.handles[file]
            rc: int = FILE_SYNC(handle.base.xSync)(file, flags)
            if rc == SQLITE_OK and handle.path is not None:
                self.files[handle.path] = FileState(self._size(file, handle.base))
        return rc

    # -- helpers -----------------------------------------------------------------------------------

    def _save(self, file: int, base: IoMethods, state: FileState, start: int, end: int) -> None:
        """Keep the durable bytes in [start, end) before they change (bytes past the synced size
        need no keeping: restoring the size drops them)."""
        end = min(end, state.synced_size, self._size(file, base))
        if start >= end:
            return
        buffer = ctypes.create_string_buffer(end - start)
        rc = FILE_IO(base.xRead)(file, buffer, end - start, start)
        if rc != SQLITE_OK:
            raise OSError(f"cannot read back {end - start} bytes at {start}: SQLite error {rc}")
        state.undo.append((start, buffer.raw))

    @staticmethod
    def _size(file: int, base: IoMethods) -> int:
        size = ctypes.c_int64()
        rc = FILE_SIZE(base.xFileSize)(file, ctypes.byref(size))
        if rc != SQLITE_OK:
            raise OSError(f"cannot read the file size: SQLite error {rc}")
        return size.value


@contextmanager
def power_loss_vfs() -> Iterator[PowerLossVfs]:
    """Register a fresh power-loss VFS for the `with` block; connections name it in their URI."""
    vfs = PowerLossVfs()
    _registered.append(vfs)
    if vfs.lib.sqlite3_vfs_register(ctypes.byref(vfs.vfs), 0) != SQLITE_OK:
        raise OSError(f"cannot register the VFS {vfs.name}")
    try:
        yield vfs
    finally:
        vfs.lib.sqlite3_vfs_unregister(ctypes.byref(vfs.vfs))
