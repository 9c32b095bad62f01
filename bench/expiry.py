"""The mass-expiry section of `make bench`: GET p99 while 100,000 keys expire at once, against the
same GET load on the same node when nothing expires (issue goal: at most 2x).

Time is the real clock. On the SQLite node, after the scenarios' rounds:

1. idle: wrk `kv_get.lua` (the preloaded keys) for --seconds, /metrics sampled meanwhile;
2. load: 100,000 other keys (`expiring-N`, 100-byte values) through `POST /v1/txn`, 1000 puts per
   transaction, each transaction's `ttl` chosen so that every key expires at the same planned
   instant (give or take the half second an integer ttl allows): the window's start plus LEAD;
3. expiring: the same wrk GET load, from that start; the keys expire LEAD seconds into it, and the
   reaper turns them into tombstones in chunks of 1000 through the write pipeline meanwhile. The
   window ends TAIL seconds after the reaper is done (or after --expiry-seconds);
4. idle again, as in 1: the ratio's denominator is the mean p99 of the two idle windows, so a
   change in the machine's load over the section shows (and is split) rather than hidden.

/metrics is sampled every SAMPLE_EVERY seconds during every window (and after the expiring one
until the reaper is done), and how long each answer took shows stalls of the node's event loop.
`shareddb_keys` drops as the clock passes the expiry (reads hide an expired value with or without
the reaper), and `shareddb_sequence` rises by one per tombstone the reaper writes, nothing else
writing meanwhile. So the samples show when the reaper started and finished, relative to the
window.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.report import NOISY_SPREAD, Check
from bench.sampler import SAMPLE_EVERY, Sample, Sampler, metrics_sample
from bench.workload import PreloadError, Workload
from bench.wrk import WrkOptions, WrkResult, run_wrk

EXPIRING_KEYS = 100_000
EXPIRING_PREFIX = "expiring-"
TXN_PUTS = 1000  # puts per transaction while loading (the API's maximum)
LOAD_CONCURRENCY = 2  # transactions in flight while loading
LEAD = 2.0  # seconds from the window's start to the expiry
# The load must be over this long before the window starts, so its writes do not count.
QUIET_BEFORE = 1.0
TAIL = 1.0  # seconds the expiring window goes on once the reaper is done
REAP_TIMEOUT = 120.0  # seconds after the window the bench waits for the reaper to finish
P99_GOAL = 2.0  # GET p99 while expiring / idle, at most
SCRIPT = "kv_get.lua"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The section's options of bench/run.py; `name` selects it in --only."""
    parser.add_argument(
        "--expiry",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the rounds, GET p99 while --expiry-keys keys expire at once vs idle "
        f"(bench/expiry.py, about a minute); default: yes unless --only leaves out {name}",
    )
    parser.add_argument(
        "--expiry-seconds",
        type=int,
        default=60,
        help="the longest the GET window runs while the keys expire (default 60; it ends "
        f"{TAIL:g} s after the reaper is done; the idle windows last --seconds)",
    )
    parser.add_argument(
        "--expiry-keys",
        type=int,
        default=EXPIRING_KEYS,
        help=f"keys that expire at once (default {EXPIRING_KEYS})",
    )
    parser.add_argument(
        "--expiry-allowance",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time from the start of loading the expiring keys to the window's start "
        "(default: estimated from one transaction)",
    )


