"""TLS with real handshakes: HTTPS nodes, mutual TLS between peers, `cluster up --tls`, and the
clients' CA and certificate options. Certificates come from shareddb.certs, made in tmp_path.

The peers' certificates come from one CA ("cluster"); an intruder's from another ("other"), which
it presents to a node while trusting the cluster's CA itself, so only its own certificate is wrong.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from shareddb import tls
from shareddb.certs import NodeFiles, make_cluster
from shareddb.client import Client, ClientError
from tests.harness import NodeProcess, free_port_pair, run_cli, stop_all, wait_for

pytestmark = pytest.mark.cluster

HOSTS = ("127.0.0.1", "localhost")
REPLICATE_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Certificates:
    a: NodeFiles  # cluster CA
    b: NodeFiles  # cluster CA
    intruder: NodeFiles  # another CA

    @property
    def ca(self) -> Path:
        return self.a.ca


@dataclass
class Pair:
    """Two nodes with mutual TLS that replicate with each other, shared by the tests of a module."""

    certs: Certificates
    a: NodeProcess
    b: NodeProcess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    root = tmp_path_factory.mktemp("certs")
    a, b = make_cluster(root / "cluster", ["a", "b"], HOSTS)
    (intruder,) = make_cluster(root / "other", ["intruder"], HOSTS)
    return Certificates(a, b, intruder)


@pytest.fixture(scope="module")
def pair(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("pair")
    a = NodeProcess(root / "a", "a", *certs.a.flags())
    b = NodeProcess(root / "b", "b", *certs.b.flags())
    try:
        a.start()
        b.args += ["--peers", a.url]
        b.start()
        yield Pair(certs, a, b)
    finally:
        stop_all([a, b])


def client(url: str, certs: Certificates) -> Client:
    """A client of the cluster that trusts its CA and has no certificate of its own."""
    return Client(url, ca=certs.ca, timeout=5)


def value_at(url: str, ca: str | Path, key: str) -> str | None:
    with Client(url, ca=ca, timeout=5) as db:
        entry = db.get(key)
    return entry.value if entry else None


def readable(url: str, key: str, certs: Certificates) -> str | None:
    return value_at(url, certs.ca, key)


def plain_http_answer(port: int) -> bytes:
    """Everything a TLS node sends back to a plain-HTTP request, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def log_lines(node: NodeProcess, pattern: str) -> list[str]:
    return [line for line in node.logs().splitlines() if re.search(pattern, line)]


# -- serving HTTPS -------------------------------------------------------------------------------


def test_node_with_a_certificate_serves_https_only(pair: Pair) -> None:
    assert pair.a.url.startswith("https://")
    with client(pair.a.url, pair.certs) as db:
        assert db.health() == {"status": "ok", "node": "a"}

    # Plain HTTP on the same port gets no HTTP answer, and the node logs nothing for it.
    before = pair.a.logs()
    answer = plain_http_answer(pair.a.port)
    assert not answer.startswith(b"HTTP/"), answer
    assert b"HTTP/1." not in answer, answer
    with client(pair.a.url, pair.certs) as db:
        assert db.health()["node"] == "a"  # still serving
    new_lines = pair.a.logs()[len(before) :]
    assert not re.search(r"(?i)ssl|handshake|traceback|error", new_lines), new_lines

    # Its certificate is not from a CA the system trusts: a client must be given the cluster's.
    unverified = r"certificate does not verify.*--ca"
    with pytest.raises(ClientError, match=unverified), Client(pair.a.url) as db:
        db.health()


def test_client_endpoints_need_no_client_certificate(pair: Pair) -> None:
    with client(pair.a.url, pair.certs) as db:
        written = db.put("tls/no-cert", "plain client")
        entry = db.get("tls/no-cert")
        assert entry is not None
        assert (entry.value, entry.version) == ("plain client", written.version)
        assert [e.key for e in db.items("tls/no-cert")] == ["tls/no-cert"]
    # A client certificate from the cluster's CA is accepted too.
    with Client(pair.a.url, ca=pair.certs.ca, cert=pair.certs.b.cert, key=pair.certs.b.key) as db:
        assert db.get("tls/no-cert") is not None


