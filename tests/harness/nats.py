"""Real `nats-server -js` processes for tests and benchmarks, each on a free loopback port (never the
machine's own NATS on 4222), with its JetStream store in a directory of the test's.

A test that needs nats-server skips when it is not installed, except under CI (CI=true), where that
is a failure: CI installs it (Debian's package `nats-server`, at /usr/sbin/nats-server).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness.nodes import free_ports
from tests.harness.process import LoggedProcess, find_binary, required_binary

DEFAULT_BINARY = "/usr/sbin/nats-server"
START_TIMEOUT = 20.0
FORBIDDEN_PORT = 4222  # the machine's own NATS: tests never touch it
READY = "Server is ready"


def find_nats_server() -> str | None:
    """The installed nats-server, or None."""
    return find_binary("nats-server", DEFAULT_BINARY)


def nats_server_binary() -> str:
    """The nats-server to run; skips the test when there is none (fails it under CI)."""
    return required_binary("nats-server", DEFAULT_BINARY, "nats-server")


class NatsServer(LoggedProcess):
    """One nats-server with JetStream, its store in `directory`. `start()` again restarts it on
    the same port and store (what it had written to disk is still there)."""

    def __init__(
        self,
        directory: Path,
        *,
        binary: str | None = None,
        session: bool = False,
        max_payload: int | None = None,
    ) -> None:
        super().__init__(directory.parent / f"{directory.name}.log", session=session)
        self.directory = directory
        self.binary = binary
        self.max_payload = max_payload  # bytes a message may hold (the server's default: 1 MB)
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        config: list[str] = []
        if self.max_payload is not None:
            path = self.directory.parent / f"{self.directory.name}.conf"
            path.write_text(f"max_payload: {self.max_payload}\n")
            config = ["-c", str(path)]
        return [
            self.binary or nats_server_binary(),
            *config,
            "-js",
            "-sd",
            str(self.directory),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]

    def start(self, timeout: float = START_TIMEOUT) -> NatsServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        fresh = self.port == 0
        for _ in range(5):
            if fresh:
                self.port = next(p for p in free_ports(3) if p != FORBIDDEN_PORT)
            assert self.port != FORBIDDEN_PORT
            self.spawn(self.command())
            if self._wait_ready(timeout):
                return self
            if not fresh:
                break
        raise AssertionError(f"nats-server did not start on port {self.port}:\n{self.logs()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if READY in self.new_log() and self.answers():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def answers(self) -> bool:
        """True when the server greets a new connection with its INFO line."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                return conn.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: what the server had not written to its files is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def running_nats(directory: Path, *, max_payload: int | None = None) -> Iterator[NatsServer]:
    """A started NatsServer, killed when the block ends."""
    server = NatsServer(directory, max_payload=max_payload)
    try:
        yield server.start()
    finally:
        server.kill()
