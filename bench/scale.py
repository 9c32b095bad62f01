"""Memory and latency as one node's data set grows: 10k, 100k, 1M (and 10M) keys.

For each key count N, a node's SQLite store is filled directly with N keys of 100-byte values
(bench/scale_load.py: the node's own schema and tally code, rows by `executemany`), then one
`shareddb serve` per store is started, all at once, and measured in the same command:

- load: the time the direct load took; open: from the node's spawn until it listens (the start-up
  integrity check reads the whole file);
- GET p50/p99 of random keys over the whole data set (wrk, bench/scripts/scale_get.lua), and the
  ratio of its p99 to that of the smallest N; with how much of the store's file was in the page
  cache right after each GET run (bench/pagecache.py: a read of a page that is not waits for the
  disk, on the node's event loop). `--warm` reads the file into the page cache before each GET
  run, so the figure is the node's and not the disk's, on machines that evict it between runs;
- a listing page, `GET /v1/kv?prefix=k&limit=100&after=K` from a random key (scale_list.lua);
- `/v1/digest` (count and digest), timed one request at a time;
- listing one digest bucket, `GET /v1/digest?bucket=N` (what `shareddb verify` and repairs read),
  timed one request at a time over --bucket-listings buckets spread over the 256, with how many
  keys a bucket held on average;
- memory after those: RssAnon (the process's own memory), SQLite's share of it (what SQLite has
  allocated: its page caches, read by bench/scale_node.py inside the node), and what is left,
  Python's, per key; plus VmRSS and VmHWM, which also count the memory-mapped database file.

The wrk runs alternate between the nodes, round after round (forward, backward, ...), so a change
in the machine's load hits every N alike; each figure is the median over the rounds. Run by hand
or with `make bench-scale-keys` (ARGS="--keys 10000,100000,1000000,10000000" adds 10M; see
bench/README.md, "Keys at scale").
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/scale.py`: import bench and tests from the checkout.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import orjson
from tests.harness.procfs import status_bytes

from bench.pagecache import resident, warm
from bench.processes import Fleet, ServerProcess
from bench.scale_load import load
from bench.wrk import WrkOptions, WrkResult, run_wrk
from shareddb.store.base import DIGEST_BUCKETS
from shareddb.store.sqlite import sqlite_path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
DEFAULT_KEYS = (10_000, 100_000, 1_000_000)
OPEN_TIMEOUT_PER_MILLION = 30.0  # seconds of start-up allowed per million keys (and 30 s more)
MB = 1024 * 1024


@dataclass(slots=True)
class Size:
    """One key count: its store, its node and what was measured of it."""

    keys: int
    data: Path
    load_seconds: float = 0.0
    open_seconds: float = 0.0
    server: ServerProcess | None = None
    url: str = ""
    memory_file: Path = Path()
    get: list[WrkResult] = field(default_factory=list)
    get_cpu_us: list[float] = field(default_factory=list)  # the node's CPU per GET, per round
    resident: list[float] = field(default_factory=list)  # of the file in memory after each GET run
    warm_seconds: list[float] = field(default_factory=list)  # reading it in before a run (--warm)
    listing: list[WrkResult] = field(default_factory=list)
    list_cpu_us: list[float] = field(default_factory=list)
    digest_ms: list[float] = field(default_factory=list)
    bucket_ms: list[float] = field(default_factory=list)  # one listing of a digest bucket each
    bucket_keys: list[int] = field(default_factory=list)  # the keys each listing held
    count: int = 0
    memory: dict[str, int] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return sqlite_path(self.data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", default=",".join(map(str, DEFAULT_KEYS)), help="key counts")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--digests", type=int, default=200, help="/v1/digest requests timed")
    parser.add_argument(
        "--bucket-listings",
        type=int,
        default=32,
        help="GET /v1/digest?bucket=N requests timed, each of another bucket (at most 256)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="read each store's file into the page cache before each GET run",
    )
    parser.add_argument(
        "--data", type=Path, help="keep the stores here (reused by a later run) instead of a temp dir"
    )
    args = parser.parse_args(argv)
    counts = sorted({int(k) for k in args.keys.split(",")})
    options = WrkOptions(connections=args.connections, seconds=args.seconds)
    with tempfile.TemporaryDirectory(prefix="shareddb-scale-") as tmp:
        root = args.data or Path(tmp)
        sizes = [Size(n, root / f"keys-{n}") for n in counts]
        fleet = Fleet()
        try:
            for size in sizes:
                loaded = load(size.data, "scale", size.keys)
                size.load_seconds = loaded.seconds if loaded.added else 0.0
                print(f"{size.keys:>10,} keys loaded in {loaded.seconds:.1f} s", flush=True)
            for size in sizes:
                start(fleet, size, root)
            measure(sizes, options, args)
        finally:
            fleet.close()
    print_report(sizes, options, args)
    save(sizes, args)
    return 0


def start(fleet: Fleet, size: Size, root: Path) -> None:
    size.memory_file = root / f"keys-{size.keys}.sqlite-memory"
    cmd = [
        *(sys.executable, str(HERE / "scale_node.py"), str(size.memory_file)),
        *("serve", "--host", "127.0.0.1", "--port", "0", "--data", str(size.data)),
    ]
    server = fleet.start(f"node-{size.keys}", cmd, root / f"keys-{size.keys}.log")
    port = server.wait_listening(30 + OPEN_TIMEOUT_PER_MILLION * size.keys / 1e6)
    size.open_seconds = time.monotonic() - server.spawned_at
    size.server = server
    size.url = f"http://127.0.0.1:{port}"
    print(f"{size.keys:>10,} keys: node listening after {size.open_seconds:.1f} s", flush=True)


def measure(sizes: list[Size], options: WrkOptions, args: argparse.Namespace) -> None:
    digests, listings = args.digests, args.bucket_listings
    first = WrkOptions(options.threads, options.connections, 1, options.timeout_seconds)
    for size in sizes:
        run_wrk(size.url, "scale_get.lua", [str(size.keys)], first)
    for r in range(args.rounds):
        for size in sizes if r % 2 == 0 else reversed(sizes):
            if args.warm and resident(size.file) < 0.99:
                started = time.monotonic()
                warm(size.file)
                size.warm_seconds.append(time.monotonic() - started)
            size.get.append(timed(size, "scale_get.lua", options, size.get_cpu_us))
            size.resident.append(resident(size.file))
            size.listing.append(timed(size, "scale_list.lua", options, size.list_cpu_us))
            print(
                f"round {r + 1}: {size.keys:>10,} keys  GET p99 {size.get[-1].p99_ms:6.2f} ms "
                f"(file {100 * size.resident[-1]:3.0f}% in memory)  "
                f"list p99 {size.listing[-1].p99_ms:6.2f} ms",
                flush=True,
            )
    for size in sizes:
        size.digest_ms, size.count = time_digests(size.url, digests)
        if size.count != size.keys:
            raise SystemExit(f"{size.url}: /v1/digest counts {size.count}, not {size.keys}")
        size.bucket_ms, size.bucket_keys = time_bucket_listings(size.url, listings)
        print(
            f"{size.keys:>10,} keys: bucket listing p50 {p(size.bucket_ms, 0.5):.2f} ms "
            f"({statistics.mean(size.bucket_keys):,.0f} keys a bucket)",
            flush=True,
        )
        size.memory = memory_of(size)


def timed(size: Size, script: str, options: WrkOptions, cpu_us: list[float]) -> WrkResult:
    """One wrk run against the node of `size`; its CPU time per request goes to `cpu_us`."""
    assert size.server is not None
    before = size.server.cpu_seconds() or 0.0
    result = run_wrk(size.url, script, [str(size.keys)], options)
    used = (size.server.cpu_seconds() or 0.0) - before
    cpu_us.append(used / max(result.requests, 1) * 1e6)
    return result


def time_digests(url: str, requests: int) -> tuple[list[float], int]:
    """Milliseconds per `GET /v1/digest`, one at a time on one connection; and the count."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    times = []
    count = 0
    try:
        for _ in range(requests):
            started = time.perf_counter()
            conn.request("GET", "/v1/digest")
            body = conn.getresponse().read()
            times.append((time.perf_counter() - started) * 1000)
            count = int(orjson.loads(body)["count"])
    finally:
        conn.close()
    return times, count


