"""Small real file systems for full-disk and read-only tests, mounted by the test and unmounted after.

`SmallDisk` is a size-limited tmpfs: `fill()` takes its last free byte with a filler file, `free()`
deletes it. `FailingDisk` is an ext4 image on a loop device mounted `errors=remount-ro`; `fail()` makes
the kernel turn it read-only under the open files, as it does on a real disk error (a plain
`mount -o remount,ro` is refused while a node holds files open for writing). Mounting needs root: a
test skips when it is not allowed, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHUNK = 64 * 1024


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        _cannot(f"{tool} is not installed")
    assert path is not None
    return path


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs as root with mount and loop devices allowed")
    pytest.skip(reason)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)


class SmallDisk:
    """A tmpfs of `size` mounted at `path` (created when missing)."""

    def __init__(self, path: Path, size: str = "4m") -> None:
        self.path = path
        self.size = size
        self.filler = path.parent / f"{path.name}.filler-unused"  # set by fill()
        self.mounted = False

    def mount(self) -> SmallDisk:
        if os.geteuid() != 0:
            _cannot("mounting a small tmpfs needs root")
        self.path.mkdir(parents=True, exist_ok=True)
        done = _run(_need("mount"), "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path))
        if done.returncode != 0:
            _cannot(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            _run("umount", "-l", str(self.path))
            self.mounted = False

    def fill(self, name: str = "filler") -> None:
        """Write a filler file until the file system has no byte left."""
        self.filler = self.path / name
        with open(self.filler, "ab", buffering=0) as handle:
            block = b"\xa5" * CHUNK
            size = CHUNK
            while size:  # full chunks, then ever smaller ones down to the last byte
                try:
                    handle.write(block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size //= 2
        assert shutil.disk_usage(self.path).free == 0

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        """`ro` or `rw`; only while no file is open for writing on it."""
        done = _run("mount", "-o", f"remount,{mode}", str(self.path))
        assert done.returncode == 0, done.stderr


class FailingDisk:
    """An ext4 image of `size_mb` on a loop device, mounted at `path` with errors=remount-ro."""

    def __init__(self, path: Path, size_mb: int = 16) -> None:
        self.path = path
        self.image = path.parent / f"{path.name}.ext4"
        self.size_mb = size_mb
        self.device: str | None = None

    def mount(self) -> FailingDisk:
        if os.geteuid() != 0:
            _cannot("mounting a loop device needs root")
        with open(self.image, "wb") as handle:
            handle.truncate(self.size_mb * 1024 * 1024)
        made = _run(_need("mkfs.ext4"), "-q", "-F", str(self.image))
        assert made.returncode == 0, made.stderr
        self.path.mkdir(parents=True, exist_ok=True)
        self._mount_rw()
        return self

    def _mount_rw(self) -> None:
        done = _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path))
        if done.returncode != 0:
            _cannot(f"cannot mount an ext4 image on a loop device here: {done.stderr.strip()}")
        source = _run("findmnt", "-n", "-o", "SOURCE", str(self.path)).stdout.strip()
        self.device = source

    def fail(self) -> None:
        """A file-system error: the kernel remounts it read-only, open files included."""
        assert self.device is not None
        name = os.path.basename(self.device)
        trigger = Path("/sys/fs/ext4") / name / "trigger_fs_error"
        if not trigger.exists():
            _cannot(f"this kernel has no {trigger}")
        trigger.write_text("shareddb test: simulated disk error\n")

    def writable(self) -> bool:
        probe = self.path / ".probe"
        try:
            probe.write_bytes(b"x")
        except OSError:
            return False
        probe.unlink()
        return True

    def repair(self) -> None:
        """Unmount, check the file system, and mount it read-write again (what an operator does)."""
        self.unmount()
        _run("e2fsck", "-fy", str(self.image))  # exit 1: errors corrected
        self._mount_rw()

    def unmount(self) -> None:
        if self.device is not None:
            _run("umount", str(self.path))
            with contextlib.suppress(OSError):
                _run("losetup", "-d", self.device)
            self.device = None
