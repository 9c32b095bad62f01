"""Roles and peers on real node processes: the tokens file and SIGHUP, peer endpoints that no client
token opens, and the command line and Python client facing a token whose role is too low.

Which role opens which endpoint is checked route by route in tests/api/test_access.py; the check
of the address a peer request comes from (`--peer-allow`) in tests/unit/test_tokens.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from shareddb.client import Client, Forbidden, Unauthorized
from tests.cluster.conftest import StartNode
from tests.cluster.replication_helpers import http
from tests.cluster.test_cli import Run, check_errors, describe, run_all
from tests.harness import NodeProcess, wait_for

pytestmark = pytest.mark.cluster

RELOAD_TIMEOUT = 10.0
REPLICATE_TIMEOUT = 15.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def status(node: NodeProcess, method: str, path: str, token: str | None = None) -> int:
    body = b'{"members": []}' if path == "/v1/peer/join" else (b"v" if method == "PUT" else None)
    return http(method, node.url + path, body, bearer(token) if token else None).status


def test_the_tokens_file_is_read_again_on_sighup(start_node: StartNode, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# the first file\nread old-reader\nwrite old-writer\n")
    node = start_node("n1", "--tokens", str(tokens), "--token", "the-admin")
    assert status(node, "PUT", "/v1/kv/k", "old-writer") == 201
    assert status(node, "GET", "/v1/kv/k", "old-reader") == 200
    assert status(node, "PUT", "/v1/kv/k", "old-reader") == 403
    assert status(node, "GET", "/v1/kv/k", "new-writer") == 401

    tokens.write_text("write new-writer\nadmin old-reader\n")
    os.kill(node.pid, signal.SIGHUP)
    wait_for(
        lambda: status(node, "PUT", "/v1/kv/k", "new-writer") == 200,
        RELOAD_TIMEOUT,
        "the new token to work",
        [node],
    )
    assert status(node, "PUT", "/v1/kv/k", "old-writer") == 401  # gone from the file
    assert status(node, "POST", "/v1/cluster/leave", "new-writer") == 403  # admin only
    assert status(node, "DELETE", "/v1/cluster/members/x", "old-reader") == 404  # now an admin
    assert status(node, "GET", "/v1/kv/k", "the-admin") == 200  # --token stays
    assert "tokens reloaded" in node.logs()

    # A file the node cannot use keeps the tokens in use and says so in one line.
    tokens.write_text("write new-writer\nsuperuser x\n")
    node.signal(signal.SIGHUP)
    wait_for(lambda: "tokens not reloaded" in node.logs(), RELOAD_TIMEOUT, "the refusal", [node])
    [line] = [ln for ln in node.logs().splitlines() if "tokens not reloaded" in ln]
    assert "line 2" in line
    assert "new-writer" not in line
    assert "Traceback" not in node.logs()
    assert status(node, "PUT", "/v1/kv/k", "new-writer") == 200
    tokens.unlink()
    node.signal(signal.SIGHUP)
    wait_for(lambda: node.logs().count("tokens not reloaded") == 2, RELOAD_TIMEOUT, "refusal", [node])
    assert status(node, "GET", "/v1/kv/k", "old-reader") == 200
    assert node.running()


def test_serve_refuses_a_tokens_file_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad-role").write_text("read r1\nroot r2\n")
    shared = tmp_path / "shared"
    shared.write_text("write same\n")

    def serve(name: str, *args: str) -> Run:
        return Run(
            name, ["serve", "--port", "0", "--data", str(tmp_path / name.replace(" ", "-")), *args]
        )

    results = run_all(
        [
            serve("bad role", "--tokens", str(tmp_path / "bad-role")),
            serve(
                "peer token is a client token",
                "--tokens",
                str(tmp_path / "shared"),
                "--peer-token",
                "same",
            ),
            serve("bad network", "--peer-allow", "10.0.0.0/8,10.1.2.3/16"),
        ]
    )
    check_errors(
        results,
        {
            "bad role": "line 2: unknown role 'root'",
            "peer token is a client token": "peer token must differ",
            "bad network": "--peer-allow",
        },
    )
    assert "same" not in results["peer token is a client token"].stderr.replace("must differ", "")


def test_no_client_token_opens_a_peer_endpoint(start_node: StartNode, tmp_path: Path) -> None:
    """Invariant 8 needs it: only a peer can join or pull. With a peer token, a request without it is
    refused, from loopback too, and a client token, even admin, is 403; without a peer token, peers
    on loopback need no token (as `make run` and `cluster up` start them)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("read reader\nadmin boss\n")
    a = start_node("a", "--tokens", str(tokens), "--peer-token", "peer-secret")
    b = start_node("b", "--tokens", str(tokens), "--peer-token", "peer-secret", "--peers", a.url)
    open_ = start_node("open", "--token", "boss")  # no peer token

    for path, method in [("/v1/peer/changes?since=0&wait=0", "GET"), ("/v1/peer/join", "POST")]:
        assert status(a, method, path) == 401, path
        assert status(a, method, path, "unknown") == 401, path
        assert status(a, method, path, "boss") == 403, path
        assert status(a, method, path, "reader") == 403, path
        assert status(a, method, path, "peer-secret") == 200, path
        assert status(open_, method, path) == 200, path  # loopback, no peer token configured
    assert status(a, "GET", "/v1/kv/k", "peer-secret") == 403  # the peer token is not a client's
    assert status(a, "GET", "/nope", "peer-secret") == 404

    # The peers replicate with the peer token alone.
    assert status(a, "PUT", "/v1/kv/from-a", "boss") == 201
    wait_for(
        lambda: status(b, "GET", "/v1/kv/from-a", "reader") == 200,
        REPLICATE_TIMEOUT,
        "b to pull a's write",
        [a, b],
    )
    # A node without --tokens takes SIGHUP in its stride.
    open_.signal(signal.SIGHUP)
    wait_for(lambda: "no --tokens file" in open_.logs(), RELOAD_TIMEOUT, "the SIGHUP line", [open_])
    assert status(open_, "GET", "/health") == 200


def test_a_token_whose_role_is_too_low_is_a_readable_refusal(
    start_node: StartNode, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("read reader\nwrite writer\n")
    node = start_node("n1", "--tokens", str(tokens))
    url = ["--url", node.url]
    assert http("PUT", node.url + "/v1/kv/k", b"v", bearer("writer")).status == 201
    results = run_all(
        [
            Run("get", ["get", "k", "--token", "reader", *url]),
            Run("set", ["set", "k", "w", *url], {"SHAREDDB_TOKEN": "reader"}),
        ]
    )
    assert results["get"].stdout == "v\n", describe(results["get"])
    check_errors(results, {"set": "needs a write token; the token given is read"})

    with Client(node.url, token="reader") as db:
        assert db.get("k") is not None
        with pytest.raises(Forbidden) as refused:
            db.put("k", "w")
    assert refused.value.status == 403
    assert "write token" in refused.value.message
    with Client(node.url, token="writer") as db, pytest.raises(Forbidden) as refused:
        db.leave()
    assert refused.value.message == "this needs an admin token; the token given is write"
    with Client(node.url, token="nobody") as db, pytest.raises(Unauthorized):
        db.get("k")
