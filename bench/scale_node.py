"""`shareddb serve`, with a thread that writes how much memory SQLite holds to a file.

The scale bench (bench/scale.py) splits a node's resident memory into SQLite's (its page caches,
bounded by `PRAGMA cache_size` per connection) and the rest (Python's). SQLite counts what it has
allocated (`sqlite3_memory_used`); only code inside the process can ask it, so the bench starts
the node through this module, which asks every 0.2 s and writes `USED HIGHWATER` (bytes) to the
file named by its first argument: `python bench/scale_node.py FILE serve ...`. The node itself runs
unchanged.
"""

from __future__ import annotations

import _sqlite3
import ctypes
import os
import sys
import threading
import time
from pathlib import Path

INTERVAL = 0.2


def sqlite_memory() -> tuple[int, int]:
    """Bytes SQLite has allocated now, and at most so far (the library the sqlite3 module uses)."""
    lib = ctypes.CDLL(_sqlite3.__file__)  # its symbols include those of libsqlite3 it links
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return int(lib.sqlite3_memory_used()), int(lib.sqlite3_memory_highwater(0))


def _report(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        used, high = sqlite_memory()
        tmp.write_text(f"{used} {high}\n")
        os.replace(tmp, path)
        time.sleep(INTERVAL)


def main() -> None:
    path = Path(sys.argv.pop(1))
    threading.Thread(target=_report, args=(path,), name="sqlite-memory", daemon=True).start()
    from shareddb.cli import main as shareddb

    sys.argv[0] = "shareddb"
    shareddb()


if __name__ == "__main__":
    main()
