"""Hostile clients on real node processes: SPEC.md, "Hostile clients" (invariant 6: bad input gets
a clear 4xx and changes nothing; no request crashes a node).

Read deadlines (slow head, stalled body, idle keep-alive) that never cut a watch stream or a peer's
long poll; malformed requests answered in JSON without a traceback in the log; a zip bomb refused
without being inflated; the connection cap (who makes room, who gets 503), running out of open
files, and a thousand connections trickling request heads under an open-files limit of 1024 while
another client is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import resource
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.harness import NodeProcess, eventually
from tests.harness.sse import open_watch

pytestmark = pytest.mark.cluster

DEADLINE = 1.0  # every read deadline of the `guarded` node, in seconds
SLACK = 3.0  # how much later than its deadline a connection may be closed on a busy machine
ATTACKERS = 1000
OPEN_FILES = 1024


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node whose head, body and idle deadlines are all DEADLINE seconds."""
    data = tmp_path_factory.mktemp("hostile") / "guarded"
    seconds = str(DEADLINE)
    node = NodeProcess(
        data,
        "guarded",
        *("--head-timeout", seconds, "--body-timeout", seconds, "--idle-timeout", seconds),
    )
    node.start()
    yield node
    node.cleanup()


async def connect(node: NodeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", node.port)


async def until_closed(reader: asyncio.StreamReader, node: NodeProcess) -> bytes:
    """Everything the node sends until it closes the connection; fails if it is still open past
    the deadline and its slack."""
    received = b""
    try:
        async with asyncio.timeout(DEADLINE + SLACK):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        raise AssertionError(f"connection still open; node log:\n{node.logs()}") from None
    except ConnectionResetError:
        pass
    return received


async def test_request_head_not_complete_in_time_is_closed(guarded: NodeProcess) -> None:
    silent_reader, silent = await connect(guarded)
    trickle_reader, trickle = await connect(guarded)
    started = time.monotonic()

    async def trickle_head() -> None:
        # One byte every fifth of the deadline: bytes keep coming, the head never completes.
        for byte in b"GET /health HTTP/1.1\r\nHost: node\r\n":
            if trickle.is_closing():
                return
            trickle.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await trickle.drain()
            await asyncio.sleep(DEADLINE / 5)

    writer = asyncio.create_task(trickle_head())
    received = await asyncio.gather(
        until_closed(silent_reader, guarded), until_closed(trickle_reader, guarded)
    )
    elapsed = time.monotonic() - started
    writer.cancel()
    silent.close()
    trickle.close()
    assert list(received) == [b"", b""]
    assert elapsed >= DEADLINE * 0.9


async def test_stalled_body_is_closed_and_a_slow_steady_body_is_stored(guarded: NodeProcess) -> None:
    stalled_reader, stalled = await connect(guarded)
    stalled.write(b"PUT /v1/kv/stalled HTTP/1.1\r\nHost: node\r\nContent-Length: 20\r\n\r\nfive.")
    started = time.monotonic()

    async def steady() -> int:
        """A body that takes three deadlines to arrive, a byte every third of one."""
        reader, writer = await connect(guarded)
        writer.write(b"PUT /v1/kv/steady HTTP/1.1\r\nHost: node\r\nContent-Length: 9\r\n\r\n")
        for byte in b"123456789":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(DEADLINE / 3)
        status_line = await asyncio.wait_for(reader.readline(), DEADLINE + SLACK)
        writer.close()
        return int(status_line.split()[1])

    status, received = await asyncio.gather(steady(), until_closed(stalled_reader, guarded))
    stalled.close()
    assert received == b""
    assert time.monotonic() - started >= DEADLINE * 0.9
    assert status == 201
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        assert (await client.get("/v1/kv/steady")).text == "123456789"
        assert (await client.get("/v1/kv/stalled")).status_code == 404


async def test_idle_keep_alive_connection_is_closed(guarded: NodeProcess) -> None:
    reader, writer = await connect(guarded)
    request = b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n"
    # Requests half a deadline apart keep the connection open past its deadline...
    for _ in range(4):
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE + SLACK)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(DEADLINE / 2)
    # ...and one idle for the deadline closes it.
    idle_since = time.monotonic()
    assert await until_closed(reader, guarded) == b""
    assert time.monotonic() - idle_since >= DEADLINE * 0.4
    writer.close()


