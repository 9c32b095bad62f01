"""Real node processes: start `python -m shareddb serve`, find its port, fault it, stop it.

Nothing here picks a node's port by hand or sleeps a fixed time: a node binds port 0 and names its
port in its log line; every wait polls with a deadline and, when it expires, fails with the nodes'
logs. Tests, the fault runs (tests/chaos, tests/crash, tests/soak) and the benchmarks all start
nodes through `NodeProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson

from tests.harness.procfs import cpu_seconds, status_bytes

T = TypeVar("T")

LISTENING = re.compile(r"listening on http://([^\s:/]+):(\d+)")
PORT_TAKEN = "cannot listen on"  # the node's one-line error when its port is in use
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
RESTART_TIMEOUT = 20.0  # a restart may find its port briefly held by an outgoing connection


def serve_command(data: Path, node_id: str | None, port: int, args: Sequence[str] = ()) -> list[str]:
    """The command line of one node on loopback."""
    cmd = [sys.executable, "-m", "shareddb", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data", str(data)]
    if node_id is not None:
        cmd += ["--node-id", node_id]
    return cmd + list(args)


def node_env(extra: dict[str, str] | None) -> dict[str, str]:
    """Our environment without SHAREDDB_* settings, so only the flags and `extra` configure it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDDB_")}
    return {**clean, **(extra or {})}


class NodeProcess:
    """One `shareddb serve` process with its own data dir and log file. `start()` again restarts it
    on the same port; `session=True` puts it in a session of its own, so a Ctrl-C reaches only the
    caller (the bench), which then stops its nodes in order."""

    def __init__(
        self,
        data: Path,
        node_id: str | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        port: int = 0,
        session: bool = False,
    ) -> None:
        self.data = data
        self.node_id = node_id
        self.args = list(args)
        self.env = env
        self.requested_port = port
        self.session = session
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data.parent / f"{data.name}.log"
        self.commands: list[str] = []  # every command line it was started with
        self.spawned_at = 0.0  # time.monotonic() when the process was last spawned
        self.listening_at = 0.0  # ... and when its listening line was seen
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"node {self.node_id} was never started"
        return self.proc.pid

    def command(self) -> list[str]:
        return serve_command(self.data, self.node_id, self.port or self.requested_port, self.args)

    def start(self, timeout: float = START_TIMEOUT) -> NodeProcess:
        """Start the node (on its previous port when restarting) and wait until it listens; a
        restart whose port is still held by someone's outgoing connection tries again."""
        deadline = time.monotonic() + RESTART_TIMEOUT
        while True:
            try:
                return self._start_once(timeout)
            except AssertionError:
                restart = self.port != 0
                if not restart or PORT_TAKEN not in self.new_log() or time.monotonic() > deadline:
                    raise

    def _start_once(self, timeout: float) -> NodeProcess:
        cmd = self.command()
        self.commands.append(" ".join(cmd))
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=node_env(self.env),
                start_new_session=self.session,
            )
        match = wait_for(
            lambda: LISTENING.search(self.new_log()) or self._exited(),
            timeout,
            f"node {self.node_id} to listen",
            [self],
        )
        if not isinstance(match, re.Match):
            raise AssertionError(f"node {self.node_id} exited early:\n{self.logs()}")
        self.listening_at = time.monotonic()
        self.port = int(match.group(2))
        return self

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def new_log(self) -> str:
        """The log written since the last start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", "replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """`kill -9`: no shutdown code runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (after SIGCONT, should it be paused) and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
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
        return cpu_seconds(self.pid) if self.running() else None


def stop_all(nodes: Sequence[NodeProcess], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every running node at once (each takes a second or two), then wait; SIGKILL what
    is still there after `timeout`."""
    running = [n for n in nodes if n.running()]
    for node in running:
        node.signal(signal.SIGCONT)
        node.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in running:
        assert node.proc is not None
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.cleanup()


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    nodes: Iterable[NodeProcess] = (),
    interval: float = 0.02,
    *,
    stop_on_exit: bool = False,
    log_lines: int | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy; on timeout (or, with `stop_on_exit`, as
    soon as one of `nodes` has exited) fail with every node's log, or its last `log_lines`."""
    nodes = list(nodes)
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        dead = [n for n in nodes if stop_on_exit and n.proc is not None and not n.running()]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(str(n.node_id) for n in dead)} exited" if dead else "timed out"
            dump = "\n".join(
                f"--- log of {n.node_id} ---\n"
                + ("\n".join(n.logs().splitlines()[-log_lines:]) if log_lines else n.logs())
                for n in nodes
            )
            raise AssertionError(f"{why} after {timeout}s waiting for {what}\n{dump}")
        time.sleep(interval)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `check` while the event loop runs everything else, until it holds or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that are free right now, for servers that must know each other's URLs before they
    start (peers, etcd members) and so cannot bind port 0 and report it. All sockets are held open
    together so the ports differ; another process could still take one before the server binds it,
    which then fails with a clear 'cannot listen' in its log."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
