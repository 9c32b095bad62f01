"""The asyncio client: `AsyncClient`, and `AsyncWatch`, the async iterator of a watch.

Requests and answers are those of calls.py; this module only sends them (httpx) and moves to the
next node URL when one cannot be reached.
"""

from __future__ import annotations

import asyncio
import builtins
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from shareddb.client import calls
from shareddb.client.calls import Call, Nodes, describe, nobody_answered
from shareddb.client.errors import Unavailable
from shareddb.client.model import (
    Condition,
    Entry,
    Event,
    Operation,
    Page,
    TxnResult,
    Written,
    txn_document,
)
from shareddb.client.sync import DEFAULT_URL, GIVE_UP_AFTER, IDLE_TIMEOUT, PAGE
from shareddb.client.watch import WatchState, listing_seq, refused, stream_check
from shareddb.tls import StrPath

T = TypeVar("T")


class AsyncClient:
    """`Client` for asyncio, with the same methods as coroutines: `async with AsyncClient(urls) as
    db: await db.put("k", "v")`."""

    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        ca: StrPath | None = None,
        cert: StrPath | None = None,
        key: StrPath | None = None,
    ) -> None:
        self._nodes = Nodes(urls)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify = calls.tls_verify(verify, ca, cert, key)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, verify=verify, trust_env=False)

    @property
    def url(self) -> str:
        """The node the next request goes to first."""
        return self._nodes.order()[0]

    @property
    def urls(self) -> builtins.list[str]:
        return list(self._nodes.urls)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T], only: str | None = None) -> T:
        urls = [only] if only else self._nodes.order()
        failures: builtins.list[str] = []
        for url in urls:
            try:
                response = await self._http.request(
                    call.method,
                    url + call.path,
                    params=call.params,
                    headers=call.headers,
                    content=call.content,
                    timeout=call.timeout(self.timeout),
                )
            except httpx.TransportError as exc:
                if error := calls.transport_failure(call, url, exc):
                    raise error from None
                failures.append(f"{url}: {describe(exc)}")
                continue
            if calls.retry_elsewhere(call, response) and url != urls[-1]:
                failures.append(f"{url}: unavailable")
                continue
            if only is None:
                self._nodes.answered(url)
            return call.read(response, url)
        raise nobody_answered(urls, failures)

    # -- keys -------------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """The key's value, version and expiry; None when it does not exist."""
        return await self._send(calls.get(key))

    async def put(
        self,
        key: str,
        value: str,
        *,
        if_version: str | None = None,
        if_absent: bool = False,
        ttl: int | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> Written:
        """Store `value`. `if_version`: only if the key is live at that version; `if_absent`: only
        if it does not exist (else PreconditionFailed, nothing written). `ttl`: seconds until it
        expires. `w`: answer once N nodes hold it, waiting up to `timeout` seconds (else Timeout,
        the write is kept)."""
        return await self._send(
            calls.put(
                key, value, if_version=if_version, if_absent=if_absent, ttl=ttl, w=w, timeout=timeout
            )
        )

    async def delete(
        self,
        key: str,
        *,
        if_version: str | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> str | None:
        """Delete `key` (NotFound when it does not exist; PreconditionFailed when `if_version` is
        given and the key is not live at it); the delete's version."""
        return await self._send(calls.delete(key, if_version=if_version, w=w, timeout=timeout))

    async def list(
        self, prefix: str = "", *, after: str | None = None, limit: int | None = None
    ) -> Page:
        """One page of the live keys under `prefix`, in key order, after the key `after`."""
        return await self._send(calls.listing(prefix, after, limit))

    async def items(self, prefix: str = "", *, page: int = PAGE) -> AsyncIterator[Entry]:
        """Every live key under `prefix`, in key order, following the listing's pages."""
        after: str | None = None
        while True:
            found = await self.list(prefix, after=after, limit=page)
            for entry in found.entries:
                yield entry
            if found.next is None:
                return
            after = found.next

    async def txn(
        self,
        if_: Sequence[Condition] = (),
        then: Sequence[Operation] = (),
        *,
        w: int | None = None,
        timeout: float | None = None,
    ) -> builtins.list[TxnResult]:
        """Apply every operation of `then` in one atomic commit if every condition of `if_` holds
        (else PreconditionFailed listing each failed condition, nothing written); `w` and `timeout`
        as for `put`."""
        document = txn_document(builtins.list(if_), builtins.list(then))
        return await self.txn_json(document, w=w, timeout=timeout)

    async def txn_json(
        self, document: Mapping[str, Any], *, w: int | None = None, timeout: float | None = None
    ) -> builtins.list[TxnResult]:
        """A transaction already in its JSON form `{"if": [...], "then": [...]}`."""
        return await self._send(calls.txn(document, w=w, timeout=timeout))

    def watch(
        self,
        prefix: str = "",
        *,
        key: str | None = None,
        since: int | None = None,
        relist: bool = True,
        idle_timeout: float = IDLE_TIMEOUT,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> AsyncWatch:
        """The changes to keys under `prefix` (or to one `key`), from now or after `since` (a seq
        of the node first asked), as an iterator of Events that reconnects by itself (see
        shareddb.client.watch for what it does when it must move to another node). With
        `relist=False` it never moves and raises Gone when the node cannot resume it."""
        state = WatchState(prefix, key, since, relist=relist, give_up_after=give_up_after)
        return AsyncWatch(self, state, idle_timeout)

    # -- the cluster ------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._send(calls.document("/health"))

    async def cluster(self) -> dict[str, Any]:
        return await self._send(calls.document("/v1/cluster"))

    async def digest(self, *, buckets: bool = False) -> dict[str, Any]:
        return await self._send(calls.document("/v1/digest", {"buckets": "1"} if buckets else None))

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        return await self._send(calls.bucket_versions(bucket))

    async def leave(self, node_id: str | None = None) -> None:
        """The node at `url` leaves the cluster, or (with `node_id`) marks another member as left."""
        await self._send(calls.leave(node_id), only=self.url if node_id is None else None)


class AsyncWatch:
    """The events of a watch: `async with db.watch("app/") as events: async for e in events:`.
    It connects on entering the `async with` (or at the first `anext()`): a watch without `since` sees
    the changes from then on. `url` is the node it streams from, `seq` the last position
    delivered there."""

    def __init__(self, client: AsyncClient, state: WatchState, idle_timeout: float) -> None:
        self._client = client
        self._state = state
        self._timeout = httpx.Timeout(client.timeout, read=idle_timeout)
        self.url = client.url
        self._pending: deque[Event] = deque()
        self._stream: AsyncExitStack | None = None
        self._sse: AsyncGenerator[ServerSentEvent, None] | None = None
        self._closed = False

    @property
    def seq(self) -> int | None:
        return self._state.seq

    async def open(self) -> AsyncWatch:
        """Connect now, if not connected yet."""
        while self._sse is None and not self._pending:
            await self._connect()
        return self

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                return self._pending.popleft()
            if self._sse is None:
                await self._connect()
                continue
            try:
                sse = await anext(self._sse)
            except StopAsyncIteration:
                await self._failed(streaming=True, why="the node ended the stream")
                continue
            except httpx.TransportError as exc:
                await self._failed(streaming=True, why=describe(exc))
                continue
            if event := self._state.event(sse, self.url):
                return event

    async def __aenter__(self) -> AsyncWatch:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect; the iteration ends."""
        self._closed = True
        await self._drop()

    async def _drop(self) -> None:
        sse, stream, self._sse, self._stream = self._sse, self._stream, None, None
        with suppress(httpx.TransportError):
            if sse is not None:
                await sse.aclose()
            if stream is not None:
                await stream.aclose()

    async def _connect(self) -> None:
        """One attempt to open the stream (listing first when the watch must start over)."""
        state, fresh = self._state, self._state.must_relist
        try:
            if fresh:
                self._pending.extend(await self._relist())
            elif state.seq is None:
                now = await self._client._send(
                    calls.listing(state.list_prefix(), None, 1), only=self.url
                )
                state.start_at(listing_seq(now, self.url))
            async with AsyncExitStack() as stack:
                source = await stack.enter_async_context(
                    aconnect_sse(
                        self._client._http,
                        "GET",
                        self.url + "/v1/watch",
                        params=state.params(),
                        headers=state.headers(),
                        timeout=self._timeout,
                    )
                )
                response = source.response
                if response.status_code == 200:
                    stream_check(response, self.url)
                    self._sse, self._stream = source.aiter_sse(), stack.pop_all()
                    state.connected()
                    return
                await response.aread()
                refused(state, response, self.url, fresh=fresh)
        except (httpx.TransportError, Unavailable) as exc:
            await self._failed(streaming=False, why=describe(exc))

    async def _failed(self, *, streaming: bool, why: str) -> None:
        await self._drop()
        nodes = self._client._nodes
        self.url = self._state.failed(
            self.url, nodes, streaming=streaming, why=why, now=time.monotonic()
        )
        await asyncio.sleep(self._state.delay())

    async def _relist(self) -> builtins.list[Event]:
        state, entries = self._state, builtins.list[Entry]()
        first = await self._client._send(
            calls.listing(state.list_prefix(), None, state.first_page(PAGE)), only=self.url
        )
        page = first
        while True:
            entries += page.entries
            if page.next is None or state.key is not None:
                break
            page = await self._client._send(
                calls.listing(state.list_prefix(), page.next, PAGE), only=self.url
            )
        return state.relisted(entries, listing_seq(first, self.url))