def time_bucket_listings(url: str, requests: int) -> tuple[list[float], list[int]]:
    """Milliseconds per `GET /v1/digest?bucket=N`, one at a time on one connection, for
    `requests` buckets spread over all of them; and how many keys each listed."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    times, keys = [], []
    count = max(1, min(requests, DIGEST_BUCKETS))
    try:
        for i in range(count):
            bucket = i * DIGEST_BUCKETS // count
            started = time.perf_counter()
            conn.request("GET", f"/v1/digest?bucket={bucket}")
            body = conn.getresponse().read()
            times.append((time.perf_counter() - started) * 1000)
            keys.append(len(orjson.loads(body)["versions"]))
    finally:
        conn.close()
    return times, keys


def memory_of(size: Size) -> dict[str, int]:
    assert size.server is not None
    pid = size.server.pid
    found = {f: status_bytes(pid, f) or 0 for f in ("RssAnon", "RssFile", "VmRSS", "VmHWM")}
    used, high = (int(x) for x in size.memory_file.read_text().split())
    return {**found, "sqlite_used": used, "sqlite_highwater": high}


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_of(results: list[WrkResult], name: str) -> float:
    return float(statistics.median(getattr(r, name) for r in results))


def beyond_sqlite(size: Size) -> int:
    """RssAnon less what SQLite holds: Python's memory (and the libraries')."""
    return size.memory["RssAnon"] - size.memory["sqlite_used"]


def print_report(sizes: list[Size], options: WrkOptions, args: argparse.Namespace) -> None:
    base = sizes[0]
    base_get = median_of(base.get, "p99_ms")
    base_list = median_of(base.listing, "p99_ms")
    print()
    print(
        f"{'keys':>11} {'load s':>7} {'open s':>7} {'GET/s':>7} {'CPU us':>6} {'x base':>6} "
        f"{'GET p50':>8} {'GET p99':>8} "
        f"{'x base':>6} {'in RAM':>6} {'list p99':>9} {'x base':>6} {'CPU us':>6} {'x base':>6} "
        f"{'digest p50/p99':>14} {'bucket p50/p99':>16} {'RssAnon':>8} "
        f"{'SQLite':>7} {'rest':>7} {'B/key':>6} {'B/key+':>6} {'VmHWM':>7}"
    )
    for size in sizes:
        get99 = median_of(size.get, "p99_ms")
        list99 = median_of(size.listing, "p99_ms")
        rest = beyond_sqlite(size)
        growth = "-" if size is base else f"{(rest - beyond_sqlite(base)) / (size.keys - base.keys):.1f}"
        print(
            f"{size.keys:>11,} {size.load_seconds:>7.1f} {size.open_seconds:>7.1f} "
            f"{median_of(size.get, 'rps'):>7,.0f} {statistics.median(size.get_cpu_us):>6.1f} "
            f"{statistics.median(size.get_cpu_us) / statistics.median(base.get_cpu_us):>6.2f} "
            f"{median_of(size.get, 'p50_ms'):>6.2f}ms "
            f"{get99:>6.2f}ms {get99 / base_get:>6.2f} "
            f"{100 * statistics.median(size.resident):>5.0f}% "
            f"{list99:>7.2f}ms {list99 / base_list:>6.2f} "
            f"{statistics.median(size.list_cpu_us):>6.0f} "
            f"{statistics.median(size.list_cpu_us) / statistics.median(base.list_cpu_us):>6.2f} "
            f"{p(size.digest_ms, 0.5):>5.2f}/{p(size.digest_ms, 0.99):>6.2f}ms "
            f"{p(size.bucket_ms, 0.5):>7.1f}/{p(size.bucket_ms, 0.99):>6.1f}ms "
            f"{size.memory['RssAnon'] / MB:>6.1f}MB "
            f"{size.memory['sqlite_used'] / MB:>5.1f}MB {rest / MB:>5.1f}MB "
            f"{rest / size.keys:>6.1f} {growth:>6} {size.memory['VmHWM'] / MB:>5.0f}MB"
        )
    print(
        f"\nwrk: {options.threads} threads, {options.connections} connections, {options.seconds} s "
        f"x {args.rounds} rounds (medians), random keys over the whole set; CPU us: the node's "
        f"CPU time per request (steady on a busy machine, where p99 is not); x base: over the "
        f"figure of {base.keys:,} keys; in RAM: the store's file in the page cache after each GET "
        f"run (median){', read in before each run (--warm)' if args.warm else ''}.\n"
        f"SQLite: what SQLite has allocated (page caches: cache_size -65536 on the writer, "
        f"the default -2000 on each reader); rest = RssAnon - SQLite; "
        f"B/key = rest / keys; B/key+ = growth of rest per key added since {base.keys:,}.\n"
        f"load = direct load into the store (bench/scale_load.py, 0 when reused); open = spawn "
        f"to listening (includes the start-up quick_check).\nbucket: GET /v1/digest?bucket=N, "
        f"{len(base.bucket_ms)} buckets one at a time (about keys / {DIGEST_BUCKETS} keys each)."
    )
    print("command:", " ".join([sys.executable, *sys.argv]))


def save(sizes: list[Size], args: argparse.Namespace) -> None:
    out: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "sizes": []}
    for size in sizes:
        out["sizes"].append(
            {
                "keys": size.keys,
                "load_seconds": size.load_seconds,
                "open_seconds": size.open_seconds,
                "get": [asdict(r) for r in size.get],
                "get_cpu_us": size.get_cpu_us,
                "resident": size.resident,
                "warm_seconds": size.warm_seconds,
                "list_cpu_us": size.list_cpu_us,
                "listing": [asdict(r) for r in size.listing],
                "digest_ms": size.digest_ms,
                "bucket_ms": size.bucket_ms,
                "bucket_keys": size.bucket_keys,
                "memory": size.memory,
            }
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
