"""The node's connections: read deadlines, a cap on how many are open, malformed requests in JSON.

A client that sends its request slowly must not hold the node: a request head has `head_timeout`
seconds from the connection's start (or from the first byte of a later request on a kept-alive
connection), a body may stall for at most `body_timeout` seconds between two bytes, and a
kept-alive connection idle for `idle_timeout` seconds is closed (aiohttp's own keep-alive timer).
None of these runs while a handler answers: a watch stream or a peer's long poll lasts as long as
its handler does.

At most `max_connections` are open. When a new one passes the cap, the connection that has waited
longest for a request head (a slow client's, or an idle kept-alive one) is closed to make room, as
nginx reuses its idle connections when it runs out; only when every connection is busy answering
is the new one refused at once with 503. So a client that sends a whole request promptly is
answered while a thousand others trickle theirs, and the node stays below its open-files limit.
Should it reach that limit all the same (a cap set above it), uvloop's accept closes the
connections it has no file for and goes on, without spinning.

aiohttp has no head or body deadline, so these hooks sit on its request handler's parsing step;
they read a few of its attributes (`_request_count`, `_messages`, `_reading_paused`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from shareddb.api.bodies import unsupported_encoding
from shareddb.api.errors import JSON, ApiError
from shareddb.api.routing import Handler

log = logging.getLogger("shareddb.api")

# File descriptors kept free for everything but client connections: the store's files, peer and
# registry connections, the log, the event loop's own.
RESERVED_FILES = 128
MIN_CONNECTIONS = 16
WARN_INTERVAL = 60.0  # seconds between two log lines saying the cap was reached
MAX_ERROR_DETAIL = 200
# aiohttp's ContentEncodingError names the encoding in brackets: "... brotli (br). Please ..."
ENCODING_NAMED = re.compile(r"\((\S+)\)")


def default_max_connections() -> int:
    """The open-files limit of this process, less what the node needs besides connections."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(MIN_CONNECTIONS, soft - RESERVED_FILES)


@dataclass(frozen=True, slots=True)
class Limits:
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int = 1024


def _refusal() -> bytes:
    body = orjson.dumps(
        {"error": "unavailable", "message": "too many connections are busy; try again shortly"}
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
        "Retry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


REFUSAL = _refusal()


def one_line(message: str) -> str:
    """aiohttp's parser messages span lines and point at the bad byte with a caret: one line."""
    parts = [line.strip() for line in message.splitlines()]
    text = " ".join(p for p in parts if p and set(p) != {"^"})
    return text if len(text) <= MAX_ERROR_DETAIL else text[: MAX_ERROR_DETAIL - 3] + "..."


class GuardedServer(web.Server):
    """aiohttp's low-level server with `Limits` on its connections."""

    def __init__(self, handler: Handler, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=limits.idle_timeout, **kwargs)
        self.limits = limits
        self._open = 0
        # Connections waiting for a request head, the longest-waiting first: the ones to close
        # when the cap is reached.
        self._waiting: dict[GuardedRequestHandler, None] = {}
        self._warned_at: float | None = None

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        assert isinstance(handler, GuardedRequestHandler)
        self._open += 1
        if self._open > self.limits.max_connections and not self._close_longest_waiting():
            self._warn(
                "connection limit of %d reached, every connection busy: refusing new ones",
            )
            handler.refuse()
            return
        self.waiting(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._open -= 1
        if isinstance(handler, GuardedRequestHandler):
            self._waiting.pop(handler, None)

    def waiting(self, handler: GuardedRequestHandler) -> None:
        self._waiting.pop(handler, None)
        self._waiting[handler] = None

    def busy(self, handler: GuardedRequestHandler) -> None:
        self._waiting.pop(handler, None)

    def _close_longest_waiting(self) -> bool:
        while self._waiting:
            handler = next(iter(self._waiting))
            del self._waiting[handler]
            if handler.awaiting_head():
                self._warn(
                    "connection limit of %d reached: closing the connections that waited "
                    "longest for a request"
                )
                handler.force_close()
                return True
        return False

    def _warn(self, message: str) -> None:
        now = self._loop.time()
        if self._warned_at is None or now - self._warned_at > WARN_INTERVAL:
            self._warned_at = now
            log.warning(message, self.limits.max_connections)


class GuardedRequestHandler(RequestHandler):
    """One connection: aiohttp's request handler with a head deadline, a body stall deadline and
    malformed requests answered in the API's JSON."""

    __slots__ = ("_between", "_body", "_body_at", "_body_timer", "_guard", "_head_timer")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the body being received
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0  # when its last byte came
        self._between = True  # between requests: no head complete since the last answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._force_close:
            self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def refuse(self) -> None:
        """Answer 503 before reading anything and close (the connection cap is reached)."""
        if self.transport is not None:
            self.transport.write(REFUSAL)
        self.force_close()

    def awaiting_head(self) -> bool:
        return self._between and not self._messages and self.transport is not None

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # one or more request heads complete
            self._between = False
            self._guard.busy(self)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            body = self._messages[-1][1] if self._messages else None
            if body is not None and not body.is_eof():
                self._body = body
                self._body_at = self._loop.time()
                if self._body_timer is None:
                    self._body_timer = self._loop.call_at(
                        self._body_at + self._guard.limits.body_timeout, self._check_body
                    )
        elif self._body is not None and not self._body.is_eof():
            self._body_at = self._loop.time()
        elif self._between and data and self._head_timer is None:
            self._start_head_timer()  # the first byte of a later request's head

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        # A request the client sent before this answer (pipelined) is handled next, at once.
        self._between = not self._messages
        if self._between and not self._force_close:
            self._guard.waiting(self)
        return answered

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser refused (bad request line, bad header, broken chunking) gets the
        API's JSON error and a debug line, where aiohttp logs a traceback and answers text."""
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, ContentEncodingError):
            # An encoding the parser knows but cannot inflate here (br, zstd: their modules are
            # not installed), refused before any handler runs: what the handlers answer for one
            # they do not read (api/bodies.py), not the parser's advice to install a module.
            named = ENCODING_NAMED.search(str(exc))
            refused = unsupported_encoding(named.group(1) if named else "?", close=True)
            return refused.response(seed=False)
        detail = one_line(message or str(exc or "") or "cannot parse the request")
        log.debug("malformed request from %s: %s", request.remote, detail)
        return ApiError(status, f"malformed request: {detail}", close=True).response(seed=False)

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._guard.limits.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.awaiting_head():
            log.debug("closing a connection whose request head did not come in time")
            self.force_close()

    def _check_body(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            self._body = None
            return
        due = self._body_at + self._guard.limits.body_timeout
        if self._reading_paused or self._buffer_paused:
            due = self._loop.time() + self._guard.limits.body_timeout  # the node is not reading
        if self._loop.time() < due:
            self._body_timer = self._loop.call_at(due, self._check_body)
            return
        log.debug("closing a connection whose request body stalled")
        self._body = None
        self.force_close()

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self._body = None
