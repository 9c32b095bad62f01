"""The comparison system: a 3-member etcd cluster on loopback, written to through its v2 keys API.

Optional: `unavailable()` says why it cannot run here (no binary, or a version without the v2 API)
and the bench then skips it with that note. wrk writes to the leader, the fastest member to write
to, so the comparison is with etcd at its best.
"""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path

import orjson
from tests.harness import free_ports

from bench.processes import Fleet, http_get
from bench.targets import Target

MEMBERS = 3
READY_TIMEOUT = 60.0
VERSION = re.compile(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")
# etcd logs routine events (peer connections, slow-request hints) at "warn"; only worse is news.
COMPLAINT = re.compile(r'"level":"(error|dpanic|panic|fatal)"')
# etcd cleans up on SIGTERM and then re-raises it, so dying of SIGTERM is its clean exit.
CLEAN_EXITS = (0, -signal.SIGTERM)


def binary() -> str | None:
    return shutil.which("etcd")


def version(etcd: str) -> tuple[int, int, int] | None:
    try:
        done = subprocess.run([etcd, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = VERSION.search(done.stdout + done.stderr)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def unavailable() -> str | None:
    """Why the etcd comparison cannot run on this machine, or None when it can."""
    etcd = binary()
    if etcd is None:
        return "etcd is not on PATH (Debian: apt-get install -y etcd-server etcd-client)"
    found = version(etcd)
    if found is None:
        return f"cannot read the version of {etcd}"
    if found >= (3, 6, 0):
        return f"etcd {'.'.join(map(str, found))} has no v2 keys API (removed in 3.6)"
    return None


def describe() -> str:
    etcd = binary()
    found = version(etcd) if etcd else None
    return f"etcd {'.'.join(map(str, found))}" if found else "etcd"


def start_cluster(fleet: Fleet, workdir: Path, members: int = MEMBERS) -> Target:
    """`members` etcd processes forming one new cluster; returns the leader first in `urls`."""
    etcd = binary()
    if etcd is None:
        raise RuntimeError(unavailable())
    ports = free_ports(2 * members)
    client = [f"http://127.0.0.1:{p}" for p in ports[:members]]
    peer = [f"http://127.0.0.1:{p}" for p in ports[members:]]
    names = [f"etcd{i + 1}" for i in range(members)]
    initial = ",".join(f"{n}={u}" for n, u in zip(names, peer, strict=True))
    token = f"shareddb-bench-{secrets.token_hex(4)}"
    servers = []
    for name, client_url, peer_url in zip(names, client, peer, strict=True):
        cmd = [
            etcd,
            f"--name={name}",
            f"--data-dir={workdir / 'etcd' / name}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={token}",
            # Off by default since 3.4; the v2 keys API is what the bench writes to.
            "--enable-v2=true",
            "--logger=zap",
            "--log-level=warn",
        ]
        log = workdir / "logs" / f"{name}.log"
        servers.append(fleet.start(name, cmd, log, complaint=COMPLAINT, clean_exits=CLEAN_EXITS))
    for server, url in zip(servers, client, strict=True):
        server.wait_until(partial(_healthy, url), READY_TIMEOUT, "a healthy /health")
    leader = next((i for i, url in enumerate(client) if _is_leader(url)), 0)
    order = [leader, *(i for i in range(members) if i != leader)]
    return Target(
        "etcd",
        tuple(client[i] for i in order),
        tuple(servers[i] for i in order),
        f"{describe()}, {members} members",
    )


def _healthy(url: str) -> bool:
    answer = http_get(f"{url}/health")
    return answer is not None and answer[0] == 200 and b'"true"' in answer[1]


def _is_leader(url: str) -> bool:
    answer = http_get(f"{url}/v2/stats/self")
    return (
        answer is not None
        and answer[0] == 200
        and orjson.loads(answer[1]).get("state") == ("StateLeader")
    )
