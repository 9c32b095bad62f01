"""A real Server-Sent Events client on a node's GET /v1/watch (httpx with httpx-sse), reading in the
background while a test writes: the one way tests watch a node."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str  # put or delete
    key: str
    value: str | None
    version: str
    seq: int
    expires: str | None


@dataclass
class Watch:
    """One watch stream. `open()` answers the status; on 200 the events collect in `events`."""

    client: httpx.AsyncClient
    url: str
    params: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    status: int = 0
    body: Any = None  # the JSON error of a refused watch
    ended: bool = False  # the node ended the stream
    # Cleared: the client reads nothing past the response headers until it is set, as a client
    # too slow to keep up.
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _response: httpx.Response | None = None

    def __post_init__(self) -> None:
        self.paused.set()

    async def open(self) -> int:
        request = self.client.build_request(
            "GET", f"{self.url}/v1/watch", params=self.params, headers=self.headers
        )
        response = await self.client.send(request, stream=True)
        self.status = response.status_code
        if self.status != 200:
            self.body = orjson.loads(await response.aread())
            await response.aclose()
            return self.status
        self._response = response
        self._task = asyncio.create_task(self._read(EventSource(response)))
        return self.status

    async def _read(self, source: EventSource) -> None:
        await self.paused.wait()
        with contextlib.suppress(httpx.HTTPError):
            async for sse in source.aiter_sse():
                if not sse.data:
                    # A blank line after a comment (`: ping`): the SSE spec dispatches no event
                    # when the data buffer is empty, but httpx-sse 0.4 does once it has an id.
                    continue
                data = orjson.loads(sse.data)
                self.events.append(
                    Event(
                        int(sse.id),
                        sse.event,
                        data["key"],
                        data["value"],
                        data["version"],
                        data["seq"],
                        data["expires"],
                    )
                )
        self.ended = True

    @property
    def last_id(self) -> int:
        return self.events[-1].id

    def state(self, start: dict[str, tuple[str | None, str]] | None = None) -> dict[str, str]:
        """Key -> value after applying the events, by version, over `start` (key -> (value,
        version), as a listing shows it); deleted keys left out."""
        state = dict(start or {})
        for event in self.events:
            held = state.get(event.key)
            if held is None or event.version > held[1]:
                state[event.key] = (event.value, event.version)
        return {key: value for key, (value, _) in state.items() if value is not None}

    async def close(self) -> None:
        """Hang up, as a client that leaves does."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._response is not None:
            await self._response.aclose()


async def open_watch(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None, **params: str
) -> Watch:
    """A watch of `url` with query `params` (prefix, key, since), open and reading."""
    watch = Watch(client, url, params, headers or {})
    await watch.open()
    return watch
