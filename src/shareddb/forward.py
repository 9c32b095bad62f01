"""Requests a worker hands to its node process: the worker's side (`Forwarder`) and the node
process's (`ForwardedServer`), over a Unix socket in a directory only this user can enter.

A forwarded request reaches the node's one router as if it had come to the node process directly:
method, request target, headers and body byte for byte (the worker does not inflate bodies, the
node process does, with its limits), and the answer comes back the same way, streamed both ways
(watch streams, dumps, snapshots, long polls). What the Unix socket cannot carry, the worker adds
as two headers only this socket trusts: the client's address (for --peer-allow) and whether its
TLS certificate verified against --tls-ca (for peers under mutual TLS). The worker drops those
headers from what a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from shareddb.api.connections import GuardedServer, Limits
from shareddb.api.errors import ApiError
from shareddb.api.routing import Handler
from shareddb.tls import peer_certified

log = logging.getLogger("shareddb.workers")

FORWARDED_FOR = "X-Shareddb-Worker-Client"
FORWARDED_CERT = "X-Shareddb-Worker-Certified"
OURS = frozenset({FORWARDED_FOR.lower(), FORWARDED_CERT.lower()})
# Headers of one hop (RFC 9110, section 7.6.1), and the body framing the client library redoes.
HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
NO_BODY = frozenset({204, 304})
UNCAPPED = 1 << 30


class ForwardedRequest(web.BaseRequest):
    """A request a worker forwarded: `remote` is the client's address, and `forwarded_certified`
    says whether the client's TLS certificate verified (tls.peer_certified reads it)."""

    ATTRS = web.BaseRequest.ATTRS | frozenset({"forwarded_certified"})

    def __init__(self, *args: Any, certified: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forwarded_certified = certified


class ForwardedServer(GuardedServer):
    """The node process's server on its Unix socket: the node's own router, with the node's
    deadlines and JSON errors, and no cap on connections of its own (each worker holds its
    clients' connections to the cap)."""

    def __init__(self, handler: Handler, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(handler, limits=replace(limits, max_connections=UNCAPPED), **kwargs)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        headers = message.headers
        return ForwardedRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            self._loop,
            remote=headers.get(FORWARDED_FOR, ""),
            certified=headers.get(FORWARDED_CERT) == "1",
        )


class Forwarder:
    """A worker's client of its node process: forwards a request, streams the answer back."""

    def __init__(self, path: str) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=path, limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        await self._session.close()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP and name.lower() not in OURS
        ]
        headers.append((FORWARDED_FOR, request.remote or ""))
        headers.append((FORWARDED_CERT, "1" if peer_certified(request) else "0"))
        body = _body(request) if request.body_exists else None
        url = URL("http://node" + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ClientError as exc:
            log.warning("cannot forward %s %s to the node process: %s", request.method, url.path, exc)
            error = ApiError(503, "the node process is not answering; try again shortly")
            return error.response(seed=url.path.startswith("/nodes/"))
        try:
            return await _relay(request, upstream)
        finally:
            upstream.release()


async def _body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def _relay(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Send the node process's answer to the client as it comes."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if name.lower() not in HOP and name.lower() != "content-length":
            response.headers.add(name, value)
    if upstream.content_length is not None and upstream.status not in NO_BODY:
        response.content_length = upstream.content_length
    if upstream.headers.get("Connection", "").lower() == "close":
        response.force_close()
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, asyncio.IncompleteReadError):
        # The node process ended its answer early (a snapshot that failed half-way, a node
        # shutting down): end the client's connection the same way, so it notices.
        if request.transport is not None:
            request.transport.abort()
        return response
    except ConnectionError:  # the client hung up
        upstream.close()
        return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
