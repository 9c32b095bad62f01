"""What a node knows about the change bus, apart from moving changes: its address, the names it
uses on the NATS server, and how a stream position maps to this node's feed. Pure: no I/O.

The bus itself (publishing, consuming, heartbeats) is in replication/bus.py; docs/design.md,
"The change bus", says how the two fit the pull-based replication.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_CLUSTER = "shareddb"
_CLUSTER = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Pairs (stream sequence, feed position) kept for mapping members' positions to this node's feed.
MAX_MARKS = 20_000
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


@dataclass(frozen=True, slots=True)
class BusAddress:
    """`nats://HOST:PORT[/CLUSTER]`: the server, and which cluster's stream on it."""

    server: str  # nats://HOST:PORT, as the client connects to it
    cluster: str

    @property
    def stream(self) -> str:
        return f"SHAREDDB_{self.cluster}"

    @property
    def changes(self) -> str:
        """The subjects of the stream: one per publishing node under this prefix."""
        return f"shareddb.{self.cluster}.changes"

    @property
    def heartbeats(self) -> str:
        """Plain NATS (not stored): members announce themselves and their position here."""
        return f"shareddb.{self.cluster}.members"

    def subject(self, node_id: str) -> str:
        return f"{self.changes}.{_token(node_id)}"

    @property
    def checkpoint_peer(self) -> str:
        """The name under which a node keeps its position in the stream with its checkpoints."""
        return f"bus:{self.stream}"


@dataclass(slots=True)
class BusState:
    """What /v1/cluster shows of the bus."""

    connected: bool = False
    stream_last: int = 0  # the stream's last sequence, as last seen
    stream_first: int = 0
    position: int = 0  # the stream sequence this node has applied up to (its checkpoint)
    published: int = 0  # this node's feed position published up to
    copying: str | None = None  # the URL of the peer a fallback copy reads, while it runs
    error: str | None = None  # why the bus is not working, when it is not
    members: set[str] = field(default_factory=set)  # node ids heard on the bus


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row."""
    return float(min(MAX_BACKOFF, MIN_BACKOFF * 2.0 ** min(failures, 10)))


def parse_bus_url(url: str) -> BusAddress:
    """The address in `--bus`; ValueError with a readable reason when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ValueError("use nats://HOST:PORT (optionally /CLUSTER)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number in 0..65535") from None
    if not parts.hostname or port is None:
        raise ValueError("it needs a host and a port: nats://HOST:PORT")
    cluster = parts.path.strip("/") or DEFAULT_CLUSTER
    if not _CLUSTER.fullmatch(cluster):
        raise ValueError(f"the cluster name {cluster!r} may hold only A-Z a-z 0-9 _ - (1..64)")
    if parts.query or parts.fragment:
        raise ValueError("no query or fragment")
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    auth = parts.netloc[: -len(netloc)] if "@" in parts.netloc else ""
    return BusAddress(f"{parts.scheme}://{auth}{netloc}", cluster)


def redact(server: str) -> str:
    """The server URL without a user or password, for logs and /v1/cluster."""
    parts = urlsplit(server)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}"


def consumer_name(node_id: str) -> str:
    """A node's durable consumer: its id, where NATS allows it (no `.`), else made unique."""
    return _token(node_id)


def _token(node_id: str) -> str:
    if "." not in node_id:
        return node_id
    digest = hashlib.sha256(node_id.encode()).hexdigest()[:8]
    return f"{node_id.replace('.', '_')}-{digest}"


class FeedMarks:
    """Which part of this node's feed is on the stream, and up to where: the pairs (stream
    sequence S, feed position P) meaning "everything of this node's feed up to P that it
    publishes is on the stream at or below S". A member whose consumer acknowledged S holds this
    node's feed up to P: that is its progress for `w=N`, lag and the tombstone purge."""

    def __init__(self) -> None:
        self._seqs: list[int] = []
        self._positions: list[int] = []

    def mark(self, stream_seq: int, position: int) -> None:
        if self._seqs and stream_seq < self._seqs[-1]:
            return  # an older answer arriving late: the later mark covers it
        if self._positions and position <= self._positions[-1]:
            return
        self._seqs.append(stream_seq)
        self._positions.append(position)
        if len(self._seqs) > MAX_MARKS:
            del self._seqs[: MAX_MARKS // 2], self._positions[: MAX_MARKS // 2]

    def position_at(self, stream_seq: int) -> int | None:
        """How far this node's feed is held by a consumer that acknowledged `stream_seq`; None
        when that is before every mark kept."""
        index = bisect.bisect_right(self._seqs, stream_seq)
        return self._positions[index - 1] if index else None

    def last(self) -> tuple[int, int] | None:
        return (self._seqs[-1], self._positions[-1]) if self._seqs else None

    def rewind(self, stream_seq: int) -> int:
        """The stream lost what came after `stream_seq` (a server that restarted without its
        last writes): forget the marks past it; answers the feed position to publish from again."""
        index = bisect.bisect_right(self._seqs, stream_seq)
        del self._seqs[index:], self._positions[index:]
        return self._positions[-1] if self._positions else 0