async def test_watch_stream_and_peer_long_poll_outlast_every_deadline(guarded: NodeProcess) -> None:
    wait = 3 * DEADLINE
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30.0) as client:
        # A puller's first pull learns the feed's instance and end; its next one waits there.
        feed = (await client.get("/v1/peer/changes", params={"limit": "1000"})).json()
        watch = await open_watch(client, guarded.url, prefix="hostile/")
        assert watch.status == 200
        # The long poll comes pipelined behind another request, and the first byte of a third
        # request follows while it waits: it is an answer in progress all the same.
        target = f"/v1/peer/changes?since={feed['last_seq']}&instance={feed['instance']}&wait={wait}"
        reader, writer = await connect(guarded)
        started = time.monotonic()
        writer.write(
            b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n"
            + f"GET {target} HTTP/1.1\r\nHost: node\r\n\r\n".encode()
        )
        health = await asyncio.wait_for(reader.readuntil(b"}"), DEADLINE)
        assert health.startswith(b"HTTP/1.1 200"), health
        writer.write(b"G")
        poll = await asyncio.wait_for(reader.readuntil(b'"changes":[]}'), wait + SLACK)
        writer.close()
        assert poll.startswith(b"HTTP/1.1 200"), poll
        assert time.monotonic() - started >= wait * 0.9
        assert not watch.ended
        await client.put("/v1/kv/hostile/after", content=b"still watched")
        await eventually(lambda: bool(watch.events), "the watch event", 10.0)
        assert watch.events[0].value == "still watched"
        await watch.close()


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of `inflated` zero bytes: about a thousandth of that on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(inflated // len(block))]
    return b"".join(parts) + compressor.flush()


async def test_zip_bomb_is_413_without_being_inflated_into_memory(guarded: NodeProcess) -> None:
    inflated = 128 * 1024 * 1024
    bomb = gzip_bomb(inflated)
    assert len(bomb) < 256 * 1024
    peak_before = guarded.hwm_bytes()
    assert peak_before is not None
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30.0) as client:
        reply = await client.put("/v1/kv/bomb", content=bomb, headers={"Content-Encoding": "gzip"})
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"] == "too_large"
        assert (await client.get("/v1/kv/bomb")).status_code == 404
    peak_after = guarded.hwm_bytes()
    assert peak_after is not None
    grown = peak_after - peak_before
    assert grown < 48 * 1024 * 1024, f"peak memory grew by {grown} bytes for a {inflated}-byte bomb"


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /health HTTP/9.9\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: node\r\nNo colon here\r\n\r\n",
    b"PUT /v1/kv/k HTTP/1.1\r\nHost: node\r\nContent-Length: ten\r\n\r\n",
    b"PUT /v1/kv/k HTTP/1.1\r\nHost: node\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"PUT /v1/kv/k HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"GET /h\x00ealth HTTP/1.1\r\nHost: node\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + b"X-Many: header\r\n" * 200 + b"\r\n",
    b"GET /health HTTP/1.1\r\nX-Long: " + b"y" * 20000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain HTTP port
]


async def test_malformed_requests_get_a_json_4xx_and_no_traceback(guarded: NodeProcess) -> None:
    log_before = len(guarded.logs().splitlines())
    for raw in MALFORMED:
        reader, writer = await connect(guarded)
        writer.write(raw)
        answer = await until_closed(reader, guarded)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        assert 400 <= status < 500, (raw[:40], answer)
        assert b"application/json" in head, (raw[:40], answer)
        error = orjson.loads(body)
        assert error["error"] == "bad_request", (raw[:40], error)
        assert error["message"].startswith("malformed request: "), error
        assert "\n" not in error["message"]
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/kv/k")).status_code == 404  # nothing was written
    new_lines = guarded.logs().splitlines()[log_before:]
    assert len(new_lines) <= len(MALFORMED), "\n".join(new_lines)
    assert not [line for line in new_lines if "Traceback" in line or "Error" in line], new_lines


async def test_an_encoding_the_parser_knows_but_cannot_inflate_is_415_not_advice_to_install(
    guarded: NodeProcess,
) -> None:
    """aiohttp's parser refuses br and zstd bodies itself when their modules are not installed,
    before any handler runs: that was a 400 telling the client to "install `Brotli`"."""
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        for encoding in ("br", "zstd"):
            for method, target in (
                ("PUT", "/v1/kv/squeezed"),
                ("POST", "/v1/txn"),
                ("POST", "/v1/snapshot"),
            ):
                reply = await client.request(
                    method, target, content=b"x" * 64, headers={"Content-Encoding": encoding}
                )
                assert reply.status_code == 415, (encoding, target, reply.text)
                assert reply.json() == {
                    "error": "unsupported_media_type",
                    "message": f"Content-Encoding '{encoding}' is not supported; use gzip or deflate",
                }
        assert (await client.get("/v1/kv/squeezed")).status_code == 404


