"""Write load for the replication bench: wrk at full speed, a paced (open-loop) generator, and a
bulk writer of N distinct keys.

- `run_wrk`: PUT /v1/kv/{key} from wrk as fast as the node answers (the maximum write rate). The
  Lua script is written into the run's directory, so this bench shares no file with bench/run.py.
- The paced generator runs as its own process (`python bench/replication_load.py --rate R ...`),
  so its CPU is not taken from the event loop that times the lag probes. Request i of the run is
  due at start + i/R; a connection that falls behind sends at once, so the node sees rate R as
  long as it keeps up, and the answer says what rate it really got.
- `write_keys`: N distinct keys as fast as the node takes them (loading a node to catch up from).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import string
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

if __package__ in (None, ""):
    # Run as `python bench/replication_load.py`: import the bench package from the checkout.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.replication_http import Connection, HttpError, now
from bench.replication_nodes import BenchError, Fleet

T = TypeVar("T")

RESULT_PREFIX = "REPLICATION_BENCH "
ALPHABET = (string.ascii_letters + string.digits).encode()
WRK_GRACE = 30.0
RETRIES = 3

WRK_PUT_LUA = r"""
-- PUT /v1/kv/{PREFIX}{n} with a VALUE_BYTES body, n random in [0, KEYS). Written by
-- bench/replication_load.py; arguments after `--`: KEYS VALUE_BYTES PREFIX.
local threads = {}
function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

local ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
local prepared = {}
non2xx = 0
sample = ""

