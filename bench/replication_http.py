"""A minimal HTTP/1.1 keep-alive client for the replication bench: one request in flight per
connection, no pooling, no redirects.

The lag probes poll GET in a tight loop and the load generators send thousands of PUTs a second
from a machine that also runs three nodes; aiohttp's client costs several times more CPU per
request than this, and every cycle the client burns is one the nodes under test do not get.
It speaks only what a shareddb node answers: a status line, headers, a Content-Length body.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 5.0


class HttpError(Exception):
    """The connection failed or the answer was not one this client can read."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"URL needs a host and a port: {url!r}")
    return parts.hostname, parts.port


class Connection:
    """One keep-alive connection to one node; reopened by the caller after an error."""

    def __init__(self, url: str) -> None:
        self.host, self.port = host_port(url)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            return self._reader, self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._reader, self._writer = reader, writer
        return reader, writer

    async def request(self, method: str, path: str, body: bytes = b"") -> Answer:
        reader, writer = await self._open()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode("ascii") + body)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            status, length = _parse_head(status_and_headers)
            payload = await reader.readexactly(length) if length else b""
        except HttpError:
            self.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise HttpError(f"{method} {path} on {self.host}:{self.port} failed: {exc!r}") from exc
        return Answer(status, payload)

    async def get(self, path: str) -> Answer:
        return await self.request("GET", path)

    async def put(self, path: str, body: bytes) -> Answer:
        return await self.request("PUT", path, body)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _parse_head(head: bytes) -> tuple[int, int]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise HttpError(f"bad status line {lines[0]!r}") from exc
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and value.strip().lower() != "identity":
            raise HttpError(f"transfer-encoding {value.strip()!r} is not supported")
    return status, length


def now() -> float:
    """The one clock every timing in the replication bench uses (monotonic seconds); the harness
    stamps a node's start and listening times with it too."""
    return time.monotonic()
