"""The data set every scenario works on (key names, value size) and preloading it into a server.

The Lua scripts build the same key names from the arguments `lua_args()` passes them, so this
dataclass is the one place the shape of the data set is decided.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

ALPHABET = string.ascii_letters + string.digits
PRELOAD_CONCURRENCY = 64


class PreloadError(Exception):
    """A preload write failed or the node did not end up holding every key."""


@dataclass(frozen=True, slots=True)
class Workload:
    keys: int = 10_000
    value_bytes: int = 100
    key_prefix: str = "key-"

    def key(self, index: int) -> str:
        return f"{self.key_prefix}{index}"

    def value(self, rng: random.Random) -> str:
        """A value of exactly `value_bytes` bytes: ASCII letters and digits, safe in a query string."""
        return "".join(rng.choices(ALPHABET, k=self.value_bytes))

    def lua_args(self, ops: int = 1) -> list[str]:
        """The arguments of every script in bench/scripts (see common.lua); `ops` per request."""
        return [str(self.keys), str(self.value_bytes), self.key_prefix, str(ops)]


async def preload(url: str, workload: Workload) -> None:
    """PUT every key of `workload` into the shareddb node at `url`; check that it holds them all."""
    await _put_all(url, workload, "/v1/kv/", "text/plain; charset=utf-8", lambda v: v)
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/digest") as r:
        count = orjson.loads(await r.read())["count"]
    if count < workload.keys:
        raise PreloadError(f"{url} holds {count} keys after preloading {workload.keys}")


async def preload_etcd(url: str, workload: Workload) -> None:
    """The same data set through etcd's v2 keys API, so its writes too update existing keys."""
    form = "application/x-www-form-urlencoded"
    await _put_all(url, workload, "/v2/keys/", form, lambda v: f"value={v}")


async def _put_all(
    url: str, workload: Workload, path: str, content_type: str, body: Callable[[str], str]
) -> None:
    rng = random.Random(0)
    values = [workload.value(rng) for _ in range(workload.keys)]
    headers = {"Content-Type": content_type}
    connector = aiohttp.TCPConnector(limit=PRELOAD_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def writer(indices: range) -> None:
            for index in indices:
                target = f"{url}{path}{workload.key(index)}"
                data = body(values[index]).encode()
                async with session.put(target, data=data, headers=headers) as r:
                    if r.status not in (200, 201):
                        text = await r.text()
                        raise PreloadError(f"PUT {target} answered {r.status}: {text[:200]}")

        await asyncio.gather(
            *(writer(range(w, workload.keys, PRELOAD_CONCURRENCY)) for w in range(PRELOAD_CONCURRENCY))
        )
