"""The `shareddb serve` process: open the node, listen, re-read the tokens file on SIGHUP, and
shut down cleanly on SIGTERM/SIGINT.

Shutdown order matters: stop accepting connections, let in-flight requests finish (their writes
commit), then close the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from typing import Any

from aiohttp import web

from shareddb.api.access import Access
from shareddb.api.app import create_server
from shareddb.api.connections import Limits, default_max_connections
from shareddb.api.metrics import NodeMetrics
from shareddb.config import Settings
from shareddb.node import Node, NodeError
from shareddb.tls import TlsError, check_peer_urls, node_contexts
from shareddb.tokens import TokenError
from shareddb.workers import NodeWorkers, WorkersError, listen, workers_for

log = logging.getLogger("shareddb.server")

# Seed API values travel in the request line; past 64 KiB it answers 414, and to say so in JSON the
# parser must first accept the line.
MAX_REQUEST_LINE = 4 * 1024 * 1024
SHUTDOWN_TIMEOUT = 15.0
WATCH_CLOSE_GRACE = 1.0  # for a watch stream stuck writing to a client that does not read


def _public_host(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


class _Site(web.SockSite):
    """aiohttp's SockSite with a deadline on TLS handshakes, which it has no parameter for: a
    handshake not done within `handshake_timeout` (the request head's deadline, not asyncio's 60 s,
    since the HTTP server sees a connection only once its handshake is done) is dropped."""

    def __init__(self, *args: Any, handshake_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )


def _listen(host: str, port: int, count: int = 1) -> list[socket.socket]:
    """Bind the listening sockets first (one per process of the node, workers.py), so a port in
    use is refused before anything is opened."""
    try:
        return listen(host, port, count)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise NodeError(f"cannot listen on {host}:{port}: {reason}") from exc


def _limits(settings: Settings) -> Limits:
    return Limits(
        head_timeout=settings.head_timeout,
        body_timeout=settings.body_timeout,
        idle_timeout=settings.idle_timeout,
        max_connections=settings.max_connections or default_max_connections(),
    )


async def serve(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT. Raises NodeError with a user-facing line on failure."""
    try:
        server_tls, peer_tls = node_contexts(settings.tls_cert, settings.tls_key, settings.tls_ca)
        if server_tls:
            urls = [("--advertise", settings.advertise), ("--join", settings.join)]
            check_peer_urls(urls + [("--peers", peer) for peer in settings.peers])
    except TlsError as exc:
        raise NodeError(str(exc)) from None
    scheme = "https" if server_tls else "http"
    try:
        access = Access.from_settings(settings, mutual_tls=settings.tls_ca is not None)
    except TokenError as exc:
        raise NodeError(str(exc)) from None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, access.reload)  # before SIGHUP's default, which kills
    try:
        processes = workers_for(settings)
    except WorkersError as exc:
        raise NodeError(str(exc)) from None
    sockets = _listen(settings.host, settings.port, processes)
    sock = sockets[0]
    try:
        node = await Node.open(settings)
    except BaseException:
        for each in sockets:
            each.close()
        raise
    # From here on SIGTERM and SIGINT stop the node cleanly, also while it is still starting.
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    limits = _limits(settings)
    log.info("node %s takes at most %d connections at once", node.id, limits.max_connections)
    if limits.max_connections > default_max_connections():
        log.warning(
            "--max-connections %d is more than the open-files limit leaves room for (%d): "
            "raise that limit (ulimit -n) or connections past it are dropped unanswered",
            limits.max_connections,
            default_max_connections(),
        )
    node_metrics = NodeMetrics(node)
    server = create_server(
        node, limits, access, node_metrics, access_log=None, max_line_size=MAX_REQUEST_LINE
    )
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    workers = NodeWorkers(settings, sockets[1:]) if processes > 1 else None
    failed: asyncio.Event = asyncio.Event()
    try:
        await runner.setup()
        if workers is not None:
            await _start_workers(workers, server, limits, access, node_metrics)
            failed = workers.pool.failed
        site = _Site(runner, sock, ssl_context=server_tls, handshake_timeout=limits.head_timeout)
        freeze_start_up()  # its collection blocks the loop: before the first request, not in one
        await site.start()
        port = sock.getsockname()[1]
        log.info("node %s listening on %s://%s:%d", node.id, scheme, settings.host, port)
        await node.start_replication(
            settings.advertise or f"{scheme}://{_public_host(settings.host)}:{port}",
            peer_tls=peer_tls,
        )
        await _first(stop, failed, node.failed)
        log.info("node %s shutting down", node.id)
    finally:
        # Open watch streams would hold the server's shutdown for SHUTDOWN_TIMEOUT, and held
        # long polls for their wait: end them.
        await node.watches.close(WATCH_CLOSE_GRACE)
        node.feed.close()
        if workers is not None:
            await workers.stop()
        await runner.cleanup()
        await node.close()
    log.info("node %s stopped", node.id)
    if node.failed.is_set():
        raise NodeError(node.failure)
    if workers is not None and failed.is_set():
        raise NodeError(workers.pool.reason)


def freeze_start_up() -> None:
    """Take what start-up built (modules, classes, the node's store and server) out of the
    garbage collector's sight: it lives as long as the process, and walking it made every full
    collection a pause of ~30 ms on a fresh node (docs/design.md, "Keys at scale"). One full
    collection first, of tens of milliseconds: called before the process serves."""
    gc.collect()
    gc.freeze()


async def _start_workers(
    workers: NodeWorkers,
    server: web.Server,
    limits: Limits,
    access: Access,
    node_metrics: NodeMetrics,
) -> None:
    """Start the node's workers; their requests count in its /metrics, SIGHUP reaches them."""
    try:
        await workers.start(
            server.request_handler, limits, access_log=None, max_line_size=MAX_REQUEST_LINE
        )
    except WorkersError as exc:
        raise NodeError(str(exc)) from None
    pool = workers.pool
    node_metrics.worker_requests = pool.series
    node_metrics.connections = lambda: len(server.connections) + pool.connections()

    def reload() -> None:
        access.reload()
        pool.reload()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    log.info("serving on %d processes: this one and workers %s", len(pool) + 1, pool.pids)


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