class ExpiryError(Exception):
    """The mass-expiry section could not measure what it is meant to (load too slow, a failure)."""


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
    idle_after: Window
    loaded: Loaded
    reaped: Reaped
    keys_before: int  # shareddb_keys just before the expiring window
    keys_after: int  # at the end
    notes: list[str] = field(default_factory=list)

    @property
    def idle_p99_ms(self) -> float:
        return (self.idle.result.p99_ms + self.idle_after.result.p99_ms) / 2

    @property
    def ratio(self) -> float:
        return self.expiring.result.p99_ms / self.idle_p99_ms

    @property
    def reaper_in_window(self) -> bool:
        r = self.reaped
        length = self.expiring.end - self.expiring.start
        return r.started is not None and r.finished is not None and r.finished <= length

    def check(self) -> Check:
        met = self.ratio <= P99_GOAL
        name = "get p99 expiring / idle"
        return Check(name, self.ratio, f"<= {P99_GOAL:.2f}", met, "met" if met else "NOT met")

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
            "idle_p99_ms": round(self.idle_p99_ms, 3),
            "p99_ratio": round(self.ratio, 4),
            "goal": f"<= {P99_GOAL:.2f}",
            "met": self.ratio <= P99_GOAL,
            "idle": self.idle.to_json(),
            "expiring": self.expiring.to_json(),
            "idle_after": self.idle_after.to_json(),
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def measure_window(
    url: str,
    workload: Workload,
    options: WrkOptions,
    raw: Path,
    until: Callable[[Sample], bool] | None = None,
) -> Window:
    """wrk's GET load for `options.seconds`, or until TAIL seconds after `until` first holds."""
    with Sampler(url, until, TAIL) as sampler:
        start = time.time()
        result = run_wrk(url, SCRIPT, workload.lua_args(), options, raw, sampler.stop)
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
    idle_options: WrkOptions,
    options: WrkOptions,
    keys: int,
    allowance: float | None,
    workdir: Path,
) -> ExpiryResult:
    """The whole section on the node at `url`, which holds `workload` and nothing that expires.

    The idle window lasts `idle_options.seconds`; the expiring one until TAIL seconds after the
    reaper has tombstoned every expiring key, `options.seconds` at most. `allowance`: seconds from
    the start of the load to the expiring window's; None: estimated from one transaction."""
    first = metrics_sample(url)
    if first is None:
        raise ExpiryError(f"{url}/metrics did not answer")
    live = first.keys
    idle = measure_window(url, workload, idle_options, workdir / "wrk" / "expiry-idle.txt")
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
    raw = workdir / "wrk" / "expiry-expiring.txt"
    expiring = measure_window(url, workload, options, raw, lambda s: s.seq >= before.seq + keys)
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
    after = measure_window(url, workload, idle_options, workdir / "wrk" / "expiry-idle-after.txt")
    result = ExpiryResult(idle, expiring, after, loaded, reaped, before.keys, samples[-1].keys)
    length = expiring.end - expiring.start
    idle_p99 = (idle.result.p99_ms, after.result.p99_ms)
    if abs(idle_p99[0] - idle_p99[1]) > NOISY_SPREAD * result.idle_p99_ms:
        result.notes.append(
            f"expiry: the idle windows' GET p99 differ ({idle_p99[0]:.1f} ms before, "
            f"{idle_p99[1]:.1f} ms after): the machine was busy, the p99 ratio is unreliable; "
            "run again"
        )
    if reaped.finished is None:
        result.notes.append(
            f"expiry: the reaper had not tombstoned all {keys} keys {REAP_TIMEOUT:g} s after the window"
        )
    elif not result.reaper_in_window:
        result.notes.append(
            f"expiry: the reaper finished {reaped.finished:.1f} s after the expiring window's "
            f"start, past its end ({length:.1f} s): raise --expiry-seconds to measure all of it"
        )
    return result


def summary_lines(result: ExpiryResult) -> list[str]:
    """The section's lines of the printed report."""
    r, start = result.reaped, result.expiring.start

    def at(value: float | None) -> str:
        return "never" if value is None else f"{value:+.1f} s"

    def line(name: str, window: Window) -> str:
        w = window.result
        slowest = max((s.took for s in window.samples), default=0.0) * 1000
        return (
            f"  {name:<26} {window.end - window.start:5.1f} s {w.rps:>8,.0f} req/s  p50 "
            f"{w.p50_ms:6.2f} ms  p99 {w.p99_ms:7.2f} ms  max {w.max_ms:7.2f} ms  slowest "
            f"/metrics {slowest:5.0f} ms"
        )

    length = result.expiring.end - start
    return [
        line("GET, idle", result.idle),
        line(f"GET, {result.loaded.keys:,} keys expiring", result.expiring),
        line("GET, idle again", result.idle_after),
        f"  p99 expiring / mean idle p99 ({result.idle_p99_ms:.2f} ms) = {result.ratio:.2f} "
        f"(goal <= {P99_GOAL:.2f})",
        f"  loaded through {result.loaded.transactions} transactions in "
        f"{result.loaded.seconds:.1f} s; they expire from {at(result.loaded.earliest - start)} to "
        f"{at(result.loaded.latest - start)} into the {length:.1f} s expiring window",
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
