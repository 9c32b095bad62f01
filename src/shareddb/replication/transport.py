"""How a node talks to its peers. `Transport` is what the puller needs; `HttpTransport` does it
over the peer API, and the simulation passes in a transport of its own."""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson

from shareddb.record import Record
from shareddb.store.base import Checkpoint

if TYPE_CHECKING:
    from shareddb.replication.copy_frames import CopyRequest, Frame

PEER_HEADER = "Authorization"
READ_SLACK = 10.0  # seconds past the long poll a peer may go silent before the pull fails
ENCODE_PART = 256 * 1024
COPY_READ_TIMEOUT = 60.0  # seconds a copy stream may go silent (the source reads a chunk)
ENCODED_CACHE_BYTES = 16 * 1024 * 1024  # of encoded feed rows kept for the next puller


class PeerError(Exception):
    """A peer could not be reached or gave an answer we cannot use; the puller backs off."""


class PeerRemoved(PeerError):
    """The peer refuses this node: this incarnation of it left or was removed from the cluster."""


@dataclass(frozen=True, slots=True)
class PullRequest:
    since: int  # the puller's checkpoint in the source's feed
    instance: str  # the feed instance that checkpoint belongs to ("" when there is none)
    limit: int
    wait: float  # long poll: seconds the source may hold the request while it has nothing new
    puller_id: str
    puller_url: str
    puller_version: int  # the version of the puller's own membership entry
    own_since: int  # the source may leave out records the puller wrote at or after this HLC
    puller_incarnation: str = ""  # which life of the puller this is (record.incarnation_of)
    # How far the puller has applied this feed, when that is behind `since`: a pull sent while the
    # page before it is still being applied (Replicator._pull_forever). None: all of `since`.
    applied: int | None = None
    # Origins (record.make_origin) whose writes the puller gets straight from the nodes that took
    # them: the source leaves them out (replication/paths.py).
    skip: frozenset[str] = frozenset()
    # How far the puller holds everything of this feed, left-out writes included: at most
    # `applied`. What the source's tombstone purge may count. None: all of `applied`.
    held: int | None = None
    # The run of the puller's process (`Membership.boot`): the source leaves out what it copied
    # from that run's data set, which that run holds (`Feed.copied_from`).
    puller_boot: str = ""
    # The epoch of the source's feed the checkpoint was read in (replication/epochs.py; "": not
    # known, a checkpoint of an earlier release).
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class PullReply:
    node: str  # the source's node id
    instance: str  # the source feed's instance id
    until: int  # the puller's next checkpoint: every change up to here is in `records`
    last_seq: int  # the source's latest sequence number
    records: list[Record]
    members: list[dict[str, Any]]
    # (start, stop) index ranges of `records` that are transactions: applied whole, kept whole.
    groups: list[tuple[int, int]] = field(default_factory=list)
    floor: int = 0  # the source's feed floor: a checkpoint below it is copied anew (copy.py)
    # Per record, on the source's side: its sequence number when it is a plain row of the feed
    # (the same bytes for every puller, see `EncodedChanges`), else 0. Empty: none is.
    seqs: list[int] = field(default_factory=list)
    # The epoch of the feed `until` is named in: the run of the source's process that answers
    # (`Membership.boot`, replication/epochs.py).
    epoch: str = ""
    # To a pull under the source's own id (another node started with it, replication/rivals.py):
    # the version of the source's first entry in this run (`Membership.announced`); else 0.
    announced: int = 0

    @property
    def reached(self) -> Checkpoint:
        """The puller's position in the source's feed once this answer is applied: its end, in
        the epoch the answer names."""
        return Checkpoint(self.node, self.instance, self.until, self.epoch)


