"""One worker process of a node (`--workers N`; workers.py starts it): serves the hot reads from
the store itself and forwards every other request to the node process.

It reads the node's settings and its listening socket from the node process, never its command
line: it is not meant to be started by hand. It writes nothing to the store. Its reads see every
write the node process has acknowledged: the node answers a write only once it is committed, and
each read here is a read of the committed store begun after its request arrived (SQLite: the
reads of one turn of the event loop share a read transaction, store/sqlite_point.py; Redis: one
HGET), with no cache to go stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import pickle
import signal
import socket
import sqlite3
import sys
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from aiohttp import web

from shareddb.api import kv, nodes
from shareddb.api.access import Access
from shareddb.api.connections import GuardedServer
from shareddb.api.metrics import RequestLatency
from shareddb.api.routing import Route, Router
from shareddb.clock import wall_millis
from shareddb.config import Settings
from shareddb.forward import Forwarder
from shareddb.record import Record
from shareddb.server import MAX_REQUEST_LINE, SHUTDOWN_TIMEOUT, _limits, _Site, freeze_start_up
from shareddb.store.base import StoreUnavailable
from shareddb.store.sqlite import BUSY_TIMEOUT_MS, POINT_MMAP_BYTES, sqlite_path
from shareddb.store.sqlite_point import PointReads
from shareddb.tls import node_contexts
from shareddb.tokens import Role
from shareddb.workers import READY

log = logging.getLogger("shareddb.worker")

REPORT_INTERVAL = 1.0  # seconds between two reports of the request counts to the node process
PR_SET_PDEATHSIG = 1


class Reader(Protocol):
    async def get(self, key: str) -> Record | None: ...

    async def close(self) -> None: ...


class SQLiteReader:
    """Point reads on a read-only connection of the node's SQLite file. In WAL mode a read
    transaction sees every commit made before it began, and never waits for the writer; the
    reads of one turn of the event loop share one (store/sqlite_point.py)."""

    SQL = "SELECT value, version, expires FROM kv WHERE key = ?"

    def __init__(self, settings: Settings) -> None:
        path = sqlite_path(settings.data).resolve()
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA mmap_size = {POINT_MMAP_BYTES}")
        self._point = PointReads(db)

    async def get(self, key: str) -> Record | None:
        try:
            row = self._point.connection().execute(self.SQL, (key,)).fetchone()
        except UnicodeEncodeError:  # text the store cannot hold: never written
            return None
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc
        if row is None:
            return None
        record = Record(key, row[0], row[1], row[2])
        return record if record.live_at(wall_millis()) else None

    async def close(self) -> None:
        self._point.close()


class RedisReader:
    """Point reads of the node's Redis store, on a client of this process."""

    def __init__(self, settings: Settings) -> None:
        from redis.asyncio import Redis

        from shareddb.store.redis import CONNECT_TIMEOUT, DEFAULT_PREFIX, SOCKET_TIMEOUT
        from shareddb.store.redis_scripts import Keys

        self._client = Redis.from_url(
            settings.store,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
        self._rec = Keys.under(DEFAULT_PREFIX).rec

    async def get(self, key: str) -> Record | None:
        from redis.exceptions import RedisError

        from shareddb.store.redis_replies import decode_record

        try:
            raw = await self._client.hget(self._rec, key.encode("utf-8", "surrogatepass"))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        if raw is None:
            return None
        record = decode_record(key, bytes(raw, "utf-8") if isinstance(raw, str) else raw)
        return record if record.live_at(wall_millis()) else None

    async def close(self) -> None:
        await self._client.aclose()


def hot(request: web.BaseRequest) -> bool:
    """The requests a worker answers itself; every other one goes to the node process."""
    if request.method not in ("GET", "HEAD"):
        return False
    path = request.raw_path.partition("?")[0]
    return path.startswith(kv.PREFIX) or path == "/nodes/get"


class Worker:
    """The worker's HTTP side: its own router for the hot reads, the forwarder for the rest."""

    def __init__(self, settings: Settings, reader: Reader, forwarder: Forwarder) -> None:
        self.access = Access.from_settings(settings, mutual_tls=settings.tls_ca is not None)
        self.requests = RequestLatency()
        self.forwarder = forwarder
        routes = [
            Route("GET", "/v1/kv/*", partial(kv.get, reader), Role.READ),
            Route("GET", "/nodes/get", partial(nodes.get, reader), Role.READ),
        ]
        self.router = Router(routes, self.access, observe=self.requests.observe)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if hot(request):
            return await self.router(request)
        return await self.forwarder(request)


async def serve(settings: Settings, slot: int, fd: int, internal: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group: the node process stops its workers in its own order.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    sock = socket.socket(fileno=fd)
    server_tls, _ = node_contexts(settings.tls_cert, settings.tls_key, settings.tls_ca)
    reader: Reader = SQLiteReader(settings) if settings.store == "sqlite" else RedisReader(settings)
    forwarder = Forwarder(internal)
    worker = Worker(settings, reader, forwarder)
    loop.add_signal_handler(signal.SIGHUP, worker.access.reload)
    limits = _limits(settings)
    server = GuardedServer(
        worker,
        limits=limits,
        access_log=None,
        max_line_size=MAX_REQUEST_LINE,
        auto_decompress=False,  # bodies go to the node process as the client sent them
    )
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = _Site(runner, sock, ssl_context=server_tls, handshake_timeout=limits.head_timeout)
    freeze_start_up()
    await site.start()
    report = _reporter(worker, server)
    await loop.connect_read_pipe(lambda: _Parent(stop), sys.stdin)
    sys.stdout.buffer.write(READY + b"\n")
    sys.stdout.flush()
    log.info("worker %d serving", slot)
    try:
        await stop.wait()
    finally:
        report.cancel()
        await runner.cleanup()
        await forwarder.close()
        await reader.close()
        _report(worker, server)


def _report(worker: Worker, server: GuardedServer) -> None:
    series = [[m, r, s, counts] for (m, r, s), counts in worker.requests.series.items()]
    line = orjson.dumps({"requests": series, "connections": len(server.connections)})
    with contextlib.suppress(OSError):
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()


def _reporter(worker: Worker, server: GuardedServer) -> asyncio.Task[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            _report(worker, server)

    return asyncio.create_task(loop())


class _Parent(asyncio.Protocol):
    """The node process's end of our stdin: when it closes, the node process is gone."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()

    def data_received(self, data: bytes) -> None:
        pass


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the node process dies, whatever kills it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> None:
    _die_with_parent()
    size = int.from_bytes(sys.stdin.buffer.read(8), "big")
    config: Any = pickle.loads(sys.stdin.buffer.read(size))
    settings, slot, fd, internal = config
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {slot}]: %(message)s",
        stream=sys.stderr,
    )
    from shareddb.cli import run

    run(serve(settings, slot, fd, internal))


if __name__ == "__main__":
    main()