def test_backup_and_restore_reach_an_https_node_with_the_ca(pair: Pair, tmp_path: Path) -> None:
    """backup, restore and import are clients of a node too: --ca reaches it, and without it the
    certificate is refused in one line."""
    with client(pair.a.url, pair.certs) as db:
        db.put("tls/backed-up", "kept")
    saved = tmp_path / "a.snapshot"
    ca = str(pair.certs.ca)
    done = run_cli("backup", str(saved), "--url", pair.a.url, "--ca", ca, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert b'"tls/backed-up"' in saved.read_bytes()
    refused = run_cli("backup", str(tmp_path / "b.snapshot"), "--url", pair.a.url)
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "certificate" in refused.stderr
    done = run_cli("restore", str(saved), "--url", pair.b.url, "--ca", ca, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr


# -- mutual TLS between peers --------------------------------------------------------------------


def test_peers_with_certificates_of_the_cluster_ca_replicate(pair: Pair) -> None:
    with client(pair.a.url, pair.certs) as db:
        db.put("tls/from-a", "written on a")
    with client(pair.b.url, pair.certs) as db:
        db.put("tls/from-b", "written on b")
    nodes = (pair.a, pair.b)
    for url, key, value in (
        (pair.b.url, "tls/from-a", "written on a"),
        (pair.a.url, "tls/from-b", "written on b"),
    ):
        wait_for(
            lambda: readable(url, key, pair.certs) == value,  # noqa: B023
            REPLICATE_TIMEOUT,
            f"{key} to reach {url} over mutual TLS",
            nodes,
        )
    with client(pair.a.url, pair.certs) as db:
        members = db.cluster()["members"]
    assert [(m["id"], m["url"], m["state"]) for m in members] == [("b", pair.b.url, "up")]


def test_peer_with_a_certificate_from_another_ca_is_refused(pair: Pair, tmp_path: Path) -> None:
    certs = pair.certs
    with client(pair.a.url, certs) as db:
        db.put("tls/secret", "stays on the cluster")
    # The intruder trusts the cluster's CA, so only its own certificate is wrong.
    intruder = NodeProcess(
        tmp_path / "intruder",
        "intruder",
        "--tls-cert",
        str(certs.intruder.cert),
        "--tls-key",
        str(certs.intruder.key),
        "--tls-ca",
        str(certs.ca),
        "--peers",
        pair.a.url,
    )
    try:
        intruder.start()
        refusal = r"refused a TLS connection: its client certificate does not verify"
        wait_for(
            lambda: log_lines(pair.a, refusal) and log_lines(intruder, re.escape(pair.a.url)),
            REPLICATE_TIMEOUT,
            "a to refuse the intruder's pull",
            [pair.a, intruder],
        )
        # One line on each side, however often the intruder tries.
        assert len(log_lines(pair.a, refusal)) == 1, pair.a.logs()
        failed = log_lines(intruder, re.escape(pair.a.url))
        assert len(failed) == 1, intruder.logs()
        assert "certificate is not from its --tls-ca" in failed[0], failed
        # No data crossed, and the intruder did not become a member of the cluster.
        with Client(intruder.url, ca=certs.intruder.ca, timeout=5) as db:
            assert db.get("tls/secret") is None
        with client(pair.a.url, certs) as db:
            assert "intruder" not in {m["id"] for m in db.cluster()["members"]}
        # Presented by a client, the intruder's certificate fails the handshake as well; more
        # refusals within the minute add no line.
        context = tls.client_context(certs.ca, certs.intruder.cert, certs.intruder.key)
        for _ in range(3):
            with pytest.raises(httpx.TransportError), httpx.Client(verify=context) as http:
                http.get(pair.a.url + "/health")
        assert len(log_lines(pair.a, refusal)) == 1, pair.a.logs()
        assert "Traceback" not in pair.a.logs() + intruder.logs()
    finally:
        stop_all([intruder])


async def test_peer_certified_only_for_a_verified_client_certificate(certs: Certificates) -> None:
    """tls.peer_certified, which the peer endpoints use, over real handshakes."""

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.json_response({"certified": tls.peer_certified(request)})

    async def certified(server: ssl.SSLContext, cert: NodeFiles | None) -> bool:
        runner = web.ServerRunner(web.Server(handler))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
        await site.start()
        port = runner.addresses[0][1]
        pem = (cert.cert, cert.key) if cert else (None, None)
        try:
            async with httpx.AsyncClient(verify=tls.client_context(certs.ca, *pem)) as http:
                answer = await http.get(f"https://127.0.0.1:{port}/")
            flag: bool = answer.json()["certified"]
            return flag
        finally:
            await runner.cleanup()

    mutual = tls.server_context(certs.a.cert, certs.a.key, certs.ca)
    assert await certified(mutual, certs.b) is True
    assert await certified(mutual, None) is False
    # A node without --tls-ca asks for no certificate: none counts, even a good one.
    server_only = tls.server_context(certs.a.cert, certs.a.key)
    assert await certified(server_only, certs.b) is False


# -- configuration errors ------------------------------------------------------------------------


def test_unusable_certificate_files_are_one_line_errors(certs: Certificates, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    a, b = certs.a, certs.b
    missing = tmp_path / "nope.pem"
    cases = [
        ((missing, a.key, None), f"cannot read --tls-cert {missing}: No such file or directory"),
        ((a.cert, b.key, None), f"--tls-key {b.key} is not the key of the certificate in {a.cert}"),
        ((a.cert, None, None), "--tls-cert needs --tls-key as well"),
        ((None, a.key, None), "--tls-key needs --tls-cert as well"),
        ((None, None, a.ca), "--tls-ca needs --tls-cert and --tls-key"),
        ((garbage, a.key, None), f"--tls-cert {garbage} or --tls-key {a.key} is not a PEM"),
        ((a.cert, a.key, garbage), f"--tls-ca {garbage} holds no PEM CA certificate"),
    ]
    for (cert, key, ca), expected in cases:
        with pytest.raises(tls.TlsError) as raised:
            tls.node_contexts(cert, key, ca)
        assert str(raised.value).startswith(expected), (expected, str(raised.value))
        assert "\n" not in str(raised.value)
    tls.check_peer_urls([("--peers", "https://10.0.0.2:8443"), ("--join", None)])
    with pytest.raises(tls.TlsError, match=r"^--peers http://10\.0\.0\.3:8443 is plain HTTP"):
        tls.check_peer_urls([("--peers", "https://10.0.0.2:8443"), ("--peers", "http://10.0.0.3:8443")])


def test_serve_with_an_unusable_key_exits_with_one_line(certs: Certificates, tmp_path: Path) -> None:
    def serve(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        data = str(tmp_path / name)
        return run_cli("serve", "--port", "0", "--data", data, *args, timeout=CLI_TIMEOUT)

    a, b = certs.a, certs.b
    with ThreadPoolExecutor(3) as pool:
        mismatched = pool.submit(serve, "m", "--tls-cert", str(a.cert), "--tls-key", str(b.key))
        # From the environment, as every setting can be given.
        missing = pool.submit(
            run_cli,
            "serve",
            "--port",
            "0",
            "--data",
            str(tmp_path / "n"),
            env={"SHAREDDB_TLS_CERT": str(a.cert), "SHAREDDB_TLS_KEY": str(tmp_path / "no-key.pem")},
            timeout=CLI_TIMEOUT,
        )
        plain_peer = pool.submit(serve, "p", *a.flags(), "--peers", "http://127.0.0.1:9")
    for result, expected in (
        (mismatched.result(), "is not the key of the certificate"),
        (missing.result(), "cannot read --tls-key"),
        (plain_peer.result(), "--peers http://127.0.0.1:9 is plain HTTP"),
    ):
        assert result.returncode != 0, result
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith("shareddb: "), result.stderr
        assert expected in result.stderr, result.stderr


# -- cluster up --tls ----------------------------------------------------------------------------


def test_cluster_up_tls_starts_nodes_that_replicate_and_a_client_reads_with_the_ca(
    tmp_path: Path,
) -> None:
    base = free_port_pair()
    data = tmp_path / "data"
    out = tmp_path / "cluster.out"
    args = ["cluster", "up", "--tls", "--nodes", "2", "--base-port", str(base), "--data", str(data)]
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shareddb", *args], stdout=log, stderr=subprocess.STDOUT
        )
    urls = [f"https://127.0.0.1:{base + i}" for i in range(2)]

    def output() -> str:
        return out.read_text("utf-8", "replace")

    def listening() -> bool:
        return all(f"node{i} listening on https://" in output() for i in (1, 2))

    try:
        wait_for(lambda: listening() or proc.poll() is not None, 30, "cluster up to start")
        assert proc.poll() is None, output()
        printed = re.search(r"--ca (\S+)", output())
        assert printed is not None, output()
        ca = printed.group(1)
        assert Path(ca) == (data / "tls" / "ca.pem").resolve(), output()

        with Client(urls[0], ca=ca) as db:
            db.put("up/tls", "hello")
        wait_for(
            lambda: value_at(urls[1], ca, "up/tls") == "hello",
            REPLICATE_TIMEOUT,
            f"node2 to serve a write made on node1:\n{output()}",
        )
        # The command line reads with the CA it printed, and does not trust the nodes without it.
        with ThreadPoolExecutor(2) as pool:
            trusted = pool.submit(
                run_cli, "get", "up/tls", "--url", urls[1], "--ca", ca, timeout=CLI_TIMEOUT
            )
            untrusted = pool.submit(run_cli, "get", "up/tls", "--url", urls[1], timeout=CLI_TIMEOUT)
        assert (trusted.result().returncode, trusted.result().stdout) == (0, "hello\n"), trusted
        refused = untrusted.result()
        assert refused.returncode != 0
        assert "certificate does not verify" in refused.stderr, refused.stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output()
    assert "Traceback" not in output()
