"""Backup and restore of a large store: how fast, and how much memory the node takes meanwhile.

    .venv/bin/python bench/snapshot.py                  # 1,000,000 keys of 100-byte values
    .venv/bin/python bench/snapshot.py --keys 200000    # fewer, to see that memory does not grow

It fills a SQLite store in-process (fast, no HTTP), starts a node on it, saves its snapshot with
`GET /v1/snapshot` while sampling the node's resident memory (RssAnon: the process's own memory,
not the pages of the store file that the page cache maps), then starts a second, empty node and
restores the snapshot into it with `POST /v1/snapshot`, sampled the same way, and checks both
nodes' digests are equal. Not part of CI: it takes a few minutes and ~1 GB of disk.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):
    # Run as `python bench/snapshot.py`: the harness is imported from the checkout's tests/.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tests.harness import NodeProcess, status_bytes

from shareddb.record import Record, make_version
from shareddb.store.sqlite import SQLiteStore, sqlite_path

BATCH = 20_000
MIB = 1024 * 1024


class Peak:
    """Samples a process's RssAnon every 20 ms on a thread while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = status_bytes(pid, "RssAnon") or 0
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, status_bytes(self.pid, "RssAnon") or 0)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def fill(path: Path, keys: int, value_bytes: int) -> None:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()
    try:
        value = "v" * value_bytes
        for start in range(0, keys, BATCH):
            records = [
                Record(f"key-{i:08d}", value, make_version(1 << 40 | i, "bench"))
                for i in range(start, min(start + BATCH, keys))
            ]
            await store.apply(records)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shareddb-snapshot-bench-") as tmp:
        root = Path(tmp)
        data = root / "source"
        data.mkdir()
        started = time.monotonic()
        asyncio.run(fill(sqlite_path(data), args.keys, args.value_bytes))
        print(f"filled {args.keys:,} keys in {time.monotonic() - started:.1f}s")
        source = NodeProcess(data, "source").start()
        target = NodeProcess(root / "target", "target").start()
        file = root / "snapshot.ndjson"
        try:
            timeout = httpx.Timeout(30.0, read=3600.0)
            assert source.proc is not None
            assert target.proc is not None
            with Peak(source.proc.pid) as peak, httpx.Client(timeout=timeout) as http:
                started = time.monotonic()
                with (
                    http.stream("GET", source.url + "/v1/snapshot") as response,
                    open(file, "wb") as out,
                ):
                    response.raise_for_status()
                    for chunk in response.iter_bytes(256 * 1024):
                        out.write(chunk)
                backup_s = time.monotonic() - started
            size = file.stat().st_size
            with Peak(target.proc.pid) as restored, httpx.Client(timeout=timeout) as http:
                started = time.monotonic()
                with open(file, "rb") as body:
                    answer = http.post(target.url + "/v1/snapshot", content=body)
                answer.raise_for_status()
                restore_s = time.monotonic() - started
            same = (
                httpx.get(source.url + "/v1/digest").json()
                == httpx.get(target.url + "/v1/digest").json()
            )
        finally:
            source.cleanup()
            target.cleanup()
        print(f"snapshot: {size / MIB:,.0f} MiB")
        print(
            f"GET  /v1/snapshot: {backup_s:.1f}s, {args.keys / backup_s:,.0f} records/s; node "
            f"RssAnon {peak.before / MIB:.0f} MiB before, {peak.peak / MIB:.0f} MiB at most"
        )
        print(
            f"POST /v1/snapshot: {restore_s:.1f}s, {args.keys / restore_s:,.0f} records/s; node "
            f"RssAnon {restored.before / MIB:.0f} MiB before, {restored.peak / MIB:.0f} MiB at most; "
            f"answer {answer.json()}"
        )
        print(f"digests equal: {same}")


if __name__ == "__main__":
    main()
