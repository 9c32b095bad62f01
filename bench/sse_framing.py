"""What framing Server-Sent Events costs the server: aiohttp-sse's `send` against writing events
encoded once (what GET /v1/watch does), on aiohttp's `StreamResponse`.

    .venv/bin/python bench/sse_framing.py [--events N] [--watchers W]

A server process streams N events, each to W streams at once (a change that W watchers match),
first with aiohttp-sse (`EventSourceResponse.send`, which formats every event for every stream),
then as bytes encoded once per event and written to every stream. Its CPU time per delivered event
is measured from inside it (time.process_time), so the client's share does not count.
Needs aiohttp-sse installed (`pip install aiohttp-sse`); it is not a dependency of shareddb.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)


def _event(seq: int) -> tuple[str, bytes]:
    data = orjson.dumps(
        {"key": f"key-{seq}", "value": "x" * 100, "version": f"{seq:016x}-n1", "seq": seq}
    ).decode()
    encoded = f"id: {seq}\nevent: put\ndata: {data}\n\n".encode()
    return data, encoded


async def _serve(kind: str, events: int, watchers: int, port: int) -> float:
    """Stream to `watchers` clients; returns server CPU seconds per delivered event."""
    from aiohttp_sse import EventSourceResponse

    ready = asyncio.Event()
    connected: list[web.StreamResponse] = []
    done = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response: web.StreamResponse
        if kind == "aiohttp-sse":
            response = EventSourceResponse()
        else:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        connected.append(response)
        if len(connected) == watchers:
            ready.set()
        await done.wait()
        return response

    server = web.Server(handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()

    async def read(session: aiohttp.ClientSession) -> int:
        got = 0
        async with session.get(f"http://127.0.0.1:{port}/") as r:
            async for line in r.content:
                if line.startswith(b"id: "):
                    got += 1
                    if got == events:
                        return got
        return got

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        readers = [asyncio.create_task(read(session)) for _ in range(watchers)]
        await ready.wait()
        cpu = 0.0
        for seq in range(1, events + 1):
            data, encoded = _event(seq)
            began = time.process_time()
            for response in connected:
                if isinstance(response, EventSourceResponse):
                    await response.send(data, id=str(seq), event="put")
                else:
                    await response.write(encoded)
            cpu += time.process_time() - began
        await asyncio.gather(*readers)
    done.set()
    await runner.cleanup()
    return cpu / (events * watchers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/sse_framing.py", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--watchers", type=int, default=1)
    parser.add_argument("--port", type=int, default=18765)
    args = parser.parse_args(argv)
    for kind in ("aiohttp-sse", "encoded once", "aiohttp-sse", "encoded once"):
        per_event = asyncio.run(_serve(kind, args.events, args.watchers, args.port))
        print(f"{kind:<13} {per_event * 1e6:6.2f} us of server CPU per delivered event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
