"""Real node processes: start `python -m shareddb serve`, find its port, fault it, stop it.

Nothing here picks a node's port by hand or sleeps a fixed time: a node binds port 0 and names its
port in its log line; every wait polls with a deadline and, when it expires, fails with the nodes'
logs. Tests, the fault runs (tests/chaos, tests/crash, tests/soak) and the benchmarks all start
nodes through `NodeProcess`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson

from tests.harness.process import LoggedProcess

T = TypeVar("T")

PORT_TAKEN = "cannot listen on"  # the node's one-line error when its port is in use
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
RESTART_TIMEOUT = 20.0  # a restart may find its port briefly held by an outgoing connection


def serve_command(data: Path, node_id: str | None, port: int, args: Sequence[str] = ()) -> list[str]:
    """The command line of one node on loopback, on one process unless `args` name --workers: the
    default depends on the machine's cores, and a test's counts and limits should not
    (tests/cluster/test_workers.py runs several)."""
    cmd = [sys.executable, "-m", "shareddb", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data", str(data)]
    if node_id is not None:
        cmd += ["--node-id", node_id]
    if "--workers" not in args:
        cmd += ["--workers", "1"]
    return cmd + list(args)


def node_env(extra: dict[str, str] | None) -> dict[str, str]:
    """Our environment without SHAREDDB_* settings, so only the flags and `extra` configure it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDDB_")}
    return {**clean, **(extra or {})}


class NodeProcess(LoggedProcess):
    """One `shareddb serve` process with its own data dir and log file. `start()` again restarts it
    on the same port; `session=True` runs it in a session of its own (see LoggedProcess);
    `open_files` sets its open-files limit."""

    def __init__(
        self,
        data: Path,
        node_id: str | None = None,
        *args: str,
        env: dict[str, str] | None = None,
        port: int = 0,
        session: bool = False,
        open_files: int | None = None,
    ) -> None:
        super().__init__(data.parent / f"{data.name}.log", session=session)
        self.open_files = open_files
        self.data = data
        self.node_id = node_id
        self.args = list(args)
        self.env = env
        self.requested_port = port
        self.port = 0
        self.listening_at = 0.0  # time.monotonic() when its listening line was last seen

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return serve_command(self.data, self.node_id, self.port or self.requested_port, self.args)

    def start(self, timeout: float = START_TIMEOUT) -> NodeProcess:
        """Start the node (on its previous port when restarting) and wait until it listens; a
        restart whose port is still held by someone's outgoing connection tries again."""
        deadline = time.monotonic() + RESTART_TIMEOUT
        while True:
            self.spawn(self.command(), node_env(self.env), self.open_files)
            port = self.listening_port(timeout)
            if port is not None:
                self.listening_at = time.monotonic()
                self.port = port
                return self
            restart = self.port != 0
            if self.running() or not restart or PORT_TAKEN not in self.new_log():
                why = f"did not listen within {timeout}s" if self.running() else "exited early"
                self.cleanup()
                raise AssertionError(f"node {self.node_id} {why}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.node_id}: port {self.port} stayed taken")

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
        if self.running():
            self.stop()
        return self.start()

    def cleanup(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


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


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P with P and P+1 free right now, for `cluster up`'s consecutive ports (another
    process may still take them: retry)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((host, 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError(f"no two consecutive free ports on {host}")


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
