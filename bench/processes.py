"""Server processes the bench starts: each in its own process group, logging to a file, and all of
them stopped together however the bench ends (Fleet.close in a finally).

Nothing here knows what a server is; targets.py and etcd.py say what to start and when it is ready.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.harness import LoggedProcess

T = TypeVar("T")

# Log lines worth a look after a run (Python logging's levels); etcd.py passes its own.
COMPLAINT = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s*")
START_TIMEOUT = 30.0
# Longer than a node's own drain of in-flight requests (server.py's SHUTDOWN_TIMEOUT, 15 s), so a
# SIGKILL here means a server that hung, not one that was finishing its work.
STOP_TIMEOUT = 20.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 30
COMPLAINTS_KEPT = 5


class StartError(Exception):
    """A server did not come up; the message carries the end of its log."""


class ServerProcess(LoggedProcess):
    """One server process of the harness, in a new session, so the whole group can be signalled
    at once; with what the bench reports of it."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        complaint: re.Pattern[str] = COMPLAINT,
        clean_exits: tuple[int, ...] = (0,),
        stop_last: bool = False,
    ) -> None:
        super().__init__(log_path, session=True)
        self.name = name
        self.cmd = list(cmd)
        self.complaint = complaint
        self.clean_exits = clean_exits  # exit statuses after SIGTERM that mean a clean shutdown
        # A backend other servers use (Redis): stopped once they have, so they do not lose it first.
        self.stop_last = stop_last
        self.stop_offset: int | None = None  # log size when SIGTERM was sent

    def start(self) -> ServerProcess:
        self.spawn(self.cmd)
        return self

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return super().log_tail(lines)

    def complaints(self, *, shutdown: bool = False) -> list[str]:
        """Warning and error lines (and tracebacks) logged while serving, or with `shutdown`
        after SIGTERM was sent; timestamps stripped."""
        text = self.logs()
        cut = len(text) if self.stop_offset is None else self.stop_offset
        part = text[cut:] if shutdown else text[:cut]
        return [TIMESTAMP.sub("", x) for x in part.splitlines() if self.complaint.search(x)]

    def findings(self, *, killed: bool) -> dict[str, Any]:
        """After the server stopped: how it exited and what it complained about, for the report."""
        serving = self.complaints()
        stopping = self.complaints(shutdown=True)
        exit_code = self.proc.returncode if self.proc is not None else None
        return {
            "name": self.name,
            "exit": exit_code,
            "clean_exit": exit_code in self.clean_exits,
            "killed": killed,
            "log_complaints": len(serving),
            "first_complaints": list(dict.fromkeys(serving))[:COMPLAINTS_KEPT],
            "shutdown_complaints": len(stopping),
            "first_shutdown_complaints": list(dict.fromkeys(stopping))[:COMPLAINTS_KEPT],
        }

    def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """The port named by the `listening on http://HOST:PORT` line of the log."""
        port = self.listening_port(timeout)
        if port is None:
            why = "exited" if not self.running() else f"logged no listening line in {timeout:g}s"
            raise StartError(f"{self.name} {why}:\n{self.log_tail()}")
        return port

    def wait_until(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll `predicate` until truthy; fail with the log if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if not self.running():
                raise StartError(f"{self.name} exited while waiting for {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"{self.name}: no {what} after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


class Fleet:
    """Every server started for one bench run; close() stops them all, even after an error."""

    def __init__(self) -> None:
        self.servers: list[ServerProcess] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        complaint: re.Pattern[str] = COMPLAINT,
        clean_exits: tuple[int, ...] = (0,),
        stop_last: bool = False,
    ) -> ServerProcess:
        server = ServerProcess(
            name, cmd, log_path, complaint=complaint, clean_exits=clean_exits, stop_last=stop_last
        )
        # Registered before it starts, so a failure half-way through still gets it stopped.
        self.servers.append(server)
        return server.start()

    def close(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """SIGTERM every group, wait, SIGKILL what is left; returns the names that needed SIGKILL.

        Servers started with `stop_last` get their SIGTERM only once all the others have stopped.
        """
        killed = []
        for last in (False, True):
            killed += self._stop([s for s in self.servers if s.stop_last == last], timeout)
        return killed

    @staticmethod
    def _stop(servers: Sequence[ServerProcess], timeout: float) -> list[str]:
        for server in servers:
            if server.running():
                server.stop_offset = len(server.logs())
                server.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = []
        for server in servers:
            if server.proc is None:
                continue
            try:
                server.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(server.name)
                server.signal_group(signal.SIGKILL)
                server.proc.wait()
            # Anything the server left behind in its group goes too.
            server.signal_group(signal.SIGKILL)
        return killed


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """Status and body of a GET, or None when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None
