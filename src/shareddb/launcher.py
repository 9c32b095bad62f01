"""`shareddb cluster up`: N local node processes as one cluster, in the foreground.

Each node's output is prefixed with its id. Ctrl-C or SIGTERM stops every node with SIGTERM (each
finishes its in-flight writes); if one node exits by itself, the others are stopped too. Without
`--peer-token`, the nodes share one made for this run, so they replicate on any `--host`. With
`--tls`, a throwaway CA and a certificate per node are made in DATA/tls first (certs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

from shareddb.certs import NodeFiles, make_cluster

STOP_TIMEOUT = 20.0


class Launcher:
    def __init__(
        self,
        nodes: int,
        base_port: int,
        data: Path,
        host: str,
        token: str | None = None,
        peer_token: str | None = None,
        tls: bool = False,
    ) -> None:
        self.nodes = nodes
        self.base_port = base_port
        self.data = data
        self.host = host
        self.token = token
        self.peer_token = peer_token or secrets.token_urlsafe(18)
        self.tls: list[NodeFiles] = []
        if tls:
            self.tls = make_cluster(self.tls_dir, self.names(), self.hosts())

    @property
    def tls_dir(self) -> Path:
        return self.data / "tls"

    def names(self) -> list[str]:
        return [f"node{index + 1}" for index in range(self.nodes)]

    def hosts(self) -> list[str]:
        """What the node certificates are good for: loopback, and the host the nodes listen on."""
        hosts = ["127.0.0.1", "localhost", self.host]
        if self.host in ("0.0.0.0", "::", ""):
            hosts.append(socket.gethostname())
        return [h for h in hosts if h]

    def url(self, index: int) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.base_port + index}"

    def how_to_connect(self) -> list[str]:
        """What `cluster up --tls` prints before the nodes start: where the CA is, and its use."""
        ca = self.tls[0].ca.resolve()
        return [
            f"TLS: the nodes use certificates of a throwaway CA, in {self.tls_dir.resolve()}",
            f"clients verify them with --ca {ca} (or SHAREDDB_CA={ca}), for example:",
            f"  shareddb status --url {self.url(0)} --ca {ca}",
            f"  curl --cacert {ca} {self.url(0)}/health",
        ]

    def command(self, index: int) -> list[str]:
        node_id = f"node{index + 1}"
        cmd = [sys.executable, "-m", "shareddb", "serve"]
        cmd += ["--host", self.host, "--port", str(self.base_port + index)]
        cmd += ["--data", str(self.data / node_id), "--node-id", node_id]
        peers = [self.url(i) for i in range(self.nodes) if i != index]
        if peers:
            cmd += ["--peers", ",".join(peers)]
        if self.token:
            cmd += ["--token", self.token]
        if self.tls:
            cmd += self.tls[index].flags()
        return cmd

    async def run(self) -> int:
        procs: list[asyncio.subprocess.Process] = []
        pumps: list[asyncio.Task[None]] = []
        width = len(f"node{self.nodes}")
        if self.tls:
            sys.stdout.write("".join(line + "\n" for line in self.how_to_connect()))
            sys.stdout.flush()
        for index in range(self.nodes):
            proc = await asyncio.create_subprocess_exec(
                *self.command(index),
                # Not on the command line, where every user of the machine could read it.
                env={**os.environ, "SHAREDDB_PEER_TOKEN": self.peer_token},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the nodes in order
            )
            procs.append(proc)
            pumps.append(asyncio.create_task(_pump(proc, f"node{index + 1}".ljust(width))))

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        exits = [asyncio.create_task(p.wait()) for p in procs]
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *exits], return_when=asyncio.FIRST_COMPLETED)
        failed = not stop.is_set()

        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*exits), STOP_TIMEOUT)
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            await asyncio.gather(*exits)
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        await asyncio.gather(*pumps)
        if failed:
            return max(p.returncode or 0 for p in procs) or 1
        return 0


async def _pump(proc: asyncio.subprocess.Process, prefix: str) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        sys.stdout.write(f"{prefix} | {line.decode('utf-8', 'replace')}")
        sys.stdout.flush()
