"""The mass-expiry section of `make bench`: GET p99 while 100,000 keys expire at once, against the
same GET load on the same node when nothing expires (issue goal: at most 2x).

Time is the real clock. On the SQLite node, after the scenarios' rounds:

1. idle: wrk `kv_get.lua` (the preloaded keys) for the window's length, /metrics sampled meanwhile;
2. load: 100,000 other keys (`expiring-N`, 100-byte values) through `POST /v1/txn`, 1000 puts per
   transaction, each transaction's `ttl` chosen so that every key expires at the same planned
   instant (give or take the half second an integer ttl allows): the window's start plus LEAD;
3. expiring: the same wrk GET load, from that start; the keys expire LEAD seconds into it, and the
   reaper turns them into tombstones in chunks of 1000 through the write pipeline meanwhile.

/metrics is sampled every SAMPLE_EVERY seconds during both windows (and after the second until
the reaper is done): `shareddb_keys` drops as the clock passes the expiry (reads hide an expired
value with or without the reaper), and `shareddb_sequence` rises by one per tombstone the reaper
writes, nothing else writing meanwhile. So the samples show when the reaper started and finished,
relative to the window.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.processes import http_get
from bench.wrk import WrkOptions, WrkResult, run_wrk
from bench.workload import PreloadError, Workload

EXPIRING_KEYS = 100_000
EXPIRING_PREFIX = "expiring-"
TXN_PUTS = 1000  # puts per transaction while loading (the API's maximum)
LOAD_CONCURRENCY = 2  # transactions in flight while loading
LEAD = 2.0  # seconds from the window's start to the expiry
# The load must be over this long before the window starts, so its writes do not count.
QUIET_BEFORE = 1.0
SAMPLE_EVERY = 0.1  # seconds between /metrics samples
REAP_TIMEOUT = 120.0  # seconds after the window the bench waits for the reaper to finish
P99_GOAL = 2.0  # GET p99 while expiring / idle, at most
SCRIPT = "kv_get.lua"


class ExpiryError(Exception):
    """The mass-expiry section could not measure what it is meant to (load too slow, a failure)."""


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall-clock seconds
    keys: int  # shareddb_keys: live keys by the clock
    seq: int  # shareddb_sequence: the node's feed sequence
    took: float  # seconds the node took to answer: a stalled event loop shows here


class Sampler:
    """Polls /metrics on a thread until stopped; one Sample per poll."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = metrics_sample(self.url)
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(SAMPLE_EVERY)


def metrics_sample(url: str) -> Sample | None:
    began = time.monotonic()
    answer = http_get(f"{url}/metrics")
    took = time.monotonic() - began
    if answer is None or answer[0] != 200:
        return None
    found: dict[str, int] = {}
    for line in answer[1].decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("shareddb_keys", "shareddb_sequence"):
            found[name] = int(float(value))
    return Sample(time.time(), found["shareddb_keys"], found["shareddb_sequence"], took)


@dataclass(frozen=True, slots=True)
class Loaded:
    keys: int
    transactions: int
    seconds: float
    # Every key expires in [earliest, latest] (wall-clock seconds): its transaction's ttl added to
    # when the transaction was sent and to when it was answered.
    earliest: float
    latest: float


async def load_expiring(url: str, workload: Workload, keys: int, expire_at: float) -> Loaded:
    """Write `keys` keys with a ttl each, so that all expire at `expire_at` (wall-clock seconds)."""
    rng = random.Random(1)
    batches = [range(start, min(start + TXN_PUTS, keys)) for start in range(0, keys, TXN_PUTS)]
    pending = list(reversed(batches))
    bounds: list[tuple[float, float]] = []
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:

        async def writer() -> None:
            while pending:
                batch = pending.pop()
                sent = time.time()
                ttl = max(1, round(expire_at - sent))
                if sent >= expire_at - LEAD - QUIET_BEFORE:
                    raise ExpiryError(
                        f"loading {keys} expiring keys did not finish in time: raise --expiry-allowance"
                    )
                then = [
                    {
                        "op": "put",
                        "key": f"{EXPIRING_PREFIX}{i}",
                        "value": workload.value(rng),
                        "ttl": ttl,
                    }
                    for i in batch
                ]
                body = orjson.dumps({"then": then})
                headers = {"Content-Type": "application/json"}
                async with session.post(f"{url}/v1/txn", data=body, headers=headers) as r:
                    if r.status != 200:
                        raise PreloadError(f"POST /v1/txn answered {r.status}: {(await r.text())[:200]}")
                bounds.append((sent + ttl, time.time() + ttl))

        await asyncio.gather(*(writer() for _ in range(LOAD_CONCURRENCY)))
    return Loaded(
        keys,
        len(batches),
        time.monotonic() - began,
        min(b[0] for b in bounds),
        max(b[1] for b in bounds),
    )


