"""The shared node registry (`--registry redis://HOST:PORT/DB`): announce this node, find the others.

Every node keeps an entry in one shared Redis that expires unless a heartbeat refreshes it, and reads
everyone's entries every couple of seconds. A node found there joins the member list (and is
pulled); a member the registry announced whose entry then expired shows as `left` and is no longer
pulled, until it announces itself again. That expiry is local (see `Membership.expire`): each node
reads the registry itself.

The registry only adds knowledge, it never stops a node: a registry that cannot be reached changes
nothing (the node goes on with the members it knows and retries with back-off), and a member known
from --peers or --join that never registered is never expired by it. What it must not do is expire
members because it cannot see them: after a failure, or when its own entry was gone (a registry that
restarted empty or was flushed), a node waits a full TTL, time for every live node to announce
itself again, before it expires anyone.

Layout, under a prefix (`shareddb:` by default):

    node:{id}   string  {"id", "url", "v"}, expiring after the TTL, refreshed every min(2 s, TTL/3).
                        While it exists, the node is alive. A clean shutdown deletes it.
    nodes       hash    id -> the same JSON, never expiring: every node that registered, so that an
                        expired entry is told apart from a node that never registered here.
                        (`HDEL shareddb:nodes ID` forgets a node for good.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shareddb.membership import Membership
from shareddb.redis_urls import check_redis_url, redact_url

log = logging.getLogger("shareddb.registry")

DEFAULT_PREFIX = "shareddb:"
DEFAULT_TTL = 15.0
POLL_INTERVAL = 2.0  # the longest pause between two reads of the registry (and two heartbeats)
MIN_BACKOFF = 0.1
TIMEOUT = 2.0  # a registry that stops answering fails a call after this long
STOP_TIMEOUT = 2.0

# Refresh this node's entry; answer the entry it replaced (nil when there was none: it had expired,
# or the registry lost it). KEYS: node:{id}, nodes. ARGV: entry JSON, TTL in ms, id.
HEARTBEAT = """
local previous = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
return previous
"""

# Delete this node's entry, unless it is no longer the one this node wrote. KEYS: node:{id}.
# ARGV: entry JSON.
WITHDRAW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def check_registry_url(url: str) -> None:
    """Raise ValueError with a one-line reason unless `url` is redis://[:PASSWORD@]HOST[:PORT][/DB]."""
    check_redis_url(url)


@dataclass(frozen=True, slots=True)
class Entry:
    """One node's registry entry: who it is, where to reach it, and its membership entry's version."""

    id: str
    url: str
    version: int
    incarnation: str = ""

    def encode(self) -> str:
        return orjson.dumps(
            {"id": self.id, "url": self.url, "v": self.version, "inc": self.incarnation}
        ).decode()

    @classmethod
    def decode(cls, raw: str | bytes | None) -> Entry | None:
        """The entry in `raw`, or None when it is missing or not a well-formed entry."""
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            node_id, url, version = data["id"], data["url"], data["v"]
            incarnation = data.get("inc", "")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None
        if not (isinstance(node_id, str) and isinstance(url, str) and type(version) is int):
            return None
        if not node_id or not url.startswith(("http://", "https://")):
            return None
        if not isinstance(incarnation, str):
            return None
        return cls(node_id, url.rstrip("/"), version, incarnation)


@dataclass(frozen=True, slots=True)
class Listing:
    """What one read of the registry found: the live entries, and the registered ones that expired."""

    live: dict[str, Entry]
    expired: dict[str, Entry]

    @classmethod
    def read(cls, registered: Mapping[str, str], current: Sequence[str | None]) -> Listing:
        """From the `nodes` hash and, in the order of its ids, the `node:{id}` values (None: gone)."""
        live: dict[str, Entry] = {}
        expired: dict[str, Entry] = {}
        for (node_id, raw), alive in zip(registered.items(), current, strict=True):
            entry = Entry.decode(alive)
            if entry is not None and entry.id == node_id:
                live[node_id] = entry
                continue
            last = Entry.decode(raw)
            if last is not None and last.id == node_id:
                expired[node_id] = last
        return cls(live, expired)


