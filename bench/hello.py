"""The ceiling: a bare aiohttp hello-world server, the fastest a shareddb node's HTTP layer could be.

Same stack as a node (aiohttp on uvloop, no access log) with nothing behind it. Run it with
`python bench/hello.py [--host H] [--port 0]`; once bound it prints `listening on http://H:PORT`,
and SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        print(f"listening on http://{host}:{runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a shareddb dependency on Linux
        asyncio.run(serve(args.host, args.port))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
