"""What Linux's /proc says about a running process: resident memory and CPU time."""

from __future__ import annotations

import os
from pathlib import Path


def status_bytes(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, RssAnon) in bytes; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name; None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float | None:
    """User + system CPU time so far; None once the process is gone. With `children`, that of
    its running child processes too (a node's workers)."""
    fields = _stat(pid)
    if fields is None:
        return None
    spent = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if children:
        spent += sum(cpu_seconds(child) or 0.0 for child in children_of(pid))
    return spent


def children_of(pid: int) -> list[int]:
    """The running processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
