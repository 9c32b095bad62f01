"""Writing and looking up many rows in few SQLite steps.

The writer thread holds the GIL between SQLite calls and releases it inside each one: every
`sqlite3_step` is a release and a retake, and while the event loop is busy a retake waits for the
loop to let go. `executemany` steps once per row, so a batch of N writes cost about 2N + 15 hand-offs
of the GIL and its commit took several times its own CPU time. Here a batch's rows go in as a few
multi-row statements (one step each) and its lookup comes back as one JSON document (one step): a
batch costs a handful of hand-offs whatever its size.

Statements are cached by their text (the connection's statement cache), so the rows go in chunks
whose sizes are powers of two: at most one statement per size and kind is ever prepared.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from functools import cache
from typing import Any

import orjson

from shareddb.store.plan import Stored

RANGE_LOOKUP = 2000  # keys of a batch from which a lookup tries one range read
CHUNK = 256  # rows per statement at most: 6 columns x 256 stays far below SQLite's 32,766 variables


def chunks(rows: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """`rows` cut into chunks of CHUNK, then of decreasing powers of two (13 = 8 + 4 + 1)."""
    start, left = 0, len(rows)
    while left:
        size = CHUNK if left >= CHUNK else 1 << (left.bit_length() - 1)
        yield rows[start : start + size]
        start += size
        left -= size


@cache
def _values(width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * count)


def insert_rows(
    db: sqlite3.Connection, head: str, width: int, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """Run `head VALUES (?, ...), (?, ...) tail` over `rows` (each of `width` values) in order,
    one step per chunk. Rows later in `rows` act after earlier ones, as with `executemany`."""
    for part in chunks(rows):
        db.execute(f"{head} VALUES {_values(width, len(part))} {tail}", [v for row in part for v in row])


def lookup(db: sqlite3.Connection, keys: Collection[str]) -> Stored:
    """The stored (live, version, expires) of each of `keys` that exists, one step per chunk."""
    found: Stored = {}
    if len(keys) >= RANGE_LOOKUP and isinstance(keys, set | frozenset):
        # Many keys (a chunk of a bulk copy: a run of neighbouring keys): one read along the key
        # index from the least to the greatest, unless that range holds many other keys.
        low, high = min(keys), max(keys)
        rows = db.execute(_RANGE, (low, high, 2 * len(keys) + 1)).fetchall()
        if len(rows) <= 2 * len(keys):
            for key, live, version, expires in rows:
                if key in keys:
                    found[key] = (bool(live), version, expires)
            return found
    pending = list(keys)
    for part in chunks(pending):
        (doc,) = db.execute(_LOOKUP.format(marks=_marks(len(part))), part).fetchone()
        for key, live, version, expires in orjson.loads(doc):
            found[key] = (bool(live), version, expires)
    return found


@cache
def _marks(count: int) -> str:
    return ", ".join("?" * count)


_RANGE = (
    "SELECT key, value IS NOT NULL, version, expires FROM kv "
    "WHERE key >= ? AND key <= ? ORDER BY key LIMIT ?"
)
_LOOKUP = (
    "SELECT json_group_array(json_array(key, value IS NOT NULL, version, expires)) "
    "FROM kv WHERE key IN ({marks})"
)
