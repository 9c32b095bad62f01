"""Network partitions between nodes: one fault-injecting TCP proxy in front of every node.

Nodes reach each other only through the URL each one advertises, which is its proxy; clients talk
to the nodes' real ports. A connection to a proxy comes from one node's peer HTTP client, so its
first request names the puller (`from=` of a pull, the first member entry of a join), and the
proxy of node j applies the link "i cannot reach j" to it: reset it at once, or blackhole it
(accept, never answer) until the partition heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

HEAD_LIMIT = 64 * 1024
CHUNK = 64 * 1024
CLOSE_GRACE = 2.0  # seconds a closing proxy waits for its handlers before cancelling them

Link = tuple[int, int]  # (source slot, target slot): the source pulls from the target


class Links:
    """The links that are cut right now, shared by every proxy."""

    def __init__(self, slot_of: Callable[[str], int | None]) -> None:
        self.cut: frozenset[Link] = frozenset()
        self.blackhole = False  # how a cut link treats a new connection: hold it, or reset it
        self.slot_of = slot_of  # node id -> slot (a wiped node may come back under a new id)
        self.proxies: list[FaultProxy] = []
        self.counts: Counter[str] = Counter()  # connections reset, held or dropped by a cut

    def partition(self, cut: frozenset[Link], blackhole: bool) -> None:
        """Cut `cut` (and nothing else); connections already open on a cut link are dropped."""
        self.cut, self.blackhole = cut, blackhole
        for proxy in self.proxies:
            proxy.drop(lambda source, target: (source, target) in cut)

    def heal(self) -> None:
        """Every link works again; held (blackholed) connections are dropped so pullers retry."""
        self.cut = frozenset()
        for proxy in self.proxies:
            proxy.drop(lambda source, target: True, held_only=True)


class _Conn:
    def __init__(self, source: int | None, writer: asyncio.StreamWriter) -> None:
        self.source = source
        self.writers = [writer]
        self.held = False
        self.dropped = asyncio.Event()

    def abort(self) -> None:
        self.dropped.set()
        for writer in self.writers:
            _reset(writer)


class FaultProxy:
    """The inbound proxy of node `slot`: forwards to the node's real port unless the link is cut."""

    def __init__(self, slot: int, links: Links, upstream_port: Callable[[], int]) -> None:
        self.slot = slot
        self.links = links
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        links.proxies.append(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting and reset every connection. A handler that a reset does not end (one
        still waiting for a first request, say) is cancelled after CLOSE_GRACE: closing never
        waits on a node, and leaves no socket open behind it."""
        if self._server is None or self._closed:
            return
        self._closed = True
        self._server.close()
        for conn in list(self._conns):
            conn.abort()
        if self._handlers:
            _, stuck = await asyncio.wait(set(self._handlers), timeout=CLOSE_GRACE)
            for handler in stuck:
                handler.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()

    def drop(self, hit: Callable[[int, int], bool], held_only: bool = False) -> None:
        """Reset the open connections whose link (source, this node) `hit` selects."""
        for conn in list(self._conns):
            if conn.source is not None and hit(conn.source, self.slot) and (conn.held or not held_only):
                self.links.counts["dropped"] += not conn.held
                conn.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:  # accepted just before the listening socket closed
            _reset(writer)
            return
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._handle(reader, writer)
        finally:
            self._handlers.discard(handler)
            _reset(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await _join_body(head, reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            return  # _serve resets the connection
        conn = _Conn(self._source(head, body), writer)
        self._conns.add(conn)
        try:
            if conn.source is not None and (conn.source, self.slot) in self.links.cut:
                conn.held = self.links.blackhole
                self.links.counts["held" if conn.held else "reset"] += 1
                if conn.held:
                    await _race(_swallow(reader), conn.dropped.wait())
                return
            await self._forward(conn, reader, head + body)
        finally:
            self._conns.discard(conn)
            conn.abort()

    def _source(self, head: bytes, body: bytes) -> int | None:
        node_id = _puller(head, body)
        return None if node_id is None else self.links.slot_of(node_id)

    async def _forward(self, conn: _Conn, reader: asyncio.StreamReader, first: bytes) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port())
        except OSError:
            return  # the node is down: the puller sees a reset, as it would from the node itself
        conn.writers.append(up_writer)
        if conn.dropped.is_set():
            return
        up_writer.write(first)
        await _race(_pipe(reader, up_writer), _pipe(up_reader, conn.writers[0]), conn.dropped.wait())


def _puller(head: bytes, body: bytes) -> str | None:
    """The node id of whoever sent this first request: a pull names it, a join carries it."""
    try:
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method == "GET":
            return parse_qs(urlsplit(target).query).get("from", [None])[0]
        members = orjson.loads(body)["members"] if body else []
        return str(members[0]["id"]) if members else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


async def _join_body(head: bytes, reader: asyncio.StreamReader) -> bytes:
    """The body of a first request (a join's member list), read whole so it can name the sender."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return await reader.readexactly(int(value.strip()))
    return b""


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(CHUNK):
            target.write(data)
            await target.drain()


async def _swallow(reader: asyncio.StreamReader) -> None:
    """Read and discard until the peer gives up: a blackholed connection never gets an answer."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(CHUNK):
            pass


async def _race(*waits: Coroutine[Any, Any, object]) -> None:
    """Run the coroutines until the first one returns, then cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a refusing or crashing peer would."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ProxyThread:
    """Fault proxies for tests that do not run an event loop: one proxy per node slot, served by a
    loop on a thread of its own. `ids[i]` is the node id of slot i, `upstream[i]()` its real
    port (read at each connection, so a node may start after its proxy). Each node advertises
    `url(i)`, and its peers reach it only through that; `partition` and `heal` act at once."""

    def __init__(self, ids: list[str], upstream: list[Callable[[], int]]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-proxies", daemon=True)
        self._thread.start()
        self.links = Links(lambda node_id: ids.index(node_id) if node_id in ids else None)
        self.proxies = [FaultProxy(i, self.links, port) for i, port in enumerate(upstream)]
        for proxy in self.proxies:
            self._call(proxy.start())

    def url(self, slot: int) -> str:
        return self.proxies[slot].url

    def partition(self, cut: set[Link]) -> None:
        """Cut `cut` (and nothing else): a connection on a cut link is reset at once."""
        self._call(self._run(lambda: self.links.partition(frozenset(cut), blackhole=False)))

    def isolate(self, slot: int) -> None:
        """Cut every link to and from `slot`."""
        count = len(self.proxies)
        self.partition({(slot, j) for j in range(count)} | {(j, slot) for j in range(count)})

    def heal(self) -> None:
        self._call(self._run(self.links.heal))

    def close(self) -> None:
        try:
            for proxy in self.proxies:
                self._call(proxy.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _run(self, action: Callable[[], None]) -> None:
        action()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)