async def test_at_the_cap_the_longest_waiting_connection_makes_room_and_busy_ones_stay(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "capped", "capped", "--max-connections", "2").start()
    try:
        # Two connections waiting for the rest of their request heads: the cap is reached. The
        # node accepts connections in the order they were made, so `oldest` is the older.
        oldest_reader, oldest = await connect(node)
        oldest.write(b"GET /hea")
        await oldest.drain()
        younger_reader, younger = await connect(node)
        younger.write(b"GET /hea")
        await younger.drain()
        # A whole request on a third connection is answered, and the oldest one made room.
        reader, writer = await connect(node)
        writer.write(b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        assert (await until_closed(reader, node)).startswith(b"HTTP/1.1 200")
        assert await until_closed(oldest_reader, node) == b""
        younger.write(b"lth HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        assert (await until_closed(younger_reader, node)).startswith(b"HTTP/1.1 200")
        oldest.close()
        younger.close()
        writer.close()
        # Two watch streams are busy answering: neither is closed, a newcomer gets 503 at once.
        async with httpx.AsyncClient(timeout=10.0) as client:
            watches = [await open_watch(client, node.url, prefix="") for _ in range(2)]
            assert [w.status for w in watches] == [200, 200]
            reader, writer = await connect(node)
            writer.write(b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n")
            head, _, body = (await until_closed(reader, node)).partition(b"\r\n\r\n")
            writer.close()
            assert head.startswith(b"HTTP/1.1 503"), head
            assert b"Retry-After: 1" in head
            assert orjson.loads(body)["error"] == "unavailable"
            # One watcher leaves; once the node sees it go, a write gets through and the other
            # watcher, open all along, sees it.
            await watches[1].close()
            deadline = time.monotonic() + 10.0
            while (await client.put(f"{node.url}/v1/kv/seen", content=b"yes")).status_code == 503:
                assert time.monotonic() < deadline, node.logs()
                await asyncio.sleep(0.05)
            await eventually(lambda: bool(watches[0].events), "the watch event", 10.0)
            assert not watches[0].ended
            await watches[0].close()
    finally:
        node.cleanup()
    assert "connection limit of 2 reached" in node.logs()


async def test_running_out_of_open_files_neither_spins_nor_stops_the_node(tmp_path: Path) -> None:
    """A cap set above what the open-files limit allows: accepting fails with EMFILE."""
    node = NodeProcess(
        tmp_path / "starved", "starved", "--max-connections", "1000", open_files=64
    ).start()
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(100):
            _, writer = await connect(node)
            writer.write(b"GET /health HTTP/1.1\r\n")
            held.append(writer)
        cpu_before = node.cpu_seconds()
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=node.url) as client:
            with contextlib.suppress(httpx.TransportError):
                await client.get("/health")  # refused or answered, as files allow
            await asyncio.sleep(1.0)  # measures CPU over a second: no condition to poll for
            cpu = node.cpu_seconds()
            assert cpu is not None
            assert cpu_before is not None
            assert cpu - cpu_before < 0.5 * (time.monotonic() - started), "accept loop spins"
            for writer in held:
                writer.close()
            deadline = time.monotonic() + 10.0
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                assert time.monotonic() < deadline, node.logs()
                await asyncio.sleep(0.05)
        assert node.running()
    finally:
        node.cleanup()
    assert "Traceback" not in node.logs()


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this test needs {needed} open files, the hard limit here is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Attack:
    """ATTACKERS connections, each sending a request head one byte at a time and opening another
    connection when the node closes it."""

    HEAD = b"GET /health HTTP/1.1\r\nHost: node\r\nX-Slow: " + b"s" * 64 + b"\r\n\r\n"

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._one()) for _ in range(ATTACKERS)]

    async def _one(self) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.opened += 1
            try:
                for byte in self.HEAD[:-1]:  # never the last byte
                    writer.write(bytes([byte]))
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            if not await reader.read(1024):
                                break  # closed by the node
                    if self.stop.is_set():
                        break
            except OSError:
                pass
            finally:
                writer.close()

    async def end(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def well_behaved_client(port: int, seconds: float) -> tuple[list[float], list[str]]:
    """GET a key on a new connection every 20 ms for `seconds`: each request's latency, and the
    failures."""
    latencies: list[float] = []
    failures: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/v1/kv/answered")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or body != b"yes":
                failures.append(f"{response.status} {body!r}")
        except OSError as exc:
            failures.append(repr(exc))
        finally:
            connection.close()
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    return latencies, failures


async def test_thousand_trickling_connections_leave_the_node_answering_others(
    tmp_path: Path,
) -> None:
    raise_open_files(ATTACKERS * 2 + 200)
    node = NodeProcess(tmp_path / "target", "target", open_files=OPEN_FILES)
    node.start()
    attack = Attack(node.port)
    try:
        async with httpx.AsyncClient(base_url=node.url) as client:
            assert (await client.put("/v1/kv/answered", content=b"yes")).status_code == 201
        attack.start()
        deadline = time.monotonic() + 20.0
        while attack.opened < ATTACKERS:  # polled here, where the attack runs
            assert time.monotonic() < deadline, f"{attack.opened} connections:\n{node.logs()}"
            await asyncio.sleep(0.05)
        # In a thread of its own, so its timings are not the attack's event loop's.
        latencies, failures = await asyncio.to_thread(well_behaved_client, node.port, 5.0)
        figures = (
            f"{len(latencies)} requests during the attack, p99 {p99(latencies) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms, {attack.opened} attacking connections opened"
        )
        print(figures)
        assert not failures, f"{failures[:5]}: {figures}\n{node.log_tail(20)}"
        assert p99(latencies) < 2.0, figures
    finally:
        await attack.end()
        node.cleanup()
    assert "connection limit of 896 reached" in node.logs()  # the default: 1024 less 128
    assert "Traceback" not in node.logs()
