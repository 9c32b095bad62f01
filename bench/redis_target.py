"""A shareddb node whose store is Redis (`--store redis://...`), beside the SQLite node.

The bench starts its own `redis-server` on a free loopback port (never 6379, the machine's own
Redis) with its data in the run's temp dir, an append-only file fsynced on every write
(`--appendonly yes --appendfsync always`) and no snapshots: an acknowledged write is then as
durable as a SQLite commit. It runs in the Fleet like every other server, so it is stopped with
them in the bench's finally. Optional: `unavailable()` says why it cannot run here, and the bench
then skips the Redis scenarios with that note.
"""

from __future__ import annotations

import re
import subprocess
from functools import partial
from pathlib import Path

from tests.harness import RedisServer, find_redis_server, free_port, ping

from bench.processes import Fleet
from bench.targets import Target, node_command

MIN_VERSION = (7, 0)  # what `--store redis://` needs
READY_TIMEOUT = 30.0
VERSION = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")
# Redis 7.0 logs its startup banner at warning level ("#"), and warns about vm.overcommit_memory
# on most machines; only errors and failures are news.
COMPLAINT = re.compile(
    r"^(?!.*Memory overcommit).*\b(ERR|[Ee]rror|FATAL|[Ff]atal|[Ff]ailed|Can't|Unable|MISCONF|OOM)\b"
)


def version(redis_server: str) -> tuple[int, int, int] | None:
    try:
        done = subprocess.run([redis_server, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = VERSION.search(done.stdout + done.stderr)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def unavailable() -> str | None:
    """Why the Redis scenarios cannot run on this machine, or None when they can."""
    redis_server = find_redis_server()
    if redis_server is None:
        return "redis-server is not installed (Debian: apt-get install -y redis-server)"
    found = version(redis_server)
    if found is None:
        return f"cannot read the version of {redis_server}"
    if found[:2] < MIN_VERSION:
        return f"redis-server {'.'.join(map(str, found))} is older than 7.0, which --store needs"
    return None


def describe() -> str:
    redis_server = find_redis_server()
    found = version(redis_server) if redis_server else None
    return f"Redis {'.'.join(map(str, found))}" if found else "Redis"


def start_redis_node(fleet: Fleet, workdir: Path) -> Target:
    """A private redis-server and one shareddb node storing into its database 0.

    Both processes are the target's servers, so CPU us/req counts Redis's work too: the cost of a
    request to the whole system, as for etcd's members.
    """
    redis_server = find_redis_server()
    if redis_server is None:
        raise RuntimeError(unavailable())
    # The harness's server: its command line, on a free port; the Fleet runs and stops it.
    server = RedisServer(
        workdir / "redis", aof=True, binary=redis_server, log_path=workdir / "logs" / "redis.log"
    )
    server.port = port = free_port()
    server.directory.mkdir(parents=True, exist_ok=True)
    redis = fleet.start("redis", server.command(), server.log_path, complaint=COMPLAINT, stop_last=True)
    redis.wait_until(partial(ping, port), READY_TIMEOUT, "answer to PING")
    node = fleet.start(
        "redis_node",
        [
            *node_command(workdir / "redis_node" / "data", "bench-redis", 0),
            "--store",
            f"redis://127.0.0.1:{port}/0",
        ],
        workdir / "logs" / "redis_node.log",
    )
    node_port = node.wait_listening()
    return Target(
        "redis_node",
        (f"http://127.0.0.1:{node_port}",),
        (node, redis),
        f"shareddb, 1 node, {describe()}",
    )