@dataclass(frozen=True, slots=True)
class Window:
    """One wrk GET run and the /metrics samples taken during it (and after, for the reaper)."""

    start: float  # wall-clock seconds
    end: float
    result: WrkResult
    samples: tuple[Sample, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "seconds": round(self.end - self.start, 3),
            **self.result.to_json(),
            "samples": [
                [round(s.at - self.start, 2), s.keys, s.seq, round(s.took * 1000, 1)]
                for s in self.samples
            ],  # [seconds from the window's start, shareddb_keys, shareddb_sequence, ms to answer]
        }


@dataclass(frozen=True, slots=True)
class Reaped:
    """What the samples say the reaper did, in seconds from the expiring window's start."""

    tombstones: int  # sequence numbers written since the load
    started: float | None  # first sample with the sequence past the load's
    finished: float | None  # first sample with every expiring key a tombstone
    keys_gone: float | None  # first sample where shareddb_keys no longer counts them


@dataclass(frozen=True, slots=True)
class ExpiryResult:
    idle: Window
    expiring: Window
    loaded: Loaded
    reaped: Reaped
    keys_before: int  # shareddb_keys just before the expiring window
    keys_after: int  # at the end
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.expiring.result.p99_ms / self.idle.result.p99_ms

    @property
    def reaper_in_window(self) -> bool:
        r = self.reaped
        length = self.expiring.end - self.expiring.start
        return r.started is not None and r.finished is not None and r.finished <= length

    def to_json(self) -> dict[str, Any]:
        start = self.expiring.start
        return {
            "expiring_keys": self.loaded.keys,
            "load": {
                "transactions": self.loaded.transactions,
                "seconds": round(self.loaded.seconds, 2),
                "expiry_from": round(self.loaded.earliest - start, 3),
                "expiry_to": round(self.loaded.latest - start, 3),
            },
            "reaper": {
                "tombstones": self.reaped.tombstones,
                "started": _round(self.reaped.started),
                "finished": _round(self.reaped.finished),
                "keys_gone": _round(self.reaped.keys_gone),
                "within_window": self.reaper_in_window,
            },
            "keys_before": self.keys_before,
            "keys_after": self.keys_after,
            "p99_ratio": round(self.ratio, 4),
            "goal": f"<= {P99_GOAL:.2f}",
            "met": self.ratio <= P99_GOAL,
            "idle": self.idle.to_json(),
            "expiring": self.expiring.to_json(),
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def measure_window(url: str, workload: Workload, options: WrkOptions, raw: Path) -> Window:
    with Sampler(url) as sampler:
        start = time.time()
        result = run_wrk(url, SCRIPT, workload.lua_args(), options, raw)
        end = time.time()
    return Window(start, end, result, tuple(sampler.samples))


def reaper_timeline(window: Window, seq_loaded: int, keys: int, live: int) -> Reaped:
    """When the sequence started to rise past `seq_loaded` and reached `keys` more, and when
    shareddb_keys fell to `live` (the keys that do not expire)."""
    started = finished = gone = None
    for sample in window.samples:
        at = sample.at - window.start
        if started is None and sample.seq > seq_loaded:
            started = at
        if finished is None and sample.seq >= seq_loaded + keys:
            finished = at
        if gone is None and sample.keys <= live:
            gone = at
    tombstones = window.samples[-1].seq - seq_loaded if window.samples else 0
    return Reaped(tombstones, started, finished, gone)


def run_expiry(
    url: str,
    workload: Workload,
    options: WrkOptions,
    keys: int,
    allowance: float | None,
    workdir: Path,
) -> ExpiryResult:
    """The whole section on the node at `url`, which holds `workload` and nothing that expires.
    `allowance`: seconds from the start of the load to the window's; None: from a probe."""
    first = metrics_sample(url)
    if first is None:
        raise ExpiryError(f"{url}/metrics did not answer")
    live = first.keys
    idle = measure_window(url, workload, options, workdir / "wrk" / "expiry-idle.txt")
    if allowance is None:
        allowance = allowance_for(url, workload, keys)
    window_start = time.time() + allowance
    loaded = asyncio.run(load_expiring(url, workload, keys, window_start + LEAD))
    delay = window_start - time.time()
    if delay > 0:
        time.sleep(delay)
    before = metrics_sample(url)
    if before is None or before.keys != live + keys:
        raise ExpiryError(f"the node counts {before and before.keys} keys, not {live + keys}")
    expiring = measure_window(url, workload, options, workdir / "wrk" / "expiry-expiring.txt")
    # Go on sampling until the reaper is done, so the timeline says when it finished.
    samples = list(expiring.samples)
    deadline = time.monotonic() + REAP_TIMEOUT
    while time.monotonic() < deadline:
        sample = metrics_sample(url)
        if sample is not None:
            samples.append(sample)
            if sample.seq >= before.seq + keys:
                break
        time.sleep(SAMPLE_EVERY)
    expiring = Window(expiring.start, expiring.end, expiring.result, tuple(samples))
    reaped = reaper_timeline(expiring, before.seq, keys, live)
    result = ExpiryResult(idle, expiring, loaded, reaped, before.keys, samples[-1].keys)
    length = expiring.end - expiring.start
    if reaped.finished is None:
        result.notes.append(
            f"the reaper had not tombstoned all {keys} keys {REAP_TIMEOUT:g} s after the window"
        )
    elif not result.reaper_in_window:
        result.notes.append(
            f"the reaper finished {reaped.finished:.1f} s after the window's start, past its end "
            f"({length:.1f} s): raise --expiry-seconds to measure all of its work"
        )
    return result


def summary_lines(result: ExpiryResult) -> list[str]:
    """The section's lines of the printed report."""
    idle, busy = result.idle.result, result.expiring.result
    r, start = result.reaped, result.expiring.start

    def at(value: float | None) -> str:
        return "never" if value is None else f"{value:+.1f} s"

    length = result.expiring.end - start
    return [
        f"  GET load, idle                  {idle.rps:>9,.0f} req/s  p50 {idle.p50_ms:6.2f} ms  "
        f"p99 {idle.p99_ms:7.2f} ms  max {idle.max_ms:7.2f} ms",
        f"  GET load, {result.loaded.keys:,} keys expiring {busy.rps:>9,.0f} req/s  "
        f"p50 {busy.p50_ms:6.2f} ms  p99 {busy.p99_ms:7.2f} ms  max {busy.max_ms:7.2f} ms",
        f"  loaded through {result.loaded.transactions} transactions in "
        f"{result.loaded.seconds:.1f} s; they expire from {at(result.loaded.earliest - start)} to "
        f"{at(result.loaded.latest - start)} into the {length:.1f} s window",
        f"  reaper: first tombstone {at(r.started)}, all {r.tombstones:,} by {at(r.finished)}; "
        f"keys counted {result.keys_before:,} -> {result.keys_after:,} (hidden by the clock at "
        f"{at(r.keys_gone)})",
    ]


def allowance_for(url: str, workload: Workload, keys: int) -> float:
    """Seconds to allow from the start of loading `keys` expiring keys to the window's start:
    from the time one transaction of TXN_PUTS puts takes on this node, with room. The probe
    rewrites preloaded keys (without a ttl), so what the node holds does not change."""
    rng = random.Random(2)
    count = min(TXN_PUTS, workload.keys)
    then = [{"op": "put", "key": workload.key(i), "value": workload.value(rng)} for i in range(count)]

    async def probe() -> float:
        async with aiohttp.ClientSession() as session:
            began = time.monotonic()
            async with session.post(f"{url}/v1/txn", data=orjson.dumps({"then": then})) as r:
                if r.status != 200:
                    raise PreloadError(f"POST /v1/txn answered {r.status}: {(await r.text())[:200]}")
            return time.monotonic() - began

    one = asyncio.run(probe())
    return math.ceil(1.5 * one * keys / count + QUIET_BEFORE)