class Transport(Protocol):
    async def pull(self, url: str, request: PullRequest) -> PullReply: ...

    async def join(self, url: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def copy(self, url: str, request: CopyRequest) -> AsyncGenerator[Frame, None]:
        """The frames of a bulk copy of the peer's data set (replication/copy.py)."""
        ...

    async def close(self) -> None: ...


class EncodedChanges:
    """Plain rows of this node's feed as they go out in pull answers, encoded once and shared by
    every puller: N-1 peers read the same new rows, and each would encode them again.

    Keyed by sequence number: a row of the feed never changes under its number (a new write, an
    expiry, gets a new one; a purge removes it, and then the feed no longer names that number),
    so bytes found here are always those of the row the feed names. Rows served as part of a
    transaction entry are not kept (their form depends on the reader). Bounded by bytes; the
    oldest entries go first.

    Each part is kept as a copy of what `orjson.dumps` returned: orjson makes its answer in a
    buffer of about 4 KiB and shrinks it in place, and the rest of that buffer could not be used
    again while the row was held, so a full cache of 100-byte values (about 110,000 rows) held
    about 450 MiB of the node's memory, not 16 (docs/design.md, "Replication cost")."""

    def __init__(self, max_bytes: int = ENCODED_CACHE_BYTES) -> None:
        # Ordered, so the oldest goes in O(1): a plain dict's first key, once many were deleted
        # from its front, is found by a scan over their empty slots (~100 µs a row when full).
        self._parts: OrderedDict[int, bytes] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self.instance = ""  # the feed instance the parts belong to

    def __len__(self) -> int:
        return len(self._parts)

    def belong_to(self, instance: str) -> None:
        """Forget everything when the store is another one (sequence numbers start again)."""
        if instance != self.instance:
            self._parts.clear()
            self._bytes = 0
            self.instance = instance

    def get(self, seq: int) -> bytes | None:
        return self._parts.get(seq)

    def put(self, seq: int, part: bytes) -> None:
        if seq in self._parts:
            return
        self._parts[seq] = bytes(memoryview(part))  # a copy of its own size (class docstring)
        self._bytes += len(part)
        while self._bytes > self._max_bytes:
            self._bytes -= len(self._parts.popitem(last=False)[1])


def encode_reply(reply: PullReply, cache: EncodedChanges | None = None) -> Iterator[bytes]:
    """The reply as JSON, in parts of about ENCODE_PART bytes: the origin writes each part out
    before it encodes the next, so it never holds a second, encoded copy of a large batch. With
    `cache`, a plain row is encoded once for all pullers (`PullReply.seqs`)."""
    head = {
        "node": reply.node,
        "instance": reply.instance,
        "until": reply.until,
        "last_seq": reply.last_seq,
        "members": reply.members,
    }
    if reply.floor:
        head["floor"] = reply.floor
    if reply.epoch:
        head["epoch"] = reply.epoch
    if reply.announced:
        head["announced"] = reply.announced
    lead = orjson.dumps(head)[:-1] + b',"changes":['
    items: list[bytes] = []
    size = 0
    txn = _group_marks(reply)
    seqs = reply.seqs if cache is not None and reply.seqs else [0] * len(reply.records)
    for index, r in enumerate(reply.records):
        seq = seqs[index]
        part = cache.get(seq) if seq and cache is not None else None
        if part is None:
            part = _encode_change(r, txn[index])
            if seq and cache is not None:
                cache.put(seq, part)
        items.append(part)
        size += len(part)
        if size >= ENCODE_PART:
            yield lead + b",".join(items)
            lead, items, size = b",", [], 0  # the next part goes on after a change
    if items:
        yield lead + b",".join(items) + b"]}"
    else:  # nothing after the head, or after the last part
        yield (b"" if lead == b"," else lead) + b"]}"


def _encode_change(r: Record, txn: int) -> bytes:
    """[key, value, version], then the expiry and the transaction mark when there are any."""
    if txn:
        return orjson.dumps([r.key, r.value, r.version, r.expires, txn])
    if r.expires is not None:
        return orjson.dumps([r.key, r.value, r.version, r.expires])
    return orjson.dumps([r.key, r.value, r.version])


def _group_marks(reply: PullReply) -> list[int]:
    """Per record, 0 or the number (1, 2, ...) of the transaction group it belongs to."""
    marks = [0] * len(reply.records)
    for number, (start, stop) in enumerate(reply.groups, 1):
        marks[start:stop] = [number] * (stop - start)
    return marks


def decode_reply(body: bytes) -> PullReply:
    try:
        data = orjson.loads(body)
        records: list[Record] = []
        groups: list[tuple[int, int]] = []
        mark, start = 0, 0
        for index, change in enumerate(data["changes"]):
            size = len(change)
            key, value, version = change[0], change[1], change[2]
            expires = change[3] if size > 3 else None
            txn = change[4] if size > 4 else 0
            if not (type(key) is str and type(version) is str):
                raise TypeError("a change needs a key and a version")
            if not (value is None or type(value) is str):
                raise TypeError("a value is text or null")
            if not (expires is None or type(expires) is int) or type(txn) is not int:
                raise TypeError("an expiry and a transaction mark are integers")
            records.append(Record(key, value, version, expires))
            if txn != mark:
                if mark:
                    groups.append((start, index))
                mark, start = txn, index
        if mark:
            groups.append((start, len(records)))
        return PullReply(
            node=str(data["node"]),
            instance=str(data["instance"]),
            until=int(data["until"]),
            last_seq=int(data["last_seq"]),
            records=records,
            members=list(data["members"]),
            groups=groups,
            floor=int(data.get("floor", 0)),
            epoch=str(data.get("epoch", "")),
            announced=int(data.get("announced", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise PeerError(f"unreadable answer from peer: {exc}") from exc


class HttpTransport:
    """The peer API over HTTP(S), with one keep-alive connection pool for all peers. `ssl_context`
    is used for https:// peers: it verifies them and presents this node's certificate."""

    def __init__(self, token: str | None, ssl_context: ssl.SSLContext | None = None) -> None:
        headers = {PEER_HEADER: f"Bearer {token}"} if token else {}
        self._presents_certificate = ssl_context is not None
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit_per_host=4, ssl=ssl_context or True),
        )

    async def pull(self, url: str, request: PullRequest) -> PullReply:
        params = {
            "since": str(request.since),
            "instance": request.instance,
            "limit": str(request.limit),
            "wait": f"{request.wait:g}",
            "from": request.puller_id,
            "url": request.puller_url,
            "v": str(request.puller_version),
            "own_since": str(request.own_since),
            "inc": request.puller_incarnation,
        }
        if request.puller_boot:
            params["boot"] = request.puller_boot
        if request.epoch:
            params["epoch"] = request.epoch
        if request.applied is not None:
            params["applied"] = str(request.applied)
        if request.skip:
            params["skip"] = ",".join(sorted(request.skip))
        if request.held is not None:
            params["held"] = str(request.held)
        # No total limit: a large batch may take long to arrive, as long as bytes keep coming.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=3.0, sock_read=request.wait + READ_SLACK
        )
        body = await self._call("GET", url + "/v1/peer/changes", params=params, timeout=timeout)
        return decode_reply(body)

    async def copy(self, url: str, request: CopyRequest) -> AsyncGenerator[Frame, None]:
        """GET /v1/peer/copy, its frames decoded as they arrive: a chunk is held once, as it is
        read, never the whole answer."""
        from shareddb.replication.copy_frames import CopyDeferred, CopyRefused, decode_frame

        params = {
            "after": request.after,
            "limit": str(request.limit),
            "from": request.puller_id,
            "url": request.puller_url,
            "v": str(request.puller_version),
            "inc": request.puller_incarnation,
            "digest": request.digest,
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0, sock_read=COPY_READ_TIMEOUT)
        target = url + "/v1/peer/copy"
        try:
            async with self._session.get(target, params=params, timeout=timeout) as response:
                if response.status != 200:
                    body = await response.read()
                    if response.status == 410:
                        raise PeerRemoved(_message(body))
                    if response.status in (404, 501):  # an older node, or a store without copies
                        raise CopyRefused(f"{target} answered {response.status}")
                    if response.status == 503:
                        raise CopyDeferred(_message(body))
                    raise PeerError(f"{target} answered {response.status}: {body[:200]!r}")
                content = response.content
                while line := await content.readline():
                    if not line.rstrip(b"\n").isdigit():
                        raise PeerError(f"unreadable copy frame from {url}")
                    yield decode_frame(await content.readexactly(int(line)))
        except asyncio.IncompleteReadError as exc:
            raise PeerError(f"the copy from {url} was cut short") from exc
        except aiohttp.ClientError as exc:
            raise PeerError(f"cannot reach {url}: {exc}") from exc
        except TimeoutError as exc:
            raise PeerError(f"{url} did not answer in time") from exc

    async def join(self, url: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=10.0, connect=3.0)
        body = await self._call(
            "POST", url + "/v1/peer/join", data=orjson.dumps({"members": entries}), timeout=timeout
        )
        try:
            members: list[dict[str, Any]] = orjson.loads(body)["members"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise PeerError(f"unreadable answer from {url}: {exc}") from exc
        return members

    async def _call(self, method: str, url: str, **kwargs: Any) -> bytes:
        try:
            async with self._session.request(method, url, **kwargs) as response:
                body = await response.read()
                if response.status == 410:
                    raise PeerRemoved(_message(body))
                if response.status != 200:
                    raise PeerError(f"{url} answered {response.status}: {body[:200]!r}")
                return body
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
            raise PeerError(f"refused {url}: its TLS certificate does not verify ({reason})") from exc
        except aiohttp.ServerDisconnectedError as exc:
            if self._presents_certificate and url.startswith("https://"):
                # Under TLS 1.3 a peer refuses a client certificate after the handshake, by
                # closing the connection: to us that looks just like this.
                raise PeerError(
                    f"{url} closed the connection (a TLS peer does so when this node's "
                    "certificate is not from its --tls-ca)"
                ) from exc
            raise PeerError(f"cannot reach {url}: {exc}") from exc
        except aiohttp.ClientSSLError as exc:
            raise PeerError(f"TLS with {url} failed: {_ssl_reason(exc)}") from exc
        except aiohttp.ClientError as exc:
            raise PeerError(f"cannot reach {url}: {exc}") from exc
        except TimeoutError as exc:
            raise PeerError(f"{url} did not answer in time") from exc

    async def close(self) -> None:
        await self._session.close()


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    """OpenSSL's reason (`tlsv13 alert certificate required`), not aiohttp's whole repr."""
    cause = exc.os_error
    reason = getattr(cause, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(cause)


def _message(body: bytes) -> str:
    """The message of a JSON error answer, else the start of the body."""
    try:
        return str(orjson.loads(body)["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return repr(body[:200])
