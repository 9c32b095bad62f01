"""The node's HTTP API in-process: a real Node on SQLite in tmp_path, served by aiohttp's test server.

Requests are sent with the target exactly as written (`encoded=True`), so a test controls every
percent-escape the node sees. `Api.state()` snapshots what the node stores, for the checks that a
refused request changed nothing.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from shareddb.api.app import create_router
from shareddb.clock import wall_millis
from shareddb.config import Settings
from shareddb.node import Node
from shareddb.record import Record
from shareddb.server import MAX_REQUEST_LINE

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
TOKEN = "s3cret"
SMALL_MAX_VALUE = 16
RAW_TIMEOUT = 5.0
LARGE_BODY = 1024 * 1024


def enc(text: str) -> str:
    """Percent-encode every character a URL component could misread (`/` included)."""
    return quote(text, safe="")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class Api:
    """A client of one in-process node; it sends the token the node needs unless told otherwise."""

    def __init__(self, client: TestClient[web.BaseRequest, None], node: Node, token: str | None) -> None:
        self.client = client
        self.node = node
        self.token = token
        server = client.server
        self.host, self.port = server.host, server.port
        self.root = str(server.make_url("/")).rstrip("/")

    def url(self, target: str) -> URL:
        return URL(self.root + target, encoded=True)

    async def request(
        self,
        method: str,
        target: str,
        *,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        """Send `target` as is, with the node's token when it has one and `auth` is true.

        An Authorization header in `headers` replaces the node's token.
        """
        all_headers: dict[str, str] = dict(headers or {})
        if auth and self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        raw = data.encode("utf-8") if isinstance(data, str) else data
        # aiohttp streams a large body from a file object rather than sending it in one write.
        body = io.BytesIO(raw) if raw is not None and len(raw) > LARGE_BODY else raw
        async with self.client.session.request(
            method, self.url(target), data=body, headers=all_headers
        ) as response:
            payload = await response.read()
            return Reply(response.status, response.headers, payload)

    async def get(self, target: str, **kwargs: Any) -> Reply:
        return await self.request("GET", target, **kwargs)

    async def put(self, target: str, data: bytes | str, **kwargs: Any) -> Reply:
        return await self.request("PUT", target, data=data, **kwargs)

    async def delete(self, target: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", target, **kwargs)

    # -- helpers for the two key APIs --------------------------------------------------------

    async def kv_put(self, key: str, value: str, query: str = "") -> Reply:
        return await self.put(f"/v1/kv/{enc(key)}{query}", value)

    async def kv_get(self, key: str) -> Reply:
        return await self.get(f"/v1/kv/{enc(key)}")

    async def seed_update(self, name: str, value: str, extra: str = "") -> Reply:
        return await self.get(f"/nodes/update?name={enc(name)}&value={enc(value)}{extra}")

    async def seed_get(self, name: str) -> Reply:
        return await self.get(f"/nodes/get?name={enc(name)}")

    async def load(self, items: Mapping[str, str]) -> None:
        """Store many keys in one batch, as replication would: faster than one request each."""
        records = [Record(key, value, self.node.next_version()) for key, value in items.items()]
        await self.node.store.apply(records)

    async def dump(self) -> dict[str, str]:
        reply = await self.get("/nodes/dump")
        assert reply.status == 200, reply.body
        data: dict[str, str] = reply.json()["data"]
        return data

    async def state(self) -> tuple[Any, dict[str, str], int]:
        """Everything a refused request must leave alone: digest, live data, sequence."""
        digest = await self.get("/v1/digest")
        assert digest.status == 200, digest.body
        return digest.json(), await self.dump(), self.node.store.last_seq

    async def raw(self, data: bytes) -> Reply:
        """Send bytes on a new connection and read one response."""
        [reply] = await self.raw_exchange(data, responses=1)
        return reply

    async def raw_exchange(self, data: bytes, *, responses: int) -> list[Reply]:
        """Send bytes on one new connection and read that many responses (Content-Length framed).

        Every read has a deadline, so a node that waits for bytes never sent fails the test.
        """
        reader, writer = await asyncio.open_connection(self.host, self.port)
        replies: list[Reply] = []
        try:
            async with asyncio.timeout(RAW_TIMEOUT):
                writer.write(data)
                await writer.drain()
                for _ in range(responses):
                    head = await reader.readuntil(b"\r\n\r\n")
                    status_line, *lines = head.decode("latin-1").split("\r\n")
                    headers: CIMultiDict[str] = CIMultiDict()
                    for line in lines:
                        if line:
                            name, _, value = line.partition(":")
                            headers.add(name.strip(), value.strip())
                    body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                    status = int(status_line.split()[1])
                    replies.append(Reply(status, CIMultiDictProxy(headers), body))
        finally:
            writer.close()
        return replies


@asynccontextmanager
async def running_api(
    data: Path,
    *,
    now: Callable[[], int] = wall_millis,
    host: str = "127.0.0.1",
    **settings: Any,
) -> AsyncIterator[Api]:
    """`now`: the node's wall clock in milliseconds (a test may hold it still and move it);
    `host`: the address it listens on (and that requests come from)."""
    node = await Node.open(Settings(data=data, node_id="n1", **settings), now=now)
    # The real server (server.py) accepts request lines up to MAX_REQUEST_LINE; so does this one.
    server = RawTestServer(create_router(node), host=host)
    try:
        await server.start_server(max_line_size=MAX_REQUEST_LINE)
        client: TestClient[web.BaseRequest, None] = TestClient(server)
        try:
            await client.start_server()
            yield Api(client, node, settings.get("token"))
        finally:
            await client.close()
    finally:
        await server.close()
        await node.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """A node with default settings and no token."""
    async with running_api(tmp_path / "node") as running:
        yield running


@pytest.fixture
async def secured_api(tmp_path: Path) -> AsyncIterator[Api]:
    """A node started with --token s3cret; `request` sends the token unless told otherwise."""
    async with running_api(tmp_path / "node", token=TOKEN) as running:
        yield running


@pytest.fixture
async def small_api(tmp_path: Path) -> AsyncIterator[Api]:
    """A node started with --max-value-bytes 16."""
    async with running_api(tmp_path / "node", max_value_bytes=SMALL_MAX_VALUE) as running:
        yield running
