"""Every setting of `shareddb serve`, documented where it is declared.

Each one is a command-line flag and an environment variable `SHAREDDB_<FLAG>`; the flag wins. The
README's configuration table lists these same entries, and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shareddb.record import DEFAULT_MAX_VALUE_BYTES
from shareddb.tokens import Network


@dataclass(frozen=True, slots=True)
class Setting:
    flag: str
    default: str
    meaning: str

    @property
    def env(self) -> str:
        return "SHAREDDB_" + self.flag.removeprefix("--").replace("-", "_").upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("--port", "8080", "TCP port to listen on; 0 picks a free one (the log line names it)."),
    Setting("--host", "127.0.0.1", "Address to listen on; 0.0.0.0 for every interface."),
    Setting("--data", "./data", "Directory of the node's store and identity; one node per directory."),
    Setting(
        "--node-id",
        "the id stored in --data, else node-<random>",
        "This node's id (A-Z a-z 0-9 _ . -). Stored in --data on first start; "
        "a different id on a later start is refused.",
    ),
    Setting(
        "--advertise",
        "http://HOST:PORT",
        "The URL other nodes use to reach this one.",
    ),
    Setting("--peers", "none", "Comma-separated URLs of nodes to replicate with."),
    Setting("--join", "none", "URL of one member of an existing cluster to join through."),
    Setting(
        "--store",
        "sqlite",
        "Storage backend: sqlite (embedded, in --data) or redis://HOST:PORT/DB "
        "(one Redis database per node, durable as its AOF settings make it).",
    ),
    Setting(
        "--registry",
        "none",
        "Redis URL (redis://HOST:PORT/DB) of a node registry shared by the cluster: this node "
        "announces itself there with a heartbeat and replicates with every node it finds; "
        "works together with --peers and --join.",
    ),
    Setting(
        "--registry-ttl",
        "15",
        "Seconds without a heartbeat before a node's registry entry expires; the others then show "
        "it as left and stop pulling it until it announces itself again.",
    ),
    Setting(
        "--bus",
        "none",
        "NATS JetStream server (nats://HOST:PORT, optionally /CLUSTER) to replicate through: "
        "every node on it publishes its writes there once and reads everyone else's; no --peers "
        "needed. Without it, nodes pull from their peers.",
    ),
    Setting(
        "--bus-retention",
        "604800",
        "Seconds the bus stream keeps a change when this node creates it; a node that was away "
        "longer copies the data set from a peer, then reads the stream again.",
    ),
    Setting(
        "--max-value-bytes",
        str(DEFAULT_MAX_VALUE_BYTES),
        "Largest value accepted, in UTF-8 bytes; larger writes get 413.",
    ),
    Setting(
        "--token",
        "none",
        "An admin token: with it (or --tokens), every client endpoint except /health needs "
        "`Authorization: Bearer <token>`.",
    ),
    Setting(
        "--tokens",
        "none",
        "File of client tokens, one `ROLE TOKEN` per line (ROLE: read, write or admin; # starts a "
        "comment); re-read on SIGHUP.",
    ),
    Setting(
        "--peer-token",
        "none",
        "Token peers must present on the replication endpoints; no client token opens them.",
    ),
    Setting(
        "--peer-allow",
        "none",
        "Comma-separated networks (CIDR) or addresses that, besides loopback, may use the "
        "replication endpoints of a node without a peer token or mutual TLS.",
    ),
    Setting(
        "--tls-cert",
        "none",
        "PEM certificate (chain) of this node; with --tls-key the node serves HTTPS only and its "
        "peer URLs are https://.",
    ),
    Setting("--tls-key", "none", "PEM private key of --tls-cert."),
    Setting(
        "--tls-ca",
        "none",
        "PEM CA certificate(s) for mutual TLS between peers: peers present a certificate from it "
        "and verify each other's against it alone; clients need none.",
    ),
    Setting(
        "--watch-ping",
        "15",
        "Seconds between the `: ping` comments of a watch stream (GET /v1/watch), which keep "
        "idle connections open through proxies and find clients that left.",
    ),
    Setting(
        "--head-timeout",
        "10",
        "Seconds a client has to send a whole request head, from the connection's start or the "
        "first byte of a later request; then the connection is closed.",
    ),
    Setting(
        "--body-timeout",
        "30",
        "Seconds a request body may stall (no byte received) before the connection is closed.",
    ),
    Setting(
        "--idle-timeout",
        "75",
        "Seconds a kept-alive connection may stay idle between requests before it is closed. "
        "Watch streams and peers' long polls are answers in progress, never idle.",
    ),
    Setting(
        "--max-connections",
        "the open-files limit - 128",
        "Most client connections open at once. Past it, the connection that has waited longest "
        "for a request head is closed to make room; when all are busy, a new one gets 503. "
        "With --workers, each process of the node takes this many.",
    ),
    Setting(
        "--workers",
        "1 on 2 cores or fewer, else the number of cores",
        "Processes serving the node's port (SO_REUSEPORT): the node process and N-1 workers that "
        "answer GET /v1/kv/{key} and /nodes/get from the store and hand every other request to "
        "the node process. Needs a store other processes can read (sqlite, redis://).",
    ),
    Setting(
        "--copy-chunk",
        "20000",
        "Records per chunk when this node copies a peer's whole data set (on joining, or when it "
        "is too far behind the peer's changes feed); each chunk is one commit and one step of the "
        "copy's resumable position.",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """A node's configuration, as `shareddb serve` parsed it."""

    port: int = 8080
    host: str = "127.0.0.1"
    data: Path = Path("data")
    node_id: str | None = None
    advertise: str | None = None
    peers: tuple[str, ...] = field(default_factory=tuple)
    join: str | None = None
    store: str = "sqlite"
    registry: str | None = None
    registry_ttl: float = 15.0
    bus: str | None = None
    bus_retention: float = 604_800.0
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    token: str | None = None
    tokens: Path | None = None
    peer_token: str | None = None
    peer_allow: tuple[Network, ...] = ()
    watch_ping: float = 15.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int | None = None  # None: derived from the open-files limit
    workers: int | None = None  # None: chosen for the machine (workers.default_workers)
    copy_chunk: int = 20_000
