"""The `shareddb serve` process: open the node, listen, and shut down cleanly on SIGTERM/SIGINT.

Shutdown order matters: stop accepting connections, let in-flight requests finish (their writes
commit), then close the store.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from shareddb.api.app import create_server
from shareddb.api.connections import Limits, default_max_connections
from shareddb.config import Settings
from shareddb.node import Node, NodeError

log = logging.getLogger("shareddb.server")

# Seed API values travel in the request line; past 64 KiB it answers 414, and to say so in JSON the
# parser must first accept the line.
MAX_REQUEST_LINE = 4 * 1024 * 1024
SHUTDOWN_TIMEOUT = 15.0
WATCH_CLOSE_GRACE = 1.0  # for a watch stream stuck writing to a client that does not read


def _public_host(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a port in use is refused before anything is opened."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
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
    sock = _listen(settings.host, settings.port)
    try:
        node = await Node.open(settings)
    except BaseException:
        sock.close()
        raise
    # From here on SIGTERM and SIGINT stop the node cleanly, also while it is still starting.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
    runner = web.ServerRunner(
        create_server(node, limits, access_log=None, max_line_size=MAX_REQUEST_LINE),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        port = sock.getsockname()[1]
        log.info("node %s listening on http://%s:%d", node.id, settings.host, port)
        await node.start_replication(
            settings.advertise or f"http://{_public_host(settings.host)}:{port}"
        )
        await stop.wait()
        log.info("node %s shutting down", node.id)
    finally:
        # Open watch streams would hold the server's shutdown for SHUTDOWN_TIMEOUT: end them.
        await node.watches.close(WATCH_CLOSE_GRACE)
        await runner.cleanup()
        await node.close()
    log.info("node %s stopped", node.id)
