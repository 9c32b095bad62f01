"""Watch streams held open against a node while it is measured (GET /v1/watch), and the delay from a
write to its event.

Run as a process (`python bench/watchers.py URL N KEYS`), it opens N watches, each on one key of
the data set (`key-0`, `key-K/N`, ...), reads every event they get, logs `watching N` once all are
open, and runs until SIGTERM: the `watched_put` scenario runs wrk while it does. `measure_delay`
runs in the bench process itself: with the same watches open, it writes at a fixed rate and times
each write's event at a watch of every key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.processes import STOP_TIMEOUT, Fleet
from bench.workload import Workload

READY = "watching"
OPEN_CONCURRENCY = 100
OPEN_TIMEOUT = 120.0
LATE_EVENTS = 10.0  # seconds to wait for events after the last write was answered


async def _drain(response: aiohttp.ClientResponse) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async for _ in response.content.iter_any():
            pass


async def open_watches(
    session: aiohttp.ClientSession, url: str, count: int, workload: Workload
) -> list[asyncio.Task[None]]:
    """`count` watches, each on one key spread over the data set, each read by a task of its own
    (whose cancellation closes it). Returns once every one is open."""
    step = max(1, workload.keys // max(1, count))
    semaphore = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(index: int) -> asyncio.Task[None]:
        async with semaphore:
            params = {"key": workload.key((index * step) % workload.keys)}
            response = await session.get(f"{url}/v1/watch", params=params)
            if response.status != 200:
                raise RuntimeError(f"watch answered {response.status}: {await response.text()}")
            return asyncio.create_task(_drain(response))

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )


async def hold(url: str, count: int, workload: Workload) -> None:
    """Hold `count` watches open until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with _session() as session:
        tasks = await open_watches(session, url, count, workload)
        print(f"{READY} {count}", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Delay:
    """Milliseconds from a write to its event at a watch of every written key."""

    writes: int
    rate: float  # writes per second asked for
    achieved: float  # writes per second sent
    p50_ms: float  # from sending the write (an upper bound on commit -> delivery)
    p99_ms: float
    max_ms: float
    p99_after_ack_ms: float  # from the write's answer (a lower bound: it may come after its event)
    missing: int  # writes whose event never came


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def measure_delay(
    url: str, watchers: int, workload: Workload, rate: float, seconds: float
) -> Delay:
    """With `watchers` watches open, PUT `rate` writes per second for `seconds` over the data set
    (each on time, not waiting for the one before) and time each one's event at a watch of every
    key of the data set."""
    total = int(rate * seconds)
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}
    arrived: dict[int, float] = {}
    async with _session() as session:
        tasks = await open_watches(session, url, watchers, workload)
        params = {"prefix": workload.key_prefix}
        timer = await session.get(f"{url}/v1/watch", params=params)

        every_event = asyncio.Event()

        async def read_events() -> None:
            async for line in timer.content:
                if line.startswith(b"data: "):
                    written = orjson.loads(line[6:])["value"]
                    arrived.setdefault(int(written.partition(":")[0]), time.monotonic())
                    if len(arrived) == total:
                        every_event.set()

        reader = asyncio.create_task(read_events())

        async def write(index: int) -> None:
            key = workload.key(index % workload.keys)
            body = f"{index}:".ljust(workload.value_bytes, "x")
            sent[index] = time.monotonic()
            async with session.put(f"{url}/v1/kv/{key}", data=body) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"PUT answered {response.status}")
            acked[index] = time.monotonic()

        writes: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for index in range(total):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writes.append(asyncio.create_task(write(index)))
        await asyncio.gather(*writes)
        elapsed = time.monotonic() - start
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(every_event.wait(), LATE_EVENTS)
        reader.cancel()
        timer.close()
        for task in [*tasks, reader]:
            task.cancel()
        await asyncio.gather(*tasks, reader, return_exceptions=True)
    from_send = [(arrived[i] - sent[i]) * 1000 for i in arrived]
    from_ack = [(arrived[i] - acked[i]) * 1000 for i in arrived if i in acked]
    return Delay(
        writes=total,
        rate=rate,
        achieved=total / elapsed,
        p50_ms=_percentile(from_send, 0.50),
        p99_ms=_percentile(from_send, 0.99),
        max_ms=max(from_send, default=float("nan")),
        p99_after_ack_ms=_percentile(from_ack, 0.99),
        missing=total - len(arrived),
    )


@contextlib.contextmanager
def watching(fleet: Fleet, url: str, count: int, workload: Workload, log: Path) -> Iterator[None]:
    """`count` watch streams held open on `url` by a process of their own (none for 0), from
    when they are all open until the block ends."""
    if count <= 0:
        yield
        return
    cmd = [sys.executable, str(Path(__file__).resolve()), url, str(count), str(workload.keys)]
    server = fleet.start("watchers", cmd, log)
    try:
        server.wait_until(lambda: READY in server.new_log(), OPEN_TIMEOUT, f"{count} watch streams")
        yield
    finally:
        server.signal_group(signal.SIGTERM)
        assert server.proc is not None
        try:
            server.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.signal_group(signal.SIGKILL)
            server.proc.wait()
        if server.proc.returncode == 0 and not server.complaints():
            fleet.servers.remove(server)  # one per run of the scenario: report only those that failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/watchers.py", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("keys", type=int, help="keys of the data set the watches spread over")
    args = parser.parse_args(argv)
    asyncio.run(hold(args.url, args.count, Workload(keys=args.keys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
