"""Who may call what: every route, with no token, an unknown token, each role and the peer token.

The expected answers come from the table of roles in docs/api.md, and that table is checked against
the router's routes (each declares its role), so the docs, the code and the behaviour agree. Run
`python -m tests.api.test_access` to print the table as the routes declare it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shareddb.api.app import create_router
from shareddb.api.openapi import OPENAPI
from shareddb.api.routing import Route
from shareddb.config import Settings
from shareddb.node import Node
from shareddb.tokens import Role, parse_networks
from tests.api.conftest import Api, running_api

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
TABLE_HEADER = "| request | role needed |"
METHODS = ("get", "put", "post", "delete", "patch")

TOKENS = {"read": "r-token", "write": "w-token", "admin": "a-token"}
PEER_TOKEN = "p-token"
CALLERS = ("none", "unknown", "read", "write", "admin", "peer")
HEADERS: dict[str, dict[str, str]] = {
    "none": {},
    "unknown": {"Authorization": "Bearer not-a-token"},
    "peer": {"Authorization": f"Bearer {PEER_TOKEN}"},
    **{role: {"Authorization": f"Bearer {token}"} for role, token in TOKENS.items()},
}

# A concrete request for each path of the table: it must end by itself (a watch from a seq beyond the
# node's is 410 at once) and it must not stop the node from answering the rest (leaving comes last).
TARGETS = {
    "/v1/kv/{key}": "/v1/kv/walk/k",
    "/v1/cluster/members/{member}": "/v1/cluster/members/nobody",
    "/v1/watch": "/v1/watch?prefix=&since=999999",
    "/v1/peer/changes": "/v1/peer/changes?since=0&wait=0",
    "/nodes/update": "/nodes/update?name=walk&value=v",
    "/nodes/get": "/nodes/get?name=walk",
    "/nodes/remove": "/nodes/remove?name=walk",
}
BODIES = {
    "/v1/txn": b'{"if": [], "then": [{"op": "put", "key": "walk/t", "value": "v"}]}',
    "/v1/peer/join": b'{"members": []}',
    "/v1/kv/{key}": b"v",
}
LAST = ("POST", "/v1/cluster/leave")


def documented_path(route: Route) -> str:
    """A route's path as the OpenAPI document writes it: `/v1/kv/*` is `/v1/kv/{key}`."""
    if not route.path.endswith("/*"):
        return route.path
    prefix = route.path[:-1]
    names = [
        p
        for p in OPENAPI["paths"]
        if p.startswith(prefix) and re.fullmatch(r"\{\w+\}", p[len(prefix) :])
    ]
    assert len(names) == 1, f"{route.path}: no single {prefix}{{param}} path in the OpenAPI document"
    return str(names[0])


def table_rows(routes: tuple[Route, ...]) -> list[tuple[str, str]]:
    return [(f"{r.method} {documented_path(r)}", r.role.label) for r in routes]


def render_table(routes: tuple[Route, ...]) -> str:
    lines = [TABLE_HEADER, "| --- | --- |"]
    lines += [f"| `{request}` | {role} |" for request, role in table_rows(routes)]
    return "\n".join(lines)


def documented_roles() -> dict[tuple[str, str], Role]:
    """The table of docs/api.md: (METHOD, path) -> role."""
    lines = API_DOC.read_text("utf-8").splitlines()
    assert TABLE_HEADER in lines, f"docs/api.md has no table of roles (a line {TABLE_HEADER!r})"
    found: dict[tuple[str, str], Role] = {}
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        request, role = (cell.strip().strip("`") for cell in line.strip().strip("|").split(" | "))
        method, _, path = request.partition(" ")
        found[method, path] = Role[role.upper()]
    return found


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = await Node.open(Settings(data=tmp_path / "n", node_id="n1"))
    yield node
    await node.close()


async def test_the_docs_table_of_roles_is_the_routers(node: Node) -> None:
    routes = create_router(node).routes
    expected = render_table(routes)
    assert documented_roles() == {
        (method, path): Role[role.upper()]
        for request, role in table_rows(routes)
        for method, path in [request.split(" ", 1)]
    }, f"docs/api.md's table of roles should be:\n{expected}"


def test_every_route_of_the_openapi_document_is_in_the_table() -> None:
    operations = {
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in METHODS
        if method in item
    }
    table = documented_roles()
    assert operations <= set(table), sorted(operations - set(table))
    # Beyond the OpenAPI document, only the peer endpoints of replication (and public files).
    beyond = {request: role for request, role in table.items() if request not in operations}
    assert set(beyond.values()) <= {Role.PEER, Role.PUBLIC}, beyond
    assert {request for request, role in table.items() if role is Role.PEER} <= set(beyond)


def expected_answer(role: Role, caller: str) -> str:
    """401, 403 or "pass" (any answer but 401/403) for `caller` on a route of `role`."""
    if role is Role.PUBLIC:
        return "pass"
    if role is Role.PEER:
        return {"peer": "pass", "none": "401", "unknown": "401"}.get(caller, "403")
    if caller in ("none", "unknown"):
        return "401"
    if caller == "peer":
        return "403"
    return "pass" if Role[caller.upper()] >= role else "403"


