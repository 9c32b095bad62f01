"""Real `redis-server` processes for tests, each on a free loopback port (never the Redis on 6379).

`RedisServer(dir).start()` runs one without persistence (`--save "" --appendonly no`);
`RedisServer(dir, aof=True)` keeps an append-only file fsynced on every write (`--appendfsync
always`), for durability tests. Every wait polls with a deadline. A test that needs redis-server
skips when it is not installed, except under CI (CI=true), where that is a failure: CI installs it.

`store_url(location)` serves the store contract suite: one server for the whole session, started on
first use, and one database of it per store location (reopening a location reopens its database).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.harness.nodes import free_ports
from tests.harness.process import LoggedProcess, find_binary, required_binary

DEFAULT_BINARY = "/usr/bin/redis-server"
START_TIMEOUT = 20.0
FORBIDDEN_PORT = 6379  # the machine's own Redis: tests never touch it


def find_redis_server() -> str | None:
    """The installed redis-server, or None."""
    return find_binary("redis-server", DEFAULT_BINARY)


def redis_server_binary() -> str:
    """The redis-server to run; skips the test when there is none (fails it under CI)."""
    return required_binary("redis-server", DEFAULT_BINARY, "redis-server")


def free_port() -> int:
    """A free loopback port that is not the machine's own Redis port."""
    while True:
        (port,) = free_ports(1)
        if port != FORBIDDEN_PORT:
            return port


def send(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command over a fresh connection; the raw first line of the reply (b"" when none)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n", 1)[0]


def ping(port: int) -> bool:
    """True when the server on `port` answers PING (not while it is still starting or loading)."""
    try:
        return send(port, "PING", timeout=1.0) == b"+PONG"
    except OSError:
        return False


class RedisServer(LoggedProcess):
    """One redis-server with its own directory (its AOF and, unless told otherwise, its log)."""

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        databases: int = 16,
        binary: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(log_path or directory / "redis.log")
        self.directory = directory
        self.aof = aof
        self.databases = databases
        self.binary = binary  # None: the installed one, or skip the test
        self.port = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self) -> list[str]:
        persistence = ["--appendonly", "no"]
        if self.aof:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        return [
            self.binary or redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            *persistence,
            "--databases",
            str(self.databases),
            "--maxmemory-policy",
            "noeviction",  # a store must never lose keys to make room
            "--logfile",
            "",  # stdout, which goes to log_path
            "--daemonize",
            "no",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start (again on the same port and directory, when restarting) and wait for PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fresh = self.port == 0
        for _ in range(5):
            if fresh:
                self.port = free_port()
            assert self.port != FORBIDDEN_PORT
            self.spawn(self.command())
            if self._wait_ready(timeout):
                return self
            if not fresh:  # a restart must get its old port back
                break
        raise AssertionError(f"redis-server did not start on port {self.port}:\n{self.logs()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            if self.ping():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def ping(self) -> bool:
        """True when the server answers PING (not while it is still loading its AOF)."""
        return ping(self.port)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a clean shutdown) and wait."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what was already fsynced."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()


@contextlib.contextmanager
def running_redis(directory: Path, *, aof: bool = False) -> Iterator[RedisServer]:
    """A started RedisServer, killed when the block ends."""
    server = RedisServer(directory, aof=aof)
    try:
        yield server.start()
    finally:
        server.kill()


class _SharedServer:
    """The session's server for the store contract suite: one database per store location."""

    DATABASES = 4096

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.server: RedisServer | None = None
        self.databases: dict[Path, int] = {}

    def url(self, location: Path) -> str:
        if self.server is None or not self.server.running():
            redis_server_binary()  # skip (or fail under CI) before anything starts
            self._tmp = tempfile.TemporaryDirectory(prefix="shareddb-redis-")
            self.server = RedisServer(Path(self._tmp.name), databases=self.DATABASES).start()
            self.databases.clear()
            atexit.register(self.close)
        if location not in self.databases:
            db = len(self.databases) % self.DATABASES
            self.databases[location] = db
            client = redis.Redis(host="127.0.0.1", port=self.server.port, db=db)
            try:
                client.flushdb()  # a fresh location gets an empty database
            finally:
                client.close()
        return self.server.url(self.databases[location])

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


_shared = _SharedServer()


def store_url(location: Path) -> str:
    """The URL of the Redis database that holds the store kept at `location` (a test's directory)."""
    return _shared.url(location)