class Registry:
    """Announces this node in the registry and folds what it finds there into `membership`.

    `start()` runs heartbeats and reads in the background until `stop()`, which also deletes this
    node's entry. `tick()` is one heartbeat and one read; `apply()` is what a read changes, without
    I/O (time comes from `clock`).
    """

    def __init__(
        self,
        url: str,
        membership: Membership,
        *,
        ttl: float = DEFAULT_TTL,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        check_registry_url(url)
        self.url = url
        self.where = redact_url(url)
        self.membership = membership
        self.ttl = ttl
        self.interval = min(POLL_INTERVAL, ttl / 3)
        self.prefix = prefix
        self._clock = clock
        self._rng = rng or random.Random()
        self._client: Redis | None = None
        self._execute: Callable[..., Awaitable[Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._written: str | None = None  # this node's entry as last written
        self._trusted_since: float | None = None  # since when this node's reads went on unbroken
        self._seen: dict[str, Entry] = {}  # every entry seen live since this node started
        self.failures = 0  # consecutive failed ticks

    # -- keys -----------------------------------------------------------------------------------

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    @property
    def nodes_key(self) -> str:
        return f"{self.prefix}nodes"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="registry")

    async def stop(self) -> None:
        """Stop the heartbeats and delete this node's entry (best effort: it expires anyway)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
            self._task = None
        if self._written is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self.withdraw()
            except (RedisError, OSError, TimeoutError) as exc:
                log.info("could not remove this node's registry entry (%s); it expires by itself", exc)
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
            self._client = None
            self._execute = None

    def _command(self) -> Callable[..., Awaitable[Any]]:
        if self._execute is None:
            self._client = Redis.from_url(
                self.url,
                decode_responses=True,
                encoding_errors="replace",  # a stray non-UTF-8 field is a malformed entry, no more
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                # One retry, on a broken connection only: a pooled connection that died while the
                # registry restarted is replaced at once. Every command here may run twice.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            # redis-py leaves execute_command unannotated; every command here goes through it.
            self._execute = cast(Callable[..., Awaitable[Any]], self._client.execute_command)
        return self._execute

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the registry must never stop the node, not even a bug here
                self.failures += 1
                self._trusted_since = None
                if self.failures == 1 and isinstance(exc, RedisError | OSError):
                    log.warning(
                        "registry %s cannot be reached (%s); going on with the members this node "
                        "knows, and retrying",
                        self.where,
                        exc,
                    )
                elif self.failures == 1:
                    log.exception("reading registry %s failed; retrying", self.where)
                delay = min(self.interval, MIN_BACKOFF * 2 ** min(self.failures, 10))
                await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
                continue
            if self.failures:
                log.info("registry %s is reachable again", self.where)
                self.failures = 0
            await asyncio.sleep(self.interval * self._rng.uniform(0.8, 1.0))

    # -- one round ------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Refresh this node's entry (or withdraw it once this node left), then read the others."""
        execute = self._command()
        now = self._clock()
        if self._trusted_since is None:
            self._trusted_since = now
        me = self.membership.self_entry
        if me.left:
            if self._written is not None:
                await self.withdraw()
                log.info("this node left the cluster; its registry entry is removed")
        else:
            entry = Entry(me.id, me.url, me.version, me.incarnation).encode()
            keys = (self.node_key(me.id), self.nodes_key)
            previous = await execute("EVAL", HEARTBEAT, 2, *keys, entry, _millis(self.ttl), me.id)
            if previous is None and self._written is not None:
                # Either this node missed its heartbeats (it was paused) or the registry lost every
                # entry (restarted empty, flushed): give the others a TTL to announce themselves.
                log.warning(
                    "this node's registry entry was gone (missed heartbeats, or the registry lost "
                    "its data); announced it again"
                )
                self._trusted_since = now
            elif self._written is None:
                log.info("announced node %s at %s in registry %s", me.id, me.url, self.where)
            self._written = entry
        registered = _mapping(await execute("HGETALL", self.nodes_key))
        current: list[str | None] = []
        if registered:
            current = list(await execute("MGET", *(self.node_key(i) for i in registered)))
        self.apply(Listing.read(registered, current), now)

    def apply(self, listing: Listing, now: float) -> None:
        """Fold one read into the member list: live entries join (or come back), and, once this
        node's view of the registry has been unbroken for a TTL, the ones it announced that expired
        show as left."""
        self_id = self.membership.self_id
        for node_id, entry in listing.live.items():
            if node_id == self_id:
                continue
            if node_id not in self._seen and self.membership.members.get(node_id) is None:
                log.info("found node %s at %s in the registry", node_id, entry.url)
            self._seen[node_id] = entry
            self.membership.merge(
                [
                    {
                        "id": node_id,
                        "url": entry.url,
                        "left": False,
                        "v": entry.version,
                        "inc": entry.incarnation,
                    }
                ]
            )
            if self.membership.unexpire(node_id):
                log.info("node %s is in the registry again", node_id)
        if self._trusted_since is None or now - self._trusted_since < self.ttl:
            return
        # Expired: registered here and gone, or seen alive since this node started and gone since.
        gone = {**{i: e for i, e in self._seen.items() if i not in listing.live}, **listing.expired}
        for node_id, entry in gone.items():
            if node_id != self_id and self.membership.expire(node_id, entry.version):
                log.warning(
                    "node %s is no longer in the registry (no heartbeat for %gs, or it shut down); "
                    "it is no longer pulled",
                    node_id,
                    self.ttl,
                )

    async def withdraw(self) -> None:
        """Delete this node's entry if it is still the one this node wrote."""
        if self._written is None:
            return
        await self._command()("EVAL", WITHDRAW, 1, self.node_key(self.membership.self_id), self._written)
        self._written = None


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _mapping(found: object) -> dict[str, str]:
    """HGETALL's answer as a dict, whether redis-py already made it one or not."""
    if isinstance(found, dict):
        return {str(k): str(v) for k, v in found.items()}
    if isinstance(found, list):
        return {str(found[i]): str(found[i + 1]) for i in range(0, len(found) - 1, 2)}
    return {}
