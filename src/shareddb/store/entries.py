"""Transaction entries of the changes feed: how they are stored and how the feed serves them.

An entry is stored as the list of its keys, each with the sequence number this node gave the
transaction's write of it (0 when this node did not take it: it held a newer version):
`[[seq, key], ...]`. It lives as long as one of the rows it covers (rows whose `txn` is its seq)
is there. The feed never serves the values a transaction wrote from the entry, but the current
rows of its keys (`serve_entry`): a row that has been written again since is served at its
newer state (never an older state a later write or a purged deletion has replaced), and an entry
covering that newer row comes along whole. docs/design.md, "Transactions", says why.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from shareddb.record import Record
from shareddb.store.base import Change

# A row as the feed needs it: value, version, seq, expires, txn (0, or the entry covering it).
FeedRow = tuple[str | None, str, int, int | None, int]


def encode_entry(changes: list[Change]) -> bytes:
    return orjson.dumps([[c.seq, c.record.key] for c in changes])


def decode_entry(body: bytes | str) -> list[tuple[int, str]]:
    return [(seq, key) for seq, key in orjson.loads(body)]


def serve_entry(
    at: int,
    since: int,
    items_of: Callable[[int], list[tuple[int, str]]],
    row_of: Callable[[str], FeedRow | None],
) -> list[Change]:
    """The changes the feed serves for the entry at `at` to a reader that holds the feed up to
    `since` (`Store.changes_since`'s `known`), read from one consistent state: the current row of
    each of its keys, and, whole, every entry that covers one of those rows (and so on). A change
    is `current` when it is the transaction's own write, still in place; a watcher skips the others
    (they come again later in the feed, at their own sequence numbers).

    A row the feed serves at or below `since` (at its own sequence, or with the entry covering it)
    is `known`: the reader holds it already, or a newer state of its key, and the entry covering
    it whole. A peer gets only its key (its own entry of the transaction must name every key, for
    the nodes that read the transaction from it), never the row: taken again, a tombstone the
    reader had purged since would come back to it at a new sequence and go round the cluster
    again, each node taking it anew after purging it, so that purges never caught up with it
    (the simulation found this)."""
    changes: list[Change] = []
    worklist = [at]
    seen_entries = {at}
    served: set[str] = set()
    for entry in worklist:  # grows while it is walked
        for seq, key in items_of(entry):
            if key in served:
                continue
            served.add(key)
            row = row_of(key)
            if row is None:  # a deletion that was purged: nothing to serve
                continue
            value, version, row_seq, expires, txn = row
            record = Record(key, value, version, expires)
            if (txn or row_seq) <= since:
                changes.append(Change(row_seq, record, at, current=False, known=True))
                continue
            current = entry == at and seq != 0 and row_seq == seq
            changes.append(Change(row_seq, record, at, current))
            if txn and txn not in seen_entries:
                seen_entries.add(txn)
                worklist.append(txn)
    return changes


def copy_unit(
    row: Change,
    txn: int,
    served: set[int],
    items_of: Callable[[int], list[tuple[int, str]]],
    row_of: Callable[[str], FeedRow | None],
) -> list[Change]:
    """What a bulk copy serves for one row met in key order (store.copy_page): the row alone, or,
    when a transaction entry covers it (`txn`), that entry whole as the feed serves it to a reader
    that holds nothing (`serve_entry` from 0), each change marked with the entry, unless an entry
    of `served` covers it (it came already). Adds the entries it serves to `served`."""
    if not txn:
        return [row]
    if txn in served:
        return []
    changes = serve_entry(txn, 0, items_of, row_of)
    served.add(txn)
    # The entries served along with it (they cover rows of this unit) are not served again either.
    for change in changes:
        found = row_of(change.record.key)
        if found is not None and found[4]:
            served.add(found[4])
    return [Change(c.seq, c.record, txn, c.current) for c in changes]
