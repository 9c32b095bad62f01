"""The Redis store's index of keys by digest bucket (`bkt`; the layout is in store/redis_scripts.py):
listing one bucket, and building the index of a store made before it."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shareddb.store.redis_replies import decode_head, hash_items
from shareddb.store.redis_scripts import BUCKET, Keys, bucket_member, bucket_prefix

log = logging.getLogger("shareddb.store")

PAGE = 1000  # keys a listing reads per script call
INDEX_CHUNK = 10_000  # keys per command while building the index

Execute = Callable[..., Awaitable[Any]]
ReadScript = Callable[[str, Sequence[bytes], Sequence[object]], Awaitable[Any]]


async def list_bucket(read_script: ReadScript, keys: Keys, bucket: int) -> dict[str, str]:
    """Key -> version of every key in `bucket`: pages of its lex range of `bkt` by cursor, each
    read atomically with the versions, so a key held throughout the listing is in it once."""
    found: dict[str, str] = {}
    low = b"[" + bucket_prefix(bucket)
    high = b"(" + bucket_prefix(bucket + 1)
    while True:
        flat = await read_script(BUCKET, [keys.bkt, keys.ver], [low, high, PAGE])
        for i in range(0, len(flat), 2):
            if flat[i + 1]:
                key = bytes(flat[i])[2:].decode("utf-8")
                found[key] = decode_head(bytes(flat[i + 1])[1:])[0]
        if len(flat) < 2 * PAGE:
            return found
        low = b"(" + bytes(flat[-2])


async def build_index(execute: Execute, keys: Keys) -> None:
    """Build `bkt` from `ver`, a chunk of keys per command, for a store made before it (formats 1
    and 2). Done again from nothing on every open until the store is marked with the current
    format: a build cut off half way, or a store an older shareddb wrote to since, is rebuilt."""
    started = time.monotonic()
    log.info("indexing the keys of a store made by an older shareddb by digest bucket (once)")
    await execute("DEL", keys.bkt)
    cursor = 0
    while True:
        cursor, items = await execute("HSCAN", keys.ver, cursor, "COUNT", INDEX_CHUNK)
        members = [bucket_member(bytes(key)) for key, _ in hash_items(items)]
        if members:
            await execute("ZADD", keys.bkt, *(x for m in members for x in (0, m)))
        if int(cursor) == 0:
            break
    log.info("digest bucket index built in %.1f s", time.monotonic() - started)