def walk() -> Iterator[tuple[str, str, bytes | None, Role]]:
    """Every (method, target, body, role) of the table, leaving the cluster last."""
    rows = sorted(documented_roles().items(), key=lambda item: item[0] == LAST)
    for (method, path), role in rows:
        yield method, TARGETS.get(path, path), BODIES.get(path), role


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Api]:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
    async with running_api(tmp_path / "node", tokens=tokens, peer_token=PEER_TOKEN) as api:
        yield api


async def test_every_route_answers_each_caller_as_the_table_says(guarded: Api) -> None:
    problems = []
    for method, target, body, role in walk():
        for caller in CALLERS:
            reply = await guarded.request(method, target, data=body, headers=HEADERS[caller])
            want = expected_answer(role, caller)
            got = str(reply.status) if reply.status in (401, 403) else "pass"
            if got != want:
                problems.append(f"{caller} {method} {target}: {reply.status} {reply.body[:100]!r}")
                continue
            if got != "pass":  # the error in the shape of its API
                payload = reply.json()
                if target.startswith("/nodes/"):
                    assert payload["success"] is False, (caller, target, payload)
                else:
                    code = {"401": "unauthorized", "403": "forbidden"}[got]
                    assert payload["error"] == code, (caller, target, payload)
                if got == "401":
                    challenge = reply.headers.get("WWW-Authenticate")
                    assert challenge == 'Bearer realm="shareddb"', (caller, target)
    assert not problems, "\n".join(problems)


async def test_without_a_valid_token_no_path_is_found_or_refused_by_method(guarded: Api) -> None:
    """401 before 404/405: a client without a token cannot tell which paths exist."""
    requests = [
        ("GET", "/nope"),
        ("GET", "/v1/nope"),
        ("GET", "/nodes/nope"),
        ("POST", "/health"),
        ("POST", "/v1/kv/k"),
        ("GET", "/v1/peer/nope"),
        ("GET", "/v1/txn"),
    ]
    for method, target in requests:
        for caller in ("none", "unknown"):
            reply = await guarded.request(method, target, headers=HEADERS[caller])
            assert reply.status == 401, (caller, method, target, reply.status)
        known = await guarded.request(method, target, headers=HEADERS["read"])
        assert known.status in (404, 405), (method, target, known.status)


async def test_a_403_names_the_role_needed(guarded: Api) -> None:
    reply = await guarded.put("/v1/kv/k", "v", headers=HEADERS["read"])
    assert reply.status == 403
    assert reply.json() == {
        "error": "forbidden",
        "message": "this needs a write token; the token given is read",
    }
    seed = await guarded.get("/nodes/update?name=k&value=v", headers=HEADERS["read"])
    assert seed.status == 403
    assert seed.json() == {"success": False, "msg": "this needs a write token; the token given is read"}
    assert (await guarded.get("/nodes/dump", headers=HEADERS["read"])).json()["data"] == {}


async def test_peer_routes_open_from_loopback_without_a_peer_token(tmp_path: Path) -> None:
    """No peer token: a peer on loopback (as `make run` and `cluster up` start them) needs none,
    whatever client tokens the node has."""
    async with running_api(tmp_path / "node", token="client") as api:
        pull = await api.get("/v1/peer/changes?since=0&wait=0", auth=False)
        assert pull.status == 200, pull.body
        join = await api.request("POST", "/v1/peer/join", data=b'{"members": []}', auth=False)
        assert join.status == 200, join.body
        assert (await api.get("/v1/kv/k", auth=False)).status == 401


def outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_peer_routes_refuse_other_addresses_unless_allowed(tmp_path: Path) -> None:
    """A node listening on a non-loopback address of this machine: requests to it come from that
    address, as a peer's on the network would. Without a peer token only --peer-allow lets them in,
    and no client token does."""
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    join = ("POST", "/v1/peer/join", b'{"members": []}')
    pull = ("GET", "/v1/peer/changes?since=0&wait=0", None)
    async with running_api(tmp_path / "shut", host=address, token="boss") as api:
        for method, target, body in (join, pull):
            refused = await api.request(method, target, data=body, auth=False)
            assert refused.status == 401, refused.body
            assert refused.json()["error"] == "unauthorized"
            admin = await api.request(method, target, data=body)  # the node's admin token
            assert admin.status == 403, admin.body
        assert (await api.get("/v1/kv/k")).status == 404  # the client API is as ever
    allow = parse_networks(f"{address}/32")
    async with running_api(tmp_path / "open", host=address, peer_allow=allow) as api:
        for method, target, body in (join, pull):
            allowed = await api.request(method, target, data=body)
            assert allowed.status == 200, allowed.body


if __name__ == "__main__":
    import asyncio
    import tempfile

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            node = await Node.open(Settings(data=Path(tmp), node_id="n1"))
            try:
                print(render_table(create_router(node).routes))
            finally:
                await node.close()

    asyncio.run(main())
