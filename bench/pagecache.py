"""How much of a file the kernel holds in its page cache, and reading a file into it.

A node reads its SQLite file through a memory map: a point read of a page in the page cache costs
microseconds, one of a page that is not waits for the disk, on the event loop. So a GET figure
means little without how much of the file was in memory while it was measured. `resident` asks
the kernel (mincore(2) on a map of the file; no pages are read); `warm` reads the file once.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

PROT_READ = 0x1
MAP_SHARED = 0x01
MAP_FAILED = ctypes.c_void_p(-1).value
READ_CHUNK = 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident(path: Path) -> float:
    """The fraction (0 to 1) of `path`'s pages in the page cache now."""
    size = path.stat().st_size
    if size == 0:
        return 1.0
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
        if addr in (None, MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(b & 1 for b in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    """Read all of `path` once, so that its pages are in the page cache (while memory allows)."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(READ_CHUNK):
            pass
