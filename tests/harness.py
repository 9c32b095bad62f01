"""Real node processes for tests: start `python -m shareddb serve`, find its port, fault it.

Nothing here picks ports by hand or sleeps a fixed time: a node binds port 0 and names its port in
its log line; every wait polls with a deadline and, when it expires, fails with every node's log.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import orjson

T = TypeVar("T")

# libfaketime, for nodes whose wall clock is off (Debian's package `faketime`).
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
FAKETIME = next((path for path in FAKETIME_LIBS if os.path.exists(path)), None)


def skewed_clock_env(seconds: int) -> dict[str, str]:
    """The environment of a node whose wall clock is `seconds` off; its monotonic clock is not."""
    assert FAKETIME is not None
    return {"LD_PRELOAD": FAKETIME, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def frozen_clock_env(when: str = "2027-01-15 10:00:00") -> dict[str, str]:
    """The environment of a node whose wall clock stands still at `when` (UTC); its monotonic
    clock runs."""
    assert FAKETIME is not None
    return {
        "LD_PRELOAD": FAKETIME,
        "FAKETIME": when,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "TZ": "UTC",
    }


LISTENING = re.compile(r"listening on http://([^\s:]+):(\d+)")
START_TIMEOUT = 20.0


class NodeProcess:
    """One `shareddb serve` process with its own data dir and log file."""

    def __init__(
        self,
        data: Path,
        node_id: str | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.data = data
        self.node_id = node_id
        self.args = list(args)
        self.env = env
        self.requested_port = port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data.parent / f"{data.name}.log"
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "shareddb", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port or self.requested_port), "--data", str(self.data)]
        if self.node_id is not None:
            cmd += ["--node-id", self.node_id]
        return cmd + self.args

    def start(self, timeout: float = START_TIMEOUT) -> NodeProcess:
        """Start the node (on its previous port when restarting) and wait until it listens."""
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        match = wait_for(
            lambda: LISTENING.search(self.new_log()) or self._exited(),
            timeout,
            f"node {self.node_id} to listen",
            [self],
        )
        if not isinstance(match, re.Match):
            raise AssertionError(f"node {self.node_id} exited early:\n{self.logs()}")
        self.port = int(match.group(2))
        return self

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def new_log(self) -> str:
        """The log written since the last start."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", "replace")

    def logs(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", "replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """`kill -9`: no shutdown code runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> NodeProcess:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    nodes: Iterable[NodeProcess] = (),
    interval: float = 0.02,
) -> T:
    """Poll `predicate` until it returns something truthy; on timeout fail with every node's log."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            dump = "\n".join(f"--- log of {n.node_id} ---\n{n.logs()}" for n in nodes)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{dump}")
        time.sleep(interval)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `check` while the event loop runs everything else, until it holds or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the `shareddb` command line as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "shareddb", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def get_json(url: str, timeout: float = 10.0) -> object:
    """GET a JSON document with the standard library (no event loop needed in sync tests)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return orjson.loads(response.read())