function init(args)
   local keys = tonumber(args[1]) or 100000
   local value_bytes = tonumber(args[2]) or 100
   local prefix = args[3] or "tp-"
   math.randomseed(os.time() * 100 + (id or 0))
   local headers = { ["Content-Type"] = "text/plain; charset=utf-8" }
   for i = 1, math.min(keys, 20000) do
      local chars = {}
      for j = 1, value_bytes do
         local c = math.random(#ALPHABET)
         chars[j] = ALPHABET:sub(c, c)
      end
      local key = prefix .. (math.random(keys) - 1)
      prepared[i] = wrk.format("PUT", "/v1/kv/" .. key, headers, table.concat(chars))
   end
end

function request()
   return prepared[math.random(#prepared)]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if sample == "" then sample = string.format("%d %s", status, string.sub(body or "", 1, 200)) end
   end
end

function done(summary, latency, _)
   local bad, first = 0, ""
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      if first == "" then first = thread:get("sample") or "" end
   end
   local e = summary.errors
   io.write(string.format(
      'REPLICATION_BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
         .. '"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"sample":"%s"}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      latency.max, bad, e.connect, e.read, e.write, e.timeout, (first:gsub('[%c"\\]', "?"))))
end
"""


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop (a dependency of shareddb), as the node itself does."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def random_value(rng: random.Random, size: int) -> bytes:
    return bytes(rng.choices(ALPHABET, k=size))


# -- wrk -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkRun:
    command: str
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_command(
    url: str, script: Path, *, connections: int, threads: int, seconds: float, keys: int, prefix: str
) -> list[str]:
    return [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds:g}s",
        "--timeout=10s",
        "--latency",
        f"--script={script}",
        url,
        "--",
        *(str(keys), "100", prefix),
    ]


def run_wrk(fleet: Fleet, url: str, workdir: Path, **options: Any) -> WrkRun:
    """PUTs to `url` from wrk for `seconds`; BenchError on any non-2xx answer or socket error."""
    script = workdir / "replication_put.lua"
    if not script.exists():
        script.write_text(WRK_PUT_LUA)
    cmd = wrk_command(url, script, **options)
    proc = fleet.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=float(options["seconds"]) + WRK_GRACE)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise BenchError(f"wrk did not stop: {' '.join(cmd)}") from exc
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{stdout}{stderr}")
    data = orjson.loads(line[len(RESULT_PREFIX) :])
    errors = {k: data[k] for k in ("connect", "read", "write", "timeout") if data[k]}
    if data["non2xx"] or errors or not data["requests"]:
        raise BenchError(
            f"wrk saw failures: {data['non2xx']} non-2xx (first: {data['sample']!r}), "
            f"socket errors {errors}, {data['requests']} requests: {' '.join(cmd)}"
        )
    seconds = data["duration_us"] / 1e6
    return WrkRun(
        command=" ".join(cmd),
        requests=data["requests"],
        seconds=seconds,
        rate=data["requests"] / seconds,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


# -- bulk writes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkRun:
    keys: int
    seconds: float
    rate: float
    connections: int


async def write_keys(
    url: str, prefix: str, count: int, *, connections: int = 32, value_bytes: int = 100
) -> BulkRun:
    """PUT `prefix`0 .. `prefix`{count-1} (100-byte values) as fast as the node takes them."""
    rng = random.Random(count)
    values = [random_value(rng, value_bytes) for _ in range(1024)]
    next_index = 0
    failures: list[str] = []

    async def worker() -> None:
        nonlocal next_index
        conn = Connection(url)
        try:
            while next_index < count and not failures:
                i = next_index
                next_index += 1
                for attempt in range(RETRIES):
                    try:
                        answer = await conn.put(f"/v1/kv/{prefix}{i}", values[i % len(values)])
                    except HttpError as exc:
                        error = str(exc)
                    else:
                        if answer.status in (200, 201):
                            break
                        error = f"{answer.status} {answer.body[:200]!r}"
                    if attempt == RETRIES - 1:
                        failures.append(f"PUT {prefix}{i}: {error}")
        finally:
            conn.close()

    start = now()
    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = now() - start
    if failures:
        raise BenchError(f"{len(failures)} writes failed; first: {failures[0]}")
    return BulkRun(count, seconds, count / seconds, connections)


# -- the paced generator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacedRun:
    command: str
    target_rate: float
    rate: float  # acknowledged writes per second actually achieved
    sent: int
    failed: int
    seconds: float
    late_fraction: float  # requests sent more than 5 ms after they were due
    p50_ms: float
    p99_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paced_command(url: str, rate: float, seconds: float, connections: int, prefix: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--url", url, "--rate", f"{rate:.0f}", "--seconds", f"{seconds:g}"),
        *("--connections", str(connections), "--prefix", prefix),
    ]


def start_paced(fleet: Fleet, cmd: Sequence[str]) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = fleet.spawn(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc


def finish_paced(proc: subprocess.Popen[str], cmd: Sequence[str], timeout: float) -> PacedRun:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise BenchError(f"the paced load did not stop: {' '.join(cmd)}") from exc
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"the paced load failed ({proc.returncode}): {' '.join(cmd)}\n{stderr}")
    data = orjson.loads(line[len(RESULT_PREFIX) :])
    return PacedRun(command=" ".join(cmd), **data)


async def paced(url: str, rate: float, seconds: float, connections: int, prefix: str) -> dict[str, Any]:
    rng = random.Random()
    values = [random_value(rng, 100) for _ in range(256)]
    latencies: list[float] = []
    late = 0
    failed = 0
    start = now() + 0.05
    total = int(rate * seconds)

    async def worker(first: int) -> None:
        nonlocal late, failed
        conn = Connection(url)
        try:
            for i in range(first, total, connections):
                due = start + i / rate
                wait = due - now()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.005:
                    late += 1
                sent = now()
                try:
                    answer = await conn.put(f"/v1/kv/{prefix}{i}", values[i % len(values)])
                except HttpError:
                    failed += 1
                    continue
                if answer.status in (200, 201):
                    latencies.append(now() - sent)
                else:
                    failed += 1
        finally:
            conn.close()

    await asyncio.gather(*(worker(j) for j in range(connections)))
    elapsed = now() - start
    return {
        "target_rate": rate,
        "rate": len(latencies) / elapsed,
        "sent": total,
        "failed": failed,
        "seconds": elapsed,
        "late_fraction": late / total if total else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Paced PUT load on one shareddb node (used by bench/replication.py): request i "
        "is due at start + i/RATE; prints one REPLICATION_BENCH {json} line at the end."
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="writes per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--prefix", default="paced-")
    args = parser.parse_args(argv)
    result = run_async(paced(args.url, args.rate, args.seconds, args.connections, args.prefix))
    print(RESULT_PREFIX + orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
