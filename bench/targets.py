"""The systems under test that are ours: the hello-world ceiling, one shareddb node, and a cluster
of shareddb nodes replicating to each other. etcd.py is the one that is not ours.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from tests.harness import free_ports, serve_command

from bench.processes import Fleet, ServerProcess, http_get

HELLO = Path(__file__).resolve().parent / "hello.py"
SETTLE_TIMEOUT = 60.0
# Followers whose digests have not moved for this long are not catching up (or cannot yet).
SETTLE_QUIET = 2.0
SETTLE_POLL = 0.25


@dataclass(frozen=True, slots=True)
class Target:
    """Where wrk sends its requests (the first URL), and every process whose CPU time serves them."""

    name: str
    urls: tuple[str, ...]
    servers: tuple[ServerProcess, ...]
    description: str

    @property
    def url(self) -> str:
        return self.urls[0]

    def cpu_seconds(self) -> float | None:
        times = [s.cpu_seconds() for s in self.servers]
        return None if any(t is None for t in times) else sum(t for t in times if t is not None)


@dataclass(frozen=True, slots=True)
class Settled:
    """How a cluster ended up after a burst of writes on its first node."""

    converged: bool
    seconds: float
    counts: tuple[int, ...]


def start_hello(fleet: Fleet, workdir: Path) -> Target:
    server = fleet.start(
        "hello", [sys.executable, str(HELLO), "--port", "0"], workdir / "logs" / "hello.log"
    )
    port = server.wait_listening()
    return Target("hello", (f"http://127.0.0.1:{port}",), (server,), "aiohttp hello-world")


def node_command(
    data: Path, node_id: str, port: int, peers: Sequence[str] = (), workers: int = 1
) -> list[str]:
    """`shareddb serve` with the default store (SQLite, in `data`) on `workers` processes (one
    unless a scenario says otherwise, so that a figure means the same on every machine);
    redis_target.py adds --store."""
    args = ["--workers", str(workers)]
    if peers:
        args += ["--peers", ",".join(peers)]
    return serve_command(data, node_id, port, args)


def start_node(fleet: Fleet, workdir: Path, workers: int = 1) -> Target:
    """One shareddb node on a fresh data dir and a port it picks itself, on `workers` processes
    (target "workers_node" when more than one)."""
    name = "node" if workers == 1 else "workers_node"
    server = fleet.start(
        name,
        node_command(workdir / name / "data", "bench1", 0, workers=workers),
        workdir / "logs" / f"{name}.log",
    )
    port = server.wait_listening()
    processes = "" if workers == 1 else f", --workers {workers}"
    return Target(name, (f"http://127.0.0.1:{port}",), (server,), f"shareddb, 1 node{processes}, SQLite")


def start_cluster(fleet: Fleet, workdir: Path, size: int) -> Target:
    """`size` shareddb nodes, each started with --peers naming all the others; wrk uses the first.

    The peers' URLs must be known before any node starts, so the ports are picked here instead of
    each node binding port 0.
    """
    ports = free_ports(size)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    servers = []
    for index, port in enumerate(ports):
        node_id = f"cluster{index + 1}"
        peers = [u for u in urls if u != urls[index]]
        cmd = node_command(workdir / "cluster" / node_id, node_id, port, peers)
        servers.append(fleet.start(node_id, cmd, workdir / "logs" / f"{node_id}.log"))
    for server in servers:
        server.wait_listening()
    return Target("cluster", tuple(urls), tuple(servers), f"shareddb, {size} nodes (--peers)")


def digest(url: str) -> tuple[int, str] | None:
    answer = http_get(f"{url}/v1/digest")
    if answer is None or answer[0] != 200:
        return None
    data = orjson.loads(answer[1])
    return int(data["count"]), str(data["digest"])


def settle(target: Target) -> Settled:
    """Wait until every node of a cluster holds what its first node holds.

    Returns as soon as the digests agree, or once the followers have made no progress for
    SETTLE_QUIET seconds (replication not running, or stuck), or after SETTLE_TIMEOUT. This keeps
    followers still applying one scenario's writes from eating the CPU of the next measurement.
    """
    urls = target.urls
    started = time.monotonic()
    last: list[tuple[int, str] | None] = []
    last_change = started
    while True:
        now = [digest(u) for u in urls]
        counts = tuple(d[0] if d else -1 for d in now)
        if now[0] is not None and all(d == now[0] for d in now):
            return Settled(True, time.monotonic() - started, counts)
        if now != last:
            last, last_change = now, time.monotonic()
        if time.monotonic() - last_change > SETTLE_QUIET or time.monotonic() - started > SETTLE_TIMEOUT:
            return Settled(False, time.monotonic() - started, counts)
        time.sleep(SETTLE_POLL)
