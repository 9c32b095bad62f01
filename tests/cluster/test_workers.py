"""A node on several processes (`--workers N`): real node processes, many client connections, so
that the node process and each worker answer some of them (the kernel spreads connections over
the processes by SO_REUSEPORT).

What holds whichever process answers: read-your-writes on the node that acknowledged (a GET on any
connection after a write's answer sees it, and never an older value afterwards), expired values
hidden, tokens and peer rules, watch streams, /metrics counting every process's requests; a worker
that dies is started again; SIGTERM stops them all; no second node can take the port.
"""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from shareddb.certs import make_cluster
from shareddb.workers import MAX_RESTARTS
from tests.harness import NodeProcess, running_redis, wait_for
from tests.harness.procfs import children_of

pytestmark = pytest.mark.cluster

WORKERS = 3
CONNECTIONS = 24  # P(some process gets none) = 3 * (2/3)^24, about 2 in 10,000
READ = "read-token-of-the-workers-test"
WRITE = "write-token-of-the-workers-test"
NEW_READ = "read-token-added-by-sighup"


Connect = Callable[..., list[http.client.HTTPConnection]]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """`connect(node, count)`: that many open keep-alive connections, closed after the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_(node: NodeProcess, count: int = CONNECTIONS) -> list[http.client.HTTPConnection]:
        conns = [http.client.HTTPConnection("127.0.0.1", node.port, timeout=10) for _ in range(count)]
        opened.extend(conns)
        for conn in conns:
            conn.connect()
        return conns

    yield open_
    for conn in opened:
        conn.close()


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: str | None = None,
    token: str | None = WRITE,
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _socket_counts(pids: list[int]) -> dict[int, int]:
    counts = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        counts[pid] = sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))
    return counts


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data = tmp_path_factory.mktemp("workers")
    tokens = data / "tokens"
    tokens.write_text(f"read {READ}\nwrite {WRITE}\n")
    started = NodeProcess(data / "w1", "w1", "--workers", str(WORKERS), "--tokens", str(tokens))
    started.start()
    yield started
    started.cleanup()


def test_every_process_answers_some_connections(node: NodeProcess, connect: Connect) -> None:
    processes = [node.pid, *children_of(node.pid)]
    assert len(processes) == WORKERS, node.logs()
    before = _socket_counts(processes)
    conns = connect(node)
    for conn in conns:
        assert _request(conn, "GET", "/v1/kv/nothing-here", token=READ)[0] == 404
    after = _socket_counts(processes)
    serving = [pid for pid in processes if after[pid] > before[pid]]
    assert len(serving) == WORKERS, (before, after)


def test_a_read_after_a_write_sees_it_on_every_process(node: NodeProcess, connect: Connect) -> None:
    """Read-your-writes on the node that acknowledged, and never a stale value after a write."""
    conns = connect(node)
    for round_ in range(30):
        writer = conns[round_ % len(conns)]
        value = f"value {round_}"
        assert _request(writer, "PUT", "/v1/kv/ryw", value)[0] in (200, 201)
        for conn in conns:
            assert _request(conn, "GET", "/v1/kv/ryw", token=READ) == (200, value.encode())
        status, body = _request(conns[-1 - round_ % len(conns)], "GET", "/nodes/get?name=ryw")
        assert status == 200
        assert orjson.loads(body)["value"] == value
    assert _request(conns[0], "DELETE", "/v1/kv/ryw")[0] == 204
    for conn in conns:
        assert _request(conn, "GET", "/v1/kv/ryw", token=READ)[0] == 404


def test_a_read_after_a_write_sees_it_while_other_clients_read(
    node: NodeProcess, connect: Connect
) -> None:
    """The reads of one turn of a process's event loop share a read transaction: with other
    clients reading all the time, one is nearly always open, and a read after a write's answer
    must still see the write, on every process."""
    busy = connect(node)
    conns = connect(node)
    stop = threading.Event()
    reads = [0] * len(busy)
    statuses: set[int] = set()

    def keep_reading(index: int) -> None:
        while not stop.is_set():
            statuses.add(_request(busy[index], "GET", "/v1/kv/other", token=READ)[0])
            reads[index] += 1

    threads = [threading.Thread(target=keep_reading, args=(i,)) for i in range(len(busy))]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(40):
            value = f"value {round_}"
            assert _request(conns[round_ % len(conns)], "PUT", "/v1/kv/ryw-busy", value)[0] in (200, 201)
            for conn in conns:
                assert _request(conn, "GET", "/v1/kv/ryw-busy", token=READ) == (200, value.encode())
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert all(reads), reads
    assert statuses == {404}


def test_an_expired_value_is_hidden_by_every_process(node: NodeProcess, connect: Connect) -> None:
    conns = connect(node)
    assert _request(conns[0], "PUT", "/v1/kv/brief?ttl=1", "soon gone")[0] == 201
    written = time.time()
    for conn in conns:
        status, _ = _request(conn, "GET", "/v1/kv/brief", token=READ)
        assert status == 200 or time.time() > written + 1
    wait_for(lambda: time.time() > written + 1.05, 5, "the expiry to pass")
    for conn in conns:
        assert _request(conn, "GET", "/v1/kv/brief", token=READ)[0] == 404
        assert _request(conn, "GET", "/nodes/get?name=brief", token=READ)[0] == 404


def test_tokens_and_peer_rules_hold_on_every_process(node: NodeProcess, connect: Connect) -> None:
    conns = connect(node)
    for conn in conns:
        assert _request(conn, "GET", "/v1/kv/x", token=None)[0] == 401
        assert _request(conn, "GET", "/v1/kv/x", token="not-a-token")[0] == 401
        assert _request(conn, "GET", "/no/such/path", token=None)[0] == 401
        assert _request(conn, "PUT", "/v1/kv/x", "v", token=READ)[0] == 403
        # No peer token: peers are trusted on loopback, which the worker's client address says.
        assert _request(conn, "GET", "/v1/peer/changes?since=0&limit=1", token=None)[0] != 401
        # A client cannot claim to be a worker's forwarded client.
        conn.request("GET", "/v1/kv/x", headers={"X-Shareddb-Worker-Client": "10.0.0.1"})
        response = conn.getresponse()
        response.read()
        assert response.status == 401


def test_metrics_count_the_requests_of_every_process(node: NodeProcess, connect: Connect) -> None:
    conns = connect(node)
    for conn in conns:
        for _ in range(5):
            assert _request(conn, "GET", "/v1/kv/counted", token=READ)[0] == 404
    wanted = 5 * len(conns)

    def counted() -> float:
        status, body = _request(conns[0], "GET", "/metrics", token=READ)
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("shareddb_http_request_duration_seconds_count") and (
                'route="/v1/kv/*"' in line and 'status="404"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total if total >= wanted else 0.0

    wait_for(counted, 5, f"{wanted} GETs counted in /metrics", [node])


def test_sighup_reloads_the_tokens_of_every_process(node: NodeProcess, connect: Connect) -> None:
    tokens = node.data.parent / "tokens"
    tokens.write_text(f"read {READ}\nwrite {WRITE}\nread {NEW_READ}\n")
    node.signal(signal.SIGHUP)
    conns = connect(node)

    def everywhere() -> bool:
        return all(_request(c, "GET", "/v1/kv/x", token=NEW_READ)[0] == 404 for c in conns)

    wait_for(everywhere, 10, "every process to take the new token", [node])


def test_watch_through_every_process(node: NodeProcess, connect: Connect) -> None:
    conns = connect(node, 9)
    for conn in conns:
        conn.request("GET", "/v1/watch?key=watched", headers={"Authorization": f"Bearer {READ}"})
    responses = [conn.getresponse() for conn in conns]
    assert all(r.status == 200 for r in responses)
    [writer] = connect(node, 1)
    assert _request(writer, "PUT", "/v1/kv/watched", "seen")[0] == 201
    for response in responses:
        event = b""
        while b"\n\n" not in event or b"event: put" not in event:
            event += response.readline()
        data = next(line for line in event.splitlines() if line.startswith(b"data: "))
        assert orjson.loads(data[6:])["value"] == "seen"


def test_a_second_node_cannot_take_the_port(node: NodeProcess, tmp_path: Path) -> None:
    other = NodeProcess(tmp_path / "w2", "w2", "--workers", "2", port=node.port)
    with pytest.raises(AssertionError, match="exited early"):
        other.start(timeout=10)
    assert "cannot listen" in other.logs()


def test_a_killed_worker_is_started_again_and_one_that_keeps_dying_stops_the_node(
    tmp_path: Path, connect: Connect
) -> None:
    node = NodeProcess(tmp_path / "k1", "k1", "--workers", "2")
    node.start()
    try:
        [worker] = children_of(node.pid)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: "started again" in node.logs(), 10, "the worker to be started again", [node])
        [again] = children_of(node.pid)
        assert again != worker
        for conn in connect(node, 12):
            assert _request(conn, "PUT", "/v1/kv/after", "kill")[0] in (200, 201)
            assert _request(conn, "GET", "/v1/kv/after") == (200, b"kill")
        # No node runs on silently with a part of its processes.
        for exits in range(2, MAX_RESTARTS + 2):
            [worker] = [pid for pid in children_of(node.pid) if pid != worker]
            os.kill(worker, signal.SIGKILL)
            if exits <= MAX_RESTARTS:
                wait_for(
                    lambda: node.logs().count("started again") == exits,  # noqa: B023
                    10,
                    f"the worker to be started again after exit {exits}",
                    [node],
                )
        assert node.proc is not None
        assert node.proc.wait(20) == 1
        assert "stopping the node" in node.logs()
    finally:
        node.cleanup()


def test_tls_and_peer_certificates_hold_on_every_process(tmp_path: Path) -> None:
    """Each worker serves the node's certificate, and tells the node process whether a client's
    certificate verified: a peer certificate opens the peer endpoints on every process, no
    certificate opens them on none."""
    mine, peer = make_cluster(tmp_path / "tls", ["t1", "peer"], ("127.0.0.1", "localhost"))
    node = NodeProcess(tmp_path / "t1", "t1", "--workers", str(WORKERS), *mine.flags())
    node.start()
    try:
        as_peer = ssl.create_default_context(cafile=str(mine.ca))
        as_peer.load_cert_chain(peer.cert, peer.key)
        as_client = ssl.create_default_context(cafile=str(mine.ca))
        changes = "/v1/peer/changes?since=0&limit=1"
        for _ in range(CONNECTIONS // 2):
            conn = http.client.HTTPSConnection("127.0.0.1", node.port, context=as_peer, timeout=10)
            try:
                assert _request(conn, "GET", changes, token=None)[0] == 200
            finally:
                conn.close()
            conn = http.client.HTTPSConnection("127.0.0.1", node.port, context=as_client, timeout=10)
            try:
                assert _request(conn, "GET", changes, token=None)[0] == 401
                assert _request(conn, "PUT", "/v1/kv/secure", "over tls", token=None)[0] in (200, 201)
                assert _request(conn, "GET", "/v1/kv/secure", token=None) == (200, b"over tls")
            finally:
                conn.close()
        workers = children_of(node.pid)
        assert len(workers) == WORKERS - 1
        assert node.stop() == 0  # SIGTERM stops every process of the node
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        node.cleanup()


def test_workers_read_a_redis_store(tmp_path: Path, connect: Connect) -> None:
    with running_redis(tmp_path / "redis") as redis:
        node = NodeProcess(tmp_path / "r1", "r1", "--workers", "2", "--store", redis.url(0))
        node.start()
        try:
            conns = connect(node, 12)
            for round_ in range(10):
                value = f"in redis {round_}"
                assert _request(conns[round_], "PUT", "/v1/kv/r", value)[0] in (200, 201)
                for conn in conns:
                    assert _request(conn, "GET", "/v1/kv/r") == (200, value.encode())
        finally:
            node.cleanup()
