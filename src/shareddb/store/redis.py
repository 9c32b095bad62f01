"""The Redis store: one Redis database per node, each batch written by one atomic Lua script.

The write pipeline (store/pipeline.py) group-commits; for each batch this backend reads the stored
versions of its keys (one round trip), has the pipeline plan it (the LWW, sequence, digest and purge
rules every backend shares), and writes it by one script call that also saves the sequence, live
count, digest buckets, clock high-water mark, checkpoints and node meta. Redis runs a script
atomically and its AOF keeps a script's effects as one MULTI/EXEC block (a torn one is dropped on
load), so no crash leaves a record without its sequence number. Durability is that of the Redis:
`appendonly yes` and `appendfsync always` make an acknowledged write survive a crash of the Redis
host too.

This node must be the only writer of its database. Each batch carries a fresh token and the script
writes only while the stored token is the one this store committed last: that check-and-set runs in
the same atomic step as the writes, so a second writer, or a Redis that lost writes, is detected and
never written over. When the answer to a batch is lost (the connection broke after the script was
sent), the outcome is settled before anything else is written: a fencing script either finds the
batch's token (it committed) or replaces the old token (it never will).

This module must not decide anything about merging, expiry or purging: the pipeline does. The
layout of the store's keys in Redis is described in store/redis_scripts.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    RedisError,
)

from shareddb.record import Record
from shareddb.redis_urls import check_redis_url, redact_url
from shareddb.store.backend import OutcomeUnknown
from shareddb.store.base import (
    CHANGE_OVERHEAD,
    Checkpoint,
    CopyPage,
    CopyUnsupported,
    FeedPage,
    StoreFull,
    StoreUnavailable,
    prefix_end,
)
from shareddb.store.expiry import Expiring
from shareddb.store.pipeline import PipelineStore, wall_millis
from shareddb.store.plan import Batch, Planner, Stored, Tally, Tombstones
from shareddb.store.redis_buckets import build_index, list_bucket
from shareddb.store.redis_replies import (
    decode_feed,
    decode_hash,
    decode_head,
    decode_record,
    decode_score,
    one_line,
    refuses_writes,
)
from shareddb.store.redis_scripts import (
    BY_SCORE,
    CREATE,
    FEED,
    FENCE,
    SCAN,
    SNAPSHOT_BEGIN,
    UPGRADE,
    WRITE,
    Keys,
    write_args,
)
from shareddb.store.redis_snapshot import SNAPSHOT_COPY_TTL, RedisSnapshotRead

log = logging.getLogger("shareddb.store")

FORMAT = "3"
# The same layout without `bkt` (2), and also without expiry and transactions (1): read as they
# are once `bkt` is built.
OLDER_FORMATS = ("1", "2")
DEFAULT_PREFIX = "sdb:"
CHUNK = 1000  # keys per command when reading many (purge candidates, expiring values)
MAX_CONNECTIONS = 32
SOCKET_TIMEOUT = 5.0  # a Redis that stops answering fails calls with 503 after this long
CONNECT_TIMEOUT = 2.0
MIN_REDIS = (7, 0)  # script flags (`#!lua`): an OOM Redis refuses a write script before it starts

ENCODING_ERRORS = "surrogatepass"  # reads only: a key that cannot be stored is simply not found


@dataclass(frozen=True, slots=True)
class _Sent:
    """A batch sent to Redis: what this store adopts once it is known to be committed."""

    before: str  # the token it expected
    token: str
    tally: Tally


class RedisBackend:
    """A pipeline `Backend` in one Redis database (its layout: store/redis_scripts.py)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int = MAX_CONNECTIONS,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        check_redis_url(url)
        self.url = url
        self._new_instance = new_instance
        self._keys = Keys.under(prefix)
        self._prefix = prefix.encode("utf-8")
        self._max_connections = max_connections
        self._client: Redis | None = None
        self._execute: Callable[..., Awaitable[Any]] = _not_open
        self._instance = ""
        self._token = ""
        self._tally = Tally.empty()
        self._shas: dict[str, str] = {}
        self._closing = False
        self._unsettled: _Sent | None = None  # written, but its answer was lost
        self._lost: str | None = None  # set once the Redis no longer holds this store
        self._reachable = True  # False from a failed call until the next one that works

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the server, and load (or create) the store. StoreUnavailable when the
        Redis cannot be reached or does not hold a store this version can use."""
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            # One retry, on a broken connection only: a pooled connection that died while Redis
            # restarted is replaced at once. Retrying a write script is safe (see _settle).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            redis_connect_func=self._on_connect,
        )
        self._client = Redis(connection_pool=pool)
        # redis-py leaves execute_command unannotated; every command here goes through it.
        self._execute = cast(Callable[..., Awaitable[Any]], self._client.execute_command)
        where = redact_url(self.url)
        try:
            info = await self._client.info()
            version = str(info.get("redis_version", "0"))
            numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
            if numbers < MIN_REDIS:
                raise StoreUnavailable(f"Redis at {where} is version {version}; 7.0 or later is needed")
            policy = str(info.get("maxmemory_policy", "noeviction"))
            if policy.startswith("allkeys-"):
                raise StoreUnavailable(
                    f"Redis at {where} evicts keys when full (maxmemory-policy {policy}), which would "
                    "drop records; set maxmemory-policy noeviction"
                )
            created = [self._new_instance(), uuid.uuid4().hex, FORMAT]
            meta = decode_hash(await self._script(CREATE, [self._keys.meta], created))
            if meta.get("format") in OLDER_FORMATS:
                await build_index(self._execute, self._keys)
                upgrade = [meta["format"], FORMAT]
                meta = decode_hash(await self._script(UPGRADE, [self._keys.meta], upgrade))
            if meta.get("format") != FORMAT:
                raise StoreUnavailable(
                    f"Redis at {where} holds a store of format {meta.get('format')!r} under "
                    f"{self._keys.meta.decode()!r}; this version of shareddb reads formats "
                    f"{', '.join(OLDER_FORMATS)} and {FORMAT}"
                )
            digest = decode_hash(await self._execute("HGETALL", self._keys.digest), text=False)
        except StoreUnavailable:
            await self._disconnect()
            raise
        except (RedisError, OSError) as exc:
            await self._disconnect()
            raise StoreUnavailable(f"cannot use Redis at {where}: {one_line(exc)}") from exc
        self._instance = meta["instance"]
        self._token = meta["batch"]
        buckets = [0] * len(self._tally.buckets)
        for bucket, value in digest.items():
            buckets[int(bucket)] = int.from_bytes(value, "big")
        self._tally = Tally(
            int(meta["seq"]),
            int(meta["live"]),
            int(meta["hlc"]),
            tuple(buckets),
            int(meta.get("floor", 0)),
        )

    async def close(self) -> None:
        """Called by the pipeline once its last batch is written."""
        if self._closing:
            return
        self._closing = True
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._client is not None:
            await self._client.connection_pool.disconnect()

    async def _on_connect(self, connection: AbstractConnection) -> None:
        """Every new connection checks that the Redis still holds this store before it is used:
        a Redis that restarted empty (no persistence) or was flushed must not be read as if this
        store were empty."""
        await connection.on_connect()
        if not self._instance:
            return
        await connection.send_command("HGET", self._keys.meta, "instance")
        found = await connection.read_response()
        if found != self._instance.encode():
            self._lose(
                f"Redis at {redact_url(self.url)} no longer holds this node's store (instance "
                f"{self._instance} is gone: flushed, or restarted without persistence); restart "
                "the node to begin a new store there"
            )
            raise RedisConnectionError(self._lost)

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            log.error("store unusable: %s", reason)

    # -- reads ---------------------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        return self._instance

    @property
    def tally(self) -> Tally:
        return self._tally

    @property
    def cache_valid(self) -> bool:
        # While Redis is known to be away, every read fails alike, cached or not; while a batch's
        # outcome is unknown, what Redis holds may be newer than anything cached or read.
        return self._reachable and self._lost is None and self._unsettled is None

    def _check_usable(self) -> None:
        if self._client is None or self._closing:
            raise StoreUnavailable("the store is closed")
        if self._lost is not None:
            raise StoreUnavailable(self._lost)

    async def _command(self, *args: Any) -> Any:
        self._check_usable()
        try:
            found = await self._execute(*args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        self._reachable = True
        return found

    async def _script(self, script: str, keys: Sequence[bytes], args: Sequence[object]) -> Any:
        """Run a script by its SHA, loading it first when this Redis does not know it (a Redis
        does not keep scripts across restarts). Raises what the client raises."""
        sha = self._shas.get(script)
        if sha is not None:
            try:
                return await self._execute("EVALSHA", sha, len(keys), *keys, *args)
            except NoScriptError:
                pass
        sha = str(await self._execute("SCRIPT LOAD", script))
        self._shas[script] = sha
        return await self._execute("EVALSHA", sha, len(keys), *keys, *args)

    async def _read_script(self, script: str, keys: Sequence[bytes], args: Sequence[object]) -> Any:
        self._check_usable()
        try:
            found = await self._script(script, keys, args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        self._reachable = True
        return found

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if self._lost is None and refuses_writes(exc):  # it answers: reads and the cache go on
            return StoreFull(f"Redis at {redact_url(self.url)} cannot write: {one_line(exc)}")
        self._reachable = False
        if self._lost is not None:
            return StoreUnavailable(self._lost)
        return StoreUnavailable(f"Redis at {redact_url(self.url)}: {one_line(exc)}")

    async def get(self, key: str) -> Record | None:
        raw = await self._command("HGET", self._keys.rec, key.encode("utf-8", ENCODING_ERRORS))
        return None if raw is None else decode_record(key, raw)

    async def lookup(self, keys: Collection[str]) -> Stored:
        self._check_usable()
        try:
            found = await self._versions(keys)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        self._reachable = True
        return found

    async def checkpoint(self, peer: str) -> Checkpoint | None:
        raw = await self._command("HGET", self._keys.cp, peer.encode("utf-8", ENCODING_ERRORS))
        if raw is None:
            return None
        seq, _, rest = bytes(raw).decode("utf-8").partition(" ")
        instance, _, epoch = rest.partition(" ")
        return Checkpoint(peer, instance, int(seq), epoch)

    async def get_meta(self, name: str) -> str | None:
        raw = await self._command("HGET", self._keys.node, name.encode("utf-8", ENCODING_ERRORS))
        return None if raw is None else bytes(raw).decode("utf-8")

    async def expiring(self, after: int, limit: int) -> list[Expiring]:
        found: list[Expiring] = []
        offset = 0
        while len(found) < limit:
            flat = await self._read_script(
                BY_SCORE, [self._keys.exp, self._keys.rec], [f"({after}", "+inf", offset, CHUNK]
            )
            for i in range(0, len(flat), 3):
                record = decode_record(bytes(flat[i]).decode("utf-8"), flat[i + 2])
                if record.value is not None and record.expires is not None:
                    found.append((record.key, record.version, record.expires))
            if len(flat) < 3 * CHUNK:
                break
            offset += CHUNK
        return found[:limit]

    async def scan(self, prefix: str, after: str | None, limit: int, now: int) -> list[Record]:
        if limit <= 0:
            self._check_usable()
            return []
        if after is not None and after >= prefix:
            low = b"(" + after.encode("utf-8", ENCODING_ERRORS)
        elif prefix:
            low = b"[" + prefix.encode("utf-8", ENCODING_ERRORS)
        else:
            low = b"-"
        end = prefix_end(prefix)
        high = b"+" if end is None else b"(" + end.encode("utf-8", ENCODING_ERRORS)
        flat = await self._read_script(
            SCAN, [self._keys.live, self._keys.rec, self._keys.exp], [low, high, limit, now]
        )
        return [
            decode_record(bytes(flat[i]).decode("utf-8"), flat[i + 1]) for i in range(0, len(flat), 2)
        ]

    async def changes_since(self, seq: int, limit: int, max_bytes: int | None, known: int) -> FeedPage:
        if limit <= 0:
            self._check_usable()
            return FeedPage([], seq)
        budget = -1 if max_bytes is None else max_bytes
        keys = self._keys
        flat = await self._read_script(
            FEED,
            [keys.seq, keys.rec, keys.meta, keys.txn, keys.entry],
            [f"({seq}", limit, budget, CHANGE_OVERHEAD, known],
        )
        return decode_feed(flat, seq)

    async def bucket_versions(self, bucket: int) -> dict[str, str]:
        return await list_bucket(self._read_script, self._keys, bucket)

    async def copy_page(self, after: str, limit: int, max_bytes: int, skip: Collection[int]) -> CopyPage:
        """Not served: this layout keeps no key order over tombstones and live values together,
        nor a way to read a transaction entry as a reader from 0 would get it. A node copying from
        a Redis-backed peer reads its changes feed instead (docs/design.md, "Bulk copy")."""
        raise CopyUnsupported("a Redis store does not serve bulk copies")

    async def snapshot(self) -> RedisSnapshotRead:
        """One script copies the records and the feed index (COPY, inside Redis): the read then
        pages through the copies, which nothing writes, so it sees one point in time. The copy
        takes Redis about as long as the records take to copy in memory (it blocks other commands
        meanwhile) and as much memory again as they hold, until the read is closed."""
        name = self._prefix + b"snapshot:" + uuid.uuid4().hex.encode()
        rec, seq_index = name + b":rec", name + b":seq"
        keys = [self._keys.meta, self._keys.rec, self._keys.seq, rec, seq_index]
        seq, count = await self._read_script(SNAPSHOT_BEGIN, keys, [SNAPSHOT_COPY_TTL])
        return RedisSnapshotRead(self, rec, seq_index, decode_score(seq), int(count))

    # -- writes --------------------------------------------------------------------------------

    async def commit(self, keys: Collection[str], purge_upto: int | None, plan: Planner) -> Batch:
        """Settle the last batch if its answer was lost, look up, plan, write in one script call."""
        self._check_usable()
        if self._unsettled is not None:
            await self._settle()
        try:
            current = await self._versions(keys)
            tombstones = await self._tombstones(purge_upto) if purge_upto is not None else {}
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        batch = plan(self._tally, current, tombstones)
        sent = _Sent(before=self._token, token=uuid.uuid4().hex, tally=batch.tally)
        try:
            await self._script(WRITE, self._keys, write_args(sent.before, sent.token, batch))
        except (RedisError, OSError) as exc:
            self._unsettled = sent
            if not await self._settle():
                raise self._unavailable(exc) from exc
        else:
            self._adopt(sent)
        self._reachable = True
        return batch

    async def _versions(self, keys: Collection[str]) -> Stored:
        """The stored (live, version, expires) of each of `keys` that exists: one round trip."""
        if not keys:
            return {}
        ordered = list(keys)
        found = await self._execute("HMGET", self._keys.ver, *(key.encode("utf-8") for key in ordered))
        return {
            key: (raw[:1] == b"+", *decode_head(raw[1:]))
            for key, raw in zip(ordered, found, strict=True)
            if raw is not None
        }

    async def _tombstones(self, max_seq: int) -> Tombstones:
        """Key -> (seq, version) of every tombstone at or below `max_seq`."""
        found: Tombstones = {}
        offset = 0
        while True:
            flat = await self._script(
                BY_SCORE, [self._keys.tomb, self._keys.rec], ["-inf", max_seq, offset, CHUNK]
            )
            for i in range(0, len(flat), 3):
                key = bytes(flat[i]).decode("utf-8")
                found[key] = (decode_score(flat[i + 1]), decode_record(key, flat[i + 2]).version)
            if len(flat) < 3 * CHUNK:
                return found
            offset += CHUNK

    def _adopt(self, sent: _Sent) -> None:
        self._token = sent.token
        self._tally = sent.tally

    async def _settle(self) -> bool:
        """Find out whether the unsettled batch committed, and make sure it never commits later.

        Its script may still be on its way to Redis (a retried call, a socket being drained).
        The fence script replaces the token that batch expects, so from then on it cannot write;
        if the token is already that batch's own, the batch committed. True when it committed.
        """
        sent = self._unsettled
        assert sent is not None
        fence = uuid.uuid4().hex
        try:
            outcome = await self._script(FENCE, [self._keys.meta], [sent.before, sent.token, fence])
        except (RedisError, OSError) as exc:
            raise OutcomeUnknown(
                f"Redis at {redact_url(self.url)}: {one_line(exc)} (the outcome of the last write "
                "batch is not known yet)"
            ) from exc
        self._unsettled = None
        if outcome == b"committed":
            self._adopt(sent)
            return True
        if outcome == b"fenced":
            self._token = fence
            return False
        self._lose(
            f"Redis at {redact_url(self.url)} was written by someone else, or lost writes this "
            "node had made (its batch token is not one this node wrote); this node stops using it"
        )
        raise StoreUnavailable(self._lost)


class RedisStore(PipelineStore):
    """A `Store` in one Redis database: the write pipeline on a `RedisBackend`."""

    def __init__(
        self,
        url: str,
        *,
        clock_high: Callable[[], int] = lambda: 0,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int = MAX_CONNECTIONS,
        new_instance: Callable[[], str] = lambda: uuid.uuid4().hex,
        now: Callable[[], int] = wall_millis,
    ) -> None:
        self.url = url
        backend = RedisBackend(
            url, prefix=prefix, max_connections=max_connections, new_instance=new_instance
        )
        super().__init__(backend, clock_high=clock_high, now=now)


async def _not_open(*args: object) -> Any:
    raise StoreUnavailable("the store is not open")
