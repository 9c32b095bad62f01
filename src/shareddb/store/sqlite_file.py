"""Which file a SQLite store lives in: what tells a copy of the store (a data directory restored
from a backup, or moved) from the file it was written in (`SQLiteBackend._own_file`)."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long), linux/fs.h


def file_identity(path: Path) -> str:
    """The file at `path` as `inode.generation`: a file made later, a copy put back in its place
    say, may get the same inode number once the file is deleted, but not the same generation
    (ext4, XFS, Btrfs, tmpfs). Where the file system keeps no generation, the inode alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        inode = os.fstat(fd).st_ino
        try:
            generation = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8)))[0]
        except OSError:
            return str(inode)
        return f"{inode}.{generation & 0xFFFFFFFF}"
    finally:
        os.close(fd)


def same_file(noted: str, found: str) -> bool:
    """Whether the file noted is the one found (a store that noted only an inode, before
    generations were noted, is compared by inode)."""
    if "." not in noted:
        return noted == found.partition(".")[0]
    return noted == found
