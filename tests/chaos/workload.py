"""The clients: one per node, running one operation at a time for as long as the faults last, and
recording every operation with its outcome.

An outcome is `ok` (a 2xx: the node acknowledged it), `fail` (the node refused it: connection
refused, 404, 503; nothing was written) or `unknown` (a timeout or a connection dropped after the
request went out: it may or may not have been written). Three workloads:

- set: every key written once (a Jepsen set); every acknowledged key must be there at the end;
- hot: a few keys overwritten from every node; values are unique, so a value names its write;
- delete: a key is written on one node and, once acknowledged, deleted on that same node, so the
  delete's version is the greater one; a key whose delete was acknowledged must be gone.

A `Load` shapes the clients for longer runs: a bounded key space (set and delete keys are reused, so
the data set stops growing), a share of writes with `?w=2`, and a pause between operations.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import random
import time
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import quote

import aiohttp
import orjson

from tests.chaos.cluster import Slot
from tests.cluster.replication_helpers import key_url

REQUEST_TIMEOUT = 2.5  # seconds; past it the outcome is unknown
FAIL_PAUSE = 0.05  # a node that is down refuses at once: do not spin on it
HOT_KEYS = 8
SEED_API_SHARE = 0.25  # writes sent through the seed API's GET /nodes/update and /nodes/remove
# Parts of a value that must round-trip exactly through both APIs' encodings.
SPICE = " &=+%#?é☃"
WORKLOADS = ("set", "hot", "delete")
W_TIMEOUT = 1  # seconds a `?w=2` write waits: the node answers 504 well before REQUEST_TIMEOUT


@dataclass(frozen=True, slots=True)
class Load:
    """How the clients run: `keyspace` keys per node and workload (None: every key new), the share
    of writes sent with `?w=2`, and the seconds each client waits between two operations."""

    keyspace: int | None = None
    w2_share: float = 0.0
    pause: float = 0.0


CHAOS_LOAD = Load()  # every key new, no ?w=2, no pause


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Op:
    """One write (a delete when `value` is None) and what came of it."""

    workload: str
    slot: int
    node_id: str | None  # of the node that took it; None while a wiped node's new id is not known
    incarnation: int  # of the node's data dir: one more after every wipe
    key: str
    value: str | None
    seed_api: bool
    started: float  # time.monotonic()
    ended: float = 0.0
    outcome: Outcome = Outcome.UNKNOWN
    status: int = 0  # HTTP status; 0 when no answer came
    version: str | None = None  # the version the node acknowledged
    error: str | None = None  # an answer that breaks the contract
    sent: bool = False  # some attempt of it went out (see _note_sent)
    w2: bool = False  # sent with ?w=2: acknowledged only once two nodes held it

    def describe(self) -> str:
        action = "delete" if self.value is None else f"write {self.value!r}"
        answer = f"{self.outcome.value} {self.status} {self.version}"
        return f"{action} of {self.key!r} on {self.node_id}: {answer}"


class Client:
    """The client of one node. `history` is shared by every client; an op enters it when sent."""

    def __init__(
        self, slot: Slot, rng: random.Random, history: list[Op], load: Load = CHAOS_LOAD
    ) -> None:
        self.slot = slot
        self.rng = rng
        self.history = history
        self.load = load
        self.count = 0
        self.to_delete: collections.deque[str] = collections.deque()  # acknowledged delete/ keys

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_note_sent)
        async with aiohttp.ClientSession(timeout=timeout, trace_configs=[tracing]) as session:
            while not stop.is_set():
                op = await self._send(session, self._next())
                if op.outcome is Outcome.FAIL:
                    await asyncio.sleep(FAIL_PAUSE)
                if self.load.pause:
                    await asyncio.sleep(self.load.pause)

    def _next(self) -> Op:
        """The next operation of a workload picked at random."""
        self.count += 1
        name = f"{self.slot.index + 1}-{self.count}"  # every value is unique: it names its write
        keyspace = self.load.keyspace
        key = name if keyspace is None else f"{self.slot.index + 1}-{self.count % keyspace}"
        choice = self.rng.random()
        if choice < 0.45:
            return self._op("set", f"set/{key}", name + SPICE)
        if choice < 0.75:
            return self._op("hot", f"hot/{self.rng.randrange(HOT_KEYS)}", name + SPICE)
        if self.to_delete and self.rng.random() < 0.6:
            return self._op("delete", self.to_delete.popleft(), None)
        return self._op("delete", f"delete/{key}", name + SPICE)

    def _op(self, workload: str, key: str, value: str | None) -> Op:
        slot = self.slot
        seed_api = self.rng.random() < SEED_API_SHARE
        op = Op(workload, slot.index, slot.node_id, slot.incarnation, key, value, seed_api, 0.0)
        op.w2 = self.rng.random() < self.load.w2_share
        self.history.append(op)
        return op

    async def _send(self, session: aiohttp.ClientSession, op: Op) -> Op:
        method, url, body = _request(self.slot, op)
        op.started = time.monotonic()
        try:
            async with session.request(method, url, data=body, trace_request_ctx=op) as response:
                op.status = response.status
                _record_answer(op, response.headers.get("ETag"), await response.read())
        except aiohttp.ClientConnectorError:
            op.outcome = Outcome.UNKNOWN if op.sent else Outcome.FAIL
        except (aiohttp.ClientError, TimeoutError):
            op.outcome = Outcome.UNKNOWN
        op.ended = time.monotonic()
        if op.workload == "delete" and op.value is not None and op.outcome is Outcome.OK:
            self.to_delete.append(op.key)
        return op


async def _note_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """aiohttp sends an idempotent request (PUT, DELETE, GET) again on a new connection when the
    first one drops: a connection refused on that retry follows a request that may have landed."""
    op: Op = context.trace_request_ctx
    op.sent = True


def _request(slot: Slot, op: Op) -> tuple[str, str, bytes | None]:
    """(method, url, body) of `op` through the seed API or the v1 API."""
    node = slot.node
    wait = f"w=2&timeout={W_TIMEOUT}" if op.w2 else ""
    if op.seed_api:
        name = quote(op.key, safe="")
        also = f"&{wait}" if wait else ""
        if op.value is None:
            return "GET", f"{node.url}/nodes/remove?name={name}{also}", None
        value = quote(op.value, safe="")
        return "GET", f"{node.url}/nodes/update?name={name}&value={value}{also}", None
    if op.value is None:
        return "DELETE", key_url(node, op.key, wait), None
    return "PUT", key_url(node, op.key, wait), op.value.encode("utf-8")


def _record_answer(op: Op, etag: str | None, body: bytes) -> None:
    """Set the outcome and acknowledged version from an HTTP answer."""
    if op.status in (404, 503) and (op.value is None or op.status == 503):
        op.outcome = Outcome.FAIL  # a delete of a key this node does not hold, or store unavailable
        return
    if op.status == 504 and op.w2:
        return  # too few nodes held it in time: it stays on this node and may spread, or not
    if op.status not in (200, 201, 204):
        op.error = f"answered {op.status}: {body[:200]!r}"
        return
    try:
        if op.status == 204:
            op.version = (etag or "").strip('"') or None
        else:
            op.version = str(orjson.loads(body)["version"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        op.error = f"answered {op.status} without a version: {exc}"
        return
    if op.version is None:
        op.error = f"answered {op.status} without a version"
        return
    op.outcome = Outcome.OK
