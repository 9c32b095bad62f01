"""Writing N keys straight into a node's SQLite store, for the scale bench (bench/scale.py).

A million PUTs over HTTP take minutes and ten million far longer, so the rows go in with
`executemany`, in key order, into a store made by the node's own code (`SQLiteStore.open` creates
the schema and the instance id). Everything a node keeps beside its rows is written as the write
pipeline would: each row's digest bucket, the sequence, the live count, the clock's high-water
mark and the digest buckets (`bucket_of`, `record_hash`), so the node that opens the file serves
a correct `/v1/digest` and bucket listings without reading every row. Versions are this node's
own (its id and incarnation), above anything it wrote.
A store that already holds keys from an earlier load is extended: keys `start` onward are added.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from shareddb.clock import HybridClock
from shareddb.record import incarnation_of, make_origin, make_version
from shareddb.store.base import DIGEST_BUCKETS, bucket_of, record_hash
from shareddb.store.sqlite import SQLiteStore, sqlite_path

CHUNK = 100_000  # rows per executemany
VALUE_BYTES = 100


def key_name(i: int) -> str:
    """The i-th key of the data set; the wrk scripts build the same names."""
    return f"k{i:08d}"


# Values differ from key to key without costing a random draw each: slices of one long text.
_POOL = "".join(chr(97 + (i * 7919) % 26) for i in range(8192))


def value_of(i: int) -> str:
    start = (i * 31) % (len(_POOL) - VALUE_BYTES)
    return _POOL[start : start + VALUE_BYTES]


@dataclass(frozen=True, slots=True)
class Loaded:
    keys: int  # in the store after the load
    added: int
    seconds: float


def stored_keys(data: Path) -> int:
    """How many keys a store made by `load` holds (0 when there is none)."""
    path = sqlite_path(data)
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM meta WHERE name = 'live'").fetchone()
    return int(row[0]) if row else 0


def load(data: Path, node_id: str, keys: int) -> Loaded:
    """Make the store of a node `node_id` in `data` hold keys 0 .. keys-1 (100-byte values)."""
    started = time.perf_counter()
    data.mkdir(parents=True, exist_ok=True)
    (data / "node-id").write_text(node_id + "\n")
    asyncio.run(_create(sqlite_path(data)))
    have = stored_keys(data)
    if have < keys:
        _append(sqlite_path(data), node_id, have, keys)
    return Loaded(max(have, keys), max(0, keys - have), time.perf_counter() - started)


async def _create(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


def _append(path: Path, node_id: str, start: int, end: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # A load, not a node: no fsync per commit; the checkpoint at the end makes it durable.
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -262144")
        db.execute("BEGIN IMMEDIATE")
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if int(meta.get("live", 0)) != start or int(meta.get("seq", 0)) != start:
            raise RuntimeError(f"{path} was not made by this loader alone: start on an empty dir")
        buckets = [0] * DIGEST_BUCKETS
        for bucket, digest in db.execute("SELECT bucket, hash FROM digest"):
            buckets[bucket] = int.from_bytes(digest, "big")
        origin = make_origin(node_id, incarnation_of(meta["instance"]))
        clock = HybridClock()
        clock.restore(int(meta.get("hlc", 0)))
        base = clock.now(time.time_ns() // 1_000_000)
        for first in range(start, end, CHUNK):
            rows = []
            for i in range(first, min(end, first + CHUNK)):
                key = key_name(i)
                version = make_version(base + i - start, origin)
                bucket = bucket_of(key)
                buckets[bucket] ^= record_hash(key, version)
                rows.append((key, value_of(i), version, i + 1, bucket))
            db.executemany(
                "INSERT INTO kv (key, value, version, seq, bucket) VALUES (?, ?, ?, ?, ?)", rows
            )
        hlc = base + end - start
        db.executemany(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
            # Every row went in with its bucket in kv_by_bucket (sqlite_schema.SETTLE).
            [("seq", str(end)), ("live", str(end)), ("hlc", str(hlc)), ("settled", str(end))],
        )
        db.executemany(
            "INSERT OR REPLACE INTO digest (bucket, hash) VALUES (?, ?)",
            [(b, h.to_bytes(16, "big")) for b, h in enumerate(buckets)],
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
