"""A child process whose output goes to a log file: the one place the harness spawns anything."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.harness.procfs import cpu_seconds, status_bytes

LISTENING = re.compile(r"listening on (https?)://([^\s:/]+):(\d+)")
POLL = 0.02


class LoggedProcess:
    """One process with stdout and stderr appended to `log_path`. `session=True` puts it in a
    session of its own, so a Ctrl-C reaches only its parent (the bench), which stops it in order."""

    def __init__(self, log_path: Path, *, session: bool = False) -> None:
        self.log_path = log_path
        self.session = session
        self.proc: subprocess.Popen[bytes] | None = None
        self.commands: list[str] = []  # every command line it was started with
        self.spawned_at = 0.0  # time.monotonic() when the process was last spawned
        self._log_offset = 0
        self.scheme = "http"  # of the last `listening on` line: https for a node serving TLS

    def spawn(
        self, cmd: Sequence[str], env: dict[str, str] | None = None, open_files: int | None = None
    ) -> None:
        """`open_files`: the process's open-files limit (RLIMIT_NOFILE, soft and hard)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        def limit_open_files() -> None:
            assert open_files is not None
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.commands.append(" ".join(cmd))
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                list(cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=self.session,
                preexec_fn=None if open_files is None else limit_open_files,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.log_path.name}: never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def logs(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def new_log(self) -> str:
        """The log written since the last start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def listening_port(self, timeout: float) -> int | None:
        """The port of the `listening on http(s)://HOST:PORT` line logged since the last start
        (its scheme goes to `scheme`); None when the process exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            match = LISTENING.search(self.new_log())
            if match is not None:
                self.scheme = match.group(1)
                return int(match.group(3))
            if self.exited() or time.monotonic() > deadline:
                return None
            time.sleep(POLL)

    def signal(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def rss_bytes(self) -> int | None:
        """Resident memory of the current process (VmRSS); None when it is not running."""
        return status_bytes(self.pid, "VmRSS") if self.running() else None

    def hwm_bytes(self) -> int | None:
        """Peak resident memory of the current process so far (VmHWM)."""
        return status_bytes(self.pid, "VmHWM") if self.running() else None

    def anon_bytes(self) -> int | None:
        """Resident memory that is the process's own (heap), without mapped file pages: SQLite's
        mmap of the store counts in VmRSS/VmHWM but is page cache, shared and reclaimable."""
        return status_bytes(self.pid, "RssAnon") if self.running() else None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far, its workers' included; None when it is not running."""
        return cpu_seconds(self.pid, children=True) if self.running() else None


def find_binary(name: str, default: str) -> str | None:
    """The installed program `name` (on PATH, else at `default`), or None."""
    return shutil.which(name) or (default if os.path.exists(default) else None)


def required_binary(name: str, default: str, package: str) -> str:
    """The program a test runs: the test is skipped when it is missing, and fails under CI, which
    must install `package`."""
    path = find_binary(name, default)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; CI must install it (apt-get install {package})")
        pytest.skip(f"{name} is not installed")
    return path
