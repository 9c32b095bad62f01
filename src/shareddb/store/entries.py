"""How a transaction entry of the changes feed is stored: one blob of its changes (store/plan.py).

Each change is `[seq, key, value, version, expires]`, seq 0 for a record this node did not take
(a newer version was here) but keeps for the nodes that pull from it. The backend marks, as it
reads an entry, which changes are current (their key's row still holds their seq).
"""

from __future__ import annotations

import orjson

from shareddb.record import Record
from shareddb.store.base import Change


def encode_entry(changes: list[Change]) -> bytes:
    return orjson.dumps(
        [[c.seq, c.record.key, c.record.value, c.record.version, c.record.expires] for c in changes]
    )


def decode_entry(at: int, body: bytes | str) -> list[Change]:
    """The changes of the entry at sequence `at`, not yet marked current."""
    return [
        Change(seq, Record(key, value, version, expires), at)
        for seq, key, value, version, expires in orjson.loads(body)
    ]
