"""`--workers N`: the node process and N-1 worker processes serving one node's port.

The node process stays what it is with one process (write pipeline, replication, watch, metrics,
every route). Each worker (worker.py) accepts on the same port, serves the hot reads (`GET
/v1/kv/{key}`, `GET /nodes/get`) from the store itself, and forwards every other request to the
node process over a Unix socket (forward.py). This module is the node process's side: the
listening sockets, starting, watching, restarting and stopping the workers, and the requests
counted by them. Why this design and what it was measured against: docs/design.md, "Serving reads
on several processes".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from shareddb.api.connections import Limits
from shareddb.api.routing import Handler
from shareddb.config import Settings
from shareddb.forward import ForwardedServer

log = logging.getLogger("shareddb.workers")

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# A worker that dies is started again; one that dies this often within RESTART_WINDOW seconds takes
# the node down (a worker that cannot run is a fault to fix, not to hide behind restarts).
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
READY = b"ready"

# One series of request counts: (method, route, status) -> count per latency bucket, then the sum.
Series = dict[tuple[str, str, int], list[float]]


class WorkersError(Exception):
    """The workers cannot run (a store they cannot read, a worker that will not start)."""


def default_workers(cores: int | None = None) -> int:
    """Processes per node when --workers is not given: one on a machine of two cores or fewer,
    where the extra process competes with the clients and the node's own threads for the cores
    (measured: docs/design.md, "Serving reads on several processes"), else one per core."""
    cores = cores or _usable_cores()
    return 1 if cores <= 2 else cores


def _usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, `taskset`), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def workers_for(settings: Settings) -> int:
    """How many processes serve the node: --workers, or the machine's default. Raises
    WorkersError when several are asked for a store other processes cannot read."""
    wanted = settings.workers if settings.workers is not None else default_workers()
    if (
        wanted > 1
        and settings.store != "sqlite"
        and not settings.store.startswith(("redis://", "rediss://"))
    ):
        if settings.workers is None:
            log.info("--store %s is held in this process: serving with one process", settings.store)
            return 1
        raise WorkersError(
            f"--workers {wanted} needs a store other processes can read (sqlite or redis://), "
            f"not {settings.store!r}: use --workers 1"
        )
    return wanted


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port, shared by SO_REUSEPORT (the kernel spreads new
    connections over them). A port another process listens on is refused even when that process
    set SO_REUSEPORT too: a plain bind is tried first, so two nodes never share a port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if count == 1:
        return [socket.create_server((host, port), family=family, backlog=1024)]
    if port != 0:
        socket.create_server((host, port), family=family).close()  # OSError: the port is taken
    sockets = [socket.create_server((host, port), family=family, backlog=1024, reuse_port=True)]
    port = sockets[0].getsockname()[1]
    try:
        for _ in range(count - 1):
            sockets.append(
                socket.create_server((host, port), family=family, backlog=1024, reuse_port=True)
            )
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(slots=True)
class _Worker:
    slot: int
    sock: socket.socket
    proc: asyncio.subprocess.Process | None = None
    series: Series = field(default_factory=dict)  # as last reported by the running process
    connections: int = 0
    restarts: list[float] = field(default_factory=list)


class WorkerPool:
    """The node process's workers: started with `start()`, watched (a worker that exits is
    started again, or takes the node down: `failed`), stopped with `stop()`.

    Each worker gets its settings and its listening socket from this process, and reports over
    its stdout pipe: one line when it is ready, then its request counts every second (merged into
    this node's /metrics by `series()`). Its stdin stays open for as long as this process lives: a
    worker whose stdin ends (this process was killed) stops at once, and the kernel kills it should
    this process die first anyway (PR_SET_PDEATHSIG), so no worker outlives its node.
    """

    def __init__(self, settings: Settings, sockets: list[socket.socket], internal: Path) -> None:
        self.settings = settings
        self.internal = internal  # the node process's Unix socket for forwarded requests
        self._workers = [_Worker(slot + 1, sock) for slot, sock in enumerate(sockets)]
        self._retired: Series = {}  # counted by worker processes that have exited
        self._watch: list[asyncio.Task[None]] = []
        self._stopping = False
        self.failed = asyncio.Event()
        self.reason = ""

    def __len__(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None]

    async def start(self) -> None:
        """Start every worker and wait until each serves; WorkersError when one cannot."""
        await asyncio.gather(*(self._spawn(worker) for worker in self._workers))
        self._watch = [asyncio.create_task(self._watch_worker(w)) for w in self._workers]

    async def _spawn(self, worker: _Worker) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shareddb.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(worker.sock.fileno(),),
        )
        worker.proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        # Settings hold tokens: a pipe, not the command line or the environment.
        config = (self.settings, worker.slot, worker.sock.fileno(), str(self.internal))
        data = pickle.dumps(config)
        proc.stdin.write(len(data).to_bytes(8, "big") + data)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != READY:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            raise WorkersError(f"worker {worker.slot} did not start (exit code {code}); see its log")

    async def _watch_worker(self, worker: _Worker) -> None:
        """Read a worker's reports until it exits, then start it again (or give up)."""
        while True:
            proc = worker.proc
            assert proc is not None
            assert proc.stdout is not None
            async for line in proc.stdout:
                with contextlib.suppress(ValueError, KeyError, TypeError):  # a cut line
                    report = orjson.loads(line)
                    worker.series = {(m, r, int(s)): counts for m, r, s, counts in report["requests"]}
                    worker.connections = int(report["connections"])
            code = await proc.wait()
            self._retire(worker)
            if self._stopping:
                return
            now = time.monotonic()
            worker.restarts = [t for t in worker.restarts if now - t < RESTART_WINDOW] + [now]
            if len(worker.restarts) > MAX_RESTARTS:
                self.reason = (
                    f"worker {worker.slot} exited {len(worker.restarts)} times within "
                    f"{RESTART_WINDOW:.0f} s (last exit code {code}): stopping the node"
                )
                log.error("%s", self.reason)
                self.failed.set()
                return
            log.error(
                "worker %d (pid %d) exited with code %s: starting it again", worker.slot, proc.pid, code
            )
            try:
                await self._spawn(worker)
            except (WorkersError, OSError) as exc:
                self.reason = f"worker {worker.slot} cannot be started again: {exc}"
                log.error("%s: stopping the node", exc)
                self.failed.set()
                return
            log.info("worker %d started again", worker.slot)

    def _retire(self, worker: _Worker) -> None:
        """Keep what an exited worker counted: /metrics counters never go backwards."""
        _add(self._retired, worker.series)
        worker.series = {}
        worker.connections = 0

    def series(self) -> list[Series]:
        """The request counts of every worker, those of exited worker processes included."""
        return [self._retired, *(w.series for w in self._workers)]

    def connections(self) -> int:
        return sum(w.connections for w in self._workers)

    def reload(self) -> None:
        """SIGHUP: every worker re-reads the tokens file, as this process does."""
        self._signal(signal.SIGHUP)

    def _signal(self, signum: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM every worker (each finishes the requests it has in hand), SIGKILL those still
        running after STOP_TIMEOUT."""
        self._stopping = True
        self._signal(signal.SIGTERM)
        procs = [w.proc for w in self._workers if w.proc is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("workers still running %.0f s after SIGTERM: killing them", STOP_TIMEOUT)
            self._signal(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in procs))
        for task in self._watch:  # one may be starting a worker again: that one is killed below
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()
            worker.sock.close()


def _add(total: Series, more: Series) -> None:
    for key, counts in more.items():
        mine = total.get(key)
        if mine is None:
            total[key] = list(counts)
        else:
            for i, count in enumerate(counts):
                mine[i] += count


class NodeWorkers:
    """Everything the node process runs for its workers: the Unix socket their forwarded requests
    come in on (served by the node's own router) and the pool of worker processes."""

    def __init__(self, settings: Settings, sockets: list[socket.socket]) -> None:
        # mkdtemp makes the directory 0700: only this user can connect to the socket in it,
        # which is what lets the node trust the client address a worker forwards.
        self._dir = Path(tempfile.mkdtemp(prefix="shareddb-"))
        self.path = self._dir / "node.sock"
        self.pool = WorkerPool(settings, sockets, self.path)
        self._runner: web.ServerRunner | None = None

    async def start(self, handler: Handler, limits: Limits, **kwargs: Any) -> None:
        """Serve `handler` (the node's router) on the Unix socket, then start the workers.
        `kwargs` go to aiohttp's request handler, as for the node's own server."""
        server = ForwardedServer(handler, limits=limits, **kwargs)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.path)).start()
        await self.pool.start()

    async def stop(self) -> None:
        """Stop the workers first: the requests they forwarded are finished meanwhile."""
        await self.pool.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)
